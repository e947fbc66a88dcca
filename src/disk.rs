//! Room on the local disk for downloads and scratch files: checked before a large write starts,
//! so a big export fails its window with a clear message instead of filling the volume (perhaps
//! the one the state lives on) halfway through.

use std::path::{Path, PathBuf};

/// Kept free beyond what a write needs: the state, logs and the rest of the system live there too.
pub const HEADROOM: u64 = 256 << 20;

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
    let failed = |source| DiskError::Statvfs {
        dir: dir.to_path_buf(),
        source,
    };
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
        .map_err(|e| failed(std::io::Error::other(e)))?;
    let mut s: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a zeroed struct the call fills in.
    if unsafe { libc::statvfs(c.as_ptr(), &mut s) } != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    Ok((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
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
}
