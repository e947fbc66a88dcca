//! The decoders take arbitrary bytes: valid exports of every shape (CSV, JSON arrays and
//! lines, a zip of parts, a gzip part, Parquet, ORC) are mutated by a seeded mutator (bit
//! flips, bytes that mean something to a parser, insertions, deletions, repeated runs, cuts,
//! splices of one input into another) and fed to `decode_path` and the row checks. No input may
//! make them panic: `decode_path` returns rows or an error for every one. Our own decoders (CSV,
//! JSON, the zip and gzip layers) may not panic inside either; the Parquet and ORC readers they
//! call do on some mangled files (their assertions), which `decode_path` turns into the part's
//! error: those are counted and reported, and stay confined to those two formats. The process
//! stays within the memory bound (this file is its own process, so its peak RSS is its own).
//! The test prints how many cases it ran.

use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Float64Array, Int32Array, StringArray};
use arrow::record_batch::RecordBatch;
use dpss_sync::decode::{DecodeLimits, decode_path};
use dpss_sync::product::{Product, builtin};

/// Cases per seed input; the run also stops once its time is spent.
const CASES_PER_SEED: u64 = 5_000;
const TIME_BUDGET: Duration = Duration::from_secs(120);
const MAX_RSS_MIB: u64 = 300;

/// xorshift64*: a seeded, repeatable stream of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that mean something to one of the parsers.
const SPECIAL: &[u8] = b"\",\n\r[]{}:\\\x00\xff\xef\xbb\xbfPK\x03\x04\x1f\x8b";

fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut b = input.to_vec();
    for _ in 0..1 + rng.below(6) {
        let at = rng.below(b.len() + 1);
        match rng.below(8) {
            0 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] ^= 1 << rng.below(8);
            }
            1 if !b.is_empty() => {
                let i = at.min(b.len() - 1);
                b[i] = SPECIAL[rng.below(SPECIAL.len())];
            }
            2 => {
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                b.splice(at..at, bytes);
            }
            3 => {
                let end = (at + 1 + rng.below(64)).min(b.len());
                b.drain(at.min(end)..end);
            }
            4 if !b.is_empty() => {
                // A run repeated: long lines, deep nesting, big fields.
                let start = at.min(b.len() - 1);
                let end = (start + 1 + rng.below(32)).min(b.len());
                let run = b[start..end].to_vec();
                let times = 1 + rng.below(2000);
                let repeated: Vec<u8> = run
                    .iter()
                    .copied()
                    .cycle()
                    .take(run.len() * times)
                    .collect();
                b.splice(end..end, repeated);
            }
            5 => b.truncate(at),
            6 if !other.is_empty() => {
                let from = rng.below(other.len());
                let end = (from + 1 + rng.below(256)).min(other.len());
                b.splice(at..at, other[from..end].iter().copied());
            }
            _ => {
                // A number a parser may choke on, in place of some bytes.
                let n = [&b"1e400"[..], b"-0", b"99999999999999999999", b"NaN"][rng.below(4)];
                b.splice(at..at, n.iter().copied());
            }
        }
    }
    b
}

const HEADER: &str =
    "ServicePointId,Phase,IssueID,Status,StatusDatetime,Reason,EventDate,WorkOrderId,\r\n";

fn csv_rows() -> String {
    let mut s = format!("\u{feff}{HEADER}");
    for i in 0..40 {
        s.push_str(&format!(
            "90000534{i:02},{},{},Accepted,2024-06-15:00:00:{i:02},\"Checked, \"\"twice\"\"\nthen left\",2024-06-13,1234{i:02},\r\n",
            1 + i % 4,
            19_000 + i
        ));
    }
    s
}

fn json_rows(lines: bool) -> String {
    let rows: Vec<String> = (0..40)
        .map(|i| {
            format!(
                r#"{{"ServicePointId":"9{i}","Phase":{},"Issueid":"{}","Status":"New","StatusDatetime":"2024-06-15T00:00:{i:02}Z","Reason":"r\u00e9 {i}","EventDate":"2024-06-13","WorkOrderId":"{i}","Extra":{{"a":[1,2]}}}}"#,
                1 + i % 4,
                19_000 + i
            )
        })
        .collect();
    if lines {
        rows.join("\n")
    } else {
        format!("[\n{}\n]", rows.join(",\n"))
    }
}

/// Hourly temperatures in the vendor's sample form, numbers quoted and not.
fn temperature_csv() -> String {
    let mut s = String::from(
        "ReceivedTime,ServicePointID,MeterID,MeterNumber,ElectronicSerialNumber,TransformerId,\
         PremiseId,FeederId,MeasurementTime,AvgTemp,MaxTemp\r\n",
    );
    for i in 0..40 {
        s.push_str(&format!(
            "2025-12-14T00:30:34:000Z,SP{i},M{i},N{i},,--,P{i},,2025-12-13T{:02}:00:00.000Z,\"{}.5\",{}\r\n",
            i % 24,
            i,
            i * 2
        ));
    }
    s
}

fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (name, bytes) in entries {
        w.start_file(*name, zip::write::SimpleFileOptions::default())
            .unwrap();
        w.write_all(bytes).unwrap();
    }
    w.finish().unwrap().into_inner()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn batch() -> RecordBatch {
    let text = |f: &dyn Fn(i32) -> String| {
        Arc::new(StringArray::from((0..40).map(f).collect::<Vec<_>>())) as ArrayRef
    };
    RecordBatch::try_from_iter([
        ("ServicePointId", text(&|i| format!("9{i}"))),
        (
            "Phase",
            Arc::new(Int32Array::from(
                (0..40).map(|i| 1 + i % 4).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        ("IssueId", text(&|i| format!("{}", 19_000 + i))),
        ("Status", text(&|_| "New".into())),
        (
            "StatusDatetime",
            text(&|i| format!("2024-06-15T00:00:{i:02}Z")),
        ),
        ("Reason", text(&|i| format!("reason {i}"))),
        ("EventDate", text(&|_| "2024-06-13".into())),
        ("WorkOrderId", text(&|i| format!("{i}"))),
    ])
    .unwrap()
}

fn temperature_batch() -> RecordBatch {
    let text = |f: &dyn Fn(i32) -> String| {
        Arc::new(StringArray::from((0..40).map(f).collect::<Vec<_>>())) as ArrayRef
    };
    let number = |f: &dyn Fn(i32) -> f64| {
        Arc::new(Float64Array::from((0..40).map(f).collect::<Vec<_>>())) as ArrayRef
    };
    RecordBatch::try_from_iter([
        ("ReceivedTime", text(&|_| "2025-12-14T00:30:34Z".into())),
        ("ServicePointID", text(&|i| format!("SP{i}"))),
        ("MeterID", text(&|i| format!("M{i}"))),
        ("TransformerId", text(&|_| "--".into())),
        (
            "MeasurementTime",
            text(&|i| format!("2025-12-13T{:02}:00:00Z", i % 24)),
        ),
        ("AvgTemp", number(&|i| f64::from(i) + 0.5)),
        ("MaxTemp", number(&|i| f64::from(i) * 2.0)),
    ])
    .unwrap()
}

fn parquet_of(b: &RecordBatch) -> Vec<u8> {
    let mut out = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut out, b.schema(), None).unwrap();
    w.write(b).unwrap();
    w.close().unwrap();
    out
}

fn orc() -> Vec<u8> {
    let b = batch();
    let mut out = Vec::new();
    let mut w = orc_rust::ArrowWriterBuilder::new(&mut out, b.schema())
        .try_build()
        .unwrap();
    w.write(&b).unwrap();
    w.close().unwrap();
    out
}

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib / 1024
}

#[test]
fn mutated_inputs_never_panic_nor_pass_the_memory_bound() {
    static PANICS: AtomicU64 = AtomicU64::new(0);
    static FIRST: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);
    std::panic::set_hook(Box::new(|info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        FIRST.lock().unwrap().get_or_insert_with(|| {
            // Where, as `crate-version/src/file.rs:line`, and what.
            let at = info.location().map(|l| {
                let file = l.file();
                let short = file
                    .split("/registry/src/")
                    .nth(1)
                    .and_then(|r| r.split_once('/'))
                    .map_or(file, |(_, rest)| rest);
                format!("{short}:{}", l.line())
            });
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            format!("{} ({what})", at.unwrap_or_default())
        });
    }));
    let csv = csv_rows();
    let hid = builtin("hid_work_orders").unwrap();
    let temperature = builtin("atm_temperature_stats").unwrap();
    let seeds: Vec<(&str, Product, Vec<u8>)> = vec![
        ("export.csv", hid, csv.clone().into_bytes()),
        ("export.json", hid, json_rows(false).into_bytes()),
        ("export.jsonl", hid, json_rows(true).into_bytes()),
        (
            "export.zip",
            hid,
            zip_of(&[
                ("part-00000.csv", csv.as_bytes()),
                ("part-00001.json", json_rows(true).as_bytes()),
                ("part-00002.csv.gz", &gzip(csv.as_bytes())),
                ("_SUCCESS", b""),
            ]),
        ),
        ("export.csv.gz", hid, gzip(csv.as_bytes())),
        ("export.parquet", hid, parquet_of(&batch())),
        ("export.orc", hid, orc()),
        (
            "temperature.csv",
            temperature,
            temperature_csv().into_bytes(),
        ),
        (
            "temperature.parquet",
            temperature,
            parquet_of(&temperature_batch()),
        ),
    ];
    let limits = DecodeLimits {
        max_uncompressed: 16 << 20,
        max_field: 16 << 10,
        max_record: 64 << 10,
    };
    let dir = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let mut rng = Rng(0x6470_7373_2d73_796e);
    let (mut cases, mut errors, mut rows, mut caught) = (0u64, 0u64, 0u64, 0u64);
    let mut per_seed = Vec::new();
    for (k, (name, product, seed)) in seeds.iter().enumerate() {
        let other = &seeds[(k + 1) % seeds.len()].2;
        let path = dir.path().join(name);
        let mut ran = 0;
        for _ in 0..CASES_PER_SEED {
            if started.elapsed() > TIME_BUDGET {
                break;
            }
            let input = mutate(&mut rng, seed, other);
            std::fs::write(&path, &input).unwrap();
            let panics_before = PANICS.load(Ordering::SeqCst);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                decode_path(*product, &path, dir.path(), &limits, &mut |b| {
                    rows += dpss_sync::normalize::check(*product, b).rows() as u64;
                    Ok(())
                })
            }));
            let inside = PANICS.load(Ordering::SeqCst) - panics_before;
            let columnar = name.ends_with(".parquet") || name.ends_with(".orc");
            if result.is_err() || (inside > 0 && !columnar) {
                let keep = std::env::temp_dir().join(format!("dpss-panic-{cases}-{name}"));
                std::fs::write(&keep, &input).unwrap();
                panic!(
                    "{name}: case {cases} panicked ({:?}); input kept at {}",
                    FIRST.lock().unwrap(),
                    keep.display()
                );
            }
            caught += inside.min(1);
            errors += result.as_ref().is_ok_and(|r| r.is_err()) as u64;
            cases += 1;
            ran += 1;
        }
        per_seed.push(format!("{name} {ran}"));
        assert_no_leftovers(dir.path(), name);
    }
    let rss = peak_rss_mib();
    println!(
        "mutated inputs: {cases} cases ({}) in {:.0?}: {errors} refused with an error ({caught} of them \
         a Parquet or ORC reader's panic, caught and reported as the part's error{}), {rows} rows \
         decoded, no panic out of decode_path, peak RSS {rss} MiB",
        per_seed.join(", "),
        started.elapsed(),
        FIRST
            .lock()
            .unwrap()
            .as_deref()
            .map(|m| format!("; the first at {m}"))
            .unwrap_or_default()
    );
    assert!(cases >= 7 * 200, "too few cases ran: {cases}");
    assert!(rss <= MAX_RSS_MIB, "peak RSS {rss} MiB");
}

/// Scratch copies and spills of a decode are gone once it returns, whatever it made of its input.
fn assert_no_leftovers(dir: &Path, name: &str) {
    let left: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(dpss_sync::decode::SCRATCH_PREFIX))
        .collect();
    assert!(left.is_empty(), "{name}: scratch left behind: {left:?}");
}
