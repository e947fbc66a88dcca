//! The state: SQLite through sqlx, schema in `migrations/`.
//!
//! Writers open it through the writer lease ([`lease`]) and migrate it; readers (`status`, `plan`,
//! `check-config`, `query`) open it read-only, migrate nothing and work beside a running daemon.
//! One connection per writer, so statements never interleave; WAL so readers see the last commit
//! while a sync writes; `synchronous = FULL` because a recorded job id must survive a power cut
//! (a lost id means a second job at the vendor for the same window).
//!
//! This file opens the database; each table's queries live with it: [`windows`] (and the
//! watermark), [`jobs`], [`partitions`] (the lake's ledger and its rewrites) and [`runs`].

mod history;
mod jobs;
pub mod lease;
mod partitions;
mod runs;
mod windows;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use jobs::JobRow;
pub use lease::{Holder, LeaseRequest, WriterLease};
pub use partitions::Rewrite;
pub use runs::{RunRow, RunTotals};
pub use windows::{Stage, WindowRow};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {detail}")]
    Open { path: String, detail: String },
    #[error(
        "another writer holds the state: {holder} holds the writer lease {lock}{}; \
         only one process may write at a time (stop it, or pass --wait DURATION to wait for it)",
        .waited.map(|w| format!(" (waited {})", humantime::format_duration(w))).unwrap_or_default()
    )]
    Busy {
        lock: String,
        holder: String,
        waited: Option<Duration>,
    },
    #[error(
        "state database {path} is at schema version {found}, this dpss-sync reads version {wanted}: {hint}"
    )]
    Version {
        path: String,
        found: i64,
        wanted: i64,
        hint: &'static str,
    },
    #[error("state migration failed: {0}")]
    Migrate(String),
    #[error("state query failed: {0}")]
    Query(#[from] sqlx::Error),
    #[error("state holds an unreadable value: {0}")]
    Corrupt(String),
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn day(s: &str) -> Result<NaiveDate, StateError> {
    NaiveDate::from_str(s).map_err(|_| StateError::Corrupt(format!("day `{s}`")))
}

fn day_text(d: NaiveDate) -> String {
    d.format("%Y-%m-%d").to_string()
}

pub fn days_text(days: &BTreeSet<NaiveDate>) -> String {
    days.iter()
        .map(|d| day_text(*d))
        .collect::<Vec<_>>()
        .join(",")
}

fn parse_days(s: &str) -> Result<BTreeSet<NaiveDate>, StateError> {
    s.split(',').filter(|x| !x.is_empty()).map(day).collect()
}

#[derive(Clone)]
pub struct State {
    pool: SqlitePool,
    path: PathBuf,
    /// Held for as long as any clone of a writer's state lives.
    lease: Option<Arc<WriterLease>>,
    /// A reader of a database that does not exist yet sees an empty state.
    missing: bool,
}

/// The migrations of `migrations/`, embedded so the binary needs no files beside it.
const MIGRATIONS: [(i64, &str, &str); 3] = [
    (
        1,
        "initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        2,
        "run range",
        include_str!("../../migrations/0002_run_range.sql"),
    ),
    (
        3,
        "commit safety",
        include_str!("../../migrations/0003_commit_safety.sql"),
    ),
];

/// How long a reader waits for a writer's migrations to finish.
const MIGRATION_PATIENCE: Duration = Duration::from_secs(10);

async fn migrate(pool: &SqlitePool) -> Result<(), StateError> {
    migrator()
        .run(pool)
        .await
        .map_err(|e| StateError::Migrate(e.to_string()))
}

/// The last migration applied to the database behind `pool`; 0 before the first.
async fn schema_version(pool: &SqlitePool) -> Result<i64, StateError> {
    match sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(version) FROM _sqlx_migrations WHERE success",
    )
    .fetch_one(pool)
    .await
    {
        Ok(v) => Ok(v.unwrap_or(0)),
        Err(sqlx::Error::Database(e)) if e.message().contains("no such table") => Ok(0),
        Err(e) => Err(e.into()),
    }
}

/// The schema version this binary writes and reads.
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

fn migrator() -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    sqlx::migrate::Migrator::with_migrations(
        MIGRATIONS
            .iter()
            .map(|(version, description, sql)| {
                sqlx::migrate::Migration::new(
                    *version,
                    (*description).into(),
                    sqlx::migrate::MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

impl State {
    /// Takes the writer lease (waiting as `request` says), then opens, creating it owner-only,
    /// and migrates the database at `path`.
    pub async fn open_writer(path: &Path, request: &LeaseRequest) -> Result<Self, StateError> {
        let open_err = |detail: String| StateError::Open {
            path: path.display().to_string(),
            detail,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
        }
        let lease = WriterLease::acquire(path, request).await?;
        create_private(path).map_err(|e| open_err(e.to_string()))?;
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            lease: Some(Arc::new(lease)),
            missing: false,
        })
    }

    /// Opens the database at `path` read-only: no lease, no migration, nothing written, so it
    /// works beside a running writer. A database that does not exist yet reads as an empty
    /// state; one at another schema version is refused with what to do about it.
    pub async fn open_reader(path: &Path) -> Result<Self, StateError> {
        let open_err = |detail: String| StateError::Open {
            path: path.display().to_string(),
            detail,
        };
        if !path.exists() {
            return Self::empty(path).await;
        }
        let options = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(|e| open_err(e.to_string()))?;
        // A writer that holds the lease may be migrating right now, one version at a time:
        // give it a moment before calling the schema old.
        let patience = tokio::time::Instant::now() + MIGRATION_PATIENCE;
        let found = loop {
            let found = schema_version(&pool).await?;
            if found >= SCHEMA_VERSION
                || !lease::is_held(path)
                || tokio::time::Instant::now() >= patience
            {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if found == 0 {
            // A writer created the file a moment ago and has not migrated it yet.
            pool.close().await;
            return Self::empty(path).await;
        }
        if found != SCHEMA_VERSION {
            pool.close().await;
            return Err(StateError::Version {
                path: path.display().to_string(),
                found,
                wanted: SCHEMA_VERSION,
                hint: if found < SCHEMA_VERSION {
                    "it is migrated by the next writer command (run, sync, backfill, import)"
                } else {
                    "it was written by a newer dpss-sync; run that version"
                },
            });
        }
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            lease: None,
            missing: false,
        })
    }

    /// What a reader sees where no writer has made a state yet: an empty one, in memory.
    async fn empty(path: &Path) -> Result<Self, StateError> {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
            .await
            .map_err(|e| StateError::Open {
                path: path.display().to_string(),
                detail: e.to_string(),
            })?;
        migrate(&pool).await?;
        Ok(Self {
            pool,
            path: path.to_path_buf(),
            lease: None,
            missing: true,
        })
    }

    /// The lease this state was opened under; `None` for a reader.
    pub fn lease(&self) -> Option<&Holder> {
        self.lease.as_deref().map(WriterLease::holder)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A reader's database did not exist: nothing has run yet.
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Creates the database file with mode 0600 before SQLite does, so the state is never readable
/// by other users, even for an instant.
fn create_private(path: &Path) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path).map(|_| ())
}

#[cfg(test)]
mod test_support {
    use super::*;

    pub(super) fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    pub(super) async fn writer(path: &Path) -> State {
        State::open_writer(path, &LeaseRequest::new("test", None))
            .await
            .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{d, writer};
    use super::*;
    use crate::product::Product;

    #[tokio::test]
    async fn readers_open_read_only_beside_the_writer_and_never_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // No database yet: an empty state, and no file is created.
        let r = State::open_reader(&path).await.unwrap();
        assert!(r.is_missing() && r.watermark(Product::HidWorkOrders).await.unwrap().is_none());
        assert!(!path.exists());
        let w = writer(&path).await;
        w.advance_watermark(Product::HidWorkOrders, d("2026-01-02"))
            .await
            .unwrap();
        let r = State::open_reader(&path).await.unwrap();
        assert!(r.lease().is_none() && w.lease().is_some());
        assert_eq!(
            r.watermark(Product::HidWorkOrders).await.unwrap(),
            Some(d("2026-01-02"))
        );
        let refused = r
            .advance_watermark(Product::HidWorkOrders, d("2026-01-03"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        // A database at another schema version is named, not migrated.
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 3")
            .execute(&w.pool)
            .await
            .unwrap();
        let err = State::open_reader(&path).await.err().unwrap();
        assert!(
            err.to_string().contains("schema version 2")
                && err.to_string().contains("next writer command"),
            "{err}"
        );
    }
}
