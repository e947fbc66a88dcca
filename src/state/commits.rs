//! Delta commits begun and not yet recorded. The table's log and the state cannot commit in one
//! transaction, so the state first records what it will commit (with an id the log commit
//! carries), the log commit follows, then the state commit deletes the record. A record a crash
//! left is resolved from the log: the table is the source of truth for what landed.

use chrono::NaiveDate;

use super::{State, StateError, in_tx, now, on_db};
use crate::model::{Counts, PartitionState};
use crate::product::Product;

/// One window's (or import's) commit, as the state will record it once the log holds it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PendingCommit {
    /// The `txn` version the log commit carries for the product.
    pub txn: i64,
    /// Carried in the commit's `commitInfo`, so the log says whether this very commit landed.
    pub commit_id: String,
    pub window_id: Option<i64>,
    /// The table version the write was based on: the commit, if it landed, is after it.
    pub base_version: u64,
    pub job_id: String,
    pub counts: Counts,
    pub partitions: Vec<(NaiveDate, PartitionState)>,
}

/// The log commit a state commit records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableCommit {
    pub txn: i64,
    pub version: u64,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Detail {
    job_id: String,
    counts: Counts,
    partitions: Vec<(NaiveDate, PartitionState)>,
}

impl State {
    /// Records a commit about to be made to the log.
    pub async fn begin_table_commit(
        &self,
        product: Product,
        c: &PendingCommit,
    ) -> Result<(), StateError> {
        let detail = serde_json::to_string(&Detail {
            job_id: c.job_id.clone(),
            counts: c.counts,
            partitions: c.partitions.clone(),
        })
        .expect("partition states serialize");
        let t = now();
        in_tx!(self, |tx| {
            sqlx::query(
                "INSERT INTO pending_commits (product, txn, commit_id, window_id, base_version, detail, started_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(product.config_name())
            .bind(c.txn)
            .bind(&c.commit_id)
            .bind(c.window_id)
            .bind(c.base_version as i64)
            .bind(&detail)
            .bind(&t)
            .execute(&mut *tx)
            .await?;
        });
        Ok(())
    }

    /// Commits begun and not recorded: what a crash between the log and the state left.
    pub async fn pending_table_commits(
        &self,
        product: Product,
    ) -> Result<Vec<PendingCommit>, StateError> {
        let rows: Vec<(i64, String, Option<i64>, i64, String)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT txn, commit_id, window_id, base_version, detail FROM pending_commits
                 WHERE product = $1 ORDER BY txn",
            )
            .bind(product.config_name())
            .fetch_all(pool)
            .await?
        });
        rows.into_iter()
            .map(|(txn, commit_id, window_id, base_version, detail)| {
                let d: Detail = serde_json::from_str(&detail)
                    .map_err(|e| StateError::Corrupt(format!("pending commit {txn}: {e}")))?;
                Ok(PendingCommit {
                    txn,
                    commit_id,
                    window_id,
                    base_version: base_version as u64,
                    job_id: d.job_id,
                    counts: d.counts,
                    partitions: d.partitions,
                })
            })
            .collect()
    }

    /// The highest `txn` a begun commit holds: a new one goes past it.
    pub async fn last_pending_txn(&self, product: Product) -> Result<Option<i64>, StateError> {
        Ok(on_db!(self, |pool| {
            sqlx::query_scalar("SELECT MAX(txn) FROM pending_commits WHERE product = $1")
                .bind(product.config_name())
                .fetch_one(pool)
                .await?
        }))
    }

    /// A begun commit the log never took is forgotten.
    pub async fn drop_table_commit(&self, product: Product, txn: i64) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            sqlx::query("DELETE FROM pending_commits WHERE product = $1 AND txn = $2")
                .bind(product.config_name())
                .bind(txn)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::StateUrl;
    use crate::state::test_support::{backends, d, writer_at};

    #[tokio::test]
    async fn a_begun_commit_is_kept_until_the_state_commit_records_it() {
        let dir = tempfile::tempdir().unwrap();
        for url in backends(dir.path()).await {
            pending_cycle(&url).await;
        }
    }

    async fn pending_cycle(url: &StateUrl) {
        let st = writer_at(url).await;
        let p = crate::product::test_support::hid();
        let part = d("2026-01-01");
        let state = PartitionState {
            day_rows: BTreeMap::from([(d("2026-01-01"), 3)]),
            day_hashes: BTreeMap::from([(d("2026-01-01"), u64::MAX - 1)]),
            rows: 3,
            objects: vec!["t/event_date=2026-01-01/part-00000-x.parquet".into()],
            object_sizes: vec![(100, 3)],
            bytes: 100,
        };
        let c = PendingCommit {
            txn: 7,
            commit_id: "c-7".into(),
            window_id: None,
            base_version: 41,
            job_id: "j".into(),
            counts: Counts {
                read: 3,
                written: 3,
                ..Counts::default()
            },
            partitions: vec![(part, state.clone())],
        };
        assert_eq!(st.last_pending_txn(p).await.unwrap(), None);
        st.begin_table_commit(p, &c).await.unwrap();
        assert_eq!(st.pending_table_commits(p).await.unwrap(), vec![c.clone()]);
        assert_eq!(st.last_pending_txn(p).await.unwrap(), Some(7));
        st.commit_partitions(
            p,
            &[(part, state)],
            &[],
            "j",
            None,
            Some(TableCommit {
                txn: 7,
                version: 42,
            }),
        )
        .await
        .unwrap();
        assert!(st.pending_table_commits(p).await.unwrap().is_empty());
        assert_eq!(st.partition_hashes(p).await.unwrap().len(), 1);

        st.begin_table_commit(p, &PendingCommit { txn: 8, ..c })
            .await
            .unwrap();
        st.drop_table_commit(p, 8).await.unwrap();
        assert!(st.pending_table_commits(p).await.unwrap().is_empty());
    }
}
