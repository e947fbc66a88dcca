//! Writing an export zip: 1..N part files in the requested format plus `_SUCCESS`, with the quirks
//! the vendor's examples show (shuffled columns, header casing, BOM, CRLF, trailing commas, JSON
//! arrays or lines, numbers as strings), for any product's rows. Rows stream from the product
//! into per-part files on disk and then into the zip, so a multi-million-row export never sits
//! in memory.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Float64Builder, Int32Builder, StringBuilder,
    TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use super::data::mix;
use super::record::{ColType, Columns, Record, Value};
use crate::config::FileType;

/// The knobs of one export's layout, derived from the job's id so each job looks a bit different.
#[derive(Debug, Clone, Copy)]
pub struct Layout {
    pub parts: usize,
    pub variant: u64,
    pub packaging: Packaging,
    /// An export without a row holds `_SUCCESS` alone (Spark 2), not empty parts.
    pub markers_when_empty: bool,
}

/// How the parts are packed into the zip. The vendor's zip contents are not documented, and a
/// Spark job's output options can change without notice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Packaging {
    /// `part-00000-….csv` and so on.
    #[default]
    Plain,
    /// `part-00000-….csv.gz`: each part gzip-compressed, as Spark's `compression=gzip` writes.
    Gzip,
    /// `part-00000-….csv.bz2`: a compression no client is promised to read.
    Bzip2Named,
    /// Parts with no rows: an export that is empty however many rows the days hold.
    Empty,
}

impl Layout {
    /// A column order of this export: a seeded shuffle of `n` columns.
    fn order(&self, n: usize) -> Vec<usize> {
        let mut idx: Vec<usize> = (0..n).collect();
        let mut h = self.variant;
        for i in (1..idx.len()).rev() {
            h = mix(h);
            idx.swap(i, (h % (i as u64 + 1)) as usize);
        }
        idx
    }
}

trait PartWriter {
    fn write(&mut self, row: &Record) -> io::Result<()>;
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct CsvPart {
    w: csv::Writer<BufWriter<File>>,
    order: Vec<usize>,
}

impl CsvPart {
    fn new(file: File, columns: &Columns, layout: &Layout, part: usize) -> io::Result<Self> {
        let mut buf = BufWriter::with_capacity(1 << 20, file);
        if part == 0 || layout.variant.is_multiple_of(2) {
            buf.write_all("\u{feff}".as_bytes())?;
        }
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(buf);
        let order = layout.order(columns.len());
        let names = columns.names(layout.variant);
        // The vendor's example ends every line with a comma: an unnamed empty last column.
        let mut header: Vec<&str> = order.iter().map(|&i| names[i].as_str()).collect();
        header.push("");
        w.write_record(&header)?;
        Ok(Self { w, order })
    }
}

impl PartWriter for CsvPart {
    fn write(&mut self, row: &Record) -> io::Result<()> {
        for &i in &self.order {
            self.w.write_field(row.values[i].text())?;
        }
        self.w.write_field("")?;
        self.w.write_record(None::<&[u8]>)?;
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        self.w.flush()
    }
}

struct JsonPart {
    w: BufWriter<File>,
    lines: bool,
    first: bool,
    names: Vec<String>,
    numbers_as_strings: bool,
}

impl JsonPart {
    fn new(file: File, columns: &Columns, layout: &Layout, part: usize) -> io::Result<Self> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let lines = (part as u64 + layout.variant) % 2 == 1;
        if !lines {
            w.write_all(b"[\n")?;
        }
        Ok(Self {
            w,
            lines,
            first: true,
            names: columns.names(layout.variant).to_vec(),
            numbers_as_strings: !layout.variant.is_multiple_of(3),
        })
    }
}

impl PartWriter for JsonPart {
    fn write(&mut self, row: &Record) -> io::Result<()> {
        if !self.lines && !self.first {
            self.w.write_all(b",\n")?;
        }
        self.first = false;
        self.w.write_all(b"{")?;
        for (i, value) in row.values.iter().enumerate() {
            if i > 0 {
                self.w.write_all(b",")?;
            }
            serde_json::to_writer(&mut self.w, &self.names[i])?;
            self.w.write_all(b":")?;
            match value {
                Value::Int(_) | Value::Float(_) if !self.numbers_as_strings => {
                    self.w.write_all(value.text().as_bytes())?
                }
                Value::Null => self.w.write_all(b"null")?,
                other => serde_json::to_writer(&mut self.w, &other.text())?,
            }
        }
        self.w.write_all(b"}")?;
        if self.lines {
            self.w.write_all(b"\n")?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if !self.lines {
            self.w.write_all(b"\n]\n")?;
        }
        self.w.flush()
    }
}

/// A column's builder in a columnar part.
enum Builder {
    Text(StringBuilder),
    Int(Int32Builder),
    Float(Float64Builder),
    Time(TimestampMillisecondBuilder),
    Date(Date32Builder),
}

impl Builder {
    fn new(t: ColType) -> Self {
        match t {
            ColType::Utf8 => Builder::Text(StringBuilder::new()),
            ColType::Int32 => Builder::Int(Int32Builder::new()),
            ColType::Float64 => Builder::Float(Float64Builder::new()),
            ColType::Timestamp => {
                Builder::Time(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
            ColType::Date => Builder::Date(Date32Builder::new()),
        }
    }

    fn data_type(t: ColType) -> DataType {
        match t {
            ColType::Utf8 => DataType::Utf8,
            ColType::Int32 => DataType::Int32,
            ColType::Float64 => DataType::Float64,
            ColType::Timestamp => DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            ColType::Date => DataType::Date32,
        }
    }

    /// A value as the column's type holds it; what does not fit (a temperature that is "NaN"
    /// text, a time that names no instant) is written as the file can: text as text, else null.
    fn push(&mut self, v: &Value) {
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
        match (self, v) {
            (Builder::Text(b), Value::Null) => b.append_null(),
            (Builder::Text(b), v) => b.append_value(v.text()),
            (Builder::Int(b), Value::Int(n)) => b.append_value(*n as i32),
            (Builder::Int(b), _) => b.append_null(),
            (Builder::Float(b), Value::Float(x)) => b.append_value(*x),
            (Builder::Float(b), Value::Int(n)) => b.append_value(*n as f64),
            (Builder::Float(b), Value::Text(t)) => match t.parse::<f64>() {
                Ok(x) => b.append_value(x),
                Err(_) => b.append_null(),
            },
            (Builder::Float(b), _) => b.append_null(),
            (
                Builder::Time(b),
                Value::Time {
                    micros: Some(us), ..
                },
            ) => b.append_value(us.div_euclid(1000)),
            (Builder::Time(b), _) => b.append_null(),
            (Builder::Date(b), Value::Date(d)) => b.append_value((*d - epoch).num_days() as i32),
            (Builder::Date(b), _) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Builder::Text(b) => Arc::new(b.finish()),
            Builder::Int(b) => Arc::new(b.finish()),
            Builder::Float(b) => Arc::new(b.finish()),
            Builder::Time(b) => Arc::new(b.finish()),
            Builder::Date(b) => Arc::new(b.finish()),
        }
    }
}

/// Typed columns, as a Spark job would write them.
struct ColumnarBuffer {
    schema: SchemaRef,
    order: Vec<usize>,
    builders: Vec<Builder>,
    len: usize,
}

const BATCH_ROWS: usize = 65_536;

impl ColumnarBuffer {
    fn new(columns: &Columns, layout: &Layout) -> Self {
        let names = columns.names(layout.variant);
        let order = layout.order(columns.len());
        let schema = Arc::new(Schema::new(
            order
                .iter()
                .map(|&i| Field::new(&names[i], Builder::data_type(columns.types[i]), true))
                .collect::<Vec<_>>(),
        ));
        Self {
            schema,
            order,
            builders: columns.types.iter().map(|t| Builder::new(*t)).collect(),
            len: 0,
        }
    }

    fn push(&mut self, r: &Record) {
        for (b, v) in self.builders.iter_mut().zip(&r.values) {
            b.push(v);
        }
        self.len += 1;
    }

    fn take(&mut self) -> Option<RecordBatch> {
        if self.len == 0 {
            return None;
        }
        self.len = 0;
        let cols: Vec<ArrayRef> = self.builders.iter_mut().map(Builder::finish).collect();
        let ordered = self.order.iter().map(|&i| cols[i].clone()).collect();
        Some(RecordBatch::try_new(self.schema.clone(), ordered).expect("schema matches columns"))
    }
}

/// The two columnar formats' writers, behind one interface.
trait BatchWriter {
    fn write_batch(&mut self, b: &RecordBatch) -> io::Result<()>;
    fn close_file(self: Box<Self>) -> io::Result<()>;
}

impl BatchWriter for parquet::arrow::ArrowWriter<File> {
    fn write_batch(&mut self, b: &RecordBatch) -> io::Result<()> {
        self.write(b).map_err(io::Error::other)
    }
    fn close_file(self: Box<Self>) -> io::Result<()> {
        self.close().map(drop).map_err(io::Error::other)
    }
}

impl BatchWriter for orc_rust::ArrowWriter<File> {
    fn write_batch(&mut self, b: &RecordBatch) -> io::Result<()> {
        self.write(b).map_err(io::Error::other)
    }
    fn close_file(self: Box<Self>) -> io::Result<()> {
        self.close().map_err(io::Error::other)
    }
}

/// Rows buffered into typed batches for a Parquet or ORC part.
struct ColumnarPart {
    buf: ColumnarBuffer,
    w: Box<dyn BatchWriter>,
}

impl PartWriter for ColumnarPart {
    fn write(&mut self, row: &Record) -> io::Result<()> {
        self.buf.push(row);
        if self.buf.len >= BATCH_ROWS {
            let b = self.buf.take().expect("non-empty");
            self.w.write_batch(&b)?;
        }
        Ok(())
    }

    fn finish(mut self: Box<Self>) -> io::Result<()> {
        if let Some(b) = self.buf.take() {
            self.w.write_batch(&b)?;
        }
        self.w.close_file()
    }
}

fn part_writer(
    file_type: FileType,
    file: File,
    columns: &Columns,
    layout: &Layout,
    part: usize,
) -> io::Result<Box<dyn PartWriter>> {
    Ok(match file_type {
        FileType::Csv => Box::new(CsvPart::new(file, columns, layout, part)?),
        FileType::Json => Box::new(JsonPart::new(file, columns, layout, part)?),
        FileType::Parquet => {
            let buf = ColumnarBuffer::new(columns, layout);
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let w = parquet::arrow::ArrowWriter::try_new(file, buf.schema.clone(), Some(props))
                .map_err(io::Error::other)?;
            Box::new(ColumnarPart {
                buf,
                w: Box::new(w),
            })
        }
        FileType::Orc => {
            let buf = ColumnarBuffer::new(columns, layout);
            let w = orc_rust::ArrowWriterBuilder::new(file, buf.schema.clone())
                .try_build()
                .map_err(io::Error::other)?;
            Box::new(ColumnarPart {
                buf,
                w: Box::new(w),
            })
        }
    })
}

/// Writes the export of `rows` (each with `columns`) as a zip at `dest`; returns the number of
/// data rows.
pub fn write_zip(
    dest: &Path,
    job_id: &str,
    file_type: FileType,
    layout: Layout,
    columns: &Columns,
    rows: impl FnOnce(&mut dyn FnMut(Record) -> bool),
) -> io::Result<u64> {
    let dir = tempfile::tempdir_in(dest.parent().unwrap_or(Path::new(".")))?;
    let mut writers = Vec::with_capacity(layout.parts);
    let mut names = Vec::with_capacity(layout.parts);
    for p in 0..layout.parts {
        let name = format!(
            "part-{p:05}-{}.{}",
            job_id.to_ascii_lowercase(),
            file_type.as_str()
        );
        let file = File::create(dir.path().join(&name))?;
        writers.push(part_writer(file_type, file, columns, &layout, p)?);
        names.push(name);
    }
    let mut count = 0u64;
    let mut failure = None;
    let mut emit = |row: Record| {
        let part = (row.part_key % layout.parts as u64) as usize;
        if let Err(e) = writers[part].write(&row) {
            failure = Some(e);
            return false;
        }
        count += 1;
        true
    };
    if layout.packaging != Packaging::Empty {
        rows(&mut emit);
    }
    if let Some(e) = failure {
        return Err(e);
    }
    for w in writers {
        w.finish()?;
    }
    let tmp = dest.with_extension("zip.tmp");
    let mut zip = zip::ZipWriter::new(BufWriter::new(File::create(&tmp)?));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    let packed = if count == 0 && layout.markers_when_empty {
        &[][..]
    } else {
        &names[..]
    };
    for name in packed {
        let mut part = File::open(dir.path().join(name))?;
        match layout.packaging {
            Packaging::Gzip => {
                zip.start_file(format!("{name}.gz"), opts)
                    .map_err(io::Error::other)?;
                let mut gz = flate2::write::GzEncoder::new(&mut zip, flate2::Compression::fast());
                io::copy(&mut part, &mut gz)?;
                gz.finish()?;
            }
            Packaging::Bzip2Named => {
                zip.start_file(format!("{name}.bz2"), opts)
                    .map_err(io::Error::other)?;
                io::copy(&mut part, &mut zip)?;
            }
            Packaging::Plain | Packaging::Empty => {
                zip.start_file(name.as_str(), opts)
                    .map_err(io::Error::other)?;
                io::copy(&mut part, &mut zip)?;
            }
        }
    }
    zip.start_file("_SUCCESS", opts).map_err(io::Error::other)?;
    zip.finish().map_err(io::Error::other)?.flush()?;
    std::fs::rename(&tmp, dest)?;
    Ok(count)
}
