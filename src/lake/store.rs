//! Opening an object store from the lake URL. Credentials come the usual way for each cloud
//! (AWS_*, AZURE_STORAGE_*, GOOGLE_* variables, instance roles), read by the builders' `from_env`.

use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::ObjectStore;
use object_store::path::Path;
use url::Url;

use super::LakeError;

/// The store and the prefix inside it under which the lake lives.
pub fn open_store(url: &Url) -> Result<(Arc<dyn ObjectStore>, Path), LakeError> {
    let bad = |reason: String| LakeError::BadUrl {
        url: url.to_string(),
        reason,
    };
    let prefix = || Path::from(url.path().trim_matches('/'));
    match url.scheme() {
        "file" => {
            let dir = local_dir(url).ok_or_else(|| bad("not a usable file path".into()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| bad(format!("cannot create {}: {e}", dir.display())))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(|e| bad(e.to_string()))?;
            Ok((Arc::new(store), Path::default()))
        }
        "memory" => Ok((
            Arc::new(object_store::memory::InMemory::new()),
            Path::default(),
        )),
        "s3" | "s3a" => {
            let mut builder = object_store::aws::AmazonS3Builder::from_env().with_url(url.as_str());
            // A Delta commit is a put-if-absent of its log entry: S3 has had conditional writes
            // (If-None-Match) since 2024, as have the S3-compatible stores we know. An operator
            // whose store lacks them says so with AWS_CONDITIONAL_PUT (object_store's setting).
            if std::env::var_os("AWS_CONDITIONAL_PUT").is_none() {
                builder =
                    builder.with_conditional_put(object_store::aws::S3ConditionalPut::ETagMatch);
            }
            let store = builder.build().map_err(|e| bad(e.to_string()))?;
            Ok((Arc::new(store), prefix()))
        }
        "az" | "abfs" | "abfss" | "azure" => {
            let store = object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            Ok((Arc::new(store), prefix()))
        }
        "gs" => {
            let store = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(url.as_str())
                .build()
                .map_err(|e| bad(e.to_string()))?;
            Ok((Arc::new(store), prefix()))
        }
        other => Err(bad(format!("unsupported scheme `{other}`"))),
    }
}

/// The local store writes an object as `<name>#<digits>` and renames it when complete; a
/// process killed in between leaves that staging file, which no listing shows. Only the holder
/// of the writer lease calls this, for directories a crashed rewrite was writing: anywhere else
/// the file may be a live writer's put in progress.
///
/// Below `dir`, only directories modified since `since` are entered: creating a staging file
/// touches its directory, so one the crashed write never touched holds none, and a quarantine
/// of 400 days costs one read of its top directory, not 400.
pub fn remove_staging_files(dir: &FsPath, since: SystemTime) -> usize {
    // Coarse file system clocks (2 s on some) must not hide a directory touched at `since`.
    let since = since - Duration::from_secs(2);
    let mut removed = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            let Ok(meta) = e.metadata() else { continue };
            if meta.is_dir() {
                if meta.modified().is_ok_and(|m| m >= since) {
                    stack.push(path);
                }
                continue;
            }
            let staging = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.rsplit_once('#'))
                .is_some_and(|(_, suffix)| {
                    !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit())
                });
            if staging && std::fs::remove_file(&path).is_ok() {
                removed += 1;
            }
        }
    }
    removed
}

/// `file:///abs/path`, or `file://./rel/path` for a directory relative to the working directory.
pub fn local_dir(url: &Url) -> Option<PathBuf> {
    match url.host_str() {
        Some(".") => Some(PathBuf::from(format!(".{}", url.path()))),
        Some(h) if !h.is_empty() && h != "localhost" => None,
        _ => url.to_file_path().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staging_leftovers_of_recently_touched_directories_are_removed_and_objects_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t/event_date=2024-06-13");
        std::fs::create_dir_all(&p).unwrap();
        for name in ["part-00000.parquet", "part-00000.parquet#12", "odd#name"] {
            std::fs::write(p.join(name), "x").unwrap();
        }
        let old = dir.path().join("t/event_date=2024-06-12");
        std::fs::create_dir_all(&old).unwrap();
        std::fs::write(old.join("part-00000.parquet#7"), "x").unwrap();
        let past = SystemTime::now() - Duration::from_secs(3600);
        std::fs::File::open(&old)
            .unwrap()
            .set_modified(past)
            .unwrap();
        let since = SystemTime::now() - Duration::from_secs(60);
        assert_eq!(remove_staging_files(dir.path(), since), 1);
        assert!(p.join("part-00000.parquet").exists() && p.join("odd#name").exists());
        assert!(
            old.join("part-00000.parquet#7").exists(),
            "a directory untouched since the crashed write began is not entered"
        );
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            local_dir(&Url::parse("file:///var/lib/x").unwrap()),
            Some(PathBuf::from("/var/lib/x"))
        );
        assert_eq!(
            local_dir(&Url::parse("file://./lake").unwrap()),
            Some(PathBuf::from("./lake"))
        );
        assert_eq!(local_dir(&Url::parse("file://elsewhere/x").unwrap()), None);
    }
}
