//! What decoders hand the normalizer: batches of raw columns (text as served, or the typed values
//! a columnar file already holds), with the rows that could not be read at all.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{
    Array, Date32Array, Float64Array, Int64Array, StringArray, StringBuilder,
    TimestampMicrosecondArray,
};

use super::BATCH_ROWS;
use crate::product::Product;

/// A row that could not be read into columns, with why.
#[derive(Debug, Clone)]
pub struct RowError {
    pub row: usize,
    pub reason: String,
    pub raw: Option<String>,
}

/// One column of a [`RawBatch`]: text as served, or the typed values a Parquet or ORC file
/// already holds for a time, date or number column. Formatting those as text only for the
/// normalizer to parse them back cost a third of a Parquet decode.
#[derive(Debug, Clone)]
pub enum RawColumn {
    Text(StringArray),
    /// A timestamp as microseconds since the epoch, UTC.
    Micros(TimestampMicrosecondArray),
    /// A date as days since the epoch.
    Days(Date32Array),
    Int(Int64Array),
    Float(Float64Array),
}

/// One value of a [`RawColumn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Text(&'a str),
    Micros(i64),
    Days(i32),
    Int(i64),
    Float(f64),
}

impl RawColumn {
    pub fn len(&self) -> usize {
        self.array().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn array(&self) -> &dyn Array {
        match self {
            Self::Text(a) => a,
            Self::Micros(a) => a,
            Self::Days(a) => a,
            Self::Int(a) => a,
            Self::Float(a) => a,
        }
    }

    /// The value at `row`, `None` when null. Runs for every cell: each arm checks its own
    /// array's nulls, which inlines, where `array().is_null` was a call through a vtable. Left
    /// to the compiler it stayed a call, whose result went through memory to be copied into
    /// the row's cells; forced inline, the per-row normalizing work of a Parquet import drops
    /// markedly (docs/performance.md).
    #[inline(always)]
    pub fn cell(&self, row: usize) -> Option<Cell<'_>> {
        match self {
            Self::Text(a) => a.is_valid(row).then(|| Cell::Text(a.value(row))),
            Self::Micros(a) => a.is_valid(row).then(|| Cell::Micros(a.value(row))),
            Self::Days(a) => a.is_valid(row).then(|| Cell::Days(a.value(row))),
            Self::Int(a) => a.is_valid(row).then(|| Cell::Int(a.value(row))),
            Self::Float(a) => a.is_valid(row).then(|| Cell::Float(a.value(row))),
        }
    }
}

/// As the quarantine keeps a typed value: the text a CSV export would have held.
impl std::fmt::Display for Cell<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Text(t) => f.write_str(t),
            Self::Micros(us) => match chrono::DateTime::from_timestamp_micros(*us) {
                Some(t) => f.write_str(&t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)),
                None => write!(f, "{us} µs since the epoch"),
            },
            Self::Days(d) => match arrow::temporal_conversions::date32_to_datetime(*d) {
                Some(t) => write!(f, "{}", t.date()),
                None => write!(f, "{d} days since the epoch"),
            },
            Self::Int(n) => write!(f, "{n}"),
            Self::Float(x) => write!(f, "{x}"),
        }
    }
}

/// Up to [`BATCH_ROWS`] rows of one source file: a column for each of the product's declared
/// columns, in declared order, null where absent.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub columns: Vec<RawColumn>,
    pub errors: Vec<RowError>,
    pub source: Arc<str>,
    /// The 1-based row number of the first row within its source file.
    pub first_row: u64,
}

impl RawBatch {
    pub fn num_rows(&self) -> usize {
        self.columns[0].len()
    }
}

/// Builds a [`RawBatch`] row by row; shared by the text decoders.
pub(crate) struct RawBuilder {
    cols: Vec<StringBuilder>,
    errors: Vec<RowError>,
    rows: usize,
    source: Arc<str>,
    next_row: u64,
}

impl RawBuilder {
    /// Text columns for `width` declared columns.
    pub fn new(source: Arc<str>, width: usize) -> Self {
        Self {
            cols: (0..width)
                .map(|_| StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 16))
                .collect(),
            errors: Vec::new(),
            rows: 0,
            source,
            next_row: 1,
        }
    }

    /// The value of declared column `col` in the current row.
    pub fn set(&mut self, col: usize, value: Option<&str>) {
        match value {
            Some(v) => self.cols[col].append_value(v),
            None => self.cols[col].append_null(),
        }
    }

    /// Ends the current row; `set` must have been called once per column.
    pub fn end_row(&mut self) {
        self.rows += 1;
    }

    /// A row that could not be read: all columns null, the reason kept.
    pub fn error_row(&mut self, reason: String, raw: Option<String>) {
        for c in &mut self.cols {
            c.append_null();
        }
        self.errors.push(RowError {
            row: self.rows,
            reason,
            raw,
        });
        self.rows += 1;
    }

    pub fn is_full(&self) -> bool {
        self.rows >= BATCH_ROWS
    }

    pub fn take(&mut self) -> Option<RawBatch> {
        if self.rows == 0 {
            return None;
        }
        let batch = RawBatch {
            columns: self
                .cols
                .iter_mut()
                .map(|c| RawColumn::Text(c.finish()))
                .collect(),
            errors: std::mem::take(&mut self.errors),
            source: self.source.clone(),
            first_row: self.next_row,
        };
        self.next_row += self.rows as u64;
        self.rows = 0;
        Some(batch)
    }
}

/// On-demand rows (column name to text) as one batch, keys matched like any header.
pub fn rows_to_batch(
    product: Product,
    rows: &[crate::model::OnDemandRow],
    source: &str,
) -> (RawBatch, BTreeSet<String>) {
    let width = product.columns.len();
    let mut out = RawBuilder::new(Arc::from(source), width);
    let mut unknown = BTreeSet::new();
    let mut cells: Vec<Option<&str>> = vec![None; width];
    for row in rows {
        cells.iter_mut().for_each(|c| *c = None);
        for (k, v) in row {
            match product.column_of(k) {
                Some(c) => cells[c] = v.as_deref(),
                None => {
                    unknown.insert(k.clone());
                }
            }
        }
        for (c, v) in cells.iter().enumerate() {
            out.set(c, *v);
        }
        out.end_row();
    }
    let batch = out.take().unwrap_or_else(|| RawBatch {
        columns: (0..width)
            .map(|_| RawColumn::Text(StringArray::from(Vec::<Option<&str>>::new())))
            .collect(),
        errors: Vec::new(),
        source: Arc::from(source),
        first_row: 1,
    });
    (batch, unknown)
}
