//! The hostile-input corpus, run through the binary as an operator runs it: local files through
//! `import`, a misbehaving vendor (`common::vendor`) through `sync`. For every case: a clear
//! error naming the limit and its key, or a quarantined row with its reason; the child's peak
//! RSS (its rusage, through GNU time) at most 300 MiB; nothing written or removed outside the
//! work directory and the lake; the lake and the quarantine holding only what the case adds;
//! `status` and the state bounded. Each case prints its row of docs/reliability.md's "hostile
//! input" table (`cargo test --test hostile -- --nocapture`).

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::vendor::{Misbehaviour, Vendor};
use common::*;

/// The memory bound every case is held to.
const MAX_RSS_MIB: f64 = 300.0;

/// How large `status` (text or JSON) and the state may get, whatever a case stored.
const MAX_STATUS_BYTES: usize = 64 << 10;
const MAX_STATE_BYTES: u64 = 2 << 20;

const HEADER: &str =
    "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n";
const GOOD_ROW: &str = "9000053409,1,19865,Accepted,2024-06-15T00:00:13Z,ok,2024-06-13,123456\n";

/// What one run of the binary did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    rss_mib: f64,
}

/// One case's directory: its configuration, lake and state, and a canary directory beside them
/// that nothing may touch.
struct Case {
    name: &'static str,
    dir: tempfile::TempDir,
    config: PathBuf,
}

impl Case {
    fn new(name: &'static str, config: impl FnOnce(&Path) -> String) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config_path = dir.path().join("dpss.toml");
        std::fs::write(&config_path, config(dir.path())).unwrap();
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("victim.zip"), "keep me").unwrap();
        Case {
            name,
            dir,
            config: config_path,
        }
    }

    /// A case of local files, with `lake` lines in the `[lake]` table.
    fn local(name: &'static str, lake: &str) -> Self {
        Self::new(name, |dir| {
            format!(
                "[lake]\nurl = \"file://{d}/lake\"\n{lake}\n[state]\nurl = \"sqlite://{d}/state/state.db\"\n[products.hid_work_orders]\n",
                d = dir.display()
            )
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary with `args`, its peak RSS taken from its rusage by GNU time.
    fn run(&self, args: &[&str]) -> Ran {
        let rss = self.path("rss");
        let out = Command::new("/usr/bin/time")
            .args(["-f", "%M", "-o"])
            .arg(&rss)
            .arg(bin())
            .arg("--config")
            .arg(&self.config)
            .args(args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("GNU time at /usr/bin/time (scripts/test installs it)");
        let kib: f64 = std::fs::read_to_string(&rss)
            .unwrap()
            .lines()
            .last()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Ran {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            rss_mib: kib / 1024.0,
        }
    }

    /// Asserts what holds for every case after `ran`: no panic, the memory bound, the canary
    /// untouched and nothing beside it, `status` and the state bounded. Prints the table row.
    fn finish(&self, ran: &Ran, limit: &str, seen: &str) {
        assert_ne!(
            ran.code,
            Some(101),
            "{}: panicked: {}",
            self.name,
            ran.stderr
        );
        assert!(
            ran.rss_mib <= MAX_RSS_MIB,
            "{}: peak RSS {:.0} MiB",
            self.name,
            ran.rss_mib
        );
        assert!(
            ran.stderr.len() < MAX_STATUS_BYTES,
            "{}: {} bytes on stderr",
            self.name,
            ran.stderr.len()
        );
        let outside: Vec<_> = std::fs::read_dir(self.path("outside"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(outside, ["victim.zip"], "{}", self.name);
        assert_eq!(
            std::fs::read_to_string(self.path("outside/victim.zip")).unwrap(),
            "keep me",
            "{}",
            self.name
        );
        let mut top: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !n.starts_with("input"))
            .collect();
        top.sort();
        for n in &top {
            assert!(
                ["dpss.toml", "lake", "outside", "rss", "state"].contains(&n.as_str()),
                "{}: wrote {n} beside the lake and the state",
                self.name
            );
        }
        for args in [&["status"][..], &["status", "--json"]] {
            let status = self.run(args);
            assert_eq!(status.code, Some(0), "{}: {}", self.name, status.stderr);
            assert!(
                status.stdout.len() < MAX_STATUS_BYTES,
                "{}: `status` printed {} bytes",
                self.name,
                status.stdout.len()
            );
        }
        let state = std::fs::metadata(self.path("state/state.db"))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(
            state < MAX_STATE_BYTES,
            "{}: state.db {state} bytes",
            self.name
        );
        println!(
            "| {} | {limit} | {:.0} MiB | {seen} |",
            self.name, ran.rss_mib
        );
    }

    /// The error of the one window the run reported.
    fn error(&self, ran: &Ran) -> String {
        assert_eq!(
            ran.code,
            Some(1),
            "{}: {}{}",
            self.name,
            ran.stdout,
            ran.stderr
        );
        format!("{}{}", ran.stdout, ran.stderr)
    }

    async fn lake_rows(&self) -> usize {
        lake_rows(self.dir.path()).await.len()
    }

    async fn quarantine(&self) -> Vec<(String, String, String, String, String)> {
        quarantined(self.dir.path()).await
    }
}

/// A zip entry: its name, and what writes its bytes.
type Entry<'a> = (&'a str, &'a dyn Fn(&mut dyn Write));

fn zip_file(path: &Path, entries: &[Entry<'_>]) {
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .compression_level(Some(1))
        .large_file(true);
    for (name, write) in entries {
        z.start_file(*name, opts).unwrap();
        write(&mut z);
    }
    z.finish().unwrap();
}

fn repeat(w: &mut dyn Write, byte: u8, total: usize) {
    let chunk = vec![byte; 1 << 20];
    for _ in 0..total / chunk.len() {
        w.write_all(&chunk).unwrap();
    }
}

fn gzip_zeros(total: usize) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    repeat(&mut e, 0, total);
    e.finish().unwrap()
}

/// A zip holding one good CSV part, for the vendor cases that fail before the rows matter.
fn good_export() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.zip");
    let csv = format!("{HEADER}{GOOD_ROW}");
    zip_file(
        &path,
        &[("part-00000.csv", &|w: &mut dyn Write| {
            w.write_all(csv.as_bytes()).unwrap()
        })],
    );
    std::fs::read(path).unwrap()
}

#[test]
fn a_256_mib_line_is_a_header_over_the_record_limit() {
    let case = Case::local("one 256 MiB line as a zip's CSV part", "");
    let input = case.path("input.zip");
    zip_file(
        &input,
        &[("part-00000.csv", &|w: &mut dyn Write| {
            repeat(w, b'x', 256 << 20)
        })],
    );
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        input.to_str().unwrap(),
    ]);
    let error = case.error(&ran);
    assert!(
        error.contains("the header row is over decode.max_record_size (8388608 bytes)"),
        "{error}"
    );
    case.finish(
        &ran,
        "`decode.max_record_size`",
        "exit 1: the part's header row is over decode.max_record_size (8388608 bytes)",
    );
}

/// A 50 MB field, with and without a newline after it: past the record limit, its row is
/// quarantined with the first KiB; the good row lands.
#[tokio::test]
async fn a_50_mb_field_quarantines_its_row_with_the_first_kib() {
    for (name, end) in [
        ("a CSV field of 50 MB", "\n"),
        ("a CSV field of 50 MB, no newline after it", ""),
    ] {
        let case = Case::local(name, "");
        let input = case.path("input.csv");
        let mut f = std::fs::File::create(&input).unwrap();
        write!(
            f,
            "{HEADER}{GOOD_ROW}9000053409,1,19866,New,2024-06-15T00:00:14Z,\""
        )
        .unwrap();
        repeat(&mut f, b'y', 50 << 20);
        write!(f, "\",2024-06-13,123457{end}").unwrap();
        drop(f);
        let ran = case.run(&[
            "import",
            "--product",
            "hid_work_orders",
            input.to_str().unwrap(),
        ]);
        assert_eq!(ran.code, Some(0), "{name}: {}", ran.stderr);
        assert_eq!(case.lake_rows().await, 1, "{name}");
        let q = case.quarantine().await;
        assert_eq!(q.len(), 1, "{name}");
        assert!(
            q[0].3
                .contains("over decode.max_record_size (8388608 bytes"),
            "{name}: {}",
            q[0].3
        );
        case.finish(&ran, "`decode.max_record_size`", "exit 0: 1 row written, 1 quarantined: record is over decode.max_record_size, `_raw` its first KiB");
    }
}

#[test]
fn a_parquet_gz_part_that_unpacks_past_the_limit_stops_there() {
    let case = Case::local(
        "a `.parquet.gz` part unpacking to 512 MiB",
        "max_uncompressed_size = \"64MiB\"",
    );
    let input = case.path("input.zip");
    let gz = gzip_zeros(512 << 20);
    zip_file(
        &input,
        &[("part-00000.parquet.gz", &|w: &mut dyn Write| {
            w.write_all(&gz).unwrap()
        })],
    );
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        input.to_str().unwrap(),
    ]);
    let error = case.error(&ran);
    assert!(
        error.contains("uncompressed size exceeds lake.max_uncompressed_size (67108864 bytes)"),
        "{error}"
    );
    case.finish(
        &ran,
        "`lake.max_uncompressed_size`",
        "exit 1: uncompressed size exceeds lake.max_uncompressed_size; nothing left in scratch",
    );
}

#[test]
fn a_gzip_bomb_inside_a_zip_is_counted_unpacked() {
    let case = Case::local(
        "a `.csv.gz` part unpacking to 1 GiB",
        "max_uncompressed_size = \"64MiB\"",
    );
    let input = case.path("input.zip");
    let gz = gzip_zeros(1 << 30);
    zip_file(
        &input,
        &[("part-00000.csv.gz", &|w: &mut dyn Write| {
            w.write_all(&gz).unwrap()
        })],
    );
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        input.to_str().unwrap(),
    ]);
    let error = case.error(&ran);
    assert!(
        error.contains("exceeds lake.max_uncompressed_size"),
        "{error}"
    );
    case.finish(
        &ran,
        "`lake.max_uncompressed_size`",
        "exit 1: uncompressed size exceeds lake.max_uncompressed_size",
    );
}

#[tokio::test]
async fn a_json_array_quarantines_its_bad_elements_alone() {
    let good = r#"{"ServicePointId":"9000053409","Phase":1,"IssueId":"19865","Status":"New","StatusDatetime":"2024-06-15T00:00:13Z","Reason":"ok","EventDate":"2024-06-13","WorkOrderId":"123456"}"#;
    let big_number = good.replace(r#""Phase":1"#, r#""Phase":1e400"#);
    let deep = format!(
        r#"{{"Reason":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    for (name, bad) in [
        ("a JSON array element holding `1e400`", big_number),
        ("a JSON array element nested 100,000 deep", deep),
    ] {
        let case = Case::local(name, "");
        let input = case.path("input.json");
        std::fs::write(&input, format!("[{good},\n{bad}]")).unwrap();
        let ran = case.run(&[
            "import",
            "--product",
            "hid_work_orders",
            input.to_str().unwrap(),
        ]);
        assert_eq!(ran.code, Some(0), "{name}: {}", ran.stderr);
        assert_eq!(case.lake_rows().await, 1, "{name}");
        let q = case.quarantine().await;
        assert_eq!(q.len(), 1, "{name}");
        assert!(
            q[0].3.contains("element 2 is not valid JSON"),
            "{name}: {}",
            q[0].3
        );
        case.finish(&ran, "the element's own parse", "exit 0: the other element written; this one quarantined, `element 2 is not valid JSON: …`");
    }
}

#[test]
fn a_zip_entry_outside_the_archive_refuses_it_by_name() {
    let case = Case::local("a zip entry named `..\\part-00000.csv`", "");
    let input = case.path("input.zip");
    let csv = format!("{HEADER}{GOOD_ROW}");
    zip_file(
        &input,
        &[("..\\part-00000.csv", &|w: &mut dyn Write| {
            w.write_all(csv.as_bytes()).unwrap()
        })],
    );
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        input.to_str().unwrap(),
    ]);
    let error = case.error(&ran);
    assert!(
        error.contains("names an entry outside itself, `..\\\\part-00000.csv`"),
        "{error}"
    );
    case.finish(
        &ran,
        "entry names (no `..`, no root)",
        "exit 1: the archive names an entry outside itself, `..\\\\part-00000.csv`",
    );
}

#[tokio::test]
async fn a_zip_of_the_marker_alone_is_an_empty_export() {
    let case = Case::local("a zip holding only `_SUCCESS`", "");
    let input = case.path("input.zip");
    zip_file(&input, &[("_SUCCESS", &|_: &mut dyn Write| {})]);
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        input.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    assert_eq!(case.lake_rows().await, 0);
    case.finish(
        &ran,
        "(none: an empty export)",
        "exit 0: zero rows, judged by the shrink guard like any result",
    );
}

/// With the state deleted, importing one row of a day whose 20 rows the lake holds would
/// replace them: the guard counts what the lake's partition holds and refuses.
#[tokio::test]
async fn a_lost_state_does_not_blind_the_shrink_guard() {
    let case = Case::local("one row for a 20-row day, state deleted", "");
    let full = case.path("input-full.csv");
    let mut rows = String::from(HEADER);
    for i in 0..20 {
        rows.push_str(&format!(
            "9000053409,1,{},New,2024-06-15T00:00:{i:02}Z,r,2024-06-15,{}\n",
            19_000 + i,
            100 + i
        ));
    }
    std::fs::write(&full, rows).unwrap();
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        full.to_str().unwrap(),
    ]);
    assert_eq!(ran.code, Some(0), "{}", ran.stderr);
    std::fs::remove_dir_all(case.path("state")).unwrap();
    let one = case.path("input-one.csv");
    std::fs::write(
        &one,
        format!("{HEADER}9000053409,1,19000,New,2024-06-15T00:00:00Z,r,2024-06-15,100\n"),
    )
    .unwrap();
    let ran = case.run(&[
        "import",
        "--product",
        "hid_work_orders",
        one.to_str().unwrap(),
    ]);
    let error = case.error(&ran);
    assert!(
        error.contains("refusing to replace closed status day 2024-06-15: the lake holds 20 of its rows, this export 1"),
        "{error}"
    );
    assert_eq!(case.lake_rows().await, 20);
    case.finish(&ran, "`lake.max_shrink` (the lake's own rows counted)", "exit 1: refusing to replace closed status day 2024-06-15: the lake holds 20 of its rows, this export 1");
}

/// A case against a vendor that misbehaves as `m` says.
async fn vendor_case(name: &'static str, m: Misbehaviour, extra: &str) -> (Case, Vendor, Ran) {
    let vendor = Vendor::start(m, good_export()).await;
    let case = Case::new(name, |dir| vendor.config(dir, extra));
    let started = std::time::Instant::now();
    let ran = tokio::task::block_in_place(|| case.run(&["sync"]));
    assert!(
        started.elapsed() < Duration::from_secs(120),
        "{name}: took {:?}",
        started.elapsed()
    );
    (case, vendor, ran)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_that_is_not_a_count_means_the_default_backoff() {
    for value in ["inf", "NaN", "-1"] {
        let (case, vendor, ran) = vendor_case(
            "429 from batch-request with `Retry-After: inf` (also NaN, -1) and a 100 MB body",
            Misbehaviour::BatchThrottled {
                retry_after: value,
                body_bytes: 100 << 20,
            },
            "",
        )
        .await;
        let error = case.error(&ran);
        assert!(
            error.contains("gave up after 3 attempts (api.max_attempts)"),
            "{value}: {error}"
        );
        // Each window attempt makes three requests, 250 ms or more apart (the default
        // backoff), where the header read as a wait made them 2 ms apart.
        assert!(
            vendor.posts() >= 3 && vendor.posts() <= 9,
            "{value}: {}",
            vendor.posts()
        );
        let waited = vendor
            .post_gaps()
            .iter()
            .filter(|g| **g >= Duration::from_millis(250))
            .count();
        assert!(waited >= 2, "{value}: {:?}", vendor.post_gaps());
        if value == "inf" {
            case.finish(
                &ran,
                "`api.max_attempts` (default backoff, not the header)",
                "exit 1: gave up after 3 attempts (api.max_attempts); waits of the default backoff",
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_past_the_maximum_defers_the_window_without_a_second_post() {
    let (case, vendor, ran) = vendor_case(
        "429 from batch-request with `Retry-After: 1e30`",
        Misbehaviour::BatchThrottled {
            retry_after: "1e30",
            body_bytes: 10,
        },
        "",
    )
    .await;
    let error = case.error(&ran);
    assert!(
        error.contains("longer than api.max_retry_after (10m)"),
        "{error}"
    );
    assert_eq!(vendor.posts(), 1, "the window waits for a later cycle");
    let plan = case.run(&["plan", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(doc["products"][0]["waiting"][0]["key"], "history", "{doc}");
    case.finish(&ran, "`api.max_retry_after`", "exit 1: the server asked to wait …, longer than api.max_retry_after (10m); one POST, the window waits");

    let (case, vendor, ran) = vendor_case(
        "429 from job status with `Retry-After: 18446744073709551616`",
        Misbehaviour::StatusThrottled("18446744073709551616"),
        "",
    )
    .await;
    let error = case.error(&ran);
    assert!(error.contains("api.max_retry_after"), "{error}");
    assert_eq!((vendor.posts(), vendor.polls()), (1, 1));
    case.finish(&ran, "`api.max_retry_after`", "exit 1: longer than api.max_retry_after; the job stays recorded and is polled next cycle, never re-POSTed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttling_identity_server_is_not_refused_credentials() {
    let (case, _vendor, ran) = vendor_case(
        "429 from the token endpoint",
        Misbehaviour::TokenThrottled,
        "",
    )
    .await;
    let error = case.error(&ran);
    assert!(
        error.contains("throttling or unavailable (HTTP 429)"),
        "{error}"
    );
    assert!(!error.contains("refused the client credentials"), "{error}");
    case.finish(
        &ran,
        "`api.max_attempts`",
        "exit 1: token (…): the identity server is throttling or unavailable (HTTP 429)",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_id_that_is_a_path_never_becomes_one() {
    // The id climbs out of the work directory (up to the root, then down) to a file of its
    // own, which the old client downloaded over, read and unlinked.
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("victim.zip"), "keep me").unwrap();
    let id = format!("{}{}/victim", "../".repeat(16), victim.path().display());
    let vendor = Vendor::start(Misbehaviour::JobId(id), good_export()).await;
    let case = Case::new("job id `../../../../tmp/x/victim`", |dir| {
        vendor.config(dir, "")
    });
    let ran = tokio::task::block_in_place(|| case.run(&["sync"]));
    let error = case.error(&ran);
    assert!(
        error.contains("which is not 1 to 128 characters"),
        "{error}"
    );
    assert!(error.contains("../../"), "the id is named: {error}");
    assert_eq!(
        std::fs::read_to_string(victim.path().join("victim.zip")).unwrap(),
        "keep me"
    );
    assert_eq!(vendor.polls(), 0, "the id was never put in a URL");
    case.finish(&ran, "job id rule (`[A-Za-z0-9._-]`, 1-128, no leading dot)", "exit 1: the vendor answered … with job id `…/victim`, which is not …; the file it names is untouched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_error_text_is_stored_cut() {
    let message = "e".repeat(1 << 20);
    let (case, _vendor, ran) = vendor_case(
        "a failed job with a 1 MiB message",
        Misbehaviour::JobFails(message),
        "",
    )
    .await;
    let error = case.error(&ran);
    assert!(error.contains("[cut: "), "{error:.300}");
    let status = case.run(&["status", "--json"]);
    let doc: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    let stored = doc["products"][0]["failed"][0]["error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(stored.len() <= 2048, "{}", stored.len());
    case.finish(&ran, "error texts cut to 2 KiB", "exit 1: the error, cut at 2 KiB with `[cut: N bytes in all]`, in the state, the log and `status`");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_without_content_length_stops_at_the_limit_and_leaves_nothing() {
    let (case, _vendor, ran) = vendor_case(
        "a 200 MiB download without Content-Length",
        Misbehaviour::Unannounced { bytes: 200 << 20 },
        "max_uncompressed_size = \"64MiB\"",
    )
    .await;
    let error = case.error(&ran);
    assert!(
        error.contains("exceeds lake.max_uncompressed_size (67108864 bytes)"),
        "{error}"
    );
    let left: Vec<_> = std::fs::read_dir(case.path("state/downloads"))
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "partial files left: {left:?}");
    case.finish(
        &ran,
        "`lake.max_uncompressed_size`; the free-space reserve as it streams",
        "exit 1: download … exceeds lake.max_uncompressed_size; its partial file removed at once",
    );
}
