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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::BuildHasher;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Int8Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
    UInt64Array,
};
use arrow::buffer::BooleanBuffer;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use super::spill::{Spill, SpillError, Spilled, write_file};
use super::time::{date_of_day, day_number};
use crate::product::Product;

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error(transparent)]
    Spill(#[from] SpillError),
}

/// One valid row, as the normalizer hands it over.
pub struct Row<'a> {
    pub service_point_id: &'a str,
    pub phase: i8,
    pub issue_id: &'a str,
    pub status: &'a str,
    pub status_datetime: i64,
    pub reason: &'a str,
    pub work_order_id: &'a str,
    /// `event_date` as days since the epoch.
    pub event_day: i32,
    /// [`identity_hash`] of the row.
    pub hash: u64,
}

/// A fixed-seed hash of a row's identity: fast (it runs once per row) and well mixed in all 64
/// bits, which the Bloom filter slices into a block index and bit positions.
pub fn identity_hash(wo: &str, issue: &str, status: &str, ts: i64) -> u64 {
    foldhash::quality::FixedState::with_seed(0x6470_7373).hash_one((wo, issue, status, ts))
}

/// The other 64 bits of a repeated identity's key, from an unrelated seed.
fn second_hash(wo: &str, issue: &str, status: &str, ts: i64) -> u64 {
    foldhash::quality::FixedState::with_seed(0x7379_6e63_2d32).hash_one((wo, issue, status, ts))
}

/// A blocked Bloom filter (all of a key's bits in one 64-byte block, so one cache miss per
/// row instead of seven), sized for the export's expected row count and chained with larger,
/// tighter filters should the estimate prove low; memory follows the export and the
/// false-positive rate stays near 1%.
struct Bloom {
    filters: Vec<BloomFilter>,
    next_capacity: u64,
}

/// One cache line of filter bits.
#[derive(Clone, Copy)]
#[repr(align(64))]
struct Block([u64; 8]);

struct BloomFilter {
    blocks: Vec<Block>,
    capacity: u64,
    inserted: u64,
}

impl BloomFilter {
    fn new(capacity: u64, bits_per_row: u64) -> Self {
        let blocks = (capacity * bits_per_row).div_ceil(512).max(1) as usize;
        Self {
            blocks: vec![Block([0; 8]); blocks],
            capacity,
            inserted: 0,
        }
    }

    /// The block and the seven bits of `h` within it.
    fn locate(&self, h: u64) -> (usize, [u16; 7]) {
        let block = ((h >> 32).wrapping_mul(self.blocks.len() as u64) >> 32) as usize;
        let bits = std::array::from_fn(|i| (h.rotate_left(9 * i as u32) & 511) as u16);
        (block, bits)
    }

    fn contains(&self, h: u64) -> bool {
        let (b, bits) = self.locate(h);
        let block = &self.blocks[b];
        bits.iter()
            .all(|&bit| block.0[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    /// Loads the block of `h` into the cache without waiting on it.
    fn touch(&self, h: u64) -> u64 {
        let (b, _) = self.locate(h);
        self.blocks[b].0[0]
    }

    fn insert(&mut self, h: u64) {
        let (b, bits) = self.locate(h);
        let block = &mut self.blocks[b];
        for bit in bits {
            block.0[(bit / 64) as usize] |= 1 << (bit % 64);
        }
        self.inserted += 1;
    }
}

impl Bloom {
    fn new(expected: u64) -> Self {
        Self {
            filters: Vec::new(),
            next_capacity: expected.max(1 << 16),
        }
    }

    fn bytes(&self) -> usize {
        self.filters
            .iter()
            .map(|f| f.blocks.len() * std::mem::size_of::<Block>())
            .sum()
    }

    /// Starts loading the blocks of `hashes`; independent loads overlap their cache misses.
    fn prefetch(&self, hashes: impl Iterator<Item = u64>) {
        let mut sink = 0;
        for h in hashes {
            for f in &self.filters {
                sink ^= f.touch(h);
            }
        }
        std::hint::black_box(sink);
    }

    /// Inserts `h`; true when it (probably) was there already.
    fn check_and_insert(&mut self, h: u64) -> bool {
        if self.filters.iter().any(|f| f.contains(h)) {
            return true;
        }
        if self.filters.last().is_none_or(|f| f.inserted >= f.capacity) {
            // The first filter takes 12 bits a row; later ones 16, so their false positives add
            // little to the first's.
            let per_row = if self.filters.is_empty() { 12 } else { 16 };
            self.filters
                .push(BloomFilter::new(self.next_capacity, per_row));
            self.next_capacity *= 4;
        }
        self.filters
            .last_mut()
            .expect("one filter at least")
            .insert(h);
        false
    }
}

type Mixed = foldhash::fast::FixedState;

/// Identities seen more than once (or that the filter took for such), with their latest copy.
#[derive(Default)]
pub struct Repeats {
    latest: HashMap<(u64, u64), u64, Mixed>,
    /// Looked up for every row a partition loads: a fast hash, as its keys are hashes already.
    hashes: HashSet<u64, Mixed>,
    /// Roughly what the two maps hold, counted against the memory budget.
    bytes: usize,
}

impl Repeats {
    /// Which rows of a buffered batch to keep: all but earlier copies of repeated identities.
    fn keep(&self, b: &RecordBatch) -> BooleanArray {
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

const SEQ: &str = "_seq";
const HASH: &str = "_hash";

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("buffered batches have every column")
}

/// The buffered form: the lake's data columns (its schema less the lineage columns the load
/// adds) plus the sequence number and identity hash.
fn buffer_schema() -> SchemaRef {
    let lake = Product::HidWorkOrders.lake_schema();
    let mut fields: Vec<Field> = lake.fields()[..DATA_COLUMNS]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SEQ, DataType::UInt64, false));
    fields.push(Field::new(HASH, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
}

/// The lake schema's data columns come first; `_job_id` and `_ingested_at` follow.
const DATA_COLUMNS: usize = 7;

/// Rows as they arrive, in one set of builders: appending to one place keeps the hot loop in
/// cache, where a builder per partition scattered every row across ~400 of them.
struct Buffer {
    sp: StringBuilder,
    phase: Int8Builder,
    issue: StringBuilder,
    status: StringBuilder,
    ts: Vec<i64>,
    reason: StringBuilder,
    wo: StringBuilder,
    seq: Vec<u64>,
    hash: Vec<u64>,
    /// Each row's `event_date` as days since the epoch: how rows are grouped, not stored.
    day: Vec<i32>,
}

impl Buffer {
    /// Builders sized for a whole chunk whose text columns hold `text` bytes each. A chunk
    /// allocated once at its final size, the same size as the chunk it follows, reuses that
    /// chunk's freed memory; builders left to grow by doubling strew the heap with blocks of
    /// every size, and the process's memory creeps up with each spill.
    fn with_capacity(text: [usize; 5]) -> Self {
        let strings = |bytes| StringBuilder::with_capacity(CHUNK_ROWS, bytes);
        Self {
            sp: strings(text[0]),
            phase: Int8Builder::with_capacity(CHUNK_ROWS),
            issue: strings(text[1]),
            status: strings(text[2]),
            ts: Vec::with_capacity(CHUNK_ROWS),
            reason: strings(text[3]),
            wo: strings(text[4]),
            seq: Vec::with_capacity(CHUNK_ROWS),
            hash: Vec::with_capacity(CHUNK_ROWS),
            day: Vec::with_capacity(CHUNK_ROWS),
        }
    }

    /// What each text column of a full chunk needs, from this chunk's rows, rounded up so
    /// that chunks of similar rows ask for exactly the same sizes. A chunk cut short (by a
    /// spill) says less about the next, so it is scaled up at most fourfold, and no column
    /// gets more than `limit`: past it the buffer spills anyway.
    fn next_capacity(&self, limit: usize) -> [usize; 5] {
        let rows = self.seq.len().max(1);
        [&self.sp, &self.issue, &self.status, &self.reason, &self.wo].map(|b| {
            let bytes = b.values_slice().len();
            let full = (bytes * CHUNK_ROWS / rows).min(bytes * 4);
            (full + full / 8).next_multiple_of(1 << 16).min(limit)
        })
    }

    fn take(&mut self, limit: usize) -> Option<(RecordBatch, Vec<i32>)> {
        if self.seq.is_empty() {
            return None;
        }
        let next = Self::with_capacity(self.next_capacity(limit));
        let Self {
            mut sp,
            mut phase,
            mut issue,
            mut status,
            ts,
            mut reason,
            mut wo,
            seq,
            hash,
            day,
        } = std::mem::replace(self, next);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(sp.finish()),
            Arc::new(phase.finish()),
            Arc::new(issue.finish()),
            Arc::new(status.finish()),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(reason.finish()),
            Arc::new(wo.finish()),
            Arc::new(UInt64Array::from(seq)),
            Arc::new(UInt64Array::from(hash)),
        ];
        let batch = RecordBatch::try_new(buffer_schema(), cols).expect("buffer schema matches");
        Some((batch, day))
    }
}

/// Rows per buffered batch.
const CHUNK_ROWS: usize = 65_536;

/// Buffered rows and where each partition's rows are among them (chunk, row), in arrival
/// order. A partition's batch is gathered from the chunks when it is needed, so grouping costs
/// no copy of the whole buffer.
#[derive(Default)]
struct Grouped {
    chunks: Vec<RecordBatch>,
    rows: BTreeMap<NaiveDate, Vec<(u32, u32)>>,
    status_days: BTreeMap<NaiveDate, BTreeSet<NaiveDate>>,
}

impl Grouped {
    fn new(chunks: Vec<(RecordBatch, Vec<i32>)>) -> Self {
        let mut by_day: BTreeMap<i32, Vec<(u32, u32)>> = BTreeMap::new();
        let mut days: BTreeSet<(i32, i32)> = BTreeSet::new();
        for (c, (batch, event_days)) in chunks.iter().enumerate() {
            let ts = column::<TimestampMicrosecondArray>(batch, "status_datetime").values();
            let mut last = None;
            for (r, (day, t)) in event_days.iter().zip(ts.iter()).enumerate() {
                by_day.entry(*day).or_default().push((c as u32, r as u32));
                // Rows arrive mostly in time order: most rows repeat the previous pair.
                let pair = (*day, day_number(*t));
                if last != Some(pair) {
                    last = Some(pair);
                    days.insert(pair);
                }
            }
        }
        let mut status_days: BTreeMap<NaiveDate, BTreeSet<NaiveDate>> = BTreeMap::new();
        for (day, status_day) in days {
            status_days
                .entry(date_of_day(day))
                .or_default()
                .insert(date_of_day(status_day));
        }
        Self {
            chunks: chunks.into_iter().map(|(b, _)| b).collect(),
            rows: by_day
                .into_iter()
                .map(|(d, rows)| (date_of_day(d), rows))
                .collect(),
            status_days,
        }
    }

    /// One partition's buffered rows as one batch.
    fn gather(&self, date: NaiveDate) -> Option<RecordBatch> {
        let rows = self.rows.get(&date)?;
        let chunks: Vec<&RecordBatch> = self.chunks.iter().collect();
        let indices: Vec<(usize, usize)> = rows
            .iter()
            .map(|(c, r)| (*c as usize, *r as usize))
            .collect();
        Some(
            arrow::compute::interleave_record_batch(&chunks, &indices)
                .expect("indices come from these chunks"),
        )
    }
}

/// A spill's writer thread. A store dropped without `finish` (a failed job) still waits for
/// it, so the thread cannot write into the scratch directory as it is being removed.
struct Writing(Option<std::thread::JoinHandle<Result<(), SpillError>>>);

impl Writing {
    fn wait(&mut self) -> Result<(), SpillError> {
        let Some(writing) = self.0.take() else {
            return Ok(());
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
            current: Buffer::with_capacity([1 << 20; 5]),
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
            self.repeats.hashes.insert(hash);
            let key = (
                hash,
                second_hash(r.work_order_id, r.issue_id, r.status, r.status_datetime),
            );
            if self.repeats.latest.insert(key, self.seq).is_none() {
                // An entry and a hash, with the tables' slack.
                self.repeats.bytes += 64;
            }
        }
        let b = &mut self.current;
        b.sp.append_value(r.service_point_id);
        b.phase.append_value(r.phase);
        b.issue.append_value(r.issue_id);
        b.status.append_value(r.status);
        b.ts.push(r.status_datetime);
        b.reason.append_value(r.reason);
        b.wo.append_value(r.work_order_id);
        b.seq.push(self.seq);
        b.hash.push(hash);
        b.day.push(r.event_day);
        self.current_bytes += 44
            + r.service_point_id.len()
            + r.issue_id.len()
            + r.status.len()
            + r.reason.len()
            + r.work_order_id.len();
        if b.seq.len() >= CHUNK_ROWS {
            self.end_chunk();
        }
        if self.buffered + self.current_bytes > self.limit {
            self.spill()?;
        }
        Ok(())
    }

    /// Closes the current chunk, counting what it really holds (builders round capacity up),
    /// and sets how much the buffer may hold: one budget covers it, the duplicate filter and the
    /// repeats map, which grow with the export, so memory stays flat however large it is.
    fn end_chunk(&mut self) {
        if let Some((batch, days)) = self.current.take(self.limit) {
            self.buffered += batch.get_array_memory_size() + days.capacity() * 4;
            self.chunks.push((batch, days));
        }
        self.current_bytes = 0;
        // Half each for the buffer being filled and the one being spilled.
        let fixed = self.bloom.bytes() + self.repeats.bytes;
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
            drop(g);
            crate::alloc::release_freed();
            written.map(drop)
        }));
        Ok(())
    }

    /// Waits for the spill being written, if any.
    fn wait(&mut self) -> Result<(), RowsError> {
        Ok(self.writing.wait()?)
    }

    pub fn finish(mut self) -> Result<Rows, RowsError> {
        // Once rows had to spill, the rest spill too: the writer's partitions need the memory.
        if !self.spill.is_empty() {
            self.spill()?;
        }
        self.wait()?;
        let memory = self.take_grouped().unwrap_or_default();
        self.note(&memory);
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
            rows.repeats.latest.len() < 30_000,
            "false positives stay near 1%: {}",
            rows.repeats.latest.len()
        );
        let (reasons, dropped) = load_all(&rows);
        assert_eq!((reasons.len(), dropped), (300_000, 0));
    }
}
