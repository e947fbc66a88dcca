//! The state: watermarks, the window ledger, vendor jobs, the lake's ledger and runs, kept in
//! SQLite (one machine) or PostgreSQL (several replicas, one active writer), through sqlx.
//!
//! What differs between the backends lives in one file each: [`sqlite`] and [`postgres`] open
//! and migrate (`migrations/sqlite`, `migrations/postgres`), and the writer lease is the
//! [`Lease`] trait with one implementation per backend ([`lease::FileLease`], an OS file lock;
//! [`pg_lease::PgLease`], an advisory lock with an epoch that fences every write). The queries
//! of each table are written once, beside it ([`windows`] and the watermark, [`jobs`],
//! [`partitions`], [`runs`], [`history`]): the SQL is the same on both backends (`$n`
//! parameters, days and instants as text, counts as 64-bit integers), and `on_db!`/`in_tx!` run
//! it with each backend's own types, so no column loses its type the way `sqlx::Any` would.
//!
//! Writers open the state through the lease and migrate it; readers (`status`, `plan`,
//! `check-config`, `query`) open it read-only, migrate nothing and work beside a running daemon.

mod commits;
mod history;
mod jobs;
pub mod lease;
mod partitions;
mod pg_lease;
mod postgres;
mod runs;
mod sqlite;
mod windows;

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{NaiveDate, Utc};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::sqlite::{SqlitePool, SqliteRow};
use sqlx::{Postgres, Sqlite};

use crate::model::StateUrl;

pub use commits::{PendingCommit, TableCommit};
pub use jobs::JobRow;
pub use lease::{Holder, Lease, LeaseRequest, LeaseRow, LeaseStatus};
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
    #[error(
        "this process no longer holds the writer lease (it held epoch {epoch}): another replica \
         may have taken over, so it stops here and writes nothing more"
    )]
    LeaseLost { epoch: i64 },
    #[error(
        "write refused: the writer lease has moved past epoch {epoch} (another replica took \
         over while this one was paused or cut off)"
    )]
    Fenced { epoch: i64 },
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

/// The database behind a state.
#[derive(Clone, Debug)]
enum Db {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the backend's pool. The body is written once and checked
/// by the compiler against each backend's types.
macro_rules! on_db {
    ($state:expr, |$pool:ident| $body:expr) => {
        match &$state.db {
            $crate::state::Db::Sqlite($pool) => $body,
            $crate::state::Db::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` in one transaction (`$tx`). With PostgreSQL the transaction first checks the
/// writer lease's epoch (`postgres::fence`), so a writer that lost the lease commits nothing.
macro_rules! in_tx {
    ($state:expr, |$tx:ident| $body:expr) => {
        match &$state.db {
            $crate::state::Db::Sqlite(pool) => {
                let mut $tx = pool.begin().await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
            $crate::state::Db::Postgres(pool) => {
                let epoch = $state.epoch()?;
                let mut $tx = pool.begin().await?;
                $crate::state::postgres::fence(&mut *$tx, epoch).await?;
                let out = $body;
                $tx.commit().await?;
                out
            }
        }
    };
}
pub(crate) use {in_tx, on_db};

/// A column type both backends decode.
trait Column:
    for<'r> sqlx::Decode<'r, Sqlite>
    + sqlx::Type<Sqlite>
    + for<'r> sqlx::Decode<'r, Postgres>
    + sqlx::Type<Postgres>
{
}
impl<T> Column for T where
    T: for<'r> sqlx::Decode<'r, Sqlite>
        + sqlx::Type<Sqlite>
        + for<'r> sqlx::Decode<'r, Postgres>
        + sqlx::Type<Postgres>
{
}

/// A column name or position both backends' rows take.
trait Index: sqlx::ColumnIndex<SqliteRow> + sqlx::ColumnIndex<PgRow> + std::fmt::Debug {}
impl<I> Index for I where
    I: sqlx::ColumnIndex<SqliteRow> + sqlx::ColumnIndex<PgRow> + std::fmt::Debug
{
}

/// Reads a row of either backend, so the code that turns rows into values is written once.
trait Fields {
    /// The column's value; a value of the wrong type is an error naming the column.
    fn col<T: Column>(&self, index: impl Index) -> Result<T, sqlx::Error>;
}

impl Fields for SqliteRow {
    fn col<T: Column>(&self, index: impl Index) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

impl Fields for PgRow {
    fn col<T: Column>(&self, index: impl Index) -> Result<T, sqlx::Error> {
        sqlx::Row::try_get(self, index)
    }
}

/// The migrations of one backend, embedded so the binary needs no files beside it.
type Migrations = [(i64, &'static str, &'static str)];

fn migrator(migrations: &Migrations) -> sqlx::migrate::Migrator {
    use sqlx::SqlSafeStr;
    sqlx::migrate::Migrator::with_migrations(
        migrations
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

/// Pool options without sqlx's maintenance task. In sqlx 0.9 that task reads the pool's idle
/// count, which goes below zero for an instant when one thread returns a connection as another
/// takes it; the task then loops near 2^64 times without yielding, so the runtime can never shut
/// down (seen as a `plan` at 100% CPU that never exited). Connections are tested before use
/// (sqlx's default), so reaping idle ones buys nothing here.
fn pool_options<DB: sqlx::Database>() -> sqlx::pool::PoolOptions<DB> {
    sqlx::pool::PoolOptions::new()
        .idle_timeout(None)
        .max_lifetime(None)
}

/// How long a reader waits for a writer's migrations to finish.
const MIGRATION_PATIENCE: Duration = Duration::from_millis(10_000);

#[derive(Clone)]
pub struct State {
    db: Db,
    url: StateUrl,
    /// Held for as long as any clone of a writer's state lives; `None` for a reader.
    lease: Option<Arc<dyn Lease>>,
    /// The epoch this clone's writes must carry (see [`State::pinned`]).
    pin: Option<i64>,
    /// A reader of a database that does not exist yet sees an empty state.
    missing: bool,
}

impl State {
    /// Takes the writer lease (waiting as `request` says, or as a standby), then opens and
    /// migrates the state at `url`.
    pub async fn open_writer(url: &StateUrl, request: &LeaseRequest) -> Result<Self, StateError> {
        match url {
            StateUrl::Sqlite(path) => sqlite::open_writer(path, request).await,
            StateUrl::Postgres { .. } => postgres::open_writer(url, request).await,
        }
    }

    /// Opens the state at `url` read-only: no lease, no migration, nothing written, so it works
    /// beside a running writer. A state nothing has written yet reads as an empty one; one at
    /// another schema version is refused with what to do about it.
    pub async fn open_reader(url: &StateUrl) -> Result<Self, StateError> {
        match url {
            StateUrl::Sqlite(path) => sqlite::open_reader(path).await,
            StateUrl::Postgres { .. } => postgres::open_reader(url).await,
        }
    }

    fn new(db: Db, url: &StateUrl, lease: Option<Arc<dyn Lease>>, missing: bool) -> Self {
        Self {
            db,
            url: url.clone(),
            lease,
            pin: None,
            missing,
        }
    }

    /// Checks that the database is at `wanted`, waiting while `writer_busy` says a writer may be
    /// migrating it; a state with no migration at all reads as empty.
    async fn checked_reader(
        db: Db,
        url: &StateUrl,
        wanted: i64,
        writer_busy: impl Fn() -> bool,
    ) -> Result<Self, StateError> {
        let reader = Self::new(db, url, None, false);
        let patience = tokio::time::Instant::now() + MIGRATION_PATIENCE;
        let found = loop {
            let found = reader.schema_version().await?;
            if found >= wanted || !writer_busy() || tokio::time::Instant::now() >= patience {
                break found;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        if found == wanted {
            return Ok(reader);
        }
        reader.close().await;
        if found == 0 {
            return sqlite::empty(url).await;
        }
        Err(StateError::Version {
            path: url.to_string(),
            found,
            wanted,
            hint: if found < wanted {
                "it is migrated by the next writer command (run, sync, backfill, import)"
            } else {
                "it was written by a newer dpss-sync; run that version"
            },
        })
    }

    /// The last migration applied; 0 before the first.
    async fn schema_version(&self) -> Result<i64, StateError> {
        let sql = "SELECT MAX(version) FROM _sqlx_migrations WHERE success";
        let found: Result<Option<i64>, sqlx::Error> =
            on_db!(self, |pool| sqlx::query_scalar(sql).fetch_one(pool).await);
        match found {
            Ok(v) => Ok(v.unwrap_or(0)),
            // SQLite says "no such table", PostgreSQL "relation … does not exist".
            Err(sqlx::Error::Database(e))
                if e.message().contains("no such table")
                    || e.message().contains("does not exist") =>
            {
                Ok(0)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The lease this state was opened under; `None` for a reader.
    pub fn lease(&self) -> Option<&Holder> {
        self.lease.as_deref().map(|l| l.holder())
    }

    /// Follows the writer lease (a writer's state only).
    pub fn lease_watch(&self) -> Option<tokio::sync::watch::Receiver<LeaseStatus>> {
        self.lease.as_deref().map(|l| l.watch())
    }

    /// The epoch this process writes under now; `None` for a standby or a writer that lost it.
    pub fn lease_epoch(&self) -> Option<i64> {
        self.lease.as_deref().and_then(|l| l.epoch())
    }

    /// A clone whose writes carry the epoch held now, for one cycle: if the lease is lost, even
    /// if this process takes it again later, that cycle writes nothing more (another writer may
    /// have changed what it was working on in between).
    pub fn pinned(&self) -> Result<Self, StateError> {
        Ok(Self {
            pin: self.epoch()?,
            ..self.clone()
        })
    }

    /// The epoch a write carries: an error once the lease is lost (or moved on from the pin).
    fn epoch(&self) -> Result<Option<i64>, StateError> {
        let Some(lease) = &self.lease else {
            return Ok(None);
        };
        match (lease.epoch(), self.pin) {
            (Some(now), Some(pin)) if now != pin => Err(StateError::LeaseLost { epoch: pin }),
            (Some(now), _) => Ok(Some(now)),
            (None, pin) => Err(StateError::LeaseLost {
                epoch: pin.unwrap_or_else(|| match &*lease.watch().borrow() {
                    LeaseStatus::Lost { epoch, .. } => *epoch,
                    _ => 0,
                }),
            }),
        }
    }

    /// A stage boundary: a writer that lost the lease stops before the next vendor request or
    /// lake object, not only at its next ledger write.
    pub fn ensure_writer(&self) -> Result<(), StateError> {
        self.epoch().map(|_| ())
    }

    /// What `status` shows of the lease: the last holder and whether it holds the lease now.
    pub async fn writer(&self) -> Result<Option<LeaseRow>, StateError> {
        match (&self.db, &self.url) {
            (Db::Postgres(pool), _) if !self.missing => pg_lease::lease_row(pool).await,
            (_, StateUrl::Sqlite(path)) => Ok(sqlite::lease_row(path)),
            _ => Ok(None),
        }
    }

    /// A reader's state did not exist: nothing has run yet.
    pub fn is_missing(&self) -> bool {
        self.missing
    }

    /// Bytes the state takes: the SQLite file and its log, or the PostgreSQL database.
    pub async fn size_bytes(&self) -> Result<u64, StateError> {
        match (&self.db, &self.url) {
            (Db::Postgres(pool), _) => postgres::size_bytes(pool).await,
            (_, StateUrl::Sqlite(path)) => Ok(sqlite::size_bytes(path)),
            _ => Ok(0),
        }
    }

    pub async fn close(&self) {
        on_db!(self, |pool| pool.close().await)
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use std::path::Path;

    use super::*;

    pub(crate) fn d(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    pub(crate) async fn writer(path: &Path) -> State {
        writer_at(&StateUrl::Sqlite(path.to_path_buf())).await
    }

    pub(crate) async fn writer_at(url: &StateUrl) -> State {
        State::open_writer(url, &LeaseRequest::new("test", None))
            .await
            .unwrap()
    }

    /// A new, empty database in the PostgreSQL cluster `DPSS_TEST_POSTGRES_URL` names
    /// (`scripts/test` starts a throwaway one); `None` without it, unless
    /// `DPSS_TEST_REQUIRE_POSTGRES` says the run must cover PostgreSQL.
    pub(crate) async fn postgres_db() -> Option<StateUrl> {
        let Ok(admin) = std::env::var("DPSS_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var_os("DPSS_TEST_REQUIRE_POSTGRES").is_none(),
                "DPSS_TEST_POSTGRES_URL is not set: run the tests through scripts/test"
            );
            eprintln!(
                "PostgreSQL not covered: DPSS_TEST_POSTGRES_URL is not set (scripts/test sets it)"
            );
            return None;
        };
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "unit_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
            Utc::now().timestamp_micros()
        );
        // The name is made here of digits and underscores only.
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Some(StateUrl::Postgres {
            url,
            password_file: None,
        })
    }

    /// A fresh state of each backend: SQLite under `dir`, and PostgreSQL when the run has it.
    pub(crate) async fn backends(dir: &Path) -> Vec<StateUrl> {
        let mut urls = vec![StateUrl::Sqlite(dir.join("state.db"))];
        urls.extend(postgres_db().await);
        urls
    }
}

#[cfg(test)]
mod tests {
    use super::test_support::{d, writer};
    use super::*;

    #[test]
    fn pools_run_no_maintenance_task() {
        // See `pool_options`: with either timeout set, sqlx spawns the task that can spin.
        let o = pool_options::<sqlx::Sqlite>();
        assert_eq!((o.get_idle_timeout(), o.get_max_lifetime()), (None, None));
        let o = pool_options::<sqlx::Postgres>();
        assert_eq!((o.get_idle_timeout(), o.get_max_lifetime()), (None, None));
    }

    #[tokio::test]
    async fn readers_open_read_only_beside_the_writer_and_never_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        // No database yet: an empty state, and no file is created.
        let url = StateUrl::Sqlite(path.clone());
        let r = State::open_reader(&url).await.unwrap();
        assert!(
            r.is_missing()
                && r.watermark(crate::product::test_support::hid())
                    .await
                    .unwrap()
                    .is_none()
        );
        assert!(!path.exists());
        let w = writer(&path).await;
        w.advance_watermark(crate::product::test_support::hid(), d("2026-01-02"))
            .await
            .unwrap();
        let r = State::open_reader(&url).await.unwrap();
        assert!(r.lease().is_none() && w.lease().is_some());
        assert_eq!(
            r.watermark(crate::product::test_support::hid())
                .await
                .unwrap(),
            Some(d("2026-01-02"))
        );
        let refused = r
            .advance_watermark(crate::product::test_support::hid(), d("2026-01-03"))
            .await
            .unwrap_err();
        assert!(refused.to_string().contains("readonly"), "{refused}");
        // A database at another schema version is named, not migrated.
        let Db::Sqlite(pool) = &w.db else {
            unreachable!()
        };
        sqlx::query("DELETE FROM _sqlx_migrations WHERE version = 6")
            .execute(pool)
            .await
            .unwrap();
        let err = State::open_reader(&url).await.err().unwrap();
        assert!(
            err.to_string().contains("schema version 5")
                && err.to_string().contains("next writer command"),
            "{err}"
        );
    }
}
