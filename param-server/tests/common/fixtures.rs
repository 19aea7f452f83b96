//! Versions and states the gRPC tests of the param-server and of the
//! client serve: each state's fields are functions of its seq, so a torn
//! read shows. Shared by `param-server/tests/common` and, through
//! `#[path]` modules, the store's unit tests and `client/tests/common`.

use posterior_learner::posterior::{
    BetaPosterior, BetaPrior, CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};

/// A Beta version `name` with a uniform prior, rewarded by `click`.
pub fn beta_spec(name: &str) -> VersionSpec {
    VersionSpec {
        name: name.to_owned(),
        model: ModelSpec::new(ModelKind::Beta(BetaPrior::new(1.0, 1.0).unwrap())),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    }
}

/// [`beta_spec`] with a diagonal logistic prior of dimension `dim`.
pub fn diagonal_spec(name: &str, dim: usize) -> VersionSpec {
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, dim, 1.0).unwrap();
    VersionSpec {
        model: ModelSpec::new(ModelKind::Logistic(prior)),
        ..beta_spec(name)
    }
}

/// A Beta state whose fields are all functions of `seq`.
pub fn beta_state(seq: u64) -> KeyState {
    let s = seq as f64;
    KeyState {
        seq,
        sample_count: s,
        updated_event_time_ms: seq as i64,
        posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + s, 1.0 + 2.0 * s).unwrap()),
    }
}

/// A diagonal state whose fields are all functions of `seq`.
pub fn diagonal_state(seq: u64, dim: usize) -> KeyState {
    let s = seq as f64;
    let g = DiagonalGaussian::from_parts(vec![s; dim], vec![1.0 + s; dim]).unwrap();
    KeyState {
        seq,
        sample_count: s,
        updated_event_time_ms: seq as i64,
        posterior: Posterior::Diagonal(g),
    }
}
