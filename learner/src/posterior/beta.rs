//! Beta–Bernoulli posterior (Chapelle & Li 2011, Algorithm 2).

use rand::Rng;
use rand_distr::{Beta, Distribution};

use super::forgetting::decay;
use super::{Forgetting, Observation, PosteriorError};

/// A version's Beta prior Beta(α₀, β₀).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BetaPrior {
    alpha: f64,
    beta: f64,
}

impl BetaPrior {
    /// Beta(1, 1), the uniform prior.
    pub const UNIFORM: Self = Self {
        alpha: 1.0,
        beta: 1.0,
    };

    /// A prior with finite `alpha, beta > 0`.
    pub fn new(alpha: f64, beta: f64) -> Result<Self, PosteriorError> {
        check_shape("alpha0", alpha)?;
        check_shape("beta0", beta)?;
        Ok(Self { alpha, beta })
    }

    /// α₀.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// β₀.
    pub fn beta(&self) -> f64 {
        self.beta
    }
}

fn check_shape(field: &'static str, value: f64) -> Result<(), PosteriorError> {
    if !value.is_finite() {
        return Err(PosteriorError::NonFinite {
            field,
            index: 0,
            value,
        });
    }
    if value <= 0.0 {
        return Err(PosteriorError::OutOfRange {
            field,
            value,
            reason: "must be > 0",
        });
    }
    Ok(())
}

/// Posterior Beta(α, β) = Beta(α₀ + Σ w·y, β₀ + Σ w·(1 − y)).
///
/// Counts are plain `f64` sums: for weights that are multiples of a power of
/// two (1, 0.5, 0.125, …) every partial sum is exact, so any order of the
/// same samples gives the same state bit for bit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BetaPosterior {
    alpha: f64,
    beta: f64,
}

impl BetaPosterior {
    /// The prior itself, before any sample.
    pub fn prior(prior: &BetaPrior) -> Self {
        Self {
            alpha: prior.alpha,
            beta: prior.beta,
        }
    }

    /// Rebuilds a posterior from stored parameters, checking them.
    pub fn from_parts(alpha: f64, beta: f64) -> Result<Self, PosteriorError> {
        check_shape("alpha", alpha)?;
        check_shape("beta", beta)?;
        Ok(Self { alpha, beta })
    }

    /// α.
    pub fn alpha(&self) -> f64 {
        self.alpha
    }

    /// β.
    pub fn beta(&self) -> f64 {
        self.beta
    }

    /// Adds one weighted outcome. The caller has validated the weight
    /// (see [`Observation::validate`]).
    #[inline]
    pub fn observe(&mut self, reward: bool, weight: f64) {
        if reward {
            self.alpha += weight;
        } else {
            self.beta += weight;
        }
    }

    /// Decays the gathered evidence toward the prior by `factor` ∈ (0, 1].
    pub fn decay(&mut self, prior: &BetaPrior, factor: f64) {
        self.alpha = decay(self.alpha, prior.alpha, factor);
        self.beta = decay(self.beta, prior.beta, factor);
    }

    /// Applies a micro-batch: validates every observation first (a bad one
    /// rejects the batch and changes nothing), then, with forgetting, decays
    /// from `last_event_ms` to the batch's newest event time, then adds the
    /// counts in order.
    pub fn update(
        &mut self,
        prior: &BetaPrior,
        forgetting: Option<&Forgetting>,
        last_event_ms: i64,
        batch: &[Observation<'_>],
    ) -> Result<(), PosteriorError> {
        for obs in batch {
            obs.validate(None)?;
        }
        if let Some(forgetting) = forgetting {
            let newest_ms = batch.iter().map(|o| o.event_time_ms).max();
            if let Some(newest_ms) = newest_ms {
                self.decay(prior, forgetting.factor(last_event_ms, newest_ms));
            }
        }
        for obs in batch {
            self.observe(obs.reward, obs.weight);
        }
        Ok(())
    }

    /// Posterior mean α / (α + β).
    pub fn mean(&self) -> f64 {
        self.alpha / (self.alpha + self.beta)
    }

    /// Posterior variance αβ / ((α + β)²(α + β + 1)).
    pub fn variance(&self) -> f64 {
        let total = self.alpha + self.beta;
        self.alpha * self.beta / (total * total * (total + 1.0))
    }

    /// Thompson draw θ ~ Beta(α, β).
    pub fn sample<R: Rng + ?Sized>(&self, rng: &mut R) -> f64 {
        Beta::new(self.alpha, self.beta)
            .expect("alpha and beta are finite and > 0 by construction")
            .sample(rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_xoshiro::Xoshiro256PlusPlus;

    #[test]
    fn counts_add_weights() {
        let prior = BetaPrior::new(2.0, 3.0).unwrap();
        let mut post = BetaPosterior::prior(&prior);
        let ctx: [f32; 0] = [];
        let batch = [
            Observation {
                weight: 2.0,
                ..Observation::new(&ctx, true)
            },
            Observation::new(&ctx, false),
            Observation::new(&ctx, true),
        ];
        post.update(&prior, None, 0, &batch).unwrap();
        assert_eq!((post.alpha(), post.beta()), (5.0, 4.0));
        assert_eq!(post.mean(), 5.0 / 9.0);
    }

    #[test]
    fn bad_weight_rejects_the_whole_batch() {
        let prior = BetaPrior::UNIFORM;
        let mut post = BetaPosterior::prior(&prior);
        let ctx: [f32; 0] = [];
        let batch = [
            Observation::new(&ctx, true),
            Observation {
                weight: f64::NAN,
                ..Observation::new(&ctx, true)
            },
        ];
        let err = post.update(&prior, None, 0, &batch).unwrap_err();
        assert!(err.to_string().contains("weight"), "{err}");
        assert_eq!(post, BetaPosterior::prior(&prior));
    }

    #[test]
    fn forgetting_halves_evidence_after_one_half_life() {
        let prior = BetaPrior::UNIFORM;
        let forgetting = Forgetting::new(1_000).unwrap();
        let mut post = BetaPosterior::from_parts(11.0, 21.0).unwrap();
        let ctx: [f32; 0] = [];
        let batch = [Observation {
            event_time_ms: 1_000,
            ..Observation::new(&ctx, true)
        }];
        post.update(&prior, Some(&forgetting), 0, &batch).unwrap();
        assert_eq!((post.alpha(), post.beta()), (7.0, 11.0));
    }

    #[test]
    fn priors_and_parts_are_checked() {
        assert!(BetaPrior::new(0.0, 1.0).is_err());
        assert!(BetaPrior::new(1.0, f64::INFINITY).is_err());
        assert!(BetaPosterior::from_parts(-1.0, 1.0).is_err());
    }

    #[test]
    fn thompson_draws_have_beta_moments() {
        let post = BetaPosterior::from_parts(3.0, 7.0).unwrap();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
        let n = 200_000;
        let draws: Vec<f64> = (0..n).map(|_| post.sample(&mut rng)).collect();
        let mean = draws.iter().sum::<f64>() / n as f64;
        let var = draws.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        // Standard error of the mean is sqrt(var / n) ≈ 3.2e-4; allow 5 s.e.
        assert!((mean - post.mean()).abs() < 1.6e-3, "mean {mean}");
        assert!((var / post.variance() - 1.0).abs() < 0.02, "var {var}");
    }
}
