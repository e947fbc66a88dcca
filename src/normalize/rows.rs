//! Valid rows on their way to the lake, grouped by `event_date`, in bounded memory.
//!
//! A 13-month export touches ~400 partitions and can hold millions of rows, so rows are buffered
//! in arrival order only up to a memory budget; past it they are spilled to an Arrow IPC file on
//! local disk, a record batch per partition, and freed. The writer later loads one partition at
//! a time.
//!
//! De-duplication ("an identity served twice keeps its last occurrence") must see the whole
//! export, yet a map of every identity would cost more than the rows. Instead each row carries a
//! sequence number and a 64-bit hash of its identity; a Bloom filter over the hashes catches
//! repeats, and only identities the filter has seen before go into a map, with the sequence
//! number of their latest copy. The map's key is 128 bits of hash, the filter's and a second,
//! independently seeded one, not the identity's text: a tenth of the memory, and two identities
//! would have to agree in all 128 bits to be taken for one. Loading a partition then drops every
//! copy of such an identity but that latest one. The filter's false positives only add entries
//! to the map; they never drop a row.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, TimestampMicrosecondArray};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use super::bloom::{Bloom, second_hash};

use super::buffer::{Buffer, CHUNK_ROWS, DATA_COLUMNS, Grouped, Row, buffer_schema, column};
use super::dedupe::Repeats;
use super::spill::{Spill, SpillError, Spilled, write_file};
use crate::product::Product;

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// A spill's writer thread, which hands back the spilled chunks' vectors. A store dropped
/// without `finish` (a failed job) still waits for it, so the thread cannot write into the
/// scratch directory as it is being removed.
struct Writing(Option<std::thread::JoinHandle<Result<Vec<Buffer>, SpillError>>>);

impl Writing {
    fn wait(&mut self) -> Result<Vec<Buffer>, SpillError> {
        let Some(writing) = self.0.take() else {
            return Ok(Vec::new());
        };
        writing.join().map_err(|_| SpillError {
            path: "spill writer".into(),
            detail: "the writer thread panicked".into(),
        })?
    }
}

impl Drop for Writing {
    fn drop(&mut self) {
        // A failed job is already reporting its own error; this one would add nothing.
        let _ = self.wait();
    }
}

/// Where a partition's rows are: record batches of spill files.
#[derive(Default)]
struct Partition {
    spilled: Vec<Spilled>,
    status_days: BTreeSet<NaiveDate>,
}

/// Rows being collected, spilled past `budget` bytes.
pub struct RowStore {
    current: Buffer,
    /// Spilled chunks' vectors, for the chunks to come.
    spare: Vec<Buffer>,
    chunks: Vec<(RecordBatch, Vec<i32>)>,
    partitions: BTreeMap<NaiveDate, Partition>,
    /// Bytes in finished chunks, and estimated in the current one.
    buffered: usize,
    current_bytes: usize,
    budget: usize,
    /// What the buffer may hold: the budget less the duplicate filter and repeats map.
    limit: usize,
    /// The spill being written, on its own thread. Declared before `spill`, so that it is
    /// dropped (and waited for) before the spill's directory is removed.
    writing: Writing,
    spill: Spill,
    seq: u64,
    bloom: Bloom,
    repeats: Repeats,
}

impl RowStore {
    /// `scratch` is where spill files go (in a private directory removed when done);
    /// `expected_rows` sizes the duplicate filter.
    pub fn new(scratch: &Path, budget: usize, expected_rows: u64) -> Self {
        Self {
            current: Buffer::with_capacity(CHUNK_ROWS, [1 << 20; 5]),
            spare: Vec::new(),
            chunks: Vec::new(),
            partitions: BTreeMap::new(),
            buffered: 0,
            current_bytes: 0,
            budget,
            limit: budget,
            spill: Spill::new(scratch, "rows"),
            writing: Writing(None),
            seq: 0,
            bloom: Bloom::new(expected_rows),
            repeats: Repeats::default(),
        }
    }

    /// Warms the duplicate filter for rows about to be pushed.
    pub fn prefetch(&self, hashes: impl Iterator<Item = u64>) {
        self.bloom.prefetch(hashes);
    }

    pub fn push(&mut self, r: &Row<'_>) -> Result<(), RowsError> {
        self.seq += 1;
        let hash = r.hash;
        if self.bloom.check_and_insert(hash) {
            let second = second_hash(r.work_order_id, r.issue_id, r.status, r.status_datetime);
            self.repeats.record(hash, second, self.seq);
        }
        self.current.push(r, self.seq);
        self.current_bytes += 44
            + r.service_point_id.len()
            + r.issue_id.len()
            + r.status.len()
            + r.reason.len()
            + r.work_order_id.len();
        if self.current.len() >= CHUNK_ROWS {
            self.end_chunk();
        }
        if self.buffered + self.current_bytes > self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Closes the current chunk, counting what it really holds (vectors round capacity up),
    /// and sets how much the buffer may hold: one budget covers it, the duplicate filter and the
    /// repeats map, which grow with the export, so memory stays flat however large it is.
    fn end_chunk(&mut self) {
        if !self.current.is_empty() {
            let next = self.spare.pop().unwrap_or_else(|| {
                Buffer::with_capacity(CHUNK_ROWS, self.current.next_capacity(self.limit))
            });
            let (batch, days) = self.current.take(next);
            self.buffered += batch.get_array_memory_size() + days.capacity() * 4;
            self.chunks.push((batch, days));
        }
        self.current_bytes = 0;
        // Half each for the buffer being filled and the one being spilled.
        let fixed = self.bloom.bytes() + self.repeats.bytes();
        self.limit = (self.budget.saturating_sub(fixed) / 2).max(self.budget / 8);
    }

    /// Every buffered row, grouped by partition.
    fn take_grouped(&mut self) -> Option<Grouped> {
        self.end_chunk();
        self.buffered = 0;
        let chunks = std::mem::take(&mut self.chunks);
        (!chunks.is_empty()).then(|| Grouped::new(chunks))
    }

    fn note(&mut self, g: &Grouped) {
        for (date, days) in &g.status_days {
            let p = self.partitions.entry(*date).or_default();
            p.status_days.extend(days.iter().copied());
        }
    }

    /// Writes the buffered rows to one IPC file, a record batch per partition, and frees them.
    /// Gathering and writing a spill took a third of the normalizer's time, and the
    /// decoder leaves a core half idle: so it runs on a thread of its own while the next
    /// buffer fills, one spill at a time, in order.
    fn spill(&mut self) -> Result<(), RowsError> {
        let Some(g) = self.take_grouped() else {
            return Ok(());
        };
        self.note(&g);
        self.wait()?;
        let (file, path) = self.spill.next_file()?;
        for (n, date) in g.rows.keys().enumerate() {
            self.partitions
                .entry(*date)
                .or_default()
                .spilled
                .push((file, n));
        }
        self.writing.0 = Some(std::thread::spawn(move || {
            let batches = g
                .rows
                .keys()
                .map(|date| g.gather(*date).expect("a partition of this buffer"));
            let written = write_file(&path, &buffer_schema(), batches);
            let spare = g.into_spare();
            crate::alloc::release_freed();
            written.map(|_| spare)
        }));
        Ok(())
    }

    /// Waits for the spill being written, if any, and keeps its vectors for the next buffer.
    /// Vectors left over from the spill before are let go: two buffers' worth circulate, the
    /// one filling and the one spilling, which is what the budget provides for.
    fn wait(&mut self) -> Result<(), RowsError> {
        let spare = self.writing.wait()?;
        if !spare.is_empty() {
            self.spare = spare;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<Rows, RowsError> {
        // Once rows had to spill, the rest spill too: the writer's partitions need the memory.
        if !self.spill.is_empty() {
            self.spill()?;
        }
        self.wait()?;
        let memory = self.take_grouped().unwrap_or_default();
        self.note(&memory);
        // No more rows come: the vectors kept for them go back to the system before the
        // writer needs memory.
        self.spare = Vec::new();
        self.current = Buffer::with_capacity(0, [0; 5]);
        crate::alloc::release_freed();
        let partitions = std::mem::take(&mut self.partitions)
            .into_iter()
            .map(|(date, p)| {
                (
                    date,
                    PartitionRows {
                        spilled: p.spilled,
                        status_days: p.status_days,
                    },
                )
            })
            .collect();
        Ok(Rows {
            partitions,
            memory,
            spill: self.spill,
            repeats: Arc::new(self.repeats),
        })
    }
}

/// One partition's collected rows: batches in spill files, besides any still in memory.
pub struct PartitionRows {
    spilled: Vec<Spilled>,
    pub status_days: BTreeSet<NaiveDate>,
}

/// Every valid row of an export, ready to be loaded partition by partition.
pub struct Rows {
    pub partitions: BTreeMap<NaiveDate, PartitionRows>,
    /// The rows buffered since the last spill.
    memory: Grouped,
    spill: Spill,
    repeats: Arc<Repeats>,
}

impl Rows {
    /// A partition's rows in the lake schema, earlier copies of repeated identities left out,
    /// with how many were left out.
    pub fn load(
        &self,
        product: Product,
        date: NaiveDate,
        job_id: &str,
        ingested_at: i64,
    ) -> Result<Option<(RecordBatch, u64)>, RowsError> {
        let Some(p) = self.partitions.get(&date) else {
            return Ok(None);
        };
        let mut batches = Vec::with_capacity(p.spilled.len() + 1);
        for at in &p.spilled {
            batches.push(self.spill.read(*at)?);
        }
        batches.extend(self.memory.gather(date));
        // The kept rows of every batch gathered in one pass: one copy, where concatenating and
        // then filtering made two.
        let mut kept_rows = Vec::new();
        for (n, b) in batches.iter().enumerate() {
            let keep = self.repeats.keep(b);
            kept_rows.extend(keep.values().set_indices().map(|row| (n, row)));
        }
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let dropped = (total - kept_rows.len()) as u64;
        // In the lake's order (by time, ties in arrival order) in the same pass: the writer
        // then finds a new partition sorted and copies nothing.
        let ts: Vec<&[i64]> = batches
            .iter()
            .map(|b| {
                column::<TimestampMicrosecondArray>(b, "status_datetime")
                    .values()
                    .as_ref()
            })
            .collect();
        let at = |&(b, r): &(usize, usize)| ts[b][r];
        let moved = !kept_rows.is_sorted_by_key(at);
        if moved {
            kept_rows.sort_by_key(at);
        }
        let kept = match batches.as_slice() {
            [only] if dropped == 0 && !moved => only.clone(),
            _ => {
                let refs: Vec<&RecordBatch> = batches.iter().collect();
                arrow::compute::interleave_record_batch(&refs, &kept_rows)
                    .expect("indices come from these batches")
            }
        };
        let n = kept.num_rows();
        let mut cols: Vec<ArrayRef> = kept.columns()[..DATA_COLUMNS].to_vec();
        cols.push(Arc::new(super::repeated(job_id, n)));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(vec![ingested_at; n]).with_timezone("UTC"),
        ));
        let batch = RecordBatch::try_new(product.lake_schema(), cols).expect("lake schema matches");
        Ok(Some((batch, dropped)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;

    use crate::normalize::bloom::identity_hash;
    use crate::normalize::time::day_of_date;

    fn row<'a>(wo: &'a str, ts: i64, reason: &'a str, event: &str) -> Row<'a> {
        Row {
            hash: identity_hash(wo, "7", "New", ts),
            service_point_id: "9",
            phase: 1,
            issue_id: "7",
            status: "New",
            status_datetime: ts,
            reason,
            work_order_id: wo,
            event_day: day_of_date(event.parse().unwrap()),
        }
    }

    fn load_all(rows: &Rows) -> (Vec<String>, u64) {
        let mut reasons = Vec::new();
        let mut dropped = 0;
        for date in rows.partitions.keys() {
            let (b, d) = rows
                .load(Product::HidWorkOrders, *date, "j", 0)
                .unwrap()
                .unwrap();
            dropped += d;
            let r = b.column(5).as_any().downcast_ref::<StringArray>().unwrap();
            reasons.extend(r.iter().map(|x| x.unwrap().to_string()));
        }
        reasons.sort();
        (reasons, dropped)
    }

    #[test]
    fn a_store_dropped_mid_spill_leaves_no_files() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RowStore::new(dir.path(), 1, 10);
        for n in 0..50 {
            s.push(&row(&n.to_string(), n, "r", "2024-06-13")).unwrap();
        }
        assert!(!s.spill.is_empty());
        drop(s);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_spilled_buffer_s_vectors_serve_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        // A budget this small spills after every row.
        let mut s = RowStore::new(dir.path(), 1, 10);
        for n in 0..3 {
            s.push(&row(&n.to_string(), n, "a reason", "2024-06-13"))
                .unwrap();
        }
        s.wait().unwrap();
        let spare = s.spare.first().expect("the spilled chunk came back");
        assert_eq!(spare.seq.len(), 0);
        assert_eq!(spare.reason.offsets, [0]);
        assert!(spare.reason.values.is_empty() && spare.reason.values.capacity() >= 8);
        let rows = s.finish().unwrap();
        assert_eq!(load_all(&rows).0, ["a reason"; 3]);
    }

    #[test]
    fn the_last_copy_wins_across_partitions_and_spills() {
        let dir = tempfile::tempdir().unwrap();
        // A budget this small spills after every row.
        let mut s = RowStore::new(dir.path(), 1, 10);
        s.push(&row("a", 1, "first", "2024-06-13")).unwrap();
        s.push(&row("b", 1, "only", "2024-06-13")).unwrap();
        s.push(&row("a", 1, "second", "2024-06-14")).unwrap();
        s.push(&row("a", 1, "third", "2024-06-13")).unwrap();
        s.push(&row("a", 2, "other instant", "2024-06-13")).unwrap();
        let rows = s.finish().unwrap();
        assert!(rows.partitions.values().any(|p| !p.spilled.is_empty()));
        assert!(rows.spill.files() > 1);
        let (reasons, dropped) = load_all(&rows);
        assert_eq!(reasons, ["only", "other instant", "third"]);
        assert_eq!(dropped, 2);
    }

    #[test]
    fn many_distinct_rows_lose_none_to_false_positives() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = RowStore::new(dir.path(), 64 << 10, 100_000);
        let ids: Vec<String> = (0..300_000).map(|i| i.to_string()).collect();
        for (i, id) in ids.iter().enumerate() {
            s.push(&row(
                id,
                i as i64,
                "r",
                if i % 2 == 0 {
                    "2024-06-13"
                } else {
                    "2024-06-14"
                },
            ))
            .unwrap();
        }
        let rows = s.finish().unwrap();
        assert!(
            rows.repeats.bytes() < 30_000 * 64,
            "false positives stay near 1%: {} bytes of repeats",
            rows.repeats.bytes()
        );
        let (reasons, dropped) = load_all(&rows);
        assert_eq!((reasons.len(), dropped), (300_000, 0));
    }
}
