//! Opening and creating a product's tables: the log store over the lake's own store, the schema,
//! partitioning and properties this tool writes, and the check that an existing table has them.

use std::sync::Arc;

use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::{Action, DataType, StructField, StructType};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::SaveMode;
use deltalake_core::{DeltaTable, DeltaTableError, TableProperty};
use object_store::ObjectStore;
use object_store::path::Path;

use super::{DeltaError, Table, TableKind, add_action, files_by_partition, partition_value};
use crate::lake::{Lake, LakeError};
use crate::product::Product;

/// The columns, partitioning and properties a table of this tool has.
struct Spec {
    columns: Vec<StructField>,
    partition: &'static str,
    name: String,
    comment: String,
}

impl Spec {
    fn of(product: Product, kind: TableKind) -> Self {
        let (schema, partition_type, name, comment) = match kind {
            TableKind::Data => (
                product.lake_schema(),
                DataType::DATE,
                product.config_name().to_string(),
                format!(
                    "{} from Itron DPSS, written by dpss-sync",
                    product.config_name()
                ),
            ),
            TableKind::Quarantine => (
                product.quarantine_schema(),
                DataType::STRING,
                format!("{}_quarantine", product.config_name()),
                format!(
                    "rows of {} that failed validation, with their raw text and the reason",
                    product.config_name()
                ),
            ),
        };
        let kernel: StructType = schema
            .as_ref()
            .try_into_kernel()
            .expect("the lake's Arrow types all have Delta types");
        let mut columns: Vec<StructField> = kernel.fields().cloned().collect();
        columns.push(StructField::new(
            kind.partition_column(product),
            partition_type,
            false,
        ));
        Spec {
            columns,
            partition: kind.partition_column(product),
            name,
            comment,
        }
    }

    /// The first way `table` differs from this spec, named.
    fn difference(&self, table: &DeltaTable) -> Option<String> {
        let snapshot = table.snapshot().ok()?;
        let partitions = snapshot.metadata().partition_columns();
        if partitions != [self.partition.to_string()] {
            return Some(format!(
                "partitioned by [{}], expected [{}]",
                partitions.join(", "),
                self.partition
            ));
        }
        let schema = snapshot.schema();
        for want in &self.columns {
            match schema.field(want.name()) {
                None => return Some(format!("column `{}` is missing", want.name())),
                Some(have) if have.data_type() != want.data_type() => {
                    return Some(format!(
                        "column `{}` is {:?}, expected {:?}",
                        want.name(),
                        have.data_type(),
                        want.data_type()
                    ));
                }
                Some(have) if have.is_nullable() && !want.is_nullable() => {
                    return Some(format!(
                        "column `{}` is nullable, expected non-null",
                        want.name()
                    ));
                }
                Some(_) => {}
            }
        }
        let extra: Vec<&str> = schema
            .fields()
            .map(|f| f.name().as_str())
            .filter(|n| !self.columns.iter().any(|c| c.name() == *n))
            .collect();
        (!extra.is_empty()).then(|| format!("unexpected columns: {}", extra.join(", ")))
    }
}

impl Lake {
    fn table_root(&self, product: Product, kind: TableKind) -> Path {
        match kind {
            TableKind::Data => self.table(product),
            TableKind::Quarantine => self.quarantine_root(product),
        }
    }

    /// The log store of one table over the lake's store. Delta names objects by URL, so a local
    /// lake is handed over as the file system root with the table's absolute URL.
    fn log_store(&self, root: &Path) -> Result<(LogStoreRef, String), LakeError> {
        let bad = |reason: String| LakeError::BadUrl {
            url: self.display.clone(),
            reason,
        };
        let (store, url): (Arc<dyn ObjectStore>, url::Url) = match &self.local {
            Some(dir) => (
                Arc::new(object_store::local::LocalFileSystem::new()),
                std::fs::canonicalize(dir)
                    .ok()
                    .and_then(|d| url::Url::from_directory_path(d.join(root.as_ref())).ok())
                    .ok_or_else(|| bad("not a usable directory".into()))?,
            ),
            None => {
                let mut url = self.url.clone();
                url.set_path(&format!("/{}/", root.as_ref()));
                (self.store.clone(), url)
            }
        };
        let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
        let prefixed = Arc::new(object_store::prefix::PrefixStore::new(
            store.clone(),
            prefix,
        ));
        let display = url.to_string();
        Ok((
            default_logstore(prefixed, store, &url, &StorageConfig::default()),
            display,
        ))
    }

    /// Whether the product's data directory holds a Delta log: the Hive layout must not write
    /// there, since a listing would also read the files the table's commits removed.
    pub async fn holds_delta_table(&self, product: Product) -> bool {
        let log = self.table(product).join("_delta_log");
        // A store that cannot list here cannot be written either: the write reports that, with
        // the object it failed on; this guard only speaks when it can see a log.
        self.store
            .list_with_delimiter(Some(&log))
            .await
            .is_ok_and(|listing| !listing.objects.is_empty())
    }

    /// The table's current version, or `None` where no table is yet.
    pub async fn open_table(
        &self,
        product: Product,
        kind: TableKind,
    ) -> Result<Option<Table>, LakeError> {
        let root = self.table_root(product, kind);
        let (log_store, display) = self.log_store(&root)?;
        let err = |source| {
            LakeError::from(DeltaError::Table {
                table: display.clone(),
                source,
            })
        };
        // One listing of `_delta_log`: a table nobody created yet is not an error.
        if !log_store.is_delta_table_location().await.map_err(err)? {
            return Ok(None);
        }
        let mut table = DeltaTable::new(log_store);
        match table.load().await {
            Ok(()) => {}
            Err(DeltaTableError::NotATable(_)) => return Ok(None),
            Err(source) => return Err(err(source)),
        }
        let partition = kind.partition_column(product);
        let files = files_by_partition(&table, &root, partition);
        Ok(Some(Table {
            kind,
            partition,
            display,
            root,
            table,
            files,
        }))
    }

    /// The table, created if missing: the schema and partitioning of this tool, the product and
    /// housekeeping settings as table properties. Parquet objects already in its directory (a
    /// lake that was `parquet` until now) are adopted by the first version, so switching the
    /// format loses nothing. A table that differs from what this tool writes is refused, the
    /// difference named.
    pub async fn ensure_table(
        &self,
        product: Product,
        kind: TableKind,
    ) -> Result<Table, LakeError> {
        let spec = Spec::of(product, kind);
        if let Some(table) = self.open_table(product, kind).await? {
            return match spec.difference(&table.table) {
                None => Ok(table),
                Some(detail) => Err(LakeError::from(DeltaError::Mismatch {
                    table: table.display,
                    detail,
                })),
            };
        }
        let root = self.table_root(product, kind);
        let (log_store, display) = self.log_store(&root)?;
        let existing: Vec<(String, u64)> = self
            .list(&root)
            .await?
            .into_iter()
            .filter(|m| {
                m.location.as_ref().ends_with(".parquet")
                    && partition_value(&m.location, kind.partition_column(product)).is_some()
            })
            .map(|m| (m.location.to_string(), m.size))
            .collect();
        // Rows unknown without reading them: adopted files carry no statistics.
        let adopted: Vec<Action> = existing
            .iter()
            .map(|(path, size)| {
                Action::Add(add_action(
                    &root,
                    kind.partition_column(product),
                    path,
                    *size,
                    None,
                ))
            })
            .collect();
        let retention = format!("interval {} seconds", self.retention.as_secs());
        CreateBuilder::new()
            .with_log_store(log_store)
            .with_table_name(spec.name.clone())
            .with_comment(spec.comment.clone())
            .with_columns(spec.columns.clone())
            .with_partition_columns([spec.partition])
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(self.checkpoint_interval.to_string()),
            )
            .with_configuration_property(
                TableProperty::DeletedFileRetentionDuration,
                Some(retention),
            )
            .with_configuration([
                ("dpss_sync.product", Some(product.config_name().to_string())),
                (
                    "dpss_sync.table",
                    Some(match kind {
                        TableKind::Data => "data".to_string(),
                        TableKind::Quarantine => "quarantine".to_string(),
                    }),
                ),
            ])
            // Our own keys beside Delta's (`dpss_sync.*`): readers ignore properties they do not know.
            .with_raise_if_key_not_exists(false)
            .with_actions(adopted)
            .with_save_mode(SaveMode::Ignore)
            .await
            .map_err(|source| {
                LakeError::from(DeltaError::Table {
                    table: display.clone(),
                    source,
                })
            })?;
        let shown = &display;
        tracing::info!(table = %shown, adopted = existing.len(), "created the Delta table");
        self.open_table(product, kind).await?.ok_or_else(|| {
            LakeError::from(DeltaError::Mismatch {
                table: display,
                detail: "the table was created but cannot be read back".into(),
            })
        })
    }
}
