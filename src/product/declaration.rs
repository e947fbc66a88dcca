//! What a data product is, as data: its vendor columns and their lake names and types, the rules
//! a row must pass, its identity, the column whose day is the window, how its rows are
//! partitioned and ordered, and the tokens a window or a look-up sends. Every stage reads this;
//! none names a product's column.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use chrono::{Duration, NaiveDate};

/// A column's type in the lake (and what its values are typed as on the way there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Utf8,
    Int8,
    Int32,
    Int64,
    Float64,
    /// Microseconds, UTC.
    Timestamp,
    /// A calendar day.
    Date,
}

impl Kind {
    pub(super) fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "utf8" | "string" => Kind::Utf8,
            "int8" => Kind::Int8,
            "int32" => Kind::Int32,
            "int64" => Kind::Int64,
            "float64" | "double" => Kind::Float64,
            "timestamp" => Kind::Timestamp,
            "date" => Kind::Date,
            _ => return None,
        })
    }

    pub const NAMES: &'static str = "utf8, int8, int32, int64, float64, timestamp, date";

    pub fn data_type(self) -> DataType {
        match self {
            Kind::Utf8 => DataType::Utf8,
            Kind::Int8 => DataType::Int8,
            Kind::Int32 => DataType::Int32,
            Kind::Int64 => DataType::Int64,
            Kind::Float64 => DataType::Float64,
            Kind::Timestamp => timestamp(),
            Kind::Date => DataType::Date32,
        }
    }

    pub fn is_integer(self) -> bool {
        matches!(self, Kind::Int8 | Kind::Int32 | Kind::Int64)
    }

    /// Whether a value of this kind has a day (a timestamp's UTC day, a date).
    pub fn has_day(self) -> bool {
        matches!(self, Kind::Timestamp | Kind::Date)
    }
}

/// The lake's timestamp type: microseconds, UTC.
pub fn timestamp() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// One column of a product, in the vendor's export and in the lake.
#[derive(Debug, Clone)]
pub struct ColumnDecl {
    /// As the vendor's data table spells it; matched in any casing and separation.
    pub vendor: String,
    /// The lake's snake_case name.
    pub lake: String,
    pub kind: Kind,
    /// A row without a value here is quarantined; else the lake column is nullable.
    pub required: bool,
    /// Values that mean "no value" here (the product's own list applies as well).
    pub null_values: Vec<String>,
    /// An inclusive range a number must lie in.
    pub range: Option<(f64, f64)>,
    /// A float must be finite (not NaN, not infinite).
    pub finite: bool,
    /// This day may be at most `days` after the day of `column`'s value.
    pub at_most_days_after: Option<(usize, i64)>,
    /// Dictionary-encoded in Parquet: worth it for columns whose values repeat.
    pub dictionary: bool,
    /// Written in the lake's files; a partition column that lives in the path only is not.
    pub stored: bool,
}

/// A token a day window sends: its name, and the day it carries (the window's plus an offset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowToken {
    pub name: String,
    pub offset_days: i64,
}

/// A token `query` may pass, as its `--filter` (or flag) name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub flag: String,
    pub token: String,
    /// Several values, sent comma-separated (an "In list" token).
    pub list: bool,
    /// A day (`YYYY-MM-DD`) or an instant.
    pub time: bool,
}

/// A data product, as dpss-sync syncs it.
#[derive(Debug, Clone)]
pub struct Declaration {
    /// `products.<name>`, the lake table's directory, the state's key.
    pub name: String,
    pub data_product: String,
    pub window_tokens: Vec<WindowToken>,
    pub filters: Vec<Filter>,
    /// Values that mean "no value" in any column.
    pub null_values: Vec<String>,
    pub columns: Vec<ColumnDecl>,
    /// Columns whose values together identify a row: served twice, the last copy wins.
    pub identity: Vec<usize>,
    /// The column whose greatest value wins among copies of one identity in one export (a
    /// received time); without one, or on a tie, the copy served last wins.
    pub latest: Option<usize>,
    /// The column whose UTC day is the window's day.
    pub window: usize,
    /// The column (a timestamp or a date) rows are written in order of.
    pub order: usize,
    /// The lake's partition column, in the path only: its name, and the column whose day it is.
    pub partition_name: String,
    pub partition: usize,
    /// The quarantine's partition column: the day of the window column's raw value.
    pub quarantine_partition: String,
    lake_schema: SchemaRef,
    quarantine_schema: SchemaRef,
    /// Each column's name folded for matching headers: (vendor, lake).
    folded: Vec<(String, String)>,
}

/// The quarantine's columns after the product's own (every raw value as text).
pub const QUARANTINE_EXTRA: [&str; 6] = [
    "_raw",
    "_reason",
    "_source",
    "_row_number",
    "_job_id",
    "_ingested_at",
];

/// A header or key folded for matching: no BOM, no separators, lower case (`IssueID`,
/// `Issueid`, `issue_id` and `Issue Id` are one name).
pub fn fold(name: &str) -> String {
    name.trim()
        .trim_start_matches('\u{feff}')
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect()
}

/// What a declaration says of its request: the data product and the tokens.
pub(super) struct Request {
    pub(super) data_product: String,
    pub(super) window_tokens: Vec<WindowToken>,
    pub(super) filters: Vec<Filter>,
}

/// The roles of a declaration's columns, as positions in its column list.
pub(super) struct Roles {
    pub(super) identity: Vec<usize>,
    pub(super) latest: Option<usize>,
    pub(super) window: usize,
    pub(super) order: usize,
    pub(super) partition_name: String,
    pub(super) partition: usize,
    pub(super) quarantine_partition: String,
}

impl Declaration {
    /// A declaration from its parts, with the schemas it implies. `parse` checks the parts.
    pub(super) fn new(
        name: String,
        request: Request,
        null_values: Vec<String>,
        columns: Vec<ColumnDecl>,
        roles: Roles,
    ) -> Self {
        let mut fields: Vec<Field> = columns
            .iter()
            .filter(|c| c.stored)
            .map(|c| Field::new(&c.lake, c.kind.data_type(), !c.required))
            .collect();
        fields.push(Field::new("_job_id", DataType::Utf8, false));
        fields.push(Field::new("_ingested_at", timestamp(), false));
        let mut raw: Vec<Field> = columns
            .iter()
            .map(|c| Field::new(&c.lake, DataType::Utf8, true))
            .collect();
        raw.extend([
            Field::new("_raw", DataType::Utf8, true),
            Field::new("_reason", DataType::Utf8, false),
            Field::new("_source", DataType::Utf8, false),
            Field::new("_row_number", DataType::Int64, false),
            Field::new("_job_id", DataType::Utf8, false),
            Field::new("_ingested_at", timestamp(), false),
        ]);
        let folded = columns
            .iter()
            .map(|c| (fold(&c.vendor), fold(&c.lake)))
            .collect();
        Self {
            name,
            data_product: request.data_product,
            window_tokens: request.window_tokens,
            filters: request.filters,
            null_values,
            columns,
            identity: roles.identity,
            latest: roles.latest,
            window: roles.window,
            order: roles.order,
            partition_name: roles.partition_name,
            partition: roles.partition,
            quarantine_partition: roles.quarantine_partition,
            lake_schema: Arc::new(Schema::new(fields)),
            quarantine_schema: Arc::new(Schema::new(raw)),
            folded,
        }
    }

    /// The lake schema: the stored columns in declared order, then the lineage columns. The
    /// partition column lives in the path only.
    pub fn lake_schema(&self) -> SchemaRef {
        self.lake_schema.clone()
    }

    /// The quarantine's schema: every declared column as its raw text, then why and where from.
    pub fn quarantine_schema(&self) -> SchemaRef {
        self.quarantine_schema.clone()
    }

    /// The declared columns a lake file holds, in its order.
    pub fn stored(&self) -> impl Iterator<Item = (usize, &ColumnDecl)> {
        self.columns.iter().enumerate().filter(|(_, c)| c.stored)
    }

    /// The column a header or key names, in any casing and separation.
    pub fn column_of(&self, header: &str) -> Option<usize> {
        let folded = fold(header);
        if folded.is_empty() {
            return None;
        }
        self.folded
            .iter()
            .position(|(vendor, lake)| *vendor == folded || *lake == folded)
    }

    /// Whether a text holds one of the product's vendor column names (a headed CSV, say).
    pub fn mentions_a_column(&self, text: &str) -> bool {
        let text = text.to_ascii_lowercase();
        self.columns
            .iter()
            .any(|c| text.contains(&c.vendor.to_ascii_lowercase()))
    }

    /// The tokens of one day's window.
    pub fn day_tokens(&self, day: NaiveDate) -> BTreeMap<String, String> {
        self.window_tokens
            .iter()
            .map(|t| {
                let d = day + Duration::days(t.offset_days);
                (t.name.clone(), d.format("%Y-%m-%d").to_string())
            })
            .collect()
    }

    /// The tokens of the unfiltered export: every window token not supplied (`""`, as the
    /// vendor's examples send an unused token).
    pub fn history_tokens(&self) -> BTreeMap<String, String> {
        self.window_tokens
            .iter()
            .map(|t| (t.name.clone(), String::new()))
            .collect()
    }

    /// The lake name of the window column (the column whose day a window is).
    pub fn window_name(&self) -> &str {
        &self.columns[self.window].lake
    }

    /// The lake name of the column rows are ordered by.
    pub fn order_name(&self) -> &str {
        &self.columns[self.order].lake
    }

    /// Whether `value` means "no value" in column `c`.
    #[inline]
    pub fn is_null_value(&self, c: usize, value: &str) -> bool {
        value.is_empty()
            || self.null_values.iter().any(|n| n == value)
            || self.columns[c].null_values.iter().any(|n| n == value)
    }
}
