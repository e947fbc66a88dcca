//! Parquet and ORC parts, with typed or string columns. A typed timestamp, date or number in a
//! column declared as one is passed on typed; anything else is cast to text, so that one
//! normalizer validates every format alike.
//!
//! The readers are other people's code over bytes nobody vouches for: a panic inside one is
//! this part's error, not the process's, and a text value past `decode.max_field_size`
//! quarantines its row (with the value's first KiB) instead of travelling on.

use std::fs::File;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BooleanArray, Date32Array, Float64Array, Int64Array, StringArray,
    TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::{
    BATCH_ROWS, DecodeError, DecodeLimits, DecodeSummary, RawBatch, RawColumn, RowError, Sink,
    map_header,
};
use crate::config::FileType;
use crate::product::{Kind, Product};

/// Bytes of decoded values a batch aims at: rows of ordinary width make full batches, a file of
/// very wide rows smaller ones, so a batch's memory does not grow with its rows' width.
const BATCH_BYTES: u64 = 32 << 20;

/// Decodes a Parquet or ORC part of `product`'s export from its scratch file.
pub fn decode(
    product: Product,
    format: FileType,
    file: File,
    label: Arc<str>,
    limits: &DecodeLimits,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let part = Part {
        product,
        label: label.clone(),
        limits: *limits,
    };
    let run = AssertUnwindSafe(|| match format {
        FileType::Orc => part.orc(file, summary, sink),
        _ => part.parquet(file, summary, sink),
    });
    std::panic::catch_unwind(run).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(DecodeError::Malformed {
            file: label.to_string(),
            detail: format!(
                "the {format} reader gave up on this file ({})",
                crate::model::cut_to(&why, 300)
            ),
        })
    })
}

/// The column as the normalizer takes it: typed where the file's type is the column's own.
fn raw_column(kind: Kind, a: &ArrayRef) -> Result<RawColumn, arrow::error::ArrowError> {
    fn cast_to<T: Array + Clone + 'static>(
        a: &ArrayRef,
        to: DataType,
    ) -> Result<T, arrow::error::ArrowError> {
        Ok(cast(a, &to)?
            .as_any()
            .downcast_ref::<T>()
            .expect("a cast gives the array of its type")
            .clone())
    }
    let t = a.data_type();
    let time = matches!(t, DataType::Timestamp(..));
    let date = matches!(t, DataType::Date32 | DataType::Date64);
    Ok(match kind {
        // A zone names how to show the instant, not which one it is: any zone's values are UTC
        // already, and a zoneless timestamp is taken as UTC, as zoneless text is.
        Kind::Timestamp | Kind::Date if time => {
            RawColumn::Micros(cast_to::<TimestampMicrosecondArray>(
                a,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            )?)
        }
        Kind::Date if date => RawColumn::Days(cast_to::<Date32Array>(a, DataType::Date32)?),
        k if k.is_integer() && t.is_integer() => {
            RawColumn::Int(cast_to::<Int64Array>(a, DataType::Int64)?)
        }
        Kind::Float64 if t.is_floating() || t.is_integer() => {
            RawColumn::Float(cast_to::<Float64Array>(a, DataType::Float64)?)
        }
        _ => RawColumn::Text(cast_to::<StringArray>(a, DataType::Utf8)?),
    })
}

/// Text values past the field limit: their rows become row errors naming the column, and the
/// values themselves nulls, so the quarantine keeps the first KiB and not the whole.
fn oversized(product: Product, cols: &mut [RawColumn], limit: usize) -> Vec<RowError> {
    let mut errors = Vec::new();
    for (c, col) in product.columns.iter().zip(cols.iter_mut()) {
        let RawColumn::Text(text) = col else {
            continue;
        };
        // A batch whose values take no more than the limit in all has no value past it: the
        // usual case, decided without looking at a value.
        let offsets = text.value_offsets();
        let used = offsets.last().copied().unwrap_or(0) - offsets.first().copied().unwrap_or(0);
        if used as usize <= limit {
            continue;
        }
        let big: Vec<usize> = (0..text.len())
            .filter(|&i| (offsets[i + 1] - offsets[i]) as usize > limit && text.is_valid(i))
            .collect();
        if big.is_empty() {
            continue;
        }
        for &row in &big {
            let value = text.value(row).as_bytes();
            errors.push(RowError {
                row,
                reason: format!(
                    "{} is {} bytes, more than decode.max_field_size ({limit})",
                    c.lake,
                    value.len()
                ),
                raw: Some(crate::model::value_head(value, value.len() as u64)),
            });
        }
        let mask: BooleanArray = (0..text.len())
            .map(|i| Some(big.binary_search(&i).is_ok()))
            .collect();
        let kept = arrow::compute::nullif(text, &mask).expect("mask length matches");
        *col = RawColumn::Text(
            kept.as_any()
                .downcast_ref::<StringArray>()
                .expect("nullif keeps the type")
                .clone(),
        );
    }
    errors.sort_by_key(|e| e.row);
    errors.dedup_by_key(|e| e.row);
    errors
}

/// Rows per batch for row groups of this many bytes per row (the widest group decides).
fn batch_rows(bytes_per_row: u64) -> usize {
    (BATCH_BYTES / bytes_per_row.max(1)).clamp(1, BATCH_ROWS as u64) as usize
}

/// One Parquet or ORC part of a product's export.
struct Part {
    product: Product,
    label: Arc<str>,
    limits: DecodeLimits,
}

impl Part {
    fn to_raw(
        &self,
        batch: &RecordBatch,
        mapping: &[Option<usize>],
        first_row: u64,
    ) -> Result<RawBatch, DecodeError> {
        let rows = batch.num_rows();
        // A declared column the part does not have (a nullable one) is null throughout.
        let mut cols: Vec<RawColumn> = (0..self.product.columns.len())
            .map(|_| RawColumn::Text(StringArray::new_null(rows)))
            .collect();
        for (i, col) in mapping.iter().enumerate() {
            let Some(c) = col else { continue };
            let kind = self.product.columns[*c].kind;
            cols[*c] = raw_column(kind, batch.column(i)).map_err(|e| DecodeError::Malformed {
                file: self.label.to_string(),
                detail: format!(
                    "column `{}` cannot be read: {e}",
                    batch.schema().field(i).name()
                ),
            })?;
        }
        let errors = oversized(self.product, &mut cols, self.limits.max_field);
        Ok(RawBatch {
            columns: cols,
            errors,
            source: self.label.clone(),
            first_row,
        })
    }

    fn drain(
        &self,
        batches: impl Iterator<Item = Result<RecordBatch, String>>,
        schema: arrow::datatypes::SchemaRef,
        summary: &mut DecodeSummary,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let mapping = map_header(self.product, &names, &self.label, summary)?;
        let mut row = 1u64;
        for b in batches {
            let b = b.map_err(|detail| DecodeError::Malformed {
                file: self.label.to_string(),
                detail,
            })?;
            let n = b.num_rows() as u64;
            if n > 0 {
                sink(self.to_raw(&b, &mapping, row)?)?;
            }
            row += n;
        }
        Ok(())
    }

    fn malformed(&self, detail: String) -> DecodeError {
        DecodeError::Malformed {
            file: self.label.to_string(),
            detail,
        }
    }

    fn parquet(
        &self,
        file: File,
        summary: &mut DecodeSummary,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        // The Arrow schema a writer may embed in the footer is not read: every column is cast
        // to what the normalizer takes anyway, and arrow-ipc panics on a mangled one.
        let options =
            parquet::arrow::arrow_reader::ArrowReaderOptions::new().with_skip_arrow_metadata(true);
        let builder =
            parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new_with_options(
                file, options,
            )
            .map_err(|e| self.malformed(format!("not a readable Parquet file: {e}")))?;
        let schema = builder.schema().clone();
        let widest = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| g.total_byte_size().max(0) as u64 / g.num_rows().max(1) as u64)
            .max()
            .unwrap_or(0);
        let reader = builder
            .with_batch_size(batch_rows(widest))
            .build()
            .map_err(|e| self.malformed(e.to_string()))?;
        self.drain(
            reader.map(|r| r.map_err(|e| e.to_string())),
            schema,
            summary,
            sink,
        )
    }

    fn orc(
        &self,
        file: File,
        summary: &mut DecodeSummary,
        sink: &mut Sink<'_>,
    ) -> Result<(), DecodeError> {
        let builder = orc_rust::ArrowReaderBuilder::try_new(file)
            .map_err(|e| self.malformed(format!("not a readable ORC file: {e}")))?;
        let schema = builder.schema().clone();
        let reader = builder.with_batch_size(BATCH_ROWS).build();
        self.drain(
            reader.map(|r| r.map_err(|e| e.to_string())),
            schema,
            summary,
            sink,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Cell;
    use crate::product::test_support::{col, hid};
    use arrow::array::{Date32Array, Int32Array, TimestampMillisecondArray};

    /// A Spark-style part: text ids, and the time, date and phase typed.
    fn typed_part() -> RecordBatch {
        let text = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("ServicePointId", text("9000053409")),
            (
                "StatusDatetime",
                Arc::new(
                    TimestampMillisecondArray::from(vec![1_718_409_613_250])
                        .with_timezone("America/Chicago"),
                ),
            ),
            ("EventDate", Arc::new(Date32Array::from(vec![19_887]))),
            ("Phase", Arc::new(Int32Array::from(vec![3]))),
            ("IssueId", text("19865")),
            ("Status", text("Accepted")),
            ("Reason", text("x")),
            ("WorkOrderId", text("123456")),
        ];
        RecordBatch::try_from_iter(columns).unwrap()
    }

    #[test]
    fn typed_columns_stay_typed_and_the_rest_become_text() {
        let part = typed_part();
        let names: Vec<String> = part
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect();
        let mapping =
            map_header(hid(), &names, "p.parquet", &mut DecodeSummary::default()).unwrap();
        let reader = |max_field| Part {
            product: hid(),
            label: Arc::from("p.parquet"),
            limits: DecodeLimits {
                max_field,
                ..DecodeLimits::default()
            },
        };
        let raw = reader(1 << 20).to_raw(&part, &mapping, 1).unwrap();
        let cell = |c: usize| raw.columns[c].cell(0).unwrap();
        // The zone only names how to show the instant: the value is the UTC instant, in µs.
        assert_eq!(
            cell(col(hid(), "status_datetime")),
            Cell::Micros(1_718_409_613_250_000)
        );
        assert_eq!(
            cell(col(hid(), "status_datetime")).to_string(),
            "2024-06-15T00:00:13.250Z"
        );
        assert_eq!(cell(col(hid(), "event_date")), Cell::Days(19_887));
        assert_eq!(cell(col(hid(), "event_date")).to_string(), "2024-06-13");
        assert_eq!(cell(col(hid(), "phase")), Cell::Int(3));
        assert_eq!(cell(col(hid(), "issue_id")), Cell::Text("19865"));
        // Past the field limit, the reason's value is a row error with its head, and a null.
        let raw = reader(4).to_raw(&part, &mapping, 1).unwrap();
        assert_eq!(raw.errors.len(), 1);
        assert!(
            raw.errors[0]
                .reason
                .contains("more than decode.max_field_size (4)"),
            "{:?}",
            raw.errors
        );
        assert_eq!(raw.columns[col(hid(), "service_point_id")].cell(0), None);
        assert_eq!(
            raw.columns[col(hid(), "reason")].cell(0),
            Some(Cell::Text("x"))
        );
        assert_eq!(batch_rows(100), BATCH_ROWS);
        assert_eq!(batch_rows(4 << 20), 8);
    }
}
