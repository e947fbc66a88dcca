//! Encoding a partition as Parquet: the writer's settings per column, the order of rows, and the
//! split into parts near `lake.target_file_size`, spooled to the work directory once they grow.

use std::io::{Seek, SeekFrom};
use std::path::PathBuf;

use arrow::array::RecordBatch;
use arrow::compute::take_record_batch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use tempfile::SpooledTempFile;

use crate::normalize::order_keys;
use crate::product::Product;

/// Rows per row group: big enough for scans to skip by statistics, small enough to write with
/// bounded memory.
const ROW_GROUP_ROWS: usize = 1_000_000;

/// Rows handed to the writer at a time, so the part-size check runs often enough to split.
const WRITE_CHUNK_ROWS: usize = 65_536;

/// What a product's declaration says of its columns' encoding.
#[derive(Debug, Clone, Default)]
pub(super) struct Layout {
    /// Columns whose values rarely repeat within a partition (declared `dictionary = false`).
    plain: Vec<String>,
    /// The order column, when the objects hold it as a number.
    delta: Option<String>,
}

impl Layout {
    /// The lake's objects of `product`.
    pub(super) fn data(product: Product) -> Self {
        let order = &product.columns[product.order];
        Self {
            plain: product
                .stored()
                .filter(|(_, c)| !c.dictionary)
                .map(|(_, c)| c.lake.clone())
                .collect(),
            delta: order.stored.then(|| order.lake.clone()),
        }
    }

    /// The quarantine's objects: the same columns, all text.
    pub(super) fn quarantine(product: Product) -> Self {
        Self {
            delta: None,
            ..Self::data(product)
        }
    }
}

/// How objects of `schema` are written, as `layout` says.
fn writer_properties(schema: &Schema, layout: &Layout) -> WriterProperties {
    // zstd level 1, not the usual 3: after sorting and the encodings below, little is left that
    // the slower levels find, so the objects barely grow while the import spends clearly less
    // on compressing (docs/performance.md has the measurement).
    let builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(
            ZstdLevel::try_new(1).expect("valid level"),
        ))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .set_created_by(concat!("dpss-sync ", env!("CARGO_PKG_VERSION")).to_string());
    // Near-unique columns: a dictionary costs its build, then is dropped for plain pages or
    // kept at a loss (timestamps). The rest repeat a handful of values and keep theirs.
    let builder = layout.plain.iter().fold(builder, |b, c| {
        b.set_column_dictionary_enabled(c.as_str().into(), false)
    });
    // Rows are in order of this column, so consecutive values differ by seconds or minutes:
    // delta encoding packs each into a few bits, smaller than plain before and after
    // compression, and zstd has less to do (docs/performance.md has the sizes).
    match &layout.delta {
        Some(c) if schema.field_with_name(c).is_ok() => {
            builder.set_column_encoding(c.as_str().into(), Encoding::DELTA_BINARY_PACKED)
        }
        _ => builder,
    }
    .build()
}

/// Encoded bytes kept in memory before a part goes to a file in the work directory: a part this
/// small goes to the store in one put, and bigger ones stream from the file in chunks this size.
pub(super) const SPOOL_BYTES: usize = 8 << 20;

/// Encoded bytes of a row group still in memory before the writer ends it: row groups stay large
/// for scans, while wide rows cannot make one grow with the partition (1M rows of long text
/// would otherwise sit in memory, compressed, until the group closed).
const ROW_GROUP_BYTES: usize = 64 << 20;

/// One encoded part, in memory while small, else in an unnamed file in the work directory (gone
/// with the process, however it ends).
pub(super) struct Spooled {
    pub(super) data: tempfile::SpooledData,
    pub(super) len: u64,
    pub(super) rows: u64,
}

/// Writes a partition's rows, batch by batch, as Parquet parts that end near `target` bytes, so
/// memory holds a row group and a batch, whatever the partition's size.
pub(super) struct PartWriter {
    schema: SchemaRef,
    props: WriterProperties,
    target: u64,
    scratch: PathBuf,
    current: Option<ArrowWriter<SpooledTempFile>>,
    /// Rows in the current part.
    rows: u64,
    done: Vec<Spooled>,
}

impl PartWriter {
    pub(super) fn new(
        schema: SchemaRef,
        layout: &Layout,
        target: u64,
        scratch: &std::path::Path,
    ) -> Self {
        Self {
            props: writer_properties(&schema, layout),
            schema,
            target,
            scratch: scratch.to_path_buf(),
            current: None,
            rows: 0,
            done: Vec::new(),
        }
    }

    /// Rows go to the writer in chunks small enough that a part ends near the target, whatever
    /// the target: a chunk is at most the rows whose in-memory size is the target.
    pub(super) fn write(&mut self, rows: &RecordBatch) -> Result<(), ParquetError> {
        let per_row = (rows.get_array_memory_size() / rows.num_rows().max(1)).max(1) as u64;
        let chunk = (self.target / per_row).clamp(1, WRITE_CHUNK_ROWS as u64) as usize;
        let mut offset = 0;
        while offset < rows.num_rows() {
            let len = chunk.min(rows.num_rows() - offset);
            let w = match &mut self.current {
                Some(w) => w,
                None => self.current.insert(ArrowWriter::try_new(
                    tempfile::spooled_tempfile_in(SPOOL_BYTES, &self.scratch),
                    self.schema.clone(),
                    Some(self.props.clone()),
                )?),
            };
            w.write(&rows.slice(offset, len))?;
            self.rows += len as u64;
            offset += len;
            if w.in_progress_size() >= ROW_GROUP_BYTES {
                w.flush()?;
            }
            if (w.bytes_written() + w.in_progress_size()) as u64 >= self.target {
                self.end_part()?;
            }
        }
        Ok(())
    }

    fn end_part(&mut self) -> Result<(), ParquetError> {
        if let Some(w) = self.current.take() {
            let mut file = w.into_inner()?;
            let len = file.seek(SeekFrom::End(0))?;
            file.rewind()?;
            self.done.push(Spooled {
                data: file.into_inner(),
                len,
                rows: std::mem::take(&mut self.rows),
            });
        }
        Ok(())
    }

    /// The parts, in order; none when no row was written.
    pub(super) fn finish(mut self) -> Result<Vec<Spooled>, ParquetError> {
        self.end_part()?;
        Ok(self.done)
    }
}

/// Old files read back with the lake schema's field names; checks instead of trusting.
pub(super) fn conform(
    b: &RecordBatch,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<RecordBatch, String> {
    if b.num_columns() != schema.fields().len() {
        return Err(format!(
            "{} columns, expected {}",
            b.num_columns(),
            schema.fields().len()
        ));
    }
    for (have, want) in b.schema().fields().iter().zip(schema.fields()) {
        if have.name() != want.name() || have.data_type() != want.data_type() {
            return Err(format!(
                "column `{}` {:?}, expected `{}` {:?}",
                have.name(),
                have.data_type(),
                want.name(),
                want.data_type()
            ));
        }
    }
    RecordBatch::try_new(schema.clone(), b.columns().to_vec()).map_err(|e| e.to_string())
}

/// Sorted by the product's order column, ties in arrival order: deterministic for the same
/// input, and tight min/max statistics on that column. Exports mostly come in order already,
/// and then there is nothing to move.
pub(super) fn sort_rows(product: Product, b: &RecordBatch) -> RecordBatch {
    let ts = order_keys(product, b);
    if ts.windows(2).all(|w| w[0] <= w[1]) {
        return b.clone();
    }
    let mut idx: Vec<u32> = (0..b.num_rows() as u32).collect();
    idx.sort_by_key(|&i| ts[i as usize]);
    take_record_batch(b, &arrow::array::UInt32Array::from(idx)).expect("indices in range")
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::lake::test_support::status_micros;
    use crate::product::test_support::hid;
    use arrow::array::{ArrayRef, Int8Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::DataType;
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    /// The parts `PartWriter` makes of `batch`, read back into memory.
    fn encode(batch: &RecordBatch, layout: &Layout, target: u64) -> Vec<Bytes> {
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartWriter::new(batch.schema(), layout, target, dir.path());
        w.write(batch).unwrap();
        w.finish()
            .unwrap()
            .into_iter()
            .map(|s| {
                let mut out = Vec::new();
                match s.data {
                    tempfile::SpooledData::InMemory(c) => out = c.into_inner(),
                    tempfile::SpooledData::OnDisk(mut f) => {
                        std::io::Read::read_to_end(&mut f, &mut out).unwrap();
                    }
                }
                assert_eq!(out.len() as u64, s.len);
                Bytes::from(out)
            })
            .collect()
    }

    /// `n` rows a minute apart, with text that does not compress away.
    fn sample(n: usize) -> RecordBatch {
        let text = |s: &str| Arc::new(StringArray::from(vec![s; n])) as ArrayRef;
        let ids = Arc::new(StringArray::from(
            (0..n)
                .map(|i| format!("WO-{:08}", i * 7919 % 100_003))
                .collect::<Vec<_>>(),
        )) as ArrayRef;
        let ts: Vec<i64> = (0..n as i64)
            .map(|i| 1_700_000_000_000_000 + i * 61_000_000)
            .collect();
        RecordBatch::try_new(
            hid().lake_schema(),
            vec![
                text("9"),
                Arc::new(Int8Array::from(vec![1; n])),
                text("7"),
                text("New"),
                Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")),
                text("r"),
                ids,
                text("j"),
                Arc::new(TimestampMicrosecondArray::from(vec![0; n]).with_timezone("UTC")),
            ],
        )
        .unwrap()
    }

    #[test]
    fn timestamps_are_delta_encoded_and_read_back_unchanged() {
        let batch = sample(1000);
        let ts = status_micros(&batch).values().to_vec();
        let object = encode(&batch, &Layout::data(hid()), u64::MAX).remove(0);
        let meta = SerializedFileReader::new(object.clone()).unwrap();
        let chunk = meta.metadata().row_group(0).column(4);
        assert_eq!(chunk.column_path().string(), "status_datetime");
        assert!(
            chunk
                .encodings()
                .any(|e| e == Encoding::DELTA_BINARY_PACKED)
        );
        let read: Vec<RecordBatch> = ParquetRecordBatchReaderBuilder::try_new(object)
            .unwrap()
            .build()
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(status_micros(&read[0]).values().as_ref(), ts);
    }

    #[test]
    fn a_partition_splits_near_a_small_target_and_reads_back_whole() {
        let n = 2000;
        let batch = sample(n);
        let parts = encode(&batch, &Layout::data(hid()), 16 << 10);
        assert!(parts.len() >= 3, "{} parts", parts.len());
        let mut read = Vec::new();
        for p in &parts {
            assert!(p.len() < 64 << 10, "a part of {} bytes", p.len());
            for b in ParquetRecordBatchReaderBuilder::try_new(p.clone())
                .unwrap()
                .build()
                .unwrap()
            {
                read.extend_from_slice(status_micros(&b.unwrap()).values());
            }
        }
        assert_eq!(read, status_micros(&batch).values().to_vec());
        assert_eq!(encode(&batch, &Layout::data(hid()), 256 << 20).len(), 1);
    }

    #[test]
    fn a_part_past_the_spool_streams_from_a_file_and_reads_back_whole() {
        let n = 500_000;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let noise = StringArray::from_iter_values((0..n).map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            format!("{x:016x}{:016x}", x.rotate_left(29))
        }));
        let base = sample(n);
        let mut columns = base.columns().to_vec();
        columns[5] = Arc::new(noise);
        let batch = RecordBatch::try_new(base.schema(), columns).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut w = PartWriter::new(batch.schema(), &Layout::data(hid()), 256 << 20, dir.path());
        w.write(&batch).unwrap();
        let mut parts = w.finish().unwrap();
        assert_eq!(parts.len(), 1);
        let part = parts.remove(0);
        assert!(part.len > SPOOL_BYTES as u64, "{} bytes", part.len);
        let tempfile::SpooledData::OnDisk(file) = part.data else {
            panic!("a part past the spool stays in memory");
        };
        let read: usize = ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap()
            .map(|b| b.unwrap().num_rows())
            .sum();
        assert_eq!(read, n);
    }

    #[test]
    fn a_quarantine_s_text_timestamps_are_written_plain() {
        let schema = Arc::new(Schema::new(vec![arrow::datatypes::Field::new(
            "status_datetime",
            DataType::Utf8,
            false,
        )]));
        let column = Arc::new(StringArray::from(vec!["2024-06-15:00:00:13"; 10])) as ArrayRef;
        let batch = RecordBatch::try_new(schema, vec![column]).unwrap();
        let object = encode(&batch, &Layout::quarantine(hid()), u64::MAX).remove(0);
        let meta = SerializedFileReader::new(object).unwrap();
        let chunk = meta.metadata().row_group(0).column(0);
        assert!(
            chunk
                .encodings()
                .all(|e| e != Encoding::DELTA_BINARY_PACKED)
        );
    }
}
