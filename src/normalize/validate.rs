//! Checking one decoded row against its product's declared rules and typing its values: every
//! required column present, each value of its declared type (a timestamp in any of the
//! vendor's forms, a number as a number or its text), numbers in their range and finite where
//! declared, a day no later than declared after another column's. A row needs nothing but
//! itself to be checked, so this runs on the decoder's thread.

use super::keys::{FIRST, Key, hash_keys};
use super::time;
use crate::decode::{Cell, RawBatch};
use crate::product::{Kind, Product};

/// A decoded batch with every row's verdict. Checking a row needs nothing but the row, so it
/// runs on the decoder's thread, which a Parquet export otherwise leaves mostly idle while the
/// normalizer's thread, doing the rest, bounds the whole decode; the normalizer keeps only
/// what must run in order (the duplicate filter, buffering, spilling).
pub struct Checked {
    pub(super) product: Product,
    pub(super) batch: RawBatch,
    pub(super) accepted: Vec<Accepted>,
    /// The accepted rows' typed values, a product's width of them per row, in order.
    pub(super) typed: Vec<Typed>,
    pub(super) rejected: Vec<Rejected>,
}

/// An accepted row: where it is in the batch, its identity's hash and its partition's day.
pub(super) struct Accepted {
    pub(super) row: usize,
    pub(super) hash: u64,
    /// Days since the epoch.
    pub(super) day: i32,
}

pub(super) struct Rejected {
    pub(super) row: usize,
    pub(super) reason: String,
    /// The batch's decode error for the row, when it could not be read into columns at all.
    pub(super) error: Option<usize>,
}

/// One typed value of an accepted row. Text stays in the batch it came in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Typed {
    Null,
    Text,
    Int(i64),
    Float(f64),
    /// Microseconds since the epoch, UTC.
    Micros(i64),
    /// Days since the epoch.
    Day(i32),
}

impl Typed {
    /// The day of a timestamp or a date.
    pub(super) fn day(self) -> Option<i32> {
        match self {
            Typed::Micros(us) => Some(time::day_number(us)),
            Typed::Day(d) => Some(d),
            _ => None,
        }
    }
}

impl Checked {
    /// Rows of the batch, valid or not.
    pub fn rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The typed values of the `k`th accepted row.
    pub(super) fn typed(&self, k: usize) -> &[Typed] {
        let w = self.product.columns.len();
        &self.typed[k * w..(k + 1) * w]
    }
}

/// Checks and types every row of `batch`, a batch of `product`'s export.
pub fn check(product: Product, batch: RawBatch) -> Checked {
    let width = product.columns.len();
    let mut accepted = Vec::with_capacity(batch.num_rows());
    let mut typed = Vec::with_capacity(batch.num_rows() * width);
    let mut rejected = Vec::new();
    let mut errors = batch.errors.iter().enumerate().peekable();
    let mut row_cells = Vec::with_capacity(width);
    for row in 0..batch.num_rows() {
        if let Some((i, e)) = errors.next_if(|(_, e)| e.row == row) {
            rejected.push(Rejected {
                row,
                reason: e.reason.clone(),
                error: Some(i),
            });
            continue;
        }
        row_cells.clear();
        row_cells.extend(batch.columns.iter().map(|c| c.cell(row)));
        let start = typed.len();
        match validate(product, &row_cells, &mut typed) {
            Ok((hash, day)) => accepted.push(Accepted { row, hash, day }),
            Err(reason) => {
                typed.truncate(start);
                rejected.push(Rejected {
                    row,
                    reason,
                    error: None,
                })
            }
        }
    }
    Checked {
        product,
        batch,
        accepted,
        typed,
        rejected,
    }
}

/// A row's cells, null where absent.
pub(super) fn cells(batch: &RawBatch, row: usize) -> Vec<Option<Cell<'_>>> {
    batch.columns.iter().map(|c| c.cell(row)).collect()
}

/// Whether column `c`'s cell says "no value": absent, blank, or one of the declared nulls.
#[inline]
fn is_missing(product: Product, c: usize, cell: &Option<Cell<'_>>) -> bool {
    match cell {
        None => true,
        Some(Cell::Text(t)) => product.is_null_value(c, trimmed(t)),
        Some(_) => false,
    }
}

/// Checks a row and types its values into `out` (a product's width of them); the error names
/// every problem's column. Returns the identity's hash and the partition's day.
pub(super) fn validate(
    product: Product,
    cells: &[Option<Cell<'_>>],
    out: &mut Vec<Typed>,
) -> Result<(u64, i32), String> {
    let columns = &product.columns;
    let base = out.len();
    // One pass types every value; a missing required value is reported before any bad one.
    let (mut missing, mut bad) = (false, None);
    for (c, cell) in cells.iter().enumerate() {
        match cell {
            Some(v) if !is_missing(product, c, cell) => match typed(product, c, *v) {
                Ok(t) => out.push(t),
                Err(e) => {
                    bad.get_or_insert(e);
                    out.push(Typed::Null);
                }
            },
            _ => {
                missing |= columns[c].required;
                out.push(Typed::Null);
            }
        }
    }
    if missing {
        let names: Vec<&str> = (0..columns.len())
            .filter(|&c| columns[c].required && is_missing(product, c, &cells[c]))
            .map(|c| columns[c].lake.as_str())
            .collect();
        return Err(format!("empty or missing: {}", names.join(", ")));
    }
    if let Some(e) = bad {
        return Err(e);
    }
    let values = &out[base..];
    for (c, decl) in columns.iter().enumerate() {
        if let (Some((other, days)), Some(mine)) = (decl.at_most_days_after, values[c].day())
            && let Some(theirs) = values[other].day()
            && mine - theirs > days as i32
        {
            return Err(format!(
                "{} {} is more than {} after the day of {} ({})",
                decl.lake,
                time::date_of_day(mine),
                match days {
                    1 => "one day".to_string(),
                    n => format!("{n} days"),
                },
                columns[other].lake,
                time::date_of_day(theirs)
            ));
        }
    }
    let hash = hash_keys(
        FIRST,
        product.identity.iter().map(|&c| key(&cells[c], values[c])),
    );
    let day = values[product.partition]
        .day()
        .expect("the partition column is a required timestamp or date");
    Ok((hash, day))
}

/// An identity value: text from its cell, anything else as its typed number.
#[inline]
pub(super) fn key<'a>(cell: &Option<Cell<'a>>, typed: Typed) -> Key<'a> {
    match (typed, cell) {
        (Typed::Text, Some(Cell::Text(t))) => Key::Text(t),
        (Typed::Int(n) | Typed::Micros(n), _) => Key::Int(n),
        (Typed::Day(d), _) => Key::Int(d as i64),
        (Typed::Float(x), _) => Key::Float(x),
        // Identity columns are required: a null never reaches here.
        _ => Key::Int(0),
    }
}

/// One present value as its declared type.
fn typed(product: Product, c: usize, cell: Cell<'_>) -> Result<Typed, String> {
    let decl = &product.columns[c];
    let name = decl.lake.as_str();
    let v = match decl.kind {
        Kind::Utf8 => match cell {
            Cell::Text(_) => Typed::Text,
            other => return Err(format!("{name} `{other}` is not text")),
        },
        kind if kind.is_integer() => {
            let n = match cell {
                Cell::Int(n) => Some(n),
                Cell::Text(t) => parse_integer(trimmed(t)),
                _ => None,
            }
            .ok_or_else(|| format!("{name} `{cell}` is not an integer"))?;
            let (lo, hi) = match kind {
                Kind::Int8 => (i8::MIN as i64, i8::MAX as i64),
                Kind::Int32 => (i32::MIN as i64, i32::MAX as i64),
                _ => (i64::MIN, i64::MAX),
            };
            if let Some((a, b)) = decl.range
                && !(a..=b).contains(&(n as f64))
            {
                return Err(format!("{name} {n} is outside {}..{}", a as i64, b as i64));
            }
            if !(lo..=hi).contains(&n) {
                return Err(format!("{name} {n} does not fit {kind:?}"));
            }
            Typed::Int(n)
        }
        Kind::Float64 => {
            let x = match cell {
                Cell::Float(x) => Some(x),
                Cell::Int(n) => Some(n as f64),
                Cell::Text(t) => trimmed(t).parse::<f64>().ok(),
                _ => None,
            }
            .ok_or_else(|| format!("{name} `{cell}` is not a number"))?;
            if decl.finite && !x.is_finite() {
                return Err(format!("{name} `{cell}` is not a finite number"));
            }
            if let Some((a, b)) = decl.range
                && !(a..=b).contains(&x)
            {
                return Err(format!("{name} {x} is outside {a}..{b}"));
            }
            Typed::Float(x)
        }
        Kind::Timestamp => match cell {
            Cell::Micros(us) => Some(us),
            Cell::Text(t) => time::parse_utc(trimmed(t)).map(time::micros),
            _ => None,
        }
        .map(Typed::Micros)
        .ok_or_else(|| format!("{name} `{cell}` is not a timestamp"))?,
        // Day numbers, not dates: a row's days are compared and grouped, and turned into dates
        // only once per partition.
        _ => match cell {
            Cell::Days(d) => time::checked_day(d),
            Cell::Micros(us) => Some(time::day_number(us)),
            Cell::Text(t) => time::parse_date(trimmed(t)).map(time::day_of_date),
            _ => None,
        }
        .map(Typed::Day)
        .ok_or_else(|| format!("{name} `{cell}` is not a date"))?,
    };
    Ok(v)
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
pub(super) fn parse_integer(s: &str) -> Option<i64> {
    if let Ok(n) = s.parse::<i64>() {
        return Some(n);
    }
    let f: f64 = s.parse().ok()?;
    (f.fract() == 0.0 && f.abs() < 1e15).then_some(f as i64)
}
