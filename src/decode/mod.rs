//! Decoding an export: every part file in the zip (or a loose local file), in any of the four
//! formats, streamed into [`RawBatch`]es of text columns in the product's canonical order.
//!
//! Decoders do not judge values; they only find columns by name (any casing, any order) and
//! report rows they could not read at all (a ragged CSV line, a JSON line that does not parse) as
//! [`RowError`]s, so the normalizer quarantines those too. A file without a required column
//! fails the whole job: nothing in it could be trusted to line up.

mod columnar;
mod csv;
mod json;

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, Date32Array, Int64Array, StringArray, StringBuilder, TimestampMicrosecondArray,
};

use crate::config::FileType;
use crate::product::Column;

/// Name prefix of the scratch copies of Parquet/ORC parts, so a killed run's leftovers can be
/// recognised and removed.
pub const SCRATCH_PREFIX: &str = "scratch-";

/// Rows per decoded batch: large enough to amortise per-batch work, small enough to stay cheap.
pub const BATCH_ROWS: usize = 16_384;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{file}: required column `{column}` is missing (columns found: {found})")]
    MissingColumn {
        file: String,
        column: &'static str,
        found: String,
    },
    #[error("{file}: {detail}")]
    Malformed { file: String, detail: String },
    #[error("{file}: not a readable zip archive: {detail}")]
    BadZip { file: String, detail: String },
    #[error("{file}: the archive is empty (no part files and no _SUCCESS marker)")]
    EmptyArchive { file: String },
    #[error(
        "{file}: the archive holds no data part this client reads (entries: {entries}); expected \
         .csv, .json, .jsonl, .parquet or .orc parts, optionally gzip-compressed (.csv.gz, …). \
         Nothing was written: an export read as zero rows would replace its days with nothing"
    )]
    NoDataParts { file: String, entries: String },
    #[error("{file}: uncompressed size exceeds lake.max_uncompressed_size ({limit} bytes)")]
    TooLarge { file: String, limit: u64 },
    #[error(
        "{file}: unsupported file type (expected .csv, .json, .parquet or .orc, or a .zip of them)"
    )]
    UnsupportedFile { file: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("stopped by the consumer: {0}")]
    Sink(String),
}

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
}

/// One value of a [`RawColumn`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cell<'a> {
    Text(&'a str),
    Micros(i64),
    Days(i32),
    Int(i64),
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
        }
    }

    /// The value at `row`, `None` when null. Runs for every cell: each arm checks its own
    /// array's nulls, which inlines, where `array().is_null` was a call through a vtable. Left
    /// to the compiler it stayed a call, whose result went through memory to be copied into
    /// the row's cells; inlined, the per-row normalizing samples of a Parquet import fell by 28%.
    #[inline(always)]
    pub fn cell(&self, row: usize) -> Option<Cell<'_>> {
        match self {
            Self::Text(a) => a.is_valid(row).then(|| Cell::Text(a.value(row))),
            Self::Micros(a) => a.is_valid(row).then(|| Cell::Micros(a.value(row))),
            Self::Days(a) => a.is_valid(row).then(|| Cell::Days(a.value(row))),
            Self::Int(a) => a.is_valid(row).then(|| Cell::Int(a.value(row))),
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
        }
    }
}

/// Up to [`BATCH_ROWS`] rows of one source file, each column null where absent.
#[derive(Debug, Clone)]
pub struct RawBatch {
    pub columns: [RawColumn; 8],
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
    cols: [StringBuilder; 8],
    errors: Vec<RowError>,
    rows: usize,
    source: Arc<str>,
    next_row: u64,
}

impl RawBuilder {
    pub fn new(source: Arc<str>) -> Self {
        Self {
            cols: std::array::from_fn(|_| {
                StringBuilder::with_capacity(BATCH_ROWS, BATCH_ROWS * 16)
            }),
            errors: Vec::new(),
            rows: 0,
            source,
            next_row: 1,
        }
    }

    pub fn set(&mut self, col: Column, value: Option<&str>) {
        match value {
            Some(v) => self.cols[col.index()].append_value(v),
            None => self.cols[col.index()].append_null(),
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
            columns: std::array::from_fn(|i| RawColumn::Text(self.cols[i].finish())),
            errors: std::mem::take(&mut self.errors),
            source: self.source.clone(),
            first_row: self.next_row,
        };
        self.next_row += self.rows as u64;
        self.rows = 0;
        Some(batch)
    }
}

/// What a decode saw besides rows: which files, and columns it did not know.
#[derive(Debug, Default, Clone)]
pub struct DecodeSummary {
    pub files: Vec<String>,
    pub unknown_columns: BTreeSet<String>,
    pub uncompressed_bytes: u64,
}

pub type Sink<'a> = dyn FnMut(RawBatch) -> Result<(), DecodeError> + 'a;

/// A data part: its format, and whether it is gzip-compressed (`part-00000.csv.gz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartType {
    pub format: FileType,
    pub gzip: bool,
}

/// The format of a part file from its name, or `None` for anything else.
pub fn file_type_of(name: &str) -> Option<PartType> {
    if is_side_file(name) {
        return None;
    }
    let base = name.rsplit('/').next().unwrap_or(name);
    let (stem, ext) = base.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    if ext == "gz" || ext == "gzip" {
        let inner = stem.rsplit_once('.')?.1.to_ascii_lowercase();
        return format_of_extension(&inner).map(|format| PartType { format, gzip: true });
    }
    format_of_extension(&ext).map(|format| PartType {
        format,
        gzip: false,
    })
}

fn format_of_extension(ext: &str) -> Option<FileType> {
    match ext {
        "csv" | "txt" => Some(FileType::Csv),
        "json" | "jsonl" | "ndjson" => Some(FileType::Json),
        "parquet" | "parq" => Some(FileType::Parquet),
        "orc" => Some(FileType::Orc),
        _ => None,
    }
}

/// Files a Spark-style writer leaves beside its parts: `_SUCCESS`, `_committed_…`, hidden files
/// and checksums (`.part-00000.csv.crc`, `part-00000.csv.crc`).
fn is_side_file(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.starts_with('_') || base.starts_with('.') || base.to_ascii_lowercase().ends_with(".crc")
}

/// Counts bytes and stops at the limit, so a zip bomb fails instead of filling the disk.
struct Limited<R> {
    inner: R,
    used: u64,
    limit: u64,
}

impl<R> Limited<R> {
    /// The limit was crossed: whatever error the decoder above made of the refused read, this
    /// is its cause.
    fn exceeded(&self) -> bool {
        self.used > self.limit
    }
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.used += n as u64;
        if self.used > self.limit {
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        Ok(n)
    }
}

/// Decodes one local file: a zip of part files, or a single part file.
pub fn decode_path(
    path: &Path,
    scratch: &Path,
    max_uncompressed: u64,
    sink: &mut Sink<'_>,
) -> Result<DecodeSummary, DecodeError> {
    let name = path.display().to_string();
    let mut summary = DecodeSummary::default();
    match sniff(path).map_err(|e| io_error(&name, e))? {
        Kind::Zip => decode_zip(path, scratch, max_uncompressed, &mut summary, sink)?,
        Kind::Part(part) => {
            let file = File::open(path).map_err(|e| io_error(&name, e))?;
            let mut limited = Limited {
                inner: file,
                used: 0,
                limit: max_uncompressed,
            };
            let result = decode_part(
                part,
                &name,
                &mut limited,
                scratch,
                &mut None,
                &mut summary,
                sink,
            );
            summary.uncompressed_bytes = limited.used;
            over_limit(result, limited.exceeded(), &name, max_uncompressed)?;
            summary.files.push(name);
        }
        Kind::Unknown => return Err(DecodeError::UnsupportedFile { file: name }),
    }
    Ok(summary)
}

/// A rough row count of a file, to size the duplicate filter: the bytes of its parts over a
/// typical row's size in each format (the vendor's CSV rows take ~110 bytes, JSON ~220,
/// compressed Parquet and ORC ~23, gzip-compressed text about a fifth of plain). Guessing high
/// costs a little memory; guessing low makes the filter grow in steps, which costs more.
pub fn estimated_rows(path: &Path) -> u64 {
    let per_row = |part: Option<PartType>| match part {
        Some(PartType { gzip: true, .. }) => 20,
        Some(PartType {
            format: FileType::Csv,
            ..
        }) => 100,
        Some(PartType {
            format: FileType::Json,
            ..
        }) => 200,
        Some(_) | None => 20,
    };
    let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match sniff(path) {
        Ok(Kind::Zip) => File::open(path)
            .ok()
            .and_then(|f| zip::ZipArchive::new(f).ok())
            .map(|mut a| {
                (0..a.len())
                    .filter_map(|i| {
                        let e = a.by_index_raw(i).ok()?;
                        let part = file_type_of(&e.name().ok()?)?;
                        Some(e.size() / per_row(Some(part)))
                    })
                    .sum()
            })
            .unwrap_or(size / per_row(None)),
        Ok(Kind::Part(part)) => size / per_row(Some(part)),
        _ => size / per_row(None),
    }
}

enum Kind {
    Zip,
    Part(PartType),
    Unknown,
}

fn plain(format: FileType) -> Kind {
    Kind::Part(PartType {
        format,
        gzip: false,
    })
}

/// What a file is, by its first bytes before its name: a download saved as `<job>.zip` may be a
/// bare part file if the vendor skipped the zip. An empty or unrecognisable `.zip` is a broken
/// zip, never zero rows.
fn sniff(path: &Path) -> io::Result<Kind> {
    let mut head = [0u8; 64];
    let n = File::open(path)?.read(&mut head)?;
    let head = &head[..n];
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok(Kind::Zip);
    }
    if head.starts_with(b"PAR1") {
        return Ok(plain(FileType::Parquet));
    }
    if head.starts_with(b"ORC") {
        return Ok(plain(FileType::Orc));
    }
    let name = path.to_string_lossy();
    if let Some(part) = file_type_of(&name) {
        // A gzip stream's magic number decides, whatever the name says.
        let gzip = head.starts_with(&[0x1f, 0x8b]);
        return Ok(Kind::Part(PartType { gzip, ..part }));
    }
    let is_zip_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("zip"));
    let text = head.strip_prefix("\u{feff}".as_bytes()).unwrap_or(head);
    let first = text.iter().find(|b| !b.is_ascii_whitespace());
    Ok(match first {
        None if is_zip_name => Kind::Zip,
        Some(b'[' | b'{') => plain(FileType::Json),
        Some(_)
            if is_zip_name
                && Column::ALL.iter().any(|c| {
                    String::from_utf8_lossy(text)
                        .to_ascii_lowercase()
                        .contains(&c.vendor_name().to_ascii_lowercase())
                }) =>
        {
            plain(FileType::Csv)
        }
        _ if is_zip_name => Kind::Zip,
        _ => Kind::Unknown,
    })
}

fn decode_zip(
    path: &Path,
    scratch: &Path,
    max_uncompressed: u64,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let name = path.display().to_string();
    let bad = |detail: String| DecodeError::BadZip {
        file: name.clone(),
        detail,
    };
    let file = File::open(path).map_err(|e| io_error(&name, e))?;
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
    if archive.is_empty() {
        return Err(DecodeError::EmptyArchive { file: name });
    }
    let declared: u64 = (0..archive.len())
        .filter_map(|i| archive.by_index_raw(i).ok().map(|e| e.size()))
        .sum();
    if declared > max_uncompressed {
        return Err(DecodeError::TooLarge {
            file: name,
            limit: max_uncompressed,
        });
    }
    let mut budget = max_uncompressed;
    let mut csv_header = None;
    let mut ignored = Vec::new();
    let mut parts = 0;
    for i in 0..archive.len() {
        let entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
        if entry.is_dir() {
            continue;
        }
        let entry_name = entry.name().map_err(|e| bad(e.to_string()))?.to_string();
        let Some(part) = file_type_of(&entry_name) else {
            tracing::debug!(archive = %name, entry = %entry_name, "ignoring a file that is not a data part");
            ignored.push(entry_name);
            continue;
        };
        let label = format!("{name}!{entry_name}");
        let mut limited = Limited {
            inner: entry,
            used: 0,
            limit: budget,
        };
        let result = decode_part(
            part,
            &label,
            &mut limited,
            scratch,
            &mut csv_header,
            summary,
            sink,
        );
        budget = budget.saturating_sub(limited.used);
        summary.uncompressed_bytes += limited.used;
        over_limit(result, limited.exceeded(), &name, max_uncompressed)?;
        summary.files.push(label);
        parts += 1;
    }
    if parts == 0 {
        return Err(DecodeError::NoDataParts {
            file: name,
            entries: ignored.join(", "),
        });
    }
    let unknown: Vec<&String> = ignored.iter().filter(|e| !is_side_file(e)).collect();
    if !unknown.is_empty() {
        tracing::warn!(archive = %name, entries = ?unknown, "the export holds files that are not data parts; they were not read");
    }
    Ok(())
}

/// One data part from `reader`: text formats stream (through gunzip if compressed); Parquet and
/// ORC need random access, so they are copied (and decompressed) to a scratch file first.
#[allow(clippy::too_many_arguments)]
fn decode_part(
    part: PartType,
    label: &str,
    reader: &mut dyn Read,
    scratch: &Path,
    csv_header: &mut Option<Vec<String>>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let mut reader: Box<dyn Read + '_> = if part.gzip {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    match part.format {
        FileType::Csv | FileType::Json => {
            decode_text(part.format, label, reader, csv_header, summary, sink)
        }
        FileType::Parquet | FileType::Orc => {
            let mut tmp = tempfile::Builder::new()
                .prefix(SCRATCH_PREFIX)
                .tempfile_in(scratch)
                .map_err(|e| io_error(&format!("scratch file in {}", scratch.display()), e))?;
            io::copy(&mut reader, tmp.as_file_mut()).map_err(|e| io_error(label, e))?;
            decode_columnar(part.format, label, tmp.path(), summary, sink)
        }
    }
}

/// The uncompressed-size limit surfaces from deep inside a decoder as whatever error it made of
/// the refused read; the reader knows the cause, and this names it for what it is.
fn over_limit(
    result: Result<(), DecodeError>,
    exceeded: bool,
    file: &str,
    limit: u64,
) -> Result<(), DecodeError> {
    match result {
        Err(_) if exceeded => Err(DecodeError::TooLarge {
            file: file.to_string(),
            limit,
        }),
        other => other,
    }
}

fn io_error(path: &str, source: io::Error) -> DecodeError {
    DecodeError::Io {
        path: path.to_string(),
        source,
    }
}

fn decode_text(
    ft: FileType,
    label: &str,
    reader: impl Read,
    csv_header: &mut Option<Vec<String>>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let label: Arc<str> = Arc::from(label);
    if ft == FileType::Csv {
        csv::decode(reader, label, csv_header, summary, sink)
    } else {
        json::decode(reader, label, summary, sink)
    }
}

/// Parquet and ORC need random access, so they are read from a file on disk.
fn decode_columnar(
    ft: FileType,
    label: &str,
    path: &Path,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let label: Arc<str> = Arc::from(label);
    let file = File::open(path).map_err(|e| io_error(&label, e))?;
    if ft == FileType::Parquet {
        columnar::decode_parquet(file, label, summary, sink)
    } else {
        columnar::decode_orc(file, label, summary, sink)
    }
}

/// Maps header names to columns; fails when a required column is absent.
pub(crate) fn map_header(
    names: &[String],
    file: &str,
    summary: &mut DecodeSummary,
) -> Result<Vec<Option<Column>>, DecodeError> {
    let mapping: Vec<Option<Column>> = names.iter().map(|n| Column::from_header(n)).collect();
    for (n, c) in names.iter().zip(&mapping) {
        if c.is_none() && !n.trim().trim_start_matches('\u{feff}').is_empty() {
            summary.unknown_columns.insert(n.trim().to_string());
        }
    }
    for col in Column::ALL {
        if !mapping.contains(&Some(col)) {
            return Err(DecodeError::MissingColumn {
                file: file.to_string(),
                column: col.vendor_name(),
                found: names
                    .iter()
                    .filter(|n| !n.trim().is_empty())
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(mapping)
}

/// On-demand rows (column name to text) as one batch, keys matched like any header.
pub fn rows_to_batch(
    rows: &[crate::model::OnDemandRow],
    source: &str,
) -> (RawBatch, BTreeSet<String>) {
    let mut out = RawBuilder::new(Arc::from(source));
    let mut unknown = BTreeSet::new();
    for row in rows {
        let mut cells: [Option<&str>; 8] = [None; 8];
        for (k, v) in row {
            match Column::from_header(k) {
                Some(c) => cells[c.index()] = v.as_deref(),
                None => {
                    unknown.insert(k.clone());
                }
            }
        }
        for c in Column::ALL {
            out.set(c, cells[c.index()]);
        }
        out.end_row();
    }
    let batch = out.take().unwrap_or_else(|| RawBatch {
        columns: std::array::from_fn(|_| {
            RawColumn::Text(StringArray::from(Vec::<Option<&str>>::new()))
        }),
        errors: Vec::new(),
        source: Arc::from(source),
        first_row: 1,
    });
    (batch, unknown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_are_known_by_name_and_side_files_are_not_parts() {
        let plain = |format| {
            Some(PartType {
                format,
                gzip: false,
            })
        };
        assert_eq!(file_type_of("part-00000-abc.csv"), plain(FileType::Csv));
        assert_eq!(file_type_of("dir/part-1.PARQUET"), plain(FileType::Parquet));
        assert_eq!(file_type_of("x.jsonl"), plain(FileType::Json));
        assert_eq!(
            file_type_of("part-00000-c000.csv.gz"),
            Some(PartType {
                format: FileType::Csv,
                gzip: true
            })
        );
        assert_eq!(
            file_type_of("part-1.JSONL.GZ").map(|p| p.format),
            Some(FileType::Json)
        );
        assert_eq!(file_type_of("part-1.xlsx"), None);
        assert_eq!(file_type_of("notes.gz"), None);
        assert_eq!(file_type_of("_SUCCESS"), None);
        assert_eq!(file_type_of(".part-00000.csv.crc"), None);
        assert_eq!(file_type_of("part-00000.csv.crc"), None);
    }

    fn zip_of(path: &Path, entries: &[(&str, &[u8])]) {
        let mut w = zip::ZipWriter::new(File::create(path).unwrap());
        for (name, bytes) in entries {
            w.start_file(*name, zip::write::SimpleFileOptions::default())
                .unwrap();
            std::io::Write::write_all(&mut w, bytes).unwrap();
        }
        w.finish().unwrap();
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut e, bytes).unwrap();
        e.finish().unwrap()
    }

    const CSV: &str = "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n1,1,2,New,2024-06-15T00:00:00Z,r,2024-06-15,3\n1,1,2,Done,2024-06-15T01:00:00Z,r,2024-06-15,3\n";

    fn rows_of(path: &Path, dir: &Path) -> Result<usize, DecodeError> {
        let mut rows = 0;
        decode_path(path, dir, u64::MAX, &mut |b| {
            rows += b.num_rows();
            Ok(())
        })?;
        Ok(rows)
    }

    #[test]
    fn gzip_compressed_parts_are_read_in_a_zip_and_on_their_own() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("job.zip");
        let json = br#"{"ServicePointId":"1","Phase":"1","IssueId":"2","Status":"New","StatusDatetime":"2024-06-15T00:00:00Z","Reason":"r","EventDate":"2024-06-15","WorkOrderId":"4"}"#;
        zip_of(
            &z,
            &[
                ("part-00000-x.c000.csv.gz", &gzip(CSV.as_bytes())),
                ("part-00001-x.c000.json.gz", &gzip(json)),
                ("_SUCCESS", b""),
            ],
        );
        assert_eq!(rows_of(&z, dir.path()).unwrap(), 3);
        let loose = dir.path().join("export.csv.gz");
        std::fs::write(&loose, gzip(CSV.as_bytes())).unwrap();
        assert_eq!(rows_of(&loose, dir.path()).unwrap(), 2);
    }

    #[test]
    fn a_zip_without_a_data_part_is_an_error_naming_its_entries() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("job.zip");
        zip_of(&z, &[("part-00000.csv.bz2", b"BZh9"), ("_SUCCESS", b"")]);
        let err = rows_of(&z, dir.path()).unwrap_err();
        assert!(matches!(err, DecodeError::NoDataParts { .. }), "{err}");
        let text = err.to_string();
        assert!(text.contains("part-00000.csv.bz2, _SUCCESS"), "{text}");
        zip_of(&z, &[("_SUCCESS", b"")]);
        assert!(matches!(
            rows_of(&z, dir.path()).unwrap_err(),
            DecodeError::NoDataParts { .. }
        ));
    }

    #[test]
    fn a_bare_part_saved_as_zip_is_read_and_an_empty_zip_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("job.zip");
        std::fs::write(
            &raw,
            "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n1,1,2,New,2024-06-15T00:00:00Z,r,2024-06-15,3\n",
        )
        .unwrap();
        let mut rows = 0;
        decode_path(&raw, dir.path(), u64::MAX, &mut |b| {
            rows += b.num_rows();
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 1);
        let empty = dir.path().join("empty.zip");
        std::fs::write(&empty, "").unwrap();
        let err = decode_path(&empty, dir.path(), u64::MAX, &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecodeError::BadZip { .. }), "{err}");
    }

    #[test]
    fn the_uncompressed_limit_is_named_in_a_loose_part_and_in_a_zip() {
        let dir = tempfile::tempdir().unwrap();
        let rows: String = (0..20_000)
            .map(|i| format!("1,1,2,New,2024-06-15T00:00:00Z,reason {i},2024-06-15,{i}\n"))
            .collect();
        let big = format!("{}{rows}", CSV.lines().next().unwrap().to_owned() + "\n");
        let limit = 64 << 10;
        let loose = dir.path().join("export.csv.gz");
        std::fs::write(&loose, gzip(big.as_bytes())).unwrap();
        let z = dir.path().join("job.zip");
        zip_of(&z, &[("part-00000.csv.gz", &gzip(big.as_bytes()))]);
        for path in [&loose, &z] {
            let err = decode_path(path, dir.path(), limit, &mut |_| Ok(())).unwrap_err();
            assert!(
                matches!(err, DecodeError::TooLarge { limit: 65536, .. }),
                "{}: {err}",
                path.display()
            );
        }
        let err = rows_of(&dir.path().join("missing.csv"), dir.path()).unwrap_err();
        assert!(
            matches!(&err, DecodeError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound),
            "{err}"
        );
    }
}
