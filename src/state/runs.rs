//! The runs table: one row per command that wrote, with its totals and outcome, so a killed run
//! is recognised and resumed and `status` can show the recent history.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::Row;

use super::{State, StateError, day_text, now};
use crate::model::Counts;
use crate::product::Product;

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

impl State {
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
            let same = r.try_get::<&str, _>(0)? == command
                && (
                    r.try_get::<Option<String>, _>(1)?,
                    r.try_get::<Option<String>, _>(2)?,
                ) == want;
            let finished: Option<String> = r.try_get(3)?;
            let resumable = match finished.as_deref() {
                None => true,
                Some(at) => cutoff.is_some_and(|c| {
                    DateTime::parse_from_rfc3339(at).is_ok_and(|t| t.with_timezone(&Utc) >= c)
                }),
            };
            if !same || !resumable {
                break;
            }
            since = Some(r.try_get::<String, _>(4)?);
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
        rows.iter()
            .map(|r| {
                Ok(RunRow {
                    id: r.try_get("id")?,
                    command: r.try_get("command")?,
                    product: r.try_get("product")?,
                    started_at: r.try_get("started_at")?,
                    finished_at: r.try_get("finished_at")?,
                    outcome: r.try_get("outcome")?,
                    windows_committed: r.try_get("windows_committed")?,
                    windows_failed: r.try_get("windows_failed")?,
                    rows_read: r.try_get("rows_read")?,
                    rows_written: r.try_get("rows_written")?,
                    rows_quarantined: r.try_get("rows_quarantined")?,
                    rows_duplicate: r.try_get("rows_duplicate")?,
                    error: r.try_get("error")?,
                })
            })
            .collect()
    }
}
