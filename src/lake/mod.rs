//! The lake: Hive-partitioned Parquet through `object_store`, on a local directory or any cloud.
//!
//! A partition `event_date=YYYY-MM-DD` is rewritten whole: the rows of the days being replaced
//! come out, the new rows go in. A partition that fits in one object is `part-00000.parquet`,
//! replaced in one put (single-part or a completed multipart upload), so a reader sees the old
//! file or the new one, never a half. A partition beyond `lake.target_file_size` is written as
//! parts named by the rewrite's generation (`part-g<generation>-00000.parquet`, …), which never
//! collide with the objects readers use now; the old objects are deleted only after the state
//! records the new set ([`Lake::delete_objects`]), and a crash in between is repaired from the
//! state's record of the rewrite (see `sync::repair_lake`).

mod columns;
mod encode;
mod quarantine;
mod select;
mod store;
mod traffic;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::compute::{concat_batches, filter_record_batch};
use bytes::Bytes;
use chrono::NaiveDate;
use futures::TryStreamExt;
use tokio::io::AsyncWriteExt;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

pub use columns::{Identity, content_hashes, count_by_status_day, identities, status_day_rows};
pub use select::{Replace, Selection};
pub use store::open_store;

use columns::status_column;
use encode::{Order, conform, encode_parts, sort_rows};

use crate::config::LakeSettings;
use crate::model::{LakeTraffic, PartitionState};
use crate::normalize::time::{day_of_micros, rows_per_day};
use crate::product::Product;

/// Objects written at once. Two leave a core idle part of the write phase, while a partition
/// waits on the store (creating its directory and file); three were a little faster but made
/// peak memory grow with the export again, which the memory bound forbids. Two it is
/// (docs/performance.md has the figures).
pub const WRITERS: usize = 2;

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
    display: String,
    target_file_size: u64,
    /// The directory of a `file://` lake, where a killed put can leave a staging file.
    local: Option<std::path::PathBuf>,
    traffic: Arc<traffic::Counters>,
}

impl Lake {
    /// Opens the store; changes nothing in it (readers open the lake too).
    pub fn open(settings: &LakeSettings) -> Result<Self, LakeError> {
        let (store, root) = open_store(&settings.url)?;
        Ok(Self {
            store,
            root,
            display: settings.url.to_string(),
            target_file_size: settings.target_file_size,
            local: (settings.url.scheme() == "file")
                .then(|| store::local_dir(&settings.url))
                .flatten(),
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

    fn table(&self, product: Product) -> Path {
        self.root.clone().join(product.config_name())
    }

    fn partition(&self, product: Product, date: NaiveDate) -> Path {
        // Built only from a validated date, so no input can steer the path.
        self.table(product)
            .join(format!("event_date={}", date.format("%Y-%m-%d")))
    }

    /// A one-object partition keeps one fixed name, replaced in one put; the parts of a larger
    /// one carry the rewrite's generation, so they never overwrite what readers see now.
    fn part_name(generation: Option<i64>, n: usize) -> String {
        match generation {
            None => format!("part-{n:05}.parquet"),
            Some(g) => format!("part-g{g:010}-{n:05}.parquet"),
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
    pub fn remove_staging(&self, product: Product, date: NaiveDate) -> usize {
        let Some(dir) = &self.local else {
            return 0;
        };
        store::remove_staging_files(&dir.join(self.partition(product, date).as_ref()))
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

    async fn read_objects(
        &self,
        objects: &[object_store::ObjectMeta],
    ) -> Result<Vec<RecordBatch>, LakeError> {
        let mut out = Vec::new();
        for meta in objects
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
        {
            // Partitions are rewritten whole, so the whole object is needed anyway: one GET.
            let bytes = self
                .store
                .get(&meta.location)
                .await
                .map_err(store_err(&meta.location))?
                .bytes()
                .await
                .map_err(store_err(&meta.location))?;
            self.traffic.got(bytes.len());
            let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                .map_err(parquet_err(&meta.location))?
                .with_batch_size(65_536)
                .build()
                .map_err(parquet_err(&meta.location))?;
            for b in reader {
                out.push(b.map_err(|source| LakeError::Arrow {
                    path: meta.location.to_string(),
                    source,
                })?);
            }
        }
        Ok(out)
    }

    /// Every row of one partition.
    pub async fn read_partition(
        &self,
        product: Product,
        date: NaiveDate,
    ) -> Result<Vec<RecordBatch>, LakeError> {
        let objects = self.list(&self.partition(product, date)).await?;
        self.read_objects(&objects).await
    }

    /// Every row of the table, with the partition date of each batch.
    pub async fn read_table(
        &self,
        product: Product,
    ) -> Result<Vec<(NaiveDate, RecordBatch)>, LakeError> {
        let objects = self.list(&self.table(product)).await?;
        let mut out = Vec::new();
        for meta in &objects {
            let Some(date) = partition_date(&meta.location) else {
                continue;
            };
            for b in self.read_objects(std::slice::from_ref(meta)).await? {
                out.push((date, b));
            }
        }
        Ok(out)
    }

    /// Every data object of the table: (path, size).
    pub async fn objects(&self, product: Product) -> Result<Vec<(String, u64)>, LakeError> {
        Ok(self
            .list(&self.table(product))
            .await?
            .into_iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .map(|m| (m.location.to_string(), m.size))
            .collect())
    }

    /// Rewrites one partition whose objects are `existing`: its rows of `replaced` status days
    /// are dropped, and so are rows whose identity is in `merged` (rows this job delivers for
    /// days it does not replace whole); then `new` is added. The new objects are put; the old
    /// ones the result does not reuse are left for the caller to delete once the state records
    /// the new set. `generation` names the parts of a multi-object result.
    #[allow(clippy::too_many_arguments)]
    pub async fn rewrite_partition(
        &self,
        product: Product,
        date: NaiveDate,
        existing_objects: &[object_store::ObjectMeta],
        generation: i64,
        replaced: &BTreeSet<NaiveDate>,
        merged: &HashSet<Identity>,
        new: Option<&RecordBatch>,
    ) -> Result<PartitionState, LakeError> {
        let prefix = self.partition(product, date);
        let existing = self.read_objects(existing_objects).await?;
        let schema = product.lake_schema();
        let mut keep = Vec::with_capacity(existing.len() + 1);
        for b in existing {
            let b = conform(&b, &schema).map_err(|detail| LakeError::Schema {
                path: prefix.to_string(),
                detail,
            })?;
            let ts = status_column(&b);
            let ids = (!merged.is_empty()).then(|| identities(&b));
            let mask: arrow::array::BooleanArray = (0..b.num_rows())
                .map(|i| {
                    let replaced_day = replaced.contains(&day_of_micros(ts.value(i)));
                    let superseded = ids.as_ref().is_some_and(|ids| merged.contains(&ids[i]));
                    Some(!replaced_day && !superseded)
                })
                .collect();
            keep.push(filter_record_batch(&b, &mask).expect("mask length matches"));
        }
        if let Some(n) = new {
            keep.push(n.clone());
        }
        let rows = concat_batches(&schema, &keep).expect("batches share the lake schema");
        let day_rows = rows_per_day(status_column(&rows).values());
        let day_hashes = content_hashes(&rows);
        let count = rows.num_rows() as u64;
        let parts = self.encode(&prefix, rows, Order::ByTime).await?;
        let generation = (parts.len() > 1).then_some(generation);
        let (objects, bytes) = self.put_parts(&prefix, generation, parts).await?;
        Ok(PartitionState {
            day_rows,
            day_hashes,
            rows: count,
            objects,
            bytes,
        })
    }

    /// Sorts and encodes `rows` on a blocking thread: this is most of a sync's CPU, and on the
    /// async threads it would run one partition at a time however many are written at once.
    async fn encode(
        &self,
        prefix: &Path,
        rows: RecordBatch,
        order: Order,
    ) -> Result<Vec<Bytes>, LakeError> {
        let target = self.target_file_size;
        tokio::task::spawn_blocking(move || {
            let rows = match order {
                Order::ByTime => sort_rows(&rows),
                Order::AsIs => rows,
            };
            encode_parts(&rows, target)
        })
        .await
        .map_err(|source| LakeError::Task {
            path: prefix.to_string(),
            source,
        })?
        .map_err(parquet_err(prefix))
    }

    /// Puts the encoded parts under `prefix` (nothing when there are none), named as
    /// [`Self::part_name`] says.
    async fn put_parts(
        &self,
        prefix: &Path,
        generation: Option<i64>,
        parts: Vec<Bytes>,
    ) -> Result<(Vec<String>, u64), LakeError> {
        let mut written = Vec::with_capacity(parts.len());
        let mut bytes = 0;
        let count = parts.len();
        for (n, part) in parts.into_iter().enumerate() {
            let path = prefix.clone().join(Self::part_name(generation, n));
            bytes += part.len() as u64;
            self.traffic.put(part.len());
            // Small parts go in one put; big ones as a multipart upload completed at the end.
            let mut sink = object_store::buffered::BufWriter::with_capacity(
                self.store.clone(),
                path.clone(),
                8 << 20,
            );
            sink.put(part).await.map_err(store_err(&path))?;
            sink.shutdown().await.map_err(|e| LakeError::Store {
                path: path.to_string(),
                source: object_store::Error::Generic {
                    store: "lake",
                    source: Box::new(e),
                },
            })?;
            written.push(path.to_string());
            if n + 1 < count {
                crate::fail_point!("between-puts");
            }
        }
        Ok((written, bytes))
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

/// The `event_date=` of an object path.
pub fn partition_date(path: &Path) -> Option<NaiveDate> {
    path.parts().find_map(|p| {
        p.as_ref()
            .strip_prefix("event_date=")
            .and_then(|d| d.parse().ok())
    })
}
