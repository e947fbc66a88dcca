//! JSON parts: one array of row objects per file, or JSON lines. Keys match columns in any
//! casing; numbers and booleans become their text; the array is streamed element by element.

use std::collections::HashMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use serde::de::{DeserializeSeed, Error as _, SeqAccess, Visitor};
use serde_json::Value;

use super::{DecodeError, DecodeSummary, RawBuilder, Sink};
use crate::api::model::scalar_text;
use crate::product::Column;

struct RowSink<'a, 'b> {
    out: RawBuilder,
    keys: HashMap<String, Option<Column>>,
    seen: [bool; 8],
    rows: u64,
    objects: u64,
    summary: &'a mut DecodeSummary,
    sink: &'a mut Sink<'b>,
}

impl RowSink<'_, '_> {
    fn row(&mut self, value: Value) -> Result<(), DecodeError> {
        self.rows += 1;
        match value {
            Value::Object(obj) => {
                self.objects += 1;
                let mut cells: [Option<String>; 8] = Default::default();
                for (k, v) in obj {
                    let col = *self
                        .keys
                        .entry(k)
                        .or_insert_with_key(|k| Column::from_header(k));
                    if let Some(c) = col {
                        self.seen[c.index()] = true;
                        cells[c.index()] = scalar_text(&v);
                    }
                }
                for c in Column::ALL {
                    self.out.set(c, cells[c.index()].as_deref());
                }
                self.out.end_row();
            }
            other => self
                .out
                .error_row("row is not a JSON object".into(), Some(other.to_string())),
        }
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
            && let Some(c) = Column::ALL.into_iter().find(|c| !self.seen[c.index()])
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

/// Feeds each array element to the sink as it is parsed, so a big array is never held whole.
struct Elements<'s, 'a, 'b>(&'s mut RowSink<'a, 'b>, &'s mut Option<DecodeError>);

impl<'de> Visitor<'de> for Elements<'_, '_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of row objects")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while let Some(v) = seq.next_element::<Value>()? {
            if let Err(e) = self.0.row(v) {
                *self.1 = Some(e);
                return Err(A::Error::custom("stopped"));
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Elements<'_, '_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
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
    // Skip a BOM and leading whitespace to see whether this is an array or JSON lines.
    let first = loop {
        let buf = r
            .fill_buf()
            .map_err(|e| malformed(format!("read failed: {e}")))?;
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
        seen: [false; 8],
        rows: 0,
        objects: 0,
        summary,
        sink,
    };
    if first == b'[' {
        let mut stopped = None;
        let mut de = serde_json::Deserializer::from_reader(&mut r);
        let parsed = Elements(&mut rows, &mut stopped).deserialize(&mut de);
        if let Some(e) = stopped {
            return Err(e);
        }
        parsed.map_err(|e| malformed(format!("invalid JSON array: {e}")))?;
        de.end()
            .map_err(|e| malformed(format!("content after the JSON array: {e}")))?;
    } else {
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r
                .read_until(b'\n', &mut line)
                .map_err(|e| malformed(format!("read failed: {e}")))?;
            if n == 0 {
                break;
            }
            let text = String::from_utf8_lossy(&line);
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(text) {
                Ok(v) => rows.row(v)?,
                Err(e) => {
                    rows.rows += 1;
                    rows.out.error_row(
                        format!("line is not valid JSON: {e}"),
                        Some(text.to_string()),
                    );
                    if rows.out.is_full() {
                        (rows.sink)(rows.out.take().expect("full"))?;
                    }
                }
            }
        }
    }
    rows.finish(&file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RawBatch;
    use arrow::array::Array;

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
        assert_eq!(arr[0].columns[Column::Phase.index()].value(0), "1");
        assert_eq!(arr[0].columns[Column::IssueId.index()].value(1), "7");
        let lines = run(&format!("{ROW}\n\n{ROW}\nnot json\n")).unwrap();
        assert_eq!(lines[0].num_rows(), 3);
        assert_eq!(lines[0].errors.len(), 1);
        assert_eq!(lines[0].errors[0].row, 2);
    }

    #[test]
    fn missing_key_is_null_and_absent_column_fails() {
        let text = format!("{ROW}\n{}\n", ROW.replace(r#""Reason":"x","#, ""));
        let b = run(&text).unwrap();
        assert!(b[0].columns[Column::Reason.index()].is_null(1));
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
