//! Trust under real operation: readers that change nothing beside a writer, replaces that refuse
//! exports which would silently empty days, and cycles that converge when one day keeps failing.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use chrono::Utc;
use common::*;
use dpss_sync::sim::export::Packaging;

fn write_config(sim: &dpss_sync::sim::SimHandle, dir: &Path) -> PathBuf {
    let path = dir.join("dpss-sync.toml");
    std::fs::write(&path, config_text(sim, dir, "csv", 2)).unwrap();
    path
}

fn ok(o: &std::process::Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `status`, `plan` and `check-config` open the state read-only: they leave what a writer is
/// using (scratch and spill files, partial downloads) and the database's bytes as they were.
/// Only the next writer cleans up what a killed one left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_change_nothing_and_only_a_writer_cleans_up() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    // Before anything ran, readers see an empty state and create nothing.
    let status = ok(&run_child(&config, &["status"], None), "status");
    assert!(status.contains("does not exist yet"), "{status}");
    assert!(!dir.path().join("state/state.db").exists());
    let day = days_before_today(1)[0].to_string();
    ok(
        &run_child(&config, &["backfill", "--from", &day, "--to", &day], None),
        "backfill",
    );
    let downloads = dir.path().join("state/downloads");
    let spill = downloads.join("scratch-left/rows-2.arrow");
    std::fs::create_dir_all(spill.parent().unwrap()).unwrap();
    std::fs::write(&spill, b"spilled rows").unwrap();
    let partial = downloads.join("job.zip.part");
    std::fs::write(&partial, b"half a download").unwrap();
    let db = dir.path().join("state/state.db");
    let bytes = std::fs::read(&db).unwrap();
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["plan"],
        &["check-config"],
    ] {
        ok(&run_child(&config, args, None), &args.join(" "));
    }
    assert!(spill.exists() && partial.exists(), "a reader deleted files");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        bytes,
        "a reader wrote the state"
    );
    ok(
        &run_child(
            &config,
            &["backfill", "--from", &day, "--to", &day, "--force"],
            None,
        ),
        "second backfill",
    );
    assert!(!spill.exists() && !partial.exists(), "the writer left them");
    sim.shutdown().await;
}

/// An export of `rows` valid rows with unique identities, as the vendor's CSV.
fn big_csv(path: &Path, rows: u64) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        w,
        "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId"
    )
    .unwrap();
    let start = Utc::now().date_naive() - chrono::Duration::days(30);
    for i in 0..rows {
        let day = start + chrono::Duration::days((i % 20) as i64);
        let secs = (i / 20) % 86_400;
        writeln!(
            w,
            "SP{:07},{},ISS{:09},Open,{day}T{:02}:{:02}:{:02}Z,High impedance alarm on feeder segment {} after a sustained low-current fault,{day},WO{:010}",
            i % 9_999_991,
            1 + i % 3,
            i,
            secs / 3600,
            secs / 60 % 60,
            secs % 60,
            i % 977,
            i
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// The bug that started this: `status` and `plan` run beside a sync deleted the spill files it
/// was using. Here they run in a loop beside an import large enough to spill; the import
/// commits and the lake holds every row once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_plan_in_a_loop_beside_a_spilling_import() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let rows = 1_500_000;
    let csv = dir.path().join("export.csv");
    big_csv(&csv, rows);
    let mut import = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["import", "--product", "hid_work_orders"])
        .arg(&csv)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let downloads = dir.path().join("state/downloads");
    let (mut reads, mut beside_spills) = (0, 0);
    let outcome = loop {
        if let Some(status) = import.try_wait().unwrap() {
            break status;
        }
        let spilling = std::fs::read_dir(&downloads)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("scratch-"));
        for args in [&["status"][..], &["plan"]] {
            let o = run_child(&config, args, None);
            assert!(
                o.status.success(),
                "{args:?} beside the import: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            reads += 1;
        }
        beside_spills += spilling as u32;
    };
    let out = import.wait_with_output().unwrap();
    assert!(
        outcome.success(),
        "the import failed ({outcome:?}): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        beside_spills > 0,
        "no reader ran while the import spilled ({reads} reads)"
    );
    let lake =
        dpss_sync::lake::Lake::open(&local_lake(&dir.path().join("lake")), dir.path()).unwrap();
    let mut count = 0;
    let mut ids = HashSet::new();
    for (_, b) in lake.read_table(*P).await.unwrap() {
        count += b.num_rows() as u64;
        let wo = b
            .column_by_name("work_order_id")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow::array::StringArray>()
            .unwrap()
            .clone();
        ids.extend(wo.iter().flatten().map(str::to_string));
    }
    assert_eq!((count, ids.len() as u64), (rows, rows));
    sim.shutdown().await;
}

/// A re-sync whose export is packed differently: gzip-compressed parts are read; parts in a
/// compression the client cannot read fail the window naming them; an export empty for closed
/// days that hold rows is refused. In none of these does a row leave the lake, until an
/// operator forces the empty replace on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_syncs_of_odd_exports_load_or_refuse_and_lose_nothing() {
    let sim = sim_with(40, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    let d = days_before_today(3);
    let want = expected(&sim, d.clone(), Utc::now());
    let first = pipeline.backfill(*P, d[0], d[2], false).await.unwrap();
    assert!(first.ok(), "{:?}", first.windows);
    assert_eq!(lake_rows(dir.path()).await, want);
    let quarantine = quarantined(dir.path()).await.len();
    assert!(quarantine > 0);

    sim.state.set_packaging(Packaging::Gzip);
    let gzip = pipeline.backfill(*P, d[1], d[2], false).await.unwrap();
    assert!(gzip.ok(), "{:?}", gzip.windows);
    assert_eq!(gzip.windows.len(), 2);
    assert!(gzip.windows.iter().all(|w| w.counts.unwrap().written > 0));
    assert_eq!(lake_rows(dir.path()).await, want);

    let error_of = |r: &dpss_sync::sync::RunReport, day: chrono::NaiveDate| {
        r.windows
            .iter()
            .find(|w| w.key == day.to_string())
            .and_then(|w| w.error.clone())
            .unwrap_or_else(|| panic!("{day} did not fail: {:?}", r.windows))
    };
    sim.state.set_packaging(Packaging::Bzip2Named);
    let unreadable = pipeline.backfill(*P, d[1], d[1], false).await.unwrap();
    let error = error_of(&unreadable, d[1]);
    assert!(
        error.contains("holds no data part") && error.contains(".csv.bz2"),
        "{error}"
    );

    sim.state.set_packaging(Packaging::Empty);
    let empty = pipeline.backfill(*P, d[2], d[2], false).await.unwrap();
    let error = error_of(&empty, d[2]);
    assert!(
        error.contains(&format!("refusing to replace closed status day {}", d[2]))
            && error.contains("this export 0")
            && error.contains("--force"),
        "{error}"
    );
    assert_eq!(
        lake_rows(dir.path()).await,
        want,
        "a refused export changed the lake"
    );
    assert_eq!(quarantined(dir.path()).await.len(), quarantine);

    let forced = pipeline.backfill(*P, d[2], d[2], true).await.unwrap();
    assert!(forced.ok(), "{:?}", forced.windows);
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, d[..2].to_vec(), Utc::now()),
        "a forced replace empties the day"
    );
    sim.shutdown().await;
}

/// One day the vendor cannot export: its window fails every time. The cycles after do not
/// re-export the days around it that are final, the day itself waits longer before each try,
/// and `status` shows it with its failures and its error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_day_that_keeps_failing_backs_off_and_the_days_around_it_are_not_re_exported() {
    let d = days_before_today(6);
    let bad = d[2];
    let sim = sim_with(10, &format!("fail-day={bad}")).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    // A lake synced up to d[0], as after earlier cycles.
    pipeline.state.advance_watermark(*P, d[0]).await.unwrap();
    let keys = |r: &dpss_sync::sync::RunReport| -> Vec<String> {
        let mut k: Vec<String> = r.windows.iter().map(|w| w.key.clone()).collect();
        k.sort();
        k
    };
    let today = Utc::now().date_naive().to_string();
    let first = pipeline.sync(*P).await.unwrap();
    assert_eq!(first.windows.len(), 8, "{:?}", keys(&first));
    let failed: Vec<_> = first.windows.iter().filter(|w| w.error.is_some()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].key, bad.to_string());
    assert_eq!(pipeline.state.watermark(*P).await.unwrap(), Some(d[1]));

    // Lookback of the watermark (d0, d1), the failing day, lookback of today (d4, d5), today;
    // not d3, final since it was committed after it closed.
    let second = pipeline.sync(*P).await.unwrap();
    let s = |x: chrono::NaiveDate| x.to_string();
    assert_eq!(
        keys(&second),
        [s(d[0]), s(d[1]), s(bad), s(d[4]), s(d[5]), today.clone()]
    );
    // Failed twice in a row: the day now waits before its next try.
    let third = pipeline.sync(*P).await.unwrap();
    assert_eq!(keys(&third), [s(d[0]), s(d[1]), s(d[4]), s(d[5]), today]);
    let w = pipeline.state.window(*P, &s(bad)).await.unwrap().unwrap();
    assert_eq!(w.failures, 2);
    assert!(w.next_attempt_at.unwrap() > Utc::now() + chrono::Duration::minutes(10));

    let config = write_config(&sim, dir.path());
    let status = ok(&run_child(&config, &["status"], None), "status");
    assert!(
        status.contains(&s(bad)) && status.contains("failed 2 run(s) in a row"),
        "{status}"
    );
    assert!(status.contains("ended with status `Failed`"), "{status}");
    let plan = ok(&run_child(&config, &["plan"], None), "plan");
    assert!(plan.contains(&format!("{bad} waiting until")), "{plan}");
    sim.shutdown().await;
}

/// Three status days whose rows spread over twelve event-date partitions; `changed` alters the
/// reason of row 7 only.
fn spread_csv(path: &Path, changed: bool) {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(
        w,
        "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId"
    )
    .unwrap();
    let first = Utc::now().date_naive() - chrono::Duration::days(20);
    for i in 0..600u32 {
        let day = first + chrono::Duration::days(i64::from(i % 3));
        let event = day - chrono::Duration::days(i64::from(i % 10));
        let reason = if changed && i == 7 {
            "re-served and edited"
        } else {
            "loose neutral"
        };
        writeln!(
            w,
            "SP{i:05},{},ISS{i:05},Open,{day}T10:{:02}:00Z,{reason},{event},WO{i:06}",
            1 + i % 4,
            i % 60
        )
        .unwrap();
    }
    w.flush().unwrap();
}

/// Each data object of the lake with when it was last written.
fn lake_objects(dir: &Path) -> BTreeMap<PathBuf, std::time::SystemTime> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.join("lake/hid_work_orders")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(p.clone(), e.metadata().unwrap().modified().unwrap());
            }
        }
    }
    out
}

/// A cycle costs what changed: days served again unchanged leave their partitions as they are
/// (not read, not rewritten), and one changed row rewrites only the partition holding it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn days_served_again_unchanged_leave_their_partitions_alone() {
    let sim = sim_with(20, "").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let (same, edited) = (dir.path().join("same.csv"), dir.path().join("edited.csv"));
    spread_csv(&same, false);
    spread_csv(&edited, true);
    let import = |file: &Path| {
        ok(
            &run_child(
                &config,
                &[
                    "import",
                    "--product",
                    "hid_work_orders",
                    file.to_str().unwrap(),
                ],
                None,
            ),
            "import",
        )
    };
    import(&same);
    let first = lake_objects(dir.path());
    assert_eq!(first.len(), 12, "{first:?}");
    let rows = lake_rows(dir.path()).await;
    // The same three days again: every row is delivered, no partition is written.
    let out = import(&same);
    assert!(out.contains("written 600"), "{out}");
    assert_eq!(lake_objects(dir.path()), first);
    assert_eq!(lake_rows(dir.path()).await, rows);
    // One row edited: only its partition (event date of row 7) is rewritten.
    import(&edited);
    let after = lake_objects(dir.path());
    let rewritten: Vec<_> = after
        .iter()
        .filter(|(p, t)| first.get(*p) != Some(t))
        .map(|(p, _)| {
            p.parent()
                .unwrap()
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    // Row 7: status day first + 1, event date 7 days before it.
    let seven =
        Utc::now().date_naive() - chrono::Duration::days(20) + chrono::Duration::days(1 - 7);
    assert_eq!(rewritten, [format!("event_date={seven}")], "{after:?}");
    let reasons: Vec<String> = lake_rows(dir.path())
        .await
        .into_iter()
        .map(|r| r.5)
        .collect();
    assert_eq!(
        reasons
            .iter()
            .filter(|r| *r == "re-served and edited")
            .count(),
        1
    );
    sim.shutdown().await;
}

/// The quarantine's `lists=` on a write's `lake write cost` line, and its partitions rewritten.
fn import_cost(config: &Path, file: &Path) -> (u64, u64) {
    let out = Command::new(bin())
        .args(["--config", config.to_str().unwrap()])
        .args([
            "import",
            "--product",
            "hid_work_orders",
            file.to_str().unwrap(),
        ])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("lake write cost"))
        .unwrap_or_else(|| panic!("no cost line: {log}"));
    let field = |name: &str| -> u64 {
        let at = line.find(&format!(" {name}=")).unwrap() + name.len() + 2;
        line[at..].split(' ').next().unwrap().parse().unwrap()
    };
    (field("lists"), field("partitions_rewritten"))
}

/// An import of 60 days with one bad row lists the quarantine's top level once, then only the
/// day directories that exist: not one listing per day it replaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_of_many_days_lists_only_the_quarantine_days_that_exist() {
    let sim = sim_with(1, "").await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(&sim, dir.path());
    let file = dir.path().join("days.csv");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    writeln!(
        w,
        "ServicePointId,Phase,IssueId,Status,StatusDatetime,Reason,EventDate,WorkOrderId"
    )
    .unwrap();
    let first = Utc::now().date_naive() - chrono::Duration::days(90);
    for i in 0..60u32 {
        let day = first + chrono::Duration::days(i64::from(i));
        // Row 30 has a phase out of range: the one quarantined row.
        let phase = if i == 30 { 9 } else { 1 + i % 4 };
        writeln!(
            w,
            "SP{i:05},{phase},ISS{i:05},Open,{day}T10:00:00Z,loose neutral,{day},WO{i:06}"
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let (lists, partitions) = import_cost(&config, &file);
    assert_eq!(partitions, 59);
    assert_eq!(
        lists,
        59 + 1,
        "each partition's objects, then the quarantine's top level"
    );
    // Again, unchanged: no partition is touched, and only the one quarantine day is listed.
    let (lists, partitions) = import_cost(&config, &file);
    assert_eq!(partitions, 0);
    assert_eq!(
        lists,
        1 + 1,
        "the top level and the day holding the bad row"
    );
    sim.shutdown().await;
}
