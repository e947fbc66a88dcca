//! Several products from one configuration, end to end: HID work orders and Advanced
//! Temperature Statistics synced by the binary against the simulator, in every export format and
//! as Delta tables, read back by DuckDB and `deltalake` and compared with the simulator's valid
//! rows; late hours and a corrected hour land on the next cycle; invalid hours are quarantined
//! with their reasons. A product declared only in TOML syncs the same way.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use common::tables::{JsonRow, Layout, TableRead, canonical, read_table};
use common::{expected, run_child, start};
use dpss_sync::sim::data::Dataset;
use dpss_sync::sim::temperature::{TempDefect, TempRow, expected_valid};
use dpss_sync::sim::{SimConfig, SimHandle};
use serde_json::{Value, json};

const HID: &str = "hid_work_orders";
const TEMPERATURE: &str = "atm_temperature_stats";

/// Enough meters (8) that a day has late hours and corrections to find.
const ROWS_PER_DAY: u64 = 192;

/// Covers every day whose hours can still arrive between the two syncs (at most ~4 days late).
const LOOKBACK: u32 = 5;

async fn simulator() -> SimHandle {
    start(SimConfig {
        rows_per_day: ROWS_PER_DAY,
        job_delay: Duration::from_millis(60),
        ..SimConfig::default()
    })
    .await
}

/// Both built-in products in one configuration, the lake and the state under `dir`.
fn config(sim: &SimHandle, dir: &Path, file_type: &str, delta: bool) -> std::path::PathBuf {
    let cfg = sim.state.config();
    let mut text = common::config_text(sim, dir, file_type, LOOKBACK);
    if delta {
        text = text.replace("[lake]\n", "[lake]\nformat = \"delta\"\n");
    }
    text.push_str(&format!(
        "[products.{TEMPERATURE}]\nsubscription_id = \"{}\"\nfile_type = \"{file_type}\"\nlookback_days = {LOOKBACK}\n",
        cfg.temperature_subscription_id
    ));
    let path = dir.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Every day the simulator serves as of `now`.
fn served_days(now: DateTime<Utc>) -> Vec<NaiveDate> {
    let today = now.date_naive();
    Dataset::available_from(today)
        .iter_days()
        .take_while(|d| *d <= today)
        .collect()
}

fn temperature_served(sim: &SimHandle, as_of: DateTime<Utc>) -> Vec<TempRow> {
    served_days(as_of)
        .into_iter()
        .flat_map(|d| sim.state.temperature_rows_for_day(d, as_of))
        .collect()
}

/// A temperature row as the lake should hold it.
fn temperature_row(r: &TempRow) -> JsonRow {
    let v = json!({
        "received_time": r.received_time.timestamp_micros(),
        "service_point_id": r.service_point_id,
        "meter_id": r.meter_id,
        "meter_number": r.meter_number,
        "electronic_serial_number": r.electronic_serial_number,
        "transformer_id": r.transformer_id,
        "premise_id": r.premise_id,
        "feeder_id": r.feeder_id,
        "measurement_time": r.measurement_time.timestamp_micros(),
        "avg_temp": r.avg_temp,
        "max_temp": r.max_temp,
        "measurement_date": r.measurement_day().to_string(),
    });
    serde_json::from_value(v).unwrap()
}

/// A HID row as the lake should hold it.
fn hid_row(r: &common::Row) -> JsonRow {
    let v = json!({
        "service_point_id": r.0,
        "phase": r.1,
        "issue_id": r.2,
        "status": r.3,
        "status_datetime": r.4,
        "reason": r.5,
        "event_date": r.6,
        "work_order_id": r.7,
    });
    serde_json::from_value(v).unwrap()
}

/// An hour whose copies the two syncs tell apart: (meter, measurement µs).
type Hour = (String, i64);

/// Where to hold the vendor's clock for the first sync, so the second (at `now`) brings both a
/// corrected hour whose first value the first sync wrote and an hour that arrived after its
/// day closed: (the clock, the corrected hour, its first and corrected average, the late hour).
fn first_clock(sim: &SimHandle, now: DateTime<Utc>) -> (DateTime<Utc>, Hour, f64, f64, Hour) {
    let rows: Vec<TempRow> = (0..6)
        .map(|k| now.date_naive() - chrono::Duration::days(k))
        .flat_map(|d| sim.state.temperature_rows_for_day(d, now))
        .filter(TempRow::is_valid)
        .collect();
    let mut copies: BTreeMap<Hour, Vec<&TempRow>> = BTreeMap::new();
    for r in &rows {
        copies.entry(r.identity()).or_default().push(r);
    }
    let mut corrections: Vec<(&TempRow, &TempRow)> = copies
        .values()
        .filter(|c| c.len() == 2)
        .map(|c| (c[0], c[1]))
        .filter(|(_, again)| again.received_time > now - chrono::Duration::hours(30))
        .collect();
    corrections.sort_by_key(|(_, again)| std::cmp::Reverse(again.received_time));
    for (first, again) in corrections {
        let clock = again.received_time - chrono::Duration::seconds(1);
        if first.received_time > clock {
            continue;
        }
        let late = copies.values().find(|c| {
            c.len() == 1
                && c[0].received_time > clock
                && c[0].received_time.date_naive() > c[0].measurement_day()
        });
        if let Some(late) = late {
            return (
                clock,
                first.identity(),
                first.avg_temp,
                again.avg_temp,
                late[0].identity(),
            );
        }
    }
    panic!("no corrected hour and late hour in the last 30 hours of the simulator's data");
}

fn hour_of(rows: &TableRead, hour: &Hour) -> Option<f64> {
    rows.rows
        .iter()
        .find(|r| r["meter_id"] == hour.0.as_str() && r["measurement_time"] == hour.1)
        .map(|r| r["avg_temp"].as_f64().unwrap())
}

/// What an invalid hour's quarantine reason names.
fn defect_column(d: TempDefect) -> &'static str {
    match d {
        TempDefect::BadMeasurementTime => "measurement_time",
        TempDefect::EmptyMeterId => "meter_id",
        TempDefect::NotANumber => "avg_temp",
        TempDefect::NoReceivedTime => "received_time",
    }
}

/// The quarantine's rows per column their reason names, each distinct row once (a row with no
/// day is kept once per window that delivered it).
fn quarantined_by_column(q: &TableRead) -> BTreeMap<&'static str, usize> {
    let mut distinct: BTreeSet<String> = BTreeSet::new();
    for r in &q.rows {
        let content: JsonRow = r
            .iter()
            .filter(|(k, _)| !k.starts_with('_') || k.as_str() == "_reason")
            .filter(|(k, _)| k.as_str() != "measurement_date" && k.as_str() != "window")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        distinct.insert(serde_json::to_string(&content).unwrap());
    }
    let mut out = BTreeMap::new();
    for text in distinct {
        let row: JsonRow = serde_json::from_str(&text).unwrap();
        let reason = row["_reason"].as_str().unwrap();
        let column = ["measurement_time", "received_time", "meter_id", "avg_temp"]
            .into_iter()
            .find(|c| reason.contains(c))
            .unwrap_or_else(|| panic!("a reason naming no temperature column: {reason}"));
        *out.entry(column).or_default() += 1;
    }
    out
}

async fn both_products(file_type: &str, delta: bool) {
    let now = Utc::now();
    let sim = simulator().await;
    let (clock, corrected, first_value, corrected_value, late) = first_clock(&sim, now);
    let dir = tempfile::tempdir().unwrap();
    let config = config(&sim, dir.path(), file_type, delta);
    let lake = dir.path().join("lake");
    let (data, quarantine) = if delta {
        (Layout::Delta, Layout::Delta)
    } else {
        (Layout::Hive, Layout::Files)
    };

    sim.state.set_clock(Some(clock));
    let first = run_child(&config, &["sync"], None);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let Some(after_first) = read_table(&lake, TEMPERATURE, data) else {
        return;
    };
    assert_eq!(hour_of(&after_first, &corrected), Some(first_value));
    assert_eq!(hour_of(&after_first, &late), None, "not received yet");

    sim.state.set_clock(Some(now));
    let second = run_child(&config, &["sync"], None);
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    let temperatures = read_table(&lake, TEMPERATURE, data).unwrap();
    assert_eq!(hour_of(&temperatures, &corrected), Some(corrected_value));
    assert!(
        hour_of(&temperatures, &late).is_some(),
        "the late hour landed"
    );
    let served = temperature_served(&sim, now);
    let want = canonical(expected_valid(served.clone()).iter().map(temperature_row));
    let got = temperatures.content();
    assert_eq!(got.len(), want.len(), "{file_type}: temperature rows");
    assert!(got == want, "{file_type}: the temperature table differs");
    for (column, ty) in [
        ("received_time", "TIMESTAMP WITH TIME ZONE"),
        ("measurement_time", "TIMESTAMP WITH TIME ZONE"),
        ("avg_temp", "DOUBLE"),
        ("meter_number", "VARCHAR"),
        ("measurement_date", "DATE"),
    ] {
        assert_eq!(temperatures.types[column], ty, "{column}");
    }

    let hid = read_table(&lake, HID, data).unwrap();
    let want_hid = canonical(expected(&sim, served_days(now), now).iter().map(hid_row));
    assert_eq!(hid.content().len(), want_hid.len(), "{file_type}: HID rows");
    assert!(
        hid.content() == want_hid,
        "{file_type}: the HID table differs"
    );

    let q = read_table(&lake.join("_quarantine"), TEMPERATURE, quarantine).unwrap();
    let mut invalid: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in served.iter().filter(|r| !r.is_valid()) {
        *invalid.entry(defect_column(r.defect.unwrap())).or_default() += 1;
    }
    assert_eq!(invalid.len(), 4, "every kind of invalid hour is served");
    assert_eq!(
        quarantined_by_column(&q),
        invalid,
        "{file_type}: quarantine"
    );
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_products_from_csv_exports() {
    both_products("csv", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_products_from_json_exports() {
    both_products("json", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_products_from_parquet_exports() {
    both_products("parquet", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_products_from_orc_exports() {
    both_products("orc", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_products_as_delta_tables() {
    both_products("parquet", true).await;
}

/// `status --json` reports each configured product.
fn status_products(config: &Path) -> Vec<Value> {
    let out = run_child(config, &["status", "--json"], None);
    assert!(out.status.success());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    doc["products"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_knows_every_product() {
    let sim = simulator().await;
    let dir = tempfile::tempdir().unwrap();
    let config = config(&sim, dir.path(), "csv", false);
    let online = run_child(&config, &["check-config", "--online", "--json"], None);
    let doc: Value = serde_json::from_slice(&online.stdout).unwrap();
    assert_eq!(doc["ok"], true, "{doc}");
    let checks = doc["online"]["checks"].to_string();
    assert!(checks.contains("StartMeasurementDate"), "{checks}");
    assert!(checks.contains("StatusDatetime"), "{checks}");

    let plan = run_child(&config, &["plan", "--json"], None);
    let plan: Value = serde_json::from_slice(&plan.stdout).unwrap();
    let planned: Vec<&str> = plan["products"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["product"].as_str().unwrap())
        .collect();
    assert_eq!(planned, [TEMPERATURE, HID]);
    let tokens = plan["products"][0]["windows"][0]["tokens"].to_string();
    assert!(tokens.contains("EndMeasurementDate"), "{tokens}");

    let today = Utc::now().date_naive();
    let from = (today - chrono::Duration::days(3)).to_string();
    let to = (today - chrono::Duration::days(2)).to_string();
    let backfill = run_child(
        &config,
        &[
            "backfill",
            "--product",
            TEMPERATURE,
            "--from",
            &from,
            "--to",
            &to,
        ],
        None,
    );
    assert!(
        backfill.status.success(),
        "{}",
        String::from_utf8_lossy(&backfill.stderr)
    );
    let products = status_products(&config);
    let by_name: BTreeMap<&str, &Value> = products
        .iter()
        .map(|p| (p["product"].as_str().unwrap(), p))
        .collect();
    assert_eq!(by_name.len(), 2);
    assert_eq!(
        by_name[TEMPERATURE]["recently_committed"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        by_name[HID]["recently_committed"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(by_name[TEMPERATURE]["table"]["format"], "parquet");

    let unknown = run_child(
        &config,
        &[
            "backfill",
            "--product",
            "nope",
            "--from",
            &from,
            "--to",
            &to,
        ],
        None,
    );
    assert_eq!(unknown.status.code(), Some(2));
    let err = String::from_utf8_lossy(&unknown.stderr);
    assert!(err.contains("nope") && err.contains(TEMPERATURE), "{err}");
    sim.shutdown().await;
}

/// A declared product's row as the lake should hold it, from the simulator's values: `None` for
/// a row the declaration refuses (the simulator's invalid rows leave a required text empty).
fn declared_row(
    product: dpss_sync::product::Product,
    values: &[dpss_sync::sim::record::Value],
) -> Option<JsonRow> {
    use dpss_sync::sim::record::Value as Cell;
    let mut row = JsonRow::new();
    for (c, v) in product.columns.iter().zip(values) {
        let value = match v {
            Cell::Text(t) if t.is_empty() && c.required => return None,
            Cell::Text(t) => json!(t),
            Cell::Int(n) => json!(n),
            Cell::Float(x) => json!(x),
            Cell::Time { micros, .. } => json!(micros.expect("a valid instant")),
            Cell::Date(d) => json!(d.to_string()),
            Cell::Null => Value::Null,
        };
        row.insert(c.lake.clone(), value);
    }
    Some(row)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_product_declared_in_toml_syncs_end_to_end() {
    let catalog = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/catalog/atm_temperature_events.toml"),
    )
    .unwrap();
    let settings = dpss_sync::config::Settings::load(&dpss_sync::config::Sources {
        inline: vec![catalog.clone()],
        ..Default::default()
    })
    .unwrap();
    let events = settings.catalog.get("atm_temperature_events").unwrap();
    let subscription = "00000000-0000-4000-8000-0000000e7e75";
    let sim = start(SimConfig {
        rows_per_day: 20,
        job_delay: Duration::from_millis(60),
        declared: vec![(subscription.to_string(), events)],
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut text = common::config_text(&sim, dir.path(), "json", 2);
    text.push_str(&catalog);
    text.push_str(&format!(
        "[products.atm_temperature_events]\nsubscription_id = \"{subscription}\"\nfile_type = \"json\"\n"
    ));
    let config = dir.path().join("config.toml");
    std::fs::write(&config, text).unwrap();

    let online = run_child(&config, &["check-config", "--online"], None);
    assert!(
        online.status.success(),
        "{}",
        String::from_utf8_lossy(&online.stderr)
    );
    let now = Utc::now();
    sim.state.set_clock(Some(now));
    let sync = run_child(
        &config,
        &["sync", "--product", "atm_temperature_events"],
        None,
    );
    assert!(
        sync.status.success(),
        "{}",
        String::from_utf8_lossy(&sync.stderr)
    );
    let records = sim.state.export_records(subscription, now).unwrap();
    let valid: Vec<JsonRow> = records
        .iter()
        .filter_map(|r| declared_row(events, &r.values))
        .collect();
    assert!(valid.len() < records.len(), "some rows are invalid");
    let Some(table) = read_table(
        &dir.path().join("lake"),
        "atm_temperature_events",
        Layout::Hive,
    ) else {
        return;
    };
    assert_eq!(table.types["max_temp"], "DOUBLE");
    assert_eq!(table.types["event_date"], "DATE");
    let want = canonical(valid.into_iter());
    assert_eq!(table.content().len(), want.len());
    let got = table.content();
    let first = got.iter().zip(&want).find(|(g, w)| g != w);
    assert!(
        first.is_none(),
        "the declared product's table differs: {first:?}"
    );
    let q = read_table(
        &dir.path().join("lake/_quarantine"),
        "atm_temperature_events",
        Layout::Files,
    )
    .unwrap();
    assert_eq!(q.rows.len(), records.len() - want.len());
    assert!(
        q.rows
            .iter()
            .all(|r| r["_reason"].as_str().unwrap().contains("service_point_id"))
    );
    sim.shutdown().await;
}
