//! `query`: the on-demand endpoint for ad-hoc look-ups. The filters are the product's declared
//! ones (`--filter NAME=VALUE`, NAME a declared filter's flag or its token); rows are typed and
//! validated exactly as the lake's are, and invalid ones are listed with their reason instead
//! of printed as data.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Date32Array, StringArray};
use arrow::datatypes::{
    DataType, Date32Type, Field, Float64Type, Int8Type, Int32Type, Int64Type, Schema,
    TimestampMicrosecondType,
};
use arrow::record_batch::RecordBatch;
use chrono::Utc;
use clap::{Args, ValueEnum};

use super::CliError;
use crate::api::DpssClient;
use crate::config::Settings;
use crate::normalize::{self, Normalizer};
use crate::product::{Kind, Product};
use crate::sim::ON_DEMAND_MAX_ROWS;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The product to look up (a configured one).
    #[arg(long, value_name = "NAME")]
    product: String,
    /// A filter the product declares, as NAME=VALUE: NAME is the filter's flag or its token;
    /// repeat it for several values of a list filter.
    #[arg(long = "filter", value_name = "NAME=VALUE")]
    filters: Vec<String>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// The product's declared filters as flags of their own, `--FLAG VALUE` or `--FLAG=VALUE`
    /// (a flag the product does not declare is refused with the list of those it does).
    #[arg(
        value_name = "--FLAG VALUE",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        num_args = 0..
    )]
    flags: Vec<String>,
}

impl QueryArgs {
    /// Every filter asked for, as (name, value): `--filter`s, then the declared flags. Once a
    /// flag clap does not know is seen, the rest is read here, `--format` included.
    fn asked(&self) -> Result<(Vec<(String, String)>, Format), CliError> {
        let mut out = Vec::new();
        for f in &self.filters {
            let (name, value) = f
                .split_once('=')
                .ok_or_else(|| CliError::Usage(format!("--filter `{f}` is not NAME=VALUE")))?;
            out.push((name.trim().to_string(), value.to_string()));
        }
        let mut format = self.format;
        let mut rest = self.flags.iter();
        while let Some(arg) = rest.next() {
            let Some(flag) = arg.strip_prefix("--") else {
                return Err(CliError::Usage(format!(
                    "`{}` is not a filter flag (--FLAG VALUE)",
                    crate::model::shown(arg)
                )));
            };
            let (name, value) = match flag.split_once('=') {
                Some((n, v)) => (n.to_string(), v.to_string()),
                None => {
                    let v = rest.next().ok_or_else(|| {
                        CliError::Usage(format!("--{} needs a value", crate::model::shown(flag)))
                    })?;
                    (flag.to_string(), v.clone())
                }
            };
            match name.as_str() {
                "format" => {
                    format = Format::from_str(&value, true)
                        .map_err(|e| CliError::Usage(format!("--format: {e}")))?;
                }
                "filter" => match value.split_once('=') {
                    Some((n, v)) => out.push((n.trim().to_string(), v.to_string())),
                    None => {
                        return Err(CliError::Usage(format!(
                            "--filter `{value}` is not NAME=VALUE"
                        )));
                    }
                },
                _ => out.push((name, value)),
            }
        }
        Ok((out, format))
    }

    /// The on-demand tokens: each asked filter matched to the product's declaration.
    fn tokens(
        product: Product,
        asked: Vec<(String, String)>,
    ) -> Result<BTreeMap<String, String>, CliError> {
        let mut lists: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in asked {
            let f = product
                .filters
                .iter()
                .find(|f| f.flag == name || f.token.eq_ignore_ascii_case(&name))
                .ok_or_else(|| {
                    let known: Vec<&str> =
                        product.filters.iter().map(|f| f.flag.as_str()).collect();
                    CliError::Usage(format!(
                        "{product} has no filter `{}` (its filters: {})",
                        crate::model::shown(&name),
                        known.join(", ")
                    ))
                })?;
            if f.time && crate::normalize::time::parse_utc(&value).is_none() {
                return Err(CliError::Usage(format!(
                    "filter {} `{value}` is neither YYYY-MM-DD nor YYYY-MM-DDTHH:MM:SSZ",
                    f.flag
                )));
            }
            let values = lists.entry(f.token.clone()).or_default();
            if !f.list && !values.is_empty() {
                return Err(CliError::Usage(format!(
                    "filter {} takes one value",
                    f.flag
                )));
            }
            values.push(value);
        }
        Ok(lists.into_iter().map(|(k, v)| (k, v.join(","))).collect())
    }
}

pub async fn run(settings: Settings, args: QueryArgs) -> Result<ExitCode, CliError> {
    let product = settings.configured(&args.product)?;
    let (asked, format) = args.asked()?;
    let tokens = QueryArgs::tokens(product, asked)?;
    settings.require_api()?;
    let sub = settings
        .product(product)?
        .subscription_id
        .clone()
        .unwrap_or_default();
    let client = DpssClient::from_settings(&settings)?;
    let rows = client
        .on_demand(&sub, &tokens)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let served = rows.len();
    let (raw, unknown) = crate::decode::rows_to_batch(product, &rows, "on-demand");
    if !unknown.is_empty() {
        eprintln!(
            "note: ignoring columns this product does not know: {}",
            unknown.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    let scratch =
        tempfile::tempdir().map_err(|e| CliError::Failed(format!("scratch directory: {e}")))?;
    let mut n = Normalizer::new(
        product,
        "on-demand",
        Utc::now(),
        scratch.path(),
        served as u64,
    );
    n.push(&normalize::check(product, raw));
    let out = n.finish().map_err(|e| CliError::Failed(e.to_string()))?;
    let quarantine = out
        .quarantine
        .all()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let (partitions, counts) = out
        .into_batches()
        .map_err(|e| CliError::Failed(e.to_string()))?;
    let table = declared_columns(product, &partitions);
    match format {
        Format::Table => println!(
            "{}",
            arrow::util::pretty::pretty_format_batches(std::slice::from_ref(&table))
                .expect("printable")
        ),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(&json_rows(product, &table)).expect("json")
        ),
        Format::Csv => {
            write_csv(product, &table).map_err(|e| CliError::Failed(format!("writing CSV: {e}")))?
        }
    }
    if let Some(q) = &quarantine {
        report_invalid(product, q);
    }
    eprintln!(
        "{served} row(s) served: {} valid, {} invalid, {} duplicate(s) collapsed",
        counts.written, counts.quarantined, counts.duplicates
    );
    if served >= ON_DEMAND_MAX_ROWS {
        eprintln!(
            "warning: the on-demand endpoint returns at most {ON_DEMAND_MAX_ROWS} rows and this answer reached the cap, \
             so it is probably incomplete; narrow the filters or use `sync`/`backfill`"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Each invalid row, named by its identity's raw values, with its reason.
fn report_invalid(product: Product, q: &RecordBatch) {
    let text = |name: &str| q.column_by_name(name).map(|c| c.as_string::<i32>().clone());
    let reasons = text("_reason").expect("the quarantine has reasons");
    let ids: Vec<(String, StringArray)> = product
        .identity
        .iter()
        .filter_map(|&c| {
            let name = &product.columns[c].lake;
            text(name).map(|a| (name.clone(), a))
        })
        .collect();
    for i in 0..q.num_rows() {
        let id: Vec<String> = ids
            .iter()
            .map(|(n, a)| format!("{n} {}", if a.is_null(i) { "?" } else { a.value(i) }))
            .collect();
        eprintln!("invalid row ({}): {}", id.join(", "), reasons.value(i));
    }
}

/// The rows as one batch of the product's declared columns, in declared order: a partition
/// column that lives in the lake's path is filled with its partition's day.
fn declared_columns(
    product: Product,
    parts: &BTreeMap<chrono::NaiveDate, RecordBatch>,
) -> RecordBatch {
    let fields: Vec<Field> = product
        .columns
        .iter()
        .map(|c| Field::new(&c.lake, c.kind.data_type(), !c.required))
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let epoch = chrono::NaiveDate::from_ymd_opt(1970, 1, 1).expect("epoch");
    let batches: Vec<RecordBatch> = parts
        .iter()
        .map(|(date, b)| {
            let cols: Vec<ArrayRef> = product
                .columns
                .iter()
                .map(|c| match b.column_by_name(&c.lake) {
                    Some(a) if c.stored => a.clone(),
                    _ => {
                        let days = (*date - epoch).num_days() as i32;
                        Arc::new(Date32Array::from(vec![days; b.num_rows()])) as ArrayRef
                    }
                })
                .collect();
            RecordBatch::try_new(schema.clone(), cols).expect("schema matches")
        })
        .collect();
    arrow::compute::concat_batches(&schema, &batches).expect("same schema")
}

/// One value as JSON: numbers as numbers, instants in RFC 3339, days as `YYYY-MM-DD`.
fn json_value(kind: Kind, a: &ArrayRef, row: usize) -> serde_json::Value {
    use serde_json::Value;
    if a.is_null(row) {
        return Value::Null;
    }
    match kind {
        Kind::Utf8 => Value::from(a.as_string::<i32>().value(row)),
        Kind::Int8 => Value::from(a.as_primitive::<Int8Type>().value(row)),
        Kind::Int32 => Value::from(a.as_primitive::<Int32Type>().value(row)),
        Kind::Int64 => Value::from(a.as_primitive::<Int64Type>().value(row)),
        Kind::Float64 => Value::from(a.as_primitive::<Float64Type>().value(row)),
        Kind::Timestamp | Kind::Date => Value::from(text(kind, a, row)),
    }
}

/// One value as text, as the CSV output writes it.
fn text(kind: Kind, a: &ArrayRef, row: usize) -> String {
    if a.is_null(row) {
        return String::new();
    }
    match kind {
        Kind::Timestamp => chrono::DateTime::from_timestamp_micros(
            a.as_primitive::<TimestampMicrosecondType>().value(row),
        )
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default(),
        Kind::Date => a
            .as_primitive::<Date32Type>()
            .value_as_date(row)
            .map(|d| d.to_string())
            .unwrap_or_default(),
        Kind::Utf8 => a.as_string::<i32>().value(row).to_string(),
        _ => match a.data_type() {
            DataType::Float64 => a.as_primitive::<Float64Type>().value(row).to_string(),
            DataType::Int8 => a.as_primitive::<Int8Type>().value(row).to_string(),
            DataType::Int32 => a.as_primitive::<Int32Type>().value(row).to_string(),
            _ => a.as_primitive::<Int64Type>().value(row).to_string(),
        },
    }
}

fn json_rows(product: Product, b: &RecordBatch) -> serde_json::Value {
    let rows = (0..b.num_rows())
        .map(|r| {
            let obj: serde_json::Map<String, serde_json::Value> = product
                .columns
                .iter()
                .zip(b.columns())
                .map(|(c, a)| (c.lake.clone(), json_value(c.kind, a, r)))
                .collect();
            serde_json::Value::Object(obj)
        })
        .collect();
    serde_json::Value::Array(rows)
}

fn write_csv(product: Product, b: &RecordBatch) -> Result<(), csv::Error> {
    let mut w = csv::Writer::from_writer(std::io::stdout());
    w.write_record(product.columns.iter().map(|c| c.lake.as_str()))?;
    for r in 0..b.num_rows() {
        w.write_record(
            product
                .columns
                .iter()
                .zip(b.columns())
                .map(|(c, a)| text(c.kind, a, r)),
        )?;
    }
    w.flush()?;
    Ok(())
}
