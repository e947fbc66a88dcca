//! The repeats map: identities the filter saw more than once, keyed by 128 bits of hash, with
//! the sequence number of their latest copy; loading a partition keeps only the copy that wins.
//!
//! The copy served last wins, unless the product declares a `latest` column (a received time):
//! then the copy with its greatest value wins, ties to the one served last. Such a product's
//! identity holds its partition's column, so all copies of an identity are in one partition and
//! the winner is found among the partition's rows as it loads: the map cannot know it, as the
//! filter lets an identity's first copy by without a note.

use std::collections::{HashMap, HashSet};

use arrow::array::{BooleanArray, UInt64Array};
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;

use super::buffer::{HASH, SEQ, column, ordinal_keys};
use super::keys::Identities;
use crate::product::Product;

pub(super) type Mixed = foldhash::fast::FixedState;

/// Identities seen more than once (or that the filter took for such), with their latest copy.
#[derive(Default)]
pub(super) struct Repeats {
    latest: HashMap<(u64, u64), u64, Mixed>,
    /// Looked up for every row a partition loads: a fast hash, as its keys are hashes already.
    hashes: HashSet<u64, Mixed>,
    /// Roughly what the two maps hold, counted against the memory budget.
    bytes: usize,
}

impl Repeats {
    /// Notes a copy of the identity whose hashes are `first` and `second`, `seq` the latest.
    #[inline]
    pub(super) fn record(&mut self, first: u64, second: u64, seq: u64) {
        self.hashes.insert(first);
        if self.latest.insert((first, second), seq).is_none() {
            // An entry and a hash, with the tables' slack.
            self.bytes += 64;
        }
    }

    /// Roughly the memory the map holds.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Which rows of the buffered batches of one partition (whose day is `partition_day`) to
    /// keep: all but the losing copies of repeated identities.
    pub(super) fn keep(
        &self,
        product: Product,
        batches: &[RecordBatch],
        partition_day: i32,
    ) -> Vec<BooleanArray> {
        let ids: Vec<Identities<'_>> = batches
            .iter()
            .map(|b| Identities::of(product, b, partition_day))
            .collect();
        let winners = product
            .latest
            .map(|c| self.winners(product, c, batches, &ids));
        batches
            .iter()
            .zip(&ids)
            .map(|(b, ids)| {
                let hashes = column::<UInt64Array>(b, HASH).values();
                let seqs = column::<UInt64Array>(b, SEQ).values();
                let keep = BooleanBuffer::collect_bool(b.num_rows(), |i| {
                    if !self.hashes.contains(&hashes[i]) {
                        return true;
                    }
                    let key = (hashes[i], ids.second(i));
                    let winner = match &winners {
                        Some(w) => w.get(&key).map(|(_, seq)| seq),
                        None => self.latest.get(&key),
                    };
                    winner.is_none_or(|seq| *seq == seqs[i])
                });
                BooleanArray::new(keep, None)
            })
            .collect()
    }

    /// The winning copy of each repeated identity among a partition's rows: the greatest value
    /// of column `latest`, then the greatest sequence number.
    fn winners(
        &self,
        product: Product,
        latest: usize,
        batches: &[RecordBatch],
        ids: &[Identities<'_>],
    ) -> HashMap<(u64, u64), (i64, u64), Mixed> {
        let mut best: HashMap<(u64, u64), (i64, u64), Mixed> = HashMap::default();
        for (b, ids) in batches.iter().zip(ids) {
            let hashes = column::<UInt64Array>(b, HASH).values();
            let seqs = column::<UInt64Array>(b, SEQ).values();
            let versions = ordinal_keys(&product.columns[latest], b);
            for i in 0..b.num_rows() {
                if self.hashes.contains(&hashes[i]) {
                    let copy = (versions[i], seqs[i]);
                    best.entry((hashes[i], ids.second(i)))
                        .and_modify(|w| *w = (*w).max(copy))
                        .or_insert(copy);
                }
            }
        }
        best
    }
}
