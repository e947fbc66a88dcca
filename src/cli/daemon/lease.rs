//! Following the writer lease: every change is logged and counted, and gaining it starts a
//! cycle for every product at once, so a standby that takes over resumes the recorded jobs of
//! the replica it replaces within a lease period, not at the next tick.

use std::sync::Arc;

use super::{Shared, cycle};
use crate::events::{InternalEvent, LeaseChanged};
use crate::model::LeaseStatus;
use crate::state::lease::hostname;

pub(super) async fn follow(shared: Arc<Shared>) {
    let Some(mut status) = shared.pipeline.state.lease_watch() else {
        return;
    };
    let replica = hostname();
    let me = shared
        .pipeline
        .state
        .lease()
        .map(|h| h.to_string())
        .unwrap_or_default();
    loop {
        let now = status.borrow_and_update().clone();
        LeaseChanged {
            status: &now,
            replica: &replica,
            holder: &me,
        }
        .emit();
        if matches!(now, LeaseStatus::Held { .. }) {
            for product in shared.turns.keys() {
                tokio::spawn(cycle(shared.clone(), *product));
            }
        }
        if status.changed().await.is_err() {
            return;
        }
    }
}
