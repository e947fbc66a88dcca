//! `query`: the on-demand endpoint for ad-hoc look-ups. Rows are typed and validated exactly as
//! the lake's are; invalid ones are listed with their reason instead of printed as data.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Date32Array, Int8Array, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::record_batch::RecordBatch;
use chrono::Utc;
use clap::{Args, ValueEnum};

use super::CliError;
use crate::api::DpssClient;
use crate::config::Settings;
use crate::normalize::{self, Normalizer};
use crate::product::Product;
use crate::sim::ON_DEMAND_MAX_ROWS;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    #[arg(long)]
    product: Product,
    /// WorkOrderId; repeat for an In list.
    #[arg(long = "work-order-id")]
    work_order_id: Vec<String>,
    #[arg(long)]
    issue_id: Option<String>,
    #[arg(long)]
    status: Option<String>,
    /// A day (YYYY-MM-DD, the whole UTC day) or an instant (YYYY-MM-DDTHH:MM:SSZ).
    #[arg(long)]
    status_datetime: Option<String>,
    #[arg(long)]
    reason_contains: Option<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

impl QueryArgs {
    fn tokens(&self) -> Result<BTreeMap<String, String>, CliError> {
        let mut t = BTreeMap::new();
        if !self.work_order_id.is_empty() {
            t.insert("WorkOrderId".into(), self.work_order_id.join(","));
        }
        if let Some(v) = &self.issue_id {
            t.insert("IssueId".into(), v.clone());
        }
        if let Some(v) = &self.status {
            t.insert("Status".into(), v.clone());
        }
        if let Some(v) = &self.status_datetime {
            if crate::normalize::time::parse_utc(v).is_none() {
                return Err(CliError::Usage(format!(
                    "--status-datetime `{v}` is neither YYYY-MM-DD nor YYYY-MM-DDTHH:MM:SSZ"
                )));
            }
            t.insert("StatusDatetime".into(), v.clone());
        }
        if let Some(v) = &self.reason_contains {
            t.insert("Reason".into(), v.clone());
        }
        Ok(t)
    }
}

pub async fn run(settings: Settings, args: QueryArgs) -> Result<ExitCode, CliError> {
    let tokens = args.tokens()?;
    settings.require_api()?;
    let sub = settings
        .product(args.product)?
        .subscription_id
        .clone()
        .unwrap_or_default();
    let client = DpssClient::from_settings(&settings)?;
    let rows = client
        .on_demand(&sub, &tokens)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let served = rows.len();
    let (raw, unknown) = crate::decode::rows_to_batch(&rows, "on-demand");
    if !unknown.is_empty() {
        eprintln!(
            "note: ignoring columns this product does not know: {}",
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let scratch =
        tempfile::tempdir().map_err(|e| CliError::Failed(format!("scratch directory: {e}")))?;
    let mut n = Normalizer::new(
        args.product,
        "on-demand",
        Utc::now(),
        scratch.path(),
        served as u64,
    );
    n.push(&normalize::check(raw));
    let out = n.finish().map_err(|e| CliError::Failed(e.to_string()))?;
    let quarantine = out
        .quarantine
        .all()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let (partitions, counts) = out
        .into_batches()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let table = with_event_date(&partitions);
    match args.format {
        Format::Table => {
            let shown = table
                .project(&[0, 1, 2, 3, 4, 5, 6, 7])
                .expect("columns exist");
            println!(
                "{}",
                arrow::util::pretty::pretty_format_batches(&[shown]).expect("printable")
            );
        }
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json_rows(&table)).expect("json")
        ),
        Format::Csv => {
            write_csv(&table).map_err(|e| CliError::Failed(format!("writing CSV: {e}")))?
        }
    }
    if let Some(q) = &quarantine {
        let reasons = q
            .column_by_name("_reason")
            .expect("reason")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        let wo = q
            .column_by_name("work_order_id")
            .expect("wo")
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("utf8");
        for i in 0..q.num_rows() {
            eprintln!(
                "invalid row (work order {}): {}",
                if wo.is_null(i) { "?" } else { wo.value(i) },
                reasons.value(i)
            );
        }
    }
    eprintln!(
        "{served} row(s) served: {} valid, {} invalid, {} duplicate(s) collapsed",
        counts.written, counts.quarantined, counts.duplicates
    );
    if served >= ON_DEMAND_MAX_ROWS {
        eprintln!(
            "warning: the on-demand endpoint returns at most {ON_DEMAND_MAX_ROWS} rows and this answer reached the cap, \
             so it is probably incomplete; narrow the filters (a --status-datetime day, --work-order-id) or use `sync`/`backfill`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The query's rows as one batch with the event_date the lake keeps in the path.
fn with_event_date(parts: &BTreeMap<chrono::NaiveDate, RecordBatch>) -> RecordBatch {
    let schema = Product::HidWorkOrders.lake_schema();
    let mut fields: Vec<Field> = schema
        .fields()
        .iter()
        .take(7)
        .map(|f| f.as_ref().clone())
        .collect();
    fields.insert(6, Field::new("event_date", DataType::Date32, false));
    let out_schema = Arc::new(Schema::new(fields));
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    let batches: Vec<RecordBatch> = parts
        .iter()
        .map(|(date, b)| {
            let mut cols: Vec<ArrayRef> = b.columns().iter().take(7).cloned().collect();
            let days = (*date - epoch).num_days() as i32;
            cols.insert(6, Arc::new(Date32Array::from(vec![days; b.num_rows()])));
            RecordBatch::try_new(out_schema.clone(), cols).expect("schema matches")
        })
        .collect();
    arrow::compute::concat_batches(&out_schema, &batches).expect("same schema")
}

fn strings(b: &RecordBatch, i: usize) -> &StringArray {
    b.column(i).as_any().downcast_ref().expect("utf8 column")
}

fn cells(b: &RecordBatch, row: usize) -> [String; 8] {
    let phase: &Int8Array = b.column(1).as_any().downcast_ref().expect("int8");
    let ts: &TimestampMicrosecondArray = b.column(4).as_any().downcast_ref().expect("timestamp");
    let ed: &Date32Array = b.column(6).as_any().downcast_ref().expect("date32");
    [
        strings(b, 0).value(row).to_string(),
        phase.value(row).to_string(),
        strings(b, 2).value(row).to_string(),
        strings(b, 3).value(row).to_string(),
        ts.value_as_datetime(row)
            .map(|t| {
                t.and_utc()
                    .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
            })
            .unwrap_or_default(),
        strings(b, 5).value(row).to_string(),
        ed.value_as_date(row)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        strings(b, 7).value(row).to_string(),
    ]
}

const NAMES: [&str; 8] = [
    "service_point_id",
    "phase",
    "issue_id",
    "status",
    "status_datetime",
    "reason",
    "event_date",
    "work_order_id",
];

fn json_rows(b: &RecordBatch) -> serde_json::Value {
    let rows = (0..b.num_rows())
        .map(|r| {
            let c = cells(b, r);
            let mut obj = serde_json::Map::new();
            for (i, name) in NAMES.iter().enumerate() {
                let v = if i == 1 {
                    serde_json::Value::from(c[i].parse::<i64>().unwrap_or_default())
                } else {
                    serde_json::Value::from(c[i].clone())
                };
                obj.insert(name.to_string(), v);
            }
            serde_json::Value::Object(obj)
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn write_csv(b: &RecordBatch) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(std::io::stdout());
    w.write_record(NAMES)?;
    for r in 0..b.num_rows() {
        w.write_record(cells(b, r))?;
    }
    w.flush()?;
    Ok(())
}
