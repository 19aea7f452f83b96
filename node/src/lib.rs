//! The `learner` process's parts beyond the learner crate: the embedded
//! param-server, config loading (file, environment, flags), the metrics
//! endpoint and the quickstart. The `learner` binary (`src/main.rs`) is a
//! thin command line over them; `examples/freshness.rs` drives the same
//! embedded deployment.

pub mod embedded;
pub mod load;
pub mod metrics;
pub mod quickstart;
