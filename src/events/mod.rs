//! Typed internal events: each one writes its log line and updates its metrics in one place, so
//! the two never drift apart (the pattern Vector uses). Metric names carry their unit; without a
//! recorder installed (one-shot commands) the metric calls are no-ops.

use std::time::Duration;

use metrics::{counter, gauge, histogram};

use crate::model::Counts;
use crate::product::Product;

mod delta;
mod lake;
mod lease;
pub use delta::{DeltaCommitResolved, DeltaCommitted, DeltaVacuumed};
pub use lake::WriteCost;
pub use lease::{LeaseAge, LeaseChanged};

pub trait InternalEvent {
    fn emit(self);
}

/// "2xx", "4xx", … or "network" when no response came back.
fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        Some(_) => "other",
        None => "network",
    }
}

/// One HTTP exchange with the vendor (identity server, DPSS API or the blob host).
pub struct VendorRequest<'a> {
    pub endpoint: &'static str,
    pub method: &'a str,
    pub status: Option<u16>,
    pub duration: Duration,
    pub attempt: u32,
    pub correlation_id: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl InternalEvent for VendorRequest<'_> {
    fn emit(self) {
        let class = status_class(self.status);
        let ms = self.duration.as_millis() as u64;
        // Every call at debug (a sync makes hundreds); failures at warn.
        match self.error {
            None => tracing::debug!(
                correlation_id = self.correlation_id,
                endpoint = self.endpoint,
                method = self.method,
                status = self.status,
                attempt = self.attempt,
                duration_ms = ms,
                "vendor request"
            ),
            Some(e) => tracing::warn!(
                correlation_id = self.correlation_id,
                endpoint = self.endpoint,
                method = self.method,
                status = self.status,
                attempt = self.attempt,
                duration_ms = ms,
                error = %crate::model::cut(e),
                "vendor request failed"
            ),
        }
        counter!("dpss_sync_vendor_requests_total", "endpoint" => self.endpoint, "status_class" => class).increment(1);
        histogram!("dpss_sync_vendor_request_duration_seconds", "endpoint" => self.endpoint)
            .record(self.duration.as_secs_f64());
    }
}

/// A request about to be sent again.
pub struct Retrying<'a> {
    pub endpoint: &'static str,
    pub attempt: u32,
    pub wait: Duration,
    pub retry_after: bool,
    pub reason: &'a str,
}

impl InternalEvent for Retrying<'_> {
    fn emit(self) {
        tracing::info!(
            endpoint = self.endpoint,
            attempt = self.attempt,
            wait_ms = self.wait.as_millis() as u64,
            retry_after = self.retry_after,
            reason = %crate::model::cut(self.reason),
            "retrying"
        );
        counter!("dpss_sync_retries_total", "endpoint" => self.endpoint).increment(1);
        if self.retry_after {
            counter!("dpss_sync_retry_after_waits_total", "endpoint" => self.endpoint).increment(1);
            counter!("dpss_sync_retry_after_wait_seconds_total", "endpoint" => self.endpoint)
                .increment(self.wait.as_secs());
        }
    }
}

/// A download streamed to disk.
pub struct Downloaded<'a> {
    pub url: &'a str,
    pub bytes: u64,
    pub duration: Duration,
}

impl InternalEvent for Downloaded<'_> {
    fn emit(self) {
        tracing::info!(
            url = self.url,
            bytes = self.bytes,
            duration_ms = self.duration.as_millis() as u64,
            "downloaded"
        );
        counter!("dpss_sync_downloaded_bytes_total").increment(self.bytes);
    }
}

/// A vendor job recorded in the state.
pub struct JobSubmitted<'a> {
    pub product: Product,
    pub window: &'a str,
    pub job_id: &'a str,
}

impl InternalEvent for JobSubmitted<'_> {
    fn emit(self) {
        tracing::info!(product = %self.product, window = self.window, job_id = self.job_id, "vendor job submitted");
        counter!("dpss_sync_jobs_submitted_total", "product" => self.product.config_name())
            .increment(1);
    }
}

/// A vendor job done with, however it ended; `seconds` from submission.
pub struct JobFinished<'a> {
    pub product: Product,
    pub job_id: &'a str,
    pub outcome: &'static str,
    pub seconds: f64,
}

impl InternalEvent for JobFinished<'_> {
    fn emit(self) {
        tracing::info!(product = %self.product, job_id = self.job_id, outcome = self.outcome, seconds = self.seconds, "vendor job finished");
        counter!("dpss_sync_jobs_finished_total", "product" => self.product.config_name(), "outcome" => self.outcome)
            .increment(1);
        histogram!("dpss_sync_job_duration_seconds", "product" => self.product.config_name())
            .record(self.seconds);
    }
}

/// Vendor jobs this process is polling or downloading right now.
pub struct JobsInFlight(pub Product, pub i64);

impl InternalEvent for JobsInFlight {
    fn emit(self) {
        crate::progress::jobs_in_flight(self.1);
        gauge!("dpss_sync_jobs_in_flight", "product" => self.0.config_name())
            .increment(self.1 as f64);
    }
}

/// Columns in an export the product does not know; reported once per job.
pub struct UnknownColumns<'a> {
    pub product: Product,
    pub job_id: &'a str,
    pub columns: &'a [String],
}

impl InternalEvent for UnknownColumns<'_> {
    fn emit(self) {
        tracing::warn!(product = %self.product, job_id = self.job_id, columns = ?self.columns, "export has columns this product does not know; they are ignored");
        counter!("dpss_sync_unknown_columns_total", "product" => self.product.config_name())
            .increment(self.columns.len() as u64);
    }
}

/// One partition (or quarantine day) rewritten in the lake.
pub struct ObjectsWritten {
    pub product: Product,
    pub objects: usize,
    pub bytes: u64,
}

impl InternalEvent for ObjectsWritten {
    fn emit(self) {
        crate::progress::partition_written();
        counter!("dpss_sync_objects_written_total", "product" => self.product.config_name())
            .increment(self.objects as u64);
        counter!("dpss_sync_written_bytes_total", "product" => self.product.config_name())
            .increment(self.bytes);
    }
}

/// A window committed: its rows are in the lake and its counts reconcile.
pub struct WindowCommitted<'a> {
    pub product: Product,
    pub window: &'a str,
    pub job_id: &'a str,
    pub counts: Counts,
}

impl InternalEvent for WindowCommitted<'_> {
    fn emit(self) {
        let c = self.counts;
        tracing::info!(
            product = %self.product, window = self.window, job_id = self.job_id,
            rows_read = c.read, rows_written = c.written, rows_quarantined = c.quarantined,
            duplicates = c.duplicates, "window committed"
        );
        let p = self.product.config_name();
        counter!("dpss_sync_rows_read_total", "product" => p).increment(c.read);
        counter!("dpss_sync_rows_written_total", "product" => p).increment(c.written);
        counter!("dpss_sync_rows_quarantined_total", "product" => p).increment(c.quarantined);
        counter!("dpss_sync_rows_duplicate_total", "product" => p).increment(c.duplicates);
        counter!("dpss_sync_windows_total", "product" => p, "outcome" => "committed").increment(1);
        gauge!("dpss_sync_last_commit_timestamp_seconds", "product" => p)
            .set(chrono::Utc::now().timestamp() as f64);
    }
}

/// A window that did not commit in this run.
pub struct WindowFailed<'a> {
    pub product: Product,
    pub window: &'a str,
    pub error: &'a str,
}

impl InternalEvent for WindowFailed<'_> {
    fn emit(self) {
        tracing::error!(product = %self.product, window = self.window, error = %crate::model::cut(self.error), "window failed");
        counter!("dpss_sync_windows_total", "product" => self.product.config_name(), "outcome" => "failed").increment(1);
    }
}

/// A scheduled cycle, however it ended.
pub struct CycleFinished<'a> {
    pub product: Product,
    pub outcome: &'static str,
    pub duration: Duration,
    pub error: Option<&'a str>,
}

impl InternalEvent for CycleFinished<'_> {
    fn emit(self) {
        match self.error {
            None => {
                tracing::info!(product = %self.product, outcome = self.outcome, duration_ms = self.duration.as_millis() as u64, "cycle finished")
            }
            Some(e) => {
                tracing::error!(product = %self.product, outcome = self.outcome, error = %crate::model::cut(e), "cycle failed")
            }
        }
        let p = self.product.config_name();
        counter!("dpss_sync_cycles_total", "product" => p, "outcome" => self.outcome).increment(1);
        histogram!("dpss_sync_cycle_duration_seconds", "product" => p)
            .record(self.duration.as_secs_f64());
    }
}

/// A schedule tick that found the previous cycle still running.
pub struct TickSkipped(pub Product);

impl InternalEvent for TickSkipped {
    fn emit(self) {
        tracing::warn!(product = %self.0, "schedule tick skipped: the previous cycle is still running");
        counter!("dpss_sync_skipped_ticks_total", "product" => self.0.config_name()).increment(1);
    }
}

/// The watermark's age: how far the lake's closed days trail the clock.
pub struct WatermarkAge {
    pub product: Product,
    pub seconds: f64,
}

impl InternalEvent for WatermarkAge {
    fn emit(self) {
        gauge!("dpss_sync_watermark_age_seconds", "product" => self.product.config_name())
            .set(self.seconds);
    }
}

/// A window refused because it would remove too many of a closed day's rows.
pub struct ShrinkRefused<'a> {
    pub product: Product,
    pub window: &'a str,
    pub day: chrono::NaiveDate,
    pub before: Option<u64>,
    pub after: u64,
}

impl InternalEvent for ShrinkRefused<'_> {
    fn emit(self) {
        tracing::error!(
            product = %self.product, window = self.window, day = %self.day,
            rows_before = self.before, rows_after = self.after,
            "replace refused: the export would remove too many of a closed day's rows"
        );
        counter!("dpss_sync_shrink_refused_total", "product" => self.product.config_name())
            .increment(1);
    }
}

/// What a writer's repair removed: objects (and local staging files) of rewrites a crash cut
/// short (`orphans`), and objects a committed rewrite replaced whose deletion did not finish
/// (`doomed`).
pub struct LakeRepaired {
    pub product: Product,
    pub orphans: usize,
    pub doomed: usize,
}

impl InternalEvent for LakeRepaired {
    fn emit(self) {
        if self.orphans + self.doomed == 0 {
            return;
        }
        tracing::warn!(
            product = %self.product, orphans = self.orphans, replaced = self.doomed,
            "repaired the lake: removed objects of an interrupted rewrite and finished deletes a commit decided"
        );
        let p = self.product.config_name();
        counter!("dpss_sync_repaired_objects_total", "product" => p, "kind" => "orphan")
            .increment(self.orphans as u64);
        counter!("dpss_sync_repaired_objects_total", "product" => p, "kind" => "replaced")
            .increment(self.doomed as u64);
    }
}

/// A cycle that panicked: logged and counted, and the next tick runs.
pub struct CyclePanicked<'a> {
    pub product: Product,
    pub panic: &'a str,
}

impl InternalEvent for CyclePanicked<'_> {
    fn emit(self) {
        tracing::error!(product = %self.product, panic = %crate::model::cut(self.panic), "cycle panicked; the next tick runs as usual");
        counter!("dpss_sync_cycle_panics_total", "product" => self.product.config_name())
            .increment(1);
    }
}

/// A batch request whose outcome is unknown (the connection dropped after it was sent): the
/// vendor may have created a job, so it is not sent again until the next cycle.
pub struct SubmissionUnknown<'a> {
    pub product: Product,
    pub window: &'a str,
}

impl InternalEvent for SubmissionUnknown<'_> {
    fn emit(self) {
        tracing::warn!(
            product = %self.product, window = self.window,
            "batch request outcome unknown; the window waits for the next cycle instead of sending it again now"
        );
        counter!("dpss_sync_submissions_unknown_total", "product" => self.product.config_name())
            .increment(1);
    }
}

/// When the last window committed, from the state at start, so staleness alerts hold across
/// restarts.
pub struct LastCommit {
    pub product: Product,
    pub at: chrono::DateTime<chrono::Utc>,
}

impl InternalEvent for LastCommit {
    fn emit(self) {
        gauge!("dpss_sync_last_commit_timestamp_seconds", "product" => self.product.config_name())
            .set(self.at.timestamp() as f64);
    }
}

/// Old history left the state (`state.history_retention`).
pub struct HistoryPruned {
    pub pruned: crate::model::Pruned,
}

impl InternalEvent for HistoryPruned {
    fn emit(self) {
        let p = self.pruned;
        if p.total() > 0 {
            tracing::info!(
                runs = p.runs,
                jobs = p.jobs,
                windows = p.windows,
                "pruned old history from the state"
            );
        }
        for (table, n) in [("runs", p.runs), ("jobs", p.jobs), ("windows", p.windows)] {
            counter!("dpss_sync_history_pruned_total", "table" => table).increment(n);
        }
    }
}

/// A connection the HTTP server closed at once: `server.max_connections` were open.
pub struct ConnectionRefused {
    pub max_connections: usize,
}

impl InternalEvent for ConnectionRefused {
    fn emit(self) {
        // At debug: a flood of connections must not become a flood of log lines; the
        // counter shows it.
        tracing::debug!(
            max_connections = self.max_connections,
            "refused a connection: server.max_connections are open"
        );
        counter!("dpss_sync_http_connections_refused_total").increment(1);
    }
}

/// The vendor endpoints the client calls, as `endpoint` labels.
pub const ENDPOINTS: [&str; 6] = [
    "token",
    "batch-request-parameters",
    "batch-request",
    "job-status",
    "download",
    "on-demand",
];

/// Creates every counter and gauge at zero, with its help text, before anything happens: a
/// dashboard then shows 0 rather than "no data", and `increase()` in an alert sees the first
/// event (a series that appears at 1 has no increase to show).
pub fn register_metrics(products: &[Product]) {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        "dpss_sync_rows_read_total",
        "Rows read from exports, per committed window"
    );
    describe_counter!("dpss_sync_rows_written_total", "Rows written to the lake");
    describe_counter!(
        "dpss_sync_rows_quarantined_total",
        "Rows sent to the quarantine"
    );
    describe_counter!(
        "dpss_sync_rows_duplicate_total",
        "Superseded copies left out"
    );
    describe_counter!("dpss_sync_windows_total", "Windows committed or failed");
    describe_counter!("dpss_sync_cycles_total", "Scheduled cycles by outcome");
    describe_histogram!(
        "dpss_sync_cycle_duration_seconds",
        "Scheduled cycle duration"
    );
    describe_counter!(
        "dpss_sync_skipped_ticks_total",
        "Ticks skipped while a cycle ran"
    );
    describe_counter!("dpss_sync_cycle_panics_total", "Cycles that panicked");
    describe_counter!("dpss_sync_vendor_requests_total", "Calls to the vendor");
    describe_histogram!(
        "dpss_sync_vendor_request_duration_seconds",
        "Vendor call duration"
    );
    describe_counter!("dpss_sync_retries_total", "Vendor calls retried");
    describe_counter!(
        "dpss_sync_retry_after_waits_total",
        "Waits a vendor asked for"
    );
    describe_counter!(
        "dpss_sync_retry_after_wait_seconds_total",
        "Seconds waited on Retry-After"
    );
    describe_counter!(
        "dpss_sync_jobs_submitted_total",
        "Vendor export jobs submitted"
    );
    describe_counter!(
        "dpss_sync_jobs_finished_total",
        "Vendor export jobs by outcome"
    );
    describe_histogram!(
        "dpss_sync_job_duration_seconds",
        "Vendor export job duration"
    );
    describe_gauge!(
        "dpss_sync_jobs_in_flight",
        "Vendor export jobs being waited on"
    );
    describe_counter!("dpss_sync_downloaded_bytes_total", "Bytes downloaded");
    describe_counter!("dpss_sync_written_bytes_total", "Bytes written to the lake");
    describe_counter!(
        "dpss_sync_objects_written_total",
        "Objects written to the lake"
    );
    describe_counter!(
        "dpss_sync_unknown_columns_total",
        "Export columns the product does not know"
    );
    describe_gauge!(
        "dpss_sync_watermark_age_seconds",
        "Age of the newest closed day synced"
    );
    describe_gauge!(
        "dpss_sync_last_commit_timestamp_seconds",
        "Time of the last commit"
    );
    describe_counter!(
        "dpss_sync_shrink_refused_total",
        "Windows the shrink guard refused"
    );
    describe_counter!(
        "dpss_sync_repaired_objects_total",
        "Objects a writer's repair removed"
    );
    describe_counter!(
        "dpss_sync_submissions_unknown_total",
        "Batch requests of unknown outcome"
    );
    describe_counter!(
        "dpss_sync_http_connections_refused_total",
        "Connections closed at once because server.max_connections were open"
    );
    lease::register_metrics();
    counter!("dpss_sync_downloaded_bytes_total").absolute(0);
    counter!("dpss_sync_http_connections_refused_total").absolute(0);
    for endpoint in ENDPOINTS {
        for name in [
            "dpss_sync_retries_total",
            "dpss_sync_retry_after_waits_total",
            "dpss_sync_retry_after_wait_seconds_total",
        ] {
            counter!(name, "endpoint" => endpoint).absolute(0);
        }
    }
    for product in products {
        let p = product.config_name();
        for name in [
            "dpss_sync_rows_read_total",
            "dpss_sync_rows_written_total",
            "dpss_sync_rows_quarantined_total",
            "dpss_sync_rows_duplicate_total",
            "dpss_sync_skipped_ticks_total",
            "dpss_sync_cycle_panics_total",
            "dpss_sync_jobs_submitted_total",
            "dpss_sync_written_bytes_total",
            "dpss_sync_objects_written_total",
            "dpss_sync_partitions_unchanged_total",
            "dpss_sync_rewritten_rows_total",
            "dpss_sync_unknown_columns_total",
            "dpss_sync_shrink_refused_total",
            "dpss_sync_submissions_unknown_total",
        ] {
            counter!(name, "product" => p).absolute(0);
        }
        for outcome in ["committed", "failed"] {
            counter!("dpss_sync_windows_total", "product" => p, "outcome" => outcome).absolute(0);
        }
        for outcome in ["ok", "failed", "error", "panicked"] {
            counter!("dpss_sync_cycles_total", "product" => p, "outcome" => outcome).absolute(0);
        }
        for outcome in ["succeeded", "failed", "gone", "timed_out"] {
            counter!("dpss_sync_jobs_finished_total", "product" => p, "outcome" => outcome)
                .absolute(0);
        }
        for kind in ["orphan", "replaced"] {
            counter!("dpss_sync_repaired_objects_total", "product" => p, "kind" => kind)
                .absolute(0);
        }
        gauge!("dpss_sync_jobs_in_flight", "product" => p).set(0.0);
    }
}
