//! A key's state as the store keeps it: the learner's [`KeyState`] in a
//! compact, immutable form.
//!
//! A diagonal Gaussian of dimension d lives in one boxed slice of 2d
//! floats (mean, then precisions) instead of two `ndarray` arrays with
//! their own headers and allocations; that is what keeps a d = 32 key near
//! its raw parameter bytes (see NOTES.md). A full Gaussian keeps the
//! learner's type whole, Cholesky factor included: rebuilding the factor on
//! every read would cost O(d³). Beta states are two inline floats.
//!
//! The value is never mutated after it is built: an update replaces it
//! whole, which is why a reader can never see half of one.

use posterior_learner::params::params_to_wire;
use posterior_learner::posterior::{BetaPosterior, DiagonalGaussian, FullGaussian};
use posterior_learner::{KeyState, Posterior};
use posterior_proto::v1;

/// One key's parameters and bookkeeping, immutable once stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredState {
    seq: u64,
    sample_count: f64,
    updated_event_time_ms: i64,
    body: Body,
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Beta {
        alpha: f64,
        beta: f64,
    },
    /// Mean (d floats), then precisions (d floats).
    Diagonal(Box<[f64]>),
    Full(Box<FullGaussian>),
}

impl StoredState {
    /// The key's update sequence number.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Rebuilds the learner's state, on which the maths (draws, mean
    /// scores, wire conversion) runs unchanged.
    pub fn to_key_state(&self) -> KeyState {
        let posterior = match &self.body {
            Body::Beta { alpha, beta } => Posterior::Beta(
                BetaPosterior::from_parts(*alpha, *beta)
                    .expect("stored from a validated Beta posterior"),
            ),
            Body::Diagonal(values) => {
                let (mean, precision) = values.split_at(values.len() / 2);
                Posterior::Diagonal(
                    DiagonalGaussian::from_parts(mean.to_vec(), precision.to_vec())
                        .expect("stored from a validated diagonal Gaussian"),
                )
            }
            Body::Full(gaussian) => Posterior::Full(FullGaussian::clone(gaussian)),
        };
        KeyState {
            seq: self.seq,
            sample_count: self.sample_count,
            updated_event_time_ms: self.updated_event_time_ms,
            posterior,
        }
    }
}

impl StoredState {
    /// The wire parameters of this state as key (`version`, `doc_id`):
    /// equal to `params_to_wire` of [`StoredState::to_key_state`], built
    /// straight from the stored floats for Beta and diagonal states (no
    /// rebuilt `KeyState`, no re-validation: `GetParams`' hot path).
    pub fn to_wire(&self, version: &str, doc_id: u64) -> v1::Params {
        let model = match &self.body {
            Body::Beta { alpha, beta } => v1::params::Model::Beta(v1::BetaParams {
                alpha: *alpha,
                beta: *beta,
            }),
            Body::Diagonal(values) => {
                let (mean, precision) = values.split_at(values.len() / 2);
                v1::params::Model::Gaussian(v1::GaussianParams {
                    mean: mean.to_vec(),
                    form: v1::CovarianceForm::Diagonal as i32,
                    precision: precision.to_vec(),
                    variance: precision.iter().map(|q| 1.0 / q).collect(),
                })
            }
            Body::Full(_) => return params_to_wire(version, doc_id, &self.to_key_state()),
        };
        v1::Params {
            version: version.to_owned(),
            doc_id,
            model: Some(model),
            seq: self.seq,
            sample_count: self.sample_count,
            updated_event_time_ms: self.updated_event_time_ms,
            is_prior: self.seq == 0,
        }
    }
}

impl From<&KeyState> for StoredState {
    fn from(state: &KeyState) -> Self {
        let body = match &state.posterior {
            Posterior::Beta(b) => Body::Beta {
                alpha: b.alpha(),
                beta: b.beta(),
            },
            Posterior::Diagonal(g) => Body::Diagonal(
                g.mean()
                    .iter()
                    .chain(g.precision().iter())
                    .copied()
                    .collect(),
            ),
            Posterior::Full(g) => Body::Full(Box::new(g.clone())),
        };
        Self {
            seq: state.seq,
            sample_count: state.sample_count,
            updated_event_time_ms: state.updated_event_time_ms,
            body,
        }
    }
}

impl From<KeyState> for StoredState {
    fn from(state: KeyState) -> Self {
        Self::from(&state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::posterior::{CovarianceForm, LogisticPrior, ModelKind, ModelSpec};
    use posterior_learner::{Observation, posterior::BetaPrior};

    fn updated(kind: ModelKind, dim: usize) -> KeyState {
        let spec = ModelSpec::new(kind);
        let mut state = KeyState::prior(&spec);
        let context: Vec<f32> = (0..dim).map(|i| 0.1 * i as f32 - 0.4).collect();
        let batch = [
            Observation::new(&context, true),
            Observation::new(&context, false),
        ];
        state.update(&spec, &batch).unwrap();
        state
    }

    #[test]
    fn every_model_round_trips_bit_for_bit() {
        let states = [
            updated(ModelKind::Beta(BetaPrior::new(2.0, 3.0).unwrap()), 0),
            updated(
                ModelKind::Logistic(
                    LogisticPrior::isotropic(CovarianceForm::Diagonal, 8, 1.5).unwrap(),
                ),
                8,
            ),
            updated(
                ModelKind::Logistic(
                    LogisticPrior::isotropic(CovarianceForm::Full, 4, 2.0).unwrap(),
                ),
                4,
            ),
        ];
        for state in states {
            let stored = StoredState::from(state.clone());
            assert_eq!(stored.seq(), state.seq);
            assert_eq!(stored.to_key_state(), state);
            assert_eq!(stored.to_key_state().encode(), state.encode());
            assert_eq!(
                stored.to_wire("v", 7),
                params_to_wire("v", 7, &state),
                "{state:?}"
            );
        }
    }
}
