//! Parquet and ORC parts, with typed or string columns. A typed timestamp, date or integer in
//! the column that holds one is passed on typed; anything else is cast to text, so that one
//! normalizer validates every format alike.

use std::fs::File;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, Int64Array, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, TimeUnit};
use arrow::record_batch::RecordBatch;

use super::{BATCH_ROWS, DecodeError, DecodeSummary, RawBatch, RawColumn, Sink, map_header};
use crate::product::Column;

/// The column as the normalizer takes it: typed where the file's type is the column's own.
fn raw_column(c: Column, a: &ArrayRef) -> Result<RawColumn, arrow::error::ArrowError> {
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
    Ok(match c {
        Column::StatusDatetime if matches!(t, DataType::Timestamp(..)) => {
            // A zone names how to show the instant, not which one it is: any zone's values are
            // UTC already, and a zoneless timestamp is taken as UTC, as zoneless text is.
            RawColumn::Micros(cast_to::<TimestampMicrosecondArray>(
                a,
                DataType::Timestamp(TimeUnit::Microsecond, None),
            )?)
        }
        Column::EventDate if matches!(t, DataType::Date32 | DataType::Date64) => {
            RawColumn::Days(cast_to::<Date32Array>(a, DataType::Date32)?)
        }
        Column::Phase if t.is_integer() => {
            RawColumn::Int(cast_to::<Int64Array>(a, DataType::Int64)?)
        }
        _ => RawColumn::Text(cast_to::<StringArray>(a, DataType::Utf8)?),
    })
}

fn to_raw(
    batch: &RecordBatch,
    mapping: &[Option<Column>],
    file: &Arc<str>,
    first_row: u64,
) -> Result<RawBatch, DecodeError> {
    let mut cols: [Option<RawColumn>; 8] = Default::default();
    for (i, col) in mapping.iter().enumerate() {
        let Some(c) = col else { continue };
        if cols[c.index()].is_some() {
            continue;
        }
        let raw = raw_column(*c, batch.column(i)).map_err(|e| DecodeError::Malformed {
            file: file.to_string(),
            detail: format!(
                "column `{}` cannot be read: {e}",
                batch.schema().field(i).name()
            ),
        })?;
        cols[c.index()] = Some(raw);
    }
    Ok(RawBatch {
        columns: cols.map(|c| c.expect("map_header checked every column")),
        errors: Vec::new(),
        source: file.clone(),
        first_row,
    })
}

fn drain(
    batches: impl Iterator<Item = Result<RecordBatch, String>>,
    schema: arrow::datatypes::SchemaRef,
    file: Arc<str>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mapping = map_header(&names, &file, summary)?;
    let mut row = 1u64;
    for b in batches {
        let b = b.map_err(|detail| DecodeError::Malformed {
            file: file.to_string(),
            detail,
        })?;
        let n = b.num_rows() as u64;
        if n > 0 {
            sink(to_raw(&b, &mapping, &file, row)?)?;
        }
        row += n;
    }
    Ok(())
}

pub fn decode_parquet(
    file: File,
    label: Arc<str>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| DecodeError::Malformed {
            file: label.to_string(),
            detail: format!("not a readable Parquet file: {e}"),
        })?;
    let schema = builder.schema().clone();
    let reader =
        builder
            .with_batch_size(BATCH_ROWS)
            .build()
            .map_err(|e| DecodeError::Malformed {
                file: label.to_string(),
                detail: e.to_string(),
            })?;
    drain(
        reader.map(|r| r.map_err(|e| e.to_string())),
        schema,
        label,
        summary,
        sink,
    )
}

pub fn decode_orc(
    file: File,
    label: Arc<str>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let builder =
        orc_rust::ArrowReaderBuilder::try_new(file).map_err(|e| DecodeError::Malformed {
            file: label.to_string(),
            detail: format!("not a readable ORC file: {e}"),
        })?;
    let schema = builder.schema().clone();
    let reader = builder.with_batch_size(BATCH_ROWS).build();
    drain(
        reader.map(|r| r.map_err(|e| e.to_string())),
        schema,
        label,
        summary,
        sink,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::Cell;
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
        let mapping = map_header(&names, "p.parquet", &mut DecodeSummary::default()).unwrap();
        let raw = to_raw(&part, &mapping, &Arc::from("p.parquet"), 1).unwrap();
        let cell = |c: Column| raw.columns[c.index()].cell(0).unwrap();
        // The zone only names how to show the instant: the value is the UTC instant, in µs.
        assert_eq!(
            cell(Column::StatusDatetime),
            Cell::Micros(1_718_409_613_250_000)
        );
        assert_eq!(
            cell(Column::StatusDatetime).to_string(),
            "2024-06-15T00:00:13.250Z"
        );
        assert_eq!(cell(Column::EventDate), Cell::Days(19_887));
        assert_eq!(cell(Column::EventDate).to_string(), "2024-06-13");
        assert_eq!(cell(Column::Phase), Cell::Int(3));
        assert_eq!(cell(Column::IssueId), Cell::Text("19865"));
    }
}
