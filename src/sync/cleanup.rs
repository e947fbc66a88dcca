//! What a killed process leaves behind, cleaned up by the next writer: downloads and scratch
//! files, and lake objects of a rewrite that never committed.

use std::collections::HashSet;
use std::path::Path;

use super::SyncError;
use crate::decode;
use crate::events::{InternalEvent, LakeRepaired};
use crate::lake::Lake;
use crate::product::Product;
use crate::state::State;

/// What a killed (or failed) writer left in the lake of `product`, undone from the state's record:
/// objects of a rewrite that never committed (any object its partition did not have before), the
/// local store's half-written staging files beside them, and objects a committed rewrite replaced
/// whose deletion did not finish. Only partitions with such a record are listed.
pub async fn repair_lake(state: &State, lake: &Lake, product: Product) -> Result<(), SyncError> {
    let rewrites = state.open_rewrites(product).await?;
    let mut orphans = 0;
    if let Some(since) = rewrites.iter().map(|r| r.started_at).min() {
        orphans += lake.remove_quarantine_staging(product, since);
        for r in &rewrites {
            orphans += lake.remove_staging(product, r.partition, r.started_at);
        }
    }
    if lake.is_delta() {
        orphans += super::delta::repair(state, lake, product).await?;
        LakeRepaired {
            product,
            orphans,
            doomed: 0,
        }
        .emit();
        return Ok(());
    }
    for r in rewrites {
        let extra: Vec<String> = lake
            .list_partition(product, r.partition)
            .await?
            .into_iter()
            .map(|m| m.location.to_string())
            .filter(|p| !r.before.contains(p))
            .collect();
        lake.delete_objects(&extra).await?;
        orphans += extra.len();
        state.end_rewrite(r.id).await?;
    }
    let doomed = state.doomed_objects(product).await?;
    lake.delete_objects(&doomed).await?;
    state.forget_doomed(&doomed).await?;
    LakeRepaired {
        product,
        orphans,
        doomed: doomed.len(),
    }
    .emit();
    Ok(())
}

/// Leftovers of a killed process: `.part` files (half-written downloads, never resumed),
/// scratch copies of columnar parts and spill directories, and zips of jobs no window is still working on (one killed
/// between commit and clean-up).
pub(super) async fn clean_downloads(
    dir: &Path,
    state: &State,
    products: impl Iterator<Item = Product>,
) -> Result<(), SyncError> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(());
    };
    let mut live = HashSet::new();
    for product in products {
        for w in state.in_flight(product).await? {
            live.extend(w.job_id);
        }
    }
    for e in entries.flatten() {
        let path = e.path();
        let scratch = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(decode::SCRATCH_PREFIX));
        let stale = scratch
            || match path.extension().and_then(|x| x.to_str()) {
                Some("part") => true,
                Some("zip") => path
                    .file_stem()
                    .and_then(|s| s.to_str())
                    .is_some_and(|job| !live.contains(job)),
                _ => false,
            };
        if stale && path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else if stale {
            let _ = std::fs::remove_file(&path);
        }
    }
    Ok(())
}
