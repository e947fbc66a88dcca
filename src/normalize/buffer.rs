//! Rows as they arrive, in one set of column vectors that become Arrow arrays without a copy,
//! and the grouping of buffered chunks by partition.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, ArrowPrimitiveType, AsArray, Int8Array, StringArray, TimestampMicrosecondArray,
    UInt64Array,
};
use arrow::buffer::{Buffer as ArrowBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Field, Int8Type, Schema, SchemaRef, TimestampMicrosecondType, UInt64Type,
};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use super::dedupe::Mixed;
use super::time::{date_of_day, day_number};
use crate::product::Product;

pub(super) const SEQ: &str = "_seq";

pub(super) const HASH: &str = "_hash";

pub(super) fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("buffered batches have every column")
}

/// The buffered form: the lake's data columns (its schema less the lineage columns the load
/// adds) plus the sequence number and identity hash.
pub(super) fn buffer_schema() -> SchemaRef {
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
pub(super) const DATA_COLUMNS: usize = 7;

/// One valid row, as the normalizer hands it over.
pub(super) struct Row<'a> {
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

/// Rows as they arrive, in one set of column vectors: appending to one place keeps the hot loop
/// in cache, where a builder per partition scattered every row across ~400 of them.
///
/// A spilled chunk's vectors come back to the store for a later chunk. A large import spills
/// dozens of times; freeing each spill's buffer and allocating the next one's faults fresh
/// pages in, and the trim that gives the freed pages back costs system time. Reused, the two
/// buffers' worth the budget provides for stay resident, so memory is the same whatever the
/// export's size, and the import is faster (docs/performance.md has the figures).
pub(super) struct Buffer {
    pub(super) sp: Text,
    pub(super) phase: Vec<i8>,
    pub(super) issue: Text,
    pub(super) status: Text,
    pub(super) ts: Vec<i64>,
    pub(super) reason: Text,
    pub(super) wo: Text,
    pub(super) seq: Vec<u64>,
    pub(super) hash: Vec<u64>,
    /// Each row's `event_date` as days since the epoch: how rows are grouped, not stored.
    pub(super) day: Vec<i32>,
}

/// A text column's values and offsets, as a `StringArray` holds them.
pub(super) struct Text {
    pub(super) values: Vec<u8>,
    pub(super) offsets: Vec<i32>,
}

impl Text {
    pub(super) fn with_capacity(rows: usize, bytes: usize) -> Self {
        let mut offsets = Vec::with_capacity(rows + 1);
        offsets.push(0);
        Self {
            values: Vec::with_capacity(bytes),
            offsets,
        }
    }

    #[inline]
    pub(super) fn push(&mut self, s: &str) {
        self.values.extend_from_slice(s.as_bytes());
        let end = i32::try_from(self.values.len()).expect("a chunk's text stays under 2 GiB");
        self.offsets.push(end);
    }

    pub(super) fn finish(self) -> StringArray {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        // SAFETY: the values are whole `&str`s laid end to end and the offsets are their
        // boundaries, so every slice between two offsets is valid UTF-8.
        unsafe { StringArray::new_unchecked(offsets, ArrowBuffer::from_vec(self.values), None) }
    }

    /// The vectors of a finished column, emptied, if nothing else holds them.
    pub(super) fn reclaim(column: ArrayRef) -> Option<Self> {
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
pub(super) fn reclaim<T: ArrowPrimitiveType>(column: ArrayRef) -> Option<Vec<T::Native>> {
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
    pub(super) fn with_capacity(rows: usize, text: [usize; 5]) -> Self {
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
    pub(super) fn next_capacity(&self, limit: usize) -> [usize; 5] {
        let rows = self.seq.len().max(1);
        [&self.sp, &self.issue, &self.status, &self.reason, &self.wo].map(|t| {
            let bytes = t.values.len();
            let full = (bytes * CHUNK_ROWS / rows).min(bytes * 4);
            (full + full / 8).min(limit)
        })
    }

    /// Appends one row with its sequence number.
    #[inline]
    pub(super) fn push(&mut self, r: &Row<'_>, seq: u64) {
        self.sp.push(r.service_point_id);
        self.phase.push(r.phase);
        self.issue.push(r.issue_id);
        self.status.push(r.status);
        self.ts.push(r.status_datetime);
        self.reason.push(r.reason);
        self.wo.push(r.work_order_id);
        self.seq.push(seq);
        self.hash.push(r.hash);
        self.day.push(r.event_day);
    }

    pub(super) fn len(&self) -> usize {
        self.seq.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seq.is_empty()
    }

    /// The buffered rows as a batch and their days; the buffer continues with `next`.
    pub(super) fn take(&mut self, next: Self) -> (RecordBatch, Vec<i32>) {
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
    pub(super) fn reclaim(batch: RecordBatch, mut day: Vec<i32>) -> Option<Self> {
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
pub(super) const CHUNK_ROWS: usize = 65_536;

/// Buffered rows and where each partition's rows are among them (chunk, row), in arrival
/// order. A partition's batch is gathered from the chunks when it is needed, so grouping costs
/// no copy of the whole buffer.
#[derive(Default)]
pub(super) struct Grouped {
    chunks: Vec<RecordBatch>,
    /// Each chunk's rows' days, kept for the chunk's next use.
    days: Vec<Vec<i32>>,
    pub(super) rows: BTreeMap<NaiveDate, Vec<(u32, u32)>>,
    pub(super) status_days: BTreeMap<NaiveDate, BTreeSet<NaiveDate>>,
}

impl Grouped {
    pub(super) fn new(chunks: Vec<(RecordBatch, Vec<i32>)>) -> Self {
        // Hashed, not ordered, while rows come in: a lookup per row is most of the grouping's
        // cost, and export rows come in any order. Ordered once at the end.
        let mut by_day: HashMap<i32, Vec<(u32, u32)>, Mixed> = HashMap::default();
        let mut days: HashSet<(i32, i32), Mixed> = HashSet::default();
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
    pub(super) fn into_spare(self) -> Vec<Buffer> {
        self.chunks
            .into_iter()
            .zip(self.days)
            .filter_map(|(batch, day)| Buffer::reclaim(batch, day))
            .collect()
    }

    /// One partition's buffered rows as one batch.
    pub(super) fn gather(&self, date: NaiveDate) -> Option<RecordBatch> {
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
