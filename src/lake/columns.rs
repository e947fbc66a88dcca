//! Reading the lake's columns back as the product declares them: each row's window day, its
//! identity, rows per window day, and a content hash per window day.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, Hash, Hasher};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{
    Date32Type, Float64Type, Int8Type, Int32Type, Int64Type, TimestampMicrosecondType,
};
use chrono::NaiveDate;

use crate::normalize::keys::Identities;
pub use crate::normalize::keys::Identity;
use crate::normalize::time::{date_of_day, day_number, day_of_date, rows_per_day};
use crate::product::{Kind, Product};

/// Each row's window day (days since the epoch) in a lake batch of the partition `partition`.
pub fn window_days(product: Product, b: &RecordBatch, partition: NaiveDate) -> Vec<i32> {
    let c = &product.columns[product.window];
    if !c.stored {
        // The window is the partition's own column.
        return vec![day_of_date(partition); b.num_rows()];
    }
    let a = b
        .column_by_name(&c.lake)
        .expect("a lake batch has its window column");
    match c.kind {
        Kind::Timestamp => a
            .as_primitive::<TimestampMicrosecondType>()
            .values()
            .iter()
            .map(|us| day_number(*us))
            .collect(),
        _ => a.as_primitive::<Date32Type>().values().to_vec(),
    }
}

/// Rows of one lake batch per window day.
pub fn window_day_rows(
    product: Product,
    b: &RecordBatch,
    partition: NaiveDate,
) -> BTreeMap<NaiveDate, u64> {
    rows_per_day(&window_days(product, b, partition))
}

/// Rows of `batches` grouped by window day (for `status`, `demo` and tests).
pub fn count_by_window_day(
    product: Product,
    batches: &[(NaiveDate, RecordBatch)],
) -> BTreeMap<NaiveDate, u64> {
    let mut out = BTreeMap::new();
    for (date, b) in batches {
        for (d, n) in window_day_rows(product, b, *date) {
            *out.entry(d).or_insert(0) += n;
        }
    }
    out
}

/// The identities of a lake batch of partition `partition`, row by row, each with its window
/// day.
pub fn identities(
    product: Product,
    b: &RecordBatch,
    partition: NaiveDate,
) -> Vec<(Identity, NaiveDate)> {
    let ids = Identities::of(product, b, day_of_date(partition));
    window_days(product, b, partition)
        .into_iter()
        .enumerate()
        .map(|(i, d)| (ids.both(i), date_of_day(d)))
        .collect()
}

/// A stored column that is not text, as a content hash reads it.
enum Number<'a> {
    I8(&'a arrow::array::Int8Array),
    I32(&'a arrow::array::Int32Array),
    Days(&'a arrow::array::Date32Array),
    I64(&'a arrow::array::Int64Array),
    Micros(&'a arrow::array::TimestampMicrosecondArray),
    F64(&'a arrow::array::Float64Array),
}

impl Number<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, i: usize, h: &mut H) {
        match self {
            Number::I8(a) => a.value(i).hash(h),
            Number::I32(a) => a.value(i).hash(h),
            Number::Days(a) => a.value(i).hash(h),
            Number::I64(a) => a.value(i).hash(h),
            Number::Micros(a) => a.value(i).hash(h),
            Number::F64(a) => a.value(i).to_bits().hash(h),
        }
    }
}

/// A hash of each window day's rows in `b`, independent of their order (a wrapping sum of
/// per-row hashes, so a multiset: a row twice counts twice). Equal hashes for a day in a
/// partition mean the day's rows there are the same: the partition need not be rewritten.
///
/// A row's content is its stored columns but the lineage (`_job_id`, `_ingested_at`), so a day
/// served again unchanged hashes the same whichever job brought it: the text columns in
/// declared order as one list, then the others in declared order, a nullable one's value after
/// whether it is present. The state keeps these hashes, so the formula is part of what an
/// existing lake's state means.
pub fn content_hashes(
    product: Product,
    b: &RecordBatch,
    partition: NaiveDate,
) -> BTreeMap<NaiveDate, u64> {
    let column = |name: &str| {
        b.column_by_name(name)
            .expect("a lake batch has each stored column")
    };
    let mut texts = Vec::new();
    let mut numbers = Vec::new();
    for (_, c) in product.stored() {
        let a = column(&c.lake);
        let nullable = !c.required;
        match c.kind {
            Kind::Utf8 => texts.push((a.as_string::<i32>(), nullable)),
            Kind::Int8 => numbers.push((Number::I8(a.as_primitive::<Int8Type>()), nullable)),
            Kind::Int32 => numbers.push((Number::I32(a.as_primitive::<Int32Type>()), nullable)),
            Kind::Date => numbers.push((Number::Days(a.as_primitive::<Date32Type>()), nullable)),
            Kind::Int64 => numbers.push((Number::I64(a.as_primitive::<Int64Type>()), nullable)),
            Kind::Timestamp => numbers.push((
                Number::Micros(a.as_primitive::<TimestampMicrosecondType>()),
                nullable,
            )),
            Kind::Float64 => numbers.push((Number::F64(a.as_primitive::<Float64Type>()), nullable)),
        }
    }
    let days = window_days(product, b, partition);
    let seed = foldhash::quality::FixedState::with_seed(0x0063_6f6e_7465_6e74);
    let mut sums: BTreeMap<i32, u64> = BTreeMap::new();
    for (i, day) in days.iter().enumerate() {
        let mut h = seed.build_hasher();
        h.write_usize(texts.len());
        for (t, nullable) in &texts {
            if *nullable {
                t.is_valid(i).hash(&mut h);
            }
            t.value(i).hash(&mut h);
        }
        for (n, nullable) in &numbers {
            if *nullable {
                let valid = match n {
                    Number::I8(a) => a.is_valid(i),
                    Number::I32(a) => a.is_valid(i),
                    Number::Days(a) => a.is_valid(i),
                    Number::I64(a) => a.is_valid(i),
                    Number::Micros(a) => a.is_valid(i),
                    Number::F64(a) => a.is_valid(i),
                };
                valid.hash(&mut h);
            }
            n.hash(i, &mut h);
        }
        let sum = sums.entry(*day).or_insert(0);
        *sum = sum.wrapping_add(h.finish());
    }
    sums.into_iter().map(|(d, h)| (date_of_day(d), h)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::test_support::batch;
    use crate::product::test_support::hid;

    fn hashes(rows: &[crate::lake::test_support::Row<'_>]) -> BTreeMap<NaiveDate, u64> {
        content_hashes(hid(), &batch(rows), NaiveDate::MIN)
    }

    #[test]
    fn a_days_hash_ignores_order_and_lineage_and_sees_any_change() {
        const DAY: i64 = 86_400_000_000;
        let rows = [
            ("WO1", "a", 10, "job-1"),
            ("WO2", "b", 20, "job-1"),
            ("WO3", "c", DAY + 5, "job-1"),
        ];
        let h = hashes(&rows);
        assert_eq!(h.len(), 2);
        let mut again = rows;
        again.reverse();
        for r in &mut again {
            r.3 = "job-2";
        }
        assert_eq!(hashes(&again), h, "order and lineage do not count");
        let mut edited = rows;
        edited[1].1 = "B";
        let e = hashes(&edited);
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
        let twice = hashes(&[rows[0], rows[0], rows[2]]);
        assert_ne!(
            twice.values().next(),
            h.values().next(),
            "a row twice is not a row once"
        );
    }
}
