//! Any declared product served from its declaration: values of the declared types (a
//! timestamp or date on the row's day where the column carries the window or the partition),
//! identities unique per row, one row in fifty invalid (a required value left empty). The
//! window tokens are read as the declaration says (each token's day is the window's plus its
//! offset), so an operator's `[catalog.<name>]` can be synced against the simulator end to end.

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::data::mix;
use super::record::{ColType, Columns, Record, Value as Cell};
use super::served::{Query, Served, supplied};
use super::{SimState, problem};
use crate::product::{Kind, Product};

/// A product served from its declaration, `rows_per_day` rows a day.
pub struct Declared {
    product: Product,
    rows_per_day: u64,
    seed: u64,
    columns: Columns,
}

impl Declared {
    pub(super) fn new(product: Product, seed: u64, rows_per_day: u64) -> Self {
        let names = |f: &dyn Fn(&str, &str) -> String| {
            product
                .columns
                .iter()
                .map(|c| f(&c.vendor, &c.lake))
                .collect::<Vec<_>>()
        };
        Self {
            product,
            rows_per_day: rows_per_day.max(1),
            seed: mix(seed ^ 0x6465_636c),
            columns: Columns {
                spellings: vec![
                    names(&|v, _| v.to_string()),
                    names(&|_, l| l.to_string()),
                    names(&|v, _| v.to_ascii_lowercase()),
                ],
                types: product
                    .columns
                    .iter()
                    .map(|c| match c.kind {
                        Kind::Utf8 => ColType::Utf8,
                        Kind::Int8 | Kind::Int32 | Kind::Int64 => ColType::Int32,
                        Kind::Float64 => ColType::Float64,
                        Kind::Timestamp => ColType::Timestamp,
                        Kind::Date => ColType::Date,
                    })
                    .collect(),
            },
        }
    }
}

/// What a generated value of `product` is on `day`, row `k`.
fn value(product: Product, c: usize, day: NaiveDate, k: u64, h: u64) -> Cell {
    let decl = &product.columns[c];
    let midnight = Utc.from_utc_datetime(&day.and_hms_opt(0, 0, 0).expect("midnight"));
    match decl.kind {
        Kind::Utf8 => Cell::Text(format!("{}-{}-{k}", decl.lake, day.format("%Y%m%d"))),
        Kind::Int8 | Kind::Int32 | Kind::Int64 => {
            let (lo, hi) = decl.range.unwrap_or((1.0, 100.0));
            let span = (hi - lo).max(0.0) as u64 + 1;
            Cell::Int(lo as i64 + (h % span) as i64)
        }
        Kind::Float64 => {
            let (lo, hi) = decl.range.unwrap_or((0.0, 100.0));
            Cell::Float(lo + (h % 1000) as f64 / 1000.0 * (hi - lo))
        }
        Kind::Timestamp => {
            // Spread over the day, in order of `k`: the window's own column falls on its day.
            let t = midnight + Duration::seconds((k * 86_399 / 10_000) as i64 + (k % 60) as i64);
            Cell::Time {
                micros: Some(t.timestamp_micros()),
                text: t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
            }
        }
        Kind::Date => Cell::Date(day),
    }
}

struct DeclaredQuery {
    product: Product,
    day: Option<NaiveDate>,
    rows_per_day: u64,
    seed: u64,
}

impl Query for DeclaredQuery {
    fn day(&self) -> Option<NaiveDate> {
        self.day
    }

    fn rows(
        &self,
        _: &SimState,
        today: NaiveDate,
        _as_of: DateTime<Utc>,
        emit: &mut dyn FnMut(Record) -> bool,
    ) {
        let first = super::data::Dataset::available_from(today);
        let (lo, hi) = match self.day {
            Some(d) => (d.max(first), d.min(today)),
            None => (first, today),
        };
        let mut day = lo;
        while day <= hi {
            for k in 0..self.rows_per_day {
                let h = mix(self.seed
                    ^ (day.format("%Y%m%d").to_string().parse::<u64>().unwrap_or(0) << 20)
                    ^ k);
                let mut values: Vec<Cell> = (0..self.product.columns.len())
                    .map(|c| value(self.product, c, day, k, mix(h ^ c as u64)))
                    .collect();
                if h % 50 == 7 {
                    // An invalid row: the first required text column left empty.
                    if let Some(c) = self
                        .product
                        .columns
                        .iter()
                        .position(|c| c.required && c.kind == Kind::Utf8)
                    {
                        values[c] = Cell::Text(String::new());
                    }
                }
                if !emit(Record {
                    values,
                    part_key: h,
                }) {
                    return;
                }
            }
            day = day.succ_opt().expect("dates stay in range");
        }
    }
}

impl Served for Declared {
    fn columns(&self) -> &Columns {
        &self.columns
    }

    fn discovery(&self) -> Vec<(String, &'static str, bool)> {
        let mut out: Vec<(String, &'static str, bool)> = self
            .product
            .window_tokens
            .iter()
            .map(|t| (t.name.clone(), "DATE", false))
            .collect();
        out.extend(self.product.filters.iter().map(|f| {
            (
                f.token.clone(),
                if f.time { "TIMESTAMP" } else { "STRING" },
                f.list,
            )
        }));
        out
    }

    fn day_token(&self) -> &str {
        &self.product.window_tokens[0].name
    }

    fn query(&self, tokens: &Map<String, Value>) -> Result<Box<dyn Query>, Box<Response>> {
        let mut day = None;
        let mut errors = Map::new();
        for (name, text) in supplied(tokens) {
            if let Some(t) = self
                .product
                .window_tokens
                .iter()
                .find(|t| t.name.eq_ignore_ascii_case(name))
            {
                match NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
                    // The window's day is the token's less its offset; the first token sets it.
                    Ok(d) => {
                        day.get_or_insert(d - Duration::days(t.offset_days));
                    }
                    Err(_) => {
                        errors.insert(name.clone(), json!(["expected YYYY-MM-DD"]));
                    }
                }
            } else if !self
                .product
                .filters
                .iter()
                .any(|f| f.token.eq_ignore_ascii_case(name))
            {
                errors.insert(name.clone(), json!(["unknown token for this data product"]));
            }
        }
        if !errors.is_empty() {
            return Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                "One or more validation errors occurred.",
                Value::Object(errors),
            )));
        }
        Ok(Box::new(DeclaredQuery {
            product: self.product,
            day,
            rows_per_day: self.rows_per_day,
            seed: self.seed,
        }))
    }
}
