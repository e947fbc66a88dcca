//! Crash points for the crash-consistency tests: with `DPSS_SYNC_FAILPOINT=<name>` set, the
//! process aborts (as abruptly as SIGKILL: no destructors, no flush) when it reaches that point.
//! Unset, each check is one load of a cached value.

use std::sync::OnceLock;

/// The stage boundaries a crash test can stop at, in the order a window passes them.
pub const POINTS: [&str; 5] = [
    "after-submit",
    "after-download",
    "mid-write",
    "after-write",
    "after-commit",
];

pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var("DPSS_SYNC_FAILPOINT")
            .ok()
            .filter(|s| !s.is_empty())
    });
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: aborting");
        std::process::abort();
    }
}
