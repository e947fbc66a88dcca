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
    ArrayRef, ArrowPrimitiveType, AsArray, BooleanArray, Int8Array, StringArray,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::buffer::{BooleanBuffer, Buffer as ArrowBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Field, Int8Type, Schema, SchemaRef, TimestampMicrosecondType, UInt64Type,
};
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

/// Rows as they arrive, in one set of column vectors: appending to one place keeps the hot loop
/// in cache, where a builder per partition scattered every row across ~400 of them.
///
/// A spilled chunk's vectors come back to the store for a later chunk. A 10M-row import spills
/// ~30 times; freeing each spill's buffer and allocating the next one's faulted ~1 GB of fresh
/// pages in, and the trim that gave the freed pages back cost a second of system time. Reused,
/// the two buffers' worth the budget provides for stay resident, so memory is the same
/// whatever the export's size (1M- and 10M-row JSON imports peaked at 70 and 90 MiB, and now
/// at 107 and 118), and a 10M-row Parquet import took 7.0 s where it took 7.6.
struct Buffer {
    sp: Text,
    phase: Vec<i8>,
    issue: Text,
    status: Text,
    ts: Vec<i64>,
    reason: Text,
    wo: Text,
    seq: Vec<u64>,
    hash: Vec<u64>,
    /// Each row's `event_date` as days since the epoch: how rows are grouped, not stored.
    day: Vec<i32>,
}

/// A text column's values and offsets, as a `StringArray` holds them.
struct Text {
    values: Vec<u8>,
    offsets: Vec<i32>,
}

impl Text {
    fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    #[inline]
    fn push(&mut self, s: &str) {
        self.values.extend_from_slice(s.as_bytes());
        let end = i32::try_from(self.values.len()).expect("a chunk's text stays under 2 GiB");
        self.offsets.push(end);
    }

    fn finish(self) -> StringArray {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        // SAFETY: the values are whole `&str`s laid end to end and the offsets are their
        // boundaries, so every slice between two offsets is valid UTF-8.
        unsafe { StringArray::new_unchecked(offsets, ArrowBuffer::from_vec(self.values), None) }
    }

    /// The vectors of a finished column, emptied, if nothing else holds them.
    fn reclaim(column: ArrayRef) -> Option<Self> {
        let array = column.as_string::<i32>().clone();
        drop(column);
        let (offsets, values, _) = array.into_parts();
        let mut offsets = offsets.into_inner().into_inner().into_vec::<i32>().ok()?;
        let mut values = values.into_vec::<u8>().ok()?;
        offsets.clear();
        offsets.push(0);
        values.clear();
        Some(Self { values, offsets })
    }
}

/// The vector behind a finished primitive column, emptied, if nothing else holds it.
fn reclaim<T: ArrowPrimitiveType>(column: ArrayRef) -> Option<Vec<T::Native>> {
    let array = column.as_primitive::<T>().clone();
    drop(column);
    let (_, values, _) = array.into_parts();
    let mut values = values.into_inner().into_vec().ok()?;
    values.clear();
    Some(values)
}

impl Buffer {
    /// Vectors sized for `rows` rows whose text columns hold `text` bytes each, so that a
    /// chunk's do not grow by doubling and copying as it fills.
    fn with_capacity(rows: usize, text: [usize; 5]) -> Self {
        Self {
            sp: Text::with_capacity(rows, text[0]),
            phase: Vec::with_capacity(rows),
            issue: Text::with_capacity(rows, text[1]),
            status: Text::with_capacity(rows, text[2]),
            ts: Vec::with_capacity(rows),
            reason: Text::with_capacity(rows, text[3]),
            wo: Text::with_capacity(rows, text[4]),
            seq: Vec::with_capacity(rows),
            hash: Vec::with_capacity(rows),
            day: Vec::with_capacity(rows),
        }
    }

    /// What each text column of a full chunk needs, from this chunk's rows. A chunk cut short
    /// (by a spill) says less about the next, so it is scaled up at most fourfold, and no
    /// column gets more than `limit`: past it the buffer spills anyway.
    fn next_capacity(&self, limit: usize) -> [usize; 5] {
        let rows = self.seq.len().max(1);
        [&self.sp, &self.issue, &self.status, &self.reason, &self.wo].map(|t| {
            let bytes = t.values.len();
            let full = (bytes * CHUNK_ROWS / rows).min(bytes * 4);
            (full + full / 8).min(limit)
        })
    }

    fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The buffered rows as a batch and their days; the buffer continues with `next`.
    fn take(&mut self, next: Self) -> (RecordBatch, Vec<i32>) {
        let Self {
            sp,
            phase,
            issue,
            status,
            ts,
            reason,
            wo,
            seq,
            hash,
            day,
        } = std::mem::replace(self, next);
        let cols: Vec<ArrayRef> = vec![
            Arc::new(sp.finish()),
            Arc::new(Int8Array::from(phase)),
            Arc::new(issue.finish()),
            Arc::new(status.finish()),
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
            Arc::new(reason.finish()),
            Arc::new(wo.finish()),
            Arc::new(UInt64Array::from(seq)),
            Arc::new(UInt64Array::from(hash)),
        ];
        let batch = RecordBatch::try_new(buffer_schema(), cols).expect("buffer schema matches");
        (batch, day)
    }

    /// A spilled chunk's vectors, emptied for the next chunk; `None` if any is still shared.
    fn reclaim(batch: RecordBatch, mut day: Vec<i32>) -> Option<Self> {
        let (_, cols, _) = batch.into_parts();
        let [sp, phase, issue, status, ts, reason, wo, seq, hash] =
            <[ArrayRef; 9]>::try_from(cols).ok()?;
        day.clear();
        Some(Self {
            sp: Text::reclaim(sp)?,
            phase: reclaim::<Int8Type>(phase)?,
            issue: Text::reclaim(issue)?,
            status: Text::reclaim(status)?,
            ts: reclaim::<TimestampMicrosecondType>(ts)?,
            reason: Text::reclaim(reason)?,
            wo: Text::reclaim(wo)?,
            seq: reclaim::<UInt64Type>(seq)?,
            hash: reclaim::<UInt64Type>(hash)?,
            day,
        })
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
    /// Each chunk's rows' days, kept for the chunk's next use.
    days: Vec<Vec<i32>>,
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
        let (chunks, days) = chunks.into_iter().unzip();
        Self {
            chunks,
            days,
            rows: by_day
                .into_iter()
                .map(|(d, rows)| (date_of_day(d), rows))
                .collect(),
            status_days,
        }
    }

    /// The chunks' vectors, emptied for new rows.
    fn into_spare(self) -> Vec<Buffer> {
        self.chunks
            .into_iter()
            .zip(self.days)
            .filter_map(|(batch, day)| Buffer::reclaim(batch, day))
            .collect()
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
        b.sp.push(r.service_point_id);
        b.phase.push(r.phase);
        b.issue.push(r.issue_id);
        b.status.push(r.status);
        b.ts.push(r.status_datetime);
        b.reason.push(r.reason);
        b.wo.push(r.work_order_id);
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
            rows.repeats.latest.len() < 30_000,
            "false positives stay near 1%: {}",
            rows.repeats.latest.len()
        );
        let (reasons, dropped) = load_all(&rows);
        assert_eq!((reasons.len(), dropped), (300_000, 0));
    }
}
