//! HID work order details as the simulator serves them: its rows (`data.rs`), its tokens
//! (`filter.rs`), and the export's columns in the spellings the vendor's examples mix
//! (`IssueID`, `Issueid`, camel case), typed as a Spark job would write them.

use std::sync::{Arc, Mutex};

use axum::response::Response;
use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::data::{Dataset, Defect, SimRow, mix};
use super::filter::{Filter, TOKENS, parse_filter};
use super::record::{ColType, Columns, Record, Value as Cell};
use super::served::{Query, Served};
use super::{STRAY_ROWS, SimState};

const NAMES: [[&str; 8]; 3] = [
    [
        "ServicePointId",
        "Phase",
        "IssueId",
        "Status",
        "StatusDatetime",
        "Reason",
        "EventDate",
        "WorkOrderId",
    ],
    [
        "ServicePointId",
        "Phase",
        "IssueID",
        "Status",
        "StatusDateTime",
        "Reason",
        "EventDate",
        "WorkOrderID",
    ],
    [
        "servicePointId",
        "phase",
        "Issueid",
        "status",
        "statusDatetime",
        "reason",
        "eventDate",
        "workOrderId",
    ],
];

/// HID work orders, with the rows tests inject (late updates) beside the generated ones.
pub struct Hid {
    pub(super) dataset: Dataset,
    pub(super) extra: Arc<Mutex<Vec<SimRow>>>,
    columns: Columns,
    stray_rows: bool,
}

impl Hid {
    pub(super) fn new(dataset: Dataset, stray_rows: bool) -> Self {
        Self {
            dataset,
            extra: Arc::default(),
            columns: Columns {
                spellings: NAMES
                    .iter()
                    .map(|n| n.iter().map(|s| s.to_string()).collect())
                    .collect(),
                types: vec![
                    ColType::Utf8,
                    ColType::Int32,
                    ColType::Utf8,
                    ColType::Utf8,
                    ColType::Timestamp,
                    ColType::Utf8,
                    ColType::Date,
                    ColType::Utf8,
                ],
            },
            stray_rows,
        }
    }
}

/// A row as an export writes it.
pub fn record(r: &SimRow) -> Record {
    let micros =
        (r.defect != Some(Defect::BadTimestamp)).then(|| r.status_datetime.timestamp_micros());
    Record {
        values: vec![
            Cell::Text(r.service_point_id.clone()),
            Cell::Int(r.phase),
            Cell::Text(r.issue_id.clone()),
            Cell::Text(r.status.to_string()),
            Cell::Time {
                micros,
                text: r.status_datetime_text(),
            },
            Cell::Text(r.reason.clone()),
            Cell::Date(r.event_date),
            Cell::Text(r.work_order_id.clone()),
        ],
        // A work order's rows stay in one part, so a duplicate's later copy is also later.
        part_key: mix(r.work_order_id.len() as u64 ^ hash_str(&r.work_order_id)),
    }
}

fn hash_str(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

struct HidQuery {
    filter: Filter,
    dataset: Dataset,
    extra: Vec<SimRow>,
    strays: bool,
}

impl Query for HidQuery {
    fn day(&self) -> Option<NaiveDate> {
        self.filter.day
    }

    fn rows(
        &self,
        _: &SimState,
        today: NaiveDate,
        as_of: DateTime<Utc>,
        emit: &mut dyn FnMut(Record) -> bool,
    ) {
        self.filter
            .for_each_row(&self.dataset, today, as_of, &self.extra, |r| {
                emit(record(&r))
            });
        // A vendor filtering by local time serves a few rows of the day before.
        let Some(day) = self.filter.day.filter(|_| self.strays) else {
            return;
        };
        let before = Filter {
            day: day.pred_opt(),
            ..Default::default()
        };
        let mut left = STRAY_ROWS;
        before.for_each_row(&self.dataset, today, as_of, &self.extra, |r| {
            if r.is_valid() && left > 0 {
                left -= 1;
                return emit(record(&r));
            }
            left > 0
        });
    }
}

impl Served for Hid {
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
        "StatusDatetime"
    }

    fn query(&self, tokens: &Map<String, Value>) -> Result<Box<dyn Query>, Box<Response>> {
        Ok(Box::new(HidQuery {
            filter: parse_filter(tokens)?,
            dataset: self.dataset.clone(),
            // The result is frozen now: what exists at the request is what the export holds.
            extra: self.extra.lock().expect("extra").clone(),
            strays: self.stray_rows,
        }))
    }
}
