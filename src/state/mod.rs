//! The state: SQLite through sqlx, schema in `migrations/`, applied at open.
//!
//! One connection, so there is one writer and statements never interleave; WAL so `status` can
//! read while a sync writes; `synchronous = FULL` because a recorded job id must survive a power
//! cut (a lost id means a second job at the vendor for the same window).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{Row, SqlitePool};

use crate::normalize::Counts;
use crate::product::Product;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {detail}")]
    Open { path: String, detail: String },
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WindowKind {
    Day,
    History,
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
}

/// The migrations of `migrations/`, embedded so the binary needs no files beside it.
const MIGRATIONS: [(i64, &str, &str); 2] = [
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
];

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
    /// Opens (creating, owner-only) and migrates the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StateError> {
        let open_err = |detail: String| StateError::Open {
            path: path.display().to_string(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        create_private(path).map_err(|e| open_err(e.to_string()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(std::time::Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        migrator()
            .run(&pool)
            .await
            .map_err(|e| StateError::Migrate(e.to_string()))?;
        Ok(Self { pool })
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

    /// Before partitions are rewritten: each one's day set grows to include the days about to
    /// land. One transaction for all of them: a commit is an fsync, and a history load touches
    /// some 400 partitions.
    pub async fn add_partition_days(
        &self,
        product: Product,
        additions: &BTreeMap<NaiveDate, BTreeSet<NaiveDate>>,
    ) -> Result<(), StateError> {
        let mut known = self.partition_days(product).await?;
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
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// After partitions were rewritten: exactly what each now holds (or nothing), in one
    /// transaction. Until it commits the day sets recorded before the rewrite stay, a superset,
    /// which is all a crash in between needs.
    pub async fn set_partitions(
        &self,
        product: Product,
        written: &[(NaiveDate, crate::lake::PartitionState)],
        job_id: &str,
    ) -> Result<(), StateError> {
        let mut tx = self.pool.begin().await?;
        for (event_date, p) in written {
            if p.rows == 0 {
                sqlx::query("DELETE FROM partitions WHERE product = ? AND event_date = ?")
                    .bind(product.config_name())
                    .bind(day_text(*event_date))
                    .execute(&mut *tx)
                    .await?;
                continue;
            }
            sqlx::query(
                "INSERT INTO partitions (product, event_date, status_days, objects, rows, bytes, job_id, updated_at)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)
                 ON CONFLICT (product, event_date) DO UPDATE SET status_days = excluded.status_days,
                   objects = excluded.objects, rows = excluded.rows, bytes = excluded.bytes,
                   job_id = excluded.job_id, updated_at = excluded.updated_at",
            )
            .bind(product.config_name())
            .bind(day_text(*event_date))
            .bind(days_text(&p.status_days))
            .bind(serde_json::to_string(&p.objects).expect("strings serialize"))
            .bind(p.rows as i64)
            .bind(p.bytes as i64)
            .bind(job_id)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn mark_written(&self, window_id: i64, c: Counts) -> Result<(), StateError> {
        sqlx::query(
            "UPDATE windows SET stage = 'written', rows_read = ?, rows_written = ?, rows_quarantined = ?,
               rows_duplicate = ?, updated_at = ? WHERE id = ?",
        )
        .bind(c.read as i64)
        .bind(c.written as i64)
        .bind(c.quarantined as i64)
        .bind(c.duplicates as i64)
        .bind(now())
        .bind(window_id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn mark_committed(&self, window_id: i64) -> Result<(), StateError> {
        let t = now();
        sqlx::query("UPDATE windows SET stage = 'committed', error = NULL, committed_at = ?, updated_at = ? WHERE id = ?")
            .bind(&t)
            .bind(&t)
            .bind(window_id)
            .execute(&self.pool)
            .await?;
        Ok(())
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

    #[tokio::test]
    async fn window_lifecycle_and_watermark() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/state.db");
        let st = State::open(&path).await.unwrap();
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
        st.mark_written(
            w.id,
            Counts {
                read: 3,
                written: 2,
                quarantined: 1,
                duplicates: 0,
            },
        )
        .await
        .unwrap();
        st.mark_committed(w.id).await.unwrap();
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
        let st = State::open(&path).await.unwrap();
        assert_eq!(
            st.jobs_for_window(p, "2026-01-02").await.unwrap(),
            vec!["job-1"]
        );
    }

    #[tokio::test]
    async fn partition_days_grow_before_and_shrink_after() {
        let dir = tempfile::tempdir().unwrap();
        let st = State::open(&dir.path().join("state.db")).await.unwrap();
        let p = Product::HidWorkOrders;
        let add = |day: &str| BTreeMap::from([(d("2026-01-01"), BTreeSet::from([d(day)]))]);
        st.add_partition_days(p, &add("2026-01-02")).await.unwrap();
        st.add_partition_days(p, &add("2026-01-03")).await.unwrap();
        assert_eq!(
            st.partition_days(p).await.unwrap()[&d("2026-01-01")].len(),
            2
        );
        let state = crate::lake::PartitionState {
            status_days: BTreeSet::from([d("2026-01-03")]),
            rows: 5,
            objects: vec!["x".into()],
            bytes: 10,
        };
        st.set_partitions(p, &[(d("2026-01-01"), state)], "j")
            .await
            .unwrap();
        assert_eq!(
            st.partition_days(p).await.unwrap()[&d("2026-01-01")],
            BTreeSet::from([d("2026-01-03")])
        );
    }
}
