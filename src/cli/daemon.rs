//! `run`: the daemon. A cron schedule per product drives sync cycles; a small HTTP server serves
//! `/healthz`, `/readyz` and `/metrics`. SIGTERM/SIGINT stop the scheduling, flip `/readyz` to
//! 503 and give the cycle in flight a grace period; anything cut short is recorded in the state
//! and resumed (its vendor jobs polled, not requested again) by the next start.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::Utc;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_cron_scheduler::{Job, JobScheduler};

use super::CliError;
use crate::config::Settings;
use crate::events::{CycleFinished, InternalEvent, TickSkipped, WatermarkAge};
use crate::product::Product;
use crate::sync::Pipeline;

struct Shared {
    pipeline: Pipeline,
    metrics: PrometheusHandle,
    draining: AtomicBool,
    running: BTreeMap<Product, AtomicBool>,
    /// Readiness demands a commit younger than this, per product (a few schedule periods).
    max_commit_age: BTreeMap<Product, chrono::Duration>,
}

fn schedule_period(expr: &str) -> chrono::Duration {
    let Ok(cron) = crate::schedule::parse_cron(expr) else {
        return chrono::Duration::hours(1);
    };
    let now = Utc::now();
    match cron
        .find_next_occurrence(&now, false)
        .and_then(|a| cron.find_next_occurrence(&a, false).map(|b| b - a))
    {
        Ok(d) => d,
        Err(_) => chrono::Duration::hours(1),
    }
}

async fn cycle(shared: Arc<Shared>, product: Product) {
    let flag = &shared.running[&product];
    if shared.draining.load(Ordering::SeqCst) {
        return;
    }
    if flag.swap(true, Ordering::SeqCst) {
        TickSkipped(product).emit();
        return;
    }
    let started = std::time::Instant::now();
    let outcome = shared.pipeline.sync(product).await;
    let (outcome, error) = match &outcome {
        Ok(report) if report.ok() => ("ok", None),
        Ok(report) => (
            "failed",
            report.windows.iter().find_map(|w| w.error.clone()),
        ),
        Err(e) => ("error", Some(e.to_string())),
    };
    CycleFinished {
        product,
        outcome,
        duration: started.elapsed(),
        error: error.as_deref(),
    }
    .emit();
    flag.store(false, Ordering::SeqCst);
    crate::alloc::release_freed();
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(AxState(shared): AxState<Arc<Shared>>) -> (StatusCode, String) {
    if shared.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let mut problems = Vec::new();
    for (product, max_age) in &shared.max_commit_age {
        match shared.pipeline.state.windows(*product).await {
            Err(e) => problems.push(format!("state unreachable: {e}")),
            Ok(windows) => {
                let last = windows
                    .iter()
                    .filter_map(|w| w.committed_at.as_deref())
                    .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .max();
                match last {
                    None => problems.push(format!("{product}: nothing committed yet")),
                    Some(t) if Utc::now() - t.with_timezone(&Utc) > *max_age => problems.push(
                        format!("{product}: last commit {t} is older than {max_age}"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

async fn metrics_page(AxState(shared): AxState<Arc<Shared>>) -> String {
    for product in shared.running.keys() {
        if let Ok(Some(w)) = shared.pipeline.state.watermark(*product).await {
            let end = w
                .succ_opt()
                .expect("in range")
                .and_hms_opt(0, 0, 0)
                .expect("midnight")
                .and_utc();
            WatermarkAge {
                product: *product,
                seconds: (Utc::now() - end).num_seconds().max(0) as f64,
            }
            .emit();
        }
    }
    shared.metrics.render()
}

async fn shutdown_signal() {
    let term = async {
        #[cfg(unix)]
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            return;
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term => {},
    }
}

pub async fn run(settings: Settings) -> Result<ExitCode, CliError> {
    settings.require_api()?;
    let metrics = PrometheusBuilder::new()
        .install_recorder()
        .map_err(|e| CliError::Failed(format!("metrics recorder: {e}")))?;
    let listen = settings.server.listen;
    let grace = settings.server.shutdown_grace;
    let schedules: Vec<(Product, String)> = settings
        .products
        .iter()
        .map(|(p, s)| (*p, s.schedule.clone()))
        .collect();
    let pipeline = Pipeline::open(settings, true).await?;
    let shared = Arc::new(Shared {
        pipeline,
        metrics,
        draining: AtomicBool::new(false),
        running: schedules
            .iter()
            .map(|(p, _)| (*p, AtomicBool::new(false)))
            .collect(),
        max_commit_age: schedules
            .iter()
            .map(|(p, s)| {
                (
                    *p,
                    (schedule_period(s) * 3).max(chrono::Duration::minutes(5)),
                )
            })
            .collect(),
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen} (server.listen): {e}")))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .with_state(shared.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    let mut scheduler = JobScheduler::new()
        .await
        .map_err(|e| CliError::Failed(format!("scheduler: {e}")))?;
    for (product, schedule) in &schedules {
        let shared = shared.clone();
        let product = *product;
        let job = Job::new_async(schedule.as_str(), move |_, _| {
            Box::pin(cycle(shared.clone(), product))
        })
        .map_err(|e| {
            CliError::Config(crate::config::ConfigError::Invalid {
                key: format!("products.{product}.schedule"),
                origin: String::new(),
                reason: e.to_string(),
            })
        })?;
        scheduler
            .add(job)
            .await
            .map_err(|e| CliError::Failed(format!("scheduler: {e}")))?;
    }
    scheduler
        .start()
        .await
        .map_err(|e| CliError::Failed(format!("scheduler: {e}")))?;
    tracing::info!(%listen, "daemon started: /healthz /readyz /metrics");
    // A first cycle right away, so a fresh deployment does not idle until the first tick.
    for (product, _) in &schedules {
        tokio::spawn(cycle(shared.clone(), *product));
    }
    shutdown_signal().await;
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining");
    shared.draining.store(true, Ordering::SeqCst);
    let _ = scheduler.shutdown().await;
    let deadline = tokio::time::Instant::now() + grace;
    while shared.running.values().any(|r| r.load(Ordering::SeqCst))
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if shared.running.values().any(|r| r.load(Ordering::SeqCst)) {
        tracing::warn!(
            "grace period over with a cycle in flight; its recorded jobs resume at the next start"
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    shared.pipeline.state.close().await;
    Ok(ExitCode::SUCCESS)
}
