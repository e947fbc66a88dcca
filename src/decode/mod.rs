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

use archive::{Budget, Counted, Kind, over_limit, sniff};
pub use archive::{PartType, file_type_of};
pub(crate) use raw::RawBuilder;
pub use raw::{Cell, RawBatch, RawColumn, RowError, rows_to_batch};

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

pub use crate::config::DecodeLimits;
use crate::config::FileType;
use crate::product::Product;

/// Name prefix of the scratch copies of Parquet/ORC parts, so a killed run's leftovers can be
/// recognised and removed.
pub const SCRATCH_PREFIX: &str = "scratch-";

/// Rows per decoded batch: large enough to amortise per-batch work, small enough to stay cheap.
pub const BATCH_ROWS: usize = 16_384;

/// Distinct unknown column names (or JSON key spellings) remembered for the report: a hostile
/// file with a million keys costs no more than this many.
const MAX_UNKNOWN_COLUMNS: usize = 100;

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{file}: required column `{column}` is missing (columns found: {found})")]
    MissingColumn {
        file: String,
        column: String,
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
    #[error(
        "{file}: the archive names an entry outside itself, `{entry}`; an export never does, so \
         it is refused whole"
    )]
    UnsafeEntry { file: String, entry: String },
    #[error("{file}: uncompressed size exceeds lake.max_uncompressed_size ({limit} bytes)")]
    TooLarge { file: String, limit: u64 },
    #[error(
        "{file}: the header row is over decode.max_record_size ({limit} bytes); the part cannot be read"
    )]
    HeaderTooLarge { file: String, limit: usize },
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

impl DecodeSummary {
    /// Notes a name no column has (up to [`MAX_UNKNOWN_COLUMNS`] of them).
    pub(crate) fn unknown(&mut self, name: &str) {
        let name = name.trim().trim_start_matches('\u{feff}');
        if !name.is_empty() && self.unknown_columns.len() < MAX_UNKNOWN_COLUMNS {
            self.unknown_columns.insert(crate::model::shown(name));
        }
    }
}

pub type Sink<'a> = dyn FnMut(RawBatch) -> Result<(), DecodeError> + 'a;

/// One export being decoded: its limits, the budget of uncompressed bytes all its parts share,
/// and what the parts have in common (a CSV header an unheaded part reuses).
pub(super) struct Decoding<'a, 'b> {
    product: Product,
    scratch: &'a Path,
    limits: DecodeLimits,
    budget: Budget,
    csv_header: Option<Vec<String>>,
    summary: DecodeSummary,
    sink: &'a mut Sink<'b>,
}

/// Decodes one local file of `product`'s export: a zip of part files, or a single part file.
/// Nothing the file says becomes a path: scratch copies and spills get names of our own.
pub fn decode_path(
    product: Product,
    path: &Path,
    scratch: &Path,
    limits: &DecodeLimits,
    sink: &mut Sink<'_>,
) -> Result<DecodeSummary, DecodeError> {
    let name = path.display().to_string();
    let mut d = Decoding {
        product,
        scratch,
        limits: *limits,
        budget: Budget::new(limits.max_uncompressed),
        csv_header: None,
        summary: DecodeSummary::default(),
        sink,
    };
    match sniff(path, |text| product.mentions_a_column(text)).map_err(|e| io_error(&name, e))? {
        Kind::Zip => d.zip(path)?,
        Kind::Part(part) => {
            let file = File::open(path).map_err(|e| io_error(&name, e))?;
            let size = file.metadata().map_err(|e| io_error(&name, e))?.len();
            crate::disk::ensure_room(scratch, size, &format!("reading {name}"))?;
            let result = d.part(part, &name, file);
            over_limit(result, d.budget, &name)?;
            d.summary.files.push(name);
        }
        Kind::Unknown => return Err(DecodeError::UnsupportedFile { file: name }),
    }
    d.summary.uncompressed_bytes = d.budget.used();
    Ok(d.summary)
}

/// A rough row count of a file, to size the duplicate filter: the bytes of its parts over a
/// typical row's size in each format (the vendor's CSV rows take ~110 bytes, JSON ~220,
/// compressed Parquet and ORC ~23, gzip-compressed text about a fifth of plain). Guessing high
/// costs a little memory; guessing low makes the filter grow in steps, which costs more. A
/// zip's sizes are the zip's word only: the guess is capped by what the limit allows.
pub fn estimated_rows(path: &Path, limits: &DecodeLimits) -> u64 {
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
    let guess = match sniff(path, |_| false) {
        Ok(Kind::Zip) => File::open(path)
            .ok()
            .and_then(|f| zip::ZipArchive::new(f).ok())
            .map(|mut a| {
                (0..a.len())
                    .filter_map(|i| {
                        let e = a.by_index_raw(i).ok()?;
                        let part = file_type_of(&String::from_utf8_lossy(e.name_raw()))?;
                        Some(e.size() / per_row(Some(part)))
                    })
                    .fold(0u64, u64::saturating_add)
            })
            .unwrap_or(size / per_row(None)),
        Ok(Kind::Part(part)) => size / per_row(Some(part)),
        _ => size / per_row(None),
    };
    guess.min(limits.max_uncompressed / 20)
}

impl Decoding<'_, '_> {
    /// One data part from `reader`: text formats stream (through gunzip if compressed);
    /// Parquet and ORC need random access, so they are copied (and decompressed) to a scratch
    /// file first. Every byte after decompression is charged to the export's budget.
    fn part(&mut self, part: PartType, label: &str, reader: impl Read) -> Result<(), DecodeError> {
        let inner: Box<dyn Read + '_> = if part.gzip {
            Box::new(flate2::read::MultiGzDecoder::new(reader))
        } else {
            Box::new(reader)
        };
        let reader = Counted::new(inner, &mut self.budget);
        let label_arc: Arc<str> = Arc::from(label);
        let limits = self.limits;
        let product = self.product;
        match part.format {
            FileType::Csv => csv::decode(
                product,
                reader,
                label_arc,
                &limits,
                &mut self.csv_header,
                &mut self.summary,
                self.sink,
            ),
            FileType::Json => json::decode(
                product,
                reader,
                label_arc,
                &limits,
                &mut self.summary,
                self.sink,
            ),
            FileType::Parquet | FileType::Orc => {
                let mut tmp = tempfile::Builder::new()
                    .prefix(SCRATCH_PREFIX)
                    .tempfile_in(self.scratch)
                    .map_err(|e| {
                        io_error(&format!("scratch file in {}", self.scratch.display()), e)
                    })?;
                copy_to_scratch(reader, tmp.as_file_mut(), self.scratch, label)?;
                let file = File::open(tmp.path()).map_err(|e| io_error(label, e))?;
                columnar::decode(
                    product,
                    part.format,
                    file,
                    label_arc,
                    &limits,
                    &mut self.summary,
                    self.sink,
                )
            }
        }
    }
}

/// Unpacks a part to its scratch file, looking at the free space as it goes: its size is known
/// only once it is written.
fn copy_to_scratch(
    mut from: impl Read,
    to: &mut File,
    scratch: &Path,
    label: &str,
) -> Result<(), DecodeError> {
    let mut reserve = crate::disk::Reserve::new(scratch, format!("unpacking {label}"))?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_error(label, e)),
        };
        to.write_all(&buf[..n]).map_err(|e| io_error(label, e))?;
        reserve.wrote(n as u64)?;
    }
}

pub(super) fn io_error(path: &str, source: io::Error) -> DecodeError {
    DecodeError::Io {
        path: path.to_string(),
        source,
    }
}

/// Maps header names to the product's declared columns (a position for each name, `None` for
/// a name it does not know); fails when a required column is absent. A nullable column a part
/// does not have is null throughout.
pub(crate) fn map_header(
    product: Product,
    names: &[String],
    file: &str,
    summary: &mut DecodeSummary,
) -> Result<Vec<Option<usize>>, DecodeError> {
    let mut mapping: Vec<Option<usize>> = names.iter().map(|n| product.column_of(n)).collect();
    for (n, c) in names.iter().zip(&mapping) {
        if c.is_none() {
            summary.unknown(n);
        }
    }
    // A column named twice keeps its first value.
    for i in 0..mapping.len() {
        if mapping[i].is_some() && mapping[..i].contains(&mapping[i]) {
            mapping[i] = None;
        }
    }
    missing(
        product,
        |c| mapping.contains(&Some(c)),
        file,
        || found(names.iter().map(String::as_str)),
    )?;
    Ok(mapping)
}

/// The declared columns a mapping does not fill: null in every row of the part.
pub(crate) fn absent(product: Product, mapping: &[Option<usize>]) -> Vec<usize> {
    (0..product.columns.len())
        .filter(|c| !mapping.contains(&Some(*c)))
        .collect()
}

/// Fails naming the first required column `present` says a part lacks.
pub(crate) fn missing(
    product: Product,
    present: impl Fn(usize) -> bool,
    file: &str,
    names: impl FnOnce() -> String,
) -> Result<(), DecodeError> {
    match product
        .columns
        .iter()
        .enumerate()
        .find(|(i, c)| c.required && !present(*i))
    {
        Some((_, c)) => Err(DecodeError::MissingColumn {
            file: file.to_string(),
            column: c.vendor.clone(),
            found: names(),
        }),
        None => Ok(()),
    }
}

/// The names a part has, for a message: each escaped, all cut to an error text's length.
pub(crate) fn found<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let shown: Vec<String> = names
        .filter(|n| !n.trim().is_empty())
        .take(200)
        .map(crate::model::shown)
        .collect();
    crate::model::cut(&shown.join(", ")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::test_support::hid;

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

    fn unlimited() -> DecodeLimits {
        DecodeLimits {
            max_uncompressed: u64::MAX,
            ..DecodeLimits::default()
        }
    }

    fn rows_of(path: &Path, dir: &Path) -> Result<usize, DecodeError> {
        let mut rows = 0;
        decode_path(hid(), path, dir, &unlimited(), &mut |b| {
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
        // Another file beside the marker is no empty export: it is named.
        zip_of(&z, &[("_SUCCESS", b""), ("_metadata", b"")]);
        let err = rows_of(&z, dir.path()).unwrap_err().to_string();
        assert!(err.contains("_SUCCESS, _metadata"), "{err}");
    }

    #[test]
    fn a_zip_of_job_markers_only_is_an_empty_export() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("job.zip");
        zip_of(&z, &[("_SUCCESS", b"")]);
        assert_eq!(rows_of(&z, dir.path()).unwrap(), 0);
        zip_of(
            &z,
            &[
                ("_started_1234", b""),
                ("_committed_1234", b"{}"),
                (".part-00000.csv.crc", b"x"),
                ("_SUCCESS", b""),
            ],
        );
        assert_eq!(rows_of(&z, dir.path()).unwrap(), 0);
    }

    #[test]
    fn an_entry_outside_the_archive_refuses_it_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("job.zip");
        zip_of(
            &z,
            &[("..\\part-00000.csv", CSV.as_bytes()), ("_SUCCESS", b"")],
        );
        let err = rows_of(&z, dir.path()).unwrap_err();
        assert!(matches!(err, DecodeError::UnsafeEntry { .. }), "{err}");
        assert!(err.to_string().contains("part-00000.csv"), "{err}");
    }

    #[test]
    fn a_gzip_bomb_inside_a_zip_is_counted_unpacked() {
        let dir = tempfile::tempdir().unwrap();
        let z = dir.path().join("job.zip");
        let mut big = String::from(CSV);
        while big.len() < 4 << 20 {
            big.push_str("1,1,2,New,2024-06-15T00:00:00Z,r,2024-06-15,3\n");
        }
        // The zip's own sizes are small: only the gzip stream inside is large once unpacked.
        zip_of(&z, &[("part-00000.csv.gz", &gzip(big.as_bytes()))]);
        let limits = DecodeLimits {
            max_uncompressed: 1 << 20,
            ..DecodeLimits::default()
        };
        let err = decode_path(hid(), &z, dir.path(), &limits, &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        // A .parquet.gz unpacked to scratch stops at the limit too, leaving no scratch file.
        let pq = dir.path().join("part-00000.parquet.gz");
        std::fs::write(&pq, gzip(&vec![0u8; 4 << 20])).unwrap();
        let err = decode_path(hid(), &pq, dir.path(), &limits, &mut |_| Ok(())).unwrap_err();
        assert!(matches!(err, DecodeError::TooLarge { .. }), "{err}");
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(SCRATCH_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
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
        decode_path(hid(), &raw, dir.path(), &unlimited(), &mut |b| {
            rows += b.num_rows();
            Ok(())
        })
        .unwrap();
        assert_eq!(rows, 1);
        let empty = dir.path().join("empty.zip");
        std::fs::write(&empty, "").unwrap();
        let err =
            decode_path(hid(), &empty, dir.path(), &unlimited(), &mut |_| Ok(())).unwrap_err();
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
            let limits = DecodeLimits {
                max_uncompressed: limit,
                ..DecodeLimits::default()
            };
            let err = decode_path(hid(), path, dir.path(), &limits, &mut |_| Ok(())).unwrap_err();
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
