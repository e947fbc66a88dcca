//! A row's identity as hashes, the same from a decoded row's cells, a buffered batch or a lake
//! object: the product declares which columns identify a row, and each value hashes by its
//! type (text as text, a timestamp or a day as its number), so one identity hashes alike
//! wherever it is read.

use std::hash::{BuildHasher, Hash, Hasher};

use arrow::array::{
    Array, Date32Array, Float64Array, Int8Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use foldhash::quality::FixedState;

use crate::product::{Kind, Product};

/// The seed of the first hash: fast (it runs once per row) and well mixed in all 64 bits, which
/// the Bloom filter slices into a block index and bit positions.
pub(super) const FIRST: u64 = 0x6470_7373;

/// The other 64 bits of a repeated identity's key, from an unrelated seed.
pub(super) const SECOND: u64 = 0x7379_6e63_2d32;

/// One value of an identity.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Key<'a> {
    Text(&'a str),
    Int(i64),
    Float(f64),
}

impl Hash for Key<'_> {
    #[inline]
    fn hash<H: Hasher>(&self, h: &mut H) {
        match self {
            Key::Text(s) => s.hash(h),
            Key::Int(n) => n.hash(h),
            Key::Float(x) => x.to_bits().hash(h),
        }
    }
}

/// The hash of an identity's values, in declared order, under `seed`.
#[inline]
pub(crate) fn hash_keys<'a>(seed: u64, keys: impl Iterator<Item = Key<'a>>) -> u64 {
    let mut h = FixedState::with_seed(seed).build_hasher();
    for k in keys {
        k.hash(&mut h);
    }
    h.finish()
}

/// One identity column of a batch.
enum KeyColumn<'a> {
    Text(&'a StringArray),
    I8(&'a Int8Array),
    I32(&'a Int32Array),
    I64(&'a Int64Array),
    Micros(&'a TimestampMicrosecondArray),
    Days(&'a Date32Array),
    F64(&'a Float64Array),
    /// The partition column, which lives in the path only: every row has the partition's day.
    Day(i64),
}

/// The identity columns of a lake (or buffered) batch, whose columns carry the lake names.
pub(crate) struct Identities<'a> {
    columns: Vec<KeyColumn<'a>>,
}

fn column<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> &'a T {
    b.column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<T>())
        .expect("a lake batch has each stored column with its declared type")
}

impl<'a> Identities<'a> {
    /// The identity columns of `b`, a batch of one partition whose day is `partition_day`.
    pub(crate) fn of(product: Product, b: &'a RecordBatch, partition_day: i32) -> Self {
        let columns = product
            .identity
            .iter()
            .map(|&c| {
                let decl = &product.columns[c];
                if !decl.stored {
                    return KeyColumn::Day(partition_day as i64);
                }
                let name = decl.lake.as_str();
                match decl.kind {
                    Kind::Utf8 => KeyColumn::Text(column(b, name)),
                    Kind::Int8 => KeyColumn::I8(column(b, name)),
                    Kind::Int32 => KeyColumn::I32(column(b, name)),
                    Kind::Int64 => KeyColumn::I64(column(b, name)),
                    Kind::Timestamp => KeyColumn::Micros(column(b, name)),
                    Kind::Date => KeyColumn::Days(column(b, name)),
                    Kind::Float64 => KeyColumn::F64(column(b, name)),
                }
            })
            .collect();
        Self { columns }
    }

    #[inline]
    fn keys(&self, row: usize) -> impl Iterator<Item = Key<'a>> + '_ {
        self.columns.iter().map(move |c| match c {
            KeyColumn::Text(a) => Key::Text(a.value(row)),
            KeyColumn::I8(a) => Key::Int(a.value(row) as i64),
            KeyColumn::I32(a) => Key::Int(a.value(row) as i64),
            KeyColumn::I64(a) => Key::Int(a.value(row)),
            KeyColumn::Micros(a) => Key::Int(a.value(row)),
            KeyColumn::Days(a) => Key::Int(a.value(row) as i64),
            KeyColumn::F64(a) => Key::Float(a.value(row)),
            KeyColumn::Day(d) => Key::Int(*d),
        })
    }

    /// The first hash of row `row`'s identity.
    #[inline]
    pub(crate) fn first(&self, row: usize) -> u64 {
        hash_keys(FIRST, self.keys(row))
    }

    /// The second hash of row `row`'s identity.
    #[inline]
    pub(crate) fn second(&self, row: usize) -> u64 {
        hash_keys(SECOND, self.keys(row))
    }

    /// Both: an identity as 128 bits, the key of the repeats map and of merges.
    pub(crate) fn both(&self, row: usize) -> (u64, u64) {
        (self.first(row), self.second(row))
    }
}

/// A row's identity as 128 bits of hash: two identities would have to agree in all of them
/// to be taken for one.
pub type Identity = (u64, u64);
