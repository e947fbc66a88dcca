//! One window's stages: submit (or resume) the vendor job, fetch its export, ingest it, and
//! commit; retried with backoff within a run, and recorded at every step so a killed process
//! picks the window up where it stopped.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chrono::NaiveDate;

use super::write::Written;
use super::{Pipeline, SyncError, WINDOW_ATTEMPTS};
use crate::api::ApiError;
use crate::decode::DecodeError;
use crate::events::{InternalEvent, JobsInFlight, SubmissionUnknown, WindowCommitted};
use crate::fetch::{FetchError, Fetcher};
use crate::lake::Replace;
use crate::model::{Counts, WindowKind};
use crate::plan::WindowPlan;
use crate::product::Product;
use crate::state::{Stage, WindowRow};

impl Pipeline {
    /// Drives one window to committed, retrying with backoff within this run.
    pub(super) async fn run_window(
        &self,
        product: Product,
        plan: &WindowPlan,
        p: &crate::config::ProductSettings,
        run_id: i64,
        force: bool,
    ) -> Result<Counts, SyncError> {
        let client = self.client.as_deref().expect("checked in run");
        let work = self.work_dir();
        let fetcher = Fetcher {
            product,
            client,
            state: &self.state,
            api: &self.settings.api,
            work_dir: &work,
            max_download: self.settings.lake.max_uncompressed_size,
        };
        let subscription = p.subscription_id.clone().unwrap_or_default();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let window = self
                .state
                .plan_window(product, &plan.key, plan.kind, plan.from, plan.to, run_id)
                .await?;
            let resumed = window.stage.has_job();
            let outcome = async {
                let fetched = {
                    let _slot = self.jobs.acquire().await.expect("semaphore open");
                    JobsInFlight(product, 1).emit();
                    let fetched = async {
                        let job_id = fetcher
                            .submit(&window, &subscription, p.file_type, &plan.tokens)
                            .await?;
                        fetcher
                            .fetch(&window, &job_id, &subscription, resumed)
                            .await
                    }
                    .await;
                    JobsInFlight(product, -1).emit();
                    fetched?
                };
                let replace = match plan.kind {
                    WindowKind::Day => Replace::Days(BTreeSet::from([plan.from])),
                    WindowKind::History => {
                        Replace::DaysAndDelivered(days_between(plan.from, plan.to))
                    }
                };
                let result = self
                    .ingest(
                        product,
                        &window,
                        &plan.key,
                        &fetched.job_id,
                        &fetched.path,
                        replace,
                        force,
                    )
                    .await;
                if result.is_ok() {
                    let _ = std::fs::remove_file(&fetched.path);
                } else {
                    // The file may be what is wrong (truncated, corrupt): fetch it again next time.
                    let _ = std::fs::remove_file(&fetched.path);
                    self.state
                        .set_stage(window.id, Stage::Submitted, None)
                        .await?;
                }
                result
            }
            .await;
            match outcome {
                Ok(c) => return Ok(c),
                Err(e) => {
                    // A job whose zip holds nothing readable gives the same zip again: only a new
                    // job (perhaps packed differently) can help.
                    let job_is_dead = matches!(
                        e,
                        SyncError::Fetch(
                            FetchError::JobFailed { .. }
                                | FetchError::JobTimeout { .. }
                                | FetchError::JobGone { .. }
                                | FetchError::LinksRefused { .. }
                        ) | SyncError::Decode(
                            DecodeError::NoDataParts { .. } | DecodeError::MissingColumn { .. }
                        )
                    );
                    let current = self.state.window(product, &plan.key).await?;
                    match current {
                        // A live recorded job is kept: the next attempt (or run) polls it again.
                        Some(w) if w.stage.has_job() && !job_is_dead => {
                            self.state
                                .set_stage(w.id, w.stage, Some(&e.to_string()))
                                .await?
                        }
                        _ => {
                            self.state
                                .set_stage(window.id, Stage::Failed, Some(&e.to_string()))
                                .await?
                        }
                    }
                    // The vendor may have created a job for a POST whose answer was lost: sending
                    // it again now could make a second one, so the window waits for the next cycle.
                    let unknown = matches!(
                        e,
                        SyncError::Fetch(FetchError::Api(ApiError::OutcomeUnknown { .. }))
                    );
                    if unknown {
                        SubmissionUnknown {
                            product,
                            window: &plan.key,
                        }
                        .emit();
                    }
                    // A server that asked for a long wait gets it: the window waits for a later
                    // cycle (`SyncError::not_before`), not for another attempt now.
                    let throttled = e.not_before().is_some();
                    if unknown || throttled || e.is_permanent() || attempt >= WINDOW_ATTEMPTS {
                        return Err(e);
                    }
                    let wait = crate::api::jittered(
                        self.settings.api.poll_interval,
                        Duration::from_secs(300),
                        attempt,
                    );
                    tracing::warn!(product = %product, window = %plan.key, attempt, wait_ms = wait.as_millis() as u64, error = %crate::model::cut(&e.to_string()), "window attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Decodes, normalizes and writes one export, then commits its window.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn ingest(
        &self,
        product: Product,
        window: &WindowRow,
        window_key: &str,
        job_id: &str,
        path: &Path,
        replace: Replace,
        force: bool,
    ) -> Result<Counts, SyncError> {
        let normalized = self
            .normalize_files(product, job_id, vec![path.to_path_buf()])
            .await?;
        let _lake = self.lake_lock.lock().await;
        let written = self
            .write(product, window_key, normalized, replace, force)
            .await?;
        let counts = written.counts;
        self.commit(product, job_id, &window.key, written, Some(window.id))
            .await?;
        WindowCommitted {
            product,
            window: &window.key,
            job_id,
            counts,
        }
        .emit();
        Ok(counts)
    }

    /// Records what a write put in the lake (and commits its window) in one state transaction,
    /// then deletes the objects it replaced. A delete that fails is left to the next repair:
    /// the commit already names the new objects. A Delta lake commits to the table's log first
    /// (`sync::delta`).
    pub(super) async fn commit(
        &self,
        product: Product,
        job_id: &str,
        key: &str,
        mut written: Written,
        window: Option<i64>,
    ) -> Result<(), SyncError> {
        if let Some(id) = window {
            // The stage DESIGN.md records: objects are in the lake, the commit is next.
            self.state.set_stage(id, Stage::Written, None).await?;
        }
        if let Some(delta) = written.delta.take() {
            return self
                .commit_delta(product, job_id, key, written, delta, window)
                .await;
        }
        crate::fail_point!("after-write");
        self.state
            .commit_partitions(
                product,
                &written.partitions,
                &written.doomed,
                job_id,
                window.map(|id| (id, written.counts)),
                None,
            )
            .await?;
        crate::fail_point!("after-commit");
        match self.lake.delete_objects(&written.doomed).await {
            Ok(()) => self.state.forget_doomed(&written.doomed).await?,
            Err(e) => tracing::warn!(
                product = %product, error = %crate::model::cut(&e.to_string()),
                "could not delete objects the commit replaced; the next writer's repair deletes them"
            ),
        }
        Ok(())
    }
}

pub(super) fn days_between(from: NaiveDate, to: NaiveDate) -> BTreeSet<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}
