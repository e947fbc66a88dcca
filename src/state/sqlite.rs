//! SQLite: one file on one machine. One connection per writer, so statements never interleave;
//! WAL so readers see the last commit while a sync writes; `synchronous = FULL` because a
//! recorded job id must survive a power cut (a lost id means a second job at the vendor for the
//! same window). The lease is the file lock of [`FileLease`].

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};

use super::lease::{self, FileLease};
use super::{Db, LeaseRequest, LeaseRow, Migrations, State, StateError, migrator, pool_options};
use crate::model::StateUrl;

pub(super) const MIGRATIONS: &Migrations = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "run range",
        include_str!("../../migrations/sqlite/0002_run_range.sql"),
    ),
    (
        3,
        "commit safety",
        include_str!("../../migrations/sqlite/0003_commit_safety.sql"),
    ),
    (
        4,
        "content hashes",
        include_str!("../../migrations/sqlite/0004_content_hashes.sql"),
    ),
    (
        5,
        "delta commits",
        include_str!("../../migrations/sqlite/0005_delta_commits.sql"),
    ),
    (
        6,
        "partition date",
        include_str!("../../migrations/sqlite/0006_partition_date.sql"),
    ),
];

/// The schema version this binary writes and reads.
const SCHEMA_VERSION: i64 = MIGRATIONS[MIGRATIONS.len() - 1].0;

fn open_err(path: &Path) -> impl Fn(String) -> StateError + '_ {
    move |detail| StateError::Open {
        path: path.display().to_string(),
        detail,
    }
}

/// Takes the file lease, then opens (creating it owner-only) and migrates the database.
pub(super) async fn open_writer(path: &Path, request: &LeaseRequest) -> Result<State, StateError> {
    let open_err = open_err(path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| open_err(format!("cannot create {}: {e}", dir.display())))?;
    }
    let lease = FileLease::acquire(path, request).await?;
    create_private(path).map_err(|e| open_err(e.to_string()))?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(30))
        .foreign_keys(true);
    let pool = pool_options()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| open_err(e.to_string()))?;
    migrator(MIGRATIONS)
        .run(&pool)
        .await
        .map_err(|e| StateError::Migrate(e.to_string()))?;
    let url = StateUrl::Sqlite(path.to_path_buf());
    Ok(State::new(
        Db::Sqlite(pool),
        &url,
        Some(Arc::new(lease)),
        false,
    ))
}

/// Opens the database read-only; a file that does not exist yet reads as an empty state and is
/// not created.
pub(super) async fn open_reader(path: &Path) -> Result<State, StateError> {
    let url = StateUrl::Sqlite(path.to_path_buf());
    if !path.exists() {
        return empty(&url).await;
    }
    let options = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .busy_timeout(Duration::from_secs(30));
    let pool = pool_options()
        .max_connections(1)
        .connect_with(options)
        .await
        .map_err(|e| open_err(path)(e.to_string()))?;
    // A writer that holds the lease may be migrating right now, one version at a time: give it
    // a moment before calling the schema old.
    State::checked_reader(Db::Sqlite(pool), &url, SCHEMA_VERSION, || {
        lease::is_held(path)
    })
    .await
}

/// What a reader sees where no writer has made a state yet: an empty one, in memory.
pub(super) async fn empty(url: &StateUrl) -> Result<State, StateError> {
    let pool = pool_options()
        .max_connections(1)
        .connect_with(SqliteConnectOptions::from_str("sqlite::memory:")?)
        .await
        .map_err(|e| StateError::Open {
            path: url.to_string(),
            detail: e.to_string(),
        })?;
    migrator(MIGRATIONS)
        .run(&pool)
        .await
        .map_err(|e| StateError::Migrate(e.to_string()))?;
    Ok(State::new(Db::Sqlite(pool), url, None, true))
}

/// The last holder of the file lease, and whether it holds it now.
pub(super) fn lease_row(path: &Path) -> Option<LeaseRow> {
    let held = lease::is_held(path);
    lease::last_holder(path).map(|holder| LeaseRow {
        holder,
        held,
        epoch: None,
        renewed_secs_ago: None,
    })
}

/// Bytes the database takes on disk, its write-ahead log included.
pub(super) fn size_bytes(path: &Path) -> u64 {
    let mut wal = path.as_os_str().to_os_string();
    wal.push("-wal");
    [path.as_os_str(), wal.as_os_str()]
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
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
