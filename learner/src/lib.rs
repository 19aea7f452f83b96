//! The Posterior learner: keeps a Thompson-sampling posterior for every
//! (experiment version, doc) key and updates it from joined samples.
//!
//! Layout:
//! - [`posterior`]: the pure maths — Beta–Bernoulli and logistic (Laplace)
//!   posteriors, forgetting, Thompson draws and the binary state encoding.
//!   No I/O, no clock, no global RNG.
//! - [`version`]: an A/B version's spec: model, prior, reward label, weights.
//! - [`config`]: the learner's TOML configuration, validated before use.
//! - [`overrides`]: environment and flag overrides of a TOML config (both
//!   binaries), and the dotted key at a parse error.
//! - [`file_source`]: JSONL and length-delimited protobuf files and stdin.
//! - [`simulation`]: the simulated world shared with the experiments, and
//!   the simulator source (sample t at offset t).
//! - [`kafka`]: the Kafka source: self-assigned partitions, offsets in the
//!   learner's own checkpoint.
//! - [`contexts`]: context vectors handed back from the engine to the
//!   reader thread that decodes, for reuse.
//! - [`publish`]: coalesced parameter updates to a channel or the `params`
//!   topic.
//! - [`producer`]: a Kafka producer with checked deliveries, for both topics
//!   the learner writes.
//! - [`partitioning`]: the doc → partition rule of the topics.
//! - [`engine`]: the pure core — records in, parameters and dead letters out.
//! - [`watermark`]: per-partition and instance event-time watermarks.
//! - [`reorder`]: the reorder buffer, released in (event_time, partition, offset) order.
//! - [`dedup`]: de-duplication by `sample_id` within an event-time window.
//! - [`batcher`]: per-key micro-batches and their triggers.
//! - [`registry`]: the A/B version registry and parameter keys.
//! - [`control`]: admin commands (create, fork, retire, savepoint, rollback)
//!   applied at an event time.
//! - [`codec`]: byte encodings of the engine state (keys sort in release order).
//! - [`runner`]: drives the engine over a source with checkpoints.
//! - [`savepoint`]: portable, verified snapshots; split by partition.
//! - [`fallback`]: the restore of last resort from served parameters
//!   (the `params` topic, or a param-server: [`served`]).
//! - [`dump`]: every key's state as exact JSONL.
//! - [`metrics`]: the Prometheus metrics and the `[metrics]` table; the
//!   runner copies the engine's plain counters into them.
//! - [`watchdog`]: the liveness watchdog of a Kafka run: exits when
//!   consumption stalls while the broker has records.
//! - [`store`]: the RocksDB state store; its doc states the delivery guarantee.
//! - [`priority`]: the lower scheduling priority of helper threads.
//! - [`meta`]: the small named state: offsets, clocks, registry, counters.
//! - [`deadletter`]: records that were not applied, and why.
//! - [`deadletter_sink`]: dead letters to a file (exactly once) or a topic
//!   (at least once, keyed `partition/offset`).
//! - [`params`]: a key's state as the wire `Params` / `ParamUpdate`, and
//!   `ParamChange`, the in-process publication.
//! - [`sample`]: the domain `Sample`, converted from the wire `JoinedSample`
//!   and validated at that boundary.

pub mod batcher;
pub mod codec;
pub mod config;
pub mod contexts;
pub mod control;
pub mod deadletter;
#[cfg(feature = "io")]
pub mod deadletter_sink;
pub mod dedup;
pub mod dump;
pub mod engine;
pub mod fallback;
pub mod file_source;
mod hand_on;
#[cfg(feature = "io")]
pub mod kafka;
#[cfg(feature = "io")]
mod kafka_queue;
pub mod keymap;
pub mod meta;
pub mod metrics;
pub mod overrides;
pub mod params;
pub mod partitioning;
pub mod posterior;
pub mod prefetch;
#[cfg(feature = "io")]
pub mod priority;
#[cfg(feature = "io")]
pub mod producer;
#[cfg(feature = "io")]
pub mod publish;
#[cfg(feature = "io")]
mod read_ahead;
pub mod registry;
pub mod reorder;
#[cfg(feature = "io")]
pub mod runner;
pub mod sample;
pub mod sample_log;
#[cfg(feature = "io")]
pub mod savepoint;
#[cfg(feature = "io")]
pub mod served;
pub mod simulation;
#[cfg(feature = "io")]
pub mod store;
pub mod version;
pub mod watchdog;
pub mod watermark;

pub use posterior::{KeyState, Observation, Posterior, PosteriorError, SharedState};
pub use sample::{Sample, SampleError};
pub use version::{RewardSpec, VersionSpec};
