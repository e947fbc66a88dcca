//! The jobs table: every vendor job a window submitted, recorded before anything waits on it,
//! so a killed process resumes the job instead of requesting a second one.

use super::{Fields, State, StateError, WindowRow, in_tx, now, on_db};
use crate::product::Product;
use chrono::{DateTime, Utc};

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

impl State {
    /// Stores the job id the moment the vendor returns it, in the same transaction as the stage.
    pub async fn mark_submitted(
        &self,
        window: &WindowRow,
        job_id: &str,
        file_type: &str,
        tokens: &str,
        deadline: DateTime<Utc>,
    ) -> Result<(), StateError> {
        let t = now();
        in_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO jobs (job_id, product, window_key, file_type, tokens, status, created_at, deadline)
                 VALUES ($1, $2, $3, $4, $5, 'New', $6, $7)",
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
                "UPDATE windows SET stage = 'submitted', job_id = $1, attempts = attempts + 1, error = NULL, updated_at = $2 WHERE id = $3",
            )
            .bind(job_id)
            .bind(&t)
            .bind(window.id)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    pub async fn job(&self, job_id: &str) -> Result<Option<JobRow>, StateError> {
        on_db!(self, |pool| {
            sqlx::query("SELECT * FROM jobs WHERE job_id = $1")
                .bind(job_id)
                .fetch_optional(pool)
                .await?
                .map(|r| Self::job_from_row(&r))
                .transpose()
        })
    }

    fn job_from_row(r: &impl Fields) -> Result<JobRow, StateError> {
        Ok(JobRow {
            job_id: r.col("job_id")?,
            window_key: r.col("window_key")?,
            file_type: r.col("file_type")?,
            tokens: r.col("tokens")?,
            status: r.col("status")?,
            polls: r.col("polls")?,
            created_at: r.col("created_at")?,
            deadline: DateTime::parse_from_rfc3339(&r.col::<String>("deadline")?)
                .map_err(|_| StateError::Corrupt("job deadline".into()))?
                .with_timezone(&Utc),
        })
    }

    /// Every job recorded for a window (tests prove no window was submitted twice).
    pub async fn jobs_for_window(
        &self,
        product: Product,
        key: &str,
    ) -> Result<Vec<String>, StateError> {
        Ok(on_db!(self, |pool| {
            sqlx::query_scalar(
                "SELECT job_id FROM jobs WHERE product = $1 AND window_key = $2 ORDER BY created_at",
            )
            .bind(product.config_name())
            .bind(key)
            .fetch_all(pool)
            .await?
        }))
    }

    pub async fn record_poll(
        &self,
        job_id: &str,
        status: &str,
        error: Option<&str>,
        finished: bool,
    ) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            sqlx::query(
                "UPDATE jobs SET status = $1, polls = polls + 1, error = COALESCE($2, error),
               finished_at = CASE WHEN $3 THEN $4 ELSE finished_at END WHERE job_id = $5",
            )
            .bind(crate::model::cut_to(status, 200))
            .bind(error.map(crate::model::cut))
            .bind(finished)
            .bind(now())
            .bind(job_id)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }
}
