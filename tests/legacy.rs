//! A HID lake written before products became declarations (`tests/data/legacy-hid.tar.gz`, made
//! by `scripts/legacy-fixture.sh` with the release binary of commit d86c318: a Hive lake and a
//! Delta table, each with its SQLite state) is synced further by this build: the state's schema
//! migrates, the cycle re-syncs only its lookback days and today, every other partition's objects
//! stay as they were, and no row is lost.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use common::{Row, duckdb_rows_at, expected, read_delta, run_child, start};
use dpss_sync::sim::{SimConfig, SimHandle};
use serde_json::Value;

/// The fixture's simulator: seed 42, about 3 rows a day.
async fn simulator() -> SimHandle {
    start(SimConfig {
        rows_per_day: 3,
        job_delay: Duration::from_millis(60),
        ..SimConfig::default()
    })
    .await
}

/// The fixture unpacked under `dir`: `dir/parquet` and `dir/delta`, each a lake and a state.
fn unpack(dir: &Path) {
    let archive = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/legacy-hid.tar.gz");
    let out = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture's configuration with this simulator: the same product, lake and state.
fn config(sim: &SimHandle, root: &Path, format: &str) -> PathBuf {
    let cfg = sim.state.config();
    let text = format!(
        r#"
[api]
base_url = "{base}"
subscriber_id = "{subscriber}"
poll_interval = "50ms"
poll_max = "200ms"
[auth]
token_url = "{token}"
client_id = "{client}"
client_secret = "{secret}"
[lake]
url = "file://{root}/lake"
format = "{format}"
[state]
url = "sqlite://{root}/state.db"
[products.hid_work_orders]
subscription_id = "{sub}"
file_type = "csv"
lookback_days = 2
"#,
        base = sim.base_url(),
        subscriber = cfg.subscriber_id,
        token = sim.token_url(),
        client = cfg.client_id,
        secret = cfg.client_secret,
        root = root.display(),
        sub = cfg.subscription_id,
    );
    let path = root.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every file under `dir` with its bytes, by path relative to `dir`.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

fn status_day(r: &Row) -> NaiveDate {
    DateTime::<Utc>::from_timestamp_micros(r.4)
        .unwrap()
        .date_naive()
}

/// The table's rows and the data files its readers see (for Delta, those its log names).
fn read(root: &Path, delta: bool) -> Option<(Vec<Row>, BTreeSet<String>)> {
    let table = root.join("lake/hid_work_orders");
    if delta {
        let d = read_delta(&table, None)?;
        return Some((d.rows, d.files));
    }
    let (_, rows) = duckdb_rows_at(&root.join("lake"))?;
    let names = files(&table)
        .into_keys()
        .filter(|f| f.ends_with(".parquet"))
        .collect();
    Some((rows, names))
}

async fn synced_further(format: &str) {
    let delta = format == "delta";
    let dir = tempfile::tempdir().unwrap();
    unpack(dir.path());
    let root = dir.path().join(format);
    let Some((before, before_files)) = read(&root, delta) else {
        return;
    };
    assert!(before.len() > 1000, "the fixture holds a year of rows");
    let bytes_before = files(&root.join("lake/hid_work_orders"));
    let sim = simulator().await;
    let now = Utc::now();
    sim.state.set_clock(Some(now));
    let config = config(&sim, &root, format);
    let sync = run_child(&config, &["sync"], None);
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );

    let status = run_child(&config, &["status", "--json"], None);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let status: Value = serde_json::from_slice(&status.stdout).unwrap();
    let product = &status["products"][0];
    let yesterday = now.date_naive() - chrono::Duration::days(1);
    assert_eq!(product["watermark"], yesterday.to_string());
    // The days the cycle re-synced: the lookback days before the old watermark, through today.
    let resynced: BTreeSet<NaiveDate> = product["recently_committed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| {
            let at: DateTime<Utc> = w["committed_at"].as_str().unwrap().parse().unwrap();
            at >= now - chrono::Duration::seconds(1)
        })
        .map(|w| {
            let key = w["key"].as_str().unwrap();
            key.parse()
                .unwrap_or_else(|_| panic!("window {key}: {product}"))
        })
        .collect();
    assert!(resynced.contains(&now.date_naive()));
    assert!(
        resynced.len() < 30,
        "a cycle, not a reload: {} windows",
        resynced.len()
    );

    let (after, after_files) = read(&root, delta).unwrap();
    let mut want: Vec<Row> = before
        .iter()
        .filter(|r| !resynced.contains(&status_day(r)))
        .cloned()
        .collect();
    want.extend(expected(&sim, resynced.iter().copied(), now));
    want.sort();
    assert_eq!(after.len(), want.len(), "{format}: rows");
    assert!(after == want, "{format}: a row was lost or changed");

    // A partition whose rows are the same was not rewritten, re-synced days included: their
    // content hashes, kept in the state by the old code, match what this code computes.
    let (old, new): (BTreeSet<&Row>, BTreeSet<&Row>) =
        (before.iter().collect(), after.iter().collect());
    let touched: BTreeSet<String> = old
        .symmetric_difference(&new)
        .map(|r| format!("event_date={}/", r.6))
        .collect();
    let resynced_unchanged = old
        .iter()
        .filter(|r| resynced.contains(&status_day(r)))
        .filter(|r| !touched.contains(&format!("event_date={}/", r.6)))
        .count();
    assert!(
        resynced_unchanged > 0,
        "some re-synced day came back unchanged, and its partition stayed"
    );
    let untouched = |f: &&String| !touched.iter().any(|t| f.starts_with(t.as_str()));
    let kept: Vec<&String> = before_files.iter().filter(untouched).collect();
    assert!(kept.len() > 300, "{} objects kept", kept.len());
    let bytes_after = files(&root.join("lake/hid_work_orders"));
    for f in kept {
        assert!(
            after_files.contains(f),
            "{format}: {f} is no longer in the table"
        );
        assert!(
            bytes_after.get(f) == bytes_before.get(f),
            "{format}: {f} was rewritten"
        );
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hive_lake_of_the_previous_layout_is_synced_further() {
    synced_further("parquet").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delta_table_of_the_previous_layout_is_synced_further() {
    synced_further("delta").await;
}
