//! Crash points for the crash-consistency tests: with `DPSS_SYNC_FAILPOINT=<name>[:<action>]` set,
//! the process acts when it reaches that point: `abort` (the default; as abrupt as SIGKILL: no
//! destructors, no flush), `panic` (unwinds, as a bug would) or `hang` (the thread never returns,
//! as a stuck call would). Unset, each check is one load of a cached value. Compiled only with
//! the `failpoints` feature (`scripts/test` turns it on); see [`crate::fail_point!`].

use std::sync::OnceLock;

/// The stage boundaries a crash test can stop at, in the order a window passes them.
pub const POINTS: [&str; 6] = [
    "after-submit",
    "after-download",
    "between-puts",
    "mid-write",
    "after-write",
    "after-commit",
];

/// The points only a Delta lake passes: between the quarantine table's commit and the data
/// table's, and between the data table's commit and the state's.
pub const DELTA_POINTS: [&str; 2] = ["between-log-commits", "after-log-commit"];

pub fn hit(name: &str) {
    static ARMED: OnceLock<Option<(String, String)>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        let spec = std::env::var("DPSS_SYNC_FAILPOINT").ok()?;
        let (point, action) = spec.split_once(':').unwrap_or((&spec, "abort"));
        (!point.is_empty()).then(|| (point.to_string(), action.to_string()))
    });
    let Some((point, action)) = armed else {
        return;
    };
    if point != name {
        return;
    }
    eprintln!("failpoint {name}: {action}");
    match action.as_str() {
        "panic" => panic!("failpoint {name}"),
        "hang" => loop {
            std::thread::park();
        },
        _ => std::process::abort(),
    }
}
