//! What a download is and how its parts are reached: a zip of part files or a bare part, each
//! known by its name (and its first bytes). Every byte a decoder reads, however many layers of
//! compression it came through, is charged to one budget, so a zip bomb (or a gzip bomb inside
//! a zip) fails at `lake.max_uncompressed_size` instead of filling the disk or the memory.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::{DecodeError, Decoding, io_error};
use crate::config::FileType;
use crate::model::{cut, shown};

/// A data part: its format, and whether it is gzip-compressed (`part-00000.csv.gz`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartType {
    pub format: FileType,
    pub gzip: bool,
}

/// The last component of an entry's path, whichever separator the zip's maker used.
fn base_name(name: &str) -> &str {
    name.rsplit(['/', '\\']).next().unwrap_or(name)
}

/// The format of a part file from its name, or `None` for anything else.
pub fn file_type_of(name: &str) -> Option<PartType> {
    if is_side_file(name) {
        return None;
    }
    let (stem, ext) = base_name(name).rsplit_once('.')?;
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
    let base = base_name(name);
    base.starts_with('_') || base.starts_with('.') || base.to_ascii_lowercase().ends_with(".crc")
}

/// The entries a job leaves that say something about the job, never about the data: a zip of
/// only these is an empty export (DESIGN.md, "Replacing days safely").
fn is_marker(name: &str) -> bool {
    let base = base_name(name);
    base == "_SUCCESS"
        || base.starts_with("_committed_")
        || base.starts_with("_started_")
        || base.to_ascii_lowercase().ends_with(".crc")
}

/// An entry whose path climbs out of the archive or starts at a root: nothing a job's export
/// writes, so the archive is refused rather than read around it.
fn escapes(name: &str) -> bool {
    name.starts_with(['/', '\\'])
        || name.as_bytes().get(1) == Some(&b':')
        || name.split(['/', '\\']).any(|c| c == "..")
}

/// An export's uncompressed bytes, against `lake.max_uncompressed_size`: one count for every
/// layer of every part.
#[derive(Debug, Clone, Copy)]
pub(super) struct Budget {
    used: u64,
    limit: u64,
}

impl Budget {
    pub(super) fn new(limit: u64) -> Self {
        Self { used: 0, limit }
    }

    pub(super) fn used(&self) -> u64 {
        self.used
    }

    /// The limit was crossed: whatever error a decoder made of the refused read, this is its
    /// cause.
    pub(super) fn exceeded(&self) -> bool {
        self.used > self.limit
    }
}

/// Charges what passes through to a [`Budget`] and refuses to read past it.
pub(super) struct Counted<'b, R> {
    inner: R,
    budget: &'b mut Budget,
}

impl<'b, R> Counted<'b, R> {
    pub(super) fn new(inner: R, budget: &'b mut Budget) -> Self {
        Self { inner, budget }
    }
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.budget.exceeded() {
            return Err(io::Error::other("uncompressed size limit exceeded"));
        }
        let n = self.inner.read(buf)?;
        self.budget.used += n as u64;
        if self.budget.exceeded() {
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
/// zip, never zero rows. `known` says whether a text holds one of the product's column names.
pub(super) fn sniff(path: &Path, known: impl Fn(&str) -> bool) -> io::Result<Kind> {
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
        Some(_) if is_zip_name && known(&String::from_utf8_lossy(text)) => plain(FileType::Csv),
        _ if is_zip_name => Kind::Zip,
        _ => Kind::Unknown,
    })
}

/// Names for a message: as many as fit in an error text, and how many there were.
fn listed(names: &[String]) -> String {
    let shown: Vec<String> = names.iter().map(|n| shown(n)).collect();
    let all = shown.join(", ");
    match names.len() {
        n if n > 20 => format!("{n} entries: {}", cut(&all)),
        _ => cut(&all).into_owned(),
    }
}

impl Decoding<'_, '_> {
    pub(super) fn zip(&mut self, path: &Path) -> Result<(), DecodeError> {
        let name = path.display().to_string();
        let bad = |detail: String| DecodeError::BadZip {
            file: name.clone(),
            detail: cut(&detail).into_owned(),
        };
        let file = File::open(path).map_err(|e| io_error(&name, e))?;
        let mut archive = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
        if archive.is_empty() {
            return Err(DecodeError::EmptyArchive { file: name });
        }
        let limit = self.budget.limit;
        let declared: u64 = (0..archive.len())
            .filter_map(|i| archive.by_index_raw(i).ok().map(|e| e.size()))
            .fold(0u64, u64::saturating_add);
        if declared > limit {
            return Err(DecodeError::TooLarge { file: name, limit });
        }
        // Columnar parts are unpacked to scratch files and rows past the memory budget spill
        // there: about the archive's uncompressed size, if its sizes are true (the budget and
        // the streaming checks catch it if they are not).
        crate::disk::ensure_room(self.scratch, declared, &format!("unpacking {name}"))?;
        let mut ignored = Vec::new();
        let mut parts = 0;
        for i in 0..archive.len() {
            let entry = archive.by_index(i).map_err(|e| bad(e.to_string()))?;
            let entry_name = String::from_utf8_lossy(entry.name_raw()).into_owned();
            if escapes(&entry_name) {
                return Err(DecodeError::UnsafeEntry {
                    file: name,
                    entry: shown(&entry_name),
                });
            }
            if entry.is_dir() {
                continue;
            }
            let Some(part) = file_type_of(&entry_name) else {
                tracing::debug!(archive = %name, entry = %shown(&entry_name), "ignoring a file that is not a data part");
                ignored.push(entry_name);
                continue;
            };
            let label = format!("{name}!{}", shown(&entry_name));
            let result = self.part(part, &label, entry);
            over_limit(result, self.budget, &name)?;
            self.summary.files.push(label);
            parts += 1;
        }
        if parts == 0 && ignored.iter().all(|e| is_marker(e)) {
            // Spark 2 writes an empty result as its marker alone: a quiet day, zero rows.
            tracing::info!(archive = %name, entries = %listed(&ignored), "the export holds job markers only: zero rows");
            return Ok(());
        }
        if parts == 0 {
            return Err(DecodeError::NoDataParts {
                file: name,
                entries: listed(&ignored),
            });
        }
        let unknown: Vec<String> = ignored.into_iter().filter(|e| !is_side_file(e)).collect();
        if !unknown.is_empty() {
            tracing::warn!(archive = %name, entries = %listed(&unknown), "the export holds files that are not data parts; they were not read");
        }
        Ok(())
    }
}

/// The uncompressed-size limit surfaces from deep inside a decoder as whatever error it made of
/// the refused read; the budget knows the cause, and this names it for what it is.
pub(super) fn over_limit(
    result: Result<(), DecodeError>,
    budget: Budget,
    file: &str,
) -> Result<(), DecodeError> {
    match result {
        Err(_) if budget.exceeded() => Err(DecodeError::TooLarge {
            file: file.to_string(),
            limit: budget.limit,
        }),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_are_a_job_s_own_files_and_escaping_paths_are_told_apart() {
        for m in [
            "_SUCCESS",
            "out/_SUCCESS",
            "_committed_123",
            "_started_123",
            "part-0.csv.crc",
        ] {
            assert!(is_marker(m), "{m}");
        }
        for not in ["_metadata", ".hidden", "part-0.csv", "notes.txt"] {
            assert!(!is_marker(not), "{not}");
        }
        for bad in [
            "../x.csv",
            "..\\part-0.csv",
            "a/../../b",
            "/etc/passwd",
            "C:\\x.csv",
        ] {
            assert!(escapes(bad), "{bad}");
        }
        for ok in ["part-0.csv", "dir\\part-0.csv", "a..b.csv", "x/y.csv"] {
            assert!(!escapes(ok), "{ok}");
        }
        assert_eq!(
            file_type_of("dir\\part-0.csv").map(|p| p.format),
            Some(FileType::Csv)
        );
    }

    #[test]
    fn the_budget_counts_every_read_and_refuses_past_it() {
        let mut b = Budget::new(10);
        let mut r = Counted::new(&b"0123456789ab"[..], &mut b);
        let mut buf = [0u8; 8];
        assert_eq!(r.read(&mut buf).unwrap(), 8);
        assert!(r.read(&mut buf).is_err());
        assert!(b.exceeded() && b.used() == 12);
    }
}
