//! The lake as Delta Lake tables (`lake.format = "delta"`): the same Hive paths and Parquet
//! objects, published by a transaction log instead of by listing.
//!
//! A write puts its objects under names no other write uses, then one commit removes the files it
//! replaces and adds the new ones, carrying `txn { appId: <product>, version: <sequence> }`. The
//! log entry is a put-if-absent (`object_store`'s conditional put on every store we support), so
//! two writers never both commit a version; a commit that lost the race is retried on the new
//! version only when the winner touched none of its partitions, and fails cleanly otherwise. Old
//! files stay for time travel until `VACUUM` removes them after `lake.retention`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, NaiveDate, Utc};
use deltalake_core::kernel::engine::arrow_conversion::TryIntoKernel;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, DataType, Remove, StructField, StructType, Transaction};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::operations::vacuum::VacuumMode;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError, TableProperty};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use serde_json::Value;

use super::{Lake, LakeError};
use crate::product::Product;

/// Attempts at one commit when other writers keep committing elsewhere in the table.
const COMMIT_ATTEMPTS: usize = 5;

/// The key of this tool's entry in each commit's `commitInfo`.
const COMMIT_INFO_KEY: &str = "dpss_sync";

/// Which of a product's two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `<lake>/<product>`, partitioned by `event_date`.
    Data,
    /// `<lake>/_quarantine/<product>`, partitioned by `status_date` (a day, or `unknown`).
    Quarantine,
}

impl TableKind {
    fn partition_column(self) -> &'static str {
        match self {
            TableKind::Data => "event_date",
            TableKind::Quarantine => "status_date",
        }
    }
}

/// Why a commit did not land. Each names what the other writer did.
#[derive(Debug, thiserror::Error)]
pub enum DeltaError {
    #[error("Delta table {table}: {source}")]
    Table {
        table: String,
        #[source]
        source: DeltaTableError,
    },
    #[error(
        "Delta table {table}: version {version} was committed by another writer with transaction {app_id}/{theirs}, at or past this write's {ours}; this window is not committed (the next run starts from the new version)"
    )]
    TxnTaken {
        table: String,
        version: u64,
        app_id: String,
        theirs: i64,
        ours: i64,
    },
    #[error(
        "Delta table {table}: version {version}, committed by another writer meanwhile, changed the same partitions ({partitions}); this window is not committed"
    )]
    Conflict {
        table: String,
        version: u64,
        partitions: String,
    },
    #[error(
        "Delta table {table}: version {version}, committed by another writer meanwhile, changed the table's schema or protocol; this window is not committed"
    )]
    MetadataChanged { table: String, version: u64 },
    #[error("Delta table {table}: gave up after {attempts} commits lost to other writers")]
    Contended { table: String, attempts: usize },
    #[error("Delta table {table} does not match what dpss-sync writes: {detail}")]
    Mismatch { table: String, detail: String },
}

/// One loaded version of a table, with its files by partition value.
pub struct Table {
    kind: TableKind,
    display: String,
    /// The table's root in the lake's own store, to name its objects there.
    root: Path,
    table: DeltaTable,
    files: BTreeMap<String, Vec<ObjectMeta>>,
}

/// What a write changes in one table.
#[derive(Debug, Default)]
pub struct Change {
    pub removes: Vec<Remove>,
    pub adds: Vec<Add>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.removes.is_empty() && self.adds.is_empty()
    }

    pub fn merge(changes: impl IntoIterator<Item = Change>) -> Change {
        changes.into_iter().fold(Change::default(), |mut all, c| {
            all.removes.extend(c.removes);
            all.adds.extend(c.adds);
            all
        })
    }

    /// The partition values the change touches, for the conflict check.
    fn partitions(&self, column: &str) -> BTreeSet<String> {
        let adds = self.adds.iter().map(|a| a.partition_values.get(column));
        let removes = self
            .removes
            .iter()
            .map(|r| r.partition_values.as_ref().and_then(|p| p.get(column)));
        adds.chain(removes)
            .filter_map(|v| v.cloned().flatten())
            .collect()
    }
}

/// Who commits: the transaction identifier and what the log should say about the write.
#[derive(Debug, Clone)]
pub struct CommitNote {
    pub product: Product,
    pub txn: i64,
    /// Unique per commit, so a retried commit recognises its own earlier attempt in the log.
    pub commit_id: String,
    pub window: Option<String>,
    pub job_id: String,
}

/// A commit that landed.
#[derive(Debug, Clone, Copy)]
pub struct Committed {
    pub version: u64,
    pub checkpoint: bool,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("table", &self.display)
            .field("version", &self.version())
            .finish()
    }
}

impl Table {
    pub fn version(&self) -> u64 {
        self.table.version().unwrap_or(0)
    }

    pub fn display(&self) -> &str {
        &self.display
    }

    pub fn kind(&self) -> TableKind {
        self.kind
    }

    /// Whether this version names the object.
    pub fn tracks(&self, location: &Path) -> bool {
        partition_value(location, self.kind.partition_column())
            .and_then(|v| self.files.get(&v))
            .is_some_and(|files| files.iter().any(|m| &m.location == location))
    }

    /// The files of one partition in this version, named in the lake's store.
    pub fn partition(&self, value: &str) -> Vec<ObjectMeta> {
        self.files.get(value).cloned().unwrap_or_default()
    }

    /// Every file of this version.
    pub fn all_files(&self) -> impl Iterator<Item = &ObjectMeta> {
        self.files.values().flatten()
    }

    /// The file's path relative to the table root, as the log names it.
    pub fn relative<'a>(&self, location: &'a Path) -> &'a str {
        let full = location.as_ref();
        let root = self.root.as_ref();
        full.strip_prefix(root)
            .map(|r| r.trim_start_matches('/'))
            .unwrap_or(full)
    }

    /// The last `txn` version the table holds for `product`'s writes.
    pub async fn txn_version(&self, product: Product) -> Result<Option<i64>, LakeError> {
        let snapshot = self.table.snapshot().map_err(self.err())?;
        snapshot
            .transaction_version(self.table.log_store().as_ref(), product.config_name())
            .await
            .map_err(self.err())
    }

    /// When the table's current version was committed.
    pub fn committed_at(&self) -> Option<DateTime<Utc>> {
        let snapshot = self.table.snapshot().ok()?;
        snapshot
            .version_timestamp(snapshot.version())
            .and_then(DateTime::from_timestamp_millis)
    }

    fn err(&self) -> impl Fn(DeltaTableError) -> LakeError + '_ {
        move |source| {
            LakeError::Delta(DeltaError::Table {
                table: self.display.clone(),
                source,
            })
        }
    }

    /// A remove action for each of `objects` (files of this version), stamped now.
    pub fn removes(&self, objects: &[ObjectMeta]) -> Vec<Remove> {
        let now = Utc::now().timestamp_millis();
        let column = self.kind.partition_column();
        objects
            .iter()
            .map(|m| Remove {
                path: self.relative(&m.location).to_string(),
                data_change: true,
                deletion_timestamp: Some(now),
                extended_file_metadata: Some(true),
                partition_values: Some(HashMap::from([(
                    column.to_string(),
                    partition_value(&m.location, column),
                )])),
                size: Some(m.size as i64),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            })
            .collect()
    }

    /// An add action for each new object (path in the lake's store, size, rows).
    pub fn adds(&self, objects: &[(String, u64, u64)]) -> Vec<Add> {
        let now = Utc::now().timestamp_millis();
        let column = self.kind.partition_column();
        objects
            .iter()
            .map(|(path, size, rows)| {
                let location = Path::from(path.as_str());
                Add {
                    path: self.relative(&location).to_string(),
                    partition_values: HashMap::from([(
                        column.to_string(),
                        partition_value(&location, column),
                    )]),
                    size: *size as i64,
                    modification_time: now,
                    data_change: true,
                    stats: Some(format!("{{\"numRecords\":{rows}}}")),
                    tags: None,
                    deletion_vector: None,
                    base_row_id: None,
                    default_row_commit_version: None,
                    clustering_provider: None,
                }
            })
            .collect()
    }

    /// Commits `change` on top of this version. A lost race is looked at commit by commit: our
    /// own earlier attempt is success; another writer's commit touching our partitions or the
    /// schema, or holding this product's `txn` at or past ours, fails the commit; anything else
    /// is retried on the new version.
    pub async fn commit(
        &mut self,
        change: &Change,
        note: &CommitNote,
    ) -> Result<Committed, LakeError> {
        let column = self.kind.partition_column();
        let ours = change.partitions(column);
        let mut actions: Vec<Action> = change.removes.iter().cloned().map(Action::Remove).collect();
        actions.extend(change.adds.iter().cloned().map(Action::Add));
        let operation = DeltaOperation::Write {
            mode: if change.removes.is_empty() {
                SaveMode::Append
            } else {
                SaveMode::Overwrite
            },
            partition_by: Some(vec![column.to_string()]),
            predicate: (!change.removes.is_empty()).then(|| {
                let values: Vec<String> = ours.iter().map(|v| format!("'{v}'")).collect();
                format!("{column} IN ({})", values.join(", "))
            }),
        };
        let info = HashMap::from([(
            COMMIT_INFO_KEY.to_string(),
            serde_json::json!({
                "commit_id": note.commit_id,
                "txn": note.txn,
                "window": note.window,
                "job_id": note.job_id,
                "version": env!("CARGO_PKG_VERSION"),
            }),
        )]);
        for _ in 0..COMMIT_ATTEMPTS {
            let base = self.version();
            let properties = CommitProperties::default()
                .with_application_transaction(Transaction::new_with_last_update(
                    note.product.config_name(),
                    note.txn,
                    Some(Utc::now().timestamp_millis()),
                ))
                .with_create_checkpoint(true)
                .with_cleanup_expired_logs(None);
            let attempt = CommitBuilder::from(properties)
                .with_actions(actions.clone())
                .with_app_metadata(info.clone())
                .with_max_retries(0)
                .build(
                    Some(self.table.snapshot().map_err(self.err())?),
                    self.table.log_store(),
                    operation.clone(),
                )
                .await;
            match attempt {
                Ok(done) => {
                    let version = done.version();
                    self.reload().await?;
                    return Ok(Committed {
                        version,
                        checkpoint: done.metrics.new_checkpoint_created,
                    });
                }
                Err(DeltaTableError::VersionAlreadyExists(_))
                | Err(DeltaTableError::Transaction {
                    source:
                        deltalake_core::kernel::transaction::TransactionError::MaxCommitAttempts(_),
                }) => {
                    self.reload().await?;
                    for version in base + 1..=self.version() {
                        let seen = self.read_commit(version).await?;
                        if seen.commit_id.as_deref() == Some(note.commit_id.as_str()) {
                            return Ok(Committed {
                                version,
                                checkpoint: false,
                            });
                        }
                        let overlap: Vec<&String> = seen.partitions.intersection(&ours).collect();
                        if !overlap.is_empty() {
                            return Err(LakeError::Delta(DeltaError::Conflict {
                                table: self.display.clone(),
                                version,
                                partitions: overlap
                                    .iter()
                                    .map(|v| format!("{column}={v}"))
                                    .collect::<Vec<_>>()
                                    .join(", "),
                            }));
                        }
                        if seen.metadata {
                            return Err(LakeError::Delta(DeltaError::MetadataChanged {
                                table: self.display.clone(),
                                version,
                            }));
                        }
                        if let Some(theirs) = seen.txns.get(note.product.config_name())
                            && *theirs >= note.txn
                        {
                            return Err(LakeError::Delta(DeltaError::TxnTaken {
                                table: self.display.clone(),
                                version,
                                app_id: note.product.config_name().to_string(),
                                theirs: *theirs,
                                ours: note.txn,
                            }));
                        }
                    }
                    tracing::warn!(
                        table = %self.display, base, now = self.version(),
                        "other writers committed to other partitions meanwhile; committing again on the new version"
                    );
                }
                Err(e) => return Err(self.err()(e)),
            }
        }
        Err(LakeError::Delta(DeltaError::Contended {
            table: self.display.clone(),
            attempts: COMMIT_ATTEMPTS,
        }))
    }

    /// The version (after `after`) whose commit carries `commit_id`, if it landed: how a crash
    /// between the log commit and the state commit is resolved.
    pub async fn find_commit(
        &mut self,
        after: u64,
        commit_id: &str,
    ) -> Result<Option<u64>, LakeError> {
        self.reload().await?;
        for version in after + 1..=self.version() {
            if self.read_commit(version).await?.commit_id.as_deref() == Some(commit_id) {
                return Ok(Some(version));
            }
        }
        Ok(None)
    }

    async fn reload(&mut self) -> Result<(), LakeError> {
        self.table.update_state().await.map_err(self.err())?;
        self.files = files_by_partition(&self.table, &self.root, self.kind);
        Ok(())
    }

    /// What one commit of the log did, as far as the conflict check and recovery care.
    async fn read_commit(&self, version: u64) -> Result<SeenCommit, LakeError> {
        let bytes = self
            .table
            .log_store()
            .read_commit_entry(version)
            .await
            .map_err(self.err())?
            .unwrap_or_default();
        Ok(SeenCommit::parse(&bytes, self.kind.partition_column()))
    }

    /// Deletes files removed more than `retention` ago, and files no version names that are as
    /// old (a crashed write's leftovers). Returns how many went.
    pub async fn vacuum(&mut self, retention: std::time::Duration) -> Result<usize, LakeError> {
        let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
        let (table, metrics) = self
            .table
            .clone()
            .vacuum()
            .with_retention_period(retention)
            .with_enforce_retention_duration(false)
            .with_mode(VacuumMode::Full)
            .await
            .map_err(self.err())?;
        self.table = table;
        self.files = files_by_partition(&self.table, &self.root, self.kind);
        Ok(metrics.files_deleted.len())
    }
}

/// The actions of one commit that matter to a writer that lost a race to it.
#[derive(Debug, Default)]
struct SeenCommit {
    commit_id: Option<String>,
    txns: HashMap<String, i64>,
    partitions: BTreeSet<String>,
    metadata: bool,
}

impl SeenCommit {
    /// Reads the newline-delimited actions of a commit file; lines it does not know are skipped.
    fn parse(bytes: &[u8], column: &str) -> Self {
        let mut seen = SeenCommit::default();
        for line in bytes.split(|b| *b == b'\n') {
            let Ok(Value::Object(action)) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            for (kind, body) in action {
                match kind.as_str() {
                    "add" | "remove" => {
                        if let Some(v) = body
                            .get("partitionValues")
                            .and_then(|p| p.get(column))
                            .and_then(Value::as_str)
                        {
                            seen.partitions.insert(v.to_string());
                        }
                    }
                    "txn" => {
                        if let (Some(app), Some(v)) = (
                            body.get("appId").and_then(Value::as_str),
                            body.get("version").and_then(Value::as_i64),
                        ) {
                            seen.txns.insert(app.to_string(), v);
                        }
                    }
                    "metaData" | "protocol" => seen.metadata = true,
                    "commitInfo" => {
                        seen.commit_id = body
                            .get(COMMIT_INFO_KEY)
                            .and_then(|i| i.get("commit_id"))
                            .and_then(Value::as_str)
                            .map(str::to_string);
                    }
                    _ => {}
                }
            }
        }
        seen
    }
}

/// The partition value of `column` in an object path (`…/event_date=2024-06-01/part-….parquet`).
fn partition_value(location: &Path, column: &str) -> Option<String> {
    let prefix = format!("{column}=");
    location
        .parts()
        .find_map(|p| p.as_ref().strip_prefix(&prefix).map(str::to_string))
}

fn files_by_partition(
    table: &DeltaTable,
    root: &Path,
    kind: TableKind,
) -> BTreeMap<String, Vec<ObjectMeta>> {
    let mut out: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    let Ok(snapshot) = table.snapshot() else {
        return out;
    };
    let column = kind.partition_column();
    for f in snapshot.log_data().iter() {
        let value = f
            .partition_values_map()
            .get(column)
            .cloned()
            .flatten()
            .unwrap_or_default();
        let location = Path::from(
            format!("{}/{}", root.as_ref(), f.object_store_path().as_ref()).trim_start_matches('/'),
        );
        out.entry(value).or_default().push(ObjectMeta {
            location,
            last_modified: f.modification_datetime().unwrap_or_default(),
            size: f.size() as u64,
            e_tag: None,
            version: None,
        });
    }
    for files in out.values_mut() {
        files.sort_by(|a, b| a.location.cmp(&b.location));
    }
    out
}

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
                crate::normalize::quarantine_schema(),
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
            kind.partition_column(),
            partition_type,
            false,
        ));
        Spec {
            columns,
            partition: kind.partition_column(),
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
    pub async fn holds_delta_table(&self, product: Product) -> Result<bool, LakeError> {
        let log = self.table(product).join("_delta_log");
        let listing = self
            .store
            .list_with_delimiter(Some(&log))
            .await
            .map_err(super::store_err(&log))?;
        Ok(!listing.objects.is_empty())
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
            LakeError::Delta(DeltaError::Table {
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
        let files = files_by_partition(&table, &root, kind);
        Ok(Some(Table {
            kind,
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
                Some(detail) => Err(LakeError::Delta(DeltaError::Mismatch {
                    table: table.display,
                    detail,
                })),
            };
        }
        let root = self.table_root(product, kind);
        let (log_store, display) = self.log_store(&root)?;
        let existing: Vec<(String, u64, u64)> = self
            .list(&root)
            .await?
            .into_iter()
            .filter(|m| {
                m.location.as_ref().ends_with(".parquet")
                    && partition_value(&m.location, kind.partition_column()).is_some()
            })
            .map(|m| (m.location.to_string(), m.size, 0))
            .collect();
        let placeholder = Table {
            kind,
            display: display.clone(),
            root: root.clone(),
            table: DeltaTable::new(log_store.clone()),
            files: BTreeMap::new(),
        };
        let adopted: Vec<Action> = placeholder
            .adds(&existing)
            .into_iter()
            .map(|mut a| {
                a.stats = None;
                Action::Add(a)
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
                LakeError::Delta(DeltaError::Table {
                    table: display.clone(),
                    source,
                })
            })?;
        let shown = &display;
        tracing::info!(table = %shown, adopted = existing.len(), "created the Delta table");
        self.open_table(product, kind).await?.ok_or_else(|| {
            LakeError::Delta(DeltaError::Mismatch {
                table: display,
                detail: "the table was created but cannot be read back".into(),
            })
        })
    }
}

/// The `event_date` partition value of a day.
pub fn day_value(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_file_says_its_partitions_txn_and_author() {
        let log = br#"{"commitInfo":{"timestamp":1,"operation":"WRITE","dpss_sync":{"commit_id":"c-1","txn":7}}}
{"txn":{"appId":"hid_work_orders","version":7,"lastUpdated":1}}
{"remove":{"path":"event_date=2024-06-01/a.parquet","dataChange":true,"partitionValues":{"event_date":"2024-06-01"}}}
{"add":{"path":"event_date=2024-06-02/b.parquet","partitionValues":{"event_date":"2024-06-02"},"size":1,"modificationTime":1,"dataChange":true}}
"#;
        let seen = SeenCommit::parse(log, "event_date");
        assert_eq!(seen.commit_id.as_deref(), Some("c-1"));
        assert_eq!(seen.txns.get("hid_work_orders"), Some(&7));
        assert_eq!(
            seen.partitions,
            BTreeSet::from(["2024-06-01".to_string(), "2024-06-02".to_string()])
        );
        assert!(!seen.metadata);
        assert!(SeenCommit::parse(br#"{"metaData":{}}"#, "event_date").metadata);
    }

    #[test]
    fn partition_values_come_from_the_hive_path() {
        let p = Path::from("lake/hid_work_orders/event_date=2024-06-01/part-1.parquet");
        assert_eq!(
            partition_value(&p, "event_date").as_deref(),
            Some("2024-06-01")
        );
        assert_eq!(partition_value(&p, "status_date"), None);
    }
}
