//! `run`: the daemon. A cron schedule per product drives sync cycles; a small HTTP server serves
//! `/healthz`, `/readyz` and `/metrics`. SIGTERM/SIGINT stop the scheduling, flip `/readyz` to
//! 503 and give the cycle in flight a grace period; anything cut short is recorded in the state
//! and resumed (its vendor jobs polled, not requested again) by the next start.
//!
//! The daemon must not wedge where no supervisor sees it: a cycle runs in its own task, so a
//! panic ends that cycle only (logged, counted, and the next tick runs), and `/healthz` answers
//! 503 when a cycle has run far past `api.job_timeout` or no cycle has started for several
//! schedule periods, so Kubernetes or systemd restart the process.
//!
//! With a PostgreSQL state several replicas run; the one holding the writer lease syncs and the
//! others stand by, healthy and ready, until it comes free ([`lease`]). Each cycle runs pinned
//! to the lease epoch it started under, and a replica taking over first cleans up and repairs
//! what the previous holder left, then resumes its recorded jobs at once.

mod health;
mod lease;
mod server;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use health::{
    CycleClock, Limits, Running, healthz, lock, metrics_page, readyz, recorder, schedule_period,
};

use axum::Router;
use axum::extract::{ConnectInfo, Path as AxPath, Query, State as AxState};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use chrono::{NaiveDate, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use std::net::SocketAddr;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::CliError;
use crate::config::{Secret, Settings};
use crate::events::{CycleFinished, CyclePanicked, InternalEvent, LastCommit, TickSkipped};
use crate::model::StateUrl;
use crate::product::Product;
use crate::sync::{Access, Pipeline, RunReport};

struct Shared {
    pipeline: Pipeline,
    metrics: PrometheusHandle,
    draining: AtomicBool,
    clocks: BTreeMap<Product, Mutex<CycleClock>>,
    /// One cycle per product at a time: a tick finding it taken is skipped, a trigger waits.
    turns: BTreeMap<Product, Arc<tokio::sync::Mutex<()>>>,
    /// Readiness demands a commit younger than this, per product (a few schedule periods).
    max_commit_age: BTreeMap<Product, chrono::Duration>,
    /// Liveness: how long a cycle may run, and how long the scheduler may go without starting
    /// one, before the process counts as wedged.
    limits: BTreeMap<Product, Limits>,
    /// The lease epoch whose take-over (clean-up and repair) has run.
    prepared: tokio::sync::Mutex<Option<i64>>,
    /// What `POST /admin/trigger/*` must carry (`server.admin_token_file`).
    admin_token: Secret,
}

impl Shared {
    /// A standby replica holds no lease: it runs no cycle and answers no trigger.
    fn standby(&self) -> bool {
        self.pipeline.state.lease_epoch().is_none()
    }
}

/// What a cycle does: the scheduled sync, or what an operator triggered.
#[derive(Debug, Clone, Copy)]
enum Work {
    Sync,
    Backfill {
        from: NaiveDate,
        to: NaiveDate,
        force: bool,
    },
}

/// A scheduled tick: skipped while the product's last cycle (or a triggered one) still runs.
async fn cycle(shared: Arc<Shared>, product: Product) {
    if shared.draining.load(Ordering::SeqCst) || shared.standby() {
        return;
    }
    let Ok(turn) = shared.turns[&product].clone().try_lock_owned() else {
        TickSkipped(product).emit();
        return;
    };
    let _ = run_turn(&shared, product, Work::Sync, turn).await;
}

/// Runs `work` for `product` holding its turn, on a task of its own so that a panic is counted
/// and reported instead of wedging the daemon; the clock tells liveness how long it runs.
async fn run_turn(
    shared: &Arc<Shared>,
    product: Product,
    work: Work,
    _turn: tokio::sync::OwnedMutexGuard<()>,
) -> Result<RunReport, String> {
    let clock = &shared.clocks[&product];
    {
        let now = Utc::now();
        *lock(clock) = CycleClock {
            running_since: Some(now),
            last_started: Some(now),
        };
    }
    let _running = Running(clock);
    let started = std::time::Instant::now();
    let pipeline = shared.pipeline.pinned().map_err(|e| e.to_string())?;
    {
        let mut prepared = shared.prepared.lock().await;
        let epoch = pipeline.state.lease_epoch();
        if *prepared != epoch {
            pipeline.take_over().await.map_err(|e| e.to_string())?;
            *prepared = epoch;
        }
    }
    let task = tokio::spawn(async move {
        match work {
            Work::Sync => pipeline.sync(product).await,
            Work::Backfill { from, to, force } => pipeline.backfill(product, from, to, force).await,
        }
    });
    let (outcome, result) = match task.await {
        Ok(Ok(report)) if report.ok() => ("ok", Ok(report)),
        Ok(Ok(report)) => ("failed", Ok(report)),
        Ok(Err(e)) => ("error", Err(crate::model::cut(&e.to_string()).into_owned())),
        Err(e) => {
            let panic = match e.try_into_panic() {
                Ok(payload) => payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".into()),
                Err(e) => e.to_string(),
            };
            let panic = crate::model::cut(&panic).into_owned();
            CyclePanicked {
                product,
                panic: &panic,
            }
            .emit();
            ("panicked", Err(panic))
        }
    };
    let error = match &result {
        Ok(report) => report.windows.iter().find_map(|w| w.error.clone()),
        Err(e) => Some(e.clone()),
    };
    CycleFinished {
        product,
        outcome,
        duration: started.elapsed(),
        error: error.as_deref(),
    }
    .emit();
    crate::alloc::release_freed();
    result
}

/// `POST /admin/trigger/{sync|backfill}?product=…&from=…&to=…&force=…`.
#[derive(Debug, serde::Deserialize)]
struct TriggerQuery {
    product: Option<String>,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    #[serde(default)]
    force: bool,
}

/// What a trigger ran, per product; the `trigger` command prints it as `sync` or `backfill` would.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Triggered {
    /// Product (its configuration name) and run.
    pub runs: Vec<(String, RunReport)>,
}

/// Runs a sync or a backfill now, for `trigger`: it waits for the product's turn (a scheduled
/// cycle in flight finishes first) and answers with the run reports. Answers loopback callers
/// that show the admin token and no `Origin` only, whatever `server.listen` is: the metrics port
/// may face a network, and a web page may reach loopback; this must serve neither.
async fn trigger(
    AxState(shared): AxState<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    AxPath(what): AxPath<String>,
    Query(q): Query<TriggerQuery>,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let refuse = |status: StatusCode, error: String| {
        let error = crate::model::cut(&error).into_owned();
        (status, axum::Json(json!({ "error": error })))
    };
    if let Err((status, why)) = super::admin::admit(&headers, peer, &shared.admin_token) {
        return refuse(status, why);
    }
    if shared.draining.load(Ordering::SeqCst) {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "the daemon is shutting down".into(),
        );
    }
    if shared.standby() {
        let leader = match shared.pipeline.state.writer().await {
            Ok(Some(row)) if row.held => row.holder.to_string(),
            _ => "no replica at the moment".into(),
        };
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this replica is a standby; the writer lease is held by {leader}: trigger that one"
            ),
        );
    }
    let work = match (what.as_str(), q.from, q.to) {
        ("sync", _, _) => Work::Sync,
        ("backfill", Some(from), Some(to)) => Work::Backfill {
            from,
            to,
            force: q.force,
        },
        ("backfill", _, _) => {
            return refuse(StatusCode::BAD_REQUEST, "backfill needs from and to".into());
        }
        (other, _, _) => {
            return refuse(
                StatusCode::NOT_FOUND,
                format!("`{other}` is not something to trigger (sync, backfill)"),
            );
        }
    };
    let products: Vec<Product> = match q.product.as_deref() {
        None => shared.turns.keys().copied().collect(),
        Some(name) => match shared.turns.keys().find(|p| p.config_name() == name) {
            Some(p) => vec![*p],
            None => {
                return refuse(
                    StatusCode::BAD_REQUEST,
                    format!("product `{name}` is not configured in this daemon"),
                );
            }
        },
    };
    let mut runs = Vec::new();
    for product in products {
        let turn = shared.turns[&product].clone().lock_owned().await;
        match run_turn(&shared, product, work, turn).await {
            Ok(report) => runs.push((product.config_name().to_string(), report)),
            Err(e) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, format!("{product}: {e}")),
        }
    }
    (
        StatusCode::OK,
        axum::Json(serde_json::to_value(Triggered { runs }).expect("serializable")),
    )
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
    // Replicas sharing a PostgreSQL state stand by until the lease comes free.
    let access = match access {
        Access::Write(request) if matches!(settings.state.url, StateUrl::Postgres { .. }) => {
            Access::Write(request.as_standby())
        }
        other => other,
    };
    let admin_token = super::admin::ensure(&settings.admin_token_file())?;
    let max_connections = server::connection_cap(settings.server.max_connections);
    let pipeline = Pipeline::open(settings, true, access).await?;
    let prepared = tokio::sync::Mutex::new(pipeline.state.lease_epoch());
    let shared = Arc::new(Shared {
        pipeline,
        metrics,
        draining: AtomicBool::new(false),
        clocks: schedules
            .iter()
            .map(|(p, _, _)| (*p, Mutex::default()))
            .collect(),
        turns: schedules
            .iter()
            .map(|(p, _, _)| (*p, Arc::default()))
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
        prepared,
        admin_token,
    });
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Failed(format!("cannot listen on {listen} (server.listen): {e}")))?;
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_page))
        .route("/admin/trigger/{what}", post(trigger))
        .with_state(shared.clone());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(listener, app, max_connections, stop_rx));
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
    // A first cycle as soon as the lease is held (at once with SQLite), so a fresh deployment or
    // a takeover does not idle until the next tick.
    tokio::spawn(lease::follow(shared.clone()));
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
