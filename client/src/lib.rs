//! The Rust client of Posterior's param-server, for predictors and
//! operators: typed `ParamService` calls with deadlines and retries, a
//! local [`Mirror`] of a version kept current by `WatchParams`, and the
//! `AdminService` calls. The `posterior` CLI is built on it. Clients in
//! other languages generate theirs from `proto/`.
//!
//! Layout:
//! - [`client`]: [`Client`] — `GetParams`, `SampleScores`, `WatchParams`.
//! - [`mirror`]: [`Mirror`] — a version's params, local and lock-free.
//! - [`admin`]: [`AdminClient`] — create, fork, list, retire versions;
//!   savepoints and rollbacks; bearer-token auth.
//! - [`params`]: [`Params`] and [`Scores`], the domain form of responses.
//! - [`config`]: [`ClientConfig`], [`RetryPolicy`], [`Backoff`], TLS.
//! - `retry`: the bounded retry loop with jittered backoff.
//! - `channel`: the shared connection, keep-alive and TLS.
//! - [`transport`]: [`transport::Connector`], plain TCP connections that
//!   send a call's request in one segment.
//! - [`error`]: [`ClientError`] and which codes are retryable.

pub mod admin;
mod channel;
pub mod client;
pub mod config;
pub mod error;
pub mod mirror;
pub mod params;
mod retry;
pub mod transport;

pub use admin::{AdminClient, AdminReceipt, ForkOverrides, VersionInfo};
pub use channel::MAX_FRAME_BYTES;
pub use client::{Client, WatchEvent, WatchStream};
pub use config::{Backoff, ClientConfig, RetryPolicy, TlsConfig};
pub use error::ClientError;
pub use mirror::{Mirror, MirrorConfig, MirrorStatus};
pub use params::{Model, Params, Precision, Scores};
