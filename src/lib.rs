//! dpss-sync keeps a data lake in sync with Itron DPSS data products.
//!
//! The modules follow the data: `config` -> `plan` -> `fetch` (through `api`) -> `decode` ->
//! `normalize` -> `lake` -> `state`, with `sync` driving one pass and `sim` standing in for the
//! vendor in tests and demos.

pub mod alloc;
pub mod api;
pub mod cli;
pub mod config;
pub mod decode;
pub mod disk;
pub mod events;
#[cfg(feature = "failpoints")]
pub mod failpoint;
pub mod fetch;
pub mod lake;
pub mod model;
pub mod normalize;
pub mod plan;
pub mod product;
pub mod progress;
pub mod schedule;
pub mod sim;
pub mod state;
pub mod sync;

/// A crash point for the crash-consistency tests: `fail_point!("after-commit")`. Without the
/// `failpoints` feature it expands to nothing, so a production build has no way to be told to
/// stop mid-write.
macro_rules! fail_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}
pub(crate) use fail_point;
