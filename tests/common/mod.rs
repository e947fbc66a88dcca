//! Shared helpers of the end-to-end tests: an in-process simulator, settings pointing at it, and
//! readers of the lake (the project's own, and DuckDB as an independent one).
#![allow(dead_code)]

pub mod tables;
pub mod vendor;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use arrow::array::{Array, Int8Array, StringArray, TimestampMicrosecondArray};
use chrono::{DateTime, NaiveDate, Utc};
use dpss_sync::api::{ClientSettings, Credentials, DpssClient};
use dpss_sync::config::{Secret, Settings, Sources};
use dpss_sync::lake::Lake;
use dpss_sync::product::Product;
use dpss_sync::sim::data::{SimRow, expected_valid};
use dpss_sync::sim::{self, Faults, SimConfig, SimHandle};

/// HID work orders, the product most tests sync.
pub static P: std::sync::LazyLock<Product> =
    std::sync::LazyLock::new(|| dpss_sync::product::builtin("hid_work_orders").unwrap());

/// A row as the lake holds it: (service_point_id, phase, issue_id, status, status_datetime µs,
/// reason, event_date, work_order_id).
pub type Row = (String, i64, String, String, i64, String, String, String);

pub fn quick_sim(faults: &str) -> SimConfig {
    SimConfig {
        rows_per_day: 60,
        job_delay: Duration::from_millis(60),
        faults: Faults::parse(faults).unwrap(),
        ..SimConfig::default()
    }
}

/// A quick simulator serving about `rows_per_day` rows a day, with `faults`.
pub async fn sim_with(rows_per_day: u64, faults: &str) -> SimHandle {
    start(SimConfig {
        rows_per_day,
        ..quick_sim(faults)
    })
    .await
}

/// Open as a writer, as `sync`, `backfill` and `import` do.
pub fn writer() -> dpss_sync::sync::Access {
    dpss_sync::sync::Access::Write(dpss_sync::state::LeaseRequest::new("test", None))
}

/// A pipeline with the vendor client, against `sim`, with its lake and state under `dir`.
pub async fn online(sim: &SimHandle, dir: &Path, file_type: &str) -> dpss_sync::sync::Pipeline {
    dpss_sync::sync::Pipeline::open(settings(sim, dir, file_type, 2), true, writer())
        .await
        .unwrap()
}

pub async fn start(cfg: SimConfig) -> SimHandle {
    sim::spawn(cfg, "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

pub fn client(sim: &SimHandle) -> DpssClient {
    let cfg = sim.state.config();
    DpssClient::new(
        ClientSettings {
            base_url: sim.base_url().parse().unwrap(),
            subscriber_id: cfg.subscriber_id.clone(),
            request_timeout: Duration::from_secs(20),
            max_attempts: 4,
            retry_base: Duration::from_millis(20),
            retry_cap: Duration::from_millis(200),
            max_retry_after: Duration::from_secs(600),
        },
        Credentials {
            token_url: sim.token_url().parse().unwrap(),
            client_id: cfg.client_id.clone(),
            client_secret: Secret::new(cfg.client_secret.clone()).into(),
            scope: "DPSSSubscriberApi".into(),
        },
    )
    .unwrap()
}

/// A configuration file's text pointing at `sim`, with the lake and the state under `dir`.
pub fn config_text(sim: &SimHandle, dir: &Path, file_type: &str, lookback: u32) -> String {
    let cfg = sim.state.config();
    format!(
        r#"
[api]
base_url = "{base}"
subscriber_id = "{subscriber}"
poll_interval = "50ms"
poll_max = "200ms"
job_timeout = "2m"
max_concurrent_jobs = 3
max_attempts = 5
[auth]
token_url = "{token}"
client_id = "{client_id}"
client_secret = "{secret}"
[lake]
url = "file://{lake}"
[state]
url = "sqlite://{state}"
[products.hid_work_orders]
subscription_id = "{sub}"
file_type = "{file_type}"
lookback_days = {lookback}
"#,
        base = sim.base_url(),
        subscriber = cfg.subscriber_id,
        token = sim.token_url(),
        client_id = cfg.client_id,
        secret = cfg.client_secret,
        lake = dir.join("lake").display(),
        state = dir.join("state/state.db").display(),
        sub = cfg.subscription_id,
    )
}

pub fn settings(sim: &SimHandle, dir: &Path, file_type: &str, lookback: u32) -> Settings {
    Settings::load(&Sources {
        inline: vec![config_text(sim, dir, file_type, lookback)],
        ..Default::default()
    })
    .unwrap()
}

fn strings(b: &arrow::record_batch::RecordBatch, name: &str) -> StringArray {
    b.column_by_name(name)
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap()
        .clone()
}

/// Every row of the lake under `dir/lake`, read back through the project's own reader.
pub async fn lake_rows(dir: &Path) -> Vec<Row> {
    lake_rows_at(&dir.join("lake")).await
}

/// Every row of a local lake rooted at `root`.
pub async fn lake_rows_at(root: &Path) -> Vec<Row> {
    lake_rows_in(&local_lake(root), root).await
}

/// Every row of the lake `settings` name, as the project's reader sees it (through the log of
/// a Delta table).
pub async fn lake_rows_in(settings: &dpss_sync::config::LakeSettings, scratch: &Path) -> Vec<Row> {
    let lake = Lake::open(settings, scratch).unwrap();
    let mut out = Vec::new();
    for (date, b) in lake.read_table(*P).await.unwrap() {
        let phase = b
            .column_by_name("phase")
            .unwrap()
            .as_any()
            .downcast_ref::<Int8Array>()
            .unwrap()
            .clone();
        let ts = b
            .column_by_name("status_datetime")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap()
            .clone();
        let (sp, issue, status, reason, wo) = (
            strings(&b, "service_point_id"),
            strings(&b, "issue_id"),
            strings(&b, "status"),
            strings(&b, "reason"),
            strings(&b, "work_order_id"),
        );
        for i in 0..b.num_rows() {
            out.push((
                sp.value(i).to_string(),
                phase.value(i) as i64,
                issue.value(i).to_string(),
                status.value(i).to_string(),
                ts.value(i),
                reason.value(i).to_string(),
                date.to_string(),
                wo.value(i).to_string(),
            ));
        }
    }
    out.sort();
    out
}

pub fn local_lake(root: &Path) -> dpss_sync::config::LakeSettings {
    dpss_sync::config::LakeSettings {
        url: url::Url::from_directory_path(root).unwrap(),
        target_file_size: 256 << 20,
        max_uncompressed_size: 1 << 34,
        max_shrink: 0.5,
        format: dpss_sync::config::TableFormat::Parquet,
        retention: std::time::Duration::from_secs(7 * 86_400),
        checkpoint_interval: 10,
    }
}

pub fn row_of(r: &SimRow) -> Row {
    (
        r.service_point_id.clone(),
        r.phase,
        r.issue_id.clone(),
        r.status.to_string(),
        r.status_datetime.timestamp_micros(),
        r.reason.clone(),
        r.event_date.to_string(),
        r.work_order_id.clone(),
    )
}

/// The rows a correct sync of `days` must hold: valid, each identity once, the last copy.
pub fn expected(
    sim: &SimHandle,
    days: impl IntoIterator<Item = NaiveDate>,
    as_of: DateTime<Utc>,
) -> Vec<Row> {
    let mut all = Vec::new();
    for d in days {
        all.extend(sim.state.rows_for_day(d, as_of));
    }
    let mut rows: Vec<Row> = expected_valid(all).iter().map(row_of).collect();
    rows.sort();
    rows
}

/// The invalid rows served for `days`, by (work_order_id, issue_id, status).
pub fn expected_invalid(
    sim: &SimHandle,
    days: impl IntoIterator<Item = NaiveDate>,
    as_of: DateTime<Utc>,
) -> BTreeSet<(String, String, String)> {
    days.into_iter()
        .flat_map(|d| sim.state.rows_for_day(d, as_of))
        .filter(|r| !r.is_valid())
        .map(|r| (r.work_order_id, r.issue_id, r.status.to_string()))
        .collect()
}

/// The quarantine's (work_order_id, issue_id, status, reason, raw status_datetime).
pub async fn quarantined(dir: &Path) -> Vec<(String, String, String, String, String)> {
    let lake = Lake::open(&local_lake(&dir.join("lake")), dir).unwrap();
    let mut out = Vec::new();
    for b in lake.read_quarantine(*P).await.unwrap() {
        let (wo, issue, status, reason, ts) = (
            strings(&b, "work_order_id"),
            strings(&b, "issue_id"),
            strings(&b, "status"),
            strings(&b, "_reason"),
            strings(&b, "status_datetime"),
        );
        for i in 0..b.num_rows() {
            let get = |a: &StringArray| {
                if a.is_null(i) {
                    String::new()
                } else {
                    a.value(i).to_string()
                }
            };
            out.push((get(&wo), get(&issue), get(&status), get(&reason), get(&ts)));
        }
    }
    out
}

/// Today's first microsecond (UTC): rows at or after it are of a day still open.
pub fn today_key() -> i64 {
    Utc::now()
        .date_naive()
        .and_hms_opt(0, 0, 0)
        .unwrap()
        .and_utc()
        .timestamp_micros()
}

/// Rows of closed days only: today's keep arriving while a test runs.
pub fn closed(rows: Vec<Row>) -> Vec<Row> {
    rows.into_iter().filter(|r| r.4 < today_key()).collect()
}

pub fn days_before_today(n: i64) -> Vec<NaiveDate> {
    let today = Utc::now().date_naive();
    (1..=n)
        .rev()
        .map(|k| today - chrono::Duration::days(k))
        .collect()
}

/// DuckDB's view of the lake under `dir/lake`.
pub fn duckdb_rows(dir: &Path) -> Option<(String, Vec<Row>)> {
    duckdb_rows_at(&dir.join("lake"))
}

/// DuckDB's view of a local lake: its column types and every row, or `None` when Python's
/// duckdb is not installed and this is not CI (in CI a missing independent reader is a failure).
pub fn duckdb_rows_at(root: &Path) -> Option<(String, Vec<Row>)> {
    let script = r#"
import sys, json, duckdb
lake = sys.argv[1]
con = duckdb.connect()
src = f"read_parquet('{lake}/hid_work_orders/**/*.parquet', hive_partitioning = true)"
print(",".join(f"{r[0]}:{r[1]}" for r in con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()))
q = f"SELECT service_point_id, phase, issue_id, status, epoch_us(status_datetime), reason, CAST(event_date AS VARCHAR), work_order_id FROM {src}"
for r in con.sql(q).fetchall():
    print(json.dumps(list(r), ensure_ascii=False))
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &root.display().to_string()])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8(o.stdout).unwrap();
            let mut lines = text.lines();
            let types = lines.next().unwrap_or_default().to_string();
            let mut rows: Vec<Row> = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
            rows.sort();
            Some((types, rows))
        }
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("CI").is_some() {
                panic!("DuckDB (the independent reader) is required in CI: {why}");
            }
            eprintln!("skipping the DuckDB read-back: {why}");
            None
        }
    }
}

/// The jobs the state records for each window key.
pub async fn recorded_jobs(state_path: &Path, keys: &[String]) -> BTreeMap<String, Vec<String>> {
    let st = dpss_sync::state::State::open_reader(&dpss_sync::model::StateUrl::Sqlite(
        state_path.to_path_buf(),
    ))
    .await
    .unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        out.insert(k.clone(), st.jobs_for_window(*P, k).await.unwrap());
    }
    st.close().await;
    out
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_dpss-sync")
}

/// The binary with `config` and `args`, to completion; `failpoint` armed if given.
pub fn run_child(config: &Path, args: &[&str], failpoint: Option<&str>) -> std::process::Output {
    let mut cmd = std::process::Command::new(bin());
    cmd.arg("--config")
        .arg(config)
        .args(args)
        .env("RUST_LOG", "warn");
    match failpoint {
        Some(f) => cmd.env("DPSS_SYNC_FAILPOINT", f),
        None => cmd.env_remove("DPSS_SYNC_FAILPOINT"),
    };
    cmd.output().unwrap()
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process (an emulator) that is killed when the test lets go of it.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Every `txn` the log of `table` holds, by version: (appId, txn version).
pub fn txns(table: &Path) -> BTreeMap<u64, (String, i64)> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(v) = name
            .strip_suffix(".json")
            .and_then(|v| v.parse::<u64>().ok())
        else {
            continue;
        };
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(t) = action.get("txn") {
                out.insert(
                    v,
                    (
                        t["appId"].as_str().unwrap().to_string(),
                        t["version"].as_i64().unwrap(),
                    ),
                );
            }
        }
    }
    out
}

pub fn assert_txns_unique(table: &Path) {
    let all = txns(table);
    let distinct: BTreeSet<_> = all.values().collect();
    assert_eq!(
        distinct.len(),
        all.len(),
        "{}: two commits carry one txn version: {all:?}",
        table.display()
    );
}

/// Parquet objects under a table's directory, relative to it.
pub fn files_on_disk(table: &Path) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.extension().is_some_and(|x| x == "parquet")
                && !p.starts_with(root.join("_delta_log"))
            {
                out.insert(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(table, table, &mut out);
    out
}

/// Every file any version of the table at `table` adds: what VACUUM and time travel know of.
pub fn files_in_log(table: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in std::fs::read_dir(table.join("_delta_log"))
        .unwrap()
        .flatten()
    {
        if !e.file_name().to_string_lossy().ends_with(".json") {
            continue;
        }
        for line in std::fs::read_to_string(e.path()).unwrap().lines() {
            let action: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(path) = action.get("add").and_then(|a| a["path"].as_str()) {
                out.insert(path.to_string());
            }
        }
    }
    out
}

/// What the Python `deltalake` package reads through the log of the table at `table` (at
/// `version`, or the newest): the version, the files it names, and the rows; Polars'
/// `scan_delta` and DuckDB's `delta_scan` must read the same rows. `None` outside CI when Python lacks the packages.
pub struct DeltaRead {
    pub version: i64,
    pub files: BTreeSet<String>,
    pub rows: Vec<Row>,
}

pub fn read_delta(table: &Path, version: Option<i64>) -> Option<DeltaRead> {
    let script = r#"
import os, sys, json
import deltalake, pyarrow.compute as pc
path, version = sys.argv[1], sys.argv[2]
dt = deltalake.DeltaTable(path, version=None if version == "-" else int(version))
t = dt.to_pyarrow_table()
def rows_of(t):
    ts = pc.cast(t.column("status_datetime"), "int64").to_pylist()
    ed = [d.isoformat() for d in t.column("event_date").to_pylist()]
    c = {n: t.column(n).to_pylist() for n in ["service_point_id", "phase", "issue_id", "status", "reason", "work_order_id"]}
    return sorted(
        (c["service_point_id"][i], c["phase"][i], c["issue_id"][i], c["status"][i], ts[i], c["reason"][i], ed[i], c["work_order_id"][i])
        for i in range(t.num_rows))
rows = rows_of(t)
if version == "-":
    import polars as pl
    other = rows_of(pl.scan_delta(path).collect().to_arrow())
    if other != rows:
        sys.exit(f"polars scan_delta reads {len(other)} rows, deltalake {len(rows)}")
    # DuckDB's delta extension, from PyPI (duckdb-ext-delta): it cannot download it here.
    import duckdb, glob, site
    ext = glob.glob(os.path.join(site.getsitepackages()[0], "duckdb_ext/extensions/v*/linux_amd64/delta.duckdb_extension"))
    if not ext:
        sys.exit("DuckDB's delta extension is not installed (pip install duckdb-ext-delta)")
    con = duckdb.connect(config={"allow_unsigned_extensions": "true"})
    con.execute(f"LOAD '{ext[0]}'")
    other = rows_of(con.sql(f"SELECT * FROM delta_scan('{path}')").fetch_arrow_table())
    if other != rows:
        sys.exit(f"duckdb delta_scan reads {len(other)} rows, deltalake {len(rows)}")
print(dt.version())
print(json.dumps(sorted(os.path.relpath(u.removeprefix("file://"), path) for u in dt.file_uris())))
for r in rows:
    print(json.dumps(list(r), ensure_ascii=False))
# Skip the interpreter's teardown, where pyarrow and deltalake's threads now and then abort
# ("terminate called without an active exception") after the work is done.
sys.stdout.flush()
os._exit(0)
"#;
    let v = version.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let out = std::process::Command::new("python3")
        .args(["-c", script, &table.display().to_string(), &v])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8(o.stdout).unwrap();
            let mut lines = text.lines();
            let version = lines.next().unwrap().parse().unwrap();
            let files: BTreeSet<String> = serde_json::from_str(lines.next().unwrap()).unwrap();
            let rows = lines.map(|l| serde_json::from_str(l).unwrap()).collect();
            Some(DeltaRead {
                version,
                files,
                rows,
            })
        }
        other => {
            let why = match other {
                Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
                Err(e) => e.to_string(),
            };
            if std::env::var_os("CI").is_some() {
                panic!(
                    "the Delta readers (Python deltalake, polars, DuckDB delta_scan) failed: {why}"
                );
            }
            eprintln!("skipping the Delta read-back: {why}");
            None
        }
    }
}
