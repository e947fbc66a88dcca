//! The state: SQLite through sqlx, schema in `migrations/`.
//!
//! Writers open it through the writer lease ([`lease`]) and migrate it; readers (`status`, `plan`,
//! `check-config`, `query`) open it read-only, migrate nothing and work beside a running daemon.
//! One connection per writer, so statements never interleave; WAL so readers see the last commit
//! while a sync writes; `synchronous = FULL` because a recorded job id must survive a power cut
//! (a lost id means a second job at the vendor for the same window).

pub mod lease;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

pub use lease::{Holder, LeaseRequest, WriterLease};

use crate::model::{Counts, PartitionState, WindowKind};
use crate::product::Product;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {detail}")]
    Open { path: String, detail: String },
    #[error(
        "another writer holds the state: {holder} holds the writer lease {lock}{}; \
         only one process may write at a time (stop it, or pass --wait DURATION to wait for it)",
        .waited.map(|w| format!(" (waited {})", humantime::format_duration(w))).unwrap_or_default()
    )]
    Busy {
        lock: String,
        holder: String,
        waited: Option<Duration>,
    },
    #[error(
        "state database {path} is at schema version {found}, this dpss-sync reads version {wanted}: {hint}"
    )]
    Version {
        path: String,
        found: i64,
        wanted: i64,
        hint: &'static str,
    },
    #[error("state migration failed: {0}")]
    Migrate(String),
    #[error("state query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state holds an unreadable value: {0}")]
    Corrupt(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Planned,
    Submitted,
    Downloaded,
    Written,
    Committed,
    Failed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Planned => "planned",
            Stage::Submitted => "submitted",
            Stage::Downloaded => "downloaded",
            Stage::Written => "written",
            Stage::Committed => "committed",
            Stage::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Result<Self, StateError> {
        Ok(match s {
            "planned" => Stage::Planned,
            "submitted" => Stage::Submitted,
            "downloaded" => Stage::Downloaded,
            "written" => Stage::Written,
            "committed" => Stage::Committed,
            "failed" => Stage::Failed,
            other => return Err(StateError::Corrupt(format!("stage `{other}`"))),
        })
    }

    /// A vendor job exists for the window and must be resumed, never requested again.
    pub fn has_job(self) -> bool {
        matches!(self, Stage::Submitted | Stage::Downloaded | Stage::Written)
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct WindowRow {
    pub id: i64,
    pub product: String,
    pub key: String,
    pub kind: WindowKind,
    pub from: NaiveDate,
    pub to: NaiveDate,
    pub stage: Stage,
    pub job_id: Option<String>,
    pub attempts: i64,
    pub counts: Option<Counts>,
    pub error: Option<String>,
    pub updated_at: String,
    pub committed_at: Option<String>,
    /// Runs in a row in which the window failed; reset when it commits.
    pub failures: i64,
    /// A failing window is not planned by a cycle before this.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// A partition rewrite begun and not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// Also the generation in the names of the rewrite's objects.
    pub id: i64,
    pub event_date: NaiveDate,
    /// The partition's objects before the rewrite began.
    pub before: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRow {
    pub job_id: String,
    pub window_key: String,
    pub file_type: String,
    pub tokens: String,
    pub status: String,
    pub polls: i64,
    pub created_at: String,
    pub deadline: DateTime<Utc>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct RunRow {
    pub id: i64,
    pub command: String,
    pub product: Option<String>,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub outcome: Option<String>,
    pub windows_committed: i64,
    pub windows_failed: i64,
    pub rows_read: i64,
    pub rows_written: i64,
    pub rows_quarantined: i64,
    pub rows_duplicate: i64,
    pub error: Option<String>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct RunTotals {
    pub committed: i64,
    pub failed: i64,
    pub counts: Counts,
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn day(s: &str) -> Result<NaiveDate, StateError> {
    NaiveDate::from_str(s).map_err(|_| StateError::Corrupt(format!("day `{s}`")))
}

fn day_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn days_text(days: &BTreeSet<NaiveDate>) -> String {
    days.iter()
        .map(|d| day_text(*d))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_days(s: &str) -> Result<BTreeSet<NaiveDate>, StateError> {
    s.split(',').filter(|x| !x.is_empty()).map(day).collect()
}

#[derive(Clone)]
pub struct State {
    pool: SqlitePool,
    path: PathBuf,
    /// Held for as long as any clone of a writer's state lives.
    lease: Option<Arc<WriterLease>>,
    /// A reader of a database that does not exist yet sees an empty state.
    missing: bool,
}

/// The migrations of `migrations/`, embedded so the binary needs no files beside it.
const MIGRATIONS: [(i64, &str, &str); 3] = [
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "run range",
        include_str!("../../migrations/0002_run_range.sql"),
    ),
    (
        3,
        "commit safety",
        include_str!("../../migrations/0003_commit_safety.sql"),
    ),
];

/// How long a reader waits for a writer's migrations to finish.
const MIGRATION_PATIENCE: Duration = Duration::from_secs(10);

async fn migrate(pool: &SqlitePool) -> Result<(), StateError> {
    migrator()
        .run(pool)
        .await
        .map_err(|e| StateError::Migrate(e.to_string()))
}

/// The last migration applied to the database behind `pool`; 0 before the first.
async fn schema_version(pool: &SqlitePool) -> Result<i64, StateError> {
    match sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await
    {
        Ok(v) => Ok(v.unwrap_or(0)),
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The schema version this binary writes and reads.
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    sqlx::migrate::Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                sqlx::migrate::Migration::new(
                    *version,
                    (*description).into(),
                    sqlx::migrate::MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl State {
    /// Takes the writer lease (waiting as `request` says), then opens, creating it owner-only,
    /// and migrates the database at `path`.
    pub async fn open_writer(path: &Path, request: &LeaseRequest) -> Result<Self, StateError> {
        let open_err = |detail: String| StateError::Open {
            path: path.display().to_string(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lease = WriterLease::acquire(path, request).await?;
        create_private(path).map_err(|e| open_err(e.to_string()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            lease: Some(Arc::new(lease)),
            missing: false,
        })
    }

    /// Opens the database at `path` read-only: no lease, no migration, nothing written, so it
    /// works beside a running writer. A database that does not exist yet reads as an empty
    /// state; one at another schema version is refused with what to do about it.
    pub async fn open_reader(path: &Path) -> Result<Self, StateError> {
        let open_err = |detail: String| StateError::Open {
            path: path.display().to_string(),
            detail,
        };
        if !path.exists() {
            return Self::empty(path).await;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        // A writer that holds the lease may be migrating right now, one version at a time:
        // give it a moment before calling the schema old.
        let patience = tokio::time::Instant::now() + MIGRATION_PATIENCE;
        let found = loop {
            let found = schema_version(&pool).await?;
            if found >= SCHEMA_VERSION
                || !lease::is_held(path)
                || tokio::time::Instant::now() >= patience
            {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if found == 0 {
            // A writer created the file a moment ago and has not migrated it yet.
            pool.close().await;
            return Self::empty(path).await;
        }
        if found != SCHEMA_VERSION {
            pool.close().await;
            return Err(StateError::Version {
                path: path.display().to_string(),
                found,
                wanted: SCHEMA_VERSION,
                hint: if found < SCHEMA_VERSION {
                    "it is migrated by the next writer command (run, sync, backfill, import)"
                } else {
                    "it was written by a newer dpss-sync; run that version"
                },
            });
        }
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            lease: None,
            missing: false,
        })
    }

    /// What a reader sees where no writer has made a state yet: an empty one, in memory.
    async fn empty(path: &Path) -> Result<Self, StateError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
            .await
            .map_err(|e| StateError::Open {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            lease: None,
            missing: true,
        })
    }

    /// The lease this state was opened under; `None` for a reader.
    pub fn lease(&self) -> Option<&Holder> {
        self.lease.as_deref().map(WriterLease::holder)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader's database did not exist: nothing has run yet.
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    pub async fn watermark(&self, product: Product) -> Result<Option<NaiveDate>, StateError> {
        let row = sqlx::query("SELECT last_day FROM watermarks WHERE product = ?")
            .bind(product.config_name())
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| day(r.get::<&str, _>(0))).transpose()
    }

    /// Moves the watermark forward only; a lower value is ignored.
    pub async fn advance_watermark(
        &self,
        product: Product,
        to: NaiveDate,
    ) -> Result<(), StateError> {
        sqlx::query(
            "INSERT INTO watermarks (product, last_day, updated_at) VALUES (?, ?, ?)
             ON CONFLICT (product) DO UPDATE SET last_day = excluded.last_day, updated_at = excluded.updated_at
             WHERE excluded.last_day > watermarks.last_day",
        )
        .bind(product.config_name())
        .bind(day_text(to))
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    fn window_from_row(r: &sqlx::sqlite::SqliteRow) -> Result<WindowRow, StateError> {
        let read: Option<i64> = r.get("rows_read");
        let counts = read.map(|read| Counts {
            read: read as u64,
            written: r.get::<Option<i64>, _>("rows_written").unwrap_or(0) as u64,
            quarantined: r.get::<Option<i64>, _>("rows_quarantined").unwrap_or(0) as u64,
            duplicates: r.get::<Option<i64>, _>("rows_duplicate").unwrap_or(0) as u64,
        });
        Ok(WindowRow {
            id: r.get("id"),
            product: r.get("product"),
            key: r.get("window_key"),
            kind: match r.get::<&str, _>("kind") {
                "day" => WindowKind::Day,
                _ => WindowKind::History,
            },
            from: day(r.get("day_from"))?,
            to: day(r.get("day_to"))?,
            stage: Stage::parse(r.get("stage"))?,
            job_id: r.get("job_id"),
            attempts: r.get("attempts"),
            counts,
            error: r.get("error"),
            updated_at: r.get("updated_at"),
            committed_at: r.get("committed_at"),
            failures: r.get("failures"),
            next_attempt_at: r
                .get::<Option<String>, _>("next_attempt_at")
                .map(|t| {
                    DateTime::parse_from_rfc3339(&t)
                        .map(|t| t.with_timezone(&Utc))
                        .map_err(|_| StateError::Corrupt(format!("next attempt `{t}`")))
                })
                .transpose()?,
        })
    }

    /// Records a window as planned, or returns the existing row when a job is already under way
    /// for it (that job is resumed, not replaced).
    pub async fn plan_window(
        &self,
        product: Product,
        key: &str,
        kind: WindowKind,
        from: NaiveDate,
        to: NaiveDate,
        run_id: i64,
    ) -> Result<WindowRow, StateError> {
        let t = now();
        sqlx::query(
            "INSERT INTO windows (product, window_key, kind, day_from, day_to, stage, run_id, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, 'planned', ?, ?, ?)
             ON CONFLICT (product, window_key) DO UPDATE SET
               stage = 'planned', job_id = NULL, error = NULL, run_id = excluded.run_id,
               day_from = excluded.day_from, day_to = excluded.day_to, updated_at = excluded.updated_at
             WHERE windows.stage IN ('committed', 'failed', 'planned')",
        )
        .bind(product.config_name())
        .bind(key)
        .bind(match kind {
            WindowKind::Day => "day",
            WindowKind::History => "history",
        })
        .bind(day_text(from))
        .bind(day_text(to))
        .bind(run_id)
        .bind(&t)
        .bind(&t)
        .execute(&self.pool)
        .await?;
        self.window(product, key)
            .await?
            .ok_or_else(|| StateError::Corrupt(format!("window {key} vanished")))
    }

    pub async fn window(
        &self,
        product: Product,
        key: &str,
    ) -> Result<Option<WindowRow>, StateError> {
        sqlx::query("SELECT * FROM windows WHERE product = ? AND window_key = ?")
            .bind(product.config_name())
            .bind(key)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| Self::window_from_row(&r))
            .transpose()
    }

    pub async fn windows(&self, product: Product) -> Result<Vec<WindowRow>, StateError> {
        sqlx::query("SELECT * FROM windows WHERE product = ? ORDER BY day_from, window_key")
            .bind(product.config_name())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(Self::window_from_row)
            .collect()
    }

    /// Windows whose vendor job was recorded but not yet committed: resumed before anything new.
    pub async fn in_flight(&self, product: Product) -> Result<Vec<WindowRow>, StateError> {
        Ok(self
            .windows(product)
            .await?
            .into_iter()
            .filter(|w| w.stage.has_job())
            .collect())
    }

    /// Stores the job id the moment the vendor returns it, in the same transaction as the stage.
    pub async fn mark_submitted(
        &self,
        window: &WindowRow,
        job_id: &str,
        file_type: &str,
        tokens: &str,
        deadline: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        let t = now();
        sqlx::query(
            "INSERT INTO jobs (job_id, product, window_key, file_type, tokens, status, created_at, deadline)
             VALUES (?, ?, ?, ?, ?, 'New', ?, ?)",
        )
        .bind(job_id)
        .bind(&window.product)
        .bind(&window.key)
        .bind(file_type)
        .bind(tokens)
        .bind(&t)
        .bind(deadline.to_rfc3339())
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE windows SET stage = 'submitted', job_id = ?, attempts = attempts + 1, error = NULL, updated_at = ? WHERE id = ?",
        )
        .bind(job_id)
        .bind(&t)
        .bind(window.id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobRow>, StateError> {
        let Some(r) = sqlx::query("SELECT * FROM jobs WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some(JobRow {
            job_id: r.get("job_id"),
            window_key: r.get("window_key"),
            file_type: r.get("file_type"),
            tokens: r.get("tokens"),
            status: r.get("status"),
            polls: r.get("polls"),
            created_at: r.get("created_at"),
            deadline: DateTime::parse_from_rfc3339(r.get("deadline"))
                .map_err(|_| StateError::Corrupt("job deadline".into()))?
                .with_timezone(&Utc),
        }))
    }

    /// Every job recorded for a window (tests prove no window was submitted twice).
    pub async fn jobs_for_window(
        &self,
        product: Product,
        key: &str,
    ) -> Result<Vec<String>, StateError> {
        Ok(sqlx::query(
            "SELECT job_id FROM jobs WHERE product = ? AND window_key = ? ORDER BY created_at",
        )
        .bind(product.config_name())
        .bind(key)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
    }

    pub async fn record_poll(
        &self,
        job_id: &str,
        status: &str,
        error: Option<&str>,
        finished: bool,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE jobs SET status = ?, polls = polls + 1, error = COALESCE(?, error),
               finished_at = CASE WHEN ? THEN ? ELSE finished_at END WHERE job_id = ?",
        )
        .bind(status)
        .bind(error)
        .bind(finished)
        .bind(now())
        .bind(job_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn set_stage(
        &self,
        window_id: i64,
        stage: Stage,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        sqlx::query("UPDATE windows SET stage = ?, error = ?, updated_at = ? WHERE id = ?")
            .bind(stage.as_str())
            .bind(error)
            .bind(now())
            .bind(window_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// What the state believes each partition holds: event_date -> status days (a superset).
    pub async fn partition_days(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, BTreeSet<NaiveDate>>, StateError> {
        let rows = sqlx::query("SELECT event_date, status_days FROM partitions WHERE product = ?")
            .bind(product.config_name())
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((day(r.get(0))?, parse_days(r.get(1))?)))
            .collect()
    }

    /// Rows the lake holds per status day, summed over partitions; `None` for a day some
    /// partition holds rows of without a count (written before counts were kept).
    pub async fn status_day_rows(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, Option<u64>>, StateError> {
        let rows = sqlx::query(
            "SELECT status_days, day_rows FROM partitions WHERE product = ? AND rows > 0",
        )
        .bind(product.config_name())
        .fetch_all(&self.pool)
        .await?;
        let mut out: BTreeMap<NaiveDate, Option<u64>> = BTreeMap::new();
        for r in rows {
            let counts: Option<BTreeMap<NaiveDate, u64>> = r
                .get::<Option<String>, _>(1)
                .map(|t| {
                    serde_json::from_str(&t)
                        .map_err(|e| StateError::Corrupt(format!("partition day_rows: {e}")))
                })
                .transpose()?;
            match counts {
                Some(counts) => {
                    for (d, n) in counts {
                        let total = out.entry(d).or_insert(Some(0));
                        *total = total.map(|t| t + n);
                    }
                }
                None => {
                    for d in parse_days(r.get(0))? {
                        out.insert(d, None);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Before partitions are rewritten, in one transaction: each one's day set grows to include
    /// the days about to land (a superset until the commit trims it, which is all a crash in
    /// between needs), and each rewrite is recorded with the objects its partition has now, so
    /// a crash before the commit can be repaired. Returns each rewrite's generation.
    pub async fn begin_rewrites(
        &self,
        product: Product,
        additions: &BTreeMap<NaiveDate, BTreeSet<NaiveDate>>,
        before: &BTreeMap<NaiveDate, Vec<String>>,
    ) -> Result<BTreeMap<NaiveDate, i64>, StateError> {
        let mut known = self.partition_days(product).await?;
        let t = now();
        let mut tx = self.pool.begin().await?;
        for (event_date, days) in additions {
            let mut all = known.remove(event_date).unwrap_or_default();
            all.extend(days.iter().copied());
            sqlx::query(
                "INSERT INTO partitions (product, event_date, status_days, objects, rows, bytes, updated_at)
                 VALUES (?, ?, ?, '[]', 0, 0, ?)
                 ON CONFLICT (product, event_date) DO UPDATE SET status_days = excluded.status_days, updated_at = excluded.updated_at",
            )
            .bind(product.config_name())
            .bind(day_text(*event_date))
            .bind(days_text(&all))
            .bind(&t)
            .execute(&mut *tx)
            .await?;
        }
        let mut generations = BTreeMap::new();
        for (event_date, objects) in before {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO rewrites (product, event_date, before, started_at) VALUES (?, ?, ?, ?)
                 RETURNING id",
            )
            .bind(product.config_name())
            .bind(day_text(*event_date))
            .bind(serde_json::to_string(objects).expect("strings serialize"))
            .bind(&t)
            .fetch_one(&mut *tx)
            .await?;
            generations.insert(*event_date, id);
        }
        tx.commit().await?;
        Ok(generations)
    }

    /// Rewrites begun and not committed: what a crash (or a failed write) left.
    pub async fn open_rewrites(&self, product: Product) -> Result<Vec<Rewrite>, StateError> {
        sqlx::query("SELECT id, event_date, before FROM rewrites WHERE product = ? ORDER BY id")
            .bind(product.config_name())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok(Rewrite {
                    id: r.get(0),
                    event_date: day(r.get(1))?,
                    before: serde_json::from_str(r.get(2))
                        .map_err(|e| StateError::Corrupt(format!("rewrite objects: {e}")))?,
                })
            })
            .collect()
    }

    /// A repaired rewrite is forgotten.
    pub async fn end_rewrite(&self, id: i64) -> Result<(), StateError> {
        sqlx::query("DELETE FROM rewrites WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Objects committed rewrites replaced and that are not yet known deleted.
    pub async fn doomed_objects(&self, product: Product) -> Result<Vec<String>, StateError> {
        Ok(
            sqlx::query_scalar("SELECT path FROM doomed_objects WHERE product = ? ORDER BY path")
                .bind(product.config_name())
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Doomed objects that are gone now.
    pub async fn forget_doomed(&self, paths: &[String]) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        for p in paths {
            sqlx::query("DELETE FROM doomed_objects WHERE path = ?")
                .bind(p)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The commit of a write, in one transaction: exactly what each rewritten partition now
    /// holds (or nothing), its rewrite closed, the objects it replaced marked for deletion, and
    /// the window (if any) committed with its counts. A crash before it leaves the previous
    /// record whole; after it, the new one.
    pub async fn commit_partitions(
        &self,
        product: Product,
        written: &[(NaiveDate, PartitionState)],
        doomed: &[String],
        job_id: &str,
        window: Option<(i64, Counts)>,
    ) -> Result<(), StateError> {
        let t = now();
        let mut tx = self.pool.begin().await?;
        for (event_date, p) in written {
            sqlx::query("DELETE FROM rewrites WHERE product = ? AND event_date = ?")
                .bind(product.config_name())
                .bind(day_text(*event_date))
                .execute(&mut *tx)
                .await?;
            if p.rows == 0 {
                sqlx::query("DELETE FROM partitions WHERE product = ? AND event_date = ?")
                    .bind(product.config_name())
                    .bind(day_text(*event_date))
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            let day_rows: BTreeMap<String, u64> =
                p.day_rows.iter().map(|(d, n)| (day_text(*d), *n)).collect();
            sqlx::query(
                "INSERT INTO partitions (product, event_date, status_days, objects, rows, bytes, job_id, updated_at, day_rows)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (product, event_date) DO UPDATE SET status_days = excluded.status_days,
                   objects = excluded.objects, rows = excluded.rows, bytes = excluded.bytes,
                   job_id = excluded.job_id, updated_at = excluded.updated_at, day_rows = excluded.day_rows",
            )
            .bind(product.config_name())
            .bind(day_text(*event_date))
            .bind(days_text(&p.status_days()))
            .bind(serde_json::to_string(&p.objects).expect("strings serialize"))
            .bind(p.rows as i64)
            .bind(p.bytes as i64)
            .bind(job_id)
            .bind(&t)
            .bind(serde_json::to_string(&day_rows).expect("a map serializes"))
            .execute(&mut *tx)
            .await?;
        }
        for path in doomed {
            sqlx::query(
                "INSERT INTO doomed_objects (path, product, decided_at) VALUES (?, ?, ?)
                 ON CONFLICT (path) DO NOTHING",
            )
            .bind(path)
            .bind(product.config_name())
            .bind(&t)
            .execute(&mut *tx)
            .await?;
        }
        if let Some((window_id, c)) = window {
            sqlx::query(
                "UPDATE windows SET stage = 'committed', rows_read = ?, rows_written = ?, rows_quarantined = ?,
                   rows_duplicate = ?, error = NULL, failures = 0, next_attempt_at = NULL,
                   committed_at = ?, updated_at = ? WHERE id = ?",
            )
            .bind(c.read as i64)
            .bind(c.written as i64)
            .bind(c.quarantined as i64)
            .bind(c.duplicates as i64)
            .bind(&t)
            .bind(&t)
            .bind(window_id)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// A run in which the window failed: counted, and the next cycle waits until `retry_at`.
    pub async fn record_failure(
        &self,
        window_id: i64,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE windows SET failures = failures + 1, next_attempt_at = ?, updated_at = ? WHERE id = ?",
        )
        .bind(retry_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
        .bind(now())
        .bind(window_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Days whose committed window committed after the day had closed: their data is final
    /// unless late updates come, which the lookback re-syncs.
    pub async fn days_final(&self, product: Product) -> Result<BTreeSet<NaiveDate>, StateError> {
        let mut out = BTreeSet::new();
        for w in self.windows(product).await? {
            let Some(at) = w.committed_at.as_deref() else {
                continue;
            };
            if w.stage != Stage::Committed {
                continue;
            }
            let at = DateTime::parse_from_rfc3339(at)
                .map_err(|_| StateError::Corrupt(format!("commit time `{at}`")))?
                .with_timezone(&Utc)
                .date_naive();
            out.extend(w.from.iter_days().take_while(|d| *d <= w.to && *d < at));
        }
        Ok(out)
    }

    /// When a window of `product` last committed.
    pub async fn last_commit(&self, product: Product) -> Result<Option<DateTime<Utc>>, StateError> {
        let at: Option<String> =
            sqlx::query_scalar("SELECT MAX(committed_at) FROM windows WHERE product = ?")
                .bind(product.config_name())
                .fetch_one(&self.pool)
                .await?;
        at.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| StateError::Corrupt(format!("commit time `{t}`")))
        })
        .transpose()
    }

    /// The objects the state records for each partition (the manifest readers may trust).
    pub async fn partition_objects(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, Vec<String>>, StateError> {
        sqlx::query("SELECT event_date, objects FROM partitions WHERE product = ? AND rows > 0")
            .bind(product.config_name())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|r| {
                Ok((
                    day(r.get(0))?,
                    serde_json::from_str(r.get(1))
                        .map_err(|e| StateError::Corrupt(format!("partition objects: {e}")))?,
                ))
            })
            .collect()
    }

    /// Days committed for a product: every day of a committed window.
    pub async fn committed_days(
        &self,
        product: Product,
    ) -> Result<BTreeSet<NaiveDate>, StateError> {
        let mut out = BTreeSet::new();
        for w in self.windows(product).await? {
            if w.stage == Stage::Committed {
                let mut d = w.from;
                while d <= w.to {
                    out.insert(d);
                    d = d.succ_opt().expect("in range");
                }
            }
        }
        Ok(out)
    }

    pub async fn start_run(
        &self,
        command: &str,
        product: Option<Product>,
    ) -> Result<i64, StateError> {
        self.start_run_for(command, product, None).await
    }

    /// A run with the day range it was asked for (a backfill's `--from`/`--to`).
    pub async fn start_run_for(
        &self,
        command: &str,
        product: Option<Product>,
        range: Option<(NaiveDate, NaiveDate)>,
    ) -> Result<i64, StateError> {
        let r = sqlx::query("INSERT INTO runs (command, product, started_at, day_from, day_to) VALUES (?, ?, ?, ?, ?)")
            .bind(command)
            .bind(product.map(|p| p.config_name()))
            .bind(now())
            .bind(range.map(|r| day_text(r.0)))
            .bind(range.map(|r| day_text(r.1)))
            .execute(&self.pool)
            .await?;
        Ok(r.last_insert_rowid())
    }

    /// When the same command over the same range was interrupted (killed before it finished),
    /// possibly several times in a row, or (with `recent`) finished that recently: the start of
    /// the first of those runs. Windows committed since then need not be requested again by a
    /// run that resumes them; a run killed just after it finished is resumed like any other.
    pub async fn interrupted_since(
        &self,
        command: &str,
        product: Product,
        range: Option<(NaiveDate, NaiveDate)>,
        recent: Option<std::time::Duration>,
    ) -> Result<Option<String>, StateError> {
        let rows = sqlx::query(
            "SELECT command, day_from, day_to, finished_at, started_at FROM runs WHERE product = ? ORDER BY id DESC LIMIT 1000",
        )
        .bind(product.config_name())
        .fetch_all(&self.pool)
        .await?;
        let want = (range.map(|r| day_text(r.0)), range.map(|r| day_text(r.1)));
        let cutoff = recent.map(|d| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
        let mut since = None;
        for r in rows {
            let same = r.get::<&str, _>(0) == command
                && (r.get::<Option<String>, _>(1), r.get::<Option<String>, _>(2)) == want;
            let finished: Option<String> = r.get(3);
            let resumable = match finished.as_deref() {
                None => true,
                Some(at) => cutoff.is_some_and(|c| {
                    DateTime::parse_from_rfc3339(at).is_ok_and(|t| t.with_timezone(&Utc) >= c)
                }),
            };
            if !same || !resumable {
                break;
            }
            since = Some(r.get::<String, _>(4));
        }
        Ok(since)
    }

    pub async fn finish_run(
        &self,
        id: i64,
        totals: RunTotals,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        let outcome = if error.is_none() && totals.failed == 0 {
            "ok"
        } else {
            "failed"
        };
        sqlx::query(
            "UPDATE runs SET finished_at = ?, outcome = ?, windows_committed = ?, windows_failed = ?,
               rows_read = ?, rows_written = ?, rows_quarantined = ?, rows_duplicate = ?, error = ? WHERE id = ?",
        )
        .bind(now())
        .bind(outcome)
        .bind(totals.committed)
        .bind(totals.failed)
        .bind(totals.counts.read as i64)
        .bind(totals.counts.written as i64)
        .bind(totals.counts.quarantined as i64)
        .bind(totals.counts.duplicates as i64)
        .bind(error)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>, StateError> {
        let rows = sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT ?")
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows
            .iter()
            .map(|r| RunRow {
                id: r.get("id"),
                command: r.get("command"),
                product: r.get("product"),
                started_at: r.get("started_at"),
                finished_at: r.get("finished_at"),
                outcome: r.get("outcome"),
                windows_committed: r.get("windows_committed"),
                windows_failed: r.get("windows_failed"),
                rows_read: r.get("rows_read"),
                rows_written: r.get("rows_written"),
                rows_quarantined: r.get("rows_quarantined"),
                rows_duplicate: r.get("rows_duplicate"),
                error: r.get("error"),
            })
            .collect())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the database file with mode 0600 before SQLite does, so the state is never readable
/// by other users, even for an instant.
fn create_private(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    async fn writer(path: &Path) -> State {
        State::open_writer(path, &LeaseRequest::new("test", None))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn window_lifecycle_and_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/state.db");
        let st = writer(&path).await;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let p = Product::HidWorkOrders;
        let run = st.start_run("sync", Some(p)).await.unwrap();
        let w = st
            .plan_window(
                p,
                "2026-01-02",
                WindowKind::Day,
                d("2026-01-02"),
                d("2026-01-02"),
                run,
            )
            .await
            .unwrap();
        assert_eq!(w.stage, Stage::Planned);
        st.mark_submitted(&w, "job-1", "csv", "{}", Utc::now())
            .await
            .unwrap();
        // Planning again while a job is recorded keeps the job.
        let again = st
            .plan_window(
                p,
                "2026-01-02",
                WindowKind::Day,
                d("2026-01-02"),
                d("2026-01-02"),
                run,
            )
            .await
            .unwrap();
        assert_eq!(again.stage, Stage::Submitted);
        assert_eq!(again.job_id.as_deref(), Some("job-1"));
        assert_eq!(st.in_flight(p).await.unwrap().len(), 1);
        let counts = Counts {
            read: 3,
            written: 2,
            quarantined: 1,
            duplicates: 0,
        };
        st.commit_partitions(p, &[], &[], "job-1", Some((w.id, counts)))
            .await
            .unwrap();
        let done = st.window(p, "2026-01-02").await.unwrap().unwrap();
        assert_eq!(done.stage, Stage::Committed);
        assert_eq!(done.counts.unwrap().written, 2);
        assert!(
            st.committed_days(p)
                .await
                .unwrap()
                .contains(&d("2026-01-02"))
        );
        st.advance_watermark(p, d("2026-01-02")).await.unwrap();
        st.advance_watermark(p, d("2026-01-01")).await.unwrap();
        assert_eq!(st.watermark(p).await.unwrap(), Some(d("2026-01-02")));
        // Re-planning a committed window starts a new attempt.
        let next = st
            .plan_window(
                p,
                "2026-01-02",
                WindowKind::Day,
                d("2026-01-02"),
                d("2026-01-02"),
                run,
            )
            .await
            .unwrap();
        assert_eq!(next.stage, Stage::Planned);
        assert_eq!(next.attempts, 1);
        st.finish_run(run, RunTotals::default(), None)
            .await
            .unwrap();
        assert_eq!(
            st.recent_runs(5).await.unwrap()[0].outcome.as_deref(),
            Some("ok")
        );
        // Reopening applies no migration twice.
        st.close().await;
        drop(st);
        let st = writer(&path).await;
        assert_eq!(
            st.jobs_for_window(p, "2026-01-02").await.unwrap(),
            vec!["job-1"]
        );
    }

    #[tokio::test]
    async fn readers_open_read_only_beside_the_writer_and_never_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // No database yet: an empty state, and no file is created.
        let r = State::open_reader(&path).await.unwrap();
        assert!(r.is_missing() && r.watermark(Product::HidWorkOrders).await.unwrap().is_none());
        assert!(!path.exists());
        let w = writer(&path).await;
        w.advance_watermark(Product::HidWorkOrders, d("2026-01-02"))
            .await
            .unwrap();
        let r = State::open_reader(&path).await.unwrap();
        assert!(r.lease().is_none() && w.lease().is_some());
        assert_eq!(
            r.watermark(Product::HidWorkOrders).await.unwrap(),
            Some(d("2026-01-02"))
        );
        let refused = r
            .advance_watermark(Product::HidWorkOrders, d("2026-01-03"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        // A database at another schema version is named, not migrated.
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 3")
            .execute(&w.pool)
            .await
            .unwrap();
        let err = State::open_reader(&path).await.err().unwrap();
        assert!(
            err.to_string().contains("schema version 2")
                && err.to_string().contains("next writer command"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_rewrite_is_recorded_before_and_closed_by_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let st = writer(&dir.path().join("state.db")).await;
        let p = Product::HidWorkOrders;
        let part = d("2026-01-01");
        let add = |day: &str| BTreeMap::from([(part, BTreeSet::from([d(day)]))]);
        let before = BTreeMap::from([(part, vec!["t/old-0".to_string(), "t/old-1".into()])]);
        st.begin_rewrites(p, &add("2026-01-02"), &before)
            .await
            .unwrap();
        let crashed = st.open_rewrites(p).await.unwrap();
        assert_eq!(crashed.len(), 1);
        assert_eq!(crashed[0].before, before[&part]);
        st.end_rewrite(crashed[0].id).await.unwrap();
        // A day count is unknown until a commit records it.
        assert_eq!(
            st.status_day_rows(p).await.unwrap().get(&d("2026-01-02")),
            None
        );
        let generations = st
            .begin_rewrites(p, &add("2026-01-03"), &before)
            .await
            .unwrap();
        assert!(
            generations[&part] > crashed[0].id,
            "generations never repeat"
        );
        assert_eq!(st.partition_days(p).await.unwrap()[&part].len(), 2);
        let state = PartitionState {
            day_rows: BTreeMap::from([(d("2026-01-03"), 5)]),
            rows: 5,
            objects: vec!["t/new-0".into()],
            bytes: 10,
        };
        st.commit_partitions(p, &[(part, state)], &before[&part], "j", None)
            .await
            .unwrap();
        assert!(st.open_rewrites(p).await.unwrap().is_empty());
        assert_eq!(
            st.partition_days(p).await.unwrap()[&part],
            BTreeSet::from([d("2026-01-03")])
        );
        assert_eq!(
            st.status_day_rows(p).await.unwrap(),
            BTreeMap::from([(d("2026-01-03"), Some(5))])
        );
        assert_eq!(st.doomed_objects(p).await.unwrap(), before[&part]);
        st.forget_doomed(&before[&part]).await.unwrap();
        assert!(st.doomed_objects(p).await.unwrap().is_empty());
    }
}
