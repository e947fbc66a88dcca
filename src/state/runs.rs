//! The runs table: one row per command that wrote, with its totals and outcome, so a killed run
//! is recognised and resumed and `status` can show the recent history.

use super::{Fields, State, StateError, day_text, in_tx, now, on_db};
use crate::model::Counts;
use crate::product::Product;
use chrono::{DateTime, NaiveDate, Utc};

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
        Ok(in_tx!(self, |tx| {
            sqlx::query_scalar("INSERT INTO runs (command, product, started_at, day_from, day_to) VALUES ($1, $2, $3, $4, $5) RETURNING id")
                .bind(command)
                .bind(product.map(|p| p.config_name()))
                .bind(now())
                .bind(range.map(|r| day_text(r.0)))
                .bind(range.map(|r| day_text(r.1)))
                .fetch_one(&mut *tx)
                .await?
        }))
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
        type Run = (
            String,
            Option<String>,
            Option<String>,
            Option<String>,
            String,
        );
        let rows: Vec<Run> = on_db!(self, |pool| {
            sqlx::query(
                "SELECT command, day_from, day_to, finished_at, started_at FROM runs WHERE product = $1 ORDER BY id DESC LIMIT 1000",
            )
            .bind(product.config_name())
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| Ok((r.col(0)?, r.col(1)?, r.col(2)?, r.col(3)?, r.col(4)?)))
            .collect::<Result<_, StateError>>()?
        });
        let want = (range.map(|r| day_text(r.0)), range.map(|r| day_text(r.1)));
        let cutoff = recent.map(|d| Utc::now() - chrono::Duration::from_std(d).unwrap_or_default());
        let mut since = None;
        for (run_command, from, to, finished, started) in rows {
            let same = run_command == command && (from, to) == want;
            let resumable = match finished.as_deref() {
                None => true,
                Some(at) => cutoff.is_some_and(|c| {
                    DateTime::parse_from_rfc3339(at).is_ok_and(|t| t.with_timezone(&Utc) >= c)
                }),
            };
            if !same || !resumable {
                break;
            }
            since = Some(started);
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
        in_tx!(self, |tx| {
            sqlx::query(
                "UPDATE runs SET finished_at = $1, outcome = $2, windows_committed = $3, windows_failed = $4,
                   rows_read = $5, rows_written = $6, rows_quarantined = $7, rows_duplicate = $8, error = $9 WHERE id = $10",
            )
            .bind(now())
            .bind(outcome)
            .bind(totals.committed)
            .bind(totals.failed)
            .bind(totals.counts.read as i64)
            .bind(totals.counts.written as i64)
            .bind(totals.counts.quarantined as i64)
            .bind(totals.counts.duplicates as i64)
            .bind(error.map(crate::model::cut))
            .bind(id)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    pub async fn recent_runs(&self, limit: i64) -> Result<Vec<RunRow>, StateError> {
        on_db!(self, |pool| {
            let rows = sqlx::query("SELECT * FROM runs ORDER BY id DESC LIMIT $1")
                .bind(limit)
                .fetch_all(pool)
                .await?;
            rows.iter().map(Self::run_from_row).collect()
        })
    }

    fn run_from_row(r: &impl Fields) -> Result<RunRow, StateError> {
        Ok(RunRow {
            id: r.col("id")?,
            command: r.col("command")?,
            product: r.col("product")?,
            started_at: r.col("started_at")?,
            finished_at: r.col("finished_at")?,
            outcome: r.col("outcome")?,
            windows_committed: r.col("windows_committed")?,
            windows_failed: r.col("windows_failed")?,
            rows_read: r.col("rows_read")?,
            rows_written: r.col("rows_written")?,
            rows_quarantined: r.col("rows_quarantined")?,
            rows_duplicate: r.col("rows_duplicate")?,
            error: r
                .col::<Option<String>>("error")?
                .map(|e| crate::model::cut(&e).into_owned()),
        })
    }
}
