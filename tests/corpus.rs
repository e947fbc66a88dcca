//! The bad-input corpus (`tests/data/corpus/`, plus a zip bomb and a 10 MB field made here):
//! each input has an asserted outcome, rows quarantined with a reason or a clear error that
//! names the file and the problem; never a crash, a hang or a silent drop.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};

use common::*;
use dpss_sync::config::{Settings, Sources};
use dpss_sync::sync::Pipeline;

enum Expect {
    /// Imported: rows written, and quarantined rows whose reasons contain these texts.
    Rows {
        written: u64,
        quarantined: &'static [&'static str],
    },
    /// Refused as a whole, with this in the error.
    Error(&'static str),
}

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/corpus")
        .join(name)
}

async fn pipeline(dir: &Path, extra: &str) -> Pipeline {
    let text = format!(
        "[lake]\nurl = \"file://{}/lake\"\n{extra}\n[state]\nurl = \"sqlite://{}/state.db\"\n[products.hid_work_orders]\n",
        dir.display(),
        dir.display()
    );
    let settings = Settings::load(&Sources {
        inline: vec![text],
        ..Default::default()
    })
    .unwrap();
    Pipeline::open(settings, false, writer()).await.unwrap()
}

async fn check(file: &Path, expect: Expect, extra: &str) {
    let dir = tempfile::tempdir().unwrap();
    let p = pipeline(dir.path(), extra).await;
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let report = p.import(*P, vec![file.to_path_buf()], false).await.unwrap();
    let w = &report.windows[0];
    match expect {
        Expect::Rows {
            written,
            quarantined,
        } => {
            assert!(w.error.is_none(), "{name}: {:?}", w.error);
            let c = w.counts.unwrap();
            assert_eq!(
                (c.written, c.quarantined),
                (written, quarantined.len() as u64),
                "{name}"
            );
            assert!(c.reconciles());
            assert_eq!(lake_rows(dir.path()).await.len() as u64, written, "{name}");
            let reasons: Vec<String> = quarantined_reasons(dir.path()).await;
            for want in quarantined {
                assert!(
                    reasons.iter().any(|r| r.contains(want)),
                    "{name}: no reason with `{want}` in {reasons:?}"
                );
            }
        }
        Expect::Error(want) => {
            let err = w
                .error
                .as_deref()
                .unwrap_or_else(|| panic!("{name}: imported, expected an error"));
            assert!(err.contains(want), "{name}: `{want}` not in: {err}");
            assert!(
                err.contains(&name),
                "{name}: the error does not name the file: {err}"
            );
            assert!(lake_rows(dir.path()).await.is_empty());
        }
    }
}

async fn quarantined_reasons(dir: &Path) -> Vec<String> {
    quarantined(dir).await.into_iter().map(|q| q.3).collect()
}

#[tokio::test]
async fn every_corpus_file_has_its_outcome() {
    use Expect::*;
    let cases = [
        (
            "unbalanced_quotes.csv",
            Rows {
                written: 1,
                quarantined: &["row has 6 fields"],
            },
        ),
        (
            "ragged_rows.csv",
            Rows {
                written: 2,
                quarantined: &["row has 3 fields", "row has 10 fields"],
            },
        ),
        (
            "wrong_types.csv",
            Rows {
                written: 1,
                quarantined: &[
                    "phase `two` is not an integer",
                    "`yesterday` is not a timestamp",
                    "`04/08/2024` is not a date",
                    "phase 7 is outside 1..4",
                    "`../../etc` is not a date",
                ],
            },
        ),
        (
            "missing_column.csv",
            Error("required column `Reason` is missing"),
        ),
        (
            "extra_columns.csv",
            Rows {
                written: 2,
                quarantined: &[],
            },
        ),
        (
            "header_only.csv",
            Rows {
                written: 0,
                quarantined: &[],
            },
        ),
        (
            "empty.csv",
            Rows {
                written: 0,
                quarantined: &[],
            },
        ),
        (
            "non_utf8.csv",
            Rows {
                written: 1,
                quarantined: &["reason is not valid UTF-8"],
            },
        ),
        (
            "empty_array.json",
            Rows {
                written: 0,
                quarantined: &[],
            },
        ),
        (
            "lines_with_garbage.json",
            Rows {
                written: 2,
                quarantined: &["line is not valid JSON"],
            },
        ),
        (
            "not_objects.json",
            Rows {
                written: 0,
                quarantined: &[
                    "not a JSON object",
                    "not a JSON object",
                    "not a JSON object",
                ],
            },
        ),
        ("truncated.json", Error("invalid JSON array")),
        ("empty.zip", Error("the archive is empty")),
        // Spark 2's empty result: a quiet day, zero rows (DESIGN.md, "Replacing days safely").
        (
            "only_success.zip",
            Rows {
                written: 0,
                quarantined: &[],
            },
        ),
        (
            "mixed_parts.zip",
            Rows {
                written: 2,
                quarantined: &[],
            },
        ),
        (
            "corrupt_footer.parquet",
            Error("not a readable Parquet file"),
        ),
        ("truncated.orc", Error("not a readable ORC file")),
    ];
    let listed: std::collections::BTreeSet<_> = cases.iter().map(|c| c.0).collect();
    let on_disk: std::collections::BTreeSet<String> = std::fs::read_dir(corpus(""))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        on_disk
            .iter()
            .map(String::as_str)
            .collect::<std::collections::BTreeSet<_>>(),
        listed,
        "every corpus file has a case"
    );
    for (name, expect) in cases {
        check(&corpus(name), expect, "").await;
    }
}

#[tokio::test]
async fn a_zip_bomb_is_stopped_at_the_configured_size() {
    let dir = tempfile::tempdir().unwrap();
    let bomb = dir.path().join("bomb.zip");
    let mut z = zip::ZipWriter::new(std::fs::File::create(&bomb).unwrap());
    z.start_file(
        "part-00000.csv",
        zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated),
    )
    .unwrap();
    let zeros = vec![b'0'; 1 << 20];
    for _ in 0..64 {
        z.write_all(&zeros).unwrap();
    }
    z.finish().unwrap();
    assert!(
        std::fs::metadata(&bomb).unwrap().len() < 1 << 20,
        "64 MiB packed small"
    );
    check(
        &bomb,
        Expect::Error("exceeds lake.max_uncompressed_size"),
        "max_uncompressed_size = \"8MiB\"",
    )
    .await;
}

/// A 4 MiB reason is past the default `decode.max_field_size` (1 MiB): its row is quarantined
/// with the value's first KiB and the reason names the key. An operator whose reasons are that
/// long raises the limit, and then it lands whole.
#[tokio::test]
async fn a_4_mib_reason_is_quarantined_unless_the_limit_allows_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("long_reason.csv");
    let reason = "x".repeat(4 << 20);
    std::fs::write(
        &file,
        format!("ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n9000053409,1,19865,Accepted,2024-06-15T00:00:13Z,\"{reason}\",2024-06-13,123456\n9000053409,1,19865,New,2024-06-15T00:00:12Z,short,2024-06-13,123456\n"),
    )
    .unwrap();
    check(
        &file,
        Expect::Rows {
            written: 1,
            quarantined: &["reason is 4194304 bytes, more than decode.max_field_size (1048576)"],
        },
        "",
    )
    .await;
    let kept = tempfile::tempdir().unwrap();
    let p = pipeline(kept.path(), "").await;
    p.import(*P, vec![file.clone()], false).await.unwrap();
    let q = quarantined(kept.path()).await;
    assert_eq!(q.len(), 1);
    let raw_len = {
        let lake = dpss_sync::lake::Lake::open(&local_lake(&kept.path().join("lake")), kept.path())
            .unwrap();
        let b = lake.read_quarantine(*P).await.unwrap();
        let raw = b[0]
            .column_by_name("_raw")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .value(0)
            .to_string();
        assert!(
            raw.ends_with("[first 1024 of 4194304 bytes]"),
            "{:.80}",
            raw
        );
        raw.len()
    };
    assert!(
        raw_len < 1200,
        "the quarantine keeps the first KiB: {raw_len} bytes"
    );

    let out = tempfile::tempdir().unwrap();
    let raised = "[decode]\nmax_field_size = \"8MiB\"";
    let p = pipeline(out.path(), raised).await;
    p.import(*P, vec![file], false).await.unwrap();
    let rows = lake_rows(out.path()).await;
    assert!(rows.iter().any(|r| r.5.len() == 4 << 20));
}

/// The part files of one export each hold some rows of the same day: imported together they
/// are one job, so no part replaces the day another part wrote.
#[tokio::test]
async fn part_files_sharing_a_day_are_one_import() {
    let dir = tempfile::tempdir().unwrap();
    let header =
        "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId\n";
    let mut parts = Vec::new();
    for (n, rows) in [
        "9000000001,1,11,New,2024-06-15T00:00:13Z,a,2024-06-15,101\n9000000002,2,12,New,2024-06-15T08:00:00Z,b,2024-06-15,102\n",
        "9000000003,3,13,New,2024-06-15T16:00:00Z,c,2024-06-15,103\n9000000001,1,11,New,2024-06-15T00:00:13Z,a again,2024-06-15,101\n",
    ]
    .into_iter()
    .enumerate()
    {
        let f = dir.path().join(format!("part-0000{n}.csv"));
        std::fs::write(&f, format!("{header}{rows}")).unwrap();
        parts.push(f);
    }
    let p = pipeline(dir.path(), "").await;
    let report = p.import(*P, parts, false).await.unwrap();
    assert_eq!(report.windows.len(), 1);
    let c = report.windows[0].counts.unwrap();
    assert_eq!((c.read, c.written, c.duplicates), (4, 3, 1));
    let mut reasons: Vec<String> = lake_rows(dir.path())
        .await
        .into_iter()
        .map(|r| r.5)
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["a again", "b", "c"]);
}
