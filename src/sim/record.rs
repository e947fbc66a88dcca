//! A row of an export as the simulator writes it, whatever the product: values in the product's
//! column order, each written by the format (text for CSV and JSON, typed for Parquet and ORC),
//! and the column names in the spellings the vendor's examples mix.

use chrono::NaiveDate;

/// One value of an exported row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Text(String),
    Int(i64),
    Float(f64),
    /// An instant, with the text the vendor prints for it; `micros` is `None` for a text that
    /// names no instant (a broken row), which a columnar export writes as null.
    Time {
        micros: Option<i64>,
        text: String,
    },
    Date(NaiveDate),
    Null,
}

impl Value {
    /// The value as a CSV cell or a JSON string holds it.
    pub fn text(&self) -> String {
        match self {
            Value::Text(t) => t.clone(),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Time { text, .. } => text.clone(),
            Value::Date(d) => d.format("%Y-%m-%d").to_string(),
            Value::Null => String::new(),
        }
    }
}

/// A column's type in a columnar export (Spark's choice for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColType {
    Utf8,
    Int32,
    Float64,
    Timestamp,
    Date,
}

/// The columns an export writes: each spelling's names (an export uses one spelling throughout,
/// chosen by its job), and each column's columnar type.
#[derive(Debug, Clone)]
pub struct Columns {
    pub spellings: Vec<Vec<String>>,
    pub types: Vec<ColType>,
}

impl Columns {
    pub fn len(&self) -> usize {
        self.types.len()
    }

    pub fn is_empty(&self) -> bool {
        self.types.is_empty()
    }

    /// The names of spelling `variant`.
    pub fn names(&self, variant: u64) -> &[String] {
        &self.spellings[(variant % self.spellings.len() as u64) as usize]
    }
}

/// One exported row: its values in column order, and the key that keeps every copy of one
/// identity in one part (so a later copy is also later in the zip).
#[derive(Debug, Clone)]
pub struct Record {
    pub values: Vec<Value>,
    pub part_key: u64,
}
