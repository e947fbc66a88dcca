//! The writer lease: one process at a time may change the state and the lake.
//!
//! Two writers would read-modify-write the same partitions and plan the same windows, so every
//! command that writes holds the lease for its whole life. [`Lease`] is what the state asks of
//! it; each backend keeps it its own way. With SQLite ([`FileLease`], here) the lease is an
//! exclusive `flock` on `<state>.lock` beside the database: the kernel releases it when the
//! process dies, however it dies, so there is never a stale lease to break, and nothing else can
//! reach the file, so no write needs a fencing token. The holder writes who it is into the file,
//! so a refused writer can say whom it waited for. With PostgreSQL see `pg_lease`.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::Utc;

use super::StateError;
pub use crate::model::{Holder, LeaseStatus};

impl Holder {
    /// This process, about to run `command`.
    pub fn this_process(command: &str) -> Self {
        Self {
            host: hostname(),
            pid: std::process::id(),
            command: command.to_string(),
            since: Utc::now(),
        }
    }
}

/// What a writer asks for: who it is, and how long it will wait for a holder to finish.
#[derive(Debug, Clone)]
pub struct LeaseRequest {
    pub holder: Holder,
    pub wait: Option<Duration>,
    /// With PostgreSQL: how long the lease outlives the holder's last renewal (`state.lease_ttl`).
    pub ttl: Duration,
    /// The daemon's way: return at once as a standby and take the lease whenever it comes free
    /// (again after losing it), instead of failing or waiting. A SQLite lease ignores it.
    pub standby: bool,
}

impl LeaseRequest {
    pub fn new(command: &str, wait: Option<Duration>) -> Self {
        Self {
            holder: Holder::this_process(command),
            wait,
            ttl: Duration::from_secs(15),
            standby: false,
        }
    }

    pub fn with_ttl(self, ttl: Duration) -> Self {
        Self { ttl, ..self }
    }

    pub fn as_standby(self) -> Self {
        Self {
            standby: true,
            ..self
        }
    }
}

/// The lease as `status` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LeaseRow {
    pub holder: Holder,
    /// Whether the holder holds it now (a SQLite lock is probed; a PostgreSQL lease is unexpired).
    pub held: bool,
    /// PostgreSQL only: the epoch, and seconds since the holder last renewed.
    pub epoch: Option<i64>,
    pub renewed_secs_ago: Option<f64>,
}

/// The writer lease as the state sees it, whatever keeps it.
pub trait Lease: Send + Sync + std::fmt::Debug {
    fn holder(&self) -> &Holder;
    /// The epoch writes carry while this process holds the lease; `None` while it does not.
    fn epoch(&self) -> Option<i64>;
    /// Follows the lease as it is taken, lost and taken again.
    fn watch(&self) -> tokio::sync::watch::Receiver<LeaseStatus>;
}

/// A held SQLite lease; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct FileLease {
    _file: File,
    holder: Holder,
    status: tokio::sync::watch::Sender<LeaseStatus>,
}

/// The only epoch a file lease has: nothing can take it from its holder while it lives.
const FILE_EPOCH: i64 = 1;

impl Lease for FileLease {
    fn holder(&self) -> &Holder {
        &self.holder
    }

    fn epoch(&self) -> Option<i64> {
        Some(FILE_EPOCH)
    }

    fn watch(&self) -> tokio::sync::watch::Receiver<LeaseStatus> {
        self.status.subscribe()
    }
}

/// How often a waiting writer tries again.
const RETRY: Duration = Duration::from_millis(100);

/// How long a writer without --wait keeps trying (either backend).
pub(super) const PROBE_GRACE: Duration = Duration::from_millis(500);

impl FileLease {
    /// The lock file of the database at `db`.
    pub fn path_for(db: &Path) -> PathBuf {
        let mut name = db.file_name().unwrap_or_default().to_os_string();
        name.push(".lock");
        db.with_file_name(name)
    }

    /// Takes the lease of the database at `db`, waiting up to `request.wait` for a holder.
    pub async fn acquire(db: &Path, request: &LeaseRequest) -> Result<Self, StateError> {
        let path = Self::path_for(db);
        let io_err = |e: std::io::Error| StateError::Open {
            path: path.display().to_string(),
            detail: format!("writer lease file: {e}"),
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err)?;
        // Without --wait a writer still tries for a moment: a reader's probe (`is_held`, from
        // `status`) holds a shared lock for an instant, and must not make a writer fail.
        let deadline = tokio::time::Instant::now() + request.wait.unwrap_or(PROBE_GRACE);
        let mut announced = false;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(err));
            }
            let holder = read_holder(&mut file);
            if tokio::time::Instant::now() >= deadline {
                return Err(StateError::Busy {
                    lock: path.display().to_string(),
                    holder: holder
                        .map(|h| h.to_string())
                        .unwrap_or_else(|| "an unknown process".into()),
                    waited: request.wait,
                });
            }
            if !announced && request.wait.is_some() {
                tracing::warn!(
                    holder = %holder.as_ref().map(|h| h.to_string()).unwrap_or_else(|| "unknown".into()),
                    "another writer holds the state; waiting for it"
                );
                announced = true;
            }
            tokio::time::sleep(RETRY).await;
        }
        file.set_len(0).map_err(io_err)?;
        file.rewind().map_err(io_err)?;
        let text = serde_json::to_string(&request.holder).expect("a holder serializes");
        file.write_all(text.as_bytes())
            .and_then(|_| file.sync_data())
            .map_err(io_err)?;
        Ok(Self {
            _file: file,
            holder: request.holder.clone(),
            status: tokio::sync::watch::Sender::new(LeaseStatus::Held { epoch: FILE_EPOCH }),
        })
    }
}

/// The current holder as it wrote itself into the lock file, if it did.
fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The holder recorded in the lock file of `db`, whether or not it still holds the lease.
pub fn last_holder(db: &Path) -> Option<Holder> {
    let mut file = File::open(FileLease::path_for(db)).ok()?;
    read_holder(&mut file)
}

/// Whether a process holds the lease of `db` right now (for `status`).
pub fn is_held(db: &Path) -> bool {
    let Ok(file) = File::open(FileLease::path_for(db)) else {
        return false;
    };
    // SAFETY: as in `acquire`; a shared probe lock, released at once if it was granted.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if rc == 0 {
        // SAFETY: unlocks the probe lock taken just above on the same descriptor.
        unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) };
        return false;
    }
    true
}

/// This machine's name: the pod's name under Kubernetes.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it or fails.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown-host".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_writer_is_refused_naming_the_holder_and_waits_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("state.db");
        let first = FileLease::acquire(&db, &LeaseRequest::new("run", None))
            .await
            .unwrap();
        assert!(is_held(&db));
        let err = FileLease::acquire(&db, &LeaseRequest::new("sync", None))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("`run`"), "{text}");
        assert!(
            text.contains(&format!("pid {}", std::process::id())),
            "{text}"
        );
        assert_eq!(last_holder(&db).unwrap().command, "run");
        // A waiting writer gets the lease once the holder lets go.
        let release = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            drop(first);
        });
        let second = FileLease::acquire(
            &db,
            &LeaseRequest::new("sync", Some(Duration::from_secs(10))),
        )
        .await
        .unwrap();
        release.await.unwrap();
        assert_eq!(second.holder().command, "sync");
        assert_eq!(last_holder(&db).unwrap().command, "sync");
        drop(second);
        assert!(!is_held(&db));
    }
}
