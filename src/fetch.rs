//! Getting one window's export onto local disk: submit the job (recording its id before anything
//! else), poll it with backoff until it succeeds, fails or runs out of time, and stream the zip.
//!
//! A window whose job id is recorded is only ever polled from then on, across restarts: the
//! vendor is never asked twice for a window it is already working on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;

use crate::api::{ApiError, BatchJob, DpssClient, JobPhase};
use crate::config::{ApiSettings, FileType};
use crate::events::{InternalEvent, JobFinished, JobSubmitted};
use crate::product::Product;
use crate::state::{JobRow, Stage, State, StateError, WindowRow};

/// How many fresh links to ask for when a download link is refused (expired SAS).
const LINK_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("vendor job {job_id} ended with status `{status}`{}", .message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    JobFailed {
        job_id: String,
        status: String,
        message: Option<String>,
    },
    #[error("vendor job {job_id} was not done within api.job_timeout ({timeout})")]
    JobTimeout { job_id: String, timeout: String },
    #[error("vendor job {job_id} is unknown to the vendor (HTTP 404); it will be requested anew")]
    JobGone { job_id: String },
    #[error("download links of job {job_id} were refused {attempts} times")]
    LinksRefused { job_id: String, attempts: u32 },
    #[error("window {0} has no recorded job id")]
    NoJob(String),
    #[error(
        "the vendor answered the batch request with job id `{0}`, which is not 1 to 128 \
         characters of A-Z, a-z, 0-9, `.`, `_` and `-` (no leading dot); it is never used as a \
         file name or in a URL, so the window fails"
    )]
    BadJobId(String),
}

impl FetchError {
    /// Errors no retry can fix: the request itself or the credentials are wrong. An identity
    /// server that fails (5xx) or throttles (429) says nothing about the credentials.
    pub fn is_permanent(&self) -> bool {
        match self {
            // The same vendor answers the same way: a retry within the run would only make
            // another job with another unusable id.
            FetchError::BadJobId(_) => true,
            FetchError::Api(ApiError::Auth { status, .. }) => {
                (400..500).contains(status) && ![408, 429].contains(status)
            }
            FetchError::Api(ApiError::Http { status, .. }) => {
                (400..500).contains(status) && ![404, 408, 409, 429].contains(status)
            }
            _ => false,
        }
    }
}

pub struct Fetcher<'a> {
    pub product: Product,
    pub client: &'a DpssClient,
    pub state: &'a State,
    pub api: &'a ApiSettings,
    pub work_dir: &'a Path,
    /// The largest download taken: an export's bytes unpack to at least as many.
    pub max_download: u64,
}

/// A window's export on disk.
pub struct Fetched {
    pub job_id: String,
    pub path: PathBuf,
}

impl Fetcher<'_> {
    /// Where a job's download goes: named by its id, which [`Self::submit`] checked (a state
    /// written before the check is checked again here).
    pub fn zip_path(&self, job_id: &str) -> Result<PathBuf, FetchError> {
        if !crate::model::is_safe_name(job_id) {
            return Err(FetchError::BadJobId(crate::model::shown(job_id)));
        }
        Ok(self.work_dir.join(format!("{job_id}.zip")))
    }

    /// Submits the window's job unless one is recorded; the id is stored before this returns.
    pub async fn submit(
        &self,
        window: &WindowRow,
        subscription_id: &str,
        file_type: FileType,
        tokens: &BTreeMap<String, String>,
    ) -> Result<String, FetchError> {
        if let Some(id) = window.job_id.as_ref().filter(|_| window.stage.has_job()) {
            return Ok(id.clone());
        }
        // A replica that lost the writer lease while paused must not ask for a job the new
        // leader may already have asked for.
        self.state.ensure_writer()?;
        let job = self
            .client
            .create_batch(subscription_id, file_type, tokens)
            .await?;
        if !crate::model::is_safe_name(&job.job_id) {
            return Err(FetchError::BadJobId(crate::model::shown(&job.job_id)));
        }
        let deadline = Utc::now()
            + chrono::Duration::from_std(self.api.job_timeout)
                .unwrap_or(chrono::Duration::hours(2));
        let tokens_json = serde_json::to_string(tokens).expect("a string map is JSON");
        self.state
            .mark_submitted(
                window,
                &job.job_id,
                file_type.as_str(),
                &tokens_json,
                deadline,
            )
            .await?;
        JobSubmitted {
            product: self.product,
            window: &window.key,
            job_id: &job.job_id,
        }
        .emit();
        crate::fail_point!("after-submit");
        Ok(job.job_id)
    }

    /// Polls the recorded job to completion and downloads its zip (unless already on disk).
    pub async fn fetch(
        &self,
        window: &WindowRow,
        job_id: &str,
        subscription_id: &str,
        resumed: bool,
    ) -> Result<Fetched, FetchError> {
        let path = self.zip_path(job_id)?;
        if matches!(window.stage, Stage::Downloaded | Stage::Written) && path.exists() {
            return Ok(Fetched {
                job_id: job_id.to_string(),
                path,
            });
        }
        let mut wait_first = !resumed;
        for _ in 0..LINK_ATTEMPTS {
            let job = self.poll(job_id, subscription_id, wait_first).await?;
            wait_first = false;
            let url = job.download_url.expect("poll returns only with a link");
            match self.client.download(&url, &path, self.max_download).await {
                Ok(_) => {
                    self.state
                        .set_stage(window.id, Stage::Downloaded, None)
                        .await?;
                    crate::fail_point!("after-download");
                    return Ok(Fetched {
                        job_id: job_id.to_string(),
                        path,
                    });
                }
                Err(ApiError::LinkRejected { .. }) => {
                    tracing::warn!(window = %window.key, job_id, "download link refused; asking the vendor for a fresh one");
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(FetchError::LinksRefused {
            job_id: job_id.to_string(),
            attempts: LINK_ATTEMPTS,
        })
    }

    fn finished(&self, job: &JobRow, outcome: &'static str) {
        let created =
            chrono::DateTime::parse_from_rfc3339(&job.created_at).map(|t| t.with_timezone(&Utc));
        JobFinished {
            product: self.product,
            job_id: &job.job_id,
            outcome,
            seconds: created
                .map(|c| (Utc::now() - c).num_milliseconds() as f64 / 1000.0)
                .unwrap_or(0.0),
        }
        .emit();
    }

    /// Until `Success` with a link, a terminal failure, or the job's deadline.
    async fn poll(
        &self,
        job_id: &str,
        subscription_id: &str,
        wait_first: bool,
    ) -> Result<BatchJob, FetchError> {
        let record = self
            .state
            .job(job_id)
            .await?
            .ok_or_else(|| FetchError::NoJob(job_id.to_string()))?;
        let mut interval = self.api.poll_interval;
        if wait_first {
            tokio::time::sleep(interval).await;
        }
        loop {
            let job = match self.client.job_status(subscription_id, job_id).await {
                Ok(j) => j,
                Err(ApiError::Http { status: 404, .. }) => {
                    self.state
                        .record_poll(job_id, "NotFound", Some("unknown to the vendor"), true)
                        .await?;
                    self.finished(&record, "gone");
                    return Err(FetchError::JobGone {
                        job_id: job_id.to_string(),
                    });
                }
                Err(e) => return Err(e.into()),
            };
            let phase = job.phase();
            match phase {
                JobPhase::Succeeded if job.download_url.is_some() => {
                    self.state
                        .record_poll(job_id, &job.status, None, true)
                        .await?;
                    self.finished(&record, "succeeded");
                    return Ok(job);
                }
                JobPhase::Failed => {
                    self.state
                        .record_poll(
                            job_id,
                            &job.status,
                            job.message.as_deref().or(Some(&job.status)),
                            true,
                        )
                        .await?;
                    self.finished(&record, "failed");
                    return Err(FetchError::JobFailed {
                        job_id: job_id.to_string(),
                        status: crate::model::shown(&job.status),
                        message: job.message.map(|m| crate::model::cut(&m).into_owned()),
                    });
                }
                _ => {
                    self.state
                        .record_poll(job_id, &job.status, None, false)
                        .await?
                }
            }
            if Utc::now() >= record.deadline {
                self.state
                    .record_poll(job_id, &job.status, Some("timed out"), true)
                    .await?;
                self.finished(&record, "timed_out");
                return Err(FetchError::JobTimeout {
                    job_id: job_id.to_string(),
                    timeout: humantime::format_duration(self.api.job_timeout).to_string(),
                });
            }
            tracing::debug!(job_id, status = %job.status, wait_ms = interval.as_millis() as u64, "job pending");
            let left = (record.deadline - Utc::now())
                .to_std()
                .unwrap_or(Duration::ZERO);
            tokio::time::sleep(interval.min(left.max(Duration::from_millis(10)))).await;
            interval = (interval * 2).min(self.api.poll_max);
        }
    }
}
