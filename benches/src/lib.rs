//! Shared inputs for the criterion benches in `benches/benches/`: every
//! bench builds what it times here, outside the timed loop, from a fixed
//! seed, so two runs time the same arithmetic.
//!
//! Layout:
//! - [`pool`]: seeded observation pools (contexts and labels from a known
//!   logistic model) and the cyclic walk over them.
//! - [`state`]: posteriors warmed up on a pool, the realistic starting
//!   state of the timed updates and draws.
//! - [`timing`]: the short criterion run length shared by every bench.
//!
//! The learner pipeline benches of issue 3 (run by `src/bin/pipeline.rs`,
//! not criterion: they time whole runs over a million keys):
//! - [`workload`]: the seeded sample stream (keys, partitions, event times
//!   with bounded disorder, Beta or logistic samples).
//! - [`config`]: learner configs of those runs, as TOML.
//! - [`machine`]: stopwatch with thread CPU time, process CPU time, rates.
//! - [`driver`]: an engine driven like the runner's loop, without store.
//! - [`ingest`]: benches 1 and 2, in-memory and protobuf-file ingest.
//! - [`kafka_ingest`]: bench 3, Kafka ingest against a no-op consumer.
//! - [`checkpoint`]: bench 4, checkpoint stalls and restore.

pub mod checkpoint;
pub mod config;
pub mod driver;
pub mod ingest;
pub mod kafka_ingest;
pub mod machine;
pub mod pool;
pub mod state;
pub mod timing;
pub mod workload;

pub use pool::{BatchCycle, ObservationPool, POOL_SIZE, SEED};
pub use state::{WARM_UP_BATCH, WARM_UP_SAMPLES, warm_beta, warm_diagonal, warm_full};
pub use timing::{MEASUREMENT, SAMPLE_SIZE, WARM_UP};
