//! The fault matrix: every simulator fault (and the failures that are not the vendor's), each
//! with its asserted outcome: recovered, with the evidence of how, or a failed window with a
//! clear error and nothing committed.

mod common;

use std::path::Path;

use chrono::Utc;
use common::*;
use dpss_sync::config::{Settings, Sources};
use dpss_sync::sim::SimHandle;
use dpss_sync::state::Stage;
use dpss_sync::sync::{Pipeline, RunReport};

fn two_days() -> Vec<chrono::NaiveDate> {
    days_before_today(2)
}

async fn backfill(
    sim: &SimHandle,
    dir: &Path,
    edit: impl Fn(String) -> String,
) -> (Pipeline, RunReport) {
    let text = edit(config_text(sim, dir, "csv", 2));
    let settings = Settings::load(&Sources {
        inline: vec![text],
        ..Default::default()
    })
    .unwrap();
    let pipeline = Pipeline::open(settings, true, writer()).await.unwrap();
    let days = two_days();
    let report = pipeline
        .backfill(*P, days[0], days[1], false)
        .await
        .unwrap();
    (pipeline, report)
}

fn statuses(sim: &SimHandle, endpoint: &str) -> Vec<u16> {
    sim.state
        .requests()
        .iter()
        .filter(|r| r.endpoint == endpoint)
        .map(|r| r.status)
        .collect()
}

/// A fault the sync must get through: the lake ends up exactly right. The two days go one
/// backfill after the other, so the order of requests, and so which of them the fault hits,
/// is the same every run.
async fn recovers(faults: &str, evidence: impl Fn(&SimHandle)) {
    let sim = sim_with(15, faults).await;
    let dir = tempfile::tempdir().unwrap();
    let text = config_text(&sim, dir.path(), "csv", 2);
    let settings = Settings::load(&Sources {
        inline: vec![text],
        ..Default::default()
    })
    .unwrap();
    let pipeline = Pipeline::open(settings, true, writer()).await.unwrap();
    for day in two_days() {
        let report = pipeline.backfill(*P, day, day, false).await.unwrap();
        assert!(report.ok(), "{faults}: {:?}", report.windows);
    }
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, two_days(), Utc::now()),
        "{faults}"
    );
    evidence(&sim);
    sim.shutdown().await;
}

/// A fault no retry fixes: every window fails with `message` and nothing is committed.
async fn fails_cleanly(
    sim: SimHandle,
    edit: impl Fn(String) -> String,
    message: &str,
) -> SimHandle {
    let dir = tempfile::tempdir().unwrap();
    let (pipeline, report) = backfill(&sim, dir.path(), edit).await;
    assert!(!report.ok());
    for w in &report.windows {
        let err = w.error.as_deref().unwrap_or_default();
        assert!(err.contains(message), "expected `{message}` in: {err}");
        let row = pipeline.state.window(*P, &w.key).await.unwrap().unwrap();
        assert_ne!(row.stage, Stage::Committed);
        assert!(row.error.as_deref().is_some_and(|e| e.contains(message)));
    }
    assert!(lake_rows(dir.path()).await.is_empty());
    assert_eq!(pipeline.state.watermark(*P).await.unwrap(), None);
    let runs = pipeline.state.recent_runs(1).await.unwrap();
    assert_eq!(runs[0].outcome.as_deref(), Some("failed"));
    assert!(
        runs[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains(message))
    );
    sim
}

#[tokio::test]
async fn token_expiry_mid_run_refreshes() {
    recovers("token-expiry=2", |sim| {
        assert!(sim.state.requests().iter().any(|r| r.status == 401));
        assert!(sim.state.tokens_issued() >= 2);
    })
    .await;
}

#[tokio::test]
async fn throttling_is_waited_out() {
    recovers("429=2", |sim| {
        assert!(sim.state.requests().iter().any(|r| r.status == 429))
    })
    .await;
}

/// Reads hit by a 5xx are retried within the call. A batch request answered 5xx may have
/// created its job, so it is not sent again at once: its window fails this run, naming the
/// unknown outcome, and the next run (the next cycle) requests it.
#[tokio::test]
async fn server_error_bursts_are_retried_and_an_unknown_submission_waits_for_the_next_run() {
    let sim = sim_with(15, "5xx=2").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    let mut deferred = 0;
    for day in two_days() {
        let mut runs = 0;
        loop {
            runs += 1;
            let report = pipeline.backfill(*P, day, day, false).await.unwrap();
            if report.ok() {
                break;
            }
            let error = report.windows[0].error.clone().unwrap();
            assert!(error.contains("outcome is unknown"), "{error}");
            assert!(runs < 4, "{day} never recovered: {error}");
            deferred += 1;
        }
    }
    assert!(deferred > 0, "no batch request was hit by the burst");
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, two_days(), Utc::now())
    );
    assert!(sim.state.requests().iter().any(|r| r.status >= 500));
    sim.shutdown().await;
}

/// A batch request whose job is created but whose answer is lost: the window is not sent again
/// within the run (a second job for the same day), and a later run requests it.
#[tokio::test]
async fn a_lost_answer_to_a_batch_request_is_not_re_posted_at_once() {
    let sim = sim_with(15, "lost-responses=2").await;
    let dir = tempfile::tempdir().unwrap();
    let pipeline = online(&sim, dir.path(), "csv").await;
    let day = two_days()[0];
    let first = pipeline.backfill(*P, day, day, false).await.unwrap();
    assert!(first.ok(), "{:?}", first.windows);
    let lost = pipeline.backfill(*P, day, day, true).await.unwrap();
    let error = lost.windows[0].error.clone().unwrap();
    assert!(error.contains("outcome is unknown"), "{error}");
    assert_eq!(sim.state.jobs_created(), 2, "re-posted within the run");
    let again = pipeline.backfill(*P, day, day, true).await.unwrap();
    assert!(again.ok(), "{:?}", again.windows);
    assert_eq!(sim.state.jobs_created(), 3);
    assert_eq!(
        lake_rows(dir.path()).await,
        expected(&sim, [day], Utc::now())
    );
    sim.shutdown().await;
}

#[tokio::test]
async fn connection_resets_are_retried() {
    recovers("reset=3", |_| {}).await;
}

#[tokio::test]
async fn failed_jobs_are_requested_again() {
    recovers("failed-jobs=2", |sim| {
        assert!(sim.state.jobs_created() == 4)
    })
    .await;
}

#[tokio::test]
async fn a_job_the_vendor_forgot_is_requested_again() {
    recovers("lost-jobs=2", |sim| {
        assert!(statuses(sim, "job-status").contains(&404));
        assert!(sim.state.jobs_created() == 4);
    })
    .await;
}

#[tokio::test]
async fn truncated_downloads_are_fetched_again() {
    recovers("truncated=2", |sim| {
        assert!(statuses(sim, "download").len() >= 3)
    })
    .await;
}

#[tokio::test]
async fn corrupt_zips_are_fetched_again() {
    recovers("corrupt-zips=2", |sim| {
        assert!(statuses(sim, "download").len() >= 3)
    })
    .await;
}

#[tokio::test]
async fn expired_links_are_renewed() {
    recovers("expired-links=2", |sim| {
        assert!(statuses(sim, "download").contains(&403))
    })
    .await;
}

#[tokio::test]
async fn slow_jobs_past_the_timeout_fail_the_window() {
    let sim = start(quick_sim("slow-jobs=1h")).await;
    let sim = fails_cleanly(
        sim,
        |t| t.replace("job_timeout = \"2m\"", "job_timeout = \"300ms\""),
        "api.job_timeout",
    )
    .await;
    sim.shutdown().await;
}

/// A download that would not fit in the work directory is refused from its Content-Length,
/// before a byte is written, naming the directory (here `work.dir`, away from the state).
#[tokio::test]
async fn a_download_that_would_not_fit_fails_the_window_before_writing() {
    let sim = start(quick_sim("huge-downloads")).await;
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().display().to_string();
    let sim = fails_cleanly(
        sim,
        |t| t.replace("[lake]\n", &format!("[work]\ndir = \"{dir}\"\n[lake]\n")),
        &format!("not enough free space in {dir}"),
    )
    .await;
    let left: Vec<_> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "nothing is written: {left:?}");
    sim.shutdown().await;
}

#[tokio::test]
async fn jobs_that_always_fail_are_reported_with_their_id() {
    let sim = start(quick_sim("failed-jobs=1")).await;
    let sim = fails_cleanly(sim, |t| t, "ended with status `Failed`").await;
    // Three attempts per window, then it is left for the next run.
    assert_eq!(sim.state.jobs_created(), 6);
    sim.shutdown().await;
}

#[tokio::test]
async fn wrong_credentials_fail_without_creating_jobs() {
    let sim = start(quick_sim("")).await;
    let sim = fails_cleanly(
        sim,
        |t| {
            t.replace(
                "client_secret = \"dpss-sim-secret\"",
                "client_secret = \"wrong\"",
            )
        },
        "invalid_client",
    )
    .await;
    assert_eq!(sim.state.jobs_created(), 0);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_subscription_that_is_not_ours_fails_at_once() {
    let sim = start(quick_sim("")).await;
    let sim = fails_cleanly(
        sim,
        |t| {
            t.replace(
                "subscription_id = \"00000000-0000-4000-8000-00000000cafe\"",
                "subscription_id = \"someone-else\"",
            )
        },
        "HTTP 403",
    )
    .await;
    // A 403 is permanent: one request per window, no retries.
    assert_eq!(statuses(&sim, "batch-request"), [403, 403]);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_failing_object_store_commits_nothing() {
    let sim = start(quick_sim("")).await;
    let dir = tempfile::tempdir().unwrap();
    // The table's directory is a file: every write into the lake fails.
    std::fs::create_dir_all(dir.path().join("lake")).unwrap();
    std::fs::write(dir.path().join("lake/hid_work_orders"), "in the way").unwrap();
    let text = config_text(&sim, dir.path(), "csv", 2);
    let settings = Settings::load(&Sources {
        inline: vec![text],
        ..Default::default()
    })
    .unwrap();
    let pipeline = Pipeline::open(settings, true, writer()).await.unwrap();
    let days = two_days();
    let report = pipeline
        .backfill(*P, days[0], days[1], false)
        .await
        .unwrap();
    assert!(!report.ok());
    for w in &report.windows {
        assert!(
            w.error.as_deref().unwrap().contains("object store"),
            "{:?}",
            w.error
        );
        let row = pipeline.state.window(*P, &w.key).await.unwrap().unwrap();
        assert_ne!(row.stage, Stage::Committed);
    }
    assert_eq!(pipeline.state.watermark(*P).await.unwrap(), None);
    sim.shutdown().await;
}
