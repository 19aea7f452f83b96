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

pub mod pool;
pub mod state;
pub mod timing;

pub use pool::{BatchCycle, ObservationPool, POOL_SIZE, SEED};
pub use state::{WARM_UP_BATCH, WARM_UP_SAMPLES, warm_beta, warm_diagonal, warm_full};
pub use timing::{MEASUREMENT, SAMPLE_SIZE, WARM_UP};
