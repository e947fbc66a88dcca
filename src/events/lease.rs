//! The writer lease's events: which replica writes, since when, and how fresh its lease is.
//! `max(dpss_sync_writer_lease_held) < 1` across replicas means nobody syncs; more than one
//! `dpss_sync_leader` at 1 for longer than a lease period means the fencing is doing its job.

use metrics::{counter, describe_counter, describe_gauge, gauge};

use super::InternalEvent;
use crate::model::LeaseStatus;

/// This replica's standing with the lease changed.
pub struct LeaseChanged<'a> {
    pub status: &'a LeaseStatus,
    /// This replica (its host name, the pod name under Kubernetes).
    pub replica: &'a str,
    /// Who this process is, for the log line.
    pub holder: &'a str,
}

impl InternalEvent for LeaseChanged<'_> {
    fn emit(self) {
        let leader = match self.status {
            LeaseStatus::Held { epoch } => {
                tracing::info!(holder = self.holder, epoch, "holding the writer lease");
                if *epoch > 1 {
                    counter!("dpss_sync_lease_takeovers_total").increment(1);
                }
                1.0
            }
            LeaseStatus::Standby { holder } => {
                let leader = holder.as_ref().map(|h| h.to_string()).unwrap_or_default();
                tracing::info!(%leader, "standing by: another replica holds the writer lease");
                0.0
            }
            LeaseStatus::Lost { epoch, reason } => {
                tracing::warn!(
                    epoch,
                    %reason,
                    "lost the writer lease: the cycle in flight stops at its next stage, its jobs stay recorded for the next leader"
                );
                0.0
            }
        };
        gauge!("dpss_sync_writer_lease_held").set(leader);
        gauge!("dpss_sync_leader", "replica" => self.replica.to_string()).set(leader);
    }
}

/// Seconds since the lease's holder last renewed it, as this replica reads the state.
pub struct LeaseAge {
    pub seconds: f64,
}

impl InternalEvent for LeaseAge {
    fn emit(self) {
        gauge!("dpss_sync_lease_age_seconds").set(self.seconds);
    }
}

pub(super) fn register_metrics() {
    describe_gauge!(
        "dpss_sync_writer_lease_held",
        "1 while this process holds the writer lease"
    );
    describe_gauge!(
        "dpss_sync_leader",
        "1 on the replica that holds the writer lease, 0 on standbys"
    );
    describe_gauge!(
        "dpss_sync_lease_age_seconds",
        "Seconds since the writer lease was last renewed (PostgreSQL state)"
    );
    describe_counter!(
        "dpss_sync_lease_takeovers_total",
        "Times this replica took the writer lease after another holder"
    );
    gauge!("dpss_sync_writer_lease_held").set(0.0);
    counter!("dpss_sync_lease_takeovers_total").absolute(0);
}
