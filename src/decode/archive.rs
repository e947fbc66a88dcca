//! What a download is and how its parts are reached: a zip of part files or a bare part, each
//! known by its name (and its first bytes), read through a counter that stops a zip bomb.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{DecodeError, DecodeSummary, Sink, decode_part, io_error};
use crate::config::FileType;
use crate::product::Column;

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
pub(super) fn is_side_file(name: &str) -> bool {
    let base = name.rsplit('/').next().unwrap_or(name);
    base.starts_with('_') || base.starts_with('.') || base.to_ascii_lowercase().ends_with(".crc")
}

/// Counts bytes and stops at the limit, so a zip bomb fails instead of filling the disk.
pub(super) struct Limited<R> {
    inner: R,
    pub(super) used: u64,
    limit: u64,
}

impl<R> Limited<R> {
    pub(super) fn new(inner: R, limit: u64) -> Self {
        Self {
            inner,
            used: 0,
            limit,
        }
    }

    /// The limit was crossed: whatever error the decoder above made of the refused read, this
    /// is its cause.
    pub(super) fn exceeded(&self) -> bool {
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

pub(super) enum Kind {
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
pub(super) fn sniff(path: &Path) -> io::Result<Kind> {
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

pub(super) fn decode_zip(
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
    // Columnar parts are unpacked to scratch files and rows past the memory budget spill there:
    // at most about the archive's uncompressed size.
    crate::disk::ensure_room(scratch, declared, &format!("unpacking {name}"))?;
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
        let mut limited = Limited::new(entry, budget);
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

/// The uncompressed-size limit surfaces from deep inside a decoder as whatever error it made of
/// the refused read; the reader knows the cause, and this names it for what it is.
pub(super) fn over_limit(
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
