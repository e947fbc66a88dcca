//! The jobs table: every vendor job a window submitted, recorded before anything waits on it,
//! so a killed process resumes the job instead of requesting a second one.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{State, StateError, WindowRow, now};
use crate::product::Product;

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
            job_id: r.try_get("job_id")?,
            window_key: r.try_get("window_key")?,
            file_type: r.try_get("file_type")?,
            tokens: r.try_get("tokens")?,
            status: r.try_get("status")?,
            polls: r.try_get("polls")?,
            created_at: r.try_get("created_at")?,
            deadline: DateTime::parse_from_rfc3339(r.try_get("deadline")?)
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
        sqlx::query(
            "SELECT job_id FROM jobs WHERE product = ? AND window_key = ? ORDER BY created_at",
        )
        .bind(product.config_name())
        .bind(key)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| r.try_get(0).map_err(StateError::from))
        .collect()
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
}
