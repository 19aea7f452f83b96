//! Logistic Thompson sampling with a full-covariance Laplace posterior
//! N(m, Q⁻¹), for small dimensions (d ≤ 64). Same update as the diagonal
//! form (see `logistic`), with the dense curvature Q ← Q + Σ ω p(1 − p) x xᵀ.
//! The Cholesky factor L of Q (Q = L Lᵀ) is kept beside Q for solves and
//! draws: w̃ = m + L⁻ᵀz has covariance L⁻ᵀL⁻¹ = Q⁻¹.

use ndarray::{Array1, Array2};
use rand::Rng;
use rand_distr::StandardNormal;

use super::forgetting::decay;
use super::linalg::{
    backward_solve_transposed, cholesky_in_place, cholesky_solve, dot_f32, forward_solve,
};
use super::logistic::{PRECISION_FLOOR, UpdateStats, check_finite, check_prior_dim, sigmoid};
use super::newton::{Precision, map_step};
use super::observation::validate_context;
use super::{Forgetting, LogisticPrior, Observation, PosteriorError};

/// Gaussian posterior N(m, Q⁻¹) with a dense precision matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct FullGaussian {
    mean: Array1<f64>,
    precision: Array2<f64>,
    chol: Array2<f64>,
}

impl FullGaussian {
    /// The prior itself.
    pub fn prior(prior: &LogisticPrior) -> Self {
        let d = prior.dim();
        let q0 = prior.precision();
        Self {
            mean: prior.mean().clone(),
            precision: Array2::eye(d) * q0,
            chol: Array2::eye(d) * q0.sqrt(),
        }
    }

    /// Rebuilds a posterior from its mean and dense precision, checking that
    /// the precision is finite, symmetric and positive definite.
    pub fn from_parts(mean: Vec<f64>, precision: Array2<f64>) -> Result<Self, PosteriorError> {
        let d = mean.len();
        if d == 0 || precision.dim() != (d, d) {
            return Err(PosteriorError::WrongDimension {
                field: "precision",
                expected: d * d,
                got: precision.len(),
            });
        }
        check_finite("mean", &mean)?;
        let precision = precision.as_standard_layout().into_owned();
        check_finite("precision", precision.as_slice().expect("standard layout"))?;
        for i in 0..d {
            if precision[(i, i)] < PRECISION_FLOOR {
                return Err(PosteriorError::OutOfRange {
                    field: "precision",
                    value: precision[(i, i)],
                    reason: "diagonal must be >= 1e-6",
                });
            }
            for j in 0..i {
                if precision[(i, j)] != precision[(j, i)] {
                    return Err(PosteriorError::OutOfRange {
                        field: "precision",
                        value: precision[(i, j)],
                        reason: "must be symmetric",
                    });
                }
            }
        }
        let chol = factor(&precision).ok_or(PosteriorError::OutOfRange {
            field: "precision",
            value: f64::NAN,
            reason: "must be positive definite",
        })?;
        Ok(Self {
            mean: Array1::from(mean),
            precision,
            chol,
        })
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Posterior mean m.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// Posterior precision Q (symmetric positive definite).
    pub fn precision(&self) -> &Array2<f64> {
        &self.precision
    }

    /// Marginal variances diag(Q⁻¹).
    pub fn variances(&self) -> Array1<f64> {
        let d = self.dim();
        (0..d)
            .map(|i| {
                let mut e = vec![0.0; d];
                e[i] = 1.0;
                forward_solve(self.chol_slice(), d, &mut e);
                e.iter().map(|v| v * v).sum()
            })
            .collect()
    }

    /// Applies a micro-batch; see [`super::DiagonalGaussian::update`].
    pub fn update(
        &mut self,
        prior: &LogisticPrior,
        forgetting: Option<&Forgetting>,
        last_event_ms: i64,
        batch: &[Observation<'_>],
    ) -> Result<UpdateStats, PosteriorError> {
        check_prior_dim(prior, self.dim())?;
        for obs in batch {
            obs.validate(Some(self.dim()))?;
        }
        if batch.is_empty() {
            return Ok(UpdateStats::default());
        }
        let mut next = self.clone();
        if let Some(forgetting) = forgetting {
            let newest_ms = batch
                .iter()
                .map(|o| o.event_time_ms)
                .max()
                .unwrap_or(last_event_ms);
            next.decay(prior, forgetting.factor(last_event_ms, newest_ms))?;
        }
        let step = map_step(
            next.mean.as_slice().expect("owned array is contiguous"),
            &Precision::Full {
                q: next
                    .precision
                    .as_slice()
                    .expect("owned array is contiguous"),
                chol: next.chol_slice(),
            },
            batch,
        )?;
        next.mean = Array1::from(step.w);
        let d = next.dim();
        for obs in batch {
            let p = sigmoid(dot_f32(
                next.mean.as_slice().expect("contiguous"),
                obs.context,
            ));
            let curvature = obs.weight * p * (1.0 - p);
            for i in 0..d {
                let xi = curvature * f64::from(obs.context[i]);
                for j in 0..=i {
                    next.precision[(i, j)] += xi * f64::from(obs.context[j]);
                }
            }
        }
        for i in 0..d {
            for j in 0..i {
                next.precision[(j, i)] = next.precision[(i, j)];
            }
        }
        next.chol = factor(&next.precision).ok_or(PosteriorError::Unstable)?;
        if !next.mean.iter().all(|m| m.is_finite()) {
            return Err(PosteriorError::Unstable);
        }
        *self = next;
        Ok(UpdateStats {
            newton_iterations: step.iterations,
            converged: step.converged,
        })
    }

    /// Decays the evidence toward the prior in natural parameters
    /// (Q and η = Q m) by `factor` ∈ (0, 1].
    pub fn decay(&mut self, prior: &LogisticPrior, factor_: f64) -> Result<(), PosteriorError> {
        let d = self.dim();
        let q0 = prior.precision();
        let eta = self.precision.dot(&self.mean);
        let mut eta: Vec<f64> = eta
            .iter()
            .zip(prior.mean())
            .map(|(e, m0)| decay(*e, q0 * m0, factor_))
            .collect();
        for i in 0..d {
            for j in 0..d {
                let p0 = if i == j { q0 } else { 0.0 };
                self.precision[(i, j)] = decay(self.precision[(i, j)], p0, factor_);
            }
        }
        self.chol = factor(&self.precision).ok_or(PosteriorError::Unstable)?;
        cholesky_solve(self.chol_slice(), d, &mut eta);
        self.mean = Array1::from(eta);
        Ok(())
    }

    /// Mean score σ(m·x). Checks the context.
    pub fn mean_score(&self, context: &[f32]) -> Result<f64, PosteriorError> {
        validate_context(context, self.dim())?;
        Ok(sigmoid(dot_f32(
            self.mean.as_slice().expect("contiguous"),
            context,
        )))
    }

    /// Thompson score σ(w̃·x), w̃ ~ N(m, Q⁻¹), drawn as one normal of the
    /// logit with variance xᵀQ⁻¹x = ‖L⁻¹x‖². Checks the context.
    pub fn sample_score<R: Rng + ?Sized>(
        &self,
        context: &[f32],
        rng: &mut R,
    ) -> Result<f64, PosteriorError> {
        validate_context(context, self.dim())?;
        let mut y: Vec<f64> = context.iter().map(|&x| f64::from(x)).collect();
        forward_solve(self.chol_slice(), self.dim(), &mut y);
        let variance: f64 = y.iter().map(|v| v * v).sum();
        let z: f64 = rng.sample(StandardNormal);
        let logit = dot_f32(self.mean.as_slice().expect("contiguous"), context);
        Ok(sigmoid(logit + variance.sqrt() * z))
    }

    /// A full weight draw w̃ = m + L⁻ᵀz ~ N(m, Q⁻¹).
    pub fn sample_weights<R: Rng + ?Sized>(&self, rng: &mut R) -> Array1<f64> {
        let d = self.dim();
        let mut z: Vec<f64> = (0..d).map(|_| rng.sample(StandardNormal)).collect();
        backward_solve_transposed(self.chol_slice(), d, &mut z);
        &self.mean + &Array1::from(z)
    }

    fn chol_slice(&self) -> &[f64] {
        self.chol.as_slice().expect("owned array is contiguous")
    }
}

/// Cholesky factor of a dense SPD matrix, or `None`.
fn factor(precision: &Array2<f64>) -> Option<Array2<f64>> {
    let d = precision.nrows();
    let mut l = precision.as_standard_layout().into_owned();
    cholesky_in_place(l.as_slice_mut().expect("standard layout"), d).then_some(l)
}
