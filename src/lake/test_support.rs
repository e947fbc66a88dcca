//! Lake batches written row by row, and a lake in memory, for the lake's tests.

use std::sync::Arc;

use arrow::array::{Int8Array, RecordBatch, StringArray, TimestampMicrosecondArray};

/// Work order, reason, status µs, job.
pub(super) type Row<'a> = (&'a str, &'a str, i64, &'a str);

/// A lake batch of `rows`.
pub(super) fn batch(rows: &[Row<'_>]) -> RecordBatch {
    let text = |f: &dyn Fn(&Row<'_>) -> String| {
        Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as _
    };
    let ts = |v: Vec<i64>| Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC")) as _;
    RecordBatch::try_new(
        crate::product::test_support::hid().lake_schema(),
        vec![
            text(&|_| "SP1".into()),
            Arc::new(Int8Array::from(vec![2; rows.len()])),
            text(&|_| "I1".into()),
            text(&|_| "Open".into()),
            ts(rows.iter().map(|r| r.2).collect()),
            text(&|r| r.1.into()),
            text(&|r| r.0.into()),
            text(&|r| r.3.into()),
            ts(vec![0; rows.len()]),
        ],
    )
    .unwrap()
}

/// The status time column of a HID lake batch.
pub(super) fn status_micros(b: &RecordBatch) -> &TimestampMicrosecondArray {
    b.column_by_name("status_datetime")
        .and_then(|c| c.as_any().downcast_ref())
        .expect("a HID lake batch")
}

/// A lake in memory whose partitions split past `target` bytes.
pub(super) fn memory_lake(target: u64, scratch: &std::path::Path) -> super::Lake {
    let settings = crate::config::LakeSettings {
        url: url::Url::parse("memory://").unwrap(),
        target_file_size: target,
        max_uncompressed_size: u64::MAX,
        max_shrink: 0.5,
        format: crate::config::TableFormat::Parquet,
        retention: std::time::Duration::from_secs(7 * 86_400),
        checkpoint_interval: 10,
    };
    super::Lake::open(&settings, scratch).unwrap()
}
