//! The quarantine: rows that failed validation, kept with their raw text under
//! `_quarantine/<product>/<day>=YYYY-MM-DD/` (or `<day>=unknown/window=<window>/`; `<day>` is the
//! product's quarantine partition) so
//! nothing a vendor sent is lost. A day's quarantine mirrors the data: replaced with the day, or
//! merged without copies of rows already there.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use arrow::array::{Array, RecordBatch, StringArray};
use arrow::compute::filter_record_batch;
use arrow::datatypes::SchemaRef;
use chrono::{DateTime, NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;

use super::delta::{Change, Table};
use super::encode::{Layout, PartWriter, Spooled};
use super::{Lake, LakeError, WRITERS, parquet_err, store};
use crate::normalize::QuarantineRows;
use crate::product::Product;

impl Lake {
    /// The same for the product's quarantine, in the directories modified since `since` (when
    /// the crashed write began). Rows with no day sit a level deeper, under
    /// `<day>=unknown/window=…`, whose parent a rerun of the same window does not touch:
    /// that level is looked at on its own.
    pub fn remove_quarantine_staging(&self, product: Product, since: DateTime<Utc>) -> usize {
        let Some(dir) = &self.local else {
            return 0;
        };
        let root = dir.join(self.quarantine_root(product).as_ref());
        let unknown = format!("{}=unknown", product.quarantine_partition);
        [root.clone(), root.join(unknown)]
            .iter()
            .map(|d| store::remove_staging_files(d, since.into()))
            .sum()
    }

    /// Encodes quarantined rows in the order given, on a blocking thread as partitions are.
    async fn encode_as_is(
        &self,
        product: Product,
        prefix: &Path,
        schema: SchemaRef,
        batches: Vec<RecordBatch>,
    ) -> Result<Vec<Spooled>, LakeError> {
        let mut writer = PartWriter::new(
            schema,
            &Layout::quarantine(product),
            self.target_file_size,
            &self.scratch,
        );
        tokio::task::spawn_blocking(move || {
            for b in &batches {
                writer.write(b)?;
            }
            writer.finish()
        })
        .await
        .map_err(|source| LakeError::Task {
            path: prefix.to_string(),
            source,
        })?
        .map_err(parquet_err(prefix))
    }

    /// The names of the directories right under `prefix`.
    async fn subdirectories(&self, prefix: &Path) -> Result<BTreeSet<String>, LakeError> {
        self.traffic.listed();
        let listing = self
            .store
            .list_with_delimiter(Some(prefix))
            .await
            .map_err(super::store_err(prefix))?;
        Ok(listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect())
    }

    pub(super) fn quarantine_root(&self, product: Product) -> Path {
        self.root
            .clone()
            .join("_quarantine")
            .join(product.config_name())
    }

    /// Puts `parts` under fixed names and then deletes the objects that were there and are not
    /// among the new ones: the quarantine's layout, where a reader seeing a half-replaced day
    /// for a moment costs nothing.
    async fn replace_objects(
        &self,
        prefix: &Path,
        existing: &[object_store::ObjectMeta],
        parts: Vec<Spooled>,
    ) -> Result<(), LakeError> {
        let written = self.put_parts(prefix, None, parts).await?;
        let stale: Vec<String> = existing
            .iter()
            .map(|m| m.location.to_string())
            .filter(|l| !written.iter().any(|(w, _, _)| w == l))
            .collect();
        self.delete_objects(&stale).await
    }

    /// Writes a job's quarantined rows under `<day>=YYYY-MM-DD` (the day their raw window column
    /// names, else `default_day`, the job's one day), mirroring the data: the quarantine of a
    /// `replaced` day is replaced, other days gain the new rows without copies of ones already
    /// there. Rows with no day go to `<day>=unknown/window=<window>`.
    ///
    /// With a Delta quarantine `table`, what each directory holds comes from its log, nothing is
    /// deleted, and the change is returned for the window's commit.
    pub async fn write_quarantine(
        &self,
        product: Product,
        window: &str,
        rows: &QuarantineRows,
        replaced: &BTreeSet<NaiveDate>,
        default_day: Option<NaiveDate>,
        table: Option<&Table>,
    ) -> Result<Change, LakeError> {
        let root = self.quarantine_root(product);
        // Where each day the rows name goes: rows that name none go to the job's day, if any.
        let mut groups: BTreeMap<Option<NaiveDate>, Vec<Option<NaiveDate>>> = BTreeMap::new();
        for day in rows.days() {
            groups.entry(day.or(default_day)).or_default().push(day);
        }
        let schema = product.quarantine_schema();
        let day = &product.quarantine_partition;
        let mut dirs: BTreeSet<String> = replaced.iter().map(|d| format!("{day}={d}")).collect();
        dirs.extend(groups.keys().map(|d| match d {
            Some(d) => format!("{day}={d}"),
            None => format!("{day}=unknown/window={window}"),
        }));
        // One listing of the top level (a request per thousand days) says which day directories
        // exist; of those, only the ones this write touches are listed. A cycle costs what it
        // touches, and an import of a year of days with few bad rows lists a handful, not 400.
        let present = match table {
            Some(_) => BTreeSet::new(),
            None => self.subdirectories(&root).await?,
        };
        let listed: Vec<(String, Vec<object_store::ObjectMeta>)> = futures::stream::iter(dirs)
            .map(|dir| {
                let prefix = dir_prefix(&root, &dir);
                let exists = dir
                    .split('/')
                    .next()
                    .is_some_and(|top| present.contains(top));
                async move {
                    let old = match table {
                        Some(t) => t
                            .all_files()
                            .filter(|m| m.location.prefix_matches(&prefix))
                            .cloned()
                            .collect(),
                        None if exists => self.list(&prefix).await?,
                        None => Vec::new(),
                    };
                    Ok::<_, LakeError>((dir, old))
                }
            })
            .buffer_unordered(WRITERS)
            .try_collect()
            .await?;
        let jobs: Vec<_> = listed
            .into_iter()
            .filter_map(|(dir, old)| {
                let day = dir_day(product, &dir);
                let named = groups.remove(&day).unwrap_or_default();
                // A replaced day with no quarantine before or now: nothing to write.
                (!named.is_empty() || !old.is_empty()).then_some((dir, day, named, old))
            })
            .collect();
        // Days at once, as partitions are: a day's write is mostly waiting on the store.
        let changes = futures::stream::iter(jobs)
            .map(|(dir, day, named, old)| {
                let (root, schema) = (&root, &schema);
                async move {
                    let mut batches = Vec::new();
                    for n in named {
                        batches.extend(rows.load(n).await?);
                    }
                    let merge_old = day.is_some_and(|d| !replaced.contains(&d));
                    // In a Delta table a rewrite costs a version and leaves the old files for
                    // VACUUM, so a directory whose rows come back as they were is left alone, as
                    // the data's unchanged partitions are: its old rows are read to tell.
                    let compare = table.is_some() && !old.is_empty();
                    let old_batches = if merge_old || compare {
                        self.read_objects(&old).await?
                    } else {
                        Vec::new()
                    };
                    let before = compare.then(|| sorted_keys(&old_batches));
                    if merge_old {
                        let fresh: HashSet<String> = batches.iter().flat_map(raw_keys).collect();
                        for b in old_batches {
                            let keys = raw_keys(&b);
                            let mask: arrow::array::BooleanArray =
                                keys.iter().map(|k| Some(!fresh.contains(k))).collect();
                            batches
                                .push(filter_record_batch(&b, &mask).expect("mask length matches"));
                        }
                    }
                    if before.is_some_and(|b| b == sorted_keys(&batches)) {
                        return Ok(Change::default());
                    }
                    let prefix = dir_prefix(root, &dir);
                    let parts = self
                        .encode_as_is(product, &prefix, schema.clone(), batches)
                        .await?;
                    match table {
                        Some(t) => {
                            let written = self.put_parts(&prefix, None, parts).await?;
                            Ok(Change {
                                removes: t.removes(&old),
                                adds: t.adds(&written),
                            })
                        }
                        None => {
                            self.replace_objects(&prefix, &old, parts).await?;
                            Ok::<_, LakeError>(Change::default())
                        }
                    }
                }
            })
            .buffer_unordered(WRITERS)
            .try_collect::<Vec<Change>>()
            .await?;
        Ok(Change::merge(changes))
    }

    /// Every object under the product's quarantine, whatever publishes it (for a repair).
    pub async fn list_quarantine(
        &self,
        product: Product,
    ) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        self.list(&self.quarantine_root(product)).await
    }

    /// Every quarantined row of a product.
    pub async fn read_quarantine(&self, product: Product) -> Result<Vec<RecordBatch>, LakeError> {
        let prefix = self.quarantine_root(product);
        let objects = self
            .published(product, super::delta::TableKind::Quarantine, &prefix)
            .await?;
        self.read_objects(&objects).await
    }
}

/// The path of a quarantine directory under `root`: one path part per segment, since joining
/// "a/b" whole would escape the slash.
fn dir_prefix(root: &Path, dir: &str) -> Path {
    dir.split('/').fold(root.clone(), |p, part| p.join(part))
}

/// The day of a quarantine directory (`<day>=YYYY-MM-DD`), none for `unknown`.
fn dir_day(product: Product, dir: &str) -> Option<NaiveDate> {
    dir.strip_prefix(product.quarantine_partition.as_str())
        .and_then(|d| d.strip_prefix('='))
        .and_then(|d| d.parse::<NaiveDate>().ok())
}

/// Every row's key, sorted: two sets of quarantined rows are the same when these are.
fn sorted_keys(batches: &[RecordBatch]) -> Vec<String> {
    let mut keys: Vec<String> = batches.iter().flat_map(raw_keys).collect();
    keys.sort_unstable();
    keys
}

/// A quarantined row's raw values as one key, to keep one copy of a row served twice.
fn raw_keys(b: &RecordBatch) -> Vec<String> {
    let cols: Vec<&StringArray> = b
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| !f.name().starts_with('_') || f.name() == "_raw")
        .map(|(i, _)| {
            b.column(i)
                .as_any()
                .downcast_ref::<StringArray>()
                .expect("raw text columns")
        })
        .collect();
    (0..b.num_rows())
        .map(|i| {
            cols.iter()
                .map(|c| if c.is_null(i) { "\u{0}" } else { c.value(i) })
                .collect::<Vec<_>>()
                .join("\u{1f}")
        })
        .collect()
}
