//! The Posterior param-server: serves the learner's dynamic weights — one
//! Thompson-sampling posterior per (A/B version, doc) — to predictors.
//!
//! Layout:
//! - [`store`]: every (version, doc) state in memory; lock-free reads,
//!   per-key sequence numbers that never go backwards.
//! - [`table`]: one version's doc → state map (papaya).
//! - [`stored`]: a key's state in the store's compact, immutable form.
//! - [`version`]: a served version: spec, prior, table, update stream.
//! - [`error`]: the store's and the services' errors, mapped to gRPC codes.

pub mod error;
pub mod store;
pub mod stored;
pub mod table;
pub mod version;

pub use error::{ServeError, StoreError};
pub use store::ParamStore;
pub use stored::StoredState;
pub use table::{ApplyOutcome, ParamTable};
pub use version::{AppliedUpdate, ServedVersion};
