//! The catalog: the built-ins read and keep the lake schemas existing lakes hold, headers match
//! in any casing, and a bad declaration is named by its field.

use arrow::datatypes::{DataType, Field, Schema};
use chrono::NaiveDate;
use serde_json::json;

use super::*;

fn hid() -> Product {
    builtin("hid_work_orders").unwrap()
}

fn atm() -> Product {
    builtin("atm_temperature_stats").unwrap()
}

#[test]
fn the_built_in_declarations_read() {
    let names: Vec<_> = builtins().iter().map(|p| p.config_name()).collect();
    assert_eq!(names, ["atm_temperature_stats", "hid_work_orders"]);
    assert_eq!(
        hid().data_product_id(),
        "82624588-c005-4cbb-bc7d-420a2332f1ef"
    );
    assert_eq!(
        atm().data_product_id(),
        "5d796eb5-382e-47c4-b6f5-6684c2b6445b"
    );
}

/// The HID lake schema is the one every existing HID lake holds (DESIGN.md): a lake written
/// before the catalog reads and grows without a rewrite.
#[test]
fn the_hid_schema_is_the_one_existing_lakes_hold() {
    let ts = timestamp();
    let want = Schema::new(vec![
        Field::new("service_point_id", DataType::Utf8, false),
        Field::new("phase", DataType::Int8, false),
        Field::new("issue_id", DataType::Utf8, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("status_datetime", ts.clone(), false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("work_order_id", DataType::Utf8, false),
        Field::new("_job_id", DataType::Utf8, false),
        Field::new("_ingested_at", ts.clone(), false),
    ]);
    assert_eq!(*hid().lake_schema(), want);
    let q: Vec<String> = hid()
        .quarantine_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        q,
        [
            "service_point_id",
            "phase",
            "issue_id",
            "status",
            "status_datetime",
            "reason",
            "event_date",
            "work_order_id",
            "_raw",
            "_reason",
            "_source",
            "_row_number",
            "_job_id",
            "_ingested_at"
        ]
    );
    assert_eq!(hid().partition_name, "event_date");
    assert_eq!(hid().quarantine_partition, "status_date");
}

#[test]
fn the_temperature_schema_is_design_s() {
    let s = atm().lake_schema();
    let col = |n: &str| s.field_with_name(n).unwrap().clone();
    assert_eq!(col("avg_temp").data_type(), &DataType::Float64);
    assert!(!col("avg_temp").is_nullable());
    assert!(col("transformer_id").is_nullable() && col("feeder_id").is_nullable());
    assert!(!col("meter_id").is_nullable());
    assert_eq!(col("measurement_time").data_type(), &timestamp());
    assert!(
        s.field_with_name("measurement_date").is_err(),
        "in the path only"
    );
    assert_eq!(s.fields().len(), 13);
    let d = NaiveDate::from_ymd_opt(2025, 12, 13).unwrap();
    let tokens = atm().day_tokens(d);
    assert_eq!(tokens["StartMeasurementDate"], "2025-12-13");
    assert_eq!(tokens["EndMeasurementDate"], "2025-12-14");
    assert_eq!(hid().day_tokens(d)["StatusDatetime"], "2025-12-13");
    assert!(atm().history_tokens().values().all(String::is_empty));
}

#[test]
fn headers_match_in_any_casing() {
    let p = hid();
    let at = |h: &str| p.column_of(h).map(|i| p.columns[i].lake.as_str());
    assert_eq!(at("IssueID"), Some("issue_id"));
    assert_eq!(at("Issueid"), Some("issue_id"));
    assert_eq!(at("\u{feff}ServicePointId"), Some("service_point_id"));
    assert_eq!(at("status_datetime"), Some("status_datetime"));
    assert_eq!(at("StatusDateTime"), Some("status_datetime"));
    assert_eq!(at("work order id"), Some("work_order_id"));
    assert_eq!(at(""), None);
    assert_eq!(at("Feeder"), None);
    let a = atm();
    assert_eq!(
        a.column_of("ServicePointId")
            .map(|i| a.columns[i].lake.as_str()),
        Some("service_point_id")
    );
    assert_eq!(
        a.column_of("MeterID").map(|i| a.columns[i].lake.as_str()),
        Some("meter_id")
    );
}

fn events() -> serde_json::Value {
    json!({
        "data_product": "a4232188-69e7-42d0-8583-5dded17c2710",
        "window_tokens": [{"name": "StartEventDate"}, {"name": "EndEventDate", "offset_days": 1}],
        "identity": ["meter_id", "event_date"],
        "window": "event_date",
        "order": "received_time",
        "partition": {"name": "event_date", "column": "event_date"},
        "columns": [
            {"vendor": "RecievedTime", "lake": "received_time", "type": "timestamp"},
            {"vendor": "MeterId", "lake": "meter_id", "type": "utf8"},
            {"vendor": "MaxTemp", "lake": "max_temp", "type": "float64", "finite": true},
            {"vendor": "EventDate", "lake": "event_date", "type": "date"},
        ],
    })
}

#[test]
fn a_declared_product_reads_and_a_bad_one_is_named_by_its_field() {
    let p = declare("atm_temperature_events", &events()).unwrap();
    assert_eq!(p.partition_name, "event_date");
    assert!(
        !p.columns[3].stored,
        "a date partitioned by itself lives in the path only"
    );
    assert_eq!(p.quarantine_partition, "event_date_day");
    assert_eq!(p.latest, None);
    assert_eq!(atm().latest, atm().column_of("ReceivedTime"));
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (json!({"typo": 1}), "typo", "unknown field"),
        (
            json!({"columns": [{"vendor": "X", "lake": "x", "type": "blob"}]}),
            "columns[0].type",
            "`blob` is not one of",
        ),
        (
            json!({"identity": ["nope"]}),
            "identity",
            "no column has the lake name `nope`",
        ),
        (
            json!({"window": "meter_id"}),
            "window",
            "must be a required timestamp or date",
        ),
        (
            json!({"columns": [{"vendor": "X", "lake": "X", "type": "utf8"}]}),
            "columns[0].lake",
            "not a lake name",
        ),
        (
            json!({"columns": [{"vendor": "A", "lake": "a", "type": "utf8", "range": [1, 2]}]}),
            "columns[0].range",
            "only a number column",
        ),
        (
            json!({"window_tokens": []}),
            "window_tokens",
            "needs the token",
        ),
        (
            json!({"partition": {"name": "meter_id", "column": "event_date"}}),
            "partition.name",
            "already a column",
        ),
        (
            json!({"latest": "max_temp"}),
            "latest",
            "timestamp, date or integer",
        ),
        (
            json!({"identity": ["meter_id"], "latest": "received_time"}),
            "latest",
            "partition's column `event_date` in the identity",
        ),
    ];
    for (patch, field, reason) in cases {
        let mut tree = events();
        for (k, v) in patch.as_object().unwrap() {
            tree[k] = v.clone();
        }
        let err = declare("x", &tree).unwrap_err();
        assert_eq!(err.field, field, "{err}");
        assert!(err.reason.contains(reason), "{err}");
    }
    assert!(declare("Bad-Name", &events()).is_err());
}

#[test]
fn a_catalog_holds_the_built_ins_and_refuses_a_second_of_a_name() {
    let mut c = Catalog::default();
    assert!(c.get("hid_work_orders").is_some());
    assert!(!c.add(hid()));
    let p = declare("atm_temperature_events", &events()).unwrap();
    assert!(c.add(p));
    assert_eq!(c.names().len(), 3);
    let tree = toml_tree("data_product = \"x\"\n[[columns]]\nvendor = \"A\"\n").unwrap();
    assert_eq!(tree["columns"][0]["vendor"], "A");
}
