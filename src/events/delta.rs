//! What the Delta tables did: commits with their version, housekeeping (checkpoints, vacuums),
//! and commits a crash left between the log and the state, resolved from the log.

use metrics::{counter, gauge};

use super::InternalEvent;
use crate::product::Product;

/// A commit landed in one of a product's tables.
pub struct DeltaCommitted<'a> {
    pub product: Product,
    /// `data` or `quarantine`.
    pub table: &'static str,
    pub version: u64,
    pub txn: i64,
    pub window: Option<&'a str>,
    pub added: usize,
    pub removed: usize,
    pub checkpoint: bool,
}

impl InternalEvent for DeltaCommitted<'_> {
    fn emit(self) {
        tracing::info!(
            product = %self.product, table = self.table, version = self.version, txn = self.txn,
            window = self.window, files_added = self.added, files_removed = self.removed,
            checkpoint = self.checkpoint, "committed to the Delta table"
        );
        let p = self.product.config_name();
        counter!("dpss_sync_delta_commits_total", "product" => p, "table" => self.table)
            .increment(1);
        counter!("dpss_sync_delta_files_added_total", "product" => p, "table" => self.table)
            .increment(self.added as u64);
        counter!("dpss_sync_delta_files_removed_total", "product" => p, "table" => self.table)
            .increment(self.removed as u64);
        gauge!("dpss_sync_delta_table_version", "product" => p, "table" => self.table)
            .set(self.version as f64);
        if self.checkpoint {
            counter!("dpss_sync_delta_checkpoints_total", "product" => p, "table" => self.table)
                .increment(1);
        }
    }
}

/// Files `VACUUM` deleted: removed by a commit longer than `lake.retention` ago, or never committed.
pub struct DeltaVacuumed {
    pub product: Product,
    pub table: &'static str,
    pub files: usize,
}

impl InternalEvent for DeltaVacuumed {
    fn emit(self) {
        tracing::info!(
            product = %self.product, table = self.table, files = self.files,
            "vacuumed the Delta table"
        );
        counter!("dpss_sync_delta_files_vacuumed_total", "product" => self.product.config_name(), "table" => self.table)
            .increment(self.files as u64);
    }
}

/// A commit the state had begun and not finished (the process died between the log commit and
/// the state's), resolved from the table's log.
pub struct DeltaCommitResolved {
    pub product: Product,
    pub txn: i64,
    /// The version the log holds it at, or `None` when it never landed.
    pub landed: Option<u64>,
}

impl InternalEvent for DeltaCommitResolved {
    fn emit(self) {
        match self.landed {
            Some(version) => tracing::warn!(
                product = %self.product, txn = self.txn, version,
                "an interrupted write had committed to the Delta table: its window is recorded as committed"
            ),
            None => tracing::warn!(
                product = %self.product, txn = self.txn,
                "an interrupted write never committed to the Delta table: its files are removed and its window runs again"
            ),
        }
        counter!(
            "dpss_sync_delta_commits_resolved_total",
            "product" => self.product.config_name(),
            "landed" => if self.landed.is_some() { "true" } else { "false" }
        )
        .increment(1);
    }
}
