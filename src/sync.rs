//! One pass of data through the house: plan the windows, fetch each export, decode and
//! normalize it, rewrite the lake partitions it touches, then commit the window and move the
//! watermark. Every stage is recorded, so a run killed anywhere is finished by the next one.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use arrow::record_batch::RecordBatch;
use futures::{StreamExt, TryStreamExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use tokio::sync::{Mutex, Semaphore};

use crate::api::{ApiError, DpssClient};
use crate::config::{ConfigError, Settings};
use crate::decode::{self, DecodeError};
use crate::events::{
    InternalEvent, JobsInFlight, LakeRepaired, ObjectsWritten, ShrinkRefused, SubmissionUnknown,
    UnknownColumns, WindowCommitted, WindowFailed,
};
use crate::fetch::{FetchError, Fetcher};
use crate::lake::Identity;
use crate::lake::{Lake, LakeError};
use crate::model::{Counts, PartitionState, WindowKind};
use crate::normalize::{self, Normalized, Normalizer};
use crate::plan::{self, WindowPlan};
use crate::product::Product;
use crate::state::{LeaseRequest, RunTotals, Stage, State, StateError, WindowRow};

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
#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowReport {
    pub key: String,
    pub job_id: Option<String>,
    pub counts: Option<Counts>,
    pub error: Option<String>,
    /// The vendor refused the batch request itself (400/422).
    #[serde(skip)]
    pub refused: bool,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
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

/// Which status days a job's result replaces whole.
enum Replace {
    /// Exactly these days (a day window); rows it delivers for other days merge by identity.
    Days(BTreeSet<NaiveDate>),
    /// These days and every day the result holds (an unfiltered export, an import).
    DaysAndDelivered(BTreeSet<NaiveDate>),
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
        let lake = Lake::open(&settings.lake)?;
        let state = match &access {
            Access::Read => State::open_reader(&settings.state.path).await?,
            Access::Write(request) => {
                let state = State::open_writer(&settings.state.path, request).await?;
                let work = settings.work_dir();
                std::fs::create_dir_all(&work).map_err(|e| {
                    SyncError::Usage(format!("cannot create {}: {e}", work.display()))
                })?;
                clean_downloads(&work, &state).await?;
                for product in Product::ALL {
                    repair_lake(&state, &lake, product).await?;
                }
                state
            }
        };
        Ok(Self {
            jobs: Arc::new(Semaphore::new(settings.api.max_concurrent_jobs)),
            settings: Arc::new(settings),
            state,
            lake,
            client,
            lake_lock: Arc::default(),
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
        if !history_refused {
            return Ok(report);
        }
        // A vendor that will not export without a time filter: load the history day by day.
        let note = "the vendor refused the unfiltered history export; loading the 13 months day by day instead".to_string();
        let days = plan::plan_backfill(product, plan::available_from(today), today, today)
            .map_err(SyncError::Usage)?
            .0;
        self.run(Ask::sync(), product, days, vec![note]).await
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
                        WindowFailed {
                            product,
                            window: &plan.key,
                            error: &e.to_string(),
                        }
                        .emit();
                        if let Some(w) = &window {
                            let retry_at = plan::retry_delay(w.failures + 1).map(|d| Utc::now() + d);
                            if let Err(e) = self.state.record_failure(w.id, retry_at).await {
                                tracing::error!(window = %plan.key, error = %e, "could not record the window's failure");
                            }
                        }
                        WindowReport {
                            key: plan.key,
                            job_id,
                            counts: window.and_then(|w| w.counts),
                            error: Some(e.to_string()),
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

    /// Drives one window to committed, retrying with backoff within this run.
    async fn run_window(
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
                    if unknown || e.is_permanent() || attempt >= WINDOW_ATTEMPTS {
                        return Err(e);
                    }
                    let wait = crate::api::jittered(
                        self.settings.api.poll_interval,
                        Duration::from_secs(300),
                        attempt,
                    );
                    tracing::warn!(product = %product, window = %plan.key, attempt, wait_ms = wait.as_millis() as u64, error = %e, "window attempt failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Decodes, normalizes and writes one export, then commits its window.
    #[allow(clippy::too_many_arguments)]
    async fn ingest(
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
        self.commit(product, job_id, written, Some(window.id))
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
    /// the commit already names the new objects.
    async fn commit(
        &self,
        product: Product,
        job_id: &str,
        written: Written,
        window: Option<i64>,
    ) -> Result<(), SyncError> {
        if let Some(id) = window {
            // The stage DESIGN.md records: objects are in the lake, the commit is next.
            self.state.set_stage(id, Stage::Written, None).await?;
        }
        crate::failpoint::hit("after-write");
        self.state
            .commit_partitions(
                product,
                &written.partitions,
                &written.doomed,
                job_id,
                window.map(|id| (id, written.counts)),
            )
            .await?;
        crate::failpoint::hit("after-commit");
        match self.lake.delete_objects(&written.doomed).await {
            Ok(()) => self.state.forget_doomed(&written.doomed).await?,
            Err(e) => tracing::warn!(
                product = %product, error = %e,
                "could not delete objects the commit replaced; the next writer's repair deletes them"
            ),
        }
        Ok(())
    }

    /// Decoding and normalizing are CPU work: the decoder runs on its own thread, checks each
    /// batch's rows and hands them through a short queue to the normalizer on another, so the
    /// two overlap.
    async fn normalize_files(
        &self,
        product: Product,
        job_id: &str,
        files: Vec<PathBuf>,
    ) -> Result<Normalized, SyncError> {
        let job_id = job_id.to_string();
        let scratch = self.work_dir();
        let limit = self.settings.lake.max_uncompressed_size;
        tokio::task::spawn_blocking(move || {
            let expected = files.iter().map(|f| decode::estimated_rows(f)).sum();
            let mut n = Normalizer::new(product, &job_id, Utc::now(), &scratch, expected);
            let (tx, rx) = std::sync::mpsc::sync_channel::<normalize::Checked>(4);
            let decoder = {
                let scratch = scratch.clone();
                std::thread::spawn(move || {
                    let mut unknown = BTreeSet::new();
                    for f in &files {
                        let summary = decode::decode_path(f, &scratch, limit, &mut |b| {
                            tx.send(normalize::check(b))
                                .map_err(|_| DecodeError::Sink("the normalizer stopped".into()))
                        })?;
                        unknown.extend(summary.unknown_columns);
                    }
                    Ok::<_, DecodeError>(unknown)
                })
            };
            for checked in rx {
                n.push(&checked);
            }
            let unknown = decoder
                .join()
                .map_err(|_| SyncError::Task("the decoder thread panicked".into()))??;
            if !unknown.is_empty() {
                let columns: Vec<String> = unknown.into_iter().collect();
                UnknownColumns {
                    product,
                    job_id: &job_id,
                    columns: &columns,
                }
                .emit();
            }
            Ok::<_, SyncError>(n.finish()?)
        })
        .await
        .map_err(|e| SyncError::Task(e.to_string()))?
    }

    /// Rewrites every partition that holds a replaced day or receives new rows, then the
    /// quarantine. Rows delivered for days the job does not replace whole (a vendor that serves
    /// a row outside the asked-for day) replace only the rows with their identity. Partitions
    /// are written [`crate::lake::WRITERS`] at a time. Unless `force`, a result that would
    /// remove too many of a closed day's rows is refused before anything is written.
    async fn write(
        &self,
        product: Product,
        window_key: &str,
        normalized: Normalized,
        replace: Replace,
        force: bool,
    ) -> Result<Written, SyncError> {
        // A write that failed earlier in this process left its rewrites open: undo them first.
        repair_lake(&self.state, &self.lake, product).await?;
        let (replaced, default_day) = match replace {
            Replace::Days(days) => {
                let only = (days.len() == 1).then(|| *days.first().expect("one day"));
                (days, only)
            }
            Replace::DaysAndDelivered(mut days) => {
                days.extend(normalized.status_days.iter().copied());
                (days, None)
            }
        };
        let normalized = Arc::new(normalized);
        if !force {
            self.check_shrink(product, window_key, &normalized, &replaced)
                .await?;
        }
        let soft: BTreeSet<NaiveDate> = normalized
            .status_days
            .difference(&replaced)
            .copied()
            .collect();
        let mut merged: HashSet<Identity> = HashSet::new();
        for (date, p) in &normalized.rows.partitions {
            if !p.status_days.is_disjoint(&soft)
                && let Some((batch, _)) = load(&normalized, *date).await?
            {
                merged.extend(
                    crate::lake::identities(&batch)
                        .into_iter()
                        .filter(|id| soft.contains(&crate::normalize::time::day_of_micros(id.3))),
                );
            }
        }
        if !soft.is_empty() {
            tracing::warn!(
                window = window_key, rows = merged.len(), days = ?soft,
                "the export holds rows of days it was not asked for; they are merged by identity"
            );
        }
        let interesting: BTreeSet<NaiveDate> = replaced.union(&soft).copied().collect();
        let known = self.state.partition_days(product).await?;
        let mut touched: BTreeSet<NaiveDate> = known
            .iter()
            .filter(|(_, days)| !days.is_disjoint(&interesting))
            .map(|(p, _)| *p)
            .collect();
        touched.extend(normalized.rows.partitions.keys().copied());
        let arriving: BTreeMap<NaiveDate, BTreeSet<NaiveDate>> = normalized
            .rows
            .partitions
            .iter()
            .map(|(date, p)| (*date, p.status_days.clone()))
            .collect();
        // What each partition holds now, recorded with the rewrite before anything is put.
        let before: BTreeMap<NaiveDate, Vec<object_store::ObjectMeta>> =
            futures::stream::iter(touched)
                .map(|date| async move {
                    Ok::<_, SyncError>((date, self.lake.list_partition(product, date).await?))
                })
                .buffer_unordered(LISTINGS)
                .try_collect()
                .await?;
        let before_paths: BTreeMap<NaiveDate, Vec<String>> = before
            .iter()
            .map(|(d, objects)| (*d, objects.iter().map(|m| m.location.to_string()).collect()))
            .collect();
        let generations = self
            .state
            .begin_rewrites(product, &arriving, &before_paths)
            .await?;
        let (replaced, merged, before) = (Arc::new(replaced), Arc::new(merged), Arc::new(before));
        let results: Vec<Result<Rewritten, SyncError>> = futures::stream::iter(generations)
            .map(|(date, generation)| {
                let (normalized, replaced, merged, before) = (
                    normalized.clone(),
                    replaced.clone(),
                    merged.clone(),
                    before.clone(),
                );
                async move {
                    let new = load(&normalized, date).await?;
                    let batch = new.as_ref().map(|(b, _)| b);
                    let state = self
                        .lake
                        .rewrite_partition(
                            product,
                            date,
                            &before[&date],
                            generation,
                            &replaced,
                            &merged,
                            batch,
                        )
                        .await?;
                    ObjectsWritten {
                        product,
                        objects: state.objects.len(),
                        bytes: state.bytes,
                    }
                    .emit();
                    crate::failpoint::hit("mid-write");
                    let added = new
                        .map(|(b, dropped)| (b.num_rows() as u64, dropped))
                        .unwrap_or((0, 0));
                    Ok((date, state, added))
                }
            })
            .buffer_unordered(crate::lake::WRITERS)
            .collect()
            .await;
        let mut counts = normalized.counts;
        let mut partitions = Vec::with_capacity(results.len());
        let mut doomed = Vec::new();
        for r in results {
            let (date, state, (added, dropped)) = r?;
            counts.written += added;
            counts.duplicates += dropped;
            doomed.extend(
                before_paths[&date]
                    .iter()
                    .filter(|p| !state.objects.contains(p))
                    .cloned(),
            );
            partitions.push((date, state));
        }
        self.lake
            .write_quarantine(
                product,
                window_key,
                &normalized.quarantine,
                &replaced,
                default_day,
            )
            .await?;
        if !counts.reconciles() {
            return Err(SyncError::Reconcile {
                window: window_key.to_string(),
                counts,
            });
        }
        Ok(Written {
            counts,
            partitions,
            doomed,
        })
    }

    /// The shrink guard: for each closed status day this result replaces and the lake holds
    /// rows of, the rows after de-duplication must not fall by more than `lake.max_shrink`, and
    /// never to none. Only the partitions that hold such days are loaded to count them.
    async fn check_shrink(
        &self,
        product: Product,
        window_key: &str,
        normalized: &Arc<Normalized>,
        replaced: &BTreeSet<NaiveDate>,
    ) -> Result<(), SyncError> {
        let today = Utc::now().date_naive();
        let held = self.state.status_day_rows(product).await?;
        let guarded: BTreeMap<NaiveDate, Option<u64>> = replaced
            .iter()
            .filter(|d| **d < today)
            .filter_map(|d| held.get(d).map(|n| (*d, *n)))
            .filter(|(_, n)| *n != Some(0))
            .collect();
        if guarded.is_empty() {
            return Ok(());
        }
        let mut after: BTreeMap<NaiveDate, u64> = guarded.keys().map(|d| (*d, 0)).collect();
        for (date, p) in &normalized.rows.partitions {
            if p.status_days.iter().any(|d| after.contains_key(d))
                && let Some((batch, _)) = load(normalized, *date).await?
            {
                for (d, n) in crate::lake::status_day_rows(&batch) {
                    if let Some(total) = after.get_mut(&d) {
                        *total += n;
                    }
                }
            }
        }
        let max_shrink = self.settings.lake.max_shrink;
        for (day, before) in guarded {
            let after = after[&day];
            let too_few = match before {
                Some(b) => after == 0 || (b.saturating_sub(after) as f64) > b as f64 * max_shrink,
                None => after == 0,
            };
            if too_few {
                ShrinkRefused {
                    product,
                    window: window_key,
                    day,
                    before,
                    after,
                }
                .emit();
                return Err(SyncError::Shrink {
                    day,
                    before,
                    after,
                    max_shrink,
                });
            }
        }
        Ok(())
    }

    /// `import`: local export files into the lake, replacing the status days they hold. The
    /// files are one job, as the part files of one export are: each part holds some of a day's
    /// rows, so importing them one by one would let each part replace the day the previous one
    /// wrote. An identity in several files keeps its copy from the last file named.
    pub async fn import(
        &self,
        product: Product,
        files: Vec<PathBuf>,
        force: bool,
    ) -> Result<RunReport, SyncError> {
        let run_id = self.state.start_run("import", Some(product)).await?;
        let first = files.first().expect("import needs a file");
        let more = match files.len() {
            1 => String::new(),
            n => format!("+{}", n - 1),
        };
        let key = format!("import-{}{more}", sanitize(first));
        let job_id = format!("import:{}{more}", first.display());
        let result = async {
            let normalized = self.normalize_files(product, &job_id, files).await?;
            let _lake = self.lake_lock.lock().await;
            let written = self
                .write(
                    product,
                    &key,
                    normalized,
                    Replace::DaysAndDelivered(BTreeSet::new()),
                    force,
                )
                .await?;
            let counts = written.counts;
            self.commit(product, &job_id, written, None).await?;
            Ok::<_, SyncError>(counts)
        }
        .await;
        let (counts, error, refused) = match result {
            Ok(c) => (Some(c), None, false),
            Err(e) => (None, Some(e.to_string()), e.refuses_request()),
        };
        let window = WindowReport {
            key,
            job_id: Some(job_id),
            counts,
            error,
            refused,
        };
        let report = RunReport {
            run_id,
            windows: vec![window],
            ..Default::default()
        };
        let error = report.windows[0].error.as_deref();
        self.state
            .finish_run(run_id, report.totals(), error)
            .await?;
        Ok(report)
    }
}

/// A rewritten partition, with the rows this job added to it and the superseded copies left out.
type Rewritten = (NaiveDate, PartitionState, (u64, u64));

/// What a write put in the lake, for its commit.
struct Written {
    counts: Counts,
    partitions: Vec<(NaiveDate, PartitionState)>,
    /// Objects the rewritten partitions no longer use: deleted once the commit names the new ones.
    doomed: Vec<String>,
}

/// Partition listings under way at once before a write: each is a round trip to the store.
const LISTINGS: usize = 8;

/// What a killed (or failed) writer left in the lake of `product`, undone from the state's record:
/// objects of a rewrite that never committed (any object its partition did not have before), the
/// local store's half-written staging files beside them, and objects a committed rewrite replaced
/// whose deletion did not finish. Only partitions with such a record are listed.
pub async fn repair_lake(state: &State, lake: &Lake, product: Product) -> Result<(), SyncError> {
    let rewrites = state.open_rewrites(product).await?;
    let mut orphans = 0;
    if !rewrites.is_empty() {
        orphans += lake.remove_quarantine_staging(product);
    }
    for r in rewrites {
        orphans += lake.remove_staging(product, r.event_date);
        let extra: Vec<String> = lake
            .list_partition(product, r.event_date)
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|p| !r.before.contains(p))
            .collect();
        lake.delete_objects(&extra).await?;
        orphans += extra.len();
        state.end_rewrite(r.id).await?;
    }
    let doomed = state.doomed_objects(product).await?;
    lake.delete_objects(&doomed).await?;
    state.forget_doomed(&doomed).await?;
    LakeRepaired {
        product,
        orphans,
        doomed: doomed.len(),
    }
    .emit();
    Ok(())
}

/// Loading a partition reads spill files: blocking work, off the async threads.
async fn load(
    normalized: &Arc<Normalized>,
    date: NaiveDate,
) -> Result<Option<(RecordBatch, u64)>, SyncError> {
    let n = normalized.clone();
    Ok(tokio::task::spawn_blocking(move || n.load(date))
        .await
        .map_err(|e| SyncError::Task(e.to_string()))??)
}

fn days_between(from: NaiveDate, to: NaiveDate) -> BTreeSet<NaiveDate> {
    from.iter_days().take_while(|d| *d <= to).collect()
}

/// A file name as a quarantine window key: only characters safe in any object store path.
fn sanitize(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Leftovers of a killed process: `.part` files (half-written downloads, never resumed),
/// scratch copies of columnar parts and spill directories, and zips of jobs no window is still working on (one killed
/// between commit and clean-up).
async fn clean_downloads(dir: &Path, state: &State) -> Result<(), SyncError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut live = HashSet::new();
    for product in Product::ALL {
        for w in state.in_flight(product).await? {
            live.extend(w.job_id);
        }
    }
    for e in entries.flatten() {
        let path = e.path();
        let scratch = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(decode::SCRATCH_PREFIX));
        let stale = scratch
            || match path.extension().and_then(|x| x.to_str()) {
                Some("part") => true,
                Some("zip") => path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|job| !live.contains(job)),
                _ => false,
            };
        if stale && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}
