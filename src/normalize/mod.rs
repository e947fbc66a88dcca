//! Normalizing decoded rows into the lake schema: typed, validated, de-duplicated, grouped by
//! `event_date` partition. A row that fails validation goes to the quarantine with its raw values
//! and the reason; nothing is dropped silently, and the counts always reconcile:
//! read = written + quarantined + duplicates.

mod bloom;
mod buffer;
mod dedupe;
mod quarantine;
mod rows;
mod spill;
pub mod time;
mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::record_batch::RecordBatch;
use chrono::{DateTime, NaiveDate, Utc};

use buffer::Row;
use quarantine::Quarantine;
pub use quarantine::{QuarantineRows, quarantine_schema};
use rows::RowStore;
pub use rows::{Rows, RowsError};
pub use spill::SpillError;
use validate::cells;
pub use validate::{Checked, check};

use crate::decode::Cell;
use crate::model::Counts;
use crate::product::{Column, Product};

/// `text` `n` times, as a lineage column is: built at its final size, where collecting from an
/// iterator grew the values buffer by doubling, a copy at each step, for every partition.
fn repeated(text: &str, n: usize) -> arrow::array::StringArray {
    arrow::array::StringArray::new(
        arrow::buffer::OffsetBuffer::from_lengths(std::iter::repeat_n(text.len(), n)),
        text.repeat(n).into_bytes().into(),
        None,
    )
}

/// Rows whose duplicate-filter blocks are fetched together: 16 KiB of blocks.
const PREFETCH_ROWS: usize = 256;

/// Memory the normalizer may hold in buffered rows before it spills them to disk.
pub const ROW_BUDGET: usize = 64 << 20;

/// A job's rows, ready for the lake, loaded one partition at a time.
pub struct Normalized {
    pub rows: Rows,
    pub quarantine: QuarantineRows,
    /// Rows read and quarantined; written and duplicates are known once partitions are loaded.
    pub counts: Counts,
    /// Status days of the valid rows.
    pub status_days: BTreeSet<NaiveDate>,
    product: Product,
    job_id: Arc<str>,
    ingested_at: i64,
}

impl Normalized {
    /// One partition in the lake schema, with the number of superseded copies left out.
    pub fn load(&self, date: NaiveDate) -> Result<Option<(RecordBatch, u64)>, RowsError> {
        self.rows
            .load(self.product, date, &self.job_id, self.ingested_at)
    }

    /// Every partition at once, with the final counts: for small results (on-demand, tests).
    pub fn into_batches(self) -> Result<(BTreeMap<NaiveDate, RecordBatch>, Counts), RowsError> {
        let mut counts = self.counts;
        let mut out = BTreeMap::new();
        for date in self.rows.partitions.keys() {
            if let Some((batch, dropped)) = self.load(*date)? {
                counts.written += batch.num_rows() as u64;
                counts.duplicates += dropped;
                if batch.num_rows() > 0 {
                    out.insert(*date, batch);
                }
            }
        }
        Ok((out, counts))
    }
}

pub struct Normalizer {
    product: Product,
    job_id: Arc<str>,
    ingested_at: i64,
    rows: RowStore,
    quarantine: Quarantine,
    counts: Counts,
    failure: Option<RowsError>,
}

impl Normalizer {
    /// `scratch` holds spill files; `expected_rows` (a rough guess is fine) sizes the duplicate
    /// filter.
    pub fn new(
        product: Product,
        job_id: &str,
        ingested_at: DateTime<Utc>,
        scratch: &Path,
        expected_rows: u64,
    ) -> Self {
        Self::with_budget(
            product,
            job_id,
            ingested_at,
            scratch,
            expected_rows,
            ROW_BUDGET,
        )
    }

    pub fn with_budget(
        product: Product,
        job_id: &str,
        ingested_at: DateTime<Utc>,
        scratch: &Path,
        expected_rows: u64,
        budget: usize,
    ) -> Self {
        Self {
            product,
            job_id: Arc::from(job_id),
            ingested_at: ingested_at.timestamp_micros(),
            rows: RowStore::new(scratch, budget, expected_rows),
            quarantine: Quarantine::new(
                scratch,
                quarantine::QUARANTINE_BUDGET.min(budget),
                Arc::from(job_id),
                ingested_at.timestamp_micros(),
            ),
            counts: Counts::default(),
            failure: None,
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Quarantines a checked batch's rejected rows and buffers its accepted ones, in order.
    pub fn push(&mut self, checked: &Checked) {
        let batch = &checked.batch;
        self.counts.read += batch.num_rows() as u64;
        for r in &checked.rejected {
            let raw = r.error.and_then(|i| batch.errors[i].raw.as_deref());
            if let Err(e) = self.quarantine.push(
                &cells(batch, r.row),
                raw,
                &r.reason,
                &batch.source,
                batch.first_row + r.row as u64,
            ) {
                self.failure.get_or_insert(e.into());
            }
            self.counts.quarantined += 1;
        }
        // The duplicate filter's lookups miss the cache; issued together for a group of rows
        // the misses overlap instead of stalling row by row, and a group's blocks still sit in
        // the L1 cache when its rows are pushed.
        for group in checked.accepted.chunks(PREFETCH_ROWS) {
            self.rows.prefetch(group.iter().map(|(_, v)| v.hash));
            for (row, v) in group {
                let text = |c: Column| match batch.columns[c.index()].cell(*row) {
                    Some(Cell::Text(t)) => t,
                    _ => unreachable!("validate accepts only text in a text column"),
                };
                let row = Row {
                    service_point_id: text(Column::ServicePointId),
                    phase: v.phase,
                    issue_id: text(Column::IssueId),
                    status: text(Column::Status),
                    status_datetime: v.ts,
                    reason: text(Column::Reason),
                    work_order_id: text(Column::WorkOrderId),
                    event_day: v.event_day,
                    hash: v.hash,
                };
                if self.failure.is_none()
                    && let Err(e) = self.rows.push(&row)
                {
                    self.failure = Some(e);
                }
            }
        }
    }

    pub fn finish(self) -> Result<Normalized, RowsError> {
        if let Some(e) = self.failure {
            return Err(e);
        }
        let rows = self.rows.finish()?;
        let status_days = rows
            .partitions
            .values()
            .flat_map(|p| p.status_days.iter().copied())
            .collect();
        Ok(Normalized {
            rows,
            quarantine: self.quarantine.finish(),
            counts: self.counts,
            status_days,
            product: self.product,
            job_id: self.job_id,
            ingested_at: self.ingested_at,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{RawBatch, RawColumn, RowError};
    use arrow::array::{StringArray, TimestampMicrosecondArray};

    fn batch(rows: &[[&str; 8]]) -> RawBatch {
        RawBatch {
            columns: std::array::from_fn(|c| {
                RawColumn::Text(StringArray::from_iter(
                    rows.iter().map(|r| (!r[c].is_empty()).then_some(r[c])),
                ))
            }),
            errors: Vec::new(),
            source: Arc::from("t.csv"),
            first_row: 1,
        }
    }

    const GOOD: [&str; 8] = [
        "9000053409",
        "1",
        "19865",
        "Accepted",
        "2024-06-15:00:00:13",
        "Investigating",
        "2024-06-13",
        "123456",
    ];

    /// A normalizer whose spill files go to a directory that lives as long as the test.
    fn normalizer(job: &str) -> Normalizer {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        Normalizer::with_budget(
            Product::HidWorkOrders,
            job,
            Utc::now(),
            dir.path(),
            100,
            1 << 10,
        )
    }

    struct Out {
        partitions: BTreeMap<NaiveDate, RecordBatch>,
        counts: Counts,
        quarantine: Option<RecordBatch>,
        status_days: BTreeSet<NaiveDate>,
    }

    /// Every partition and the final out.counts.
    fn run(n: Normalizer) -> Out {
        let out = n.finish().unwrap();
        let (quarantine, status_days) = (out.quarantine.all().unwrap(), out.status_days.clone());
        let (partitions, counts) = out.into_batches().unwrap();
        Out {
            partitions,
            counts,
            quarantine,
            status_days,
        }
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn valid_rows_are_typed_and_partitioned() {
        let mut n = normalizer("job-1");
        let mut other = GOOD;
        other[6] = "2024-06-14";
        other[3] = "New";
        n.push(&check(batch(&[GOOD, other])));
        let out = run(n);
        assert_eq!(
            out.counts,
            Counts {
                read: 2,
                written: 2,
                quarantined: 0,
                duplicates: 0
            }
        );
        assert_eq!(
            out.partitions.keys().copied().collect::<Vec<_>>(),
            vec![day("2024-06-13"), day("2024-06-14")]
        );
        let b = &out.partitions[&day("2024-06-13")];
        assert_eq!(b.schema(), Product::HidWorkOrders.lake_schema());
        let ts = b
            .column(4)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(
            ts.value(0),
            time::parse_utc("2024-06-15T00:00:13Z")
                .unwrap()
                .timestamp_micros()
        );
        assert_eq!(out.status_days, BTreeSet::from([day("2024-06-15")]));
    }

    #[test]
    fn every_rule_quarantines_with_a_reason() {
        let mut cases = Vec::new();
        let mut r = GOOD;
        r[0] = "";
        cases.push((r, "service_point_id"));
        let mut r = GOOD;
        r[1] = "5";
        cases.push((r, "outside 1..4"));
        let mut r = GOOD;
        r[1] = "one";
        cases.push((r, "not an integer"));
        let mut r = GOOD;
        r[4] = "2024-06-15T25:61:00Z";
        cases.push((r, "not a timestamp"));
        let mut r = GOOD;
        r[6] = "2024-06-31";
        cases.push((r, "not a date"));
        let mut r = GOOD;
        r[6] = "2024-06-17";
        cases.push((r, "more than one day after"));
        let rows: Vec<[&str; 8]> = cases.iter().map(|c| c.0).collect();
        let mut n = normalizer("job-1");
        n.push(&check(batch(&rows)));
        let out = run(n);
        assert_eq!(out.counts.quarantined, cases.len() as u64);
        assert!(out.partitions.is_empty());
        let q = out.quarantine.unwrap();
        let reasons = q
            .column_by_name("_reason")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        for (i, (_, want)) in cases.iter().enumerate() {
            assert!(
                reasons.value(i).contains(want),
                "{}: {}",
                want,
                reasons.value(i)
            );
        }
        let rows = q
            .column_by_name("_row_number")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::Int64Array>()
            .unwrap();
        assert_eq!(rows.value(2), 3);
    }

    #[test]
    fn one_day_tolerance_and_placeholders() {
        let mut tolerated = GOOD;
        tolerated[6] = "2024-06-16";
        let mut placeholder = GOOD;
        placeholder[0] = "--";
        let mut n = normalizer("j");
        n.push(&check(batch(&[tolerated, placeholder])));
        let out = run(n);
        assert_eq!(out.counts.written, 1);
        assert_eq!(out.counts.quarantined, 1);
    }

    #[test]
    fn duplicates_keep_the_last_and_reconcile() {
        let mut later = GOOD;
        later[5] = "updated reason";
        later[6] = "2024-06-14";
        let mut n = normalizer("j");
        n.push(&check(batch(&[GOOD, later])));
        let out = run(n);
        assert_eq!(
            out.counts,
            Counts {
                read: 2,
                written: 1,
                quarantined: 0,
                duplicates: 1
            }
        );
        assert!(out.counts.reconciles());
        assert_eq!(out.partitions.len(), 1);
        let b = &out.partitions[&day("2024-06-14")];
        let reason = b.column(5).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(reason.value(0), "updated reason");
    }

    #[test]
    fn typed_columns_validate_like_text() {
        let mut b = batch(&[GOOD, GOOD]);
        b.columns[Column::StatusDatetime.index()] =
            RawColumn::Micros(TimestampMicrosecondArray::from(vec![
                1_718_409_613_000_000,
                1_718_409_613_000_000,
            ]));
        b.columns[Column::EventDate.index()] =
            RawColumn::Days(arrow::array::Date32Array::from(vec![19_887, 19_887]));
        b.columns[Column::Phase.index()] =
            RawColumn::Int(arrow::array::Int64Array::from(vec![1, 7]));
        let mut n = normalizer("j");
        n.push(&check(b));
        let out = run(n);
        assert_eq!(out.counts.written, 1);
        let p = &out.partitions[&day("2024-06-13")];
        let ts = p
            .column(4)
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(ts.value(0), 1_718_409_613_000_000);
        let q = out.quarantine.unwrap();
        let text = |name: &str| {
            let c = q.column_by_name(name).unwrap();
            c.as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .value(0)
                .to_string()
        };
        assert_eq!(text("_reason"), "phase 7 is outside 1..4");
        assert_eq!(text("status_datetime"), "2024-06-15T00:00:13Z");
        assert_eq!(text("event_date"), "2024-06-13");
        assert_eq!(text("phase"), "7");
    }

    #[test]
    fn decode_errors_are_quarantined_with_raw_text() {
        let mut b = batch(&[GOOD, GOOD]);
        b.columns =
            std::array::from_fn(|c| RawColumn::Text(StringArray::from(vec![Some(GOOD[c]), None])));
        b.errors = vec![RowError {
            row: 1,
            reason: "row has 3 fields".into(),
            raw: Some("a,b,c".into()),
        }];
        let mut n = normalizer("j");
        n.push(&check(b));
        let out = run(n);
        assert_eq!(out.counts.quarantined, 1);
        let q = out.quarantine.unwrap();
        let raw = q
            .column_by_name("_raw")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(raw.value(0), "a,b,c");
    }
}
