//! `run`: the daemon. A cron schedule per product drives sync cycles; a small HTTP server serves
//! `/healthz`, `/readyz` and `/metrics`. SIGTERM/SIGINT stop the scheduling, flip `/readyz` to
//! 503 and give the cycle in flight a grace period; anything cut short is recorded in the state
//! and resumed (its vendor jobs polled, not requested again) by the next start.
//!
//! The daemon must not wedge where no supervisor sees it: a cycle runs in its own task, so a
//! panic ends that cycle only (logged, counted, and the next tick runs), and `/healthz` answers
//! 503 when a cycle has run far past `api.job_timeout` or no cycle has started for several
//! schedule periods, so Kubernetes or systemd restart the process.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State as AxState;
use axum::http::StatusCode;
use axum::routing::get;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_cron_scheduler::{Job, JobScheduler};

use super::CliError;
use crate::config::Settings;
use crate::events::{
    CycleFinished, CyclePanicked, InternalEvent, LastCommit, TickSkipped, WatermarkAge,
    WriterLeaseTaken,
};
use crate::product::Product;
use crate::sync::{Access, Pipeline};

struct Shared {
    pipeline: Pipeline,
    metrics: PrometheusHandle,
    draining: AtomicBool,
    clocks: BTreeMap<Product, Mutex<CycleClock>>,
    /// Readiness demands a commit younger than this, per product (a few schedule periods).
    max_commit_age: BTreeMap<Product, chrono::Duration>,
    /// Liveness: how long a cycle may run, and how long the scheduler may go without starting
    /// one, before the process counts as wedged.
    limits: BTreeMap<Product, Limits>,
}

/// When a product's cycles ran.
#[derive(Debug, Default, Clone, Copy)]
struct CycleClock {
    /// The cycle in flight, since when.
    running_since: Option<DateTime<Utc>>,
    last_started: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    max_cycle: chrono::Duration,
    max_idle: chrono::Duration,
}

/// Why the daemon is not alive, if it is not: a cycle far past its limit, or a scheduler that
/// has started nothing for several periods.
fn wedged(
    now: DateTime<Utc>,
    product: Product,
    clock: CycleClock,
    limits: Limits,
) -> Option<String> {
    match clock {
        CycleClock {
            running_since: Some(t),
            ..
        } if now - t > limits.max_cycle => Some(format!(
            "{product}: a cycle has been running since {t}, longer than {} (twice api.job_timeout)",
            limits.max_cycle
        )),
        CycleClock {
            running_since: None,
            last_started: Some(t),
        } if now - t > limits.max_idle => Some(format!(
            "{product}: no cycle has started since {t}, longer than {} (three schedule periods)",
            limits.max_idle
        )),
        _ => None,
    }
}

/// Marks a cycle as running until dropped, however the cycle ends.
struct Running<'a>(&'a Mutex<CycleClock>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(self.0).running_since = None;
    }
}

/// The clock's lock; a poisoned one still holds plain timestamps worth reading.
fn lock(m: &Mutex<CycleClock>) -> std::sync::MutexGuard<'_, CycleClock> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn schedule_period(expr: &str, tz: chrono_tz::Tz) -> chrono::Duration {
    let Ok(cron) = crate::schedule::parse_cron(expr) else {
        return chrono::Duration::hours(1);
    };
    let now = Utc::now().with_timezone(&tz);
    match cron
        .find_next_occurrence(&now, false)
        .and_then(|a| cron.find_next_occurrence(&a, false).map(|b| b - a))
    {
        Ok(d) => d,
        Err(_) => chrono::Duration::hours(1),
    }
}

/// Vendor calls take tens of milliseconds to a minute; cycles and export jobs seconds to hours.
const VENDOR_CALL_BUCKETS: [f64; 11] =
    [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0];
const LONG_WORK_BUCKETS: [f64; 12] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0,
];

/// The Prometheus recorder, with histogram buckets for every duration metric: histograms (not
/// the exporter's default summaries) are what Prometheus can aggregate across replicas.
fn recorder() -> Result<PrometheusHandle, CliError> {
    let failed = |e: BuildError| CliError::Failed(format!("metrics recorder: {e}"));
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("dpss_sync_vendor_request_duration_seconds".into()),
            &VENDOR_CALL_BUCKETS,
        )
        .map_err(failed)?
        .set_buckets_for_metric(
            Matcher::Full("dpss_sync_job_duration_seconds".into()),
            &LONG_WORK_BUCKETS,
        )
        .map_err(failed)?
        .set_buckets_for_metric(
            Matcher::Full("dpss_sync_cycle_duration_seconds".into()),
            &LONG_WORK_BUCKETS,
        )
        .map_err(failed)?
        .install_recorder()
        .map_err(failed)
}

async fn cycle(shared: Arc<Shared>, product: Product) {
    if shared.draining.load(Ordering::SeqCst) {
        return;
    }
    let clock = &shared.clocks[&product];
    {
        let mut c = lock(clock);
        if c.running_since.is_some() {
            drop(c);
            TickSkipped(product).emit();
            return;
        }
        let now = Utc::now();
        *c = CycleClock {
            running_since: Some(now),
            last_started: Some(now),
        };
    }
    let _running = Running(clock);
    let started = std::time::Instant::now();
    let pipeline = shared.pipeline.clone();
    let task = tokio::spawn(async move { pipeline.sync(product).await });
    let (outcome, error) = match task.await {
        Ok(Ok(report)) if report.ok() => ("ok", None),
        Ok(Ok(report)) => (
            "failed",
            report.windows.iter().find_map(|w| w.error.clone()),
        ),
        Ok(Err(e)) => ("error", Some(e.to_string())),
        Err(e) => {
            let panic = match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into()),
                Err(e) => e.to_string(),
            };
            CyclePanicked {
                product,
                panic: &panic,
            }
            .emit();
            ("panicked", Some(panic))
        }
    };
    CycleFinished {
        product,
        outcome,
        duration: started.elapsed(),
        error: error.as_deref(),
    }
    .emit();
    crate::alloc::release_freed();
}

async fn healthz(AxState(shared): AxState<Arc<Shared>>) -> (StatusCode, String) {
    let now = Utc::now();
    let problems: Vec<String> = shared
        .clocks
        .iter()
        .filter_map(|(p, c)| wedged(now, *p, *lock(c), shared.limits[p]))
        .collect();
    if problems.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("wedged:\n{}\n", problems.join("\n")),
        )
    }
}

async fn readyz(AxState(shared): AxState<Arc<Shared>>) -> (StatusCode, String) {
    if shared.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    let mut problems = Vec::new();
    for (product, max_age) in &shared.max_commit_age {
        match shared.pipeline.state.last_commit(*product).await {
            Err(e) => problems.push(format!("state unreachable: {e}")),
            Ok(None) => problems.push(format!("{product}: nothing committed yet")),
            Ok(Some(t)) if Utc::now() - t > *max_age => problems.push(format!(
                "{product}: last commit {t} is older than {max_age}"
            )),
            Ok(Some(_)) => {}
        }
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

async fn metrics_page(AxState(shared): AxState<Arc<Shared>>) -> String {
    for product in shared.clocks.keys() {
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

pub async fn run(settings: Settings, access: Access) -> Result<ExitCode, CliError> {
    settings.require_api()?;
    let max_cycle = chrono::Duration::from_std(settings.api.job_timeout * 2)
        .unwrap_or(chrono::Duration::hours(4));
    let metrics = recorder()?;
    crate::events::register_metrics(&settings.products.keys().copied().collect::<Vec<_>>());
    let listen = settings.server.listen;
    let grace = settings.server.shutdown_grace;
    let schedules: Vec<(Product, String, chrono_tz::Tz)> = settings
        .products
        .iter()
        .map(|(p, s)| (*p, s.schedule.clone(), s.schedule_timezone))
        .collect();
    let pipeline = Pipeline::open(settings, true, access).await?;
    if let Some(holder) = pipeline.state.lease() {
        WriterLeaseTaken {
            holder: &holder.to_string(),
        }
        .emit();
    }
    let shared = Arc::new(Shared {
        pipeline,
        metrics,
        draining: AtomicBool::new(false),
        clocks: schedules
            .iter()
            .map(|(p, _, _)| (*p, Mutex::default()))
            .collect(),
        limits: schedules
            .iter()
            .map(|(p, s, tz)| {
                (
                    *p,
                    Limits {
                        max_cycle,
                        max_idle: (schedule_period(s, *tz) * 3).max(chrono::Duration::minutes(1)),
                    },
                )
            })
            .collect(),
        max_commit_age: schedules
            .iter()
            .map(|(p, s, tz)| {
                (
                    *p,
                    (schedule_period(s, *tz) * 3).max(chrono::Duration::minutes(5)),
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
    for (product, schedule, tz) in &schedules {
        let shared = shared.clone();
        let product = *product;
        let job = Job::new_async_tz(schedule.as_str(), *tz, move |_, _| {
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
    for (product, _, _) in &schedules {
        if let Some(at) = shared.pipeline.state.last_commit(*product).await? {
            LastCommit {
                product: *product,
                at,
            }
            .emit();
        }
    }
    tracing::info!(%listen, "daemon started: /healthz /readyz /metrics");
    // A first cycle right away, so a fresh deployment does not idle until the first tick.
    for (product, _, _) in &schedules {
        tokio::spawn(cycle(shared.clone(), *product));
    }
    shutdown_signal().await;
    tracing::info!(grace = %humantime::format_duration(grace), "shutting down: draining");
    shared.draining.store(true, Ordering::SeqCst);
    let _ = scheduler.shutdown().await;
    let deadline = tokio::time::Instant::now() + grace;
    let busy = || {
        shared
            .clocks
            .values()
            .any(|c| lock(c).running_since.is_some())
    };
    while busy() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if busy() {
        tracing::warn!(
            "grace period over with a cycle in flight; its recorded jobs resume at the next start"
        );
    }
    let _ = stop_tx.send(());
    let _ = server.await;
    shared.pipeline.state.close().await;
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_far_past_its_limit_or_a_silent_scheduler_is_wedged() {
        let p = Product::HidWorkOrders;
        let limits = Limits {
            max_cycle: chrono::Duration::hours(4),
            max_idle: chrono::Duration::minutes(45),
        };
        let now = Utc::now();
        let ago = |m: i64| Some(now - chrono::Duration::minutes(m));
        let clock = |running_since, last_started| CycleClock {
            running_since,
            last_started,
        };
        // A long cycle within its limit is alive, however long since the last start.
        assert_eq!(wedged(now, p, clock(ago(200), ago(200)), limits), None);
        let hung = wedged(now, p, clock(ago(300), ago(300)), limits).unwrap();
        assert!(hung.contains("running since"), "{hung}");
        assert_eq!(wedged(now, p, clock(None, ago(30)), limits), None);
        let silent = wedged(now, p, clock(None, ago(60)), limits).unwrap();
        assert!(silent.contains("no cycle has started"), "{silent}");
        assert_eq!(wedged(now, p, CycleClock::default(), limits), None);
    }
}
