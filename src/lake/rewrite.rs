//! Rewriting one partition with bounded memory: its old objects are read a row group at a time,
//! filtered and merged in time order with the new rows, and encoded as they come, so memory holds
//! a batch of old rows, the new rows and the row group being written, never the partition.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::{BooleanArray, RecordBatch};
use arrow::compute::{filter_record_batch, interleave_record_batch};
use chrono::NaiveDate;
use futures::TryStreamExt;
use object_store::ObjectMeta;
use object_store::path::Path;

use super::columns::{Identity, content_hashes, window_days};
use super::encode::{Layout, PartWriter, conform, sort_rows};
use super::{Lake, LakeError, parquet_err};
use crate::model::PartitionState;
use crate::normalize::keys::Identities;
use crate::normalize::order_keys;
use crate::normalize::time::{date_of_day, day_of_date, rows_per_day};
use crate::product::Product;

/// Old batches read ahead of the encoder: the store's latency hides behind encoding.
const READ_AHEAD: usize = 2;

/// What a rewrite drops from a partition's old rows.
#[derive(Clone)]
pub struct Dropped {
    /// Window days whose rows are replaced whole.
    pub replaced: Arc<BTreeSet<NaiveDate>>,
    /// Identities the job delivers for days it does not replace: their old copies go.
    pub merged: Arc<HashSet<Identity>>,
}

impl Lake {
    /// Rewrites one partition whose objects are `existing`: its rows of replaced window days are
    /// dropped, and so are rows whose identity is merged; then `new` is added. The new objects
    /// are put; the old ones the result does not reuse are left for the caller to delete once
    /// the state records the new set. `generation` names the parts of a multi-object result.
    pub async fn rewrite_partition(
        &self,
        product: Product,
        date: NaiveDate,
        existing: &[ObjectMeta],
        generation: i64,
        dropped: &Dropped,
        new: Option<RecordBatch>,
    ) -> Result<PartitionState, LakeError> {
        let prefix = self.partition(product, date);
        let (tx, mut rx) = tokio::sync::mpsc::channel::<RecordBatch>(READ_AHEAD);
        // Decoding old rows, merging and encoding are CPU work: on a blocking thread, or the
        // partitions written at once would take turns on one async thread.
        let encoder = {
            let (prefix, dropped) = (prefix.clone(), dropped.clone());
            let mut writer = PartWriter::new(
                product.lake_schema(),
                &Layout::data(product),
                self.target_file_size,
                &self.scratch,
            );
            tokio::task::spawn_blocking(move || {
                let mut merge = Merge::new(product, date, &prefix, dropped, new);
                while let Some(old) = rx.blocking_recv() {
                    if let Some(b) = merge.next(old)? {
                        merge.tally(&b);
                        writer.write(&b).map_err(parquet_err(&merge.prefix))?;
                    }
                }
                if let Some(rest) = merge.rest() {
                    merge.tally(&rest);
                    writer.write(&rest).map_err(parquet_err(&merge.prefix))?;
                }
                let parts = writer.finish().map_err(parquet_err(&merge.prefix))?;
                Ok::<_, LakeError>((parts, merge.state))
            })
        };
        let mut old = self.batches(existing);
        let read = async {
            while let Some(b) = old.try_next().await? {
                if tx.send(b).await.is_err() {
                    break; // the encoder failed: its error is the one to report
                }
            }
            Ok::<_, LakeError>(())
        }
        .await;
        drop(tx);
        let encoded = encoder.await.map_err(|source| LakeError::Task {
            path: prefix.to_string(),
            source,
        })?;
        // A failed read ends the feed early: what was encoded is not the partition, never put.
        read?;
        let (parts, mut state) = encoded?;
        let generation = (parts.len() > 1).then_some(generation);
        for (path, bytes, rows) in self.put_parts(&prefix, generation, parts).await? {
            state.objects.push(path);
            state.object_sizes.push((bytes, rows));
            state.bytes += bytes;
        }
        Ok(state)
    }
}

/// The merge of a partition's kept old rows (in time order, as the lake writes them) with the new
/// rows (sorted once), and the tally of what the result holds.
struct Merge {
    product: Product,
    /// The partition's day, as days since the epoch.
    day: i32,
    prefix: Path,
    schema: arrow::datatypes::SchemaRef,
    replaced: Arc<BTreeSet<NaiveDate>>,
    merged: Arc<HashSet<Identity>>,
    new: Option<RecordBatch>,
    /// New rows before this index are written.
    cursor: usize,
    state: PartitionState,
}

impl Merge {
    /// Sorts the new rows: CPU work, so built on the encoder's thread.
    fn new(
        product: Product,
        date: NaiveDate,
        prefix: &Path,
        dropped: Dropped,
        new: Option<RecordBatch>,
    ) -> Self {
        Self {
            product,
            day: day_of_date(date),
            prefix: prefix.clone(),
            schema: product.lake_schema(),
            replaced: dropped.replaced,
            merged: dropped.merged,
            new: new
                .filter(|b| b.num_rows() > 0)
                .map(|b| sort_rows(product, &b)),
            cursor: 0,
            state: PartitionState::default(),
        }
    }

    /// The kept rows of one old batch, with the new rows that sort at or before its last row
    /// merged in; ties keep the old row first. Old rows out of order (a file another tool
    /// wrote) still all come out once, merely less sorted.
    fn next(&mut self, old: RecordBatch) -> Result<Option<RecordBatch>, LakeError> {
        let old = conform(&old, &self.schema).map_err(|detail| LakeError::Schema {
            path: self.prefix.to_string(),
            detail,
        })?;
        let days = window_days(self.product, &old, date_of_day(self.day));
        let ids = (!self.merged.is_empty()).then(|| Identities::of(self.product, &old, self.day));
        let mask: BooleanArray = (0..old.num_rows())
            .map(|i| {
                let replaced = self.replaced.contains(&date_of_day(days[i]));
                let superseded = ids
                    .as_ref()
                    .is_some_and(|ids| self.merged.contains(&ids.both(i)));
                Some(!replaced && !superseded)
            })
            .collect();
        let kept = filter_record_batch(&old, &mask).expect("mask length matches");
        if kept.num_rows() == 0 {
            return Ok(None);
        }
        let Some(new) = &self.new else {
            return Ok(Some(kept));
        };
        let old_keys = order_keys(self.product, &kept);
        let new_keys = order_keys(self.product, new);
        let (old_ts, new_ts) = (&old_keys[..], &new_keys[self.cursor..]);
        let last = old_ts.iter().copied().max().expect("kept is not empty");
        let take = new_ts.partition_point(|t| *t <= last);
        if take == 0 {
            return Ok(Some(kept));
        }
        let mut order = Vec::with_capacity(old_ts.len() + take);
        let (mut i, mut j) = (0, 0);
        while i < old_ts.len() || j < take {
            if j == take || (i < old_ts.len() && old_ts[i] <= new_ts[j]) {
                order.push((0, i));
                i += 1;
            } else {
                order.push((1, self.cursor + j));
                j += 1;
            }
        }
        self.cursor += take;
        interleave_record_batch(&[&kept, new], &order)
            .map(Some)
            .map_err(|source| LakeError::Arrow {
                path: self.prefix.to_string(),
                source,
            })
    }

    /// The new rows no old row came after.
    fn rest(&mut self) -> Option<RecordBatch> {
        let new = self.new.as_ref()?;
        let rest = new.slice(self.cursor, new.num_rows() - self.cursor);
        self.cursor = new.num_rows();
        (rest.num_rows() > 0).then_some(rest)
    }

    /// Counts, rows per window day and content hashes add up batch by batch (the hashes are
    /// sums).
    fn tally(&mut self, b: &RecordBatch) {
        let date = date_of_day(self.day);
        let s = &mut self.state;
        s.rows += b.num_rows() as u64;
        for (day, n) in rows_per_day(&window_days(self.product, b, date)) {
            *s.day_rows.entry(day).or_insert(0) += n;
        }
        for (day, h) in content_hashes(self.product, b, date) {
            let sum = s.day_hashes.entry(day).or_insert(0);
            *sum = sum.wrapping_add(h);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use arrow::array::AsArray;
    use arrow::compute::concat_batches;

    use super::*;
    use crate::lake::test_support::{batch, memory_lake, status_micros};
    use crate::lake::{content_hashes, identities};
    use crate::normalize::time::day_of_micros;
    use crate::product::test_support::hid;

    const DAY: i64 = 86_400_000_000;

    fn day(n: i64) -> NaiveDate {
        day_of_micros(n * DAY)
    }

    fn work_orders(b: &RecordBatch) -> Vec<String> {
        let wo = b
            .column_by_name("work_order_id")
            .unwrap()
            .as_string::<i32>();
        wo.iter().map(|v| v.unwrap().to_string()).collect()
    }

    #[test]
    fn old_and_new_rows_merge_in_time_order_without_replaced_or_superseded_rows() {
        let dropped = Dropped {
            replaced: Arc::new(BTreeSet::from([day(1)])),
            merged: Arc::new(HashSet::from([identities(
                hid(),
                &batch(&[("A", "-", 10, "j0")]),
                day(0),
            )[0]
            .0])),
        };
        let old = [
            batch(&[
                ("A", "a", 10, "j1"),
                ("B", "b", 20, "j1"),
                ("C", "c", DAY + 1, "j1"),
            ]),
            batch(&[("D", "d", DAY + 30, "j1"), ("E", "e", 2 * DAY + 5, "j1")]),
        ];
        let new = batch(&[
            ("F", "f", 2 * DAY + 1, "j2"),
            ("G", "g", 15, "j2"),
            ("H", "h", DAY + 40, "j2"),
            ("I", "i", 3 * DAY, "j2"),
        ]);
        let mut merge = Merge::new(hid(), day(0), &Path::from("t"), dropped, Some(new));
        let mut out = Vec::new();
        for b in old {
            out.extend(merge.next(b).unwrap());
        }
        out.extend(merge.rest());
        for b in &out {
            merge.tally(b);
        }
        let all = concat_batches(&out[0].schema(), &out).unwrap();
        assert_eq!(work_orders(&all), ["G", "B", "H", "F", "E", "I"]);
        let ts = status_micros(&all).values();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]), "{ts:?}");
        assert_eq!(merge.state.rows, 6);
        assert_eq!(
            merge.state.day_rows,
            BTreeMap::from([(day(0), 2), (day(1), 1), (day(2), 2), (day(3), 1)])
        );
        assert_eq!(merge.state.day_hashes, content_hashes(hid(), &all, day(0)));
    }

    /// `n` rows, a minute apart from `start`, with ids that do not compress away.
    fn minutes(n: usize, start: i64, job: &str) -> RecordBatch {
        let ids: Vec<String> = (0..n).map(|i| format!("WO-{:09}", i * 7919)).collect();
        let rows: Vec<_> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.as_str(), id.as_str(), start + i as i64 * 60_000_000, job))
            .collect();
        batch(&rows)
    }

    #[tokio::test]
    async fn a_partition_past_the_target_is_rewritten_part_by_part_and_reads_back_whole() {
        let scratch = tempfile::tempdir().unwrap();
        let lake = memory_lake(32 << 10, scratch.path());
        let product = hid();
        let date = day(0);
        let keep_all = Dropped {
            replaced: Arc::default(),
            merged: Arc::default(),
        };
        // Two status days, 1440 rows each, in one partition of several parts.
        let first = concat_batches(
            &product.lake_schema(),
            &[minutes(1440, 0, "j1"), minutes(1440, DAY, "j1")],
        )
        .unwrap();
        let s1 = lake
            .rewrite_partition(product, date, &[], 1, &keep_all, Some(first))
            .await
            .unwrap();
        assert!(s1.objects.len() > 1, "{:?}", s1.objects);
        assert!(s1.objects.iter().all(|o| o.contains("part-g0000000001-")));
        assert_eq!(s1.rows, 2880);

        let existing = lake.list_partition(product, date).await.unwrap();
        let replace_day_one = Dropped {
            replaced: Arc::new(BTreeSet::from([day(1)])),
            merged: Arc::default(),
        };
        let before = lake.traffic();
        let s2 = lake
            .rewrite_partition(
                product,
                date,
                &existing,
                2,
                &replace_day_one,
                Some(minutes(100, DAY + 30, "j2")),
            )
            .await
            .unwrap();
        let read = lake.traffic().since(before);
        assert_eq!(
            read.gets,
            existing.len() as u64,
            "one request per small object"
        );
        assert_eq!(s2.rows, 1440 + 100);
        assert_eq!(s2.day_rows, BTreeMap::from([(day(0), 1440), (day(1), 100)]));

        let stale: Vec<String> = s1.objects.clone();
        lake.delete_objects(&stale).await.unwrap();
        let back = lake.read_partition(product, date).await.unwrap();
        let all = concat_batches(&product.lake_schema(), &back).unwrap();
        assert_eq!(all.num_rows(), 1540);
        let ts = status_micros(&all).values();
        assert!(ts.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(content_hashes(hid(), &all, day(0)), s2.day_hashes);
    }
}
