//! JSON parts: one array of row objects per file, or JSON lines. Keys match columns in any
//! casing; numbers and booleans become their text.
//!
//! The array is streamed element by element: a byte scanner finds where each element ends
//! (tracking strings and nesting), and the element is parsed from its bytes with a visitor that
//! borrows its strings. Parsing from a reader, or into `serde_json::Value`s, cost an allocation
//! per key and value and made JSON the slowest format by far.
//!
//! An element or a line is one record: one that does not parse (`1e400`, nesting past serde's
//! limit) quarantines that row alone, one past `decode.max_record_size` is scanned to its end
//! without being kept, and a value past `decode.max_field_size` quarantines its row with its
//! first KiB.

mod seed;

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use serde::de::DeserializeSeed;

use super::{DecodeError, DecodeLimits, DecodeSummary, RawBuilder, Sink};
use crate::model::{VALUE_HEAD, value_head};
use crate::product::Product;
use seed::{Keys, RowSeed};

struct RowSink<'a, 'b> {
    out: RawBuilder,
    keys: Keys,
    rows: u64,
    objects: u64,
    limits: DecodeLimits,
    summary: &'a mut DecodeSummary,
    sink: &'a mut Sink<'b>,
}

impl RowSink<'_, '_> {
    /// One element: a row object, or an error row for anything else. Errs when `text` is not
    /// JSON at all.
    fn row(&mut self, text: &str) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let cells = RowSeed(&mut self.keys).deserialize(&mut de)?;
        de.end()?;
        self.rows += 1;
        match cells {
            Some(cells) => {
                self.objects += 1;
                let max = self.limits.max_field;
                if let Some(c) = cells
                    .iter()
                    .position(|v| v.as_ref().is_some_and(|v| v.len() > max))
                {
                    let v = cells[c].as_deref().expect("found above").as_bytes();
                    self.out.error_row(
                        format!(
                            "{} is {} bytes, more than decode.max_field_size ({max})",
                            self.keys.product.columns[c].lake,
                            v.len()
                        ),
                        Some(value_head(v, v.len() as u64)),
                    );
                    return Ok(());
                }
                for (c, v) in cells.iter().enumerate() {
                    self.out.set(c, v.as_deref());
                }
                self.out.end_row();
            }
            None => self
                .out
                .error_row("row is not a JSON object".into(), Some(text.to_string())),
        }
        Ok(())
    }

    /// One record as read: parsed into a row, or quarantined with why it is none.
    fn record(&mut self, record: &Record, what: &str) {
        if record.total > self.limits.max_record as u64 {
            self.rows += 1;
            self.out.error_row(
                format!(
                    "{what} is over decode.max_record_size ({} bytes; {} read)",
                    self.limits.max_record, record.total
                ),
                Some(value_head(&record.bytes, record.total)),
            );
            return;
        }
        let text = String::from_utf8_lossy(&record.bytes);
        let text = text.trim();
        if let Err(e) = self.row(text) {
            self.rows += 1;
            self.out.error_row(
                format!("{what} is not valid JSON: {e}"),
                Some(text.to_string()),
            );
        }
    }

    fn flush_if_full(&mut self) -> Result<(), DecodeError> {
        if self.out.is_full() {
            (self.sink)(self.out.take().expect("full"))?;
        }
        Ok(())
    }

    fn finish(mut self, file: &str) -> Result<(), DecodeError> {
        for (k, c) in &self.keys.columns {
            if c.is_none() {
                self.summary.unknown(k);
            }
        }
        if let Some(b) = self.out.take() {
            (self.sink)(b)?;
        }
        if self.objects > 0 {
            let keys = &self.keys;
            super::missing(
                keys.product,
                |c| keys.named[c],
                file,
                || super::found(keys.columns.keys().map(String::as_str)),
            )?;
        }
        Ok(())
    }
}

/// One element or line as read: its bytes up to the record limit, then only its first KiB, and
/// how many bytes it had in all.
struct Record {
    bytes: Vec<u8>,
    total: u64,
    limit: usize,
}

impl Record {
    fn new(limit: usize) -> Self {
        Self {
            bytes: Vec::new(),
            total: 0,
            limit,
        }
    }

    fn push(&mut self, more: &[u8]) {
        self.total += more.len() as u64;
        if self.total <= self.limit as u64 {
            self.bytes.extend_from_slice(more);
        } else if self.bytes.len() > VALUE_HEAD {
            // Past the limit: what was kept is cut to its head, and nothing more is kept.
            self.bytes.truncate(VALUE_HEAD);
            self.bytes.shrink_to(VALUE_HEAD);
        } else {
            let room = VALUE_HEAD - self.bytes.len();
            self.bytes.extend_from_slice(&more[..more.len().min(room)]);
        }
    }

    fn is_blank(&self) -> bool {
        self.bytes.iter().all(u8::is_ascii_whitespace)
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.total = 0;
    }
}

/// Where the elements of a top-level array end: outside strings and nested values, at a comma
/// or the closing bracket.
#[derive(Default)]
struct Scanner {
    depth: usize,
    in_string: bool,
    escaped: bool,
}

enum Boundary {
    Comma,
    Close,
}

impl Scanner {
    /// The next boundary in `buf`, and its offset; bytes before it belong to the element.
    fn scan(&mut self, buf: &[u8]) -> Option<(usize, Boundary)> {
        for (i, &b) in buf.iter().enumerate() {
            if self.in_string {
                if self.escaped {
                    self.escaped = false;
                } else if b == b'\\' {
                    self.escaped = true;
                } else if b == b'"' {
                    self.in_string = false;
                }
                continue;
            }
            match b {
                b'"' => self.in_string = true,
                b'{' | b'[' => self.depth += 1,
                b'}' | b']' if self.depth > 0 => self.depth -= 1,
                b']' => return Some((i, Boundary::Close)),
                b',' if self.depth == 0 => return Some((i, Boundary::Comma)),
                _ => {}
            }
        }
        None
    }
}

pub fn decode(
    product: Product,
    reader: impl Read,
    file: Arc<str>,
    limits: &DecodeLimits,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let mut r = BufReader::with_capacity(1 << 20, reader);
    let malformed = |detail: String| DecodeError::Malformed {
        file: file.to_string(),
        detail,
    };
    let read_failed = |e: std::io::Error| malformed(format!("read failed: {e}"));
    // Skip a BOM and leading whitespace to see whether this is an array or JSON lines.
    let first = loop {
        let buf = r.fill_buf().map_err(read_failed)?;
        if buf.is_empty() {
            return Ok(());
        }
        if buf.starts_with("\u{feff}".as_bytes()) {
            r.consume(3);
            continue;
        }
        let ws = buf.iter().take_while(|b| b.is_ascii_whitespace()).count();
        if ws == 0 {
            break buf[0];
        }
        r.consume(ws);
    };
    let mut rows = RowSink {
        out: RawBuilder::new(file.clone(), product.columns.len()),
        keys: Keys::new(product),
        rows: 0,
        objects: 0,
        limits: *limits,
        summary,
        sink,
    };
    let mut record = Record::new(limits.max_record);
    if first == b'[' {
        r.consume(1);
        let mut scanner = Scanner::default();
        loop {
            let buf = r.fill_buf().map_err(read_failed)?;
            if buf.is_empty() {
                return Err(malformed(
                    "invalid JSON array: the file ends before its closing `]`".into(),
                ));
            }
            let Some((at, boundary)) = scanner.scan(buf) else {
                record.push(buf);
                let n = buf.len();
                r.consume(n);
                continue;
            };
            record.push(&buf[..at]);
            r.consume(at + 1);
            let closing_empty = matches!(boundary, Boundary::Close) && record.is_blank();
            if !closing_empty {
                let element = format!("element {}", rows.rows + 1);
                rows.record(&record, &element);
                rows.flush_if_full()?;
            }
            record.clear();
            if matches!(boundary, Boundary::Close) {
                break;
            }
        }
        // Whatever follows the array must be blank: looked at a buffer at a time, never held.
        loop {
            let buf = r.fill_buf().map_err(read_failed)?;
            if buf.is_empty() {
                break;
            }
            if !buf.iter().all(u8::is_ascii_whitespace) {
                return Err(malformed("content after the JSON array".into()));
            }
            let n = buf.len();
            r.consume(n);
        }
    } else {
        loop {
            if !read_line(&mut r, &mut record).map_err(read_failed)? {
                break;
            }
            if !record.is_blank() {
                rows.record(&record, "line");
                rows.flush_if_full()?;
            }
            record.clear();
        }
    }
    rows.finish(&file)
}

/// The next line into `record` (bounded as a record is); false at the end of the input.
fn read_line(r: &mut impl BufRead, record: &mut Record) -> std::io::Result<bool> {
    let mut any = false;
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(any);
        }
        any = true;
        match memchr::memchr(b'\n', buf) {
            Some(at) => {
                record.push(&buf[..at]);
                r.consume(at + 1);
                return Ok(true);
            }
            None => {
                record.push(buf);
                let n = buf.len();
                r.consume(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Cell, RawBatch};
    use crate::product::test_support::{col, hid};

    fn run(text: &str) -> Result<Vec<RawBatch>, DecodeError> {
        let mut batches = Vec::new();
        let mut summary = DecodeSummary::default();
        decode(
            hid(),
            text.as_bytes(),
            Arc::from("t.json"),
            &DecodeLimits::default(),
            &mut summary,
            &mut |b| {
                batches.push(b);
                Ok(())
            },
        )?;
        Ok(batches)
    }

    const ROW: &str = r#"{"ServicePointId":"9000372474","Phase":1,"Issueid":"7","Status":"Accepted","StatusDatetime":"2024-06-15T00:00:12","Reason":"x","EventDate":"2024-06-13","WorkOrderId":"123456"}"#;

    #[test]
    fn a_number_keeps_every_digit_it_was_printed_with() {
        let mut batches = Vec::new();
        let atm = crate::product::test_support::atm();
        let row = r#"[{"ReceivedTime":"2025-12-14T00:30:34:000Z","ServicePointID":"S","MeterID":"J1",
            "MeasurementTime":"2025-12-13T00:59:59Z","AvgTemp":29.099999999999998,"MaxTemp":1e2}]"#;
        decode(
            atm,
            row.as_bytes(),
            Arc::from("t.json"),
            &DecodeLimits::default(),
            &mut DecodeSummary::default(),
            &mut |b| {
                batches.push(b);
                Ok(())
            },
        )
        .unwrap();
        let cell = |c| {
            batches[0].columns[col(atm, c)]
                .cell(0)
                .map(|v| v.to_string())
        };
        assert_eq!(cell("avg_temp").as_deref(), Some("29.099999999999998"));
        assert_eq!(cell("max_temp").as_deref(), Some("100.0"));
    }

    #[test]
    fn array_and_lines() {
        let arr = run(&format!("\u{feff}[\n{ROW},\n{ROW}\n]")).unwrap();
        assert_eq!(arr[0].num_rows(), 2);
        let cell = |c: usize, row| arr[0].columns[c].cell(row);
        assert_eq!(cell(col(hid(), "phase"), 0), Some(Cell::Text("1")));
        assert_eq!(cell(col(hid(), "issue_id"), 1), Some(Cell::Text("7")));
        let lines = run(&format!("{ROW}\n\n{ROW}\nnot json\n")).unwrap();
        assert_eq!(lines[0].num_rows(), 3);
        assert_eq!(lines[0].errors.len(), 1);
        assert_eq!(lines[0].errors[0].row, 2);
    }

    #[test]
    fn missing_key_is_null_and_absent_column_fails() {
        let text = format!("{ROW}\n{}\n", ROW.replace(r#""Reason":"x","#, ""));
        let b = run(&text).unwrap();
        assert_eq!(b[0].columns[col(hid(), "reason")].cell(1), None);
        let err = run(&ROW.replace(r#""Reason":"x","#, ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`Reason`"), "{err}");
    }

    #[test]
    fn broken_array_is_an_error() {
        assert!(run(&format!("[{ROW},")).is_err());
    }

    #[test]
    fn a_bad_element_of_an_array_quarantines_that_element_alone() {
        let deep = format!(
            "{{\"Reason\": {}1{}}}",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let huge = ROW.replace(r#""Phase":1"#, r#""Phase":1e400"#);
        let b = run(&format!("[{ROW},\n{huge},\n{deep},\n{ROW}]")).unwrap();
        assert_eq!((b[0].num_rows(), b[0].errors.len()), (4, 2));
        assert!(
            b[0].errors[0]
                .reason
                .contains("element 2 is not valid JSON"),
            "{:?}",
            b[0].errors
        );
        assert!(
            b[0].errors[1]
                .reason
                .contains("element 3 is not valid JSON"),
            "{:?}",
            b[0].errors
        );
        assert_eq!(
            b[0].columns[col(hid(), "issue_id")].cell(3),
            Some(Cell::Text("7"))
        );
    }

    #[test]
    fn records_and_values_past_their_limits_quarantine_their_row() {
        let limits = DecodeLimits {
            max_field: 100,
            max_record: 4096,
            ..DecodeLimits::default()
        };
        let big_field = ROW.replace(
            r#""Reason":"x""#,
            &format!(r#""Reason":"{}""#, "y".repeat(500)),
        );
        let big_record = ROW.replace(
            r#""Reason":"x""#,
            &format!(r#""Reason":"{}""#, "z".repeat(50_000)),
        );
        for text in [
            format!("{ROW}\n{big_field}\n{big_record}\n{ROW}\n"),
            format!("[{ROW},{big_field},{big_record},{ROW}]"),
        ] {
            let mut batches = Vec::new();
            decode(
                hid(),
                text.as_bytes(),
                Arc::from("t.json"),
                &limits,
                &mut DecodeSummary::default(),
                &mut |b| {
                    batches.push(b);
                    Ok(())
                },
            )
            .unwrap();
            let b = &batches[0];
            assert_eq!((b.num_rows(), b.errors.len()), (4, 2), "{text:.40}");
            assert!(
                b.errors[0]
                    .reason
                    .contains("reason is 500 bytes, more than decode.max_field_size (100)")
            );
            assert!(
                b.errors[1]
                    .reason
                    .contains("over decode.max_record_size (4096 bytes"),
                "{:?}",
                b.errors[1]
            );
            assert!(b.errors[1].raw.as_ref().unwrap().len() < 1200);
        }
    }
}
