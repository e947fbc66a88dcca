//! End to end against the in-process simulator: the lake read back (by the project's reader and
//! by DuckDB) equals the simulator's valid rows, invalid rows are quarantined with a reason,
//! re-syncs change nothing, late rows land once, and crashes at every stage are repaired.

mod common;

#[cfg(feature = "failpoints")]
use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use common::*;
#[cfg(feature = "failpoints")]
use dpss_sync::failpoint::POINTS;
#[cfg(feature = "failpoints")]
use dpss_sync::model::StateUrl;
use dpss_sync::plan::available_from;
use dpss_sync::sim::SimConfig;
use dpss_sync::state::Stage;
#[cfg(feature = "failpoints")]
use dpss_sync::state::State;
use dpss_sync::sync::Pipeline;

const LAKE_TYPES: &str = "service_point_id:VARCHAR,phase:TINYINT,issue_id:VARCHAR,status:VARCHAR,\
status_datetime:TIMESTAMP WITH TIME ZONE,reason:VARCHAR,work_order_id:VARCHAR,_job_id:VARCHAR,\
_ingested_at:TIMESTAMP WITH TIME ZONE,event_date:DATE";

fn closed_days() -> Vec<chrono::NaiveDate> {
    let today = Utc::now().date_naive();
    available_from(today)
        .iter_days()
        .take_while(|d| *d < today)
        .collect()
}

async fn history_sync_in(file_type: &str, seed: u64) {
    let sim = start(SimConfig {
        seed,
        rows_per_day: 40,
        ..quick_sim("")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = Pipeline::open(settings(&sim, dir.path(), file_type, 2), true, writer())
        .await
        .unwrap();
    let report = pipeline.sync(*P).await.unwrap();
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.windows.len(), 1);
    assert_eq!(report.windows[0].key, "history");
    let c = report.windows[0].counts.unwrap();
    assert_eq!(c.read, c.written + c.quarantined + c.duplicates);
    assert!(c.duplicates > 0 && c.quarantined > 0, "{c:?}");

    let now = Utc::now();
    let want = expected(&sim, closed_days(), now);
    let got = lake_rows(dir.path()).await;
    let got_closed = closed(got.clone());
    assert_eq!(got_closed.len(), want.len(), "{file_type}: row count");
    assert!(
        got_closed == want,
        "{file_type}: the lake differs from the served valid rows"
    );
    // Today's rows so far are a subset of what the day will hold.
    let today_all = expected(&sim, [now.date_naive()], now);
    assert!(
        got.iter()
            .filter(|r| r.4 >= today_key())
            .all(|r| today_all.contains(r))
    );

    let bad = expected_invalid(&sim, closed_days(), now);
    let q: BTreeSet<_> = quarantined(dir.path())
        .await
        .into_iter()
        .map(|(w, i, s, reason, _)| {
            assert!(!reason.is_empty());
            (w, i, s)
        })
        .collect();
    assert!(
        bad.is_subset(&q),
        "{file_type}: {} invalid rows missing from the quarantine",
        bad.difference(&q).count()
    );

    if let Some((types, rows)) = duckdb_rows(dir.path()) {
        assert_eq!(types, LAKE_TYPES);
        assert!(
            rows == got,
            "{file_type}: DuckDB reads different rows than the lake holds"
        );
    }
    // Quarantine rows without a day (a typed format's null timestamp) sit under
    // status_date=unknown/window=<key>, as real directories.
    if matches!(file_type, "parquet" | "orc") {
        let unknown = dir
            .path()
            .join("lake/_quarantine/hid_work_orders/status_date=unknown/window=history");
        assert!(
            unknown.join("part-00000.parquet").is_file(),
            "{}",
            unknown.display()
        );
    }
    // One object per partition: no small-files explosion.
    let objects = pipeline.lake.objects(*P).await.unwrap();
    let partitions: BTreeSet<_> = objects
        .iter()
        .map(|(p, _)| p.rsplit_once('/').unwrap().0.to_string())
        .collect();
    assert_eq!(objects.len(), partitions.len());
    assert!(
        pipeline.state.watermark(*P).await.unwrap()
            == Some(now.date_naive() - chrono::Duration::days(1))
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn history_sync_csv() {
    history_sync_in("csv", 1).await;
}

#[tokio::test]
async fn history_sync_json() {
    history_sync_in("json", 2).await;
}

#[tokio::test]
async fn history_sync_parquet() {
    history_sync_in("parquet", 3).await;
}

#[tokio::test]
async fn history_sync_orc() {
    history_sync_in("orc", 4).await;
}

#[tokio::test]
async fn resync_changes_nothing_and_a_late_row_lands_once() {
    let sim = sim_with(40, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    assert!(pipeline.sync(*P).await.unwrap().ok());
    let first = closed(lake_rows(dir.path()).await);
    let today_text = Utc::now().date_naive().to_string();
    let closed_quarantine = |q: Vec<(String, String, String, String, String)>| {
        let mut q: Vec<_> = q
            .into_iter()
            .filter(|r| r.4.get(..10).is_some_and(|d| d < today_text.as_str()))
            .collect();
        q.sort();
        q
    };
    let quarantine_first = closed_quarantine(quarantined(dir.path()).await);
    assert!(!quarantine_first.is_empty());

    // The next cycle re-syncs the lookback days and today; the data stays the same.
    let report = pipeline.sync(*P).await.unwrap();
    assert!(report.ok(), "{report:?}");
    let keys: Vec<_> = report.windows.iter().map(|w| w.key.clone()).collect();
    let today = Utc::now().date_naive();
    assert_eq!(
        keys,
        [
            today - chrono::Duration::days(2),
            today - chrono::Duration::days(1),
            today
        ]
        .map(|d| d.to_string())
    );
    assert_eq!(closed(lake_rows(dir.path()).await), first);
    // The re-synced days' quarantine was replaced, not doubled.
    assert_eq!(
        closed_quarantine(quarantined(dir.path()).await),
        quarantine_first
    );

    // A late status row for yesterday: it lands once, and stays once.
    let yesterday = today - chrono::Duration::days(1);
    let mut late = sim
        .state
        .rows_for_day(yesterday, Utc::now())
        .into_iter()
        .find(|r| r.is_valid())
        .unwrap();
    late.status = "Closed";
    late.work_order_id = "LATE-1".into();
    late.reason = "late update, arrived after the first sync".into();
    sim.state.inject_row(late.clone());
    for _ in 0..2 {
        assert!(pipeline.sync(*P).await.unwrap().ok());
        let rows = lake_rows(dir.path()).await;
        assert_eq!(rows.iter().filter(|r| r.7 == "LATE-1").count(), 1);
        assert_eq!(closed(rows).len(), first.len() + 1);
    }
    assert_eq!(
        closed_quarantine(quarantined(dir.path()).await),
        quarantine_first
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn failed_jobs_are_replanned_and_counted() {
    // Every other job fails: each window's first job fails, the re-planned one succeeds.
    let sim = sim_with(30, "failed-jobs=2").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "json").await;
    let days = days_before_today(3);
    let report = pipeline
        .backfill(*P, days[0], days[2], false)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let mut attempts = 0;
    for d in &days {
        let w = pipeline
            .state
            .window(*P, &d.to_string())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(w.stage, Stage::Committed);
        attempts += w.attempts;
        assert_eq!(
            pipeline
                .state
                .jobs_for_window(*P, &w.key)
                .await
                .unwrap()
                .len() as i64,
            w.attempts
        );
    }
    assert!(attempts > 3, "some window needed a second job");
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, days, Utc::now())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn backfill_clamps_and_keeps_the_watermark() {
    let sim = start(quick_sim("")).await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "parquet").await;
    pipeline
        .state
        .advance_watermark(*P, Utc::now().date_naive() - chrono::Duration::days(1))
        .await
        .unwrap();
    let floor = available_from(Utc::now().date_naive());
    let report = pipeline
        .backfill(
            *P,
            floor - chrono::Duration::days(30),
            floor + chrono::Duration::days(1),
            false,
        )
        .await
        .unwrap();
    assert!(report.ok());
    assert_eq!(report.windows.len(), 2);
    assert!(report.notes[0].contains("13-month"), "{:?}", report.notes);
    assert_eq!(
        pipeline.state.watermark(*P).await.unwrap(),
        Some(Utc::now().date_naive() - chrono::Duration::days(1))
    );
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, [floor, floor + chrono::Duration::days(1)], Utc::now())
    );
    sim.shutdown().await;
}

/// A process killed at each stage boundary leaves a state the next run completes: no duplicate,
/// no missing row, and no second job for a window whose job id was recorded. Run twice: with
/// one-object partitions, and with a target file size so small that every partition has several
/// objects, which adds a crash between two objects' puts; after the repair, the lake holds
/// exactly the objects the state records. Needs the crash points: `--features failpoints`.
#[cfg(feature = "failpoints")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_at_every_stage_boundary_is_repaired() {
    let sim = start(SimConfig {
        rows_per_day: 30,
        job_delay: Duration::from_millis(150),
        ..quick_sim("")
    })
    .await;
    let days = days_before_today(4);
    let keys: Vec<String> = days.iter().map(|d| d.to_string()).collect();
    let want = expected(&sim, days.clone(), Utc::now());
    for target in [None, Some("1KiB")] {
        for point in POINTS {
            if target.is_none() && point == "between-puts" {
                continue;
            }
            let case = format!("{point} (target {})", target.unwrap_or("default"));
            let dir = tempfile::tempdir().unwrap();
            let config = dir.path().join("dpss-sync.toml");
            let mut text = config_text(&sim, dir.path(), "csv", 2);
            if let Some(t) = target {
                text = text.replace("[lake]\n", &format!("[lake]\ntarget_file_size = \"{t}\"\n"));
            }
            std::fs::write(&config, text).unwrap();
            let args = ["backfill", "--from", &keys[0], "--to", &keys[3]];
            let crashed = run_child(&config, &args, Some(point));
            assert!(
                !crashed.status.success(),
                "{case}: the failpoint did not fire"
            );
            assert!(
                String::from_utf8_lossy(&crashed.stderr).contains(&format!("failpoint {point}"))
            );
            let before = recorded_jobs(&dir.path().join("state/state.db"), &keys).await;

            let finished = run_child(&config, &args, None);
            assert!(
                finished.status.success(),
                "{case}: {}",
                String::from_utf8_lossy(&finished.stderr)
            );
            let after = recorded_jobs(&dir.path().join("state/state.db"), &keys).await;
            for k in &keys {
                assert_eq!(
                    after[k].len(),
                    1,
                    "{case}: window {k} was submitted {} times",
                    after[k].len()
                );
                if !before[k].is_empty() {
                    assert_eq!(
                        before[k], after[k],
                        "{case}: window {k} got a new job after its id was recorded"
                    );
                }
            }
            let rows = lake_rows(dir.path()).await;
            assert_eq!(rows, want, "{case}: lake differs after recovery");
            let (recorded, in_lake) = manifest_and_objects(dir.path()).await;
            assert_eq!(
                recorded, in_lake,
                "{case}: objects the state does not record"
            );
            if target.is_some() {
                let mut per_partition = BTreeMap::new();
                for o in &in_lake {
                    *per_partition
                        .entry(o.rsplit_once('/').unwrap().0)
                        .or_insert(0) += 1;
                }
                // Edge partitions hold a handful of rows; the full days' must have split.
                assert!(
                    per_partition.values().filter(|n| **n >= 2).count() >= days.len() - 1,
                    "{case}: partitions were not split: {per_partition:?}"
                );
            }
            let no_tmp = walk(&dir.path().join("state/downloads"))
                .into_iter()
                .all(|p| !p.ends_with(".part"));
            assert!(no_tmp, "{case}: partial downloads left behind");
        }
    }
    sim.shutdown().await;
}

/// The objects the state records for the partitions, and every object (staging files included)
/// under the lake's table.
#[cfg(feature = "failpoints")]
async fn manifest_and_objects(dir: &Path) -> (BTreeSet<String>, BTreeSet<String>) {
    let st = State::open_reader(&StateUrl::Sqlite(dir.join("state/state.db")))
        .await
        .unwrap();
    let recorded = st
        .partition_objects(*P)
        .await
        .unwrap()
        .into_values()
        .flatten()
        .collect();
    st.close().await;
    let root = dir.join("lake");
    let mut in_lake = BTreeSet::new();
    let mut stack = vec![root.join(P.config_name())];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(&root).unwrap().display().to_string();
                in_lake.insert(rel);
            }
        }
    }
    (recorded, in_lake)
}

/// Real SIGKILLs at seeded random moments of a 20-day backfill (slow jobs, flaky downloads),
/// restarted each time until a run finishes; at least 15 kills in all. After each round: no
/// duplicate, no missing row, no window submitted twice, no leftover download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_and_doubles_nothing() {
    sigkill_at_random_moments("parquet").await;
}

/// The same in a Delta lake: the rows read through the log, and no txn version twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_in_a_delta_lake() {
    sigkill_at_random_moments("delta").await;
}

async fn sigkill_at_random_moments(format: &str) {
    let sim = start(SimConfig {
        rows_per_day: 20,
        job_delay: Duration::from_millis(300),
        ..quick_sim("truncated=3")
    })
    .await;
    let days = days_before_today(20);
    let keys: Vec<String> = days.iter().map(|d| d.to_string()).collect();
    let want = expected(&sim, days.clone(), Utc::now());
    let mut seed = 0x5eed_u64;
    let mut kills = 0;
    let mut spawns = 0;
    while kills < 15 {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("dpss-sync.toml");
        let text = config_text(&sim, dir.path(), "parquet", 2)
            .replace("[lake]\n", &format!("[lake]\nformat = \"{format}\"\n"));
        std::fs::write(&config, text).unwrap();
        let args = ["backfill", "--from", &keys[0], "--to", &keys[19]];
        let state = dir.path().join("state/state.db");
        let mut completed = false;
        while kills < 15 {
            assert!(spawns < 80, "runs keep finishing before they can be killed");
            spawns += 1;
            seed = dpss_sync::sim::data::mix(seed);
            let mut child = Command::new(bin())
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("RUST_LOG", "warn")
                .stderr(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            tokio::time::sleep(Duration::from_millis(50 + seed % 900)).await;
            if child.try_wait().unwrap().is_some() {
                completed = child.wait().unwrap().success();
                break;
            }
            child.kill().unwrap();
            child.wait().unwrap();
            kills += 1;
            for (k, j) in recorded_jobs(&state, &keys).await {
                assert!(j.len() <= 1, "window {k} submitted twice: {j:?}");
            }
        }
        if !completed {
            let finished = run_child(&config, &args, None);
            assert!(
                finished.status.success(),
                "{}",
                String::from_utf8_lossy(&finished.stderr)
            );
        }
        let mut lake = local_lake(&dir.path().join("lake"));
        if format == "delta" {
            lake.format = dpss_sync::config::TableFormat::Delta;
            for table in ["lake/hid_work_orders", "lake/_quarantine/hid_work_orders"] {
                let table = dir.path().join(table);
                assert_txns_unique(&table);
                let orphans: Vec<_> = files_on_disk(&table)
                    .difference(&files_in_log(&table))
                    .cloned()
                    .collect();
                assert!(orphans.is_empty(), "files no version names: {orphans:?}");
            }
        }
        assert_eq!(lake_rows_in(&lake, dir.path()).await, want);
        let jobs = recorded_jobs(&state, &keys).await;
        assert!(jobs.values().all(|j| j.len() == 1), "{jobs:?}");
        let left = walk(&dir.path().join("state/downloads"));
        assert!(left.is_empty(), "downloads left behind: {left:?}");
    }
    sim.shutdown().await;
}

fn walk(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.path().display().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// A vendor that serves rows of a day it was not asked for: they land, merged by identity, and
/// the days they belong to keep all their other rows and no duplicates.
#[tokio::test]
async fn rows_outside_the_asked_day_merge_without_loss_or_duplicates() {
    let sim = sim_with(30, "stray-rows").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    let days = days_before_today(4);
    let report = pipeline
        .backfill(*P, days[1], days[3], false)
        .await
        .unwrap();
    assert!(report.ok(), "{report:?}");
    let now = Utc::now();
    let mut want = expected(&sim, days[1..].to_vec(), now);
    // The first asked day's export also served the first valid rows of the day before it.
    let strays: Vec<Row> = sim
        .state
        .rows_for_day(days[0], now)
        .into_iter()
        .filter(|r| r.is_valid())
        .take(dpss_sync::sim::STRAY_ROWS)
        .map(|r| row_of(&r))
        .collect();
    want.extend(strays);
    want.sort();
    assert_eq!(lake_rows(dir.path()).await, want);
    sim.shutdown().await;
}

/// A vendor that refuses the unfiltered export: the first sync loads the history day by day.
#[tokio::test]
async fn refused_history_export_falls_back_to_day_windows() {
    let sim = start(SimConfig {
        rows_per_day: 3,
        job_delay: Duration::from_millis(5),
        ..quick_sim("no-history")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sim, dir.path(), "json", 2)
        .replace("max_concurrent_jobs = 3", "max_concurrent_jobs = 16");
    let settings = dpss_sync::config::Settings::load(&dpss_sync::config::Sources {
        inline: vec![text],
        ..Default::default()
    })
    .unwrap();
    let pipeline = Pipeline::open(settings, true, writer()).await.unwrap();
    let report = pipeline.sync(*P).await.unwrap();
    assert!(
        report.ok(),
        "{:?}",
        report
            .windows
            .iter()
            .filter(|w| w.error.is_some())
            .take(3)
            .collect::<Vec<_>>()
    );
    assert!(report.notes[0].contains("day by day"));
    assert_eq!(report.windows.len(), closed_days().len() + 1);
    assert_eq!(
        closed(lake_rows(dir.path()).await),
        expected(&sim, closed_days(), Utc::now())
    );
    assert_eq!(
        pipeline.state.watermark(*P).await.unwrap(),
        Some(Utc::now().date_naive() - chrono::Duration::days(1))
    );
    sim.shutdown().await;
}

/// A small utility's year: work orders on one event day in twelve, so most days have no row,
/// and the vendor exports such a day as a zip of `_SUCCESS` alone (Spark 2's empty result).
/// Every quiet day commits as zero rows, the watermark reaches yesterday, and the lake equals
/// the served valid rows; a later cycle's quiet days commit again, changing nothing.
#[tokio::test]
async fn a_sparse_year_with_marker_only_days_syncs_to_yesterday() {
    let sim = start(SimConfig {
        rows_per_day: 30,
        job_delay: Duration::from_millis(5),
        ..quick_sim("no-history,sparse=12,markers-when-empty")
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sim, dir.path(), "csv", 2)
        .replace("max_concurrent_jobs = 3", "max_concurrent_jobs = 16");
    let settings = dpss_sync::config::Settings::load(&dpss_sync::config::Sources {
        inline: vec![text],
        ..Default::default()
    })
    .unwrap();
    let quiet: Vec<_> = closed_days()
        .into_iter()
        .filter(|d| sim.state.rows_for_day(*d, Utc::now()).is_empty())
        .collect();
    assert!(
        quiet.len() > closed_days().len() / 2,
        "most days are quiet: {} of {}",
        quiet.len(),
        closed_days().len()
    );
    let pipeline = Pipeline::open(settings, true, writer()).await.unwrap();
    let report = pipeline.sync(*P).await.unwrap();
    let failed: Vec<_> = report
        .windows
        .iter()
        .filter(|w| w.error.is_some())
        .take(3)
        .collect();
    assert!(report.ok(), "{failed:?}");
    let quiet_key = quiet[quiet.len() / 2].to_string();
    let w = report.windows.iter().find(|w| w.key == quiet_key).unwrap();
    assert_eq!(w.counts.map(|c| c.read), Some(0), "{w:?}");
    assert_eq!(
        pipeline.state.watermark(*P).await.unwrap(),
        Some(Utc::now().date_naive() - chrono::Duration::days(1))
    );
    assert_eq!(
        closed(lake_rows(dir.path()).await),
        expected(&sim, closed_days(), Utc::now())
    );
    if let Some((_, rows)) = duckdb_rows(dir.path()) {
        assert_eq!(closed(rows), expected(&sim, closed_days(), Utc::now()));
    }
    // The next cycle's lookback days are quiet or unchanged: all commit, the lake stays.
    let again = pipeline.sync(*P).await.unwrap();
    assert!(again.ok(), "{:?}", again.windows);
    assert_eq!(
        closed(lake_rows(dir.path()).await),
        expected(&sim, closed_days(), Utc::now())
    );
    sim.shutdown().await;
}

/// A backfill run again right after it finished (as after a kill that landed just as it ended)
/// resumes it: nothing is requested twice. `--force` reloads.
#[tokio::test]
async fn an_immediate_rerun_of_a_backfill_resumes_and_force_reloads() {
    let sim = sim_with(10, "").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    let days = days_before_today(3);
    assert!(
        pipeline
            .backfill(*P, days[0], days[2], false)
            .await
            .unwrap()
            .ok()
    );
    assert_eq!(sim.state.jobs_created(), 3);
    let again = pipeline
        .backfill(*P, days[0], days[2], false)
        .await
        .unwrap();
    assert!(again.ok() && again.windows.is_empty(), "{again:?}");
    assert!(again.notes[0].contains("--force"), "{:?}", again.notes);
    assert_eq!(sim.state.jobs_created(), 3);
    // A different range is a different request.
    assert!(
        pipeline
            .backfill(*P, days[1], days[2], false)
            .await
            .unwrap()
            .windows
            .len()
            == 2
    );
    assert_eq!(sim.state.jobs_created(), 5);
    let forced = pipeline.backfill(*P, days[0], days[2], true).await.unwrap();
    assert_eq!(forced.windows.len(), 3);
    assert_eq!(sim.state.jobs_created(), 8);
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, days, Utc::now())
    );
    sim.shutdown().await;
}
