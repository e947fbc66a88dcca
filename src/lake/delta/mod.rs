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

use chrono::{DateTime, NaiveDate, Utc};
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, Remove, Transaction};
use deltalake_core::operations::vacuum::VacuumMode;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError};
use object_store::ObjectMeta;
use object_store::path::Path;

use super::LakeError;
use crate::product::Product;

mod create;
mod log;

use log::SeenCommit;

/// Attempts at one commit when other writers keep committing elsewhere in the table.
const COMMIT_ATTEMPTS: usize = 5;

/// The key of this tool's entry in each commit's `commitInfo`.
const COMMIT_INFO_KEY: &str = "dpss_sync";

/// Which of a product's two tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// `<lake>/<product>`, partitioned by the product's partition column.
    Data,
    /// `<lake>/_quarantine/<product>`, partitioned by its quarantine day (or `unknown`).
    Quarantine,
}

impl TableKind {
    /// The partition column of `product`'s table of this kind.
    pub(super) fn partition_column(self, product: Product) -> &'static str {
        let d = product.declaration();
        match self {
            TableKind::Data => &d.partition_name,
            TableKind::Quarantine => &d.quarantine_partition,
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
    /// The table's partition column.
    partition: &'static str,
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
        partition_value(location, self.partition)
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
        relative_to(&self.root, location)
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
            LakeError::from(DeltaError::Table {
                table: self.display.clone(),
                source,
            })
        }
    }

    /// A remove action for each of `objects` (files of this version), stamped now.
    pub fn removes(&self, objects: &[ObjectMeta]) -> Vec<Remove> {
        let now = Utc::now().timestamp_millis();
        let column = self.partition;
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
        objects
            .iter()
            .map(|(path, size, rows)| {
                add_action(&self.root, self.partition, path, *size, Some(*rows))
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
        let column = self.partition;
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
                            return Err(LakeError::from(DeltaError::Conflict {
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
                            return Err(LakeError::from(DeltaError::MetadataChanged {
                                table: self.display.clone(),
                                version,
                            }));
                        }
                        if let Some(theirs) = seen.txns.get(note.product.config_name())
                            && *theirs >= note.txn
                        {
                            return Err(LakeError::from(DeltaError::TxnTaken {
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
        Err(LakeError::from(DeltaError::Contended {
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
        self.files = files_by_partition(&self.table, &self.root, self.partition);
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
        Ok(SeenCommit::parse(&bytes, self.partition))
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
        self.files = files_by_partition(&self.table, &self.root, self.partition);
        Ok(metrics.files_deleted.len())
    }
}

fn relative_to<'a>(root: &Path, location: &'a Path) -> &'a str {
    let full = location.as_ref();
    full.strip_prefix(root.as_ref())
        .map(|r| r.trim_start_matches('/'))
        .unwrap_or(full)
}

/// The add action of an object at `path` in the lake's store, under the table rooted at `root`;
/// `rows` become its statistics when known.
fn add_action(root: &Path, column: &str, path: &str, size: u64, rows: Option<u64>) -> Add {
    let location = Path::from(path);
    Add {
        path: relative_to(root, &location).to_string(),
        partition_values: HashMap::from([(column.to_string(), partition_value(&location, column))]),
        size: size as i64,
        modification_time: Utc::now().timestamp_millis(),
        data_change: true,
        stats: rows.map(|n| format!("{{\"numRecords\":{n}}}")),
        tags: None,
        deletion_vector: None,
        base_row_id: None,
        default_row_commit_version: None,
        clustering_provider: None,
    }
}

/// The partition value of `column` in an object path (`…/<column>=2024-06-01/part-….parquet`).
fn partition_value(location: &Path, column: &str) -> Option<String> {
    let prefix = format!("{column}=");
    location
        .parts()
        .find_map(|p| p.as_ref().strip_prefix(&prefix).map(str::to_string))
}

fn files_by_partition(
    table: &DeltaTable,
    root: &Path,
    column: &str,
) -> BTreeMap<String, Vec<ObjectMeta>> {
    let mut out: BTreeMap<String, Vec<ObjectMeta>> = BTreeMap::new();
    let Ok(snapshot) = table.snapshot() else {
        return out;
    };
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

/// The partition value of a day.
pub fn day_value(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

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
