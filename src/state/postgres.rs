//! PostgreSQL: one database that several replicas share, one of them writing (the lease of
//! [`super::pg_lease`]). The schema is `migrations/postgres`: the SQLite tables with 64-bit
//! counts, plus the lease row. sqlx's migrator takes an advisory lock of its own while it
//! migrates, so replicas that start together migrate once.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool};

use super::pg_lease::PgLease;
use super::{Db, LeaseRequest, Migrations, State, StateError, migrator, pool_options};
use crate::model::StateUrl;

pub(super) const MIGRATIONS: &Migrations = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "content hashes",
        include_str!("../../migrations/postgres/0002_content_hashes.sql"),
    ),
    (
        3,
        "delta commits",
        include_str!("../../migrations/postgres/0003_delta_commits.sql"),
    ),
    (
        4,
        "partition date",
        include_str!("../../migrations/postgres/0004_partition_date.sql"),
    ),
];

/// The schema version this binary writes and reads.
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Connections a writer's pool keeps: the cycle's windows and the HTTP endpoints share them.
const WRITER_CONNECTIONS: u32 = 4;

fn open_err(url: &StateUrl, detail: impl std::fmt::Display) -> StateError {
    StateError::Open {
        path: url.to_string(),
        detail: detail.to_string(),
    }
}

/// The connection options of `url`: TLS as its `sslmode` says; the password from
/// `state.password_file` (read now, so a rotated secret is picked up by the next connection
/// pool), else the URL, else `PGPASSWORD` or `~/.pgpass`.
pub(super) fn connect_options(url: &StateUrl) -> Result<PgConnectOptions, StateError> {
    let StateUrl::Postgres {
        url: raw,
        password_file,
    } = url
    else {
        unreachable!("a PostgreSQL state is opened with a postgres:// URL");
    };
    let mut options = PgConnectOptions::from_str(raw.as_str())
        .map_err(|e| open_err(url, e))?
        .application_name("dpss-sync");
    if let Some(file) = password_file {
        let password = std::fs::read_to_string(file)
            .map_err(|e| open_err(url, format!("state.password_file {}: {e}", file.display())))?;
        options = options.password(password.trim_end_matches(['\r', '\n']));
    }
    Ok(options)
}

/// How long the first connection may take: a database that is down is reported in seconds,
/// with its cause, not after the pool's half-minute wait.
const CONNECT_PATIENCE: Duration = Duration::from_secs(5);

/// One connection before the pool is made: a pool that cannot connect retries until its
/// acquire timeout and then says only that it timed out ("connection refused" lost); this names
/// the host and the cause, within [`CONNECT_PATIENCE`].
async fn reach(url: &StateUrl, options: &PgConnectOptions) -> Result<(), StateError> {
    use sqlx::Connection;
    let at = format!("{}:{}", options.get_host(), options.get_port());
    match tokio::time::timeout(CONNECT_PATIENCE, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            Ok(())
        }
        Ok(Err(e)) => Err(open_err(url, format!("cannot connect to {at}: {e}"))),
        Err(_) => Err(open_err(
            url,
            format!(
                "no answer from {at} within {}",
                humantime::format_duration(CONNECT_PATIENCE)
            ),
        )),
    }
}

/// Opens the pool and migrates, then takes the lease as `request` says (a standby returns at
/// once and takes it when it comes free).
pub(super) async fn open_writer(
    url: &StateUrl,
    request: &LeaseRequest,
) -> Result<State, StateError> {
    let options = connect_options(url)?;
    // A writer paused inside a transaction holds its fence's share lock on the lease row, and a
    // standby's takeover (which updates that row) would wait for it for as long as the pause
    // lasts. The server ends such a session once it has idled in its transaction for a lease
    // period, so the takeover waits at most that long; the writer's own transactions never idle.
    let ttl_ms = request.ttl.as_millis().to_string();
    reach(url, &options).await?;
    let pool = pool_options()
        .max_connections(WRITER_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(
            options
                .clone()
                .options([("idle_in_transaction_session_timeout", ttl_ms.as_str())]),
        )
        .await
        .map_err(|e| open_err(url, e))?;
    migrator(MIGRATIONS)
        .run(&pool)
        .await
        .map_err(|e| StateError::Migrate(e.to_string()))?;
    // The lease's own statements give up on a lock after a lease period and try again, rather
    // than hang behind a session that is about to be ended.
    let lease_options = options.options([("lock_timeout", ttl_ms.as_str())]);
    let lease = PgLease::acquire(url, lease_options, request).await?;
    Ok(State::new(
        Db::Postgres(pool),
        url,
        Some(Arc::new(lease)),
        false,
    ))
}

/// Opens the database for reading: every transaction read-only, nothing migrated.
pub(super) async fn open_reader(url: &StateUrl) -> Result<State, StateError> {
    let options = connect_options(url)?.options([("default_transaction_read_only", "on")]);
    reach(url, &options).await?;
    let pool = pool_options()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(30))
        .connect_with(options)
        .await
        .map_err(|e| open_err(url, e))?;
    // Each migration is one transaction under sqlx's lock: there is no half-migrated schema to
    // wait out, only an older or newer one.
    State::checked_reader(Db::Postgres(pool), url, SCHEMA_VERSION, || false).await
}

/// The fencing check at the start of every write transaction: the lease row still carries the
/// epoch this writer holds. `FOR SHARE` keeps a takeover (which updates that row) waiting until
/// the transaction ends, so no write under an old epoch commits after a new epoch does.
pub(super) async fn fence(tx: &mut PgConnection, epoch: Option<i64>) -> Result<(), StateError> {
    let Some(epoch) = epoch else {
        return Ok(());
    };
    let current: Option<i32> =
        sqlx::query_scalar("SELECT 1 FROM writer_lease WHERE id = 1 AND epoch = $1 FOR SHARE")
            .bind(epoch)
            .fetch_optional(&mut *tx)
            .await?;
    match current {
        Some(_) => Ok(()),
        None => Err(StateError::Fenced { epoch }),
    }
}

pub(super) async fn size_bytes(pool: &PgPool) -> Result<u64, StateError> {
    let bytes: i64 = sqlx::query_scalar("SELECT pg_database_size(current_database())")
        .fetch_one(pool)
        .await?;
    Ok(bytes.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database that is down is named with its host and the cause within seconds, not after
    /// the pool's half-minute wait with "timed out" alone.
    #[tokio::test]
    async fn an_unreachable_server_is_named_with_its_cause_within_seconds() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = StateUrl::Postgres {
            url: format!("postgres://dpss:pw@127.0.0.1:{port}/dpss")
                .parse()
                .unwrap(),
            password_file: None,
        };
        let started = std::time::Instant::now();
        let err = State::open_reader(&url).await.err().unwrap().to_string();
        assert!(
            started.elapsed() < Duration::from_secs(7),
            "{:?}",
            started.elapsed()
        );
        assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
        assert!(err.to_lowercase().contains("refused"), "{err}");
        assert!(!err.contains(":pw@"), "{err}");
    }
}
