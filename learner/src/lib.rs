//! The Posterior learner: keeps a Thompson-sampling posterior for every
//! (experiment version, doc) key and updates it from joined samples.
//!
//! Layout:
//! - [`posterior`]: the pure maths — Beta–Bernoulli and logistic (Laplace)
//!   posteriors, forgetting, Thompson draws and the binary state encoding.
//!   No I/O, no clock, no global RNG.
//! - [`version`]: an A/B version's spec: model, prior, reward label, weights.
//! - [`engine`]: the pure core — records in, parameters and dead letters out.
//! - [`watermark`]: per-partition and instance event-time watermarks.
//! - [`reorder`]: the reorder buffer, released in (event_time, partition, offset) order.
//! - [`dedup`]: de-duplication by `sample_id` within an event-time window.
//! - [`batcher`]: per-key micro-batches and their triggers.
//! - [`registry`]: the A/B version registry and parameter keys.
//! - [`deadletter`]: records that were not applied, and why.
//! - [`params`]: a key's state as the wire `Params` / `ParamUpdate`.
//! - [`sample`]: the domain `Sample`, converted from the wire `JoinedSample`
//!   and validated at that boundary.

pub mod batcher;
pub mod deadletter;
pub mod dedup;
pub mod engine;
pub mod params;
pub mod posterior;
pub mod registry;
pub mod reorder;
pub mod sample;
pub mod version;
pub mod watermark;

pub use posterior::{KeyState, Observation, Posterior, PosteriorError};
pub use sample::{Sample, SampleError};
pub use version::{RewardSpec, VersionSpec};
