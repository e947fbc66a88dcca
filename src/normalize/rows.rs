//! Valid rows on their way to the lake, grouped by `event_date`, in bounded memory.
//!
//! A 13-month export touches ~400 partitions and can hold millions of rows, so rows are buffered
//! per partition only up to a memory budget; past it every buffer is spilled to an Arrow IPC file
//! on local disk and emptied. The writer later loads one partition at a time.
//!
//! De-duplication ("an identity served twice keeps its last occurrence") must see the whole
//! export, yet a map of every identity would cost more than the rows. Instead each row carries a
//! sequence number and a 64-bit hash of its identity; a Bloom filter over the hashes catches
//! repeats, and only identities the filter has seen before are kept exactly, with the sequence
//! number of their latest copy. Loading a partition then drops every copy of such an identity but
//! that latest one. The filter's false positives only add entries to the exact map; they never
//! drop a row.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::hash::{Hash, Hasher};
use std::io::{BufReader, BufWriter};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Int8Builder, StringArray, StringBuilder,
    TimestampMicrosecondArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use super::time::day_of_micros;
use crate::product::Product;

#[derive(Debug, thiserror::Error)]
pub enum RowsError {
    #[error("spill file {path}: {detail}")]
    Spill { path: String, detail: String },
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
    pub event_date: NaiveDate,
}

type Identity = (String, String, String, i64);

fn identity_hash(wo: &str, issue: &str, status: &str, ts: i64) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    (wo, issue, status, ts).hash(&mut h);
    h.finish()
}

/// A blocked Bloom filter (all of a key's bits in one 64-byte block, so one cache miss per
/// row instead of seven), sized for the export's expected row count and chained with larger,
/// tighter filters should the estimate prove low; memory follows the export and the
/// false-positive rate stays near 1%.
struct Bloom {
    filters: Vec<BloomFilter>,
    next_capacity: u64,
}

struct BloomFilter {
    blocks: Vec<[u64; 8]>,
    capacity: u64,
    inserted: u64,
}

impl BloomFilter {
    fn new(capacity: u64, bits_per_row: u64) -> Self {
        let blocks = (capacity * bits_per_row).div_ceil(512).max(1) as usize;
        Self {
            blocks: vec![[0; 8]; blocks],
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
            .all(|&bit| block[(bit / 64) as usize] & (1 << (bit % 64)) != 0)
    }

    fn insert(&mut self, h: u64) {
        let (b, bits) = self.locate(h);
        let block = &mut self.blocks[b];
        for bit in bits {
            block[(bit / 64) as usize] |= 1 << (bit % 64);
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

/// Identities seen more than once (or that the filter took for such), with their latest copy.
#[derive(Default)]
pub struct Repeats {
    latest: HashMap<Identity, u64>,
    hashes: HashSet<u64>,
}

impl Repeats {
    /// Whether the row at `i` of a buffered batch is an earlier copy of a repeated identity.
    fn superseded(&self, b: &RecordBatch, i: usize) -> bool {
        let hash = column::<UInt64Array>(b, HASH).value(i);
        if !self.hashes.contains(&hash) {
            return false;
        }
        let key = (
            column::<StringArray>(b, "work_order_id")
                .value(i)
                .to_string(),
            column::<StringArray>(b, "issue_id").value(i).to_string(),
            column::<StringArray>(b, "status").value(i).to_string(),
            column::<TimestampMicrosecondArray>(b, "status_datetime").value(i),
        );
        self.latest
            .get(&key)
            .is_some_and(|latest| *latest != column::<UInt64Array>(b, SEQ).value(i))
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

#[derive(Default)]
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
}

impl Buffer {
    fn take(&mut self) -> Option<RecordBatch> {
        if self.seq.is_empty() {
            return None;
        }
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.sp.finish()),
            Arc::new(self.phase.finish()),
            Arc::new(self.issue.finish()),
            Arc::new(self.status.finish()),
            Arc::new(
                TimestampMicrosecondArray::from(std::mem::take(&mut self.ts)).with_timezone("UTC"),
            ),
            Arc::new(self.reason.finish()),
            Arc::new(self.wo.finish()),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.seq))),
            Arc::new(UInt64Array::from(std::mem::take(&mut self.hash))),
        ];
        Some(RecordBatch::try_new(buffer_schema(), cols).expect("buffer schema matches"))
    }
}

#[derive(Default)]
struct Partition {
    buffer: Buffer,
    spilled: Vec<PathBuf>,
    status_days: BTreeSet<NaiveDate>,
}

/// Rows being collected, partitioned and spilled past `budget` bytes.
pub struct RowStore {
    partitions: BTreeMap<NaiveDate, Partition>,
    buffered: usize,
    budget: usize,
    spill_dir: PathBuf,
    spill_guard: Option<tempfile::TempDir>,
    spills: usize,
    seq: u64,
    bloom: Bloom,
    repeats: Repeats,
}

impl RowStore {
    /// `scratch` is where spill files go (in a private directory removed when done);
    /// `expected_rows` sizes the duplicate filter.
    pub fn new(scratch: &Path, budget: usize, expected_rows: u64) -> Self {
        Self {
            partitions: BTreeMap::new(),
            buffered: 0,
            budget,
            spill_dir: scratch.to_path_buf(),
            spill_guard: None,
            spills: 0,
            seq: 0,
            bloom: Bloom::new(expected_rows),
            repeats: Repeats::default(),
        }
    }

    pub fn push(&mut self, r: &Row<'_>) -> Result<(), RowsError> {
        self.seq += 1;
        let hash = identity_hash(r.work_order_id, r.issue_id, r.status, r.status_datetime);
        if self.bloom.check_and_insert(hash) {
            self.repeats.hashes.insert(hash);
            self.repeats.latest.insert(
                (
                    r.work_order_id.to_string(),
                    r.issue_id.to_string(),
                    r.status.to_string(),
                    r.status_datetime,
                ),
                self.seq,
            );
        }
        let p = self.partitions.entry(r.event_date).or_default();
        let b = &mut p.buffer;
        b.sp.append_value(r.service_point_id);
        b.phase.append_value(r.phase);
        b.issue.append_value(r.issue_id);
        b.status.append_value(r.status);
        b.ts.push(r.status_datetime);
        b.reason.append_value(r.reason);
        b.wo.append_value(r.work_order_id);
        b.seq.push(self.seq);
        b.hash.push(hash);
        p.status_days.insert(day_of_micros(r.status_datetime));
        self.buffered += 40
            + r.service_point_id.len()
            + r.issue_id.len()
            + r.status.len()
            + r.reason.len()
            + r.work_order_id.len();
        if self.buffered > self.budget {
            self.spill()?;
        }
        Ok(())
    }

    /// Writes every buffer to its own IPC file and frees the memory.
    fn spill(&mut self) -> Result<(), RowsError> {
        if self.spill_guard.is_none() {
            let dir = tempfile::Builder::new()
                .prefix(crate::decode::SCRATCH_PREFIX)
                .tempdir_in(&self.spill_dir)
                .map_err(|e| RowsError::Spill {
                    path: self.spill_dir.display().to_string(),
                    detail: e.to_string(),
                })?;
            self.spill_guard = Some(dir);
        }
        let dir = self
            .spill_guard
            .as_ref()
            .expect("created above")
            .path()
            .to_path_buf();
        self.spills += 1;
        for (date, p) in &mut self.partitions {
            let Some(batch) = p.buffer.take() else {
                continue;
            };
            let path = dir.join(format!("{date}-{}.arrow", self.spills));
            let fail = |detail: String| RowsError::Spill {
                path: path.display().to_string(),
                detail,
            };
            let file = File::create(&path).map_err(|e| fail(e.to_string()))?;
            let mut w =
                arrow::ipc::writer::FileWriter::try_new(BufWriter::new(file), &batch.schema())
                    .map_err(|e| fail(e.to_string()))?;
            w.write(&batch).map_err(|e| fail(e.to_string()))?;
            w.finish().map_err(|e| fail(e.to_string()))?;
            p.spilled.push(path);
        }
        self.buffered = 0;
        Ok(())
    }

    pub fn finish(mut self) -> Rows {
        let partitions = std::mem::take(&mut self.partitions)
            .into_iter()
            .map(|(date, mut p)| {
                let memory = p.buffer.take();
                (
                    date,
                    PartitionRows {
                        spilled: p.spilled,
                        memory,
                        status_days: p.status_days,
                    },
                )
            })
            .collect();
        Rows {
            partitions,
            repeats: Arc::new(self.repeats),
            _spill_dir: self.spill_guard,
        }
    }
}

/// One partition's collected rows: spilled files plus what was still in memory.
pub struct PartitionRows {
    spilled: Vec<PathBuf>,
    memory: Option<RecordBatch>,
    pub status_days: BTreeSet<NaiveDate>,
}

/// Every valid row of an export, ready to be loaded partition by partition.
pub struct Rows {
    pub partitions: BTreeMap<NaiveDate, PartitionRows>,
    repeats: Arc<Repeats>,
    _spill_dir: Option<tempfile::TempDir>,
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
        let mut batches = Vec::new();
        for path in &p.spilled {
            let fail = |detail: String| RowsError::Spill {
                path: path.display().to_string(),
                detail,
            };
            let file = File::open(path).map_err(|e| fail(e.to_string()))?;
            let reader = arrow::ipc::reader::FileReader::try_new(BufReader::new(file), None)
                .map_err(|e| fail(e.to_string()))?;
            for b in reader {
                batches.push(b.map_err(|e| fail(e.to_string()))?);
            }
        }
        batches.extend(p.memory.iter().cloned());
        let all = arrow::compute::concat_batches(&buffer_schema(), &batches).expect("one schema");
        let mask: BooleanArray = (0..all.num_rows())
            .map(|i| Some(!self.repeats.superseded(&all, i)))
            .collect();
        let dropped = mask.false_count() as u64;
        let kept = arrow::compute::filter_record_batch(&all, &mask).expect("mask length matches");
        let n = kept.num_rows();
        let mut cols: Vec<ArrayRef> = kept.columns()[..DATA_COLUMNS].to_vec();
        cols.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(job_id, n),
        )));
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

    fn row<'a>(wo: &'a str, ts: i64, reason: &'a str, event: &str) -> Row<'a> {
        Row {
            service_point_id: "9",
            phase: 1,
            issue_id: "7",
            status: "New",
            status_datetime: ts,
            reason,
            work_order_id: wo,
            event_date: event.parse().unwrap(),
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
    fn the_last_copy_wins_across_partitions_and_spills() {
        let dir = tempfile::tempdir().unwrap();
        // A budget this small spills after every row.
        let mut s = RowStore::new(dir.path(), 1, 10);
        s.push(&row("a", 1, "first", "2024-06-13")).unwrap();
        s.push(&row("b", 1, "only", "2024-06-13")).unwrap();
        s.push(&row("a", 1, "second", "2024-06-14")).unwrap();
        s.push(&row("a", 1, "third", "2024-06-13")).unwrap();
        s.push(&row("a", 2, "other instant", "2024-06-13")).unwrap();
        let rows = s.finish();
        assert!(rows.partitions.values().any(|p| !p.spilled.is_empty()));
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
        let rows = s.finish();
        assert!(
            rows.repeats.latest.len() < 30_000,
            "false positives stay near 1%: {}",
            rows.repeats.latest.len()
        );
        let (reasons, dropped) = load_all(&rows);
        assert_eq!((reasons.len(), dropped), (300_000, 0));
    }
}
