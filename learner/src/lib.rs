//! The Posterior learner: keeps a Thompson-sampling posterior for every
//! (experiment version, doc) key and updates it from joined samples.
//!
//! Layout:
//! - [`posterior`]: the pure maths — Beta–Bernoulli and logistic (Laplace)
//!   posteriors, forgetting, Thompson draws and the binary state encoding.
//!   No I/O, no clock, no global RNG.
//! - [`version`]: an A/B version's spec: model, prior, reward label, weights.
//! - [`params`]: a key's state as the wire `Params` / `ParamUpdate`.
//! - [`sample`]: the domain `Sample`, converted from the wire `JoinedSample`
//!   and validated at that boundary.

pub mod params;
pub mod posterior;
pub mod sample;
pub mod version;

pub use posterior::{KeyState, Observation, Posterior, PosteriorError};
pub use sample::{Sample, SampleError};
pub use version::{RewardSpec, VersionSpec};
