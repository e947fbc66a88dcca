//! The lake: Hive-partitioned Parquet through `object_store`, on a local directory or any cloud.
//!
//! A partition (`<partition>=YYYY-MM-DD`, the product's partition column) is rewritten whole: the rows of the days being replaced
//! come out, the new rows go in. The old rows stream through a row group at a time and the new
//! objects are spooled to the work directory once they outgrow memory (`rewrite.rs`), so a
//! rewrite's memory does not grow with the partition. A partition that fits in one object is `part-00000.parquet`,
//! replaced in one put (single-part or a completed multipart upload), so a reader sees the old
//! file or the new one, never a half. A partition beyond `lake.target_file_size` is written as
//! parts named by the rewrite's generation (`part-g<generation>-00000.parquet`, …), which never
//! collide with the objects readers use now; the old objects are deleted only after the state
//! records the new set ([`Lake::delete_objects`]), and a crash in between is repaired from the
//! state's record of the rewrite (see `sync::repair_lake`).

mod columns;
pub mod delta;
mod encode;
mod quarantine;
mod read;
mod rewrite;
mod select;
mod store;
#[cfg(test)]
mod test_support;
mod traffic;

use std::sync::Arc;

use bytes::Bytes;
use chrono::NaiveDate;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

pub use columns::{
    Identity, content_hashes, count_by_window_day, identities, window_day_rows, window_days,
};
pub use rewrite::Dropped;
pub use select::{Replace, Selection};
pub use store::open_store;

use encode::Spooled;

use crate::config::{LakeSettings, TableFormat};
use crate::model::LakeTraffic;
use crate::product::Product;

/// Objects written at once. Two leave a core idle part of the write phase, while a partition
/// waits on the store (creating its directory and file); three were a little faster but made
/// peak memory grow with the export again, which the memory bound forbids. Two it is
/// (docs/performance.md has the figures).
pub const WRITERS: usize = 2;

/// Chunks of one multipart upload in flight at once: enough to keep the link busy, few enough
/// that a big part's upload holds a bounded number of chunks in memory.
const UPLOADS_PER_OBJECT: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("object store ({path}): {source}")]
    Store {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("Parquet ({path}): {source}")]
    Parquet {
        path: String,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("reading or assembling rows ({path}): {source}")]
    Arrow {
        path: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("encoding {path}: the encoder task failed: {source}")]
    Task {
        path: String,
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("lake probe {path}: read back different bytes than it wrote")]
    ProbeMismatch { path: String },
    #[error("{path}: schema does not match the lake's: {detail}")]
    Schema { path: String, detail: String },
    #[error("quarantined rows: {0}")]
    Quarantine(#[from] crate::normalize::SpillError),
    /// Boxed: the Delta library's errors are large, and every lake result would carry the size.
    #[error(transparent)]
    Delta(Box<delta::DeltaError>),
}

impl From<delta::DeltaError> for LakeError {
    fn from(e: delta::DeltaError) -> Self {
        LakeError::Delta(Box::new(e))
    }
}

fn store_err(path: &Path) -> impl FnOnce(object_store::Error) -> LakeError + '_ {
    move |source| LakeError::Store {
        path: path.to_string(),
        source,
    }
}

fn parquet_err(path: &Path) -> impl FnOnce(parquet::errors::ParquetError) -> LakeError + '_ {
    move |source| LakeError::Parquet {
        path: path.to_string(),
        source,
    }
}

#[derive(Clone)]
pub struct Lake {
    store: Arc<dyn ObjectStore>,
    root: Path,
    url: url::Url,
    display: String,
    target_file_size: u64,
    format: TableFormat,
    retention: std::time::Duration,
    checkpoint_interval: u64,
    /// The token a Delta write puts in its objects' names ([`Self::for_write`]).
    token: Option<Arc<str>>,
    /// The directory of a `file://` lake, where a killed put can leave a staging file.
    local: Option<std::path::PathBuf>,
    /// Where parts that outgrow memory are spooled before their upload (the work directory).
    scratch: std::path::PathBuf,
    traffic: Arc<traffic::Counters>,
}

impl Lake {
    /// Opens the store; changes nothing in it (readers open the lake too). Writes spool parts
    /// that outgrow memory in `scratch`.
    pub fn open(settings: &LakeSettings, scratch: &std::path::Path) -> Result<Self, LakeError> {
        let (store, root) = open_store(&settings.url)?;
        Ok(Self {
            store,
            root,
            url: settings.url.clone(),
            display: crate::api::redact::redact_url(settings.url.as_str()),
            target_file_size: settings.target_file_size,
            format: settings.format,
            retention: settings.retention,
            checkpoint_interval: settings.checkpoint_interval,
            token: None,
            local: (settings.url.scheme() == "file")
                .then(|| store::local_dir(&settings.url))
                .flatten(),
            scratch: scratch.to_path_buf(),
            traffic: Arc::default(),
        })
    }

    /// The requests this lake has made of its store so far.
    pub fn traffic(&self) -> LakeTraffic {
        self.traffic.snapshot()
    }

    pub fn location(&self) -> &str {
        &self.display
    }

    pub fn format(&self) -> TableFormat {
        self.format
    }

    pub fn is_delta(&self) -> bool {
        self.format == TableFormat::Delta
    }

    /// The lake as one write sees it: in a Delta table its objects carry `token` in their names,
    /// so a repair after a crash can tell its own uncommitted objects from anyone else's.
    pub fn for_write(&self, token: &str) -> Lake {
        Lake {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    /// How long a Delta table keeps the files its commits removed.
    pub fn retention(&self) -> std::time::Duration {
        self.retention
    }

    fn table(&self, product: Product) -> Path {
        self.root.clone().join(product.config_name())
    }

    fn partition(&self, product: Product, date: NaiveDate) -> Path {
        // Built only from a validated date, so no input can steer the path.
        self.table(product).join(format!(
            "{}={}",
            product.partition_name,
            date.format("%Y-%m-%d")
        ))
    }

    /// A one-object partition keeps one fixed name, replaced in one put; the parts of a larger
    /// one carry the rewrite's generation, so they never overwrite what readers see now. In a
    /// Delta table no object is ever overwritten (older versions still name it): a part is named
    /// by its write's token, unique across writers (a write puts one set of parts per directory).
    fn part_name(&self, generation: Option<i64>, n: usize) -> String {
        match (self.format, generation) {
            (TableFormat::Delta, _) => match &self.token {
                Some(token) => format!("part-{n:05}-{token}.parquet"),
                None => format!("part-{n:05}-{}.parquet", uuid::Uuid::new_v4().simple()),
            },
            (TableFormat::Parquet, None) => format!("part-{n:05}.parquet"),
            (TableFormat::Parquet, Some(g)) => format!("part-g{g:010}-{n:05}.parquet"),
        }
    }

    /// The objects of one partition now.
    pub async fn list_partition(
        &self,
        product: Product,
        date: NaiveDate,
    ) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        self.list(&self.partition(product, date)).await
    }

    /// Deletes objects by path; one already gone is not an error (a repair may finish a delete
    /// that was under way).
    pub async fn delete_objects(&self, paths: &[String]) -> Result<(), LakeError> {
        for p in paths {
            let path = Path::from(p.as_str());
            self.traffic.deleted();
            match self.store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(store_err(&path)(e)),
            }
        }
        Ok(())
    }

    /// Half-written staging files a killed put left in the partition's directory (local lakes
    /// only: the other stores never show an incomplete object).
    pub fn remove_staging(
        &self,
        product: Product,
        date: NaiveDate,
        since: chrono::DateTime<chrono::Utc>,
    ) -> usize {
        let Some(dir) = &self.local else {
            return 0;
        };
        store::remove_staging_files(
            &dir.join(self.partition(product, date).as_ref()),
            since.into(),
        )
    }

    async fn list(&self, prefix: &Path) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        self.traffic.listed();
        let mut objects: Vec<_> = self
            .store
            .list(Some(prefix))
            .try_collect()
            .await
            .map_err(store_err(prefix))?;
        objects.sort_by(|a, b| a.location.cmp(&b.location));
        Ok(objects)
    }

    /// Every data object of the table: (path, size).
    pub async fn objects(&self, product: Product) -> Result<Vec<(String, u64)>, LakeError> {
        Ok(self
            .published(product, delta::TableKind::Data, &self.table(product))
            .await?
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    /// The objects under `prefix` a reader is meant to see: all of them in the Hive layout, the
    /// current version's files of a Delta table (never a removed or uncommitted one).
    async fn published(
        &self,
        product: Product,
        kind: delta::TableKind,
        prefix: &Path,
    ) -> Result<Vec<object_store::ObjectMeta>, LakeError> {
        match self.format {
            TableFormat::Parquet => self.list(prefix).await,
            TableFormat::Delta => Ok(match self.open_table(product, kind).await? {
                Some(t) => t
                    .all_files()
                    .filter(|m| m.location.prefix_matches(prefix))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            }),
        }
    }

    /// Puts the encoded parts under `prefix` (nothing when there are none), named as
    /// [`Self::part_name`] says. A part spooled to a file streams from it as a multipart upload,
    /// completed at the end, so the store shows the whole object or none of it.
    async fn put_parts(
        &self,
        prefix: &Path,
        generation: Option<i64>,
        parts: Vec<Spooled>,
    ) -> Result<Vec<(String, u64, u64)>, LakeError> {
        let mut written = Vec::with_capacity(parts.len());
        let count = parts.len();
        for (n, part) in parts.into_iter().enumerate() {
            let path = prefix.clone().join(self.part_name(generation, n));
            self.traffic.put(part.len as usize);
            let io_err = |e: std::io::Error| LakeError::Store {
                path: path.to_string(),
                source: object_store::Error::Generic {
                    store: "lake",
                    source: Box::new(e),
                },
            };
            let mut sink = object_store::buffered::BufWriter::with_capacity(
                self.store.clone(),
                path.clone(),
                encode::SPOOL_BYTES,
            )
            .with_max_concurrency(UPLOADS_PER_OBJECT);
            match part.data {
                tempfile::SpooledData::InMemory(cursor) => {
                    sink.put(Bytes::from(cursor.into_inner()))
                        .await
                        .map_err(store_err(&path))?;
                }
                tempfile::SpooledData::OnDisk(file) => {
                    let mut file = tokio::fs::File::from_std(file);
                    tokio::io::copy(&mut file, &mut sink)
                        .await
                        .map_err(io_err)?;
                }
            }
            sink.shutdown().await.map_err(io_err)?;
            written.push((path.to_string(), part.len, part.rows));
            if n + 1 < count {
                crate::fail_point!("between-puts");
            }
        }
        Ok(written)
    }

    /// A write-read-delete round trip, for `check-config --online`.
    pub async fn probe(&self) -> Result<(), LakeError> {
        // Named per process, so probes run beside each other (or beside a sync) never meet.
        let path = self.root.clone().join(format!(
            "_dpss_sync_probe-{}-{}",
            std::process::id(),
            chrono::Utc::now().timestamp_micros()
        ));
        let payload = format!("probe {}", chrono::Utc::now().to_rfc3339());
        self.store
            .put(&path, payload.clone().into())
            .await
            .map_err(store_err(&path))?;
        let back = self
            .store
            .get(&path)
            .await
            .map_err(store_err(&path))?
            .bytes()
            .await
            .map_err(store_err(&path))?;
        self.store.delete(&path).await.map_err(store_err(&path))?;
        if back != payload.as_bytes() {
            return Err(LakeError::ProbeMismatch {
                path: path.to_string(),
            });
        }
        Ok(())
    }
}

/// The partition day of an object path (its `<partition>=YYYY-MM-DD` part).
pub fn partition_date(product: Product, path: &Path) -> Option<NaiveDate> {
    let prefix = format!("{}=", product.partition_name);
    path.parts().find_map(|p| {
        p.as_ref()
            .strip_prefix(prefix.as_str())
            .and_then(|d| d.parse().ok())
    })
}
