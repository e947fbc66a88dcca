//! What the daemon tells its supervisor: `/healthz` (alive: no cycle far past its limit, no
//! scheduler silent for several periods), `/readyz` (the last commit is fresh; a standby replica
//! is ready to take over) and `/metrics`, with the clocks that liveness reads.

use std::sync::{Arc, Mutex};

use axum::extract::State as AxState;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::Ordering;

use super::Shared;
use crate::cli::CliError;
use crate::events::{InternalEvent, LeaseAge, WatermarkAge};
use crate::product::Product;

/// When a product's cycles ran.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct CycleClock {
    /// The cycle in flight, since when.
    pub(super) running_since: Option<DateTime<Utc>>,
    pub(super) last_started: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Limits {
    pub(super) max_cycle: chrono::Duration,
    pub(super) max_idle: chrono::Duration,
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
pub(super) struct Running<'a>(pub(super) &'a Mutex<CycleClock>);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        lock(self.0).running_since = None;
    }
}

/// The clock's lock; a poisoned one still holds plain timestamps worth reading.
pub(super) fn lock(m: &Mutex<CycleClock>) -> std::sync::MutexGuard<'_, CycleClock> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn schedule_period(expr: &str, tz: chrono_tz::Tz) -> chrono::Duration {
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
pub(super) fn recorder() -> Result<PrometheusHandle, CliError> {
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

pub(super) async fn healthz(AxState(shared): AxState<Arc<Shared>>) -> (StatusCode, String) {
    // A standby starts no cycle by design: its silent scheduler is not a wedge.
    if shared.standby() {
        return (StatusCode::OK, "ok (standby)\n".into());
    }
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

pub(super) async fn readyz(AxState(shared): AxState<Arc<Shared>>) -> (StatusCode, String) {
    if shared.draining.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n".into());
    }
    if shared.standby() {
        return (
            StatusCode::OK,
            "standby: ready to take over the writer lease\n".into(),
        );
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

pub(super) async fn metrics_page(AxState(shared): AxState<Arc<Shared>>) -> String {
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
    if let Ok(Some(age)) = shared
        .pipeline
        .state
        .writer()
        .await
        .map(|row| row.and_then(|r| r.renewed_secs_ago))
    {
        LeaseAge { seconds: age }.emit();
    }
    shared.metrics.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cycle_far_past_its_limit_or_a_silent_scheduler_is_wedged() {
        let p = crate::product::test_support::hid();
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
