//! Keeping the state small: finished runs, finished jobs and settled windows older than
//! `state.history_retention` are deleted, so the database does not grow for as long as the
//! daemon runs. What resume, planning and `status` need stays: windows with a live job or after
//! the watermark, their jobs, every partition, the watermark itself.

use chrono::{DateTime, SecondsFormat, Utc};

use super::{State, StateError, in_tx};
use crate::model::Pruned;

impl State {
    /// Deletes history last touched before `before`, in one transaction.
    pub async fn prune_history(&self, before: DateTime<Utc>) -> Result<Pruned, StateError> {
        let cutoff = before.to_rfc3339_opts(SecondsFormat::Millis, true);
        in_tx!(self, |tx| {
            let runs =
                sqlx::query("DELETE FROM runs WHERE finished_at IS NOT NULL AND started_at < $1")
                    .bind(&cutoff)
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
            // A window settled (committed or given up) on a day the watermark has passed: planning
            // never looks at it again. One with a live job, or after the watermark, stays.
            let windows = sqlx::query(
                "DELETE FROM windows
             WHERE stage IN ('committed', 'failed') AND updated_at < $1
               AND day_to < (SELECT last_day FROM watermarks w WHERE w.product = windows.product)",
            )
            .bind(&cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            // A job no remaining window points at is finished business.
            let jobs = sqlx::query(
                "DELETE FROM jobs
             WHERE created_at < $1
               AND job_id NOT IN (SELECT job_id FROM windows WHERE job_id IS NOT NULL)",
            )
            .bind(&cutoff)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            Ok(Pruned {
                runs,
                jobs,
                windows,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StateUrl;
    use crate::model::{Counts, WindowKind};
    use crate::state::test_support::{backends, d, writer_at};
    use crate::state::{RunTotals, Stage};

    #[tokio::test]
    async fn settled_history_goes_and_what_resume_and_planning_need_stays() {
        let dir = tempfile::tempdir().unwrap();
        for url in backends(dir.path()).await {
            prune_cycle(&url).await;
        }
    }

    async fn prune_cycle(url: &StateUrl) {
        let st = writer_at(url).await;
        let p = crate::product::test_support::hid();
        let run = st.start_run("sync", Some(p)).await.unwrap();
        let mut windows = Vec::new();
        for day in ["2026-01-01", "2026-01-02", "2026-01-03", "2026-01-05"] {
            let w = st
                .plan_window(p, day, WindowKind::Day, d(day), d(day), run)
                .await
                .unwrap();
            st.mark_submitted(&w, &format!("job-{day}"), "csv", "{}", Utc::now())
                .await
                .unwrap();
            windows.push(st.window(p, day).await.unwrap().unwrap());
        }
        // 01 and 02 committed, 03 still has its job, 05 committed after the watermark.
        for w in [&windows[0], &windows[1], &windows[3]] {
            let job = w.job_id.clone().unwrap();
            st.commit_partitions(p, &[], &[], &job, Some((w.id, Counts::default())), None)
                .await
                .unwrap();
        }
        st.advance_watermark(p, d("2026-01-04")).await.unwrap();
        st.finish_run(run, RunTotals::default(), None)
            .await
            .unwrap();
        let open = st.start_run("sync", Some(p)).await.unwrap();

        // Nothing is old yet.
        let nothing = st
            .prune_history(Utc::now() - chrono::Duration::days(90))
            .await
            .unwrap();
        assert_eq!(nothing.total(), 0);

        // As seen from 90 days later: everything above is older than the retention.
        let pruned = st
            .prune_history(Utc::now() + chrono::Duration::seconds(1))
            .await
            .unwrap();
        assert_eq!(
            pruned,
            Pruned {
                runs: 1,
                jobs: 2,
                windows: 2
            }
        );
        assert!(st.window(p, "2026-01-01").await.unwrap().is_none());
        let live = st.window(p, "2026-01-03").await.unwrap().unwrap();
        assert_eq!(live.stage, Stage::Submitted);
        assert!(st.job("job-2026-01-03").await.unwrap().is_some());
        let after = st.window(p, "2026-01-05").await.unwrap().unwrap();
        assert_eq!(
            after.stage,
            Stage::Committed,
            "after the watermark: planning needs it"
        );
        assert!(st.job("job-2026-01-05").await.unwrap().is_some());
        let runs = st.recent_runs(10).await.unwrap();
        assert_eq!(runs.len(), 1, "the unfinished run stays");
        assert_eq!(runs[0].id, open);
        assert_eq!(st.watermark(p).await.unwrap(), Some(d("2026-01-04")));
        assert!(st.size_bytes().await.unwrap() > 0);
    }
}
