//! From an export to the lake: decode and normalize it on two threads, check the shrink guard,
//! rewrite the partitions the lake selects, write the quarantine, and return what the commit
//! records.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use chrono::{NaiveDate, Utc};
use futures::{StreamExt, TryStreamExt};

use super::cleanup::repair_lake;
use super::{Pipeline, SyncError};
use crate::decode::{self, DecodeError};
use crate::events::{InternalEvent, ObjectsWritten, ShrinkRefused, UnknownColumns, WriteCost};
use crate::lake::delta::{Change, Table, TableKind, day_value};
use crate::lake::{Dropped, Identity, Replace, Selection, content_hashes};
use crate::model::{Counts, PartitionState};
use crate::normalize::{self, Normalized, Normalizer};
use crate::product::Product;

impl Pipeline {
    /// Decoding and normalizing are CPU work: the decoder runs on its own thread, checks each
    /// batch's rows and hands them through a short queue to the normalizer on another, so the
    /// two overlap.
    pub(super) async fn normalize_files(
        &self,
        product: Product,
        job_id: &str,
        files: Vec<PathBuf>,
    ) -> Result<Normalized, SyncError> {
        let job_id = job_id.to_string();
        let scratch = self.work_dir();
        let limits = self.settings.decode;
        tokio::task::spawn_blocking(move || {
            let expected = files
                .iter()
                .map(|f| decode::estimated_rows(f, &limits))
                .sum();
            let mut n = Normalizer::new(product, &job_id, Utc::now(), &scratch, expected);
            let (tx, rx) = std::sync::mpsc::sync_channel::<normalize::Checked>(4);
            let decoder = {
                let scratch = scratch.clone();
                std::thread::spawn(move || {
                    let mut unknown = BTreeSet::new();
                    for f in &files {
                        let summary =
                            decode::decode_path(product, f, &scratch, &limits, &mut |b| {
                                tx.send(normalize::check(product, b))
                                    .map_err(|_| DecodeError::Sink("the normalizer stopped".into()))
                            })?;
                        unknown.extend(summary.unknown_columns);
                    }
                    Ok::<_, DecodeError>(unknown)
                })
            };
            for checked in rx {
                n.push(&checked);
                crate::progress::rows(checked.rows() as u64);
            }
            let unknown = decoder
                .join()
                .map_err(|_| SyncError::Task("the decoder thread panicked".into()))??;
            if !unknown.is_empty() {
                let columns: Vec<String> = unknown.into_iter().collect();
                UnknownColumns {
                    product,
                    job_id: &job_id,
                    columns: &columns,
                }
                .emit();
            }
            Ok::<_, SyncError>(n.finish()?)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
    }

    /// Rewrites every partition that holds a replaced day or receives new rows, then the
    /// quarantine. Rows delivered for days the job does not replace whole (a vendor that serves
    /// a row outside the asked-for day) replace only the rows with their identity. Partitions
    /// are written [`crate::lake::WRITERS`] at a time. Unless `force`, a result that would
    /// remove too many of a closed day's rows is refused before anything is written.
    pub(super) async fn write(
        &self,
        product: Product,
        window_key: &str,
        normalized: Normalized,
        replace: Replace,
        force: bool,
    ) -> Result<Written, SyncError> {
        let traffic = self.lake.traffic();
        // A write that failed earlier in this process left its rewrites open: undo them first.
        repair_lake(&self.state, &self.lake, product).await?;
        // In a Delta lake, what a partition holds is what the table's current version says.
        let tables = match self.lake.is_delta() {
            true => Some(Tables {
                data: self.lake.ensure_table(product, TableKind::Data).await?,
                quarantine: self
                    .lake
                    .ensure_table(product, TableKind::Quarantine)
                    .await?,
            }),
            false => None,
        };
        let held = self.state.partition_days(product).await?;
        let Selection {
            replaced,
            merged_days,
            default_day,
            partitions: touched,
        } = replace.select(
            &normalized.window_days,
            normalized.rows.partitions.keys().copied(),
            &held,
        );
        let normalized = Arc::new(normalized);
        let mut merged: HashSet<Identity> = HashSet::new();
        for (date, p) in &normalized.rows.partitions {
            if !p.window_days.is_disjoint(&merged_days)
                && let Some((batch, _)) = load(&normalized, *date).await?
            {
                merged.extend(
                    crate::lake::identities(product, &batch, *date)
                        .into_iter()
                        .filter(|(_, day)| merged_days.contains(day))
                        .map(|(id, _)| id),
                );
            }
        }
        if !merged_days.is_empty() {
            tracing::warn!(
                window = window_key, rows = merged.len(), days = ?merged_days,
                "the export holds rows of days it was not asked for; they are merged by identity"
            );
        }
        // A partition whose replaced days come back unchanged is left as it is: a cycle that
        // re-syncs days costs what changed, not every partition the days touch.
        let unchanged = self
            .unchanged(product, &normalized, &touched, &replaced, &merged)
            .await?;
        let touched: BTreeSet<NaiveDate> = touched
            .into_iter()
            .filter(|d| !unchanged.contains_key(d))
            .collect();
        let arriving: BTreeMap<NaiveDate, BTreeSet<NaiveDate>> = normalized
            .rows
            .partitions
            .iter()
            .map(|(date, p)| (*date, p.window_days.clone()))
            .collect();
        // What each partition holds now, recorded with the rewrite before anything is put.
        let before: BTreeMap<NaiveDate, Vec<object_store::ObjectMeta>> = match &tables {
            Some(t) => touched
                .into_iter()
                .map(|date| (date, t.data.partition(&day_value(date))))
                .collect(),
            None => {
                futures::stream::iter(touched)
                    .map(|date| async move {
                        Ok::<_, SyncError>((date, self.lake.list_partition(product, date).await?))
                    })
                    .buffer_unordered(LISTINGS)
                    .try_collect()
                    .await?
            }
        };
        if !force {
            // A partition the state has no record of (a new or lost state over an old lake)
            // may still hold rows: the lake is asked what they are before they are replaced.
            let mut unrecorded = BTreeMap::new();
            for (date, objects) in &before {
                if !held.contains_key(date) && !objects.is_empty() {
                    for (day, n) in self
                        .lake
                        .rows_per_window_day(product, *date, objects)
                        .await?
                    {
                        *unrecorded.entry(day).or_insert(0) += n;
                    }
                }
            }
            self.check_shrink(product, window_key, &normalized, &replaced, &unrecorded)
                .await?;
        }
        let before_paths: BTreeMap<NaiveDate, Vec<String>> = before
            .iter()
            .map(|(d, objects)| (*d, objects.iter().map(|m| m.location.to_string()).collect()))
            .collect();
        // A Delta write's objects carry its token, recorded with the rewrites: a repair removes
        // the uncommitted objects of this write and of no other.
        let token = uuid::Uuid::new_v4().simple().to_string();
        let lake = self.lake.for_write(&token);
        let generations = self
            .state
            .begin_rewrites(
                product,
                &arriving,
                &before_paths,
                tables.is_some().then_some(token.as_str()),
            )
            .await?;
        let dropped = Arc::new(Dropped {
            replaced: Arc::new(replaced),
            merged: Arc::new(merged),
        });
        let before = Arc::new(before);
        crate::progress::writing(generations.len() as u64);
        let results: Vec<Result<Rewritten, SyncError>> = futures::stream::iter(generations)
            .map(|(date, generation)| {
                let (normalized, dropped, before, lake) =
                    (normalized.clone(), dropped.clone(), before.clone(), &lake);
                async move {
                    let new = load(&normalized, date).await?;
                    let batch = new.as_ref().map(|(b, _)| b.clone());
                    // No object goes into the lake once another replica may be writing it.
                    self.state.ensure_writer()?;
                    let state = lake
                        .rewrite_partition(
                            product,
                            date,
                            &before[&date],
                            generation,
                            &dropped,
                            batch,
                        )
                        .await?;
                    ObjectsWritten {
                        product,
                        objects: state.objects.len(),
                        bytes: state.bytes,
                    }
                    .emit();
                    crate::fail_point!("mid-write");
                    let added = new
                        .map(|(b, dropped)| (b.num_rows() as u64, dropped))
                        .unwrap_or((0, 0));
                    Ok((date, state, added))
                }
            })
            .buffer_unordered(crate::lake::WRITERS)
            .collect()
            .await;
        let mut counts = normalized.counts;
        for (added, dropped) in unchanged.values() {
            counts.written += added;
            counts.duplicates += dropped;
        }
        let mut partitions = Vec::with_capacity(results.len());
        let mut doomed = Vec::new();
        let mut data = Change::default();
        for r in results {
            let (date, state, (added, dropped)) = r?;
            counts.written += added;
            counts.duplicates += dropped;
            match &tables {
                // Nothing is deleted: the commit removes the old files from the table, and
                // VACUUM deletes them once `lake.retention` has passed.
                Some(t) => {
                    data.removes.extend(t.data.removes(&before[&date]));
                    let added: Vec<(String, u64, u64)> = state
                        .objects
                        .iter()
                        .zip(&state.object_sizes)
                        .map(|(path, (bytes, rows))| (path.clone(), *bytes, *rows))
                        .collect();
                    data.adds.extend(t.data.adds(&added));
                }
                None => doomed.extend(
                    before_paths[&date]
                        .iter()
                        .filter(|p| !state.objects.contains(p))
                        .cloned(),
                ),
            }
            partitions.push((date, state));
        }
        let quarantine = lake
            .write_quarantine(
                product,
                window_key,
                &normalized.quarantine,
                &dropped.replaced,
                default_day,
                tables.as_ref().map(|t| &t.quarantine),
            )
            .await?;
        WriteCost {
            product,
            window: window_key,
            traffic: self.lake.traffic().since(traffic),
            delivered: counts.read,
            rewritten: partitions.len(),
            rewritten_rows: partitions.iter().map(|(_, p)| p.rows).sum(),
            rewritten_bytes: partitions.iter().map(|(_, p)| p.bytes).sum(),
            unchanged: unchanged.len(),
        }
        .emit();
        if !counts.reconciles() {
            return Err(SyncError::Reconcile {
                window: window_key.to_string(),
                counts,
            });
        }
        Ok(Written {
            counts,
            partitions,
            doomed,
            delta: tables.map(|tables| DeltaWrite {
                tables,
                data,
                quarantine,
            }),
        })
    }

    /// The partitions among `touched` that the write would leave as they are, with the rows
    /// (and duplicates dropped) it delivers to each: every new row is of a day replaced whole,
    /// and each replaced day's content hash matches the one the state recorded. Only partitions
    /// with recorded hashes are looked at, and none when rows merge by identity.
    async fn unchanged(
        &self,
        product: Product,
        normalized: &Arc<Normalized>,
        touched: &BTreeSet<NaiveDate>,
        replaced: &BTreeSet<NaiveDate>,
        merged: &HashSet<Identity>,
    ) -> Result<BTreeMap<NaiveDate, (u64, u64)>, SyncError> {
        if !merged.is_empty() {
            return Ok(BTreeMap::new());
        }
        let recorded = self.state.partition_hashes(product).await?;
        let mut out = BTreeMap::new();
        for date in touched {
            let Some(before) = recorded.get(date) else {
                continue;
            };
            let (hashes, added) = match load(normalized, *date).await? {
                Some((b, dropped)) => (
                    content_hashes(product, &b, *date),
                    (b.num_rows() as u64, dropped),
                ),
                None => (BTreeMap::new(), (0, 0)),
            };
            let only_replaced = hashes.keys().all(|d| replaced.contains(d));
            if only_replaced && replaced.iter().all(|d| hashes.get(d) == before.get(d)) {
                out.insert(*date, added);
            }
        }
        Ok(out)
    }

    /// The shrink guard: for each closed status day this result replaces and the lake holds
    /// rows of, the rows after de-duplication must not fall by more than `lake.max_shrink`, and
    /// never to none. Only the partitions that hold such days are loaded to count them. What
    /// the state records is counted, and `unrecorded`: the rows of each status day in lake
    /// partitions the state knows nothing of.
    pub(super) async fn check_shrink(
        &self,
        product: Product,
        window_key: &str,
        normalized: &Arc<Normalized>,
        replaced: &BTreeSet<NaiveDate>,
        unrecorded: &BTreeMap<NaiveDate, u64>,
    ) -> Result<(), SyncError> {
        let today = Utc::now().date_naive();
        let mut held = self.state.status_day_rows(product).await?;
        for (day, n) in unrecorded {
            let known = held.entry(*day).or_insert(Some(0));
            if let Some(k) = known {
                *k += n;
            }
        }
        let guarded: BTreeMap<NaiveDate, Option<u64>> = replaced
            .iter()
            .filter(|d| **d < today)
            .filter_map(|d| held.get(d).map(|n| (*d, *n)))
            .filter(|(_, n)| *n != Some(0))
            .collect();
        if guarded.is_empty() {
            return Ok(());
        }
        let mut after: BTreeMap<NaiveDate, u64> = guarded.keys().map(|d| (*d, 0)).collect();
        for (date, p) in &normalized.rows.partitions {
            if p.window_days.iter().any(|d| after.contains_key(d))
                && let Some((batch, _)) = load(normalized, *date).await?
            {
                for (d, n) in crate::lake::window_day_rows(product, &batch, *date) {
                    if let Some(total) = after.get_mut(&d) {
                        *total += n;
                    }
                }
            }
        }
        let max_shrink = self.settings.lake.max_shrink;
        for (day, before) in guarded {
            let after = after[&day];
            let too_few = match before {
                Some(b) => after == 0 || (b.saturating_sub(after) as f64) > b as f64 * max_shrink,
                None => after == 0,
            };
            if too_few {
                ShrinkRefused {
                    product,
                    window: window_key,
                    day,
                    before,
                    after,
                }
                .emit();
                return Err(SyncError::Shrink {
                    day,
                    before,
                    after,
                    max_shrink,
                });
            }
        }
        Ok(())
    }
}

/// A rewritten partition, with the rows this job added to it and the superseded copies left out.
type Rewritten = (NaiveDate, PartitionState, (u64, u64));

/// What a write put in the lake, for its commit.
pub(super) struct Written {
    pub(super) counts: Counts,
    pub(super) partitions: Vec<(NaiveDate, PartitionState)>,
    /// Objects the rewritten partitions no longer use: deleted once the commit names the new ones.
    pub(super) doomed: Vec<String>,
    /// In a Delta lake: the tables as the write found them and what it changes in each.
    pub(super) delta: Option<DeltaWrite>,
}

/// A product's two Delta tables.
pub(super) struct Tables {
    pub(super) data: Table,
    pub(super) quarantine: Table,
}

/// What a write changes in a product's Delta tables, committed with the window.
pub(super) struct DeltaWrite {
    pub(super) tables: Tables,
    pub(super) data: Change,
    pub(super) quarantine: Change,
}

/// Partition listings under way at once before a write: each is a round trip to the store.
const LISTINGS: usize = 8;

/// Loading a partition reads spill files: blocking work, off the async threads.
pub(super) async fn load(
    normalized: &Arc<Normalized>,
    date: NaiveDate,
) -> Result<Option<(RecordBatch, u64)>, SyncError> {
    let n = normalized.clone();
    Ok(tokio::task::spawn_blocking(move || n.load(date))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??)
}
