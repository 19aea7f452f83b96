//! Posterior maths for Thompson sampling, per key = (version, doc).
//!
//! Pure: no I/O, no async, no clock, no global RNG. Randomness comes from the
//! caller's RNG, time from the samples' event times. The same observations
//! in the same order give bit-identical state: the arithmetic is sequential
//! and its order fixed.
//!
//! Models:
//! - [`BetaPosterior`]: Beta–Bernoulli, (α, β) = prior + weighted counts.
//! - [`DiagonalGaussian`] / [`FullGaussian`]: Bayesian logistic regression
//!   with a Laplace-approximated Gaussian posterior N(m, Q⁻¹), updated per
//!   micro-batch as in Chapelle & Li 2011, Algorithm 3 (see [`logistic`]).
//!
//! [`KeyState`] wraps one key's model with its bookkeeping (update sequence
//! number, sample count, event time) and is what checkpoints and the wire
//! carry, in the versioned binary format of `encoding.rs` ([`KeyState::encode`]).

mod beta;
mod encoding;
mod error;
mod forgetting;
mod full;
mod key;
mod linalg;
pub mod logistic;
mod model;
pub(crate) mod newton;
mod observation;
mod shared;

pub use beta::{BetaPosterior, BetaPrior};
pub use encoding::{DecodeError, FORMAT_VERSION};
pub use error::PosteriorError;
pub use forgetting::Forgetting;
pub use full::FullGaussian;
pub use key::{KeyState, Posterior};
pub use logistic::{
    CovarianceForm, DiagonalGaussian, LOGIT_CLAMP, LogisticPrior, MAX_DIM_DIAGONAL, MAX_DIM_FULL,
    MAX_NEWTON_ITERATIONS, NEWTON_TOLERANCE, PRECISION_FLOOR, UpdateStats, sigmoid,
};
pub use model::{ModelKind, ModelSpec};
pub use observation::{MAX_WEIGHT, Observation};
pub use shared::SharedState;

#[cfg(test)]
mod tests;
