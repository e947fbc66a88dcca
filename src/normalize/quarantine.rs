//! Quarantined rows: every raw value as served, why it failed, and where it came from, grouped
//! by the day their raw window column names, as the quarantine's layout is.
//!
//! A bad export can be mostly bad rows, and each carries all its text plus a reason and a
//! source, so the quarantine gets a memory budget of its own: past it, the rows collected so far
//! are split by day and spilled, and the writer later loads one day at a time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
};
use arrow::compute::{concat_batches, filter_record_batch};
use arrow::record_batch::RecordBatch;
use chrono::NaiveDate;

use super::spill::{Spill, SpillError, Spilled};
use super::time::parse_date;
use crate::decode::Cell;
use crate::product::Product;

/// Bytes of quarantined text held before they are spilled.
pub const QUARANTINE_BUDGET: usize = 4 << 20;

/// Quarantined rows being collected: the raw values under their lake names, all text (the
/// product's quarantine schema).
pub struct Quarantine {
    product: Product,
    cells: Vec<StringBuilder>,
    raw: StringBuilder,
    reason: StringBuilder,
    source: StringBuilder,
    row_number: Int64Builder,
    len: usize,
    /// Text bytes in the builders, against [`QUARANTINE_BUDGET`].
    bytes: usize,
    budget: usize,
    job_id: Arc<str>,
    ingested_at: i64,
    spill: Spill,
    spilled: BTreeMap<Option<NaiveDate>, Vec<Spilled>>,
}

impl Quarantine {
    pub fn new(
        product: Product,
        scratch: &Path,
        budget: usize,
        job_id: Arc<str>,
        ingested_at: i64,
    ) -> Self {
        Self {
            product,
            cells: (0..product.columns.len())
                .map(|_| StringBuilder::new())
                .collect(),
            raw: StringBuilder::new(),
            reason: StringBuilder::new(),
            source: StringBuilder::new(),
            row_number: Int64Builder::new(),
            len: 0,
            bytes: 0,
            budget,
            job_id,
            ingested_at,
            spill: Spill::new(scratch, "quarantine"),
            spilled: BTreeMap::new(),
        }
    }

    pub fn push(
        &mut self,
        cells: &[Option<Cell<'_>>],
        raw: Option<&str>,
        reason: &str,
        source: &str,
        row: u64,
    ) -> Result<(), SpillError> {
        for (b, v) in self.cells.iter_mut().zip(cells) {
            let before = b.values_slice().len();
            match v {
                None => b.append_null(),
                Some(Cell::Text(t)) => b.append_value(t),
                Some(typed) => b.append_value(typed.to_string()),
            }
            self.bytes += b.values_slice().len() - before;
        }
        self.raw.append_option(raw);
        self.reason.append_value(reason);
        self.source.append_value(source);
        self.row_number.append_value(row as i64);
        self.len += 1;
        self.bytes += raw.map_or(0, str::len) + reason.len() + source.len();
        if self.bytes > self.budget {
            let days = self
                .take()
                .map(|b| split_by_day(self.product, &b))
                .unwrap_or_default();
            let spilled = self
                .spill
                .write(&self.product.quarantine_schema(), days.values().cloned())?;
            for (day, at) in days.keys().zip(spilled) {
                self.spilled.entry(*day).or_default().push(at);
            }
        }
        Ok(())
    }

    /// The collected rows as one batch, the builders emptied.
    fn take(&mut self) -> Option<RecordBatch> {
        if self.len == 0 {
            return None;
        }
        let n = self.len;
        self.len = 0;
        self.bytes = 0;
        let mut cols: Vec<ArrayRef> = self
            .cells
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        cols.push(Arc::new(self.raw.finish()));
        cols.push(Arc::new(self.reason.finish()));
        cols.push(Arc::new(self.source.finish()));
        cols.push(Arc::new(self.row_number.finish()));
        cols.push(Arc::new(super::repeated(&self.job_id, n)));
        cols.push(Arc::new(
            TimestampMicrosecondArray::from(vec![self.ingested_at; n]).with_timezone("UTC"),
        ));
        Some(
            RecordBatch::try_new(self.product.quarantine_schema(), cols)
                .expect("quarantine schema matches"),
        )
    }

    pub fn finish(mut self) -> QuarantineRows {
        let memory = self
            .take()
            .map(|b| split_by_day(self.product, &b))
            .unwrap_or_default();
        QuarantineRows(Arc::new(Collected {
            product: self.product,
            memory,
            spilled: self.spilled,
            spill: self.spill,
        }))
    }
}

/// Rows grouped by the day their raw window column names, `None` when it names none.
fn split_by_day(product: Product, b: &RecordBatch) -> BTreeMap<Option<NaiveDate>, RecordBatch> {
    let ts = b
        .column_by_name(product.window_name())
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .expect("the quarantine schema's columns are text");
    let days: Vec<Option<NaiveDate>> = (0..b.num_rows())
        .map(|i| {
            // A broken time often still has a good day (`2024-06-15T25:61:00Z`).
            (!ts.is_null(i))
                .then(|| {
                    let raw = ts.value(i).trim();
                    parse_date(raw).or_else(|| raw.get(..10).and_then(parse_date))
                })
                .flatten()
        })
        .collect();
    let distinct: BTreeSet<Option<NaiveDate>> = days.iter().copied().collect();
    distinct
        .into_iter()
        .map(|d| {
            let mask: arrow::array::BooleanArray = days.iter().map(|x| Some(*x == d)).collect();
            (
                d,
                filter_record_batch(b, &mask).expect("mask length matches"),
            )
        })
        .collect()
}

struct Collected {
    product: Product,
    memory: BTreeMap<Option<NaiveDate>, RecordBatch>,
    spilled: BTreeMap<Option<NaiveDate>, Vec<Spilled>>,
    spill: Spill,
}

/// A job's quarantined rows, loaded one status day at a time. Cheap to clone.
#[derive(Clone)]
pub struct QuarantineRows(Arc<Collected>);

impl QuarantineRows {
    /// The window days the rows name; `None` for rows that name none.
    pub fn days(&self) -> BTreeSet<Option<NaiveDate>> {
        let c = &self.0;
        c.memory.keys().chain(c.spilled.keys()).copied().collect()
    }

    /// The rows of one window day. Reads spill files: blocking work, off the async threads.
    pub async fn load(&self, day: Option<NaiveDate>) -> Result<Vec<RecordBatch>, SpillError> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.load_blocking(day))
            .await
            .map_err(|e| SpillError {
                path: "quarantine".into(),
                detail: format!("reader task failed: {e}"),
            })?
    }

    fn load_blocking(&self, day: Option<NaiveDate>) -> Result<Vec<RecordBatch>, SpillError> {
        let c = &self.0;
        let mut out = Vec::new();
        for at in c.spilled.get(&day).into_iter().flatten() {
            out.push(c.spill.read(*at)?);
        }
        out.extend(c.memory.get(&day).cloned());
        Ok(out)
    }

    /// Every row in one batch, `None` when there are none: for small results (on-demand, tests).
    pub fn all(&self) -> Result<Option<RecordBatch>, SpillError> {
        let mut batches = Vec::new();
        for day in self.days() {
            batches.extend(self.load_blocking(day)?);
        }
        if batches.is_empty() {
            return Ok(None);
        }
        Ok(Some(
            concat_batches(&self.0.product.quarantine_schema(), &batches)
                .expect("batches share the schema"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::product::test_support::{col, hid};

    fn cells(ts: &str) -> [Option<Cell<'_>>; 8] {
        let mut c = [Some(Cell::Text("x")); 8];
        c[col(hid(), "status_datetime")] = (!ts.is_empty()).then_some(Cell::Text(ts));
        c
    }

    #[test]
    fn past_its_budget_the_quarantine_spills_by_day_and_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        // A budget this small spills after every row.
        let mut q = Quarantine::new(hid(), dir.path(), 1, Arc::from("j"), 0);
        let times = [
            "2024-06-15T25:61:00Z",
            "",
            "2024-06-16T00:00:00Z",
            "2024-06-15T01:00:00Z",
            "garbage",
        ];
        for (n, t) in times.iter().enumerate() {
            q.push(&cells(t), None, "bad", "f.csv", n as u64 + 1)
                .unwrap();
        }
        assert!(q.spill.files() > 1);
        let rows = q.finish();
        let d = |s: &str| Some(s.parse::<NaiveDate>().unwrap());
        assert_eq!(
            rows.days(),
            BTreeSet::from([None, d("2024-06-15"), d("2024-06-16")])
        );
        let numbers = |day| -> Vec<i64> {
            rows.load_blocking(day)
                .unwrap()
                .iter()
                .flat_map(|b| {
                    let c = b.column_by_name("_row_number").unwrap();
                    let c = c
                        .as_any()
                        .downcast_ref::<arrow::array::Int64Array>()
                        .unwrap();
                    c.values().to_vec()
                })
                .collect()
        };
        assert_eq!(numbers(d("2024-06-15")), [1, 4]);
        assert_eq!(numbers(d("2024-06-16")), [3]);
        assert_eq!(numbers(None), [2, 5]);
        assert_eq!(rows.all().unwrap().unwrap().num_rows(), 5);
    }

    #[test]
    fn under_its_budget_nothing_is_spilled() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = Quarantine::new(hid(), dir.path(), QUARANTINE_BUDGET, Arc::from("j"), 0);
        q.push(&cells("2024-06-15"), Some("a,b"), "bad", "f.csv", 1)
            .unwrap();
        assert_eq!(q.spill.files(), 0);
        let all = q.finish().all().unwrap().unwrap();
        assert_eq!(all.num_rows(), 1);
        assert_eq!(all.schema(), hid().quarantine_schema());
    }
}
