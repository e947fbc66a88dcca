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

/// The columns a row's content is: everything but the lineage (`_job_id`, `_ingested_at`), so a
/// day served again unchanged hashes the same whichever job brought it.
const CONTENT: [&str; 6] = [
    "service_point_id",
    "issue_id",
    "status",
    "reason",
    "work_order_id",
    "phase",
];

/// A hash of each status day's rows in `b`, independent of their order (a wrapping sum of
/// per-row hashes, so a multiset: a row twice counts twice). Equal hashes for a day in a
/// partition mean the day's rows there are the same: the partition need not be rewritten.
pub fn content_hashes(b: &RecordBatch) -> BTreeMap<NaiveDate, u64> {
    use std::hash::BuildHasher;
    let texts: Vec<&StringArray> = CONTENT[..5].iter().map(|c| text_column(b, c)).collect();
    let phase = b
        .column_by_name(CONTENT[5])
        .and_then(|c| c.as_any().downcast_ref::<arrow::array::Int8Array>())
        .expect("lake batches have an Int8 phase column");
    let ts = status_column(b);
    let seed = foldhash::quality::FixedState::with_seed(0x0063_6f6e_7465_6e74);
    let mut out: BTreeMap<NaiveDate, u64> = BTreeMap::new();
    for i in 0..b.num_rows() {
        let text: [&str; 5] = std::array::from_fn(|k| texts[k].value(i));
        let h = seed.hash_one((text, phase.value(i), ts.value(i)));
        let sum = out
            .entry(crate::normalize::time::day_of_micros(ts.value(i)))
            .or_insert(0);
        *sum = sum.wrapping_add(h);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_support::batch;

    #[test]
    fn a_days_hash_ignores_order_and_lineage_and_sees_any_change() {
        const DAY: i64 = 86_400_000_000;
        let rows = [
            ("WO1", "a", 10, "job-1"),
            ("WO2", "b", 20, "job-1"),
            ("WO3", "c", DAY + 5, "job-1"),
        ];
        let h = content_hashes(&batch(&rows));
        assert_eq!(h.len(), 2);
        let mut again = rows;
        again.reverse();
        for r in &mut again {
            r.3 = "job-2";
        }
        assert_eq!(
            content_hashes(&batch(&again)),
            h,
            "order and lineage do not count"
        );
        let mut edited = rows;
        edited[1].1 = "B";
        let e = content_hashes(&batch(&edited));
        assert_ne!(
            e.values().next(),
            h.values().next(),
            "an edited reason counts"
        );
        assert_eq!(
            e.values().nth(1),
            h.values().nth(1),
            "the other day is untouched"
        );
        let twice = content_hashes(&batch(&[rows[0], rows[0], rows[2]]));
        assert_ne!(
            twice.values().next(),
            h.values().next(),
            "a row twice is not a row once"
        );
    }
}
