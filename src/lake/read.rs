//! Reading lake objects back a row group at a time: a rewrite holds one batch of a partition's
//! old rows, not the partition, and every range it asks of the store is counted.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::RecordBatch;
use bytes::Bytes;
use chrono::NaiveDate;
use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt, TryStreamExt};
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderOptions;
use parquet::arrow::async_reader::{AsyncFileReader, ParquetRecordBatchStreamBuilder};
use parquet::errors::ParquetError;
use parquet::file::metadata::{ParquetMetaData, ParquetMetaDataReader};

use super::delta::TableKind;
use super::{Lake, LakeError, parquet_err, partition_date, traffic::Counters};
use crate::product::Product;

/// Rows per decoded batch: small next to a row group, big enough to keep per-batch work cheap.
const BATCH_ROWS: usize = 65_536;

/// The footer is read with this many bytes before it, so one request usually brings the whole
/// metadata.
const FOOTER_HINT: usize = 64 << 10;

/// Objects up to this size are fetched whole in one request and held while read (most
/// partitions are this small); bigger ones a row group at a time, so memory holds at most this
/// much of an object, or one row group.
const WHOLE_OBJECT: u64 = 8 << 20;

/// One object as the Parquet reader sees it: fetched whole when small, else by ranges; every
/// request counted.
struct Ranged {
    store: Arc<dyn ObjectStore>,
    meta: ObjectMeta,
    traffic: Arc<Counters>,
    whole_below: u64,
    whole: Option<Bytes>,
}

fn external(e: object_store::Error) -> ParquetError {
    ParquetError::External(Box::new(e))
}

impl AsyncFileReader for Ranged {
    fn get_bytes(&mut self, range: Range<u64>) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            if let Some(whole) = &self.whole {
                return Ok(whole.slice(range.start as usize..range.end as usize));
            }
            let bytes = self.store.get_range(&self.meta.location, range).await;
            let bytes = bytes.map_err(external)?;
            self.traffic.got(bytes.len());
            Ok(bytes)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            if let Some(whole) = &self.whole {
                let slice = |r: &Range<u64>| whole.slice(r.start as usize..r.end as usize);
                return Ok(ranges.iter().map(slice).collect());
            }
            let parts = self.store.get_ranges(&self.meta.location, &ranges).await;
            let parts = parts.map_err(external)?;
            // The store merges nearby ranges into one request; a row group's columns are one.
            self.traffic.got(parts.iter().map(Bytes::len).sum());
            Ok(parts)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let size = self.meta.size;
            if size <= self.whole_below {
                let got = self
                    .store
                    .get(&self.meta.location)
                    .await
                    .map_err(external)?;
                let whole = got.bytes().await.map_err(external)?;
                self.traffic.got(whole.len());
                let metadata = ParquetMetaDataReader::new().parse_and_finish(&whole)?;
                self.whole = Some(whole);
                return Ok(Arc::new(metadata));
            }
            let metadata = ParquetMetaDataReader::new()
                .with_prefetch_hint(Some(FOOTER_HINT))
                .load_and_finish(&mut *self, size)
                .await?;
            Ok(Arc::new(metadata))
        }
        .boxed()
    }
}

impl Lake {
    /// The rows of the Parquet objects among `objects`, in order, a batch at a time.
    pub(super) fn batches(
        &self,
        objects: &[ObjectMeta],
    ) -> BoxStream<'static, Result<RecordBatch, LakeError>> {
        self.batches_fetching(objects, WHOLE_OBJECT)
    }

    /// [`Self::batches`], fetching objects up to `whole_below` bytes whole.
    fn batches_fetching(
        &self,
        objects: &[ObjectMeta],
        whole_below: u64,
    ) -> BoxStream<'static, Result<RecordBatch, LakeError>> {
        let readers: Vec<Ranged> = objects
            .iter()
            .filter(|m| m.location.as_ref().ends_with(".parquet"))
            .map(|meta| Ranged {
                store: self.store.clone(),
                meta: meta.clone(),
                traffic: self.traffic.clone(),
                whole_below,
                whole: None,
            })
            .collect();
        futures::stream::iter(readers)
            .then(|reader| async move {
                let path = reader.meta.location.clone();
                let stream = ParquetRecordBatchStreamBuilder::new(reader)
                    .await
                    .map_err(parquet_err(&path))?
                    .with_batch_size(BATCH_ROWS)
                    .build()
                    .map_err(parquet_err(&path))?;
                Ok::<_, LakeError>(stream.map_err(move |e| parquet_err(&path)(e)))
            })
            .try_flatten()
            .boxed()
    }

    pub(super) async fn read_objects(
        &self,
        objects: &[ObjectMeta],
    ) -> Result<Vec<RecordBatch>, LakeError> {
        self.batches(objects).try_collect().await
    }

    /// Rows per window day in `objects`, the objects of partition `date`: what a partition the
    /// state has no record of holds.
    pub async fn rows_per_window_day(
        &self,
        product: Product,
        date: NaiveDate,
        objects: &[ObjectMeta],
    ) -> Result<std::collections::BTreeMap<NaiveDate, u64>, LakeError> {
        let mut out = std::collections::BTreeMap::new();
        let mut batches = self.batches(objects);
        while let Some(b) = batches.try_next().await? {
            for (day, n) in super::window_day_rows(product, &b, date) {
                *out.entry(day).or_insert(0) += n;
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
        let objects = self
            .published(product, TableKind::Data, &self.partition(product, date))
            .await?;
        self.read_objects(&objects).await
    }

    /// Every row of the table, with the partition date of each batch.
    pub async fn read_table(
        &self,
        product: Product,
    ) -> Result<Vec<(NaiveDate, RecordBatch)>, LakeError> {
        let objects = self
            .published(product, TableKind::Data, &self.table(product))
            .await?;
        let mut out = Vec::new();
        for meta in &objects {
            let Some(date) = partition_date(product, &meta.location) else {
                continue;
            };
            for b in self.read_objects(std::slice::from_ref(meta)).await? {
                out.push((date, b));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lake::Dropped;
    use crate::lake::test_support::{batch, memory_lake};

    #[tokio::test]
    async fn a_big_object_is_read_by_ranges_and_a_small_one_in_one_request() {
        let scratch = tempfile::tempdir().unwrap();
        let lake = memory_lake(u64::MAX, scratch.path());
        let product = crate::product::test_support::hid();
        let rows: Vec<(String, i64)> = (0..5000)
            .map(|i| (format!("WO-{:09}", i * 7919), i * 1_000_000))
            .collect();
        let rows: Vec<_> = rows
            .iter()
            .map(|(id, ts)| (id.as_str(), "r", *ts, "j"))
            .collect();
        let keep = Dropped {
            replaced: Arc::default(),
            merged: Arc::default(),
        };
        let date = NaiveDate::from_ymd_opt(1970, 1, 1).unwrap();
        lake.rewrite_partition(product, date, &[], 1, &keep, Some(batch(&rows)))
            .await
            .unwrap();
        let objects = lake.list_partition(product, date).await.unwrap();
        assert_eq!(objects.len(), 1);
        let size = objects[0].size;

        let before = lake.traffic();
        let whole: Vec<RecordBatch> = lake.batches(&objects).try_collect().await.unwrap();
        let one = lake.traffic().since(before);
        assert_eq!((one.gets, one.get_bytes), (1, size));

        let before = lake.traffic();
        let ranged: Vec<RecordBatch> = lake
            .batches_fetching(&objects, 0)
            .try_collect()
            .await
            .unwrap();
        let by_ranges = lake.traffic().since(before);
        assert!(by_ranges.gets >= 2, "footer, then the row group");
        assert_eq!(ranged, whole);
        assert_eq!(whole.iter().map(RecordBatch::num_rows).sum::<usize>(), 5000);
    }
}
