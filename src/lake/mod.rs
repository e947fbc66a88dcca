//! The lake: Hive-partitioned Parquet through `object_store`, on a local directory or any cloud.
//!
//! A partition `event_date=YYYY-MM-DD` is rewritten whole: the rows of the days being replaced
//! come out, the new rows go in. A partition that fits in one object is `part-00000.parquet`,
//! replaced in one put (single-part or a completed multipart upload), so a reader sees the old
//! file or the new one, never a half. A partition beyond `lake.target_file_size` is written as
//! parts named by the rewrite's generation (`part-g<generation>-00000.parquet`, …), which never
//! collide with the objects readers use now; the old objects are deleted only after the state
//! records the new set ([`Lake::delete_objects`]), and a crash in between is repaired from the
//! state's record of the rewrite (see `sync::repair_lake`).

mod store;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::compute::{concat_batches, filter_record_batch, take_record_batch};
use arrow::datatypes::{DataType, Schema};
use bytes::Bytes;
use chrono::NaiveDate;
use futures::{StreamExt, TryStreamExt};
use tokio::io::AsyncWriteExt;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};

pub use store::open_store;

use crate::config::LakeSettings;
use crate::model::PartitionState;
use crate::normalize::QuarantineRows;
use crate::normalize::time::{day_of_micros, rows_per_day};
use crate::product::Product;

/// Rows per row group: big enough for scans to skip by statistics, small enough to write with
/// bounded memory.
const ROW_GROUP_ROWS: usize = 1_000_000;

/// Objects written at once. Two leave a core idle about a quarter of the write phase, while a
/// partition waits on the store (creating its directory and file); three took a 10M-row Parquet
/// import from 7.1-7.5 s to 6.6-7.0 s, but a 10M-row JSON import's peak from ~90 to ~114 MiB,
/// which made memory grow with the export again. Two it is.
pub const WRITERS: usize = 2;

/// Rows handed to the writer at a time, so the part-size check runs often enough to split.
const WRITE_CHUNK_ROWS: usize = 65_536;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store ({path}): {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("Parquet ({path}): {detail}")]
    Parquet { path: String, detail: String },
    #[error("{path}: schema does not match the lake's: {detail}")]
    Schema { path: String, detail: String },
    #[error("quarantined rows: {0}")]
    Quarantine(#[from] crate::normalize::SpillError),
}

fn store_err(path: &Path) -> impl FnOnce(object_store::Error) -> LakeError + '_ {
    move |source| LakeError::Store {
        path: path.to_string(),
        source,
    }
}

fn parquet_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> LakeError + '_ {
    move |e| LakeError::Parquet {
        path: path.to_string(),
        detail: e.to_string(),
    }
}

#[derive(Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    display: String,
    target_file_size: u64,
    /// The directory of a `file://` lake, where a killed put can leave a staging file.
    local: Option<std::path::PathBuf>,
}

impl Lake {
    /// Opens the store; changes nothing in it (readers open the lake too).
    pub fn open(settings: &LakeSettings) -> Result<Self, LakeError> {
        let (store, root) = open_store(&settings.url)?;
        Ok(Self {
            store,
            root,
            display: settings.url.to_string(),
            target_file_size: settings.target_file_size,
            local: (settings.url.scheme() == "file")
                .then(|| store::local_dir(&settings.url))
                .flatten(),
        })
    }

    pub fn location(&self) -> &str {
        &self.display
    }

    fn table(&self, product: Product) -> Path {
        self.root.clone().join(product.config_name())
    }

    fn partition(&self, product: Product, date: NaiveDate) -> Path {
        // Built only from a validated date, so no input can steer the path.
        self.table(product)
            .join(format!("event_date={}", date.format("%Y-%m-%d")))
    }

    /// A one-object partition keeps one fixed name, replaced in one put; the parts of a larger
    /// one carry the rewrite's generation, so they never overwrite what readers see now.
    fn part_name(generation: Option<i64>, n: usize) -> String {
        match generation {
            None => format!("part-{n:05}.parquet"),
            Some(g) => format!("part-g{g:010}-{n:05}.parquet"),
        }
    }

    /// The objects of one partition now.
    pub async fn list_partition(
        &self,
        product: Product,
        date: NaiveDate,
    ) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        self.list(&self.partition(product, date)).await
    }

    /// Deletes objects by path; one already gone is not an error (a repair may finish a delete
    /// that was under way).
    pub async fn delete_objects(&self, paths: &[String]) -> Result<(), LakeError> {
        for p in paths {
            let path = Path::from(p.as_str());
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// Half-written staging files a killed put left in the partition's directory (local lakes
    /// only: the other stores never show an incomplete object).
    pub fn remove_staging(&self, product: Product, date: NaiveDate) -> usize {
        let Some(dir) = &self.local else {
            return 0;
        };
        store::remove_staging_files(&dir.join(self.partition(product, date).as_ref()))
    }

    /// The same for the product's quarantine.
    pub fn remove_quarantine_staging(&self, product: Product) -> usize {
        let Some(dir) = &self.local else {
            return 0;
        };
        let rel = self.quarantine_root(product);
        store::remove_staging_files(&dir.join(rel.as_ref()))
    }

    fn quarantine_root(&self, product: Product) -> Path {
        self.root
            .clone()
            .join("_quarantine")
            .join(product.config_name())
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        let mut objects: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_err(prefix))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    async fn read_objects(
        &self,
        objects: &[object_store::ObjectMeta],
    ) -> Result<Vec<RecordBatch>, LakeError> {
        let mut out = Vec::new();
        for meta in objects
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
        {
            // Partitions are rewritten whole, so the whole object is needed anyway: one GET.
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(store_err(&meta.location))?
                .bytes()
                .await
                .map_err(store_err(&meta.location))?;
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(parquet_err(&meta.location))?
                .with_batch_size(65_536)
                .build()
                .map_err(parquet_err(&meta.location))?;
            for b in reader {
                out.push(b.map_err(|e| LakeError::Parquet {
                    path: meta.location.to_string(),
                    detail: e.to_string(),
                })?);
            }
        }
        Ok(out)
    }

    /// Every row of one partition.
    pub async fn read_partition(
        &self,
        product: Product,
        date: NaiveDate,
    ) -> Result<Vec<RecordBatch>, LakeError> {
        let objects = self.list(&self.partition(product, date)).await?;
        self.read_objects(&objects).await
    }

    /// Every row of the table, with the partition date of each batch.
    pub async fn read_table(
        &self,
        product: Product,
    ) -> Result<Vec<(NaiveDate, RecordBatch)>, LakeError> {
        let objects = self.list(&self.table(product)).await?;
        let mut out = Vec::new();
        for meta in &objects {
            let Some(date) = partition_date(&meta.location) else {
                continue;
            };
            for b in self.read_objects(std::slice::from_ref(meta)).await? {
                out.push((date, b));
            }
        }
        Ok(out)
    }

    /// Every data object of the table: (path, size).
    pub async fn objects(&self, product: Product) -> Result<Vec<(String, u64)>, LakeError> {
        Ok(self
            .list(&self.table(product))
            .await?
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    /// Rewrites one partition whose objects are `existing`: its rows of `replaced` status days
    /// are dropped, and so are rows whose identity is in `merged` (rows this job delivers for
    /// days it does not replace whole); then `new` is added. The new objects are put; the old
    /// ones the result does not reuse are left for the caller to delete once the state records
    /// the new set. `generation` names the parts of a multi-object result.
    #[allow(clippy::too_many_arguments)]
    pub async fn rewrite_partition(
        &self,
        product: Product,
        date: NaiveDate,
        existing_objects: &[object_store::ObjectMeta],
        generation: i64,
        replaced: &BTreeSet<NaiveDate>,
        merged: &HashSet<Identity>,
        new: Option<&RecordBatch>,
    ) -> Result<PartitionState, LakeError> {
        let prefix = self.partition(product, date);
        let existing = self.read_objects(existing_objects).await?;
        let schema = product.lake_schema();
        let mut keep = Vec::with_capacity(existing.len() + 1);
        for b in existing {
            let b = conform(&b, &schema).map_err(|detail| LakeError::Schema {
                path: prefix.to_string(),
                detail,
            })?;
            let ts = status_column(&b);
            let ids = (!merged.is_empty()).then(|| identities(&b));
            let mask: arrow::array::BooleanArray = (0..b.num_rows())
                .map(|i| {
                    let replaced_day = replaced.contains(&day_of_micros(ts.value(i)));
                    let superseded = ids.as_ref().is_some_and(|ids| merged.contains(&ids[i]));
                    Some(!replaced_day && !superseded)
                })
                .collect();
            keep.push(filter_record_batch(&b, &mask).expect("mask length matches"));
        }
        if let Some(n) = new {
            keep.push(n.clone());
        }
        let rows = concat_batches(&schema, &keep).expect("batches share the lake schema");
        let day_rows = rows_per_day(status_column(&rows).values());
        let count = rows.num_rows() as u64;
        let parts = self.encode(&prefix, rows, Order::ByTime).await?;
        let generation = (parts.len() > 1).then_some(generation);
        let (objects, bytes) = self.put_parts(&prefix, generation, parts).await?;
        Ok(PartitionState {
            day_rows,
            rows: count,
            objects,
            bytes,
        })
    }

    /// Sorts and encodes `rows` on a blocking thread: this is most of a sync's CPU, and on the
    /// async threads it would run one partition at a time however many are written at once.
    async fn encode(
        &self,
        prefix: &Path,
        rows: RecordBatch,
        order: Order,
    ) -> Result<Vec<Bytes>, LakeError> {
        let target = self.target_file_size;
        tokio::task::spawn_blocking(move || {
            let rows = match order {
                Order::ByTime => sort_rows(&rows),
                Order::AsIs => rows,
            };
            encode_parts(&rows, target)
        })
        .await
        .map_err(|e| LakeError::Parquet {
            path: prefix.to_string(),
            detail: format!("encoder task failed: {e}"),
        })?
        .map_err(parquet_err(prefix))
    }

    /// Puts the encoded parts under `prefix` (nothing when there are none), named as
    /// [`Self::part_name`] says.
    async fn put_parts(
        &self,
        prefix: &Path,
        generation: Option<i64>,
        parts: Vec<Bytes>,
    ) -> Result<(Vec<String>, u64), LakeError> {
        let mut written = Vec::with_capacity(parts.len());
        let mut bytes = 0;
        let count = parts.len();
        for (n, part) in parts.into_iter().enumerate() {
            let path = prefix.clone().join(Self::part_name(generation, n));
            bytes += part.len() as u64;
            // Small parts go in one put; big ones as a multipart upload completed at the end.
            let mut sink = object_store::buffered::BufWriter::with_capacity(
                self.store.clone(),
                path.clone(),
                8 << 20,
            );
            sink.put(part).await.map_err(store_err(&path))?;
            sink.shutdown().await.map_err(|e| LakeError::Store {
                path: path.to_string(),
                source: object_store::Error::Generic {
                    store: "lake",
                    source: Box::new(e),
                },
            })?;
            written.push(path.to_string());
            if n + 1 < count {
                crate::failpoint::hit("between-puts");
            }
        }
        Ok((written, bytes))
    }

    /// Puts `parts` under fixed names and then deletes the objects that were there and are not
    /// among the new ones: the quarantine's layout, where a reader seeing a half-replaced day
    /// for a moment costs nothing.
    async fn replace_objects(
        &self,
        prefix: &Path,
        existing: &[object_store::ObjectMeta],
        parts: Vec<Bytes>,
    ) -> Result<(), LakeError> {
        let (written, _) = self.put_parts(prefix, None, parts).await?;
        let stale: Vec<String> = existing
            .iter()
            .map(|m| m.location.to_string())
            .filter(|l| !written.contains(l))
            .collect();
        self.delete_objects(&stale).await
    }

    /// Writes a job's quarantined rows under `status_date=YYYY-MM-DD` (the day their raw
    /// StatusDatetime names, else `default_day`, the job's one day), mirroring the data: the
    /// quarantine of a `replaced` day is replaced, other days gain the new rows without copies
    /// of ones already there. Rows with no day go to `status_date=unknown/window=<window>`.
    pub async fn write_quarantine(
        &self,
        product: Product,
        window: &str,
        rows: &QuarantineRows,
        replaced: &BTreeSet<NaiveDate>,
        default_day: Option<NaiveDate>,
    ) -> Result<(), LakeError> {
        let root = self.quarantine_root(product);
        let mut existing: BTreeMap<String, Vec<object_store::ObjectMeta>> = BTreeMap::new();
        for meta in self.list(&root).await? {
            let dir = meta
                .location
                .prefix_match(&root)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect::<Vec<_>>())
                .unwrap_or_default();
            let key = match dir.first().map(String::as_str) {
                Some("status_date=unknown") => format!(
                    "status_date=unknown/{}",
                    dir.get(1).cloned().unwrap_or_default()
                ),
                Some(d) => d.to_string(),
                None => continue,
            };
            existing.entry(key).or_default().push(meta);
        }
        // Where each day the rows name goes: rows that name none go to the job's day, if any.
        let mut groups: BTreeMap<Option<NaiveDate>, Vec<Option<NaiveDate>>> = BTreeMap::new();
        for day in rows.days() {
            groups.entry(day.or(default_day)).or_default().push(day);
        }
        let schema = crate::normalize::quarantine_schema();
        let mut dirs: BTreeSet<String> = replaced
            .iter()
            .map(|d| format!("status_date={d}"))
            .filter(|k| existing.contains_key(k))
            .collect();
        dirs.extend(groups.keys().map(|d| match d {
            Some(d) => format!("status_date={d}"),
            None => format!("status_date=unknown/window={window}"),
        }));
        let jobs: Vec<_> = dirs
            .into_iter()
            .map(|dir| {
                let day = dir_day(&dir);
                let named = groups.remove(&day).unwrap_or_default();
                let old = existing.remove(&dir).unwrap_or_default();
                (dir, day, named, old)
            })
            .collect();
        // Days at once, as partitions are: a day's write is mostly waiting on the store.
        futures::stream::iter(jobs)
            .map(|(dir, day, named, old)| {
                let (root, schema) = (&root, &schema);
                async move {
                    let mut batches = Vec::new();
                    for n in named {
                        batches.extend(rows.load(n).await?);
                    }
                    let merge_old = day.is_some_and(|d| !replaced.contains(&d));
                    if merge_old {
                        let fresh: HashSet<String> = batches.iter().flat_map(raw_keys).collect();
                        for b in self.read_objects(&old).await? {
                            let keys = raw_keys(&b);
                            let mask: arrow::array::BooleanArray =
                                keys.iter().map(|k| Some(!fresh.contains(k))).collect();
                            batches
                                .push(filter_record_batch(&b, &mask).expect("mask length matches"));
                        }
                    }
                    let rows = concat_batches(schema, &batches).map_err(|e| LakeError::Schema {
                        path: dir.clone(),
                        detail: e.to_string(),
                    })?;
                    // One path part per segment: joining "a/b" whole would escape the slash.
                    let prefix = dir.split('/').fold(root.clone(), |p, part| p.join(part));
                    let parts = self.encode(&prefix, rows, Order::AsIs).await?;
                    self.replace_objects(&prefix, &old, parts).await
                }
            })
            .buffer_unordered(WRITERS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Every quarantined row of a product.
    pub async fn read_quarantine(&self, product: Product) -> Result<Vec<RecordBatch>, LakeError> {
        let prefix = self.quarantine_root(product);
        let objects = self.list(&prefix).await?;
        self.read_objects(&objects).await
    }

    /// A write-read-delete round trip, for `check-config --online`.
    pub async fn probe(&self) -> Result<(), LakeError> {
        // Named per process, so probes run beside each other (or beside a sync) never meet.
        let path = self.root.clone().join(format!(
            "_dpss_sync_probe-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        let payload = format!("probe {}", chrono::Utc::now().to_rfc3339());
        self.store
            .put(&path, payload.clone().into())
            .await
            .map_err(store_err(&path))?;
        let back = self
            .store
            .get(&path)
            .await
            .map_err(store_err(&path))?
            .bytes()
            .await
            .map_err(store_err(&path))?;
        self.store.delete(&path).await.map_err(store_err(&path))?;
        if back != payload.as_bytes() {
            return Err(LakeError::Parquet {
                path: path.to_string(),
                detail: "probe read back different bytes".into(),
            });
        }
        Ok(())
    }
}

/// The status day of a quarantine directory (`status_date=YYYY-MM-DD`), none for `unknown`.
fn dir_day(dir: &str) -> Option<NaiveDate> {
    dir.strip_prefix("status_date=")
        .and_then(|d| d.parse::<NaiveDate>().ok())
}

/// Columns whose values rarely repeat within a partition.
const NEAR_UNIQUE: [&str; 4] = [
    "service_point_id",
    "issue_id",
    "work_order_id",
    "status_datetime",
];

/// How `schema`'s objects are written: the lake's and the quarantine's, whose columns are text.
fn writer_properties(schema: &Schema) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(3).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("dpss-sync ", env!("CARGO_PKG_VERSION")).to_string());
    // Near-unique columns: a dictionary costs its build, then is dropped for plain pages or
    // kept at a loss (timestamps). The rest repeat a handful of values and keep theirs.
    let builder = NEAR_UNIQUE.iter().fold(builder, |b, c| {
        b.set_column_dictionary_enabled((*c).into(), false)
    });
    // Rows are in time order, so consecutive timestamps differ by seconds or minutes: delta
    // encoding packs each into a few bits. For 10M rows the column is 31 MB before compression
    // where plain was 79, 25.6 MB after it where plain was 31.8, and zstd has less to do.
    let timestamps = schema
        .field_with_name("status_datetime")
        .is_ok_and(|f| matches!(f.data_type(), DataType::Timestamp(..)));
    if timestamps {
        builder.set_column_encoding("status_datetime".into(), Encoding::DELTA_BINARY_PACKED)
    } else {
        builder
    }
    .build()
}

/// How rows are ordered in the objects: data by time, the quarantine as it came.
enum Order {
    ByTime,
    AsIs,
}

/// One Parquet object, or numbered parts once one passes `target` bytes. Rows go to the writer in
/// chunks small enough that a part ends near the target, whatever the target: a chunk is at most
/// the rows whose in-memory size is the target.
fn encode_parts(rows: &RecordBatch, target: u64) -> Result<Vec<Bytes>, ParquetError> {
    let props = writer_properties(&rows.schema());
    let per_row = (rows.get_array_memory_size() / rows.num_rows().max(1)).max(1) as u64;
    let chunk = (target / per_row).clamp(1, WRITE_CHUNK_ROWS as u64) as usize;
    let mut objects = Vec::new();
    let mut offset = 0;
    while offset < rows.num_rows() {
        let mut w = ArrowWriter::try_new(Vec::new(), rows.schema(), Some(props.clone()))?;
        while offset < rows.num_rows() {
            let len = chunk.min(rows.num_rows() - offset);
            w.write(&rows.slice(offset, len))?;
            offset += len;
            if (w.bytes_written() + w.in_progress_size()) as u64 >= target {
                break;
            }
        }
        objects.push(Bytes::from(w.into_inner()?));
    }
    Ok(objects)
}

fn status_column(b: &RecordBatch) -> &TimestampMicrosecondArray {
    b.column_by_name("status_datetime")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("lake batches have a status_datetime timestamp column")
}

/// Old files read back with the lake schema's field names; checks instead of trusting.
fn conform(b: &RecordBatch, schema: &arrow::datatypes::SchemaRef) -> Result<RecordBatch, String> {
    if b.num_columns() != schema.fields().len() {
        return Err(format!(
            "{} columns, expected {}",
            b.num_columns(),
            schema.fields().len()
        ));
    }
    for (have, want) in b.schema().fields().iter().zip(schema.fields()) {
        if have.name() != want.name() || have.data_type() != want.data_type() {
            return Err(format!(
                "column `{}` {:?}, expected `{}` {:?}",
                have.name(),
                have.data_type(),
                want.name(),
                want.data_type()
            ));
        }
    }
    RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| e.to_string())
}

/// Sorted by time, ties in arrival order: deterministic for the same input, and tight min/max
/// statistics on status_datetime. Exports mostly come in time order already, and then there is
/// nothing to move.
fn sort_rows(b: &RecordBatch) -> RecordBatch {
    let ts = status_column(b).values();
    if ts.windows(2).all(|w| w[0] <= w[1]) {
        return b.clone();
    }
    let mut idx: Vec<u32> = (0..b.num_rows() as u32).collect();
    idx.sort_by_key(|&i| ts[i as usize]);
    take_record_batch(b, &arrow::array::UInt32Array::from(idx)).expect("indices in range")
}

/// The identity of DESIGN.md: (work_order_id, issue_id, status, status_datetime in µs).
pub type Identity = (String, String, String, i64);

fn text_column<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("text column of the lake or quarantine schema")
}

/// The identities of a lake batch, row by row.
pub fn identities(b: &RecordBatch) -> Vec<Identity> {
    let (wo, issue, status) = (
        text_column(b, "work_order_id"),
        text_column(b, "issue_id"),
        text_column(b, "status"),
    );
    let ts = status_column(b);
    (0..b.num_rows())
        .map(|i| {
            (
                wo.value(i).to_string(),
                issue.value(i).to_string(),
                status.value(i).to_string(),
                ts.value(i),
            )
        })
        .collect()
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

/// The `event_date=` of an object path.
pub fn partition_date(path: &Path) -> Option<NaiveDate> {
    path.parts().find_map(|p| {
        p.as_ref()
            .strip_prefix("event_date=")
            .and_then(|d| d.parse().ok())
    })
}

/// Rows of `batches` grouped by status day (for `status` and tests).
pub fn count_by_status_day(batches: &[(NaiveDate, RecordBatch)]) -> BTreeMap<NaiveDate, u64> {
    let mut out = BTreeMap::new();
    for (_, b) in batches {
        for (d, n) in status_day_rows(b) {
            *out.entry(d).or_insert(0) += n;
        }
    }
    out
}

/// Rows of one lake batch per status day.
pub fn status_day_rows(b: &RecordBatch) -> BTreeMap<NaiveDate, u64> {
    rows_per_day(status_column(b).values())
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{ArrayRef, Int8Array, StringArray};
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// `n` rows a minute apart, with text that does not compress away.
    fn sample(n: usize) -> RecordBatch {
        let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as ArrayRef;
        let ids = Arc::new(StringArray::from(
            (0..n)
                .map(|i| format!("WO-{:08}", i * 7919 % 100_003))
                .collect::<Vec<_>>(),
        )) as ArrayRef;
        let ts: Vec<i64> = (0..n as i64)
            .map(|i| 1_700_000_000_000_000 + i * 61_000_000)
            .collect();
        RecordBatch::try_new(
            Product::HidWorkOrders.lake_schema(),
            vec![
                text("9"),
                Arc::new(Int8Array::from(vec![1; n])),
                text("7"),
                text("New"),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                text("r"),
                ids,
                text("j"),
                Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    #[test]
    fn timestamps_are_delta_encoded_and_read_back_unchanged() {
        let batch = sample(1000);
        let ts = status_column(&batch).values().to_vec();
        let object = encode_parts(&batch, u64::MAX).unwrap().remove(0);
        let meta = SerializedFileReader::new(object.clone()).unwrap();
        let chunk = meta.metadata().row_group(0).column(4);
        assert_eq!(chunk.column_path().string(), "status_datetime");
        assert!(
            chunk
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED)
        );
        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(object)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(status_column(&read[0]).values().as_ref(), ts);
    }

    #[test]
    fn a_partition_splits_near_a_small_target_and_reads_back_whole() {
        let n = 2000;
        let batch = sample(n);
        let parts = encode_parts(&batch, 16 << 10).unwrap();
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut read = Vec::new();
        for p in &parts {
            assert!(p.len() < 64 << 10, "a part of {} bytes", p.len());
            for b in ParquetRecordBatchReaderBuilder::try_new(p.clone())
                .unwrap()
                .build()
                .unwrap()
            {
                read.extend_from_slice(status_column(&b.unwrap()).values());
            }
        }
        assert_eq!(read, status_column(&batch).values().to_vec());
        assert_eq!(encode_parts(&batch, 256 << 20).unwrap().len(), 1);
    }

    #[test]
    fn a_quarantine_s_text_timestamps_are_written_plain() {
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "status_datetime",
            DataType::Utf8,
            false,
        )]));
        let column = Arc::new(StringArray::from(vec!["2024-06-15:00:00:13"; 10])) as ArrayRef;
        let batch = RecordBatch::try_new(schema, vec![column]).unwrap();
        let object = encode_parts(&batch, u64::MAX).unwrap().remove(0);
        let meta = SerializedFileReader::new(object).unwrap();
        let chunk = meta.metadata().row_group(0).column(0);
        assert!(
            chunk
                .encodings()
                .all(|e| e != Encoding::DELTA_BINARY_PACKED)
        );
    }
}
