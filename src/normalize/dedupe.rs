//! The repeats map: identities the filter saw more than once, keyed by 128 bits of hash, with
//! the sequence number of their latest copy; loading a partition keeps only that copy.

use std::collections::{HashMap, HashSet};

use arrow::array::{BooleanArray, StringArray, TimestampMicrosecondArray, UInt64Array};
use arrow::buffer::BooleanBuffer;
use arrow::record_batch::RecordBatch;

use super::bloom::second_hash;
use super::buffer::{HASH, SEQ, column};

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

    /// Which rows of a buffered batch to keep: all but earlier copies of repeated identities.
    pub(super) fn keep(&self, b: &RecordBatch) -> BooleanArray {
        let hashes = column::<UInt64Array>(b, HASH).values();
        let seqs = column::<UInt64Array>(b, SEQ).values();
        let wo = column::<StringArray>(b, "work_order_id");
        let issue = column::<StringArray>(b, "issue_id");
        let status = column::<StringArray>(b, "status");
        let ts = column::<TimestampMicrosecondArray>(b, "status_datetime").values();
        let keep = BooleanBuffer::collect_bool(b.num_rows(), |i| {
            if !self.hashes.contains(&hashes[i]) {
                return true;
            }
            let key = (
                hashes[i],
                second_hash(wo.value(i), issue.value(i), status.value(i), ts[i]),
            );
            self.latest
                .get(&key)
                .is_none_or(|latest| *latest == seqs[i])
        });
        BooleanArray::new(keep, None)
    }
}
