//! The windows table and the watermark: a window's stages from planned to committed, its
//! failures and back-off, and the days a product has committed.

use std::collections::BTreeSet;

use super::{Fields, State, StateError, day, day_text, in_tx, now, on_db};
use crate::model::{Counts, WindowKind};
use crate::product::Product;
use chrono::{DateTime, NaiveDate, Utc};

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

impl State {
    pub async fn watermark(&self, product: Product) -> Result<Option<NaiveDate>, StateError> {
        on_db!(self, |pool| {
            let row = sqlx::query("SELECT last_day FROM watermarks WHERE product = $1")
                .bind(product.config_name())
                .fetch_optional(pool)
                .await?;
            row.map(|r| day(&r.col::<String>(0)?)).transpose()
        })
    }

    /// Moves the watermark forward only; a lower value is ignored.
    pub async fn advance_watermark(
        &self,
        product: Product,
        to: NaiveDate,
    ) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO watermarks (product, last_day, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (product) DO UPDATE SET last_day = excluded.last_day, updated_at = excluded.updated_at
                 WHERE excluded.last_day > watermarks.last_day",
            )
            .bind(product.config_name())
            .bind(day_text(to))
            .bind(now())
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    fn window_from_row(r: &impl Fields) -> Result<WindowRow, StateError> {
        let read: Option<i64> = r.col("rows_read")?;
        let count = |column: &str| -> Result<u64, StateError> {
            Ok(r.col::<Option<i64>>(column)?.unwrap_or(0) as u64)
        };
        let counts = match read {
            Some(read) => Some(Counts {
                read: read as u64,
                written: count("rows_written")?,
                quarantined: count("rows_quarantined")?,
                duplicates: count("rows_duplicate")?,
            }),
            None => None,
        };
        Ok(WindowRow {
            id: r.col("id")?,
            product: r.col("product")?,
            key: r.col("window_key")?,
            kind: match r.col::<String>("kind")?.as_str() {
                "day" => WindowKind::Day,
                _ => WindowKind::History,
            },
            from: day(&r.col::<String>("day_from")?)?,
            to: day(&r.col::<String>("day_to")?)?,
            stage: Stage::parse(&r.col::<String>("stage")?)?,
            job_id: r.col("job_id")?,
            attempts: r.col("attempts")?,
            counts,
            error: r
                .col::<Option<String>>("error")?
                .map(|e| crate::model::cut(&e).into_owned()),
            updated_at: r.col("updated_at")?,
            committed_at: r.col("committed_at")?,
            failures: r.col("failures")?,
            next_attempt_at: r
                .col::<Option<String>>("next_attempt_at")?
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
        in_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO windows (product, window_key, kind, day_from, day_to, stage, run_id, created_at, updated_at)
                 VALUES ($1, $2, $3, $4, $5, 'planned', $6, $7, $8)
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
            .execute(&mut *tx)
            .await?;
        });
        self.window(product, key)
            .await?
            .ok_or_else(|| StateError::Corrupt(format!("window {key} vanished")))
    }

    pub async fn window(
        &self,
        product: Product,
        key: &str,
    ) -> Result<Option<WindowRow>, StateError> {
        on_db!(self, |pool| {
            sqlx::query("SELECT * FROM windows WHERE product = $1 AND window_key = $2")
                .bind(product.config_name())
                .bind(key)
                .fetch_optional(pool)
                .await?
                .map(|r| Self::window_from_row(&r))
                .transpose()
        })
    }

    pub async fn windows(&self, product: Product) -> Result<Vec<WindowRow>, StateError> {
        on_db!(self, |pool| {
            sqlx::query("SELECT * FROM windows WHERE product = $1 ORDER BY day_from, window_key")
                .bind(product.config_name())
                .fetch_all(pool)
                .await?
                .iter()
                .map(Self::window_from_row)
                .collect()
        })
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

    pub async fn set_stage(
        &self,
        window_id: i64,
        stage: Stage,
        error: Option<&str>,
    ) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            sqlx::query("UPDATE windows SET stage = $1, error = $2, updated_at = $3 WHERE id = $4")
                .bind(stage.as_str())
                .bind(error.map(crate::model::cut))
                .bind(now())
                .bind(window_id)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// A run in which the window failed: counted, and the next cycle waits until `retry_at`.
    pub async fn record_failure(
        &self,
        window_id: i64,
        retry_at: Option<DateTime<Utc>>,
    ) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            sqlx::query(
                "UPDATE windows SET failures = failures + 1, next_attempt_at = $1, updated_at = $2 WHERE id = $3",
            )
            .bind(retry_at.map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)))
            .bind(now())
            .bind(window_id)
            .execute(&mut *tx)
            .await?;
        });
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
        let at: Option<String> = on_db!(self, |pool| {
            sqlx::query_scalar("SELECT MAX(committed_at) FROM windows WHERE product = $1")
                .bind(product.config_name())
                .fetch_one(pool)
                .await?
        });
        at.map(|t| {
            DateTime::parse_from_rfc3339(&t)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| StateError::Corrupt(format!("commit time `{t}`")))
        })
        .transpose()
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StateUrl;
    use crate::state::RunTotals;
    use crate::state::test_support::{backends, d, writer, writer_at};

    #[tokio::test]
    async fn window_lifecycle_and_watermark() {
        let dir = tempfile::tempdir().unwrap();
        for url in backends(&dir.path().join("s")).await {
            lifecycle(&url).await;
        }
    }

    async fn lifecycle(url: &StateUrl) {
        let st = writer_at(url).await;
        #[cfg(unix)]
        if let StateUrl::Sqlite(path) = url {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let p = crate::product::test_support::hid();
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
        st.commit_partitions(p, &[], &[], "job-1", Some((w.id, counts)), None)
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
        let st = writer_at(url).await;
        assert_eq!(
            st.jobs_for_window(p, "2026-01-02").await.unwrap(),
            vec!["job-1"]
        );
    }

    #[tokio::test]
    async fn a_value_of_the_wrong_type_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let st = writer(&dir.path().join("state.db")).await;
        let p = crate::product::test_support::hid();
        let run = st.start_run("sync", Some(p)).await.unwrap();
        st.plan_window(
            p,
            "2026-01-01",
            WindowKind::Day,
            d("2026-01-01"),
            d("2026-01-01"),
            run,
        )
        .await
        .unwrap();
        // SQLite keeps whatever it is given; an edit by hand or a future schema could do this.
        let crate::state::Db::Sqlite(pool) = &st.db else {
            unreachable!()
        };
        sqlx::query("UPDATE windows SET rows_read = 'many'")
            .execute(pool)
            .await
            .unwrap();
        let err = st.windows(p).await.unwrap_err();
        assert!(matches!(err, StateError::Query(_)), "{err}");
        assert!(err.to_string().contains("rows_read"), "{err}");
    }
}
