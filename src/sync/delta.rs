//! Committing a write to a Delta lake, and resolving a commit a crash left half-recorded.
//!
//! The order is what makes a crash harmless: the state records the commit it is about to make
//! (`pending_commits`, with an id), the quarantine table commits, then the data table (always,
//! even with no file changed, since its `txn` is what says the window landed), then the state
//! commit deletes the record. A record found on open is looked up in the data table's log by its
//! id: found, the state commit is made from the record; not found, the write's files are
//! removed and the window runs again. Housekeeping follows a commit that wrote a checkpoint.

use std::collections::BTreeSet;

use object_store::ObjectMeta;

use super::write::{DeltaWrite, Written};
use super::{Pipeline, SyncError};
use crate::events::{DeltaCommitResolved, DeltaCommitted, DeltaVacuumed, InternalEvent};
use crate::lake::Lake;
use crate::lake::delta::{CommitNote, Table, TableKind};
use crate::product::Product;
use crate::state::{PendingCommit, Rewrite, State, TableCommit};

impl Pipeline {
    pub(super) async fn commit_delta(
        &self,
        product: Product,
        job_id: &str,
        key: &str,
        written: Written,
        delta: DeltaWrite,
        window: Option<i64>,
    ) -> Result<(), SyncError> {
        let DeltaWrite {
            tables,
            data,
            quarantine,
        } = delta;
        let (mut table, mut quarantine_table) = (tables.data, tables.quarantine);
        if data.is_empty() && quarantine.is_empty() {
            // Nothing changed (every partition came back as it was): no commit to make.
            self.state
                .commit_partitions(
                    product,
                    &written.partitions,
                    &[],
                    job_id,
                    window.map(|id| (id, written.counts)),
                    Some(TableCommit {
                        txn: table.txn_version(product).await?.unwrap_or(0),
                        version: table.version(),
                    }),
                )
                .await?;
            return Ok(());
        }
        // Past every transaction either table or a begun commit holds, so a commit retried after
        // a crash never repeats a version the log already has.
        let txn = [
            table.txn_version(product).await?,
            quarantine_table.txn_version(product).await?,
            self.state.last_pending_txn(product).await?,
        ]
        .into_iter()
        .flatten()
        .max()
        .unwrap_or(0)
            + 1;
        let pending = PendingCommit {
            txn,
            commit_id: uuid::Uuid::new_v4().to_string(),
            window_id: window,
            base_version: table.version(),
            job_id: job_id.to_string(),
            counts: written.counts,
            partitions: written.partitions,
        };
        self.state.begin_table_commit(product, &pending).await?;
        crate::fail_point!("after-write");
        let note = CommitNote {
            product,
            txn,
            commit_id: pending.commit_id.clone(),
            window: Some(key.to_string()),
            job_id: job_id.to_string(),
        };
        self.state.ensure_writer()?;
        if !quarantine.is_empty() {
            let done = quarantine_table.commit(&quarantine, &note).await?;
            DeltaCommitted {
                product,
                table: "quarantine",
                version: done.version,
                txn,
                window: Some(key),
                added: quarantine.adds.len(),
                removed: quarantine.removes.len(),
                checkpoint: done.checkpoint,
            }
            .emit();
            if done.checkpoint {
                vacuum(&mut quarantine_table, product, &self.lake).await;
            }
            crate::fail_point!("between-log-commits");
        }
        let done = table.commit(&data, &note).await?;
        crate::fail_point!("after-log-commit");
        self.state
            .commit_partitions(
                product,
                &pending.partitions,
                &[],
                job_id,
                window.map(|id| (id, pending.counts)),
                Some(TableCommit {
                    txn,
                    version: done.version,
                }),
            )
            .await?;
        crate::fail_point!("after-commit");
        DeltaCommitted {
            product,
            table: "data",
            version: done.version,
            txn,
            window: Some(key),
            added: data.adds.len(),
            removed: data.removes.len(),
            checkpoint: done.checkpoint,
        }
        .emit();
        if done.checkpoint {
            vacuum(&mut table, product, &self.lake).await;
        }
        Ok(())
    }
}

/// VACUUM after a checkpoint: as often as readers get a compact log, the files removed longer than
/// `lake.retention` ago go. A failure is logged; the next checkpoint tries again.
async fn vacuum(table: &mut Table, product: Product, lake: &Lake) {
    let name = match table.kind() {
        TableKind::Data => "data",
        TableKind::Quarantine => "quarantine",
    };
    match table.vacuum(lake.retention()).await {
        Ok(files) => DeltaVacuumed {
            product,
            table: name,
            files,
        }
        .emit(),
        Err(e) => tracing::warn!(
            product = %product, table = %table.display(), error = %e,
            "VACUUM failed; the next checkpoint tries again"
        ),
    }
}

/// Resolves the commits a crash left begun (see the module's doc), then removes what the
/// interrupted writes put and the tables do not name, and closes their rewrites. Returns the
/// objects removed.
pub(super) async fn repair(
    state: &State,
    lake: &Lake,
    product: Product,
) -> Result<usize, SyncError> {
    let pending = state.pending_table_commits(product).await?;
    let rewrites = state.open_rewrites(product).await?;
    if pending.is_empty() && rewrites.is_empty() {
        return Ok(0);
    }
    let removed = resolve(state, lake, product, &pending, &rewrites).await?;
    for r in state.open_rewrites(product).await? {
        state.end_rewrite(r.id).await?;
    }
    Ok(removed)
}

async fn resolve(
    state: &State,
    lake: &Lake,
    product: Product,
    pending: &[PendingCommit],
    rewrites: &[Rewrite],
) -> Result<usize, SyncError> {
    let Some(mut table) = lake.open_table(product, TableKind::Data).await? else {
        // No table: nothing was ever committed, so no begun commit landed.
        for p in pending {
            state.drop_table_commit(product, p.txn).await?;
        }
        return remove_untracked(lake, product, rewrites, None, None).await;
    };
    for p in pending {
        let landed = table.find_commit(p.base_version, &p.commit_id).await?;
        match landed {
            Some(version) => {
                state
                    .commit_partitions(
                        product,
                        &p.partitions,
                        &[],
                        &p.job_id,
                        p.window_id.map(|id| (id, p.counts)),
                        Some(TableCommit {
                            txn: p.txn,
                            version,
                        }),
                    )
                    .await?
            }
            None => state.drop_table_commit(product, p.txn).await?,
        }
        DeltaCommitResolved {
            product,
            txn: p.txn,
            landed,
        }
        .emit();
    }
    // A landed commit's state commit closed its rewrites; the rest never landed.
    let open = state.open_rewrites(product).await?;
    let quarantine = lake.open_table(product, TableKind::Quarantine).await?;
    remove_untracked(lake, product, &open, Some(&table), quarantine.as_ref()).await
}

/// Objects an interrupted write put (its token is in their names) that the tables do not name:
/// never committed, so no reader can be using them. Another writer's objects carry another
/// token and are left alone; untracked objects of any origin older than `lake.retention` are
/// VACUUM's.
async fn remove_untracked(
    lake: &Lake,
    product: Product,
    rewrites: &[Rewrite],
    table: Option<&Table>,
    quarantine: Option<&Table>,
) -> Result<usize, SyncError> {
    let tokens: BTreeSet<&str> = rewrites.iter().filter_map(|r| r.token.as_deref()).collect();
    if tokens.is_empty() {
        return Ok(0);
    }
    let crashed_and_untracked =
        |objects: Vec<ObjectMeta>, tracked: Option<&Table>| -> Vec<String> {
            objects
                .into_iter()
                .filter(|m| {
                    m.location
                        .filename()
                        .is_some_and(|n| tokens.iter().any(|t| n.contains(t)))
                })
                .filter(|m| !tracked.is_some_and(|t| t.tracks(&m.location)))
                .map(|m| m.location.to_string())
                .collect()
        };
    let mut doomed = Vec::new();
    for r in rewrites.iter().filter(|r| r.token.is_some()) {
        let listed = lake.list_partition(product, r.partition).await?;
        doomed.extend(crashed_and_untracked(listed, table));
    }
    doomed.extend(crashed_and_untracked(
        lake.list_quarantine(product).await?,
        quarantine,
    ));
    lake.delete_objects(&doomed).await?;
    Ok(doomed.len())
}
