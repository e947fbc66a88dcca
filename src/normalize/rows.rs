//! Valid rows on their way to the lake, grouped by partition, in bounded memory.
//!
//! A 13-month export touches ~400 partitions and can hold millions of rows, so rows are buffered
//! in arrival order only up to a memory budget; past it they are spilled to an Arrow IPC file on
//! local disk, a record batch per partition, and freed. The writer later loads one partition at
//! a time.
//!
//! De-duplication ("an identity served twice keeps its last occurrence", or the one with the
//! greatest declared `latest` value) must see the whole
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

use super::bloom::Bloom;
use super::buffer::{Buffer, CHUNK_ROWS, Grouped, buffer_schema, order_keys};
use super::dedupe::Repeats;
use super::keys::{SECOND, hash_keys};
use super::spill::{Spill, SpillError, Spilled, write_file};
use super::time::day_of_date;
use super::validate::{Checked, key};
use crate::product::{Kind, Product};

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
    window_days: BTreeSet<NaiveDate>,
}

/// Rows being collected, spilled past `budget` bytes.
pub struct RowStore {
    product: Product,
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
    pub fn new(product: Product, scratch: &Path, budget: usize, expected_rows: u64) -> Self {
        let texts = product
            .stored()
            .filter(|(_, c)| c.kind == Kind::Utf8)
            .count();
        Self {
            product,
            current: Buffer::with_capacity(product, CHUNK_ROWS, &vec![1 << 20; texts]),
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

    /// Buffers the `k`th accepted row of `checked`.
    pub fn push(&mut self, checked: &Checked, k: usize) -> Result<(), RowsError> {
        self.seq += 1;
        let accepted = &checked.accepted[k];
        let typed = checked.typed(k);
        let raw = &checked.batch.columns;
        if self.bloom.check_and_insert(accepted.hash) {
            let second = hash_keys(
                SECOND,
                self.product
                    .identity
                    .iter()
                    .map(|&c| key(&raw[c].cell(accepted.row), typed[c])),
            );
            self.repeats.record(accepted.hash, second, self.seq);
        }
        let text = self.current.push(
            raw,
            accepted.row,
            typed,
            (accepted.hash, accepted.day),
            self.seq,
        );
        // Fixed-width values and the sequence, hash and day take about this much a row.
        self.current_bytes += 20 + 8 * self.current.cols.len() + text;
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
                let text = self.current.next_capacity(self.limit);
                Buffer::with_capacity(self.product, CHUNK_ROWS, &text)
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
        (!chunks.is_empty()).then(|| Grouped::new(self.product, chunks))
    }

    fn note(&mut self, g: &Grouped) {
        for (date, days) in &g.window_days {
            let p = self.partitions.entry(*date).or_default();
            p.window_days.extend(days.iter().copied());
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
        let schema = buffer_schema(self.product);
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
            let written = write_file(&path, &schema, batches);
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
        let memory = self
            .take_grouped()
            .unwrap_or_else(|| Grouped::empty(self.product));
        self.note(&memory);
        // No more rows come: the vectors kept for them go back to the system before the
        // writer needs memory.
        self.spare = Vec::new();
        self.current = Buffer::with_capacity(self.product, 0, &[]);
        crate::alloc::release_freed();
        let partitions = std::mem::take(&mut self.partitions)
            .into_iter()
            .map(|(date, p)| {
                (
                    date,
                    PartitionRows {
                        spilled: p.spilled,
                        window_days: p.window_days,
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
    /// The window days its rows fall on.
    pub window_days: BTreeSet<NaiveDate>,
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
        let keep = self.repeats.keep(product, &batches, day_of_date(date));
        for (n, keep) in keep.iter().enumerate() {
            kept_rows.extend(keep.values().set_indices().map(|row| (n, row)));
        }
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let dropped = (total - kept_rows.len()) as u64;
        // In the lake's order (by the order column, ties in arrival order) in the same pass:
        // the writer then finds a new partition sorted and copies nothing.
        let keys: Vec<_> = batches.iter().map(|b| order_keys(product, b)).collect();
        let at = |&(b, r): &(usize, usize)| keys[b][r];
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
        let data = kept.num_columns() - 2;
        let mut cols: Vec<ArrayRef> = kept.columns()[..data].to_vec();
        cols.push(Arc::new(super::repeated(job_id, n)));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(vec![ingested_at; n]).with_timezone("UTC"),
        ));
        let batch = RecordBatch::try_new(product.lake_schema(), cols).expect("lake schema matches");
        Ok(Some((batch, dropped)))
    }
}
