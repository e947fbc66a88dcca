//! The lake as Delta Lake tables (`lake.format = "delta"`), end to end against the simulator and
//! read back through the log by independent readers: the Python `deltalake` package (time travel
//! included) and Polars' `scan_delta`. Two writers racing on one table, and crashes between the
//! file puts, the log commits and the state commit.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::Utc;
use common::*;
use dpss_sync::config::{Settings, Sources};
use dpss_sync::lake::Lake;
use dpss_sync::lake::delta::{Change, CommitNote, TableKind};
use dpss_sync::sim::SimConfig;
use dpss_sync::sync::Pipeline;

const DELTA: &str = "[lake]\nformat = \"delta\"\n";

fn delta_settings(sim: &dpss_sync::sim::SimHandle, dir: &Path, file_type: &str) -> Settings {
    Settings::load(&Sources {
        inline: vec![config_text(sim, dir, file_type, 2), DELTA.to_string()],
        ..Default::default()
    })
    .unwrap()
}

/// The held-out scenario in Delta mode: a first sync, a re-sync that changes nothing, a late row
/// that lands once; each read back through the log; the version before the late row's window
/// read by time travel.
async fn scenario(file_type: &str, seed: u64) {
    let sim = start(SimConfig {
        seed,
        rows_per_day: 40,
        ..quick_sim("")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("lake/hid_work_orders");
    let pipeline = Pipeline::open(delta_settings(&sim, dir.path(), file_type), true, writer())
        .await
        .unwrap();
    let report = pipeline.sync(*P).await.unwrap();
    assert!(report.ok(), "{file_type}: {report:?}");
    let now = Utc::now();
    let days: Vec<_> = dpss_sync::plan::available_from(now.date_naive())
        .iter_days()
        .take_while(|d| *d < now.date_naive())
        .collect();
    let want = expected(&sim, days, now);
    let ours = closed(lake_rows(dir.path()).await);
    assert!(
        ours == want,
        "{file_type}: the project's reader differs from the served rows"
    );
    let Some(first) = read_delta(&table, None) else {
        sim.shutdown().await;
        return;
    };
    assert!(
        closed(first.rows.clone()) == want,
        "{file_type}: the Delta reader sees {} closed rows, the simulator served {}",
        closed(first.rows.clone()).len(),
        want.len()
    );
    let quarantine = read_quarantine_rows(&dir.path().join("lake/_quarantine/hid_work_orders"));
    let bad = expected_invalid(
        &sim,
        dpss_sync::plan::available_from(now.date_naive())
            .iter_days()
            .take_while(|d| *d < now.date_naive()),
        now,
    );
    assert!(
        bad.is_subset(&quarantine),
        "{file_type}: {} invalid rows missing from the quarantine table",
        bad.difference(&quarantine).count()
    );

    // A re-sync of unchanged days: the table reads the same.
    assert!(pipeline.sync(*P).await.unwrap().ok());
    let again = read_delta(&table, None).unwrap();
    assert!(
        closed(again.rows.clone()) == want,
        "{file_type}: a re-sync changed the table"
    );

    // A late row for yesterday lands once, in one commit; the version before it lacks it.
    let yesterday = now.date_naive() - chrono::Duration::days(1);
    let mut late = sim
        .state
        .rows_for_day(yesterday, Utc::now())
        .into_iter()
        .find(|r| r.is_valid())
        .unwrap();
    late.status = "Closed";
    late.work_order_id = "LATE-1".into();
    sim.state.inject_row(late);
    assert!(pipeline.sync(*P).await.unwrap().ok());
    let after = read_delta(&table, None).unwrap();
    let closed_after = closed(after.rows.clone());
    assert_eq!(closed_after.len(), want.len() + 1, "{file_type}");
    assert_eq!(closed_after.iter().filter(|r| r.7 == "LATE-1").count(), 1);
    // Time travel: the first version holding the late row, and the one before it.
    let landed = (again.version + 1..=after.version)
        .find(|v| {
            read_delta(&table, Some(*v))
                .unwrap()
                .rows
                .iter()
                .any(|r| r.7 == "LATE-1")
        })
        .expect("some version holds the late row");
    let before = read_delta(&table, Some(landed - 1)).unwrap();
    assert!(
        closed(before.rows) == want,
        "{file_type}: version {} (before the late row's window) is not the table before it",
        landed - 1
    );
    // Old files stay on disk for time travel; readers of the log never read them.
    let disk = files_on_disk(&table);
    assert!(after.files.is_subset(&disk));
    assert!(
        disk.len() > after.files.len(),
        "{file_type}: the replaced files should remain until VACUUM"
    );
    assert_txns_unique(&table);
    assert_txns_unique(&dir.path().join("lake/_quarantine/hid_work_orders"));
    // The state records the version each window committed at.
    let versions = window_versions(dir.path()).await;
    assert!(
        versions.values().any(|v| *v == Some(landed)),
        "{file_type}: no window records version {landed}: {versions:?}"
    );
    sim.shutdown().await;
}

/// The quarantine table's (work_order_id, issue_id, status), through its log.
fn read_quarantine_rows(table: &Path) -> BTreeSet<(String, String, String)> {
    let script = r#"
import os, sys, json, deltalake
t = deltalake.DeltaTable(sys.argv[1]).to_pyarrow_table()
c = {n: t.column(n).to_pylist() for n in ["work_order_id", "issue_id", "status"]}
for i in range(t.num_rows):
    print(json.dumps([c["work_order_id"][i] or "", c["issue_id"][i] or "", c["status"][i] or ""]))
sys.stdout.flush()
os._exit(0)
"#;
    let out = std::process::Command::new("python3")
        .args(["-c", script, &table.display().to_string()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn window_versions(dir: &Path) -> BTreeMap<String, Option<i64>> {
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=ro",
        dir.join("state/state.db").display()
    ))
    .await
    .unwrap();
    let rows: Vec<(String, Option<i64>)> =
        sqlx::query_as("SELECT window_key, table_version FROM windows WHERE stage = 'committed'")
            .fetch_all(&pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_scenario_csv() {
    scenario("csv", 11).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_scenario_json() {
    scenario("json", 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_scenario_parquet() {
    scenario("parquet", 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_scenario_orc() {
    scenario("orc", 14).await;
}

/// Two writers on one table, each from the same version, as two processes that nothing stops
/// would be: the log's put-if-absent lets one commit per version; the other is retried on the
/// new version when it touched other partitions, and refused, naming them, when it touched the
/// same ones or reused the product's transaction version.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_writers_racing_never_both_commit_a_version() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = local_lake(&dir.path().join("lake"));
    settings.format = dpss_sync::config::TableFormat::Delta;
    let a = Lake::open(&settings, dir.path()).unwrap();
    let b = Lake::open(&settings, dir.path()).unwrap();
    let table_dir = dir.path().join("lake/hid_work_orders");
    let base = a.ensure_table(*P, TableKind::Data).await.unwrap();
    let v0 = base.version();
    let add = |t: &dpss_sync::lake::delta::Table, day: &str, name: &str| Change {
        removes: Vec::new(),
        adds: t.adds(&[(
            format!("hid_work_orders/event_date={day}/{name}.parquet"),
            10,
            1,
        )]),
    };
    let note = |txn: i64, id: &str| CommitNote {
        product: *P,
        txn,
        commit_id: id.into(),
        window: Some("race".into()),
        job_id: "j".into(),
    };

    // Both from the same version, other partitions: the second to commit finds the version
    // taken, sees the winner touched none of its partitions, and lands on top of it.
    let mut ta = a.ensure_table(*P, TableKind::Data).await.unwrap();
    let mut tb = b.ensure_table(*P, TableKind::Data).await.unwrap();
    let ca = add(&ta, "2024-06-01", "a");
    let cb = add(&tb, "2024-06-02", "b");
    assert_eq!(ta.commit(&ca, &note(1, "a")).await.unwrap().version, v0 + 1);
    assert_eq!(tb.commit(&cb, &note(2, "b")).await.unwrap().version, v0 + 2);

    // The same partition from the same version: exactly one commits; the other names it.
    let mut ta = a.ensure_table(*P, TableKind::Data).await.unwrap();
    let mut tb = b.ensure_table(*P, TableKind::Data).await.unwrap();
    let ca = add(&ta, "2024-06-03", "c");
    let cb = add(&tb, "2024-06-03", "d");
    let (nc, nd) = (note(3, "c"), note(4, "d"));
    let (ra, rb) = tokio::join!(ta.commit(&ca, &nc), tb.commit(&cb, &nd));
    let (won, lost) = match (ra, rb) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        (ra, rb) => panic!("exactly one of two same-partition commits must land: {ra:?} {rb:?}"),
    };
    assert_eq!(won.version, v0 + 3);
    assert!(
        lost.to_string().contains("event_date=2024-06-03"),
        "the refusal names the partition: {lost}"
    );

    // A transaction version another writer already used: refused, whatever the partitions.
    let mut tb = b.ensure_table(*P, TableKind::Data).await.unwrap();
    let mut ta = a.open_table(*P, TableKind::Data).await.unwrap().unwrap();
    let cb = add(&tb, "2024-06-04", "e");
    tb.commit(&cb, &note(5, "e")).await.unwrap();
    let ca = add(&ta, "2024-06-05", "f");
    let err = ta.commit(&ca, &note(5, "f")).await.unwrap_err();
    assert!(
        err.to_string().contains("transaction hid_work_orders/5"),
        "{err}"
    );

    // A commit retried after its first attempt landed (an answer lost) is recognised, not doubled.
    let mut ta = a.open_table(*P, TableKind::Data).await.unwrap().unwrap();
    let mut stale = a.open_table(*P, TableKind::Data).await.unwrap().unwrap();
    let ca = add(&ta, "2024-06-06", "g");
    let first = ta.commit(&ca, &note(6, "g")).await.unwrap();
    let again = stale.commit(&ca, &note(6, "g")).await.unwrap();
    assert_eq!(first.version, again.version);

    assert_txns_unique(&table_dir);
    let log: Vec<_> = std::fs::read_dir(table_dir.join("_delta_log"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
        .collect();
    assert_eq!(
        log.len() as u64,
        first.version + 1,
        "one log entry per version, none lost"
    );
}

/// A process killed at each stage boundary of a Delta write, the two between the log commits
/// and the state's included, leaves a lake the next run completes: every window's rows once in
/// the current version, no txn version twice in either log, no file the logs do not name, and
/// no second job for a window.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_delta_stage_is_resolved_from_the_log() {
    use dpss_sync::failpoint::{DELTA_POINTS, POINTS};
    let sim = start(SimConfig {
        rows_per_day: 30,
        job_delay: std::time::Duration::from_millis(150),
        ..quick_sim("")
    })
    .await;
    let days = days_before_today(4);
    let keys: Vec<String> = days.iter().map(|d| d.to_string()).collect();
    let want = expected(&sim, days.clone(), Utc::now());
    for point in POINTS.iter().chain(&DELTA_POINTS) {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("dpss-sync.toml");
        let text = config_text(&sim, dir.path(), "csv", 2).replace(
            "[lake]\n",
            "[lake]\nformat = \"delta\"\ntarget_file_size = \"1KiB\"\n",
        );
        std::fs::write(&config, text).unwrap();
        let args = ["backfill", "--from", &keys[0], "--to", &keys[3]];
        let crashed = run_child(&config, &args, Some(point));
        assert!(
            !crashed.status.success(),
            "{point}: the failpoint did not fire"
        );
        assert!(String::from_utf8_lossy(&crashed.stderr).contains(&format!("failpoint {point}")));
        // Another writer's object, put after the crash and not committed yet: the repair of the
        // crashed write must not take it (its name carries another write's token).
        // Beside an object of the crashed write, so the repair looks at its directory.
        let planted = (*point == "after-write").then(|| {
            let table = dir.path().join("lake/hid_work_orders");
            let crashed = files_on_disk(&table)
                .difference(&files_in_log(&table))
                .next()
                .map(|p| table.join(p))
                .expect("the crashed write left its objects");
            let other =
                crashed.with_file_name("part-00000-0123456789abcdef0123456789abcdef.parquet");
            std::fs::write(&other, b"another writer's part").unwrap();
            (crashed, other)
        });
        let finished = run_child(&config, &args, None);
        assert!(
            finished.status.success(),
            "{point}: {}",
            String::from_utf8_lossy(&finished.stderr)
        );
        if let Some((crashed, other)) = planted {
            assert!(!crashed.exists(), "the crashed write's own object was left");
            assert!(other.exists(), "the repair removed another writer's object");
            std::fs::remove_file(&other).unwrap();
        }
        let log = String::from_utf8_lossy(&finished.stderr);
        let resolved = match *point {
            "after-log-commit" => Some("had committed to the Delta table"),
            "after-write" | "between-log-commits" => Some("never committed to the Delta table"),
            _ => None,
        };
        if let Some(said) = resolved {
            assert!(
                log.contains(said),
                "{point}: the rerun should say it {said}: {log}"
            );
        }
        let jobs = recorded_jobs(&dir.path().join("state/state.db"), &keys).await;
        assert!(jobs.values().all(|j| j.len() == 1), "{point}: {jobs:?}");
        let mut settings = local_lake(&dir.path().join("lake"));
        settings.format = dpss_sync::config::TableFormat::Delta;
        assert_eq!(lake_rows_in(&settings, dir.path()).await, want, "{point}");
        if let Some(read) = read_delta(&dir.path().join("lake/hid_work_orders"), None) {
            assert_eq!(read.rows, want, "{point}: the Delta reader");
        }
        for table in ["lake/hid_work_orders", "lake/_quarantine/hid_work_orders"] {
            let table = dir.path().join(table);
            assert_txns_unique(&table);
            let orphans: Vec<_> = files_on_disk(&table)
                .difference(&files_in_log(&table))
                .cloned()
                .collect();
            assert!(
                orphans.is_empty(),
                "{point}: files no version names: {orphans:?}"
            );
        }
    }
    sim.shutdown().await;
}

/// `check-config --online` and every write refuse a table this tool did not lay out, saying how
/// it differs, and leave it alone.
#[tokio::test]
async fn a_table_that_differs_is_refused_with_the_difference_named() {
    use deltalake_core::kernel::{DataType, StructField};
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("lake");
    let table = root.join("hid_work_orders");
    std::fs::create_dir_all(&table).unwrap();
    deltalake_core::operations::create::CreateBuilder::new()
        .with_location(url::Url::from_directory_path(&table).unwrap().to_string())
        .with_columns([
            StructField::new("work_order_id", DataType::STRING, true),
            StructField::new("event_date", DataType::DATE, true),
        ])
        .with_partition_columns(["work_order_id"])
        .await
        .unwrap();
    let mut settings = local_lake(&root);
    settings.format = dpss_sync::config::TableFormat::Delta;
    let lake = Lake::open(&settings, dir.path()).unwrap();
    let err = lake.ensure_table(*P, TableKind::Data).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("partitioned by [work_order_id], expected [event_date]"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_dir(table.join("_delta_log")).unwrap().count(),
        1,
        "the refused table is left as it was"
    );
}

/// A lake written in the Hive layout and then switched to `delta` keeps every row: the table's
/// first version adopts the objects already there, and the next sync rewrites through the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parquet_lake_switched_to_delta_keeps_its_rows() {
    let sim = sim_with(30, "").await;
    let dir = tempfile::tempdir().unwrap();
    let hive = Pipeline::open(settings(&sim, dir.path(), "csv", 2), true, writer())
        .await
        .unwrap();
    assert!(hive.sync(*P).await.unwrap().ok());
    let before = closed(lake_rows(dir.path()).await);
    hive.state.close().await;
    drop(hive);
    let delta = Pipeline::open(delta_settings(&sim, dir.path(), "csv"), true, writer())
        .await
        .unwrap();
    assert!(delta.sync(*P).await.unwrap().ok());
    if let Some(read) = read_delta(&dir.path().join("lake/hid_work_orders"), None) {
        assert!(
            closed(read.rows) == before,
            "the switch lost or doubled rows"
        );
    }
    // Back to the Hive layout is refused: its listing would read the files commits removed.
    delta.state.close().await;
    drop(delta);
    let back = Pipeline::open(settings(&sim, dir.path(), "csv", 2), true, writer()).await;
    let err = back
        .err()
        .expect("a parquet writer on a Delta table is refused");
    assert!(
        err.to_string().contains("set lake.format = \"delta\""),
        "{err}"
    );
    sim.shutdown().await;
}

/// Housekeeping: with `lake.checkpoint_interval = 2` a checkpoint is written every second
/// version, and the vacuum after it deletes the files commits removed longer than
/// `lake.retention` ago and files no version ever named that are as old; the current version
/// still reads whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_and_vacuum_keep_the_log_short_and_the_disk_clean() {
    let sim = sim_with(30, "").await;
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("lake/hid_work_orders");
    let settings = Settings::load(&Sources {
        inline: vec![
            config_text(&sim, dir.path(), "csv", 2),
            "[lake]\nformat = \"delta\"\ncheckpoint_interval = 2\nretention = \"1s\"\n".into(),
        ],
        ..Default::default()
    })
    .unwrap();
    let pipeline = Pipeline::open(settings, true, writer()).await.unwrap();
    assert!(pipeline.sync(*P).await.unwrap().ok());
    // An object no commit names, old enough to be past the retention: a leftover VACUUM removes.
    let yesterday = Utc::now().date_naive() - chrono::Duration::days(1);
    let stray = table.join(format!("event_date={yesterday}/part-stray.parquet"));
    std::fs::write(&stray, b"not committed").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&stray)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .unwrap();
    for n in 0..4 {
        let mut late = sim
            .state
            .rows_for_day(yesterday, Utc::now())
            .into_iter()
            .find(|r| r.is_valid())
            .unwrap();
        late.work_order_id = format!("LATE-{n}");
        sim.state.inject_row(late);
        tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        assert!(pipeline.sync(*P).await.unwrap().ok());
    }
    let log = table.join("_delta_log");
    let checkpoints: Vec<_> = std::fs::read_dir(&log)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n.contains(".checkpoint."))
        .collect();
    assert!(!checkpoints.is_empty(), "no checkpoint was written");
    assert!(log.join("_last_checkpoint").is_file());
    assert!(!stray.exists(), "VACUUM left an old uncommitted file");
    // Files removed well before the last vacuum are gone; the current version's all remain.
    let last_checkpoint: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(log.join("_last_checkpoint")).unwrap())
            .unwrap();
    let checkpointed = last_checkpoint["version"].as_u64().unwrap();
    let stamp = |v: u64| -> (i64, Vec<String>) {
        let text = std::fs::read_to_string(log.join(format!("{v:020}.json"))).unwrap();
        let mut at = 0;
        let mut removed = Vec::new();
        for line in text.lines() {
            let a: serde_json::Value = serde_json::from_str(line).unwrap();
            if let Some(t) = a["commitInfo"]["timestamp"].as_i64() {
                at = t;
            }
            if let Some(p) = a["remove"]["path"].as_str() {
                removed.push(p.to_string());
            }
        }
        (at, removed)
    };
    let (vacuumed_at, _) = stamp(checkpointed);
    let mut expired = 0;
    for v in 1..checkpointed {
        let (at, removed) = stamp(v);
        if at < vacuumed_at - 1000 {
            for p in removed {
                expired += 1;
                assert!(
                    !table.join(&p).exists(),
                    "{p}, removed at version {v}, was not vacuumed"
                );
            }
        }
    }
    assert!(
        expired > 0,
        "no file was old enough to vacuum: the test proved nothing"
    );
    if let Some(read) = read_delta(&table, None) {
        assert!(read.files.is_subset(&files_on_disk(&table)));
        assert_eq!(
            read.rows
                .iter()
                .filter(|r| r.7.starts_with("LATE-"))
                .count(),
            4
        );
    }
    sim.shutdown().await;
}

/// Two processes that nothing stops (each with a state of its own, so no lease between them)
/// backfilling the same days into one Delta lake at once: both finish, the losers of each race
/// redo their window on the new version, and the table holds every row once, no txn version
/// twice and no object its log never named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_backfilling_one_delta_lake_at_once() {
    let sim = start(SimConfig {
        rows_per_day: 60,
        job_delay: std::time::Duration::from_millis(200),
        ..quick_sim("")
    })
    .await;
    let days = days_before_today(6);
    let keys: Vec<String> = days.iter().map(|d| d.to_string()).collect();
    let want = expected(&sim, days.clone(), Utc::now());
    let dir = tempfile::tempdir().unwrap();
    let configs: Vec<_> = ["a", "b"]
        .iter()
        .map(|w| {
            let text = config_text(&sim, dir.path(), "csv", 2)
                .replace("[lake]\n", "[lake]\nformat = \"delta\"\n")
                .replace("state/state.db", &format!("state-{w}/state.db"));
            let path = dir.path().join(format!("{w}.toml"));
            std::fs::write(&path, text).unwrap();
            path
        })
        .collect();
    let args = ["backfill", "--from", &keys[0], "--to", &keys[5]];
    let children: Vec<_> = configs
        .iter()
        .map(|c| {
            std::process::Command::new(bin())
                .arg("--config")
                .arg(c)
                .args(args)
                .env("RUST_LOG", "warn")
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut lost_races = 0;
    for child in children {
        let out = child.wait_with_output().unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{log}");
        lost_races += log.matches("committed by another writer").count();
    }
    assert!(
        lost_races > 0,
        "the two processes never raced for a version: the test proved nothing"
    );
    let table = dir.path().join("lake/hid_work_orders");
    let mut settings = local_lake(&dir.path().join("lake"));
    settings.format = dpss_sync::config::TableFormat::Delta;
    assert_eq!(lake_rows_in(&settings, dir.path()).await, want);
    if let Some(read) = read_delta(&table, None) {
        assert_eq!(read.rows, want, "the Delta readers");
    }
    for t in [
        table.clone(),
        dir.path().join("lake/_quarantine/hid_work_orders"),
    ] {
        assert_txns_unique(&t);
        let orphans: Vec<_> = files_on_disk(&t)
            .difference(&files_in_log(&t))
            .cloned()
            .collect();
        assert!(orphans.is_empty(), "files no version names: {orphans:?}");
    }
    sim.shutdown().await;
}

/// Closed days loaded again unchanged make no commit in either table: a steady cycle does not
/// grow the log or leave files for VACUUM (quarantined rows included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloading_unchanged_days_commits_nothing() {
    let sim = sim_with(40, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::open(delta_settings(&sim, dir.path(), "csv"), true, writer())
        .await
        .unwrap();
    let days = days_before_today(3);
    let (from, to) = (days[0], days[2]);
    assert!(pipeline.backfill(*P, from, to, false).await.unwrap().ok());
    let versions = || async {
        let mut out = Vec::new();
        for kind in [TableKind::Data, TableKind::Quarantine] {
            let t = pipeline.lake.open_table(*P, kind).await.unwrap().unwrap();
            out.push(t.version());
        }
        out
    };
    let first = versions().await;
    assert!(
        first[1] > 0,
        "the days should have quarantined rows, or the test shows nothing of the quarantine"
    );
    // Forced, or the backfill would find its windows committed and run none of them.
    let report = pipeline.backfill(*P, from, to, true).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.windows.len(), 3, "{report:?}");
    assert_eq!(versions().await, first, "an unchanged reload committed");
    sim.shutdown().await;
}
