//! Execution (in progress, issue 4): the pure core first. `machine` is the life of one item's
//! submission as `(state, event) -> (state, effects)`; `backoff` turns the manifest's retry
//! policy into delays. The runner (tokio loop, rate limiter, checkpoint store, provider adapter)
//! that feeds events in and carries effects out is not built yet, and no command uses this
//! module so far.

pub mod backoff;
pub mod command;
pub mod crash;
pub mod lock;
pub mod machine;
pub mod progress;
pub mod runner;
pub mod status;
pub mod store;
