//! Checking one decoded row against the rules of DESIGN.md and typing its values. A row needs
//! nothing but itself to be checked, so this runs on the decoder's thread.

use super::{bloom, time};
use crate::decode::{Cell, RawBatch};
use crate::product::Column;

/// A decoded batch with every row's verdict. Checking a row needs nothing but the row, so it
/// runs on the decoder's thread, which a Parquet export otherwise leaves mostly idle while the
/// normalizer's thread, doing the rest, bounds the whole decode; the normalizer keeps only
/// what must run in order (the duplicate filter, buffering, spilling).
pub struct Checked {
    pub(super) batch: RawBatch,
    pub(super) accepted: Vec<(usize, Valid)>,
    pub(super) rejected: Vec<Rejected>,
}

pub(super) struct Rejected {
    pub(super) row: usize,
    pub(super) reason: String,
    /// The batch's decode error for the row, when it could not be read into columns at all.
    pub(super) error: Option<usize>,
}

impl Checked {
    /// Rows of the batch, valid or not.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }
}

/// Checks and types every row of `batch`.
pub fn check(batch: RawBatch) -> Checked {
    let mut accepted = Vec::with_capacity(batch.num_rows());
    let mut rejected = Vec::new();
    let mut errors = batch.errors.iter().enumerate().peekable();
    for row in 0..batch.num_rows() {
        if let Some((i, e)) = errors.next_if(|(_, e)| e.row == row) {
            rejected.push(Rejected {
                row,
                reason: e.reason.clone(),
                error: Some(i),
            });
            continue;
        }
        match validate(&cells(&batch, row)) {
            Ok(v) => accepted.push((row, v)),
            Err(reason) => rejected.push(Rejected {
                row,
                reason,
                error: None,
            }),
        }
    }
    Checked {
        batch,
        accepted,
        rejected,
    }
}

pub(super) struct Valid {
    pub(super) phase: i8,
    pub(super) ts: i64,
    pub(super) event_day: i32,
    pub(super) hash: u64,
}

/// A row's cells, null where absent.
pub(super) fn cells(batch: &RawBatch, row: usize) -> [Option<Cell<'_>>; 8] {
    std::array::from_fn(|c| batch.columns[c].cell(row))
}

pub(super) fn is_missing(c: &Option<Cell<'_>>) -> bool {
    match c {
        None => true,
        Some(Cell::Text(t)) => is_blank(t),
        Some(_) => false,
    }
}

/// Checks a row and types its values; the error names every problem's column.
pub(super) fn validate(cells: &[Option<Cell<'_>>; 8]) -> Result<Valid, String> {
    if cells.iter().any(is_missing) {
        let empty: Vec<&str> = Column::ALL
            .into_iter()
            .filter(|c| is_missing(&cells[c.index()]))
            .map(Column::lake_name)
            .collect();
        return Err(format!("empty or missing: {}", empty.join(", ")));
    }
    let cell = |c: Column| cells[c.index()].expect("checked non-empty");
    let raw = |c: Column| match cell(c) {
        Cell::Text(t) => Ok(t),
        other => Err(format!("{} `{other}` is not text", c.lake_name())),
    };
    let texts = [
        Column::ServicePointId,
        Column::IssueId,
        Column::Status,
        Column::Reason,
        Column::WorkOrderId,
    ];
    for c in texts {
        raw(c)?;
    }
    let phase = match cell(Column::Phase) {
        Cell::Int(n) => Some(n),
        Cell::Text(t) => parse_phase(trimmed(t)),
        _ => None,
    }
    .ok_or_else(|| format!("phase `{}` is not an integer", cell(Column::Phase)))?;
    if !(1..=4).contains(&phase) {
        return Err(format!("phase {phase} is outside 1..4"));
    }
    let ts = match cell(Column::StatusDatetime) {
        Cell::Micros(us) => Some(us),
        Cell::Text(t) => time::parse_utc(trimmed(t)).map(time::micros),
        _ => None,
    }
    .ok_or_else(|| {
        let v = cell(Column::StatusDatetime);
        format!("status_datetime `{v}` is not a timestamp")
    })?;
    // Day numbers, not dates: a row's days are compared and grouped, and turned into dates
    // only once per partition.
    let event_day = match cell(Column::EventDate) {
        Cell::Days(d) => time::checked_day(d),
        Cell::Micros(us) => Some(time::day_number(us)),
        Cell::Text(t) => time::parse_date(trimmed(t)).map(time::day_of_date),
        Cell::Int(_) => None,
    }
    .ok_or_else(|| format!("event_date `{}` is not a date", cell(Column::EventDate)))?;
    let status_day = time::day_number(ts);
    if event_day - status_day > 1 {
        return Err(format!(
            "event_date {} is more than one day after the status day {}",
            time::date_of_day(event_day),
            time::date_of_day(status_day)
        ));
    }
    Ok(Valid {
        phase: phase as i8,
        ts,
        event_day,
        hash: bloom::identity_hash(
            raw(Column::WorkOrderId)?,
            raw(Column::IssueId)?,
            raw(Column::Status)?,
            ts,
        ),
    })
}

/// Empty, whitespace, or the `--` the vendor's exports use for a missing id.
pub(super) fn is_blank(v: &str) -> bool {
    let t = trimmed(v);
    t.is_empty() || t == "--"
}

/// `v` without surrounding whitespace; most values have none, and checking the two ends is
/// far cheaper than `trim`'s Unicode scan.
pub(super) fn trimmed(v: &str) -> &str {
    match (v.as_bytes().first(), v.as_bytes().last()) {
        (Some(a), Some(b)) if a.is_ascii_graphic() && b.is_ascii_graphic() => v,
        _ => v.trim(),
    }
}

/// `1`, `01`, `1.0`: integral values only.
pub(super) fn parse_phase(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let f: f64 = s.parse().ok()?;
    (f.fract() == 0.0 && f.abs() < 1e9).then_some(f as i64)
}
