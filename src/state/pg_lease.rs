//! The PostgreSQL writer lease: several replicas share one state, one of them writes.
//!
//! The holder keeps a session-level advisory lock on a dedicated connection (never a pooled one:
//! a pool may recycle the connection and silently drop the lock) and the `writer_lease` row:
//! each acquisition increments its `epoch`, and every write transaction checks that epoch first
//! (`postgres::fence`), so a holder that was paused or cut off cannot commit once another has
//! taken over. The holder renews `expires_at` (by the server's clock, so replicas' clocks do not
//! matter) every third of `state.lease_ttl`.
//!
//! A killed holder's connection closes and the lock frees at once. A paused or partitioned one
//! keeps its session, so once its lease expires a standby ends that session
//! (`pg_terminate_backend`, only for the session that holds the lock) and takes the lock. The
//! holder stops trusting its lease at its local deadline, measured from before the renewal it
//! last sent, which is never after the server's `expires_at`: it has stopped before anyone may
//! take over.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;

use super::lease::{Holder, Lease, LeaseRequest, LeaseRow, LeaseStatus, PROBE_GRACE};
use super::{Fields, StateError};
use crate::model::StateUrl;

/// The advisory lock's key ("dpss"); advisory locks are per database, so one state, one lock.
const LOCK_KEY: i64 = 0x6470_7373;

pub(super) async fn lease_row(pool: &PgPool) -> Result<Option<LeaseRow>, StateError> {
    let Some(r) = sqlx::query(
        "SELECT holder, epoch, expires_at > now() AND NOT released AS held,
                EXTRACT(EPOCH FROM now() - renewed_at)::float8 AS age
         FROM writer_lease WHERE id = 1",
    )
    .fetch_optional(pool)
    .await?
    else {
        return Ok(None);
    };
    let holder: String = r.col("holder")?;
    Ok(Some(LeaseRow {
        holder: serde_json::from_str(&holder)
            .map_err(|e| StateError::Corrupt(format!("lease holder: {e}")))?,
        held: r.col("held")?,
        epoch: Some(r.col("epoch")?),
        renewed_secs_ago: Some(r.col("age")?),
    }))
}

/// What the lease task tells the state.
#[derive(Debug)]
struct Shared {
    /// The epoch held and the local deadline it is trusted until.
    held: Mutex<Option<(i64, Instant)>>,
    status: watch::Sender<LeaseStatus>,
    /// Why the last connection attempt failed, for a writer that gives up waiting.
    last_error: Mutex<Option<String>>,
}

impl Shared {
    fn hold(&self, epoch: i64, until: Instant) {
        *self.held.lock().expect("lease lock") = Some((epoch, until));
        self.status.send_if_modified(|s| {
            let changed = *s != LeaseStatus::Held { epoch };
            *s = LeaseStatus::Held { epoch };
            changed
        });
    }

    fn lose(&self, epoch: i64, reason: String) {
        *self.held.lock().expect("lease lock") = None;
        self.status
            .send_replace(LeaseStatus::Lost { epoch, reason });
    }

    fn wait_for(&self, holder: Option<Holder>) {
        self.status.send_if_modified(|s| {
            let next = LeaseStatus::Standby { holder };
            let changed = *s != next;
            *s = next;
            changed
        });
    }
}

/// The lease of a PostgreSQL state; dropping it ends its task and closes its connection, which
/// frees the advisory lock.
#[derive(Debug)]
pub struct PgLease {
    holder: Holder,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PgLease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Lease for PgLease {
    fn holder(&self) -> &Holder {
        &self.holder
    }

    fn epoch(&self) -> Option<i64> {
        let held = *self.shared.held.lock().expect("lease lock");
        held.filter(|(_, until)| Instant::now() < *until)
            .map(|(epoch, _)| epoch)
    }

    fn watch(&self) -> watch::Receiver<LeaseStatus> {
        self.shared.status.subscribe()
    }
}

impl PgLease {
    /// Starts the lease's task. A standby request returns at once; any other waits up to
    /// `request.wait` (or a moment) for the lease and is refused naming the holder.
    pub(super) async fn acquire(
        url: &StateUrl,
        options: PgConnectOptions,
        request: &LeaseRequest,
    ) -> Result<Self, StateError> {
        let shared = Arc::new(Shared {
            held: Mutex::new(None),
            status: watch::Sender::new(LeaseStatus::Standby { holder: None }),
            last_error: Mutex::new(None),
        });
        let mut status = shared.status.subscribe();
        let task = tokio::spawn(keep(options, request.clone(), shared.clone()));
        let lease = Self {
            holder: request.holder.clone(),
            shared,
            task,
        };
        if request.standby {
            return Ok(lease);
        }
        let patience = request.wait.unwrap_or(PROBE_GRACE);
        let mut announced = false;
        let deadline = Instant::now() + patience;
        loop {
            let current = status.borrow_and_update().clone();
            match current {
                LeaseStatus::Held { .. } => return Ok(lease),
                LeaseStatus::Standby { holder: Some(h) }
                    if !announced && request.wait.is_some() =>
                {
                    tracing::warn!(holder = %h, "another writer holds the state; waiting for it");
                    announced = true;
                }
                _ => {}
            }
            if tokio::time::timeout_at(deadline, status.changed())
                .await
                .is_err()
            {
                break;
            }
        }
        let current = status.borrow().clone();
        match current {
            LeaseStatus::Standby { holder: Some(h) } => Err(StateError::Busy {
                lock: format!("of {url} (table writer_lease)"),
                holder: h.to_string(),
                waited: request.wait,
            }),
            _ => Err(StateError::Open {
                path: url.to_string(),
                detail: lease
                    .shared
                    .last_error
                    .lock()
                    .expect("lease lock")
                    .clone()
                    .unwrap_or_else(|| "the writer lease could not be taken in time".into()),
            }),
        }
    }
}

/// What one try for the lease found.
enum Take {
    Taken {
        epoch: i64,
        sent: Instant,
    },
    Busy {
        holder: Option<Holder>,
        stale_pid: Option<i32>,
    },
}

/// The lease's life: connect, campaign, hold and renew; a standby campaigns again after a loss,
/// a one-shot writer stops there.
async fn keep(options: PgConnectOptions, request: LeaseRequest, shared: Arc<Shared>) {
    let holder = serde_json::to_string(&request.holder).expect("a holder serializes");
    let ttl = request.ttl;
    let retry = (ttl / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        let mut conn = match PgConnection::connect_with(&options).await {
            Ok(conn) => conn,
            Err(e) => {
                *shared.last_error.lock().expect("lease lock") = Some(e.to_string());
                tokio::time::sleep(retry).await;
                continue;
            }
        };
        loop {
            match try_take(&mut conn, &holder, ttl).await {
                Err(e) => {
                    *shared.last_error.lock().expect("lease lock") = Some(e.to_string());
                    break;
                }
                Ok(Take::Taken { epoch, sent }) => {
                    shared.hold(epoch, sent + ttl);
                    let reason = hold(&mut conn, epoch, ttl, &shared).await;
                    tracing::warn!(epoch, %reason, "lost the writer lease");
                    shared.lose(epoch, reason);
                    if !request.standby {
                        return;
                    }
                    break;
                }
                Ok(Take::Busy { holder, stale_pid }) => {
                    shared.wait_for(holder.clone());
                    if let Some(pid) = stale_pid {
                        tracing::warn!(
                            holder = %holder.map(|h| h.to_string()).unwrap_or_default(),
                            "the writer lease expired without a renewal; ending its holder's session to take over"
                        );
                        if let Err(e) = end_session(&mut conn, pid).await {
                            *shared.last_error.lock().expect("lease lock") = Some(e.to_string());
                            break;
                        }
                        continue;
                    }
                    tokio::time::sleep(retry).await;
                }
            }
        }
        tokio::time::sleep(retry).await;
    }
}

async fn try_take(
    conn: &mut PgConnection,
    holder: &str,
    ttl: Duration,
) -> Result<Take, sqlx::Error> {
    let sent = Instant::now();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if locked {
        let epoch: i64 = sqlx::query_scalar(
            "INSERT INTO writer_lease (id, epoch, holder, backend_pid, acquired_at, renewed_at, expires_at)
             VALUES (1, 1, $1, pg_backend_pid(), now(), now(), now() + make_interval(secs => $2))
             ON CONFLICT (id) DO UPDATE SET epoch = writer_lease.epoch + 1, holder = excluded.holder,
               backend_pid = excluded.backend_pid, acquired_at = excluded.acquired_at,
               renewed_at = excluded.renewed_at, expires_at = excluded.expires_at, released = FALSE
             RETURNING epoch",
        )
        .bind(holder)
        .bind(ttl.as_secs_f64())
        .fetch_one(&mut *conn)
        .await?;
        return Ok(Take::Taken { epoch, sent });
    }
    let row = sqlx::query(
        "SELECT holder, backend_pid, expires_at < now() AS expired FROM writer_lease WHERE id = 1",
    )
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        // The lock was taken a moment ago and its row is on its way.
        return Ok(Take::Busy {
            holder: None,
            stale_pid: None,
        });
    };
    let holder: String = row.col("holder")?;
    let expired: bool = row.col("expired")?;
    Ok(Take::Busy {
        holder: serde_json::from_str(&holder).ok(),
        stale_pid: expired.then(|| row.col("backend_pid")).transpose()?,
    })
}

/// Renews the lease every third of its life until that fails; says why it ended.
async fn hold(conn: &mut PgConnection, epoch: i64, ttl: Duration, shared: &Shared) -> String {
    loop {
        tokio::time::sleep(ttl / 3).await;
        let sent = Instant::now();
        let renewed = tokio::time::timeout(
            ttl,
            sqlx::query(
                "UPDATE writer_lease SET renewed_at = now(), expires_at = now() + make_interval(secs => $2)
                 WHERE id = 1 AND epoch = $1 AND backend_pid = pg_backend_pid()",
            )
            .bind(epoch)
            .bind(ttl.as_secs_f64())
            .execute(&mut *conn),
        )
        .await;
        match renewed {
            Ok(Ok(r)) if r.rows_affected() == 1 => shared.hold(epoch, sent + ttl),
            Ok(Ok(_)) => return "another replica took the lease over".into(),
            Ok(Err(e)) => return format!("the lease could not be renewed: {e}"),
            Err(_) => return format!("renewing the lease took longer than {ttl:?}"),
        }
    }
}

/// Ends the session `pid` if, and only if, it holds the lease's advisory lock: a stale row's pid
/// may belong to an unrelated session by now.
async fn end_session(conn: &mut PgConnection, pid: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "SELECT pg_terminate_backend(l.pid) FROM pg_locks l
         WHERE l.locktype = 'advisory' AND l.granted AND l.pid = $2
           AND l.classid::bigint = ($1 >> 32) AND l.objid::bigint = ($1 & 4294967295) AND l.objsubid = 1
           AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
    )
    .bind(LOCK_KEY)
    .bind(pid)
    .fetch_all(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use sqlx::Connection;

    use super::*;
    use crate::state::State;
    use crate::state::test_support::{d, postgres_db, writer_at};

    async fn admin(url: &StateUrl) -> PgConnection {
        let StateUrl::Postgres { url, .. } = url else {
            unreachable!()
        };
        PgConnection::connect(url.as_str()).await.unwrap()
    }

    async fn until_held(state: &State, within: Duration) -> i64 {
        let deadline = Instant::now() + within;
        loop {
            if let Some(epoch) = state.lease_epoch() {
                return epoch;
            }
            assert!(
                Instant::now() < deadline,
                "the standby never took the lease"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    #[tokio::test]
    async fn a_second_writer_is_refused_and_a_standby_takes_over_when_the_holder_goes() {
        let Some(url) = postgres_db().await else {
            return;
        };
        let first = writer_at(&url).await;
        assert_eq!(first.lease_epoch(), Some(1));
        let refused = State::open_writer(&url, &LeaseRequest::new("sync", None))
            .await
            .err()
            .unwrap();
        let text = refused.to_string();
        assert!(
            text.contains("`test`") && text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        let standby = State::open_writer(&url, &LeaseRequest::new("run", None).as_standby())
            .await
            .unwrap();
        assert_eq!(standby.lease_epoch(), None);
        let row = standby.writer().await.unwrap().unwrap();
        assert!(row.held && row.holder.command == "test" && row.epoch == Some(1));
        // The holder goes (its connection closes, as when a process is killed): the standby
        // takes the lease at once, under the next epoch, and writes under it.
        first.close().await;
        drop(first);
        assert_eq!(until_held(&standby, Duration::from_secs(5)).await, 2);
        standby
            .advance_watermark(crate::product::test_support::hid(), d("2026-01-02"))
            .await
            .unwrap();
        assert_eq!(
            standby.writer().await.unwrap().unwrap().holder.command,
            "run"
        );
    }

    #[tokio::test]
    async fn a_writer_whose_epoch_moved_on_commits_nothing() {
        let Some(url) = postgres_db().await else {
            return;
        };
        let st = State::open_writer(
            &url,
            &LeaseRequest::new("test", None).with_ttl(Duration::from_secs(3)),
        )
        .await
        .unwrap();
        let p = crate::product::test_support::hid();
        st.advance_watermark(p, d("2026-01-01")).await.unwrap();
        // Another replica took over while this one was not looking.
        let mut other = admin(&url).await;
        sqlx::query("UPDATE writer_lease SET epoch = epoch + 1")
            .execute(&mut other)
            .await
            .unwrap();
        let err = st.advance_watermark(p, d("2026-01-02")).await.unwrap_err();
        assert!(matches!(err, StateError::Fenced { epoch: 1 }), "{err}");
        assert_eq!(st.watermark(p).await.unwrap(), Some(d("2026-01-01")));
        // Its next renewal finds the lease gone: it stops trusting it, and says so.
        let mut status = st.lease_watch().unwrap();
        tokio::time::timeout(
            Duration::from_secs(5),
            status.wait_for(|s| matches!(s, LeaseStatus::Lost { .. })),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(matches!(
            st.ensure_writer(),
            Err(StateError::LeaseLost { epoch: 1 })
        ));
    }

    #[tokio::test]
    async fn a_holder_gone_in_the_middle_of_a_write_does_not_block_the_takeover() {
        let Some(url) = postgres_db().await else {
            return;
        };
        let ttl = Duration::from_secs(2);
        let request =
            |command| LeaseRequest::new(command, Some(Duration::from_secs(10))).with_ttl(ttl);
        let st = State::open_writer(&url, &request("test")).await.unwrap();
        let crate::state::Db::Postgres(pool) = &st.db else {
            unreachable!()
        };
        // A write transaction left open, its fence holding the lease row, as a writer paused
        // (or cut off) mid-write leaves it; then the holder's lock goes.
        let mut tx = pool.begin().await.unwrap();
        crate::state::postgres::fence(&mut tx, Some(1))
            .await
            .unwrap();
        drop(st);
        let started = Instant::now();
        let taker = State::open_writer(&url, &request("run")).await.unwrap();
        assert_eq!(taker.lease_epoch(), Some(2));
        assert!(started.elapsed() < ttl * 3, "took {:?}", started.elapsed());
        assert!(
            tx.commit().await.is_err(),
            "the stale transaction was ended"
        );
    }

    #[tokio::test]
    async fn an_expired_holder_that_still_holds_the_lock_is_cut_off() {
        let Some(url) = postgres_db().await else {
            return;
        };
        // Migrate, then stand in for a paused holder: a session that holds the lock and a lease
        // row that expired because nobody renewed it.
        drop(writer_at(&url).await);
        let mut paused = admin(&url).await;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(LOCK_KEY)
            .execute(&mut paused)
            .await
            .unwrap();
        let holder = serde_json::to_string(&Holder::this_process("paused")).unwrap();
        sqlx::query(
            "UPDATE writer_lease SET holder = $1, backend_pid = pg_backend_pid(),
               expires_at = now() - interval '1 second'",
        )
        .bind(&holder)
        .execute(&mut paused)
        .await
        .unwrap();
        let taker = State::open_writer(
            &url,
            &LeaseRequest::new("run", Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
        assert_eq!(taker.lease_epoch(), Some(2));
        assert!(
            sqlx::query("SELECT 1").execute(&mut paused).await.is_err(),
            "the stale holder's session was ended"
        );
    }
}
