//! CSV by header name: any column order and casing, a BOM, CRLF, quoted commas, quotes and
//! newlines, and the vendor's trailing comma (an unnamed empty last column).

use std::io::Read;
use std::sync::Arc;

use super::{DecodeError, DecodeSummary, RawBuilder, Sink, map_header};
use crate::product::Column;

/// `previous_header` is the header of an earlier part of the same export: a part written
/// without a header row (Spark can) is read with it, provided no field of its first row is a
/// known column name and the widths agree.
pub fn decode(
    reader: impl Read,
    file: Arc<str>,
    previous_header: &mut Option<Vec<String>>,
    summary: &mut DecodeSummary,
    sink: &mut Sink<'_>,
) -> Result<(), DecodeError> {
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .buffer_capacity(1 << 20)
        .from_reader(reader);
    let malformed = |e: csv::Error| DecodeError::Malformed {
        file: file.to_string(),
        detail: format!("CSV read failed: {e}"),
    };
    let mut record = csv::ByteRecord::new();
    if !rdr.read_byte_record(&mut record).map_err(malformed)? {
        // A part with not even a header: nothing in it.
        return Ok(());
    }
    let names: Vec<String> = record
        .iter()
        .map(|f| {
            String::from_utf8_lossy(f)
                .trim_start_matches('\u{feff}')
                .to_string()
        })
        .collect();
    let headerless = names.iter().all(|n| Column::from_header(n).is_none())
        && previous_header
            .as_ref()
            .is_some_and(|h| h.len() == names.len());
    let mapping = if headerless {
        let header = previous_header.clone().expect("checked above");
        tracing::warn!(file = %file, "part has no header row; reading it with the previous part's header");
        map_header(&header, &file, summary)?
    } else {
        let m = map_header(&names, &file, summary)?;
        *previous_header = Some(names);
        m
    };
    let width = mapping.len();
    let mut out = RawBuilder::new(file.clone());
    let mut first_is_data = headerless;
    loop {
        if !std::mem::take(&mut first_is_data)
            && !rdr.read_byte_record(&mut record).map_err(malformed)?
        {
            break;
        }
        let ragged = (record.len() < width || record.iter().skip(width).any(|f| !f.is_empty()))
            .then(|| format!("row has {} fields; the header has {width}", record.len()));
        // Usually one UTF-8 check for the whole row; it hands the buffer back either way.
        let whole = match ragged {
            Some(_) => Err(std::mem::take(&mut record)),
            None => csv::StringRecord::from_byte_record(std::mem::take(&mut record))
                .map_err(|e| e.into_byte_record()),
        };
        record = match whole {
            Ok(fields) => {
                set_row(&mut out, &mapping, fields.iter());
                fields.into_byte_record()
            }
            Err(bytes) => {
                // Ragged, or some column is not UTF-8: only a mapped column's text matters.
                let not_utf8 = mapping
                    .iter()
                    .zip(bytes.iter())
                    .find(|(c, f)| c.is_some() && std::str::from_utf8(f).is_err())
                    .map(|(c, _)| format!("{} is not valid UTF-8", c.expect("mapped").lake_name()));
                match ragged.or(not_utf8) {
                    Some(reason) => {
                        let raw = bytes
                            .iter()
                            .map(|f| String::from_utf8_lossy(f).into_owned())
                            .collect::<Vec<_>>()
                            .join(",");
                        out.error_row(reason, Some(raw));
                    }
                    None => set_row(
                        &mut out,
                        &mapping,
                        bytes
                            .iter()
                            .map(|f| std::str::from_utf8(f).unwrap_or_default()),
                    ),
                }
                bytes
            }
        };
        if out.is_full() {
            sink(out.take().expect("full"))?;
        }
    }
    if let Some(b) = out.take() {
        sink(b)?;
    }
    Ok(())
}

/// One row from its fields in file order; a column named twice keeps its first value.
fn set_row<'a>(
    out: &mut RawBuilder,
    mapping: &[Option<Column>],
    fields: impl Iterator<Item = &'a str>,
) {
    let mut seen = [false; 8];
    for (col, field) in mapping.iter().zip(fields) {
        if let Some(c) = col
            && !seen[c.index()]
        {
            seen[c.index()] = true;
            out.set(*c, Some(field));
        }
    }
    out.end_row();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::RawBatch;

    fn run(text: &[u8]) -> Result<(Vec<RawBatch>, DecodeSummary), DecodeError> {
        let mut batches = Vec::new();
        let mut summary = DecodeSummary::default();
        decode(
            text,
            Arc::from("t.csv"),
            &mut None,
            &mut summary,
            &mut |b| {
                batches.push(b);
                Ok(())
            },
        )?;
        Ok((batches, summary))
    }

    fn cell(b: &RawBatch, c: Column, row: usize) -> Option<String> {
        b.columns[c.index()].cell(row).map(|v| v.to_string())
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
        assert_eq!(cell(b, Column::WorkOrderId, 0).as_deref(), Some("123456"));
        assert_eq!(
            cell(b, Column::Reason, 0).as_deref(),
            Some("Checked, \"twice\"\r\nthen left")
        );
        assert_eq!(cell(b, Column::IssueId, 1).as_deref(), Some("19866"));
        assert_eq!(cell(b, Column::Reason, 1).as_deref(), Some("Zählerprüfung"));
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
                text.as_bytes(),
                Arc::from("p.csv"),
                &mut previous,
                &mut summary,
                &mut |b| {
                    rows.push(cell(&b, Column::Status, 0).unwrap());
                    Ok(())
                },
            )
            .unwrap();
        }
        assert_eq!(rows, ["New", "Accepted"]);
        // Without an earlier header, a headerless first part is an error naming a column.
        let err = decode(
            b"Accepted,x\n".as_slice(),
            Arc::from("q.csv"),
            &mut None,
            &mut summary,
            &mut |_| Ok(()),
        );
        assert!(err.unwrap_err().to_string().contains("required column"));
    }
}
