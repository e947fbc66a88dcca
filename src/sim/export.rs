//! Writing an export zip: 1..N part files in the requested format plus `_SUCCESS`, with the quirks
//! the vendor's examples show (shuffled columns, header casing, BOM, CRLF, trailing commas, mixed
//! timestamp forms, JSON arrays or lines, Phase as a string). Rows stream from the generator into
//! per-part files on disk and then into the zip, so a multi-million-row export never sits in memory.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Date32Builder, Int32Builder, StringBuilder, TimestampMillisecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};

use super::data::{Dataset, SimRow, mix};
use crate::config::FileType;

/// What a batch request or on-demand call asked for, as the seed's parameter table defines it.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// `StatusDatetime` with a date-only value: that whole UTC day.
    pub day: Option<NaiveDate>,
    /// `StatusDatetime` with a full timestamp: that instant.
    pub instant: Option<DateTime<Utc>>,
    /// `WorkOrderId`, In list.
    pub work_orders: Option<HashSet<String>>,
    pub issue_id: Option<String>,
    pub status: Option<String>,
    /// `Reason`, contains.
    pub reason_contains: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &SimRow) -> bool {
        self.day.is_none_or(|d| r.status_day() == d)
            && self.instant.is_none_or(|t| r.status_datetime == t)
            && self
                .work_orders
                .as_ref()
                .is_none_or(|w| w.contains(&r.work_order_id))
            && self.issue_id.as_ref().is_none_or(|i| &r.issue_id == i)
            && self
                .status
                .as_ref()
                .is_none_or(|s| r.status.eq_ignore_ascii_case(s))
            && self
                .reason_contains
                .as_ref()
                .is_none_or(|s| r.reason.contains(s.as_str()))
    }

    /// Every row that matches, day by day over the availability window, then the injected rows.
    pub fn for_each_row(
        &self,
        ds: &Dataset,
        today: NaiveDate,
        as_of: DateTime<Utc>,
        extra: &[SimRow],
        mut emit: impl FnMut(SimRow) -> bool,
    ) {
        let from = Dataset::available_from(today);
        let (first, last) = match (self.day, self.instant) {
            (Some(d), _) => (d, d),
            (None, Some(t)) => (t.date_naive(), t.date_naive()),
            (None, None) => (from, today),
        };
        let mut day = first.max(from);
        while day <= last.min(today) {
            let mut go_on = true;
            ds.rows_for_day(day, as_of, |r| {
                if go_on && self.matches(&r) {
                    go_on = emit(r);
                }
            });
            if !go_on {
                return;
            }
            for r in extra
                .iter()
                .filter(|r| r.status_day() == day && self.matches(r))
            {
                if !emit(r.clone()) {
                    return;
                }
            }
            day = day.succ_opt().expect("dates stay in range");
        }
    }
}

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

const NAMES: [[&str; 8]; 3] = [
    [
        "ServicePointId",
        "Phase",
        "IssueId",
        "Status",
        "StatusDatetime",
        "Reason",
        "EventDate",
        "WorkOrderId",
    ],
    [
        "ServicePointId",
        "Phase",
        "IssueID",
        "Status",
        "StatusDateTime",
        "Reason",
        "EventDate",
        "WorkOrderID",
    ],
    [
        "servicePointId",
        "phase",
        "Issueid",
        "status",
        "statusDatetime",
        "reason",
        "eventDate",
        "workOrderId",
    ],
];

impl Layout {
    fn names(&self) -> &'static [&'static str; 8] {
        &NAMES[(self.variant % 3) as usize]
    }

    /// A column order of this export: a seeded shuffle of the eight columns.
    fn order(&self) -> [usize; 8] {
        let mut idx = [0, 1, 2, 3, 4, 5, 6, 7];
        let mut h = self.variant;
        for i in (1..idx.len()).rev() {
            h = mix(h);
            idx.swap(i, (h % (i as u64 + 1)) as usize);
        }
        idx
    }
}

fn fields(r: &SimRow) -> [String; 8] {
    [
        r.service_point_id.clone(),
        r.phase.to_string(),
        r.issue_id.clone(),
        r.status.to_string(),
        r.status_datetime_text(),
        r.reason.clone(),
        r.event_date_text(),
        r.work_order_id.clone(),
    ]
}

trait PartWriter {
    fn write(&mut self, row: &SimRow) -> io::Result<()>;
    fn finish(self: Box<Self>) -> io::Result<()>;
}

struct CsvPart {
    w: csv::Writer<BufWriter<File>>,
    order: [usize; 8],
}

impl CsvPart {
    fn new(file: File, layout: &Layout, part: usize) -> io::Result<Self> {
        let mut buf = BufWriter::with_capacity(1 << 20, file);
        if part == 0 || layout.variant.is_multiple_of(2) {
            buf.write_all("\u{feff}".as_bytes())?;
        }
        let mut w = csv::WriterBuilder::new()
            .terminator(csv::Terminator::CRLF)
            .from_writer(buf);
        let order = layout.order();
        let names = layout.names();
        // The vendor's example ends every line with a comma: an unnamed empty last column.
        let mut header: Vec<&str> = order.iter().map(|&i| names[i]).collect();
        header.push("");
        w.write_record(&header)?;
        Ok(Self { w, order })
    }
}

impl PartWriter for CsvPart {
    fn write(&mut self, row: &SimRow) -> io::Result<()> {
        let f = fields(row);
        for &i in &self.order {
            self.w.write_field(&f[i])?;
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
    names: &'static [&'static str; 8],
    phase_as_string: bool,
}

impl JsonPart {
    fn new(file: File, layout: &Layout, part: usize) -> io::Result<Self> {
        let mut w = BufWriter::with_capacity(1 << 20, file);
        let lines = (part as u64 + layout.variant) % 2 == 1;
        if !lines {
            w.write_all(b"[\n")?;
        }
        Ok(Self {
            w,
            lines,
            first: true,
            names: layout.names(),
            phase_as_string: !layout.variant.is_multiple_of(3),
        })
    }
}

impl PartWriter for JsonPart {
    fn write(&mut self, row: &SimRow) -> io::Result<()> {
        if !self.lines && !self.first {
            self.w.write_all(b",\n")?;
        }
        self.first = false;
        let f = fields(row);
        self.w.write_all(b"{")?;
        for (i, value) in f.iter().enumerate() {
            if i > 0 {
                self.w.write_all(b",")?;
            }
            serde_json::to_writer(&mut self.w, self.names[i])?;
            self.w.write_all(b":")?;
            if i == 1 && !self.phase_as_string {
                self.w.write_all(value.as_bytes())?;
            } else {
                serde_json::to_writer(&mut self.w, value)?;
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

/// Typed columns, as a Spark job would write them; an unparseable timestamp becomes null.
struct ColumnarBuffer {
    schema: SchemaRef,
    order: [usize; 8],
    sp: StringBuilder,
    phase: Int32Builder,
    issue: StringBuilder,
    status: StringBuilder,
    ts: TimestampMillisecondBuilder,
    reason: StringBuilder,
    event: Date32Builder,
    wo: StringBuilder,
    len: usize,
}

const BATCH_ROWS: usize = 65_536;

impl ColumnarBuffer {
    fn new(layout: &Layout) -> Self {
        let names = layout.names();
        let types = [
            DataType::Utf8,
            DataType::Int32,
            DataType::Utf8,
            DataType::Utf8,
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            DataType::Utf8,
            DataType::Date32,
            DataType::Utf8,
        ];
        let order = layout.order();
        let schema = Arc::new(Schema::new(
            order
                .iter()
                .map(|&i| Field::new(names[i], types[i].clone(), true))
                .collect::<Vec<_>>(),
        ));
        Self {
            schema,
            order,
            sp: StringBuilder::new(),
            phase: Int32Builder::new(),
            issue: StringBuilder::new(),
            status: StringBuilder::new(),
            ts: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            reason: StringBuilder::new(),
            event: Date32Builder::new(),
            wo: StringBuilder::new(),
            len: 0,
        }
    }

    fn push(&mut self, r: &SimRow) {
        self.sp.append_value(&r.service_point_id);
        self.phase.append_value(r.phase as i32);
        self.issue.append_value(&r.issue_id);
        self.status.append_value(r.status);
        if r.defect == Some(super::data::Defect::BadTimestamp) {
            self.ts.append_null();
        } else {
            self.ts.append_value(r.status_datetime.timestamp_millis());
        }
        self.reason.append_value(&r.reason);
        let epoch = NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
        self.event
            .append_value((r.event_date - epoch).num_days() as i32);
        self.wo.append_value(&r.work_order_id);
        self.len += 1;
    }

    fn take(&mut self) -> Option<RecordBatch> {
        if self.len == 0 {
            return None;
        }
        self.len = 0;
        let cols: [ArrayRef; 8] = [
            Arc::new(self.sp.finish()),
            Arc::new(self.phase.finish()),
            Arc::new(self.issue.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.event.finish()),
            Arc::new(self.wo.finish()),
        ];
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
    fn write(&mut self, row: &SimRow) -> io::Result<()> {
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
    layout: &Layout,
    part: usize,
) -> io::Result<Box<dyn PartWriter>> {
    Ok(match file_type {
        FileType::Csv => Box::new(CsvPart::new(file, layout, part)?),
        FileType::Json => Box::new(JsonPart::new(file, layout, part)?),
        FileType::Parquet => {
            let buf = ColumnarBuffer::new(layout);
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
            let buf = ColumnarBuffer::new(layout);
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

/// Writes the export of `rows` as a zip at `dest`; returns the number of data rows.
pub fn write_zip(
    dest: &Path,
    job_id: &str,
    file_type: FileType,
    layout: Layout,
    rows: impl FnOnce(&mut dyn FnMut(SimRow) -> bool),
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
        writers.push(part_writer(file_type, file, &layout, p)?);
        names.push(name);
    }
    let mut count = 0u64;
    let mut failure = None;
    let mut emit = |row: SimRow| {
        // A work order's rows stay in one part, so a duplicate's later copy is also later in the zip.
        let part = (mix(row.work_order_id.len() as u64 ^ hash_str(&row.work_order_id))
            % layout.parts as u64) as usize;
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

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}
