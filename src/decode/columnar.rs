//! Parquet and ORC parts, with typed or string columns. Each mapped column is cast to text so
//! that one normalizer validates every format alike (a typed timestamp casts to an ISO form the
//! tolerant parser reads back exactly).

use std::fs::File;
use std::sync::Arc;

use arrow::array::{Array, StringArray};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::record_batch::RecordBatch;

use super::{BATCH_ROWS, DecodeError, DecodeSummary, RawBatch, Sink, map_header};

fn to_raw(
    batch: &RecordBatch,
    mapping: &[Option<crate::product::Column>],
    file: &Arc<str>,
    first_row: u64,
) -> Result<RawBatch, DecodeError> {
    let mut cols: [Option<StringArray>; 8] = Default::default();
    for (i, col) in mapping.iter().enumerate() {
        let Some(c) = col else { continue };
        if cols[c.index()].is_some() {
            continue;
        }
        let text = cast(batch.column(i), &DataType::Utf8).map_err(|e| DecodeError::Malformed {
            file: file.to_string(),
            detail: format!(
                "column `{}` cannot be read as text: {e}",
                batch.schema().field(i).name()
            ),
        })?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8 gives a StringArray")
            .clone();
        cols[c.index()] = Some(text);
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
