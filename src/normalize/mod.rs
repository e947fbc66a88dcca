//! Normalizing decoded rows into the lake schema: typed, validated, de-duplicated, grouped by
//! partition, all as the product's declaration says. A row that fails validation goes to the quarantine with its raw values
//! and the reason; nothing is dropped silently, and the counts always reconcile:
//! read = written + quarantined + duplicates.

mod bloom;
mod buffer;
mod dedupe;
pub mod keys;
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

pub use buffer::order_keys;
use quarantine::Quarantine;
pub use quarantine::QuarantineRows;
use rows::RowStore;
pub use rows::{Rows, RowsError};
pub use spill::SpillError;
use validate::cells;
pub use validate::{Checked, check};

use crate::model::Counts;
use crate::product::Product;

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
    /// Window days of the valid rows.
    pub window_days: BTreeSet<NaiveDate>,
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
            rows: RowStore::new(product, scratch, budget, expected_rows),
            quarantine: Quarantine::new(
                product,
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
        for start in (0..checked.accepted.len()).step_by(PREFETCH_ROWS) {
            let end = (start + PREFETCH_ROWS).min(checked.accepted.len());
            let group = &checked.accepted[start..end];
            self.rows.prefetch(group.iter().map(|a| a.hash));
            for k in start..end {
                if self.failure.is_none()
                    && let Err(e) = self.rows.push(checked, k)
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
        let window_days = rows
            .partitions
            .values()
            .flat_map(|p| p.window_days.iter().copied())
            .collect();
        Ok(Normalized {
            rows,
            quarantine: self.quarantine.finish(),
            counts: self.counts,
            window_days,
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
    use crate::product::test_support::{col, hid};
    use arrow::array::{StringArray, TimestampMicrosecondArray};

    fn batch(rows: &[[&str; 8]]) -> RawBatch {
        RawBatch {
            columns: (0..8)
                .map(|c| {
                    RawColumn::Text(StringArray::from_iter(
                        rows.iter().map(|r| (!r[c].is_empty()).then_some(r[c])),
                    ))
                })
                .collect(),
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
        normalizer_of(hid(), job)
    }

    fn normalizer_of(product: Product, job: &str) -> Normalizer {
        let dir = Box::leak(Box::new(tempfile::tempdir().unwrap()));
        Normalizer::with_budget(product, job, Utc::now(), dir.path(), 100, 1 << 10)
    }

    struct Out {
        partitions: BTreeMap<NaiveDate, RecordBatch>,
        counts: Counts,
        quarantine: Option<RecordBatch>,
        window_days: BTreeSet<NaiveDate>,
    }

    /// Every partition and the final out.counts.
    fn run(n: Normalizer) -> Out {
        let out = n.finish().unwrap();
        let (quarantine, window_days) = (out.quarantine.all().unwrap(), out.window_days.clone());
        let (partitions, counts) = out.into_batches().unwrap();
        Out {
            partitions,
            counts,
            quarantine,
            window_days,
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
        n.push(&check(hid(), batch(&[GOOD, other])));
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
        assert_eq!(b.schema(), hid().lake_schema());
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
        assert_eq!(out.window_days, BTreeSet::from([day("2024-06-15")]));
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
        n.push(&check(hid(), batch(&rows)));
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
        n.push(&check(hid(), batch(&[tolerated, placeholder])));
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
        n.push(&check(hid(), batch(&[GOOD, later])));
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
        b.columns[col(hid(), "status_datetime")] =
            RawColumn::Micros(TimestampMicrosecondArray::from(vec![
                1_718_409_613_000_000,
                1_718_409_613_000_000,
            ]));
        b.columns[col(hid(), "event_date")] =
            RawColumn::Days(arrow::array::Date32Array::from(vec![19_887, 19_887]));
        b.columns[col(hid(), "phase")] = RawColumn::Int(arrow::array::Int64Array::from(vec![1, 7]));
        let mut n = normalizer("j");
        n.push(&check(hid(), b));
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
        b.columns = GOOD
            .iter()
            .map(|v| RawColumn::Text(StringArray::from(vec![Some(*v), None])))
            .collect();
        b.errors = vec![RowError {
            row: 1,
            reason: "row has 3 fields".into(),
            raw: Some("a,b,c".into()),
        }];
        let mut n = normalizer("j");
        n.push(&check(hid(), b));
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

    /// Temperature rows in declared order: received, service point, meter, meter number, ESN,
    /// transformer, premise, feeder, measurement time, average, maximum.
    fn temperatures(rows: &[[&str; 11]]) -> RawBatch {
        RawBatch {
            columns: (0..11)
                .map(|c| {
                    RawColumn::Text(StringArray::from_iter(
                        rows.iter().map(|r| (!r[c].is_empty()).then_some(r[c])),
                    ))
                })
                .collect(),
            errors: Vec::new(),
            source: Arc::from("t.csv"),
            first_row: 1,
        }
    }

    #[test]
    fn temperatures_are_typed_by_their_declaration_and_bad_ones_quarantined() {
        let hour = |time, received, avg| {
            [
                received, "SP1", "M1", "N1", "", "--", "P1", "", time, avg, "30",
            ]
        };
        let first = hour(
            "2025-12-13T05:00:00.000Z",
            "2025-12-14T00:30:34:000Z",
            "20.5",
        );
        // The same hour again, received later with a corrected value: it wins, though the
        // export serves it first.
        let corrected = hour("2025-12-13T05:00:00Z", "2025-12-15T00:00:00Z", "21.25");
        let next_day = hour("2025-12-14T23:00:00Z", "2025-12-15T00:00:00Z", "-3");
        let mut no_meter = first;
        no_meter[2] = "";
        let rows = [
            corrected,
            first,
            next_day,
            hour("2025-12-13T06:00:00Z", "2025-12-14T00:00:00Z", "NaN"),
            hour("2025-12-13T07:00:00Z", "2025-12-14T00:00:00Z", "inf"),
            hour("2025-12-13T08:00:00Z", "2025-12-14T00:00:00Z", "warm"),
            hour("2025-12-13T25:00:00Z", "2025-12-14T00:00:00Z", "1"),
            no_meter,
        ];
        let atm = crate::product::test_support::atm();
        let mut n = normalizer_of(atm, "j");
        n.push(&check(atm, temperatures(&rows)));
        let out = run(n);
        assert_eq!(
            out.counts,
            Counts {
                read: 8,
                written: 2,
                quarantined: 5,
                duplicates: 1
            }
        );
        assert_eq!(
            out.window_days,
            BTreeSet::from([day("2025-12-13"), day("2025-12-14")])
        );
        let b = &out.partitions[&day("2025-12-13")];
        assert_eq!(b.schema(), atm.lake_schema());
        let number = |name: &str| {
            b.column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow::array::Float64Array>()
                .unwrap()
                .value(0)
        };
        assert_eq!(number("avg_temp"), 21.25);
        assert_eq!(number("max_temp"), 30.0);
        assert!(b.column_by_name("transformer_id").unwrap().is_null(0));
        assert!(b.column_by_name("measurement_date").is_none());
        let q = out.quarantine.unwrap();
        let reasons = q
            .column_by_name("_reason")
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        let reasons: Vec<&str> = reasons.iter().map(Option::unwrap).collect();
        for want in [
            "avg_temp",
            "avg_temp",
            "avg_temp",
            "measurement_time",
            "meter_id",
        ] {
            assert!(
                reasons.iter().any(|r| r.contains(want)),
                "{want}: {reasons:?}"
            );
        }
        assert!(reasons[0].contains("finite"), "{reasons:?}");
    }
}
