//! The lake's ledger: what each partition holds, the rewrites begun and not yet committed, the
//! objects a commit replaced and still has to delete, and the one transaction that commits a
//! window's partitions with the window.

use std::collections::{BTreeMap, BTreeSet};

use super::commits::TableCommit;
use super::{State, StateError, day, day_text, days_text, in_tx, now, on_db, parse_days};
use crate::model::{Counts, PartitionState};
use crate::product::Product;
use chrono::{DateTime, NaiveDate, Utc};

/// A partition rewrite begun and not yet committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewrite {
    /// Also the generation in the names of the rewrite's objects.
    pub id: i64,
    pub partition: NaiveDate,
    /// The partition's objects before the rewrite began.
    pub before: Vec<String>,
    pub started_at: DateTime<Utc>,
    /// In a Delta lake, the token in the names of the objects the write puts.
    pub token: Option<String>,
}

impl State {
    /// What the state believes each partition holds: its day -> window days (a superset).
    pub async fn partition_days(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, BTreeSet<NaiveDate>>, StateError> {
        let rows: Vec<(String, String)> = on_db!(self, |pool| {
            sqlx::query_as("SELECT partition_date, status_days FROM partitions WHERE product = $1")
                .bind(product.config_name())
                .fetch_all(pool)
                .await?
        });
        rows.iter()
            .map(|(date, days)| Ok((day(date)?, parse_days(days)?)))
            .collect()
    }

    /// Each partition's content hash per status day, for the partitions whose hashes are known
    /// (written since they were kept).
    pub async fn partition_hashes(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, BTreeMap<NaiveDate, u64>>, StateError> {
        let rows: Vec<(String, String)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT partition_date, day_hashes FROM partitions
                 WHERE product = $1 AND day_hashes IS NOT NULL",
            )
            .bind(product.config_name())
            .fetch_all(pool)
            .await?
        });
        rows.iter()
            .map(|(date, hashes)| {
                let hashes: BTreeMap<NaiveDate, u64> = serde_json::from_str(hashes)
                    .map_err(|e| StateError::Corrupt(format!("partition day_hashes: {e}")))?;
                Ok((day(date)?, hashes))
            })
            .collect()
    }

    /// Rows the lake holds per status day, summed over partitions; `None` for a day some
    /// partition holds rows of without a count (written before counts were kept).
    pub async fn status_day_rows(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, Option<u64>>, StateError> {
        let rows: Vec<(String, Option<String>)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT status_days, day_rows FROM partitions WHERE product = $1 AND rows > 0",
            )
            .bind(product.config_name())
            .fetch_all(pool)
            .await?
        });
        let mut out: BTreeMap<NaiveDate, Option<u64>> = BTreeMap::new();
        for (status_days, day_rows) in rows {
            let counts: Option<BTreeMap<NaiveDate, u64>> = day_rows
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
                    for d in parse_days(&status_days)? {
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
        token: Option<&str>,
    ) -> Result<BTreeMap<NaiveDate, i64>, StateError> {
        let mut known = self.partition_days(product).await?;
        let t = now();
        in_tx!(self, |tx| {
            for (partition_date, days) in additions {
                let mut all = known.remove(partition_date).unwrap_or_default();
                all.extend(days.iter().copied());
                sqlx::query(
                "INSERT INTO partitions (product, partition_date, status_days, objects, rows, bytes, updated_at)
                 VALUES ($1, $2, $3, '[]', 0, 0, $4)
                 ON CONFLICT (product, partition_date) DO UPDATE SET status_days = excluded.status_days, updated_at = excluded.updated_at",
            )
            .bind(product.config_name())
            .bind(day_text(*partition_date))
            .bind(days_text(&all))
            .bind(&t)
            .execute(&mut *tx)
            .await?;
            }
            let mut generations = BTreeMap::new();
            for (partition_date, objects) in before {
                let id: i64 = sqlx::query_scalar(
                "INSERT INTO rewrites (product, partition_date, before, started_at, token) VALUES ($1, $2, $3, $4, $5)
                 RETURNING id",
            )
            .bind(product.config_name())
            .bind(day_text(*partition_date))
            .bind(serde_json::to_string(objects).expect("strings serialize"))
            .bind(&t)
            .bind(token)
            .fetch_one(&mut *tx)
            .await?;
                generations.insert(*partition_date, id);
            }
            Ok(generations)
        })
    }

    /// Rewrites begun and not committed: what a crash (or a failed write) left.
    pub async fn open_rewrites(&self, product: Product) -> Result<Vec<Rewrite>, StateError> {
        let rows: Vec<(i64, String, String, String, Option<String>)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT id, partition_date, before, started_at, token FROM rewrites WHERE product = $1 ORDER BY id",
            )
            .bind(product.config_name())
            .fetch_all(pool)
            .await?
        });
        rows.iter()
            .map(|(id, partition_date, before, started_at, token)| {
                Ok(Rewrite {
                    id: *id,
                    partition: day(partition_date)?,
                    before: serde_json::from_str(before)
                        .map_err(|e| StateError::Corrupt(format!("rewrite objects: {e}")))?,
                    started_at: DateTime::parse_from_rfc3339(started_at)
                        .map_err(|_| StateError::Corrupt(format!("rewrite start `{started_at}`")))?
                        .with_timezone(&Utc),
                    token: token.clone(),
                })
            })
            .collect()
    }

    /// A repaired rewrite is forgotten.
    pub async fn end_rewrite(&self, id: i64) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            sqlx::query("DELETE FROM rewrites WHERE id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        });
        Ok(())
    }

    /// Objects committed rewrites replaced and that are not yet known deleted.
    pub async fn doomed_objects(&self, product: Product) -> Result<Vec<String>, StateError> {
        Ok(on_db!(self, |pool| {
            sqlx::query_scalar("SELECT path FROM doomed_objects WHERE product = $1 ORDER BY path")
                .bind(product.config_name())
                .fetch_all(pool)
                .await?
        }))
    }

    /// Doomed objects that are gone now.
    pub async fn forget_doomed(&self, paths: &[String]) -> Result<(), StateError> {
        in_tx!(self, |tx| {
            for p in paths {
                sqlx::query("DELETE FROM doomed_objects WHERE path = $1")
                    .bind(p)
                    .execute(&mut *tx)
                    .await?;
            }
        });
        Ok(())
    }

    /// The commit of a write, in one transaction: exactly what each rewritten partition now
    /// holds (or nothing), its rewrite closed, the objects it replaced marked for deletion, and
    /// the window (if any) committed with its counts and, in a Delta lake, the table version
    /// its log commit landed at (the begun commit's record goes). A crash before it leaves the previous
    /// record whole; after it, the new one.
    pub async fn commit_partitions(
        &self,
        product: Product,
        written: &[(NaiveDate, PartitionState)],
        doomed: &[String],
        job_id: &str,
        window: Option<(i64, Counts)>,
        table: Option<TableCommit>,
    ) -> Result<(), StateError> {
        let t = now();
        in_tx!(self, |tx| {
            if let Some(c) = table {
                sqlx::query("DELETE FROM pending_commits WHERE product = $1 AND txn = $2")
                    .bind(product.config_name())
                    .bind(c.txn)
                    .execute(&mut *tx)
                    .await?;
            }
            for (partition_date, p) in written {
                sqlx::query("DELETE FROM rewrites WHERE product = $1 AND partition_date = $2")
                    .bind(product.config_name())
                    .bind(day_text(*partition_date))
                    .execute(&mut *tx)
                    .await?;
                if p.rows == 0 {
                    sqlx::query(
                        "DELETE FROM partitions WHERE product = $1 AND partition_date = $2",
                    )
                    .bind(product.config_name())
                    .bind(day_text(*partition_date))
                    .execute(&mut *tx)
                    .await?;
                    continue;
                }
                let day_rows: BTreeMap<String, u64> =
                    p.day_rows.iter().map(|(d, n)| (day_text(*d), *n)).collect();
                let day_hashes: BTreeMap<String, u64> = p
                    .day_hashes
                    .iter()
                    .map(|(d, h)| (day_text(*d), *h))
                    .collect();
                sqlx::query(
                "INSERT INTO partitions (product, partition_date, status_days, objects, rows, bytes, job_id, updated_at, day_rows, day_hashes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
                 ON CONFLICT (product, partition_date) DO UPDATE SET status_days = excluded.status_days,
                   objects = excluded.objects, rows = excluded.rows, bytes = excluded.bytes,
                   job_id = excluded.job_id, updated_at = excluded.updated_at, day_rows = excluded.day_rows,
                   day_hashes = excluded.day_hashes",
            )
            .bind(product.config_name())
            .bind(day_text(*partition_date))
            .bind(days_text(&p.status_days()))
            .bind(serde_json::to_string(&p.objects).expect("strings serialize"))
            .bind(p.rows as i64)
            .bind(p.bytes as i64)
            .bind(job_id)
            .bind(&t)
            .bind(serde_json::to_string(&day_rows).expect("a map serializes"))
            .bind(serde_json::to_string(&day_hashes).expect("a map serializes"))
            .execute(&mut *tx)
            .await?;
            }
            for path in doomed {
                sqlx::query(
                    "INSERT INTO doomed_objects (path, product, decided_at) VALUES ($1, $2, $3)
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
                "UPDATE windows SET stage = 'committed', rows_read = $1, rows_written = $2, rows_quarantined = $3,
                   rows_duplicate = $4, error = NULL, failures = 0, next_attempt_at = NULL,
                   committed_at = $5, updated_at = $6, table_version = $7 WHERE id = $8",
            )
            .bind(c.read as i64)
            .bind(c.written as i64)
            .bind(c.quarantined as i64)
            .bind(c.duplicates as i64)
            .bind(&t)
            .bind(&t)
            .bind(table.map(|c| c.version as i64))
            .bind(window_id)
            .execute(&mut *tx)
            .await?;
            }
        });
        Ok(())
    }

    /// The objects the state records for each partition (the manifest readers may trust).
    pub async fn partition_objects(
        &self,
        product: Product,
    ) -> Result<BTreeMap<NaiveDate, Vec<String>>, StateError> {
        let rows: Vec<(String, String)> = on_db!(self, |pool| {
            sqlx::query_as(
                "SELECT partition_date, objects FROM partitions WHERE product = $1 AND rows > 0",
            )
            .bind(product.config_name())
            .fetch_all(pool)
            .await?
        });
        rows.iter()
            .map(|(date, objects)| {
                Ok((
                    day(date)?,
                    serde_json::from_str(objects)
                        .map_err(|e| StateError::Corrupt(format!("partition objects: {e}")))?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StateUrl;
    use crate::state::test_support::{backends, d, writer_at};

    #[tokio::test]
    async fn a_rewrite_is_recorded_before_and_closed_by_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        for url in backends(dir.path()).await {
            rewrite_cycle(&url).await;
        }
    }

    async fn rewrite_cycle(url: &StateUrl) {
        let st = writer_at(url).await;
        let p = crate::product::test_support::hid();
        let part = d("2026-01-01");
        let add = |day: &str| BTreeMap::from([(part, BTreeSet::from([d(day)]))]);
        let before = BTreeMap::from([(part, vec!["t/old-0".to_string(), "t/old-1".into()])]);
        st.begin_rewrites(p, &add("2026-01-02"), &before, Some("t1"))
            .await
            .unwrap();
        let crashed = st.open_rewrites(p).await.unwrap();
        assert_eq!(crashed.len(), 1);
        assert_eq!(crashed[0].before, before[&part]);
        assert_eq!(crashed[0].token.as_deref(), Some("t1"));
        st.end_rewrite(crashed[0].id).await.unwrap();
        // A day count is unknown until a commit records it.
        assert_eq!(
            st.status_day_rows(p).await.unwrap().get(&d("2026-01-02")),
            None
        );
        let generations = st
            .begin_rewrites(p, &add("2026-01-03"), &before, None)
            .await
            .unwrap();
        assert!(
            generations[&part] > crashed[0].id,
            "generations never repeat"
        );
        assert_eq!(st.partition_days(p).await.unwrap()[&part].len(), 2);
        // No hashes before the first commit that records them.
        assert!(st.partition_hashes(p).await.unwrap().is_empty());
        let state = PartitionState {
            day_rows: BTreeMap::from([(d("2026-01-03"), 5)]),
            // Above i64::MAX: stored as JSON text, both backends keep it whole.
            day_hashes: BTreeMap::from([(d("2026-01-03"), u64::MAX - 7)]),
            rows: 5,
            objects: vec!["t/new-0".into()],
            object_sizes: vec![(10, 5)],
            bytes: 10,
        };
        st.commit_partitions(p, &[(part, state)], &before[&part], "j", None, None)
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
        assert_eq!(
            st.partition_hashes(p).await.unwrap(),
            BTreeMap::from([(part, BTreeMap::from([(d("2026-01-03"), u64::MAX - 7)]))])
        );
        assert_eq!(st.doomed_objects(p).await.unwrap(), before[&part]);
        st.forget_doomed(&before[&part]).await.unwrap();
        assert!(st.doomed_objects(p).await.unwrap().is_empty());
    }
}
