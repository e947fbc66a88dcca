//! One pass of data through the house: plan the windows, fetch each export, decode and
//! normalize it, rewrite the lake partitions it touches, then commit the window and move the
//! watermark. Every stage is recorded, so a run killed anywhere is finished by the next one.
//!
//! This file plans a run and drives its windows; [`window`] takes one window through its
//! stages, [`write`] takes an export into the lake, [`import`] does the same for local files, and
//! [`cleanup`] undoes what a killed process left.

mod cleanup;
mod delta;
mod import;
mod window;
mod write;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use tokio::sync::{Mutex, Semaphore};

use crate::api::{ApiError, DpssClient};
use crate::config::{ConfigError, Settings};
use crate::decode::DecodeError;
use crate::events::{HistoryPruned, InternalEvent, WindowFailed};
use crate::fetch::FetchError;
use crate::lake::{Lake, LakeError};
use crate::model::{Counts, WindowKind};
use crate::plan::{self, WindowPlan};
use crate::product::Product;
use crate::state::{LeaseRequest, RunTotals, Stage, State, StateError, WindowRow};
use cleanup::clean_downloads;
pub use cleanup::repair_lake;

/// How recently an identical backfill may have finished for a re-run to resume rather than
/// reload it.
pub const RESUME_WINDOW: Duration = Duration::from_secs(600);

/// Attempts per window within one run before it is left failed for the next run.
const WINDOW_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Lake(#[from] LakeError),
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("counts do not reconcile for {window}: read {} != written {} + quarantined {} + duplicates {}", .counts.read, .counts.written, .counts.quarantined, .counts.duplicates)]
    Reconcile { window: String, counts: Counts },
    #[error(transparent)]
    Rows(#[from] crate::normalize::RowsError),
    #[error("{0}")]
    Usage(String),
    #[error("internal task failed: {0}")]
    Task(String),
    #[error(
        "refusing to replace closed status day {day}: the lake holds {} of its rows, this export {after}, \
         more than lake.max_shrink ({:.0}%) fewer; nothing was written. If the vendor really holds fewer rows \
         now, reload the day on purpose: dpss-sync backfill --from {day} --to {day} --force",
        .before.map(|b| b.to_string()).unwrap_or_else(|| "some".into()),
        .max_shrink * 100.0
    )]
    Shrink {
        day: NaiveDate,
        before: Option<u64>,
        after: u64,
        max_shrink: f64,
    },
}

impl SyncError {
    /// The vendor refused the batch request itself (400/422): the request, not the moment, is
    /// wrong. Only this makes a first run fall back from the unfiltered export to day windows.
    fn refuses_request(&self) -> bool {
        matches!(
            self,
            SyncError::Fetch(FetchError::Api(ApiError::Http {
                endpoint: "batch-request",
                status: 400 | 422,
                ..
            }))
        )
    }

    /// When a server that throttled the window asked to be called again, if it asked for longer
    /// than `api.max_retry_after`: the window is not tried before then.
    fn not_before(&self) -> Option<chrono::DateTime<Utc>> {
        match self {
            SyncError::Fetch(FetchError::Api(ApiError::Throttled { wait, .. })) => {
                // A year's wait says "not now"; past a day the next day's cycles try again.
                let wait = chrono::Duration::from_std(*wait)
                    .unwrap_or(chrono::Duration::MAX)
                    .min(chrono::Duration::days(1));
                Some(Utc::now() + wait)
            }
            _ => None,
        }
    }

    fn is_permanent(&self) -> bool {
        match self {
            SyncError::Fetch(f) => f.is_permanent(),
            SyncError::Config(_)
            | SyncError::Usage(_)
            | SyncError::Reconcile { .. }
            | SyncError::Shrink { .. } => true,
            _ => false,
        }
    }
}

/// How one window ended in a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct WindowReport {
    pub key: String,
    pub job_id: Option<String>,
    pub counts: Option<Counts>,
    pub error: Option<String>,
    /// The vendor refused the batch request itself (400/422).
    #[serde(skip)]
    pub refused: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct RunReport {
    pub run_id: i64,
    pub notes: Vec<String>,
    pub windows: Vec<WindowReport>,
}

impl RunReport {
    pub fn ok(&self) -> bool {
        self.windows.iter().all(|w| w.error.is_none())
    }

    pub fn totals(&self) -> RunTotals {
        let mut t = RunTotals::default();
        for w in &self.windows {
            match (&w.counts, &w.error) {
                (Some(c), None) => {
                    t.committed += 1;
                    t.counts.read += c.read;
                    t.counts.written += c.written;
                    t.counts.quarantined += c.quarantined;
                    t.counts.duplicates += c.duplicates;
                }
                _ => t.failed += 1,
            }
        }
        t
    }
}

/// What the next cycle would do.
pub struct Preview {
    /// Jobs to resume, then the planned windows, with what the state knows of each.
    pub windows: Vec<(WindowPlan, Option<WindowRow>)>,
    /// Windows that keep failing and wait before their next try.
    pub deferred: Vec<(plan::Deferred, WindowRow)>,
}

/// What a run was asked to do besides its windows.
struct Ask {
    command: &'static str,
    /// The day range asked for (a backfill's), to recognise a re-run of the same.
    range: Option<(NaiveDate, NaiveDate)>,
    /// Also resume a run of the same that finished this recently.
    resume_recent: Option<Duration>,
    /// Replace days even where the shrink guard would refuse.
    force: bool,
}

impl Ask {
    fn sync() -> Self {
        Self {
            command: "sync",
            range: None,
            resume_recent: None,
            force: false,
        }
    }
}

/// Everything a run needs, opened once.
#[derive(Clone)]
pub struct Pipeline {
    pub settings: Arc<Settings>,
    pub state: State,
    pub lake: Lake,
    client: Option<Arc<DpssClient>>,
    jobs: Arc<Semaphore>,
    /// Lake rewrites are serialized: two windows may touch the same partition.
    lake_lock: Arc<Mutex<()>>,
}

/// How a command uses the state and the lake.
#[derive(Debug, Clone)]
pub enum Access {
    /// `status`, `plan`, `check-config`, `query`: the state read-only, nothing migrated,
    /// cleaned or repaired, so they work beside a running daemon.
    Read,
    /// Commands that write hold the writer lease for their whole life; only they clean up and
    /// repair what a killed process left.
    Write(LeaseRequest),
}

impl Pipeline {
    /// Opens the state and the lake as `access` says; with `online`, also the vendor client.
    pub async fn open(settings: Settings, online: bool, access: Access) -> Result<Self, SyncError> {
        let client = if online {
            Some(Arc::new(DpssClient::from_settings(&settings)?))
        } else {
            None
        };
        let lake = Lake::open(&settings.lake, &settings.work_dir())?;
        let state = match &access {
            Access::Read => State::open_reader(&settings.state.url).await?,
            Access::Write(request) => {
                let request = request.clone().with_ttl(settings.state.lease_ttl);
                State::open_writer(&settings.state.url, &request).await?
            }
        };
        let pipeline = Self {
            jobs: Arc::new(Semaphore::new(settings.api.max_concurrent_jobs)),
            settings: Arc::new(settings),
            state,
            lake,
            client,
            lake_lock: Arc::default(),
        };
        // A standby replica does this when it takes the lease over.
        if matches!(access, Access::Write(_)) && pipeline.state.lease_epoch().is_some() {
            pipeline.take_over().await?;
        }
        Ok(pipeline)
    }

    /// What the writer does before its first cycle: repair the lake objects a killed (or
    /// superseded) writer left, then clean up the downloads. In that order: a Delta commit the
    /// repair finds landed commits its window, whose download is then no longer needed.
    pub async fn take_over(&self) -> Result<(), SyncError> {
        let work = self.work_dir();
        // Owner-only where it is made here: downloads and spills are the utility's data.
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&work)
            .map_err(|e| SyncError::Usage(format!("cannot create {}: {e}", work.display())))?;
        for product in self.settings.products.keys().copied() {
            if !self.lake.is_delta() && self.lake.holds_delta_table(product).await {
                return Err(SyncError::Usage(format!(
                    "the lake {} holds a Delta table for {product} (a _delta_log directory) but lake.format is \"parquet\": \
                     set lake.format = \"delta\". Writing the Hive layout there would read back the files the table's commits removed.",
                    self.lake.location()
                )));
            }
            repair_lake(&self.state, &self.lake, product).await?;
        }
        clean_downloads(&work, &self.state, self.settings.products.keys().copied()).await?;
        Ok(())
    }

    /// A pipeline whose writes carry the writer lease's epoch held now (see `State::pinned`):
    /// what one cycle runs with, so a cycle that lost the lease writes nothing more even if
    /// this replica takes the lease again while it winds down.
    pub fn pinned(&self) -> Result<Self, SyncError> {
        Ok(Self {
            state: self.state.pinned()?,
            ..self.clone()
        })
    }

    pub fn client(&self) -> Option<&DpssClient> {
        self.client.as_deref()
    }

    fn work_dir(&self) -> PathBuf {
        self.settings.work_dir()
    }

    /// What the next cycle would run: jobs to resume first, then the planned windows, and the
    /// failing windows it waits for.
    pub async fn preview(&self, product: Product, today: NaiveDate) -> Result<Preview, SyncError> {
        let p = self.settings.product(product)?;
        let watermark = self.state.watermark(product).await?;
        let known: BTreeMap<String, WindowRow> = self
            .state
            .windows(product)
            .await?
            .into_iter()
            .map(|w| (w.key.clone(), w))
            .collect();
        let ledger = plan::Ledger {
            final_days: self.state.days_final(product).await?,
            backing_off: known
                .values()
                .filter_map(|w| w.next_attempt_at.map(|t| (w.key.clone(), t)))
                .collect(),
        };
        let cycle = plan::plan_cycle(
            product,
            watermark,
            p.lookback_days,
            today,
            Utc::now(),
            &ledger,
        );
        let mut windows = self.resumable(product, today).await?;
        for w in cycle.windows {
            if !windows.iter().any(|(x, _)| x.key == w.key) {
                let existing = known.get(&w.key).cloned();
                windows.push((w, existing));
            }
        }
        let deferred = cycle
            .deferred
            .into_iter()
            .filter_map(|d| known.get(&d.key).cloned().map(|w| (d, w)))
            .collect();
        Ok(Preview { windows, deferred })
    }

    /// Windows with a recorded job that did not commit: their plan, rebuilt from the state.
    async fn resumable(
        &self,
        product: Product,
        today: NaiveDate,
    ) -> Result<Vec<(WindowPlan, Option<WindowRow>)>, SyncError> {
        let mut out = Vec::new();
        for w in self.state.in_flight(product).await? {
            let mut plan = match w.kind {
                WindowKind::History => plan::history_window(product, today),
                WindowKind::Day => plan::day_window(product, w.from, String::new()),
            };
            plan.from = w.from;
            plan.to = w.to;
            plan.reason = format!(
                "resume: job {} was recorded at stage {}; it is polled, not requested again",
                w.job_id.as_deref().unwrap_or("?"),
                w.stage.as_str()
            );
            out.push((plan, Some(w)));
        }
        Ok(out)
    }

    /// One incremental cycle of a product.
    pub async fn sync(&self, product: Product) -> Result<RunReport, SyncError> {
        let today = Utc::now().date_naive();
        let preview = self.preview(product, today).await?;
        for (d, w) in &preview.deferred {
            tracing::warn!(
                product = %product, window = %d.key, failures = w.failures, until = %d.until,
                "window keeps failing; waiting before trying it again"
            );
        }
        let plans = preview
            .windows
            .into_iter()
            .map(|(p, _)| p)
            .collect::<Vec<_>>();
        let report = self.run(Ask::sync(), product, plans, Vec::new()).await?;
        let history_refused = report
            .windows
            .iter()
            .any(|w| w.key == "history" && w.refused);
        let report = if history_refused {
            // A vendor that will not export without a time filter: load the history day by day.
            let note = "the vendor refused the unfiltered history export; loading the 13 months day by day instead".to_string();
            let days = plan::plan_backfill(product, plan::available_from(today), today, today)
                .map_err(SyncError::Usage)?
                .0;
            self.run(Ask::sync(), product, days, vec![note]).await?
        } else {
            report
        };
        self.prune_history().await?;
        Ok(report)
    }

    /// Deletes history older than `state.history_retention`: once per cycle keeps the state's
    /// size flat however long the daemon runs.
    async fn prune_history(&self) -> Result<(), SyncError> {
        let retention = chrono::Duration::from_std(self.settings.state.history_retention)
            .unwrap_or(chrono::Duration::MAX);
        let before = Utc::now()
            .checked_sub_signed(retention)
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        let pruned = self.state.prune_history(before).await?;
        HistoryPruned { pruned }.emit();
        Ok(())
    }

    /// Explicit days, clamped to the availability; the watermark never moves backwards.
    /// A backfill re-run within [`RESUME_WINDOW`] of the same one resumes it (a process killed
    /// just as it finished looks exactly like that); `force` reloads every day regardless.
    pub async fn backfill(
        &self,
        product: Product,
        from: NaiveDate,
        to: NaiveDate,
        force: bool,
    ) -> Result<RunReport, SyncError> {
        let today = Utc::now().date_naive();
        let (plans, note) =
            plan::plan_backfill(product, from, to, today).map_err(SyncError::Usage)?;
        let range = plans.first().zip(plans.last()).map(|(a, b)| (a.from, b.to));
        let mut all: Vec<WindowPlan> = self
            .resumable(product, today)
            .await?
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        for p in plans {
            if !all.iter().any(|x| x.key == p.key) {
                all.push(p);
            }
        }
        let ask = Ask {
            command: "backfill",
            range,
            resume_recent: (!force).then_some(RESUME_WINDOW),
            force,
        };
        self.run(ask, product, all, note.into_iter().collect())
            .await
    }

    async fn run(
        &self,
        ask: Ask,
        product: Product,
        mut plans: Vec<WindowPlan>,
        mut notes: Vec<String>,
    ) -> Result<RunReport, SyncError> {
        let Ask {
            command,
            range,
            resume_recent,
            force,
        } = ask;
        let settings = self.settings.product(product)?.clone();
        if self.client.is_none() {
            return Err(SyncError::Usage(
                "the vendor client is not configured".into(),
            ));
        }
        // Re-running a killed run resumes it: what it already committed is not requested again.
        if let Some(since) = self
            .state
            .interrupted_since(command, product, range, resume_recent)
            .await?
        {
            let mut skipped = Vec::new();
            for p in &plans {
                if let Some(w) = self.state.window(product, &p.key).await?
                    && w.stage == Stage::Committed
                    && w.committed_at
                        .as_deref()
                        .is_some_and(|c| c >= since.as_str())
                {
                    skipped.push(p.key.clone());
                }
            }
            if !skipped.is_empty() {
                notes.push(format!(
                    "resuming the {command} started {since}: {} window(s) it committed are not requested again ({}){}",
                    skipped.len(),
                    skipped.join(", "),
                    if resume_recent.is_some() { "; pass --force to reload them now" } else { "" }
                ));
                plans.retain(|p| !skipped.contains(&p.key));
            }
        }
        for n in &notes {
            tracing::warn!(product = %product, "{n}");
        }
        let run_id = self
            .state
            .start_run_for(command, Some(product), range)
            .await?;
        let today = Utc::now().date_naive();
        let tasks = plans.into_iter().map(|plan| {
            let settings = settings.clone();
            async move {
                let result = self
                    .run_window(product, &plan, &settings, run_id, force)
                    .await;
                let window = self.state.window(product, &plan.key).await.ok().flatten();
                let job_id = window.as_ref().and_then(|w| w.job_id.clone());
                match result {
                    Ok(counts) => WindowReport {
                        key: plan.key,
                        job_id,
                        counts: Some(counts),
                        error: None,
                        refused: false,
                    },
                    Err(e) => {
                        let error = crate::model::cut(&e.to_string()).into_owned();
                        WindowFailed {
                            product,
                            window: &plan.key,
                            error: &error,
                        }
                        .emit();
                        if let Some(w) = &window {
                            let backoff = plan::retry_delay(w.failures + 1).map(|d| Utc::now() + d);
                            let retry_at = backoff.max(e.not_before());
                            if let Err(e) = self.state.record_failure(w.id, retry_at).await {
                                tracing::error!(window = %plan.key, error = %crate::model::cut(&e.to_string()), "could not record the window's failure");
                            }
                        }
                        WindowReport {
                            key: plan.key,
                            job_id,
                            counts: window.and_then(|w| w.counts),
                            error: Some(error),
                            refused: e.refuses_request(),
                        }
                    }
                }
            }
        });
        let windows = futures::future::join_all(tasks).await;
        let report = RunReport {
            run_id,
            notes,
            windows,
        };
        self.advance_watermark(product, today).await?;
        let first_error = report.windows.iter().find_map(|w| w.error.clone());
        self.state
            .finish_run(run_id, report.totals(), first_error.as_deref())
            .await?;
        Ok(report)
    }

    /// Moves the watermark past the contiguous committed closed days after it.
    async fn advance_watermark(&self, product: Product, today: NaiveDate) -> Result<(), SyncError> {
        let committed = self.state.committed_days(product).await?;
        let start = match self.state.watermark(product).await? {
            Some(w) => w.succ_opt().expect("in range"),
            None => plan::available_from(today),
        };
        let mut last = None;
        let mut d = start;
        while d < today && committed.contains(&d) {
            last = Some(d);
            d = d.succ_opt().expect("in range");
        }
        if let Some(to) = last {
            self.state.advance_watermark(product, to).await?;
            tracing::info!(product = %product, watermark = %to, "watermark advanced");
        }
        Ok(())
    }
}
