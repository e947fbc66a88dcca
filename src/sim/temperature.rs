//! Advanced Temperature Statistics as the simulator serves them: an hourly series per meter,
//! deterministic from a seed, with the vendor's quirks (dpss-api.md, "ATM-ST"): the hour's end
//! as `HH:59:59`, a later `ReceivedTime`, timestamps as `…T00:30:34:000Z`, `….000Z` or `…Z`,
//! `--` and empty transformer ids, mostly empty feeder ids, numbers as strings in some JSON
//! exports, hours that arrive late (after their day closed), an hour re-delivered later with a
//! corrected value, and a few invalid rows. A request for `[D, D + 1]` serves both days (the
//! page does not say whether the end is inclusive; serving it is the harder case for a client).

use axum::http::StatusCode;
use axum::response::Response;
use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use serde_json::{Map, Value, json};

use super::data::mix;
use super::record::{ColType, Columns, Record, Value as Cell};
use super::served::{Query, Served, supplied};
use super::{SimState, problem};

const NAMES: [[&str; 11]; 3] = [
    // The sample export's header, verbatim.
    [
        "ReceivedTime",
        "ServicePointID",
        "MeterID",
        "MeterNumber",
        "ElectronicSerialNumber",
        "TransformerId",
        "PremiseId",
        "FeederId",
        "MeasurementTime",
        "AvgTemp",
        "MaxTemp",
    ],
    [
        "receivedTime",
        "servicePointId",
        "meterId",
        "meterNumber",
        "electronicSerialNumber",
        "transformerId",
        "premiseId",
        "feederId",
        "measurementTime",
        "avgTemp",
        "maxTemp",
    ],
    [
        "RECEIVEDTIME",
        "SERVICEPOINTID",
        "METERID",
        "METERNUMBER",
        "ELECTRONICSERIALNUMBER",
        "TRANSFORMERID",
        "PREMISEID",
        "FEEDERID",
        "MEASUREMENTTIME",
        "AVGTEMP",
        "MAXTEMP",
    ],
];

/// Tokens of the batch request, as discovery lists them (dpss-api.md §8).
const TOKENS: [(&str, &str, bool); 12] = [
    ("StartMeasurementDate", "DATE", false),
    ("EndMeasurementDate", "DATE", false),
    ("StartReceivedDateTime", "TIMESTAMP", false),
    ("EndReceivedDateTime", "TIMESTAMP", false),
    ("Device", "STRING", true),
    ("ElectronicSerialNumber", "STRING", true),
    ("Meter", "STRING", true),
    ("MeterNumber", "STRING", true),
    ("ServicePoint", "STRING", true),
    ("Premises", "STRING", true),
    ("Transformer", "STRING", true),
    ("Feeder", "STRING", true),
];

/// Why a generated hour is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TempDefect {
    BadMeasurementTime,
    EmptyMeterId,
    NotANumber,
    NoReceivedTime,
}

/// One hour of one meter, as served.
#[derive(Debug, Clone, PartialEq)]
pub struct TempRow {
    pub received_time: DateTime<Utc>,
    pub service_point_id: String,
    pub meter_id: String,
    pub meter_number: Option<String>,
    pub electronic_serial_number: Option<String>,
    /// `None` is served as `--` or as nothing.
    pub transformer_id: Option<String>,
    pub premise_id: Option<String>,
    pub feeder_id: Option<String>,
    pub measurement_time: DateTime<Utc>,
    pub avg_temp: f64,
    pub max_temp: f64,
    /// How the timestamps are written (0: `:000Z`, 1: `.000Z`, 2: `Z`).
    form: u64,
    /// How a missing transformer id is written: `--`, or nothing.
    dashes: bool,
    pub defect: Option<TempDefect>,
}

fn print(t: DateTime<Utc>, form: u64) -> String {
    match form % 3 {
        0 => format!("{}:000Z", t.format("%Y-%m-%dT%H:%M:%S")),
        1 => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        _ => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
    }
}

impl TempRow {
    pub fn is_valid(&self) -> bool {
        self.defect.is_none()
    }

    /// The identity of DESIGN.md: (meter_id, measurement_time).
    pub fn identity(&self) -> (String, i64) {
        (
            self.meter_id.clone(),
            self.measurement_time.timestamp_micros(),
        )
    }

    pub fn measurement_day(&self) -> NaiveDate {
        self.measurement_time.date_naive()
    }

    fn record(&self) -> Record {
        let text = |v: &Option<String>| v.clone().map_or(Cell::Null, Cell::Text);
        let measurement = match self.defect {
            Some(TempDefect::BadMeasurementTime) => Cell::Time {
                micros: None,
                text: format!("{}T24:59:59:000Z", self.measurement_time.format("%Y-%m-%d")),
            },
            _ => Cell::Time {
                micros: Some(self.measurement_time.timestamp_micros()),
                text: print(self.measurement_time, self.form),
            },
        };
        let received = match self.defect {
            Some(TempDefect::NoReceivedTime) => Cell::Null,
            _ => Cell::Time {
                micros: Some(self.received_time.timestamp_micros()),
                text: print(self.received_time, self.form + 1),
            },
        };
        let avg = match self.defect {
            Some(TempDefect::NotANumber) => Cell::Text("NaN".into()),
            _ => Cell::Float(self.avg_temp),
        };
        Record {
            values: vec![
                received,
                Cell::Text(self.service_point_id.clone()),
                match self.defect {
                    Some(TempDefect::EmptyMeterId) => Cell::Text(String::new()),
                    _ => Cell::Text(self.meter_id.clone()),
                },
                text(&self.meter_number),
                text(&self.electronic_serial_number),
                match &self.transformer_id {
                    Some(t) => Cell::Text(t.clone()),
                    None if self.dashes => Cell::Text("--".into()),
                    None => Cell::Null,
                },
                text(&self.premise_id),
                text(&self.feeder_id),
                measurement,
                avg,
                Cell::Float(self.max_temp),
            ],
            part_key: mix(self
                .meter_id
                .bytes()
                .fold(7, |a, b| a.rotate_left(5) ^ b as u64)),
        }
    }
}

/// The hourly series of `meters` meters, from a seed.
#[derive(Debug, Clone, Copy)]
pub struct Generator {
    seed: u64,
    meters: u64,
}

/// The temperature statistics product.
pub struct Temperature {
    pub(super) data: Generator,
    columns: Columns,
}

impl Temperature {
    /// About `rows_per_day` hourly rows a day: a meter gives 24.
    pub(super) fn new(seed: u64, rows_per_day: u64) -> Self {
        Self {
            data: Generator {
                seed: mix(seed ^ 0x7465_6d70),
                meters: (rows_per_day / 24).max(1),
            },
            columns: Columns {
                spellings: NAMES
                    .iter()
                    .map(|n| n.iter().map(|s| s.to_string()).collect())
                    .collect(),
                types: vec![
                    ColType::Timestamp,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Timestamp,
                    ColType::Float64,
                    ColType::Float64,
                ],
            },
        }
    }
}

impl Generator {
    fn h(&self, parts: &[u64]) -> u64 {
        parts.iter().fold(self.seed, |acc, p| mix(acc ^ p))
    }

    /// The rows of measurement day `day`, in the order an export serves them, re-deliveries
    /// included; rows received after `as_of` do not exist yet.
    pub fn rows_for_day(
        &self,
        day: NaiveDate,
        as_of: DateTime<Utc>,
        mut emit: impl FnMut(TempRow),
    ) {
        let ordinal = day.format("%Y%m%d").to_string().parse::<u64>().unwrap_or(0);
        let start = Utc.from_utc_datetime(&day.and_hms_opt(0, 59, 59).expect("a time"));
        for m in 0..self.meters {
            let meter = format!("J{:07}", 4_246_176 + m * 37);
            for hour in 0..24u64 {
                let h = self.h(&[ordinal, m, hour]);
                let measurement_time = start + Duration::hours(hour as i64);
                // Most hours arrive within two hours; one in twenty only the next day or after.
                let delay = if h.is_multiple_of(20) {
                    Duration::minutes(26 * 60 + (h >> 8) as i64 % (24 * 60))
                } else {
                    Duration::minutes(30 + (h >> 8) as i64 % 90)
                };
                let received_time = measurement_time + delay + Duration::seconds(35);
                let base = 38.0
                    + ((hour as f64) / 24.0 * std::f64::consts::TAU).sin() * 8.0
                    + (m % 7) as f64;
                let avg_temp = (base * 2.0).round() / 2.0;
                let max_temp = avg_temp + ((h >> 16) % 6) as f64 * 0.5;
                let defect = (h >> 24).is_multiple_of(97).then_some(match (h >> 32) % 4 {
                    0 => TempDefect::BadMeasurementTime,
                    1 => TempDefect::EmptyMeterId,
                    2 => TempDefect::NotANumber,
                    _ => TempDefect::NoReceivedTime,
                });
                let row = TempRow {
                    received_time,
                    service_point_id: format!("MF0-{:02}", m),
                    meter_id: meter.clone(),
                    meter_number: (m % 6 != 5).then(|| meter.clone()),
                    electronic_serial_number: Some(format!(
                        "2.16.840.1.114416.34.{}",
                        357_478_112 + m
                    )),
                    transformer_id: (m % 5 != 0 && m % 7 != 3).then(|| format!("LABTX{}", m % 9)),
                    premise_id: Some(format!("T50-D{m:03}")),
                    feeder_id: (m % 4 == 1).then(|| format!("FDR-{}", m % 3)),
                    measurement_time,
                    avg_temp,
                    max_temp,
                    form: h >> 40,
                    dashes: m % 5 == 0,
                    defect,
                };
                if row.received_time > as_of {
                    continue;
                }
                // One hour in forty is served again later with a corrected value.
                let corrected = defect.is_none() && (h >> 48).is_multiple_of(40);
                let again = corrected.then(|| TempRow {
                    received_time: row.received_time + Duration::hours(6 + ((h >> 52) % 24) as i64),
                    avg_temp: row.avg_temp + 0.5,
                    ..row.clone()
                });
                emit(row);
                if let Some(again) = again.filter(|r| r.received_time <= as_of) {
                    emit(again);
                }
            }
        }
    }
}

/// What a request asked of the temperature product.
#[derive(Debug, Clone, Default)]
struct TempQuery {
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    received_from: Option<DateTime<Utc>>,
    received_to: Option<DateTime<Utc>>,
    /// (column position, the values it must be one of).
    lists: Vec<(usize, Vec<String>)>,
    data: Option<Generator>,
}

impl Query for TempQuery {
    fn day(&self) -> Option<NaiveDate> {
        self.from
    }

    fn rows(
        &self,
        _: &SimState,
        today: NaiveDate,
        as_of: DateTime<Utc>,
        emit: &mut dyn FnMut(Record) -> bool,
    ) {
        let data = self.data.expect("a query is made by its product");
        let first = super::data::Dataset::available_from(today);
        let (lo, hi) = (
            self.from.unwrap_or(first).max(first),
            self.to.unwrap_or(today).min(today),
        );
        let mut day = lo;
        let mut go_on = true;
        while day <= hi && go_on {
            data.rows_for_day(day, as_of, |r| {
                if go_on && self.matches(&r) {
                    go_on = emit(r.record());
                }
            });
            day = day.succ_opt().expect("dates stay in range");
        }
    }
}

impl TempQuery {
    fn matches(&self, r: &TempRow) -> bool {
        let fields = [
            Some(&r.meter_id),
            r.meter_number.as_ref(),
            Some(&r.service_point_id),
            r.electronic_serial_number.as_ref(),
            r.premise_id.as_ref(),
            r.transformer_id.as_ref(),
            r.feeder_id.as_ref(),
        ];
        self.received_from.is_none_or(|t| r.received_time >= t)
            && self.received_to.is_none_or(|t| r.received_time <= t)
            && self
                .lists
                .iter()
                .all(|(c, values)| fields[*c].is_some_and(|v| values.contains(v)))
    }
}

impl Served for Temperature {
    fn columns(&self) -> &Columns {
        &self.columns
    }

    fn discovery(&self) -> Vec<(String, &'static str, bool)> {
        TOKENS
            .iter()
            .map(|(n, t, l)| (n.to_string(), *t, *l))
            .collect()
    }

    fn day_token(&self) -> &str {
        "StartMeasurementDate"
    }

    fn query(&self, tokens: &Map<String, Value>) -> Result<Box<dyn Query>, Box<Response>> {
        let mut q = TempQuery {
            data: Some(self.data),
            ..Default::default()
        };
        let mut errors = Map::new();
        let list = [
            "Meter",
            "MeterNumber",
            "ServicePoint",
            "ElectronicSerialNumber",
            "Premises",
            "Transformer",
            "Feeder",
        ];
        for (name, text) in supplied(tokens) {
            let Some((canonical, _, _)) =
                TOKENS.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
            else {
                errors.insert(name.clone(), json!(["unknown token for this data product"]));
                continue;
            };
            let day = || NaiveDate::parse_from_str(&text, "%Y-%m-%d").ok();
            let instant = || {
                DateTime::parse_from_rfc3339(&text)
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            };
            match *canonical {
                "StartMeasurementDate" => q.from = day(),
                "EndMeasurementDate" => q.to = day(),
                "StartReceivedDateTime" => q.received_from = instant(),
                "EndReceivedDateTime" => q.received_to = instant(),
                // A device is a meter, here.
                "Device" => q.lists.push((0, split(&text))),
                other => {
                    let at = list.iter().position(|n| *n == other).expect("a list token");
                    q.lists.push((at, split(&text)));
                    continue;
                }
            }
            let parsed = match *canonical {
                "StartMeasurementDate" => q.from.is_some(),
                "EndMeasurementDate" => q.to.is_some(),
                "StartReceivedDateTime" => q.received_from.is_some(),
                "EndReceivedDateTime" => q.received_to.is_some(),
                _ => true,
            };
            if !parsed {
                errors.insert(
                    name.clone(),
                    json!(["expected YYYY-MM-DD (a date) or an RFC 3339 instant"]),
                );
            }
        }
        if !errors.is_empty() {
            return Err(Box::new(problem(
                StatusCode::BAD_REQUEST,
                "One or more validation errors occurred.",
                Value::Object(errors),
            )));
        }
        Ok(Box::new(q))
    }
}

fn split(text: &str) -> Vec<String> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// The rows a consumer should end up with: valid ones, each identity once, the copy received
/// last (ties to the one served last), as the product's `latest` column says.
pub fn expected_valid(rows: impl IntoIterator<Item = TempRow>) -> Vec<TempRow> {
    let mut by_identity: std::collections::HashMap<(String, i64), TempRow> =
        std::collections::HashMap::new();
    for r in rows.into_iter().filter(TempRow::is_valid) {
        match by_identity.get(&r.identity()) {
            Some(kept) if kept.received_time > r.received_time => {}
            _ => {
                by_identity.insert(r.identity(), r);
            }
        }
    }
    let mut out: Vec<TempRow> = by_identity.into_values().collect();
    out.sort_by_key(|r| r.identity());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hours_late_hours_corrections_and_defects() {
        let t = Temperature::new(1, 24 * 40).data;
        let day: NaiveDate = "2026-03-10".parse().unwrap();
        let far = Utc::now() + Duration::days(3650);
        let mut rows = Vec::new();
        t.rows_for_day(day, far, |r| rows.push(r));
        assert!(rows.len() >= 24 * 40, "{}", rows.len());
        assert!(rows.iter().all(|r| r.measurement_day() == day));
        assert!(
            rows.iter()
                .all(|r| r.measurement_time.format("%M:%S").to_string() == "59:59")
        );
        let late = rows
            .iter()
            .filter(|r| r.received_time.date_naive() > day + Duration::days(1))
            .count();
        assert!(late > 0, "some hours arrive after their day closed");
        let valid = expected_valid(rows.clone());
        let served_valid = rows.iter().filter(|r| r.is_valid()).count();
        assert!(valid.len() < served_valid, "some hour is served twice");
        assert!(rows.iter().any(|r| !r.is_valid()));
        // As of the day's end, the late hours and later corrections do not exist yet.
        let end = Utc.from_utc_datetime(&(day + Duration::days(1)).and_hms_opt(0, 0, 0).unwrap());
        let mut early = 0;
        t.rows_for_day(day, end, |_| early += 1);
        assert!(early < rows.len());
        let quirks: Vec<String> = rows.iter().map(|r| r.record().values[8].text()).collect();
        assert!(quirks.iter().any(|q| q.ends_with(":000Z")));
        assert!(quirks.iter().any(|q| q.ends_with(".000Z")));
    }
}
