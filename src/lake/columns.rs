//! Reading the lake's columns back: the status timestamps, the identity of DESIGN.md, rows per
//! status day.

use std::collections::BTreeMap;

use arrow::array::{RecordBatch, StringArray, TimestampMicrosecondArray};
use chrono::NaiveDate;

use crate::normalize::time::rows_per_day;

pub(super) fn status_column(b: &RecordBatch) -> &TimestampMicrosecondArray {
    b.column_by_name("status_datetime")
        .and_then(|c| c.as_any().downcast_ref::<TimestampMicrosecondArray>())
        .expect("lake batches have a status_datetime timestamp column")
}

pub(super) fn text_column<'a>(b: &'a RecordBatch, name: &str) -> &'a StringArray {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("text column of the lake or quarantine schema")
}

/// The identity of DESIGN.md: (work_order_id, issue_id, status, status_datetime in µs).
pub type Identity = (String, String, String, i64);

/// The identities of a lake batch, row by row.
pub fn identities(b: &RecordBatch) -> Vec<Identity> {
    let (wo, issue, status) = (
        text_column(b, "work_order_id"),
        text_column(b, "issue_id"),
        text_column(b, "status"),
    );
    let ts = status_column(b);
    (0..b.num_rows())
        .map(|i| {
            (
                wo.value(i).to_string(),
                issue.value(i).to_string(),
                status.value(i).to_string(),
                ts.value(i),
            )
        })
        .collect()
}

/// Rows of one lake batch per status day.
pub fn status_day_rows(b: &RecordBatch) -> BTreeMap<NaiveDate, u64> {
    rows_per_day(status_column(b).values())
}

/// Rows of `batches` grouped by status day (for `status` and tests).
pub fn count_by_status_day(batches: &[(NaiveDate, RecordBatch)]) -> BTreeMap<NaiveDate, u64> {
    let mut out = BTreeMap::new();
    for (_, b) in batches {
        for (d, n) in status_day_rows(b) {
            *out.entry(d).or_insert(0) += n;
        }
    }
    out
}
