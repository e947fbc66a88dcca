//! Room on the local disk for downloads and scratch files: checked before a large write starts,
//! and again as a write of unknown size streams ([`Reserve`]), so a big export fails its window
//! with a clear message instead of filling the volume (perhaps the one the state lives on).

use std::path::{Path, PathBuf};

/// Kept free beyond what a write needs: the state, logs and the rest of the system live there too.
pub const HEADROOM: u64 = 256 << 20;

/// How often a streaming write looks at the free space again: often enough that it stops well
/// inside the headroom, rarely enough that the check costs nothing next to the writing.
pub const CHECK_EVERY: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(
        "not enough free space in {dir} for {what}: it needs {} and {} is free (beyond {} kept \
         free); free some space or point work.dir at a larger volume",
        mib(*.needed), mib(*.available), mib(HEADROOM)
    )]
    NoRoom {
        dir: PathBuf,
        what: String,
        needed: u64,
        available: u64,
    },
    #[error("cannot tell the free space in {dir}: {source}")]
    Statvfs {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

/// Bytes an unprivileged process may still write under `dir`.
pub fn free_bytes(dir: &Path) -> Result<u64, DiskError> {
    let s = rustix::fs::statvfs(dir).map_err(|e| DiskError::Statvfs {
        dir: dir.to_path_buf(),
        source: e.into(),
    })?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Fails when writing `needed` bytes under `dir` would leave less than [`HEADROOM`] free.
pub fn ensure_room(dir: &Path, needed: u64, what: &str) -> Result<(), DiskError> {
    let available = free_bytes(dir)?;
    if needed.saturating_add(HEADROOM) > available {
        return Err(DiskError::NoRoom {
            dir: dir.to_path_buf(),
            what: what.to_string(),
            needed,
            available,
        });
    }
    Ok(())
}

/// The free-space check of a write whose size is not known up front (a download without
/// `Content-Length`, a part unpacked to scratch): every [`CHECK_EVERY`] bytes it asks for room
/// for the next as many.
pub struct Reserve {
    dir: PathBuf,
    what: String,
    since_check: u64,
}

impl Reserve {
    /// Checks at once (a write that cannot start fails before its first byte).
    pub fn new(dir: &Path, what: String) -> Result<Self, DiskError> {
        ensure_room(dir, CHECK_EVERY, &what)?;
        Ok(Self {
            dir: dir.to_path_buf(),
            what,
            since_check: 0,
        })
    }

    /// `n` more bytes were written.
    pub fn wrote(&mut self, n: u64) -> Result<(), DiskError> {
        self.since_check += n;
        if self.since_check >= CHECK_EVERY {
            self.since_check = 0;
            ensure_room(&self.dir, CHECK_EVERY, &self.what)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_real_directory_is_read_and_an_impossible_need_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let free = free_bytes(dir.path()).unwrap();
        assert!(free > 0);
        ensure_room(dir.path(), 1, "a byte").unwrap();
        let err = ensure_room(dir.path(), u64::MAX / 2, "the export").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("not enough free space")
                && text.contains(&dir.path().display().to_string())
                && text.contains("the export"),
            "{text}"
        );
        assert!(matches!(
            free_bytes(&dir.path().join("missing")),
            Err(DiskError::Statvfs { .. })
        ));
    }

    #[test]
    fn a_streaming_write_is_checked_every_few_mebibytes() {
        let dir = tempfile::tempdir().unwrap();
        let mut r = Reserve::new(dir.path(), "a download".into()).unwrap();
        r.wrote(CHECK_EVERY - 1).unwrap();
        assert_eq!(r.since_check, CHECK_EVERY - 1);
        r.wrote(1).unwrap();
        assert_eq!(r.since_check, 0, "checked once the step was written");
        // A directory that vanished cannot be checked: the write stops.
        let gone = dir.path().join("gone");
        std::fs::create_dir(&gone).unwrap();
        let mut r = Reserve::new(&gone, "a download".into()).unwrap();
        std::fs::remove_dir(&gone).unwrap();
        assert!(r.wrote(CHECK_EVERY).is_err());
    }
}
