//! JSON parts: one array of row objects per file, or JSON lines. Keys match columns in any
//! casing; numbers and booleans become their text.
//!
//! The array is streamed element by element: a byte scanner finds where each element ends
//! (tracking strings and nesting), and the element is parsed from its bytes with a visitor that
//! borrows its strings. Parsing from a reader, or into `serde_json::Value`s, cost an allocation
//! per key and value and made JSON the slowest format by far.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use serde::Deserialize;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{DecodeError, DecodeSummary, RawBuilder, Sink};
use crate::product::Column;

struct RowSink<'a, 'b> {
    out: RawBuilder,
    /// Every key spelling met in a row object, and its column.
    keys: HashMap<String, Option<Column>>,
    rows: u64,
    objects: u64,
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
                for c in Column::ALL {
                    self.out.set(c, cells[c.index()].as_deref());
                }
                self.out.end_row();
            }
            None => self
                .out
                .error_row("row is not a JSON object".into(), Some(text.to_string())),
        }
        Ok(())
    }

    fn flush_if_full(&mut self) -> Result<(), DecodeError> {
        if self.out.is_full() {
            (self.sink)(self.out.take().expect("full"))?;
        }
        Ok(())
    }

    fn finish(mut self, file: &str) -> Result<(), DecodeError> {
        for (k, c) in &self.keys {
            if c.is_none() {
                self.summary.unknown_columns.insert(k.clone());
            }
        }
        if let Some(b) = self.out.take() {
            (self.sink)(b)?;
        }
        if self.objects > 0
            && let Some(c) = Column::ALL
                .into_iter()
                .find(|c| !self.keys.values().any(|k| *k == Some(*c)))
        {
            return Err(DecodeError::MissingColumn {
                file: file.to_string(),
                column: c.vendor_name(),
                found: self.keys.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        }
        Ok(())
    }
}

/// A row's cells by column (the last of a repeated key wins), or `None` when the value is not
/// an object.
type Cells<'de> = Option<[Option<Cow<'de, str>>; 8]>;

struct RowSeed<'k>(&'k mut HashMap<String, Option<Column>>);

impl<'de> DeserializeSeed<'de> for RowSeed<'_> {
    type Value = Cells<'de>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Cells<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for RowSeed<'_> {
    type Value = Cells<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a row object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Cells<'de>, A::Error> {
        let mut cells: [Option<Cow<'de, str>>; 8] = Default::default();
        while let Some(col) = map.next_key_seed(KeySeed(&mut *self.0))? {
            match col {
                Some(c) => cells[c.index()] = map.next_value_seed(CellSeed)?,
                None => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(Some(cells))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Cells<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Cells<'de>, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Cells<'de>, E> {
        Ok(None)
    }
}

/// A key, mapped to its column once per distinct spelling.
struct KeySeed<'k>(&'k mut HashMap<String, Option<Column>>);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<Column>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<Column>, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<Column>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }
    fn visit_str<E>(self, k: &str) -> Result<Option<Column>, E> {
        if let Some(c) = self.0.get(k) {
            return Ok(*c);
        }
        let c = Column::from_header(k);
        self.0.insert(k.to_string(), c);
        Ok(c)
    }
}

/// A value as text: strings borrowed where they have no escapes, numbers and booleans
/// written out, null and empty containers absent, other containers as their JSON.
struct CellSeed;

impl<'de> DeserializeSeed<'de> for CellSeed {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for CellSeed {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(v.to_string())))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Some(Cow::Owned(
            serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string()),
        )))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
        Ok(container_text(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        let v = Value::deserialize(serde::de::value::SeqAccessDeserializer::new(seq))?;
        Ok(container_text(v))
    }
}

fn container_text(v: Value) -> Option<Cow<'static, str>> {
    crate::model::scalar_text(&v).map(Cow::Owned)
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
    reader: impl Read,
    file: Arc<str>,
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
        out: RawBuilder::new(file.clone()),
        keys: HashMap::new(),
        rows: 0,
        objects: 0,
        summary,
        sink,
    };
    if first == b'[' {
        r.consume(1);
        let mut scanner = Scanner::default();
        let mut element = Vec::new();
        let mut elements = 0u64;
        loop {
            let buf = r.fill_buf().map_err(read_failed)?;
            if buf.is_empty() {
                return Err(malformed(
                    "invalid JSON array: the file ends before its closing `]`".into(),
                ));
            }
            let Some((at, boundary)) = scanner.scan(buf) else {
                element.extend_from_slice(buf);
                let n = buf.len();
                r.consume(n);
                continue;
            };
            element.extend_from_slice(&buf[..at]);
            r.consume(at + 1);
            let text = std::str::from_utf8(&element)
                .map_err(|e| {
                    malformed(format!("invalid JSON array: element {}: {e}", elements + 1))
                })?
                .trim();
            let closing_empty = matches!(boundary, Boundary::Close) && text.is_empty();
            if !closing_empty {
                elements += 1;
                rows.row(text).map_err(|e| {
                    malformed(format!("invalid JSON array: element {elements}: {e}"))
                })?;
                rows.flush_if_full()?;
            }
            element.clear();
            if matches!(boundary, Boundary::Close) {
                break;
            }
        }
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).map_err(read_failed)?;
        if !rest.iter().all(u8::is_ascii_whitespace) {
            return Err(malformed("content after the JSON array".into()));
        }
    } else {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line).map_err(read_failed)?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            if let Err(e) = rows.row(text) {
                rows.rows += 1;
                rows.out.error_row(
                    format!("line is not valid JSON: {e}"),
                    Some(text.to_string()),
                );
            }
            rows.flush_if_full()?;
        }
    }
    rows.finish(&file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Cell, RawBatch};

    fn run(text: &str) -> Result<Vec<RawBatch>, DecodeError> {
        let mut batches = Vec::new();
        let mut summary = DecodeSummary::default();
        decode(
            text.as_bytes(),
            Arc::from("t.json"),
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
    fn array_and_lines() {
        let arr = run(&format!("\u{feff}[\n{ROW},\n{ROW}\n]")).unwrap();
        assert_eq!(arr[0].num_rows(), 2);
        let cell = |c: Column, row| arr[0].columns[c.index()].cell(row);
        assert_eq!(cell(Column::Phase, 0), Some(Cell::Text("1")));
        assert_eq!(cell(Column::IssueId, 1), Some(Cell::Text("7")));
        let lines = run(&format!("{ROW}\n\n{ROW}\nnot json\n")).unwrap();
        assert_eq!(lines[0].num_rows(), 3);
        assert_eq!(lines[0].errors.len(), 1);
        assert_eq!(lines[0].errors[0].row, 2);
    }

    #[test]
    fn missing_key_is_null_and_absent_column_fails() {
        let text = format!("{ROW}\n{}\n", ROW.replace(r#""Reason":"x","#, ""));
        let b = run(&text).unwrap();
        assert_eq!(b[0].columns[Column::Reason.index()].cell(1), None);
        let err = run(&ROW.replace(r#""Reason":"x","#, ""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`Reason`"), "{err}");
    }

    #[test]
    fn broken_array_is_an_error() {
        assert!(run(&format!("[{ROW},")).is_err());
    }
}
