//! The Posterior param-server: serves the learner's dynamic weights — one
//! Thompson-sampling posterior per (A/B version, doc) — to predictors.
//!
//! Layout:
//! - [`store`]: every (version, doc) state in memory; lock-free reads,
//!   per-key sequence numbers that never go backwards.
//! - [`table`]: one version's doc → state map: flat slots under a
//!   sequence lock for Beta and diagonal versions (`flat`), papaya for
//!   full covariance.
//! - [`stored`]: the view of a key's state a reader gets, and its direct
//!   protobuf encoding.
//! - [`version`]: a served version: spec, prior, table, update stream.
//! - [`service`]: `posterior.v1.ParamService`: thin handlers over the store.
//! - [`routes`]: the service as mounted: `GetParams` answered with bytes
//!   encoded in its work slot ([`encoded`]), the rest generated.
//! - [`request`]: wire requests checked and converted to domain requests.
//! - [`sampler`]: server-side Thompson draws and mean scores.
//! - [`watch`]: `WatchParams` streams: snapshot, updates, bounded buffers.
//! - [`admin`]: `posterior.v1.AdminService`: validation against the store,
//!   stamped `ControlCommand`s handed to the control plane.
//! - [`guard`]: the tower layer that authenticates, authorises and audits
//!   every admin call, before its handler.
//! - [`auth`]: bearer tokens with names and roles, compared in constant time.
//! - [`audit`]: one record per admin call: tracing target and JSON lines.
//! - [`control`]: the `ControlPlane` trait and its in-process channel.
//! - [`tls`]: TLS / mTLS settings loaded and checked before binding.
//! - [`server`]: `serve(listener, …, shutdown)` with health and reflection.
//! - [`metrics`]: the Prometheus metrics: gRPC latencies, sheds, keys,
//!   watchers, feed updates.
//! - [`grpc_metrics`]: the service wrapper timing each call by method and
//!   status code.
//! - [`exposition`]: `GET /metrics` on the `[metrics]` listener.
//! - [`limits`]: the bounds of every request, response and buffer.
//! - [`admission`]: the server-wide work slots, the bounded wait for
//!   one, and what is shed (`RESOURCE_EXHAUSTED`) under overload.
//! - [`feed`]: applies `ParamChange` batches from a channel (the learner's
//!   in-process sink).
//! - [`follower`]: applies the `params` topic's records, tracks offsets and
//!   the catch-up (no I/O).
//! - [`replica`]: the standalone replica's Kafka consumer, snapshot thread
//!   and shutdown (feature `kafka`).
//! - [`snapshot`]: the replica's local snapshot file: checksummed, written
//!   atomically, with the topic offsets.
//! - [`readiness`]: `NOT_SERVING` / `UNAVAILABLE` until a replica caught up.
//! - [`kafka_control`]: the `ControlPlane` producing to the `control` topic
//!   (feature `kafka`).
//! - [`config`]: the binary's TOML configuration, validated before binding.
//! - [`runner`]: store + feed + server from a config, until shutdown.
//! - [`error`]: the store's and the services' errors, mapped to gRPC codes.

pub mod admin;
pub mod admission;
pub mod audit;
pub mod auth;
pub mod config;
pub mod control;
pub mod encoded;
pub mod error;
pub mod exposition;
pub mod feed;
mod flat;
pub mod follower;
pub mod grpc_metrics;
pub mod guard;
#[cfg(feature = "kafka")]
pub mod kafka_control;
pub mod limits;
pub mod metrics;
pub mod readiness;
#[cfg(feature = "kafka")]
pub mod replica;
pub mod request;
pub mod routes;
pub mod runner;
pub mod sampler;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod store;
pub mod stored;
pub mod table;
pub mod tls;
pub mod version;
pub mod watch;

pub use admin::AdminServiceImpl;
pub use admission::{Admission, AdmissionStats, Shed};
pub use control::{ControlPlane, ControlPlaneError, Durable, Handover, InProcessControlPlane};
pub use error::{AdminError, ServeError, StoreError};
pub use limits::Limits;
/// Accepted connections are wrapped in it: a small response leaves in one
/// system call (see [`posterior_proto::conn`]).
pub use posterior_proto::conn::Coalesced;
pub use readiness::Readiness;
pub use server::{AdminSetup, ServeOptions, ServerError, serve, serve_connections};
pub use service::ParamServiceImpl;
pub use store::ParamStore;
pub use stored::{BodyView, StateView};
pub use table::{ApplyOutcome, ParamTable, WrongShape};
pub use version::{AppliedUpdate, ServedVersion};
