//! Posteriors warmed up on a pool: the state the timed updates and draws
//! start from. A posterior at its prior is not what a live key looks like
//! (and Newton needs more iterations far from the data), so every bench
//! first feeds [`WARM_UP_SAMPLES`] pool observations in micro-batches of
//! [`WARM_UP_BATCH`], untimed.

use posterior_learner::posterior::{
    BetaPosterior, BetaPrior, CovarianceForm, DiagonalGaussian, FullGaussian, LogisticPrior,
};

use crate::ObservationPool;

/// Samples a posterior absorbs before any timing.
pub const WARM_UP_SAMPLES: usize = 512;
/// Micro-batch size of the warm-up.
pub const WARM_UP_BATCH: usize = 16;
/// Isotropic prior precision of the logistic models.
const PRIOR_PRECISION: f64 = 1.0;

/// Beta(1, 1) and its posterior after the pool's first
/// [`WARM_UP_SAMPLES`] labels.
pub fn warm_beta(pool: &ObservationPool) -> (BetaPrior, BetaPosterior) {
    let prior = BetaPrior::UNIFORM;
    let mut post = BetaPosterior::prior(&prior);
    for batch in warm_up_batches(pool).chunks(WARM_UP_BATCH) {
        post.update(&prior, None, 0, batch)
            .expect("pool observations are valid");
    }
    (prior, post)
}

/// A zero-mean isotropic diagonal prior of the pool's dimension and its
/// warmed-up posterior.
pub fn warm_diagonal(pool: &ObservationPool) -> (LogisticPrior, DiagonalGaussian) {
    let prior = logistic_prior(CovarianceForm::Diagonal, pool.dim());
    let mut post = DiagonalGaussian::prior(&prior);
    for batch in warm_up_batches(pool).chunks(WARM_UP_BATCH) {
        post.update(&prior, None, 0, batch)
            .expect("pool observations are valid");
    }
    (prior, post)
}

/// A zero-mean isotropic full-covariance prior of the pool's dimension and
/// its warmed-up posterior.
pub fn warm_full(pool: &ObservationPool) -> (LogisticPrior, FullGaussian) {
    let prior = logistic_prior(CovarianceForm::Full, pool.dim());
    let mut post = FullGaussian::prior(&prior);
    for batch in warm_up_batches(pool).chunks(WARM_UP_BATCH) {
        post.update(&prior, None, 0, batch)
            .expect("pool observations are valid");
    }
    (prior, post)
}

fn logistic_prior(form: CovarianceForm, dim: usize) -> LogisticPrior {
    LogisticPrior::isotropic(form, dim, PRIOR_PRECISION)
        .expect("bench dimensions are within the model limits")
}

fn warm_up_batches(pool: &ObservationPool) -> Vec<posterior_learner::Observation<'_>> {
    let mut observations = pool.observations();
    observations.truncate(WARM_UP_SAMPLES);
    observations
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_states_have_moved_off_the_prior() {
        let pool = ObservationPool::standard(16);
        let (prior, post) = warm_diagonal(&pool);
        assert_ne!(&post, &DiagonalGaussian::prior(&prior));
        // The bias coordinate sees every sample, so it gathers the most
        // precision.
        assert!(post.precision()[0] > 10.0, "{:?}", post.precision());
        let (_, full) = warm_full(&pool);
        assert!(full.precision()[(0, 0)] > 10.0);
        let (_, beta) = warm_beta(&ObservationPool::standard(0));
        assert_eq!(beta.alpha() + beta.beta(), 2.0 + WARM_UP_SAMPLES as f64);
    }
}
