//! CSV by header name: any column order and casing, a BOM, CRLF, quoted commas, quotes and
//! newlines, and the vendor's trailing comma (an unnamed empty last column).
//!
//! Records are read with `csv_core` into a buffer of our own that never grows past
//! `decode.max_record_size`: a longer record (a 256 MiB line, an unclosed quote) is read to its
//! end without being kept, and quarantined with its first KiB. The `csv` crate's reader grows
//! its record to whatever the line holds.

use std::io::{self, BufRead, BufReader, Read};
use std::sync::Arc;

use csv_core::{ReadRecordResult, Reader};

use super::{DecodeError, DecodeLimits, DecodeSummary, RawBuilder, Sink, absent, map_header};
use crate::model::{VALUE_HEAD, value_head};
use crate::product::Product;

/// Fields a record may have: far more than any export's columns; more is a broken line, and
/// each field's end costs memory of its own.
const MAX_FIELDS: usize = 4096;

/// What reading one record gave.
enum Record {
    /// A record of this many fields, in `out` up to the last end.
    Fields(usize),
    /// A record past the limits, read to its end and dropped: how many bytes, and why.
    TooLarge {
        bytes: u64,
        fields: bool,
    },
    End,
}

/// Records of one part, each in bounded memory.
struct Records<R> {
    core: Reader,
    input: BufReader<R>,
    out: Vec<u8>,
    ends: Vec<usize>,
    max_record: usize,
    /// The first KiB of the current record's raw text, for the quarantine.
    head: Vec<u8>,
}

impl<R: Read> Records<R> {
    fn new(reader: R, max_record: usize) -> Self {
        Self {
            core: Reader::new(),
            input: BufReader::with_capacity(1 << 20, reader),
            out: vec![0; 4096.min(max_record.max(1))],
            ends: vec![0; 64],
            max_record: max_record.max(1),
            head: Vec::new(),
        }
    }

    /// Skips a UTF-8 byte order mark at the start.
    fn skip_bom(&mut self) -> io::Result<()> {
        let buf = self.input.fill_buf()?;
        if buf.starts_with("\u{feff}".as_bytes()) {
            self.input.consume(3);
        }
        Ok(())
    }

    fn next(&mut self) -> io::Result<Record> {
        let (mut outlen, mut endlen) = (0usize, 0usize);
        let (mut bytes, mut over_bytes, mut over_fields) = (0u64, false, false);
        self.head.clear();
        loop {
            let input = self.input.fill_buf()?;
            let (res, nin, nout, nend) =
                self.core
                    .read_record(input, &mut self.out[outlen..], &mut self.ends[endlen..]);
            let keep = nin.min(VALUE_HEAD.saturating_sub(self.head.len()));
            self.head.extend_from_slice(&input[..keep]);
            self.input.consume(nin);
            bytes += nout as u64;
            let over = over_bytes || over_fields;
            if !over {
                outlen += nout;
                endlen += nend;
            }
            match res {
                ReadRecordResult::InputEmpty => {}
                ReadRecordResult::OutputFull if over => {}
                ReadRecordResult::OutputFull if self.out.len() >= self.max_record => {
                    // From here the record is only read to its end: the buffer is reused.
                    (over_bytes, outlen, endlen) = (true, 0, 0);
                }
                ReadRecordResult::OutputFull => {
                    let len = (self.out.len() * 2).min(self.max_record);
                    self.out.resize(len, 0);
                }
                ReadRecordResult::OutputEndsFull if over => {}
                ReadRecordResult::OutputEndsFull if self.ends.len() >= MAX_FIELDS => {
                    (over_fields, outlen, endlen) = (true, 0, 0);
                }
                ReadRecordResult::OutputEndsFull => {
                    let len = (self.ends.len() * 2).min(MAX_FIELDS);
                    self.ends.resize(len, 0);
                }
                ReadRecordResult::Record if over => {
                    return Ok(Record::TooLarge {
                        bytes,
                        fields: over_fields,
                    });
                }
                ReadRecordResult::Record => return Ok(Record::Fields(endlen)),
                ReadRecordResult::End => return Ok(Record::End),
            }
        }
    }

    /// The fields of the record [`Self::next`] read.
    fn fields(&self, n: usize) -> impl Iterator<Item = &[u8]> {
        let mut start = 0;
        self.ends[..n].iter().map(move |&end| {
            let f = &self.out[start..end];
            start = end;
            f
        })
    }

    /// The record's fields as text, when all of it is UTF-8 and no field ends inside a
    /// character: one check for the whole record, where checking each field cost ten times
    /// as much on short fields.
    fn text(&self, n: usize) -> Option<(&str, &[usize])> {
        let ends = &self.ends[..n];
        let whole = std::str::from_utf8(&self.out[..ends.last().copied().unwrap_or(0)]).ok()?;
        ends.iter()
            .all(|&e| whole.is_char_boundary(e))
            .then_some((whole, ends))
    }
}

/// The fields of a record checked by [`Records::text`].
fn text_fields<'a>(whole: &'a str, ends: &'a [usize]) -> impl Iterator<Item = &'a str> {
    let mut start = 0;
    ends.iter().map(move |&end| {
        let f = &whole[start..end];
        start = end;
        f
    })
}

/// The reason a record past the limits is quarantined for.
fn too_large(bytes: u64, fields: bool, limits: &DecodeLimits) -> String {
    if fields {
        format!("record has more than {MAX_FIELDS} fields")
    } else {
        format!(
            "record is over decode.max_record_size ({} bytes; {bytes} read)",
            limits.max_record
        )
    }
}

/// `previous_header` is the header of an earlier part of the same export: a part written
/// without a header row (Spark can) is read with it, provided no field of its first row is a
/// known column name and the widths agree.
pub fn decode(
    product: Product,
    reader: impl Read,
    file: Arc<str>,
    limits: &DecodeLimits,
    previous_header: &mut Option<Vec<String>>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let read_failed = |e: io::Error| DecodeError::Malformed {
        file: file.to_string(),
        detail: format!("CSV read failed: {e}"),
    };
    let mut records = Records::new(reader, limits.max_record);
    records.skip_bom().map_err(read_failed)?;
    let names: Vec<String> = match records.next().map_err(read_failed)? {
        // A part with not even a header: nothing in it.
        Record::End => return Ok(()),
        Record::TooLarge { .. } => {
            return Err(DecodeError::HeaderTooLarge {
                file: file.to_string(),
                limit: limits.max_record,
            });
        }
        Record::Fields(n) => records
            .fields(n)
            .map(|f| String::from_utf8_lossy(f).into_owned())
            .collect(),
    };
    let first_fields = names.len();
    let headerless = names.iter().all(|n| product.column_of(n).is_none())
        && previous_header
            .as_ref()
            .is_some_and(|h| h.len() == names.len());
    let mapping = if headerless {
        let header = previous_header.clone().expect("checked above");
        tracing::warn!(file = %file, "part has no header row; reading it with the previous part's header");
        map_header(product, &header, &file, summary)?
    } else {
        let m = map_header(product, &names, &file, summary)?;
        *previous_header = Some(names);
        m
    };
    let row = Row {
        absent: absent(product, &mapping),
        mapping,
    };
    let mut out = RawBuilder::new(file.clone(), product.columns.len());
    let mut first_is_data = headerless;
    loop {
        // A headerless part's first record is a row, still in the buffer.
        let fields = if std::mem::take(&mut first_is_data) {
            first_fields
        } else {
            match records.next().map_err(read_failed)? {
                Record::End => break,
                Record::TooLarge { bytes, fields } => {
                    let raw = value_head(&records.head, bytes.max(records.head.len() as u64));
                    out.error_row(too_large(bytes, fields, limits), Some(raw));
                    if out.is_full() {
                        sink(out.take().expect("full"))?;
                    }
                    continue;
                }
                Record::Fields(n) => n,
            }
        };
        let text = records.text(fields);
        match check_row(
            product,
            &records,
            fields,
            text.is_some(),
            &row.mapping,
            limits,
        ) {
            Ok(()) => match text {
                Some((whole, ends)) => row.set(&mut out, text_fields(whole, ends)),
                // Some unmapped field is not UTF-8: only the mapped ones, checked, are kept.
                None => row.set(
                    &mut out,
                    records
                        .fields(fields)
                        .map(|f| std::str::from_utf8(f).unwrap_or_default()),
                ),
            },
            Err(reason) => {
                let raw = match reason.1 {
                    Some(big) => big,
                    None => records
                        .fields(fields)
                        .map(|f| String::from_utf8_lossy(f).into_owned())
                        .collect::<Vec<_>>()
                        .join(","),
                };
                out.error_row(reason.0, Some(raw));
            }
        }
        if out.is_full() {
            sink(out.take().expect("full"))?;
        }
    }
    if let Some(b) = out.take() {
        sink(b)?;
    }
    Ok(())
}

/// Why a record cannot be a row, if it cannot: too few fields or values past the header's
/// width, a mapped field that is not UTF-8, or one past the field limit (with its first KiB, as
/// the quarantine keeps it).
fn check_row<R: Read>(
    product: Product,
    records: &Records<R>,
    fields: usize,
    utf8: bool,
    mapping: &[Option<usize>],
    limits: &DecodeLimits,
) -> Result<(), (String, Option<String>)> {
    let width = mapping.len();
    let ragged = fields < width || records.fields(fields).skip(width).any(|f| !f.is_empty());
    if ragged {
        return Err((
            format!("row has {fields} fields; the header has {width}"),
            None,
        ));
    }
    for (col, field) in mapping.iter().zip(records.fields(fields)) {
        let Some(c) = col else { continue };
        let name = &product.columns[*c].lake;
        if field.len() > limits.max_field {
            return Err((
                format!(
                    "{name} is {} bytes, more than decode.max_field_size ({})",
                    field.len(),
                    limits.max_field
                ),
                Some(value_head(field, field.len() as u64)),
            ));
        }
        if !utf8 && std::str::from_utf8(field).is_err() {
            return Err((format!("{name} is not valid UTF-8"), None));
        }
    }
    Ok(())
}

/// Where a part's fields go: the declared column of each field (each column once), and the
/// declared columns the part does not have.
struct Row {
    mapping: Vec<Option<usize>>,
    absent: Vec<usize>,
}

impl Row {
    /// One row from its fields in file order.
    fn set<'a>(&self, out: &mut RawBuilder, fields: impl Iterator<Item = &'a str>) {
        for (col, field) in self.mapping.iter().zip(fields) {
            if let Some(c) = col {
                out.set(*c, Some(field));
            }
        }
        for c in &self.absent {
            out.set(*c, None);
        }
        out.end_row();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RawBatch;
    use crate::product::test_support::{col, hid};

    fn run(text: &[u8]) -> Result<(Vec<RawBatch>, DecodeSummary), DecodeError> {
        let mut batches = Vec::new();
        let mut summary = DecodeSummary::default();
        decode(
            hid(),
            text,
            Arc::from("t.csv"),
            &DecodeLimits::default(),
            &mut None,
            &mut summary,
            &mut |b| {
                batches.push(b);
                Ok(())
            },
        )?;
        Ok((batches, summary))
    }

    fn cell(b: &RawBatch, c: usize, row: usize) -> Option<String> {
        b.columns[c].cell(row).map(|v| v.to_string())
    }

    #[test]
    fn vendor_quirks() {
        let text = "\u{feff}WorkOrderId,Phase,IssueID,Status,StatusDatetime,Reason,EventDate,ServicePointId,Extra,\r\n\
                    123456,1,19865,Accepted,2024-06-15:00:00:13,\"Checked, \"\"twice\"\"\r\nthen left\",2024-06-13,9000053409,x,\r\n\
                    78910212,2,19866,New,2024-08-04T00:00:13Z,Zählerprüfung,2024-08-03,9000053408,y,\r\n";
        let (b, summary) = run(text.as_bytes()).unwrap();
        assert_eq!(b.len(), 1);
        let b = &b[0];
        assert_eq!(b.num_rows(), 2);
        assert!(b.errors.is_empty());
        assert_eq!(
            cell(b, col(hid(), "work_order_id"), 0).as_deref(),
            Some("123456")
        );
        assert_eq!(
            cell(b, col(hid(), "reason"), 0).as_deref(),
            Some("Checked, \"twice\"\r\nthen left")
        );
        assert_eq!(cell(b, col(hid(), "issue_id"), 1).as_deref(), Some("19866"));
        assert_eq!(
            cell(b, col(hid(), "reason"), 1).as_deref(),
            Some("Zählerprüfung")
        );
        assert_eq!(
            summary.unknown_columns.into_iter().collect::<Vec<_>>(),
            vec!["Extra"]
        );
    }

    #[test]
    fn ragged_and_binary_rows_become_row_errors() {
        let mut text =
            b"ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n\
                     1,1,2,New,2024-06-15T00:00:00Z,r,2024-06-15,3\n\
                     1,1,2\n"
                .to_vec();
        text.extend_from_slice(b"1,1,2,New,2024-06-15T00:00:00Z,\xff\xfe,2024-06-15,3\n");
        let (b, _) = run(&text).unwrap();
        let b = &b[0];
        assert_eq!(b.num_rows(), 3);
        assert_eq!(b.errors.len(), 2);
        assert!(b.errors[0].reason.contains("3 fields"), "{:?}", b.errors);
        assert_eq!(b.errors[0].row, 1);
        assert!(b.errors[1].reason.contains("reason is not valid UTF-8"));
    }

    #[test]
    fn missing_column_names_it() {
        let err = run(b"ServicePointId,Phase\n1,2\n").unwrap_err().to_string();
        assert!(err.contains("`IssueId`") && err.contains("t.csv"), "{err}");
    }

    #[test]
    fn empty_file_has_no_rows() {
        assert!(run(b"").unwrap().0.is_empty());
    }

    #[test]
    fn a_headerless_part_reads_with_the_previous_header() {
        let header =
            "Status,StatusDatetime,Reason,EventDate,WorkOrderId,ServicePointId,Phase,IssueID,";
        let mut previous = None;
        let mut summary = DecodeSummary::default();
        let mut rows = Vec::new();
        for text in [
            format!("{header}\nNew,2024-06-15T00:00:13Z,r,2024-06-15,1,9,1,7,\n"),
            "Accepted,2024-06-16T00:00:13Z,r,2024-06-15,1,9,1,7,\n".to_string(),
        ] {
            decode(
                hid(),
                text.as_bytes(),
                Arc::from("p.csv"),
                &DecodeLimits::default(),
                &mut previous,
                &mut summary,
                &mut |b| {
                    rows.push(cell(&b, col(hid(), "status"), 0).unwrap());
                    Ok(())
                },
            )
            .unwrap();
        }
        assert_eq!(rows, ["New", "Accepted"]);
        // Without an earlier header, a headerless first part is an error naming a column.
        let err = decode(
            hid(),
            b"Accepted,x\n".as_slice(),
            Arc::from("q.csv"),
            &DecodeLimits::default(),
            &mut None,
            &mut summary,
            &mut |_| Ok(()),
        );
        assert!(err.unwrap_err().to_string().contains("required column"));
    }

    const HEADER: &str =
        "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n";

    fn limited(
        text: &[u8],
        max_field: usize,
        max_record: usize,
    ) -> Result<Vec<RawBatch>, DecodeError> {
        let mut batches = Vec::new();
        let limits = DecodeLimits {
            max_field,
            max_record,
            ..DecodeLimits::default()
        };
        decode(
            hid(),
            text,
            Arc::from("big.csv"),
            &limits,
            &mut None,
            &mut DecodeSummary::default(),
            &mut |b| {
                batches.push(b);
                Ok(())
            },
        )?;
        Ok(batches)
    }

    #[test]
    fn a_field_past_its_limit_quarantines_its_row_with_the_first_kib() {
        let big = "r".repeat(5000);
        let text = format!(
            "{HEADER}1,1,2,New,2024-06-15T00:00:00Z,{big},2024-06-15,3\n1,1,2,New,2024-06-15T00:00:00Z,ok,2024-06-15,4\n"
        );
        let b = &limited(text.as_bytes(), 4096, 1 << 20).unwrap()[0];
        assert_eq!((b.num_rows(), b.errors.len()), (2, 1));
        let e = &b.errors[0];
        assert!(
            e.reason
                .contains("reason is 5000 bytes, more than decode.max_field_size (4096)"),
            "{}",
            e.reason
        );
        let raw = e.raw.as_deref().unwrap();
        assert!(
            raw.len() < 1100 && raw.ends_with("[first 1024 of 5000 bytes]"),
            "{raw}"
        );
        assert_eq!(cell(b, col(hid(), "reason"), 1).as_deref(), Some("ok"));
    }

    #[test]
    fn a_record_past_its_limit_is_read_through_and_quarantined_and_the_next_row_reads() {
        // One long line, and an unclosed quote that swallows the rest of the file.
        let long = "x".repeat(100_000);
        let text = format!(
            "{HEADER}{long},1\n1,1,2,New,2024-06-15T00:00:00Z,ok,2024-06-15,4\n9,1,2,New,2024-06-15T00:00:00Z,\"open{long}\n"
        );
        let b = &limited(text.as_bytes(), 4096, 8192).unwrap()[0];
        assert_eq!((b.num_rows(), b.errors.len()), (3, 2));
        assert!(
            b.errors[0]
                .reason
                .contains("over decode.max_record_size (8192 bytes")
        );
        assert!(b.errors[0].raw.as_deref().unwrap().starts_with("xxxx"));
        assert_eq!(cell(b, col(hid(), "reason"), 1).as_deref(), Some("ok"));
        assert!(b.errors[1].raw.as_deref().unwrap().starts_with("9,1,2,New"));
        // A header past the limit fails the part, naming it.
        let err = limited(format!("{long}\n").as_bytes(), 4096, 8192).unwrap_err();
        assert!(
            matches!(err, DecodeError::HeaderTooLarge { .. })
                && err.to_string().contains("big.csv"),
            "{err}"
        );
        // A line of nothing but commas is too many fields, not a crash or a huge vector.
        let commas = ",".repeat(100_000);
        let b = &limited(format!("{HEADER}{commas}\n").as_bytes(), 4096, 1 << 20).unwrap()[0];
        assert!(
            b.errors[0].reason.contains("more than 4096 fields"),
            "{:?}",
            b.errors
        );
    }
}
