//! Value types every stage shares. This module imports nothing of the crate, so any stage may
//! use it without tying itself to another stage: the floors of the house run one way, and these
//! types sit at the bottom.

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde_json::Value;

/// What became of a job's rows. Every row read is written, quarantined or a duplicate.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
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

/// How a window asks the vendor for rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    /// One status day, filtered by the time tokens.
    Day,
    /// The unfiltered export: everything the vendor holds.
    History,
}

/// What one lake partition holds after a rewrite.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PartitionState {
    /// Rows per status day.
    pub day_rows: BTreeMap<NaiveDate, u64>,
    /// Each status day's content hash (`lake::content_hashes`): a day served again unchanged
    /// leaves the partition as it is.
    pub day_hashes: BTreeMap<NaiveDate, u64>,
    pub rows: u64,
    pub objects: Vec<String>,
    /// Bytes and rows of each object, in the order of `objects`: what a Delta commit's add
    /// actions record.
    #[serde(default)]
    pub object_sizes: Vec<(u64, u64)>,
    pub bytes: u64,
}

impl PartitionState {
    pub fn status_days(&self) -> BTreeSet<NaiveDate> {
        self.day_rows.keys().copied().collect()
    }
}

/// Rows a prune of the state's history deleted, per table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Pruned {
    pub runs: u64,
    pub jobs: u64,
    pub windows: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.runs + self.jobs + self.windows
    }
}

/// One row of an on-demand answer, as column name to text.
pub type OnDemandRow = BTreeMap<String, Option<String>>;

/// A JSON value as the text of one cell, the same way wherever the vendor's JSON is read (an
/// on-demand answer, a JSON export): numbers and booleans become their text, and an empty object
/// or array (the doc's `"Issueid": {}`) counts as no value.
pub fn scalar_text(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Object(o) if o.is_empty() => None,
        Value::Array(a) if a.is_empty() => None,
        other => Some(other.to_string()),
    }
}

/// The longest error text kept: what is stored in the state, logged or printed. A vendor's
/// error body or a broken export's header can be any size, and the state, `status` and the log
/// must not grow with it.
pub const MAX_ERROR_TEXT: usize = 2048;

/// `text` cut to at most [`MAX_ERROR_TEXT`] bytes, at a character boundary, with a note of the
/// cut and the full length; unchanged (and not copied) when it fits.
pub fn cut(text: &str) -> std::borrow::Cow<'_, str> {
    cut_to(text, MAX_ERROR_TEXT)
}

/// [`cut`] at `max` bytes, note included.
pub fn cut_to(text: &str, max: usize) -> std::borrow::Cow<'_, str> {
    if text.len() <= max {
        return std::borrow::Cow::Borrowed(text);
    }
    let note = format!(" … [cut: {} bytes in all]", text.len());
    let mut end = max.saturating_sub(note.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    std::borrow::Cow::Owned(format!("{}{note}", &text[..end]))
}

/// The first KiB of a value too large to keep, as the quarantine shows it.
pub const VALUE_HEAD: usize = 1024;

/// The first [`VALUE_HEAD`] bytes of `bytes` as text (a broken character at the cut, or any
/// invalid UTF-8, shown as U+FFFD), with a note of the full size when cut.
pub fn value_head(bytes: &[u8], total: u64) -> String {
    let head = String::from_utf8_lossy(&bytes[..bytes.len().min(VALUE_HEAD)]);
    if total as usize > VALUE_HEAD || bytes.len() > VALUE_HEAD {
        format!("{head} … [first {VALUE_HEAD} of {total} bytes]")
    } else {
        head.into_owned()
    }
}

/// Whether a vendor string may name a file or a path segment: 1 to 128 characters of
/// `[A-Za-z0-9._-]`, not starting with a dot (no `..`, no hidden file, no separator).
pub fn is_safe_name(s: &str) -> bool {
    (1..=128).contains(&s.len())
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// A vendor string as an error message shows it: escaped (no control character or newline
/// reaches a log line) and cut to 200 bytes.
pub fn shown(s: &str) -> String {
    let escaped: String = s.chars().flat_map(char::escape_debug).collect();
    cut_to(&escaped, 200).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counts_reconcile_only_when_every_row_is_accounted_for() {
        let mut c = Counts {
            read: 10,
            written: 7,
            quarantined: 2,
            duplicates: 1,
        };
        assert!(c.reconciles());
        c.written -= 1;
        assert!(!c.reconciles());
    }

    #[test]
    fn long_texts_are_cut_with_a_note_and_short_ones_kept() {
        assert!(matches!(cut("short"), std::borrow::Cow::Borrowed("short")));
        let long = "é".repeat(5000);
        let c = cut(&long);
        assert!(c.len() <= MAX_ERROR_TEXT, "{}", c.len());
        assert!(c.ends_with("[cut: 10000 bytes in all]"), "{c}");
        assert!(c.starts_with("éé"));
    }

    #[test]
    fn only_plain_names_are_safe() {
        for ok in ["6ab9821f-4c56-4ad8-8815-8a67be55878f", "job_1.v2", "A"] {
            assert!(is_safe_name(ok), "{ok}");
        }
        let long = "a".repeat(129);
        for bad in [
            "",
            ".hidden",
            "..",
            "../../tmp/x",
            "a/b",
            "a\\b",
            "x y",
            "é",
            &long,
            "a\0",
        ] {
            assert!(!is_safe_name(bad), "{bad:?}");
        }
        assert_eq!(shown("a\nb"), "a\\nb");
    }

    #[test]
    fn a_value_head_is_the_first_kib_with_its_size() {
        let v = vec![b'x'; 5000];
        let h = value_head(&v, 5000);
        assert!(h.starts_with(&"x".repeat(1024)) && h.ends_with("[first 1024 of 5000 bytes]"));
        assert_eq!(value_head(b"abc", 3), "abc");
    }

    #[test]
    fn scalars_become_cell_text() {
        assert_eq!(scalar_text(&json!(1)), Some("1".into()));
        assert_eq!(scalar_text(&json!(true)), Some("true".into()));
        assert_eq!(scalar_text(&json!({})), None);
        assert_eq!(scalar_text(&json!([])), None);
        assert_eq!(scalar_text(&json!(null)), None);
        assert_eq!(scalar_text(&json!({"a": 1})), Some(r#"{"a":1}"#.into()));
    }
}

/// Where the state lives (`state.url`): a SQLite file for one machine, or a PostgreSQL database
/// that several replicas share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateUrl {
    Sqlite(std::path::PathBuf),
    Postgres {
        /// As configured; printed only through [`StateUrl`]'s `Display`, which hides a password.
        url: url::Url,
        /// `state.password_file`, read at each connection (a mounted secret may rotate).
        password_file: Option<std::path::PathBuf>,
    },
}

impl std::fmt::Display for StateUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateUrl::Sqlite(path) => write!(f, "{}", path.display()),
            StateUrl::Postgres { url, .. } => {
                let mut shown = url.clone();
                if shown.password().is_some() {
                    let _ = shown.set_password(Some("***"));
                }
                write!(f, "{shown}")
            }
        }
    }
}

/// Who holds (or asks for) the lease.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub command: String,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "`{}` (pid {} on {}) since {}",
            self.command,
            self.pid,
            self.host,
            self.since
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )
    }
}

/// Where this process stands with the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseStatus {
    /// Another process holds it (named when known); this one takes it when it comes free.
    Standby { holder: Option<Holder> },
    /// This process holds it; writes carry `epoch`.
    Held { epoch: i64 },
    /// This process held it and lost it; nothing more is written under that epoch.
    Lost { epoch: i64, reason: String },
}

/// Requests a lake made of its object store, and the bytes they moved: what a cycle cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct LakeTraffic {
    pub lists: u64,
    pub gets: u64,
    pub get_bytes: u64,
    pub puts: u64,
    pub put_bytes: u64,
    pub deletes: u64,
}

impl LakeTraffic {
    /// The traffic between `earlier` and this.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            lists: self.lists - earlier.lists,
            gets: self.gets - earlier.gets,
            get_bytes: self.get_bytes - earlier.get_bytes,
            puts: self.puts - earlier.puts,
            put_bytes: self.put_bytes - earlier.put_bytes,
            deletes: self.deletes - earlier.deletes,
        }
    }
}

/// How the lake's objects are published to readers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableFormat {
    /// Hive-partitioned Parquet: a reader lists the directories.
    Parquet,
    /// A Delta Lake table: a reader follows the transaction log, one commit per window.
    Delta,
}

impl TableFormat {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "parquet" => Ok(TableFormat::Parquet),
            "delta" => Ok(TableFormat::Delta),
            other => Err(format!("`{other}` is not one of parquet, delta")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TableFormat::Parquet => "parquet",
            TableFormat::Delta => "delta",
        }
    }
}
