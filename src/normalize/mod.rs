//! Normalizing decoded rows into the lake schema: typed, validated, de-duplicated, grouped by
//! `event_date` partition. A row that fails validation goes to the quarantine with its raw values
//! and the reason; nothing is dropped silently, and the counts always reconcile:
//! read = written + quarantined + duplicates.

pub mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int8Builder, Int64Builder, StringArray, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::record_batch::RecordBatch;
use chrono::{DateTime, Duration, NaiveDate, Utc};

use crate::decode::RawBatch;
use crate::product::{Column, Product};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub read: u64,
    pub written: u64,
    pub quarantined: u64,
    pub duplicates: u64,
}

impl Counts {
    pub fn reconciles(&self) -> bool {
        self.read == self.written + self.quarantined + self.duplicates
    }
}

/// A job's rows, ready for the lake.
pub struct Normalized {
    pub partitions: BTreeMap<NaiveDate, RecordBatch>,
    pub quarantine: Option<RecordBatch>,
    pub counts: Counts,
    /// Status days of the valid rows.
    pub status_days: BTreeSet<NaiveDate>,
}

#[derive(Default)]
struct Part {
    sp: StringBuilder,
    phase: Int8Builder,
    issue: StringBuilder,
    status: StringBuilder,
    ts: Vec<i64>,
    reason: StringBuilder,
    wo: StringBuilder,
    alive: Vec<bool>,
}

pub struct Normalizer {
    product: Product,
    job_id: Arc<str>,
    ingested_at: i64,
    parts: Vec<(NaiveDate, Part)>,
    part_index: HashMap<NaiveDate, usize>,
    identities: HashMap<u128, (u32, u32)>,
    quarantine: Quarantine,
    counts: Counts,
    status_days: BTreeSet<NaiveDate>,
}

fn identity(wo: &str, issue: &str, status: &str, ts: i64) -> u128 {
    let mut halves = [0u64; 2];
    for (salt, h) in halves.iter_mut().enumerate() {
        let mut s = std::hash::DefaultHasher::new();
        salt.hash(&mut s);
        (wo, issue, status, ts).hash(&mut s);
        *h = s.finish();
    }
    ((halves[0] as u128) << 64) | halves[1] as u128
}

impl Normalizer {
    pub fn new(product: Product, job_id: &str, ingested_at: DateTime<Utc>) -> Self {
        Self {
            product,
            job_id: Arc::from(job_id),
            ingested_at: ingested_at.timestamp_micros(),
            parts: Vec::new(),
            part_index: HashMap::new(),
            identities: HashMap::new(),
            quarantine: Quarantine::default(),
            counts: Counts::default(),
            status_days: BTreeSet::new(),
        }
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn push(&mut self, batch: &RawBatch) {
        let n = batch.num_rows();
        let mut errors = batch.errors.iter().peekable();
        for row in 0..n {
            self.counts.read += 1;
            let decode_error = errors.next_if(|e| e.row == row);
            let cells: [Option<&str>; 8] = std::array::from_fn(|c| {
                let a = &batch.columns[c];
                arrow::array::Array::is_valid(a, row).then(|| a.value(row))
            });
            let verdict = match decode_error {
                Some(e) => Err(e.reason.clone()),
                None => self.validate(&cells),
            };
            match verdict {
                Ok(v) => self.accept(&cells, v),
                Err(reason) => {
                    let raw = decode_error.and_then(|e| e.raw.as_deref());
                    self.quarantine.push(
                        &cells,
                        raw,
                        &reason,
                        &batch.source,
                        batch.first_row + row as u64,
                    );
                    self.counts.quarantined += 1;
                }
            }
        }
    }

    fn validate(&self, cells: &[Option<&str>; 8]) -> Result<Valid, String> {
        let empty: Vec<&str> = Column::ALL
            .into_iter()
            .filter(|c| cells[c.index()].is_none_or(is_blank))
            .map(Column::lake_name)
            .collect();
        if !empty.is_empty() {
            return Err(format!("empty or missing: {}", empty.join(", ")));
        }
        let get = |c: Column| cells[c.index()].expect("checked non-empty").trim();
        let phase_text = get(Column::Phase);
        let phase = parse_phase(phase_text)
            .ok_or_else(|| format!("phase `{phase_text}` is not an integer"))?;
        if !(1..=4).contains(&phase) {
            return Err(format!("phase {phase} is outside 1..4"));
        }
        let ts_text = get(Column::StatusDatetime);
        let ts = time::parse_utc(ts_text)
            .ok_or_else(|| format!("status_datetime `{ts_text}` is not a timestamp"))?;
        let ed_text = get(Column::EventDate);
        let event_date = time::parse_date(ed_text)
            .ok_or_else(|| format!("event_date `{ed_text}` is not a date"))?;
        let status_day = ts.date_naive();
        if event_date > status_day + Duration::days(1) {
            return Err(format!(
                "event_date {event_date} is more than one day after the status day {status_day}"
            ));
        }
        Ok(Valid {
            phase: phase as i8,
            ts: time::micros(ts),
            event_date,
        })
    }

    fn accept(&mut self, cells: &[Option<&str>; 8], v: Valid) {
        let text = |c: Column| cells[c.index()].expect("validated");
        let idx = match self.part_index.get(&v.event_date) {
            Some(i) => *i,
            None => {
                self.parts.push((v.event_date, Part::default()));
                self.part_index.insert(v.event_date, self.parts.len() - 1);
                self.parts.len() - 1
            }
        };
        let part = &mut self.parts[idx].1;
        let row = part.alive.len() as u32;
        let key = identity(
            text(Column::WorkOrderId),
            text(Column::IssueId),
            text(Column::Status),
            v.ts,
        );
        // The later copy of an identity wins; the earlier one is struck out and counted.
        if let Some((p, r)) = self.identities.insert(key, (idx as u32, row)) {
            self.parts[p as usize].1.alive[r as usize] = false;
            self.counts.duplicates += 1;
        } else {
            self.counts.written += 1;
        }
        let part = &mut self.parts[idx].1;
        part.sp.append_value(text(Column::ServicePointId));
        part.phase.append_value(v.phase);
        part.issue.append_value(text(Column::IssueId));
        part.status.append_value(text(Column::Status));
        part.ts.push(v.ts);
        part.reason.append_value(text(Column::Reason));
        part.wo.append_value(text(Column::WorkOrderId));
        part.alive.push(true);
        self.status_days
            .insert(crate::normalize::time::day_of_micros(v.ts));
    }

    pub fn finish(self) -> Normalized {
        let schema = self.product.lake_schema();
        let mut partitions = BTreeMap::new();
        let mut status_days = BTreeSet::new();
        for (date, mut p) in self.parts {
            let mask = arrow::array::BooleanArray::from(p.alive.clone());
            let n = p.alive.len();
            let cols: Vec<ArrayRef> = vec![
                Arc::new(p.sp.finish()),
                Arc::new(p.phase.finish()),
                Arc::new(p.issue.finish()),
                Arc::new(p.status.finish()),
                Arc::new(
                    TimestampMicrosecondArray::from(std::mem::take(&mut p.ts)).with_timezone("UTC"),
                ),
                Arc::new(p.reason.finish()),
                Arc::new(p.wo.finish()),
                Arc::new(StringArray::from_iter_values(std::iter::repeat_n(
                    self.job_id.as_ref(),
                    n,
                ))),
                Arc::new(
                    TimestampMicrosecondArray::from(vec![self.ingested_at; n]).with_timezone("UTC"),
                ),
            ];
            let batch = RecordBatch::try_new(schema.clone(), cols).expect("lake schema matches");
            let batch = arrow::compute::filter_record_batch(&batch, &mask)
                .expect("mask has the batch's length");
            if batch.num_rows() > 0 {
                let ts = batch
                    .column(4)
                    .as_any()
                    .downcast_ref::<TimestampMicrosecondArray>()
                    .expect("status_datetime");
                status_days.extend(ts.values().iter().map(|&t| time::day_of_micros(t)));
                partitions.insert(date, batch);
            }
        }
        debug_assert!(status_days.is_subset(&self.status_days));
        Normalized {
            partitions,
            quarantine: self.quarantine.finish(&self.job_id, self.ingested_at),
            counts: self.counts,
            status_days,
        }
    }
}

struct Valid {
    phase: i8,
    ts: i64,
    event_date: NaiveDate,
}

/// Empty, whitespace, or the `--` the vendor's exports use for a missing id.
fn is_blank(v: &str) -> bool {
    let t = v.trim();
    t.is_empty() || t == "--"
}

/// `1`, `01`, `1.0`: integral values only.
fn parse_phase(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let f: f64 = s.parse().ok()?;
    (f.fract() == 0.0 && f.abs() < 1e9).then_some(f as i64)
}

/// Quarantined rows: every raw value as served, why it failed, and where it came from.
#[derive(Default)]
struct Quarantine {
    cells: [StringBuilder; 8],
    raw: StringBuilder,
    reason: StringBuilder,
    source: StringBuilder,
    row_number: Int64Builder,
    len: usize,
}

impl Quarantine {
    fn push(
        &mut self,
        cells: &[Option<&str>; 8],
        raw: Option<&str>,
        reason: &str,
        source: &str,
        row: u64,
    ) {
        for (b, v) in self.cells.iter_mut().zip(cells) {
            b.append_option(*v);
        }
        self.raw.append_option(raw);
        self.reason.append_value(reason);
        self.source.append_value(source);
        self.row_number.append_value(row as i64);
        self.len += 1;
    }

    fn finish(mut self, job_id: &str, ingested_at: i64) -> Option<RecordBatch> {
        if self.len == 0 {
            return None;
        }
        let n = self.len;
        let mut cols: Vec<ArrayRef> = self
            .cells
            .iter_mut()
            .map(|b| Arc::new(b.finish()) as ArrayRef)
            .collect();
        cols.push(Arc::new(self.raw.finish()));
        cols.push(Arc::new(self.reason.finish()));
        cols.push(Arc::new(self.source.finish()));
        cols.push(Arc::new(self.row_number.finish()));
        cols.push(Arc::new(StringArray::from_iter_values(
            std::iter::repeat_n(job_id, n),
        )));
        let mut at = TimestampMicrosecondBuilder::with_capacity(n).with_timezone("UTC");
        at.append_slice(&vec![ingested_at; n]);
        cols.push(Arc::new(at.finish()));
        Some(RecordBatch::try_new(quarantine_schema(), cols).expect("quarantine schema matches"))
    }
}

/// The quarantine's columns: the raw values under their lake names, all text and nullable.
pub fn quarantine_schema() -> SchemaRef {
    let mut fields: Vec<Field> = Column::ALL
        .iter()
        .map(|c| Field::new(c.lake_name(), DataType::Utf8, true))
        .collect();
    fields.extend([
        Field::new("_raw", DataType::Utf8, true),
        Field::new("_reason", DataType::Utf8, false),
        Field::new("_source", DataType::Utf8, false),
        Field::new("_row_number", DataType::Int64, false),
        Field::new("_job_id", DataType::Utf8, false),
        Field::new(
            "_ingested_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ),
    ]);
    Arc::new(Schema::new(fields))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{RawBatch, RowError};

    fn batch(rows: &[[&str; 8]]) -> RawBatch {
        RawBatch {
            columns: std::array::from_fn(|c| {
                StringArray::from_iter(
                    rows.iter()
                        .map(|r| (!r[c].is_empty() || c == 99).then_some(r[c])),
                )
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

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn valid_rows_are_typed_and_partitioned() {
        let mut n = Normalizer::new(Product::HidWorkOrders, "job-1", Utc::now());
        let mut other = GOOD;
        other[6] = "2024-06-14";
        other[3] = "New";
        n.push(&batch(&[GOOD, other]));
        let out = n.finish();
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
        let mut n = Normalizer::new(Product::HidWorkOrders, "job-1", Utc::now());
        n.push(&batch(&rows));
        let out = n.finish();
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
        let mut n = Normalizer::new(Product::HidWorkOrders, "j", Utc::now());
        n.push(&batch(&[tolerated, placeholder]));
        let out = n.finish();
        assert_eq!(out.counts.written, 1);
        assert_eq!(out.counts.quarantined, 1);
    }

    #[test]
    fn duplicates_keep_the_last_and_reconcile() {
        let mut later = GOOD;
        later[5] = "updated reason";
        later[6] = "2024-06-14";
        let mut n = Normalizer::new(Product::HidWorkOrders, "j", Utc::now());
        n.push(&batch(&[GOOD, later]));
        let out = n.finish();
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
    fn decode_errors_are_quarantined_with_raw_text() {
        let mut b = batch(&[GOOD, GOOD]);
        b.columns = std::array::from_fn(|c| StringArray::from(vec![Some(GOOD[c]), None]));
        b.errors = vec![RowError {
            row: 1,
            reason: "row has 3 fields".into(),
            raw: Some("a,b,c".into()),
        }];
        let mut n = Normalizer::new(Product::HidWorkOrders, "j", Utc::now());
        n.push(&b);
        let out = n.finish();
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
