//! Decoding an export: every part file in the zip (or a loose local file), in any of the four
//! formats, streamed into [`RawBatch`]es of text columns in the product's canonical order.
//!
//! Decoders do not judge values; they only find columns by name (any casing, any order) and
//! report rows they could not read at all (a ragged CSV line, a JSON line that does not parse) as
//! [`RowError`]s, so the normalizer quarantines those too. A file without a required column
//! fails the whole job: nothing in it could be trusted to line up.

mod archive;
mod columnar;
mod csv;
mod json;
mod raw;

use archive::{Kind, Limited, decode_zip, over_limit, sniff};
pub use archive::{PartType, file_type_of};
pub(crate) use raw::RawBuilder;
pub use raw::{Cell, RawBatch, RawColumn, RowError, rows_to_batch};

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Arc;

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
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error("stopped by the consumer: {0}")]
    Sink(String),
}

/// What a decode saw besides rows: which files, and columns it did not know.
#[derive(Debug, Default, Clone)]
pub struct DecodeSummary {
    pub files: Vec<String>,
    pub unknown_columns: BTreeSet<String>,
    pub uncompressed_bytes: u64,
}

pub type Sink<'a> = dyn FnMut(RawBatch) -> Result<(), DecodeError> + 'a;

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
            let size = file.metadata().map_err(|e| io_error(&name, e))?.len();
            crate::disk::ensure_room(scratch, size, &format!("reading {name}"))?;
            let mut limited = Limited::new(file, max_uncompressed);
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

/// One data part from `reader`: text formats stream (through gunzip if compressed); Parquet and
/// ORC need random access, so they are copied (and decompressed) to a scratch file first.
#[allow(clippy::too_many_arguments)]
pub(super) fn decode_part(
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

pub(super) fn io_error(path: &str, source: io::Error) -> DecodeError {
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
