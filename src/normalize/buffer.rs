//! Rows as they arrive, in one set of column vectors that become Arrow arrays without a copy,
//! and the grouping of buffered chunks by partition. The vectors follow the product's stored
//! columns: text laid end to end, fixed-width values, and validity where a column is nullable.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, BooleanBufferBuilder, PrimitiveArray,
    RecordBatch, StringArray, UInt64Array,
};
use arrow::buffer::{Buffer as ArrowBuffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int8Type, Int32Type, Int64Type, Schema, SchemaRef,
    TimestampMicrosecondType, UInt64Type,
};
use chrono::NaiveDate;

use super::dedupe::Mixed;
use super::time::{date_of_day, day_number};
use super::validate::Typed;
use crate::decode::RawColumn;
use crate::product::{ColumnDecl, Kind, Product};

pub(super) const SEQ: &str = "_seq";

pub(super) const HASH: &str = "_hash";

pub(super) fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("buffered batches have every column")
}

/// The buffered form: the lake's stored data columns (its schema less the lineage columns the
/// load adds) plus the sequence number and identity hash.
pub(super) fn buffer_schema(product: Product) -> SchemaRef {
    let lake = product.lake_schema();
    let data = lake.fields().len() - 2;
    let mut fields: Vec<Field> = lake.fields()[..data]
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(SEQ, DataType::UInt64, false));
    fields.push(Field::new(HASH, DataType::UInt64, false));
    Arc::new(Schema::new(fields))
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

    fn finish(self, nulls: Option<NullBuffer>) -> StringArray {
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets));
        // SAFETY: the values are whole `&str`s laid end to end and the offsets are their
        // boundaries, so every slice between two offsets is valid UTF-8.
        unsafe { StringArray::new_unchecked(offsets, ArrowBuffer::from_vec(self.values), nulls) }
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

/// One stored column's values, as its declared kind keeps them.
pub(super) enum Values {
    Text(Text),
    I8(Vec<i8>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    F64(Vec<f64>),
}

/// One buffered column: its values, and for a nullable column which are present.
pub(super) struct Col {
    kind: Kind,
    values: Values,
    valid: Option<BooleanBufferBuilder>,
}

impl Col {
    fn new(kind: Kind, nullable: bool, rows: usize, text: usize) -> Self {
        let values = match kind {
            Kind::Utf8 => Values::Text(Text::with_capacity(rows, text)),
            Kind::Int8 => Values::I8(Vec::with_capacity(rows)),
            Kind::Int32 | Kind::Date => Values::I32(Vec::with_capacity(rows)),
            Kind::Int64 | Kind::Timestamp => Values::I64(Vec::with_capacity(rows)),
            Kind::Float64 => Values::F64(Vec::with_capacity(rows)),
        };
        Self {
            kind,
            values,
            valid: nullable.then(|| BooleanBufferBuilder::new(rows)),
        }
    }

    /// One value: the text of `raw`'s row for a text column, else the typed value.
    #[inline]
    fn push(&mut self, raw: &RawColumn, row: usize, v: Typed) {
        if let Some(valid) = &mut self.valid {
            valid.append(v != Typed::Null);
        }
        match (&mut self.values, v) {
            (Values::Text(t), Typed::Text) => match raw {
                RawColumn::Text(a) => t.push(a.value(row)),
                _ => unreachable!("validate accepts only text in a text column"),
            },
            (Values::Text(t), _) => t.push(""),
            (Values::I8(x), Typed::Int(n)) => x.push(n as i8),
            (Values::I8(x), _) => x.push(0),
            (Values::I32(x), Typed::Int(n)) => x.push(n as i32),
            (Values::I32(x), Typed::Day(d)) => x.push(d),
            (Values::I32(x), _) => x.push(0),
            (Values::I64(x), Typed::Int(n) | Typed::Micros(n)) => x.push(n),
            (Values::I64(x), _) => x.push(0),
            (Values::F64(x), Typed::Float(f)) => x.push(f),
            (Values::F64(x), _) => x.push(0.0),
        }
    }

    fn text_bytes(&self) -> Option<usize> {
        match &self.values {
            Values::Text(t) => Some(t.values.len()),
            _ => None,
        }
    }

    fn finish(self) -> ArrayRef {
        let nulls = self.valid.map(|mut v| NullBuffer::new(v.finish()));
        fn prim<T: ArrowPrimitiveType>(
            v: Vec<T::Native>,
            nulls: Option<NullBuffer>,
        ) -> PrimitiveArray<T> {
            PrimitiveArray::<T>::new(ScalarBuffer::from(v), nulls)
        }
        match (self.values, self.kind) {
            (Values::Text(t), _) => Arc::new(t.finish(nulls)),
            (Values::I8(v), _) => Arc::new(prim::<Int8Type>(v, nulls)),
            (Values::I32(v), Kind::Date) => Arc::new(prim::<Date32Type>(v, nulls)),
            (Values::I32(v), _) => Arc::new(prim::<Int32Type>(v, nulls)),
            (Values::I64(v), Kind::Timestamp) => {
                Arc::new(prim::<TimestampMicrosecondType>(v, nulls).with_timezone("UTC"))
            }
            (Values::I64(v), _) => Arc::new(prim::<Int64Type>(v, nulls)),
            (Values::F64(v), _) => Arc::new(prim::<Float64Type>(v, nulls)),
        }
    }

    /// A finished column's vectors, emptied for the next chunk, if nothing else holds them.
    fn reclaim(kind: Kind, nullable: bool, column: ArrayRef) -> Option<Self> {
        let values = match kind {
            Kind::Utf8 => Values::Text(Text::reclaim(column)?),
            Kind::Int8 => Values::I8(reclaim::<Int8Type>(column)?),
            Kind::Int32 => Values::I32(reclaim::<Int32Type>(column)?),
            Kind::Date => Values::I32(reclaim::<Date32Type>(column)?),
            Kind::Int64 => Values::I64(reclaim::<Int64Type>(column)?),
            Kind::Timestamp => Values::I64(reclaim::<TimestampMicrosecondType>(column)?),
            Kind::Float64 => Values::F64(reclaim::<Float64Type>(column)?),
        };
        Some(Self {
            kind,
            values,
            valid: nullable.then(|| BooleanBufferBuilder::new(CHUNK_ROWS)),
        })
    }
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
    product: Product,
    /// The stored columns, in the lake's order, and each one's declared position.
    pub(super) cols: Vec<Col>,
    declared: Vec<usize>,
    pub(super) seq: Vec<u64>,
    pub(super) hash: Vec<u64>,
    /// Each row's partition as days since the epoch: how rows are grouped, not stored.
    pub(super) day: Vec<i32>,
}

impl Buffer {
    /// Vectors sized for `rows` rows whose text columns hold about `text` bytes each (in the
    /// order of the product's stored text columns), so that a chunk's do not grow by doubling
    /// and copying as it fills.
    pub(super) fn with_capacity(product: Product, rows: usize, text: &[usize]) -> Self {
        let mut texts = text.iter().copied();
        let (declared, cols): (Vec<usize>, Vec<Col>) = product
            .stored()
            .map(|(i, c)| {
                let bytes = if c.kind == Kind::Utf8 {
                    texts.next().unwrap_or(0)
                } else {
                    0
                };
                (i, Col::new(c.kind, !c.required, rows, bytes))
            })
            .unzip();
        Self {
            product,
            cols,
            declared,
            seq: Vec::with_capacity(rows),
            hash: Vec::with_capacity(rows),
            day: Vec::with_capacity(rows),
        }
    }

    /// What each text column of a full chunk needs, from this chunk's rows. A chunk cut short
    /// (by a spill) says less about the next, so it is scaled up at most fourfold, and no
    /// column gets more than `limit`: past it the buffer spills anyway.
    pub(super) fn next_capacity(&self, limit: usize) -> Vec<usize> {
        let rows = self.seq.len().max(1);
        self.cols
            .iter()
            .filter_map(Col::text_bytes)
            .map(|bytes| {
                let full = (bytes * CHUNK_ROWS / rows).min(bytes * 4);
                (full + full / 8).min(limit)
            })
            .collect()
    }

    /// Appends one row (its raw columns, typed values, hash, partition day) with its sequence
    /// number; returns the bytes its text took.
    #[inline]
    pub(super) fn push(
        &mut self,
        raw: &[RawColumn],
        row: usize,
        typed: &[Typed],
        (hash, day): (u64, i32),
        seq: u64,
    ) -> usize {
        let mut text = 0;
        for (col, &c) in self.cols.iter_mut().zip(&self.declared) {
            if let (Typed::Text, RawColumn::Text(a)) = (typed[c], &raw[c]) {
                text += a.value_length(row) as usize;
            }
            col.push(&raw[c], row, typed[c]);
        }
        self.seq.push(seq);
        self.hash.push(hash);
        self.day.push(day);
        text
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
            product,
            cols,
            seq,
            hash,
            day,
            ..
        } = std::mem::replace(self, next);
        let mut arrays: Vec<ArrayRef> = cols.into_iter().map(Col::finish).collect();
        arrays.push(Arc::new(UInt64Array::from(seq)));
        arrays.push(Arc::new(UInt64Array::from(hash)));
        let batch =
            RecordBatch::try_new(buffer_schema(product), arrays).expect("buffer schema matches");
        (batch, day)
    }

    /// A spilled chunk's vectors, emptied for the next chunk; `None` if any is still shared.
    pub(super) fn reclaim(product: Product, batch: RecordBatch, mut day: Vec<i32>) -> Option<Self> {
        let (_, mut arrays, _) = batch.into_parts();
        let hash = reclaim::<UInt64Type>(arrays.pop()?)?;
        let seq = reclaim::<UInt64Type>(arrays.pop()?)?;
        let (declared, kinds): (Vec<usize>, Vec<(Kind, bool)>) = product
            .stored()
            .map(|(i, c)| (i, (c.kind, !c.required)))
            .unzip();
        let cols = arrays
            .into_iter()
            .zip(kinds)
            .map(|(a, (kind, nullable))| Col::reclaim(kind, nullable, a))
            .collect::<Option<Vec<_>>>()?;
        day.clear();
        Some(Self {
            product,
            cols,
            declared,
            seq,
            hash,
            day,
        })
    }
}

/// Rows per buffered batch.
pub(super) const CHUNK_ROWS: usize = 65_536;

/// The days of the window column of a buffered batch whose rows' partition days are `days`.
pub(super) fn window_days(product: Product, b: &RecordBatch, days: &[i32]) -> Vec<i32> {
    let c = &product.columns[product.window];
    if !c.stored {
        // The window is the partition's own column.
        return days.to_vec();
    }
    let a = b
        .column_by_name(&c.lake)
        .expect("the window column is buffered");
    match c.kind {
        Kind::Timestamp => a
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .iter()
            .map(|us| day_number(*us))
            .collect(),
        _ => a.as_primitive::<Date32Type>().values().to_vec(),
    }
}

/// Buffered rows and where each partition's rows are among them (chunk, row), in arrival
/// order. A partition's batch is gathered from the chunks when it is needed, so grouping costs
/// no copy of the whole buffer.
pub(super) struct Grouped {
    product: Product,
    chunks: Vec<RecordBatch>,
    /// Each chunk's rows' days, kept for the chunk's next use.
    days: Vec<Vec<i32>>,
    pub(super) rows: BTreeMap<NaiveDate, Vec<(u32, u32)>>,
    /// The window days each partition's rows fall on.
    pub(super) window_days: BTreeMap<NaiveDate, BTreeSet<NaiveDate>>,
}

impl Grouped {
    pub(super) fn new(product: Product, chunks: Vec<(RecordBatch, Vec<i32>)>) -> Self {
        // Hashed, not ordered, while rows come in: a lookup per row is most of the grouping's
        // cost, and export rows come in any order. Ordered once at the end.
        let mut by_day: HashMap<i32, Vec<(u32, u32)>, Mixed> = HashMap::default();
        let mut days: HashSet<(i32, i32), Mixed> = HashSet::default();
        for (c, (batch, partition_days)) in chunks.iter().enumerate() {
            let windows = window_days(product, batch, partition_days);
            let mut last = None;
            for (r, (day, w)) in partition_days.iter().zip(windows.iter()).enumerate() {
                by_day.entry(*day).or_default().push((c as u32, r as u32));
                // Rows arrive mostly in time order: most rows repeat the previous pair.
                let pair = (*day, *w);
                if last != Some(pair) {
                    last = Some(pair);
                    days.insert(pair);
                }
            }
        }
        let mut window_days: BTreeMap<NaiveDate, BTreeSet<NaiveDate>> = BTreeMap::new();
        for (day, window_day) in days {
            window_days
                .entry(date_of_day(day))
                .or_default()
                .insert(date_of_day(window_day));
        }
        let (chunks, days) = chunks.into_iter().unzip();
        Self {
            product,
            chunks,
            days,
            rows: by_day
                .into_iter()
                .map(|(d, rows)| (date_of_day(d), rows))
                .collect(),
            window_days,
        }
    }

    /// Nothing buffered.
    pub(super) fn empty(product: Product) -> Self {
        Self::new(product, Vec::new())
    }

    /// The chunks' vectors, emptied for new rows.
    pub(super) fn into_spare(self) -> Vec<Buffer> {
        let product = self.product;
        self.chunks
            .into_iter()
            .zip(self.days)
            .filter_map(|(batch, day)| Buffer::reclaim(product, batch, day))
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

/// The sort key of each row of a lake or buffered batch: the product's order column, a
/// timestamp or a day, as a number (a timestamp column's own buffer, not a copy).
pub fn order_keys(product: Product, b: &RecordBatch) -> ScalarBuffer<i64> {
    ordinal_keys(&product.columns[product.order], b)
}

/// Each row's value of the stored, required column `c` (a timestamp, a date or an integer) as
/// a number that orders like it.
pub(super) fn ordinal_keys(c: &ColumnDecl, b: &RecordBatch) -> ScalarBuffer<i64> {
    let a = b.column_by_name(&c.lake).expect("the column is stored");
    let widen = |v: &mut dyn Iterator<Item = i64>| v.collect();
    match c.kind {
        Kind::Timestamp => a
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .clone(),
        Kind::Int64 => a.as_primitive::<Int64Type>().values().clone(),
        Kind::Int32 => widen(
            &mut a
                .as_primitive::<Int32Type>()
                .values()
                .iter()
                .map(|v| *v as i64),
        ),
        Kind::Int8 => widen(
            &mut a
                .as_primitive::<Int8Type>()
                .values()
                .iter()
                .map(|v| *v as i64),
        ),
        _ => widen(
            &mut a
                .as_primitive::<Date32Type>()
                .values()
                .iter()
                .map(|d| *d as i64),
        ),
    }
}
