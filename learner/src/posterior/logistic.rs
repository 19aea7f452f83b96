//! Logistic Thompson sampling with a Laplace-approximated Gaussian
//! posterior (Chapelle & Li 2011, Algorithm 3), diagonal form.
//!
//! Per micro-batch of (xⱼ, yⱼ ∈ {0, 1}, ωⱼ), with the current posterior
//! N(m, diag(1/q)) as prior:
//! 1. w = argmin ½ Σᵢ qᵢ(wᵢ − mᵢ)² + Σⱼ ωⱼ log(1 + exp(−sⱼ w·xⱼ)), sⱼ = 2yⱼ − 1
//!    (the ±1 label goes in the loss; Newton with line search, see `newton`);
//! 2. m ← w;
//! 3. qᵢ ← qᵢ + Σⱼ ωⱼ xᵢⱼ² pⱼ(1 − pⱼ), pⱼ = σ(w·xⱼ) (the Laplace curvature at
//!    the new mode, and nothing else).
//!
//! A Thompson draw is w̃ ~ N(m, diag(1/q)), i.e. w̃ᵢ = mᵢ + zᵢ/√qᵢ: the
//! standard deviation is 1/√q, not 1/q.

use ndarray::Array1;
use rand::Rng;
use rand_distr::StandardNormal;

use super::forgetting::decay;
use super::linalg::{dot_f32, logit_and_spread, step_diagonal};
use super::newton::{Precision, map_step, single_step};
use super::observation::validate_context;
use super::{Forgetting, Observation, PosteriorError};

/// Logits are clamped to ±`LOGIT_CLAMP` before σ, so probabilities stay in
/// (0, 1) strictly and the curvature p(1 − p) stays positive.
pub const LOGIT_CLAMP: f64 = 35.0;
/// Smallest precision any coordinate may have (and the smallest prior).
pub const PRECISION_FLOOR: f64 = 1.0e-6;
/// Newton stops when no coordinate moves by more than this, relative to
/// `1 + max |coordinate|`.
pub const NEWTON_TOLERANCE: f64 = 1.0e-10;
/// Newton's iteration cap; the last iterate is kept if it is reached.
pub const MAX_NEWTON_ITERATIONS: u32 = 50;
/// Largest dimension of a diagonal model.
pub const MAX_DIM_DIAGONAL: usize = 4096;
/// Largest dimension of a full-covariance model.
pub const MAX_DIM_FULL: usize = 64;

/// Numerically safe logistic function with clamped logit.
#[inline]
pub fn sigmoid(z: f64) -> f64 {
    let z = z.clamp(-LOGIT_CLAMP, LOGIT_CLAMP);
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// log(1 + exp(t)) without overflow.
#[inline]
pub(crate) fn softplus(t: f64) -> f64 {
    t.max(0.0) + (-t.abs()).exp().ln_1p()
}

/// How the posterior covariance is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CovarianceForm {
    /// Independent coordinates, O(d) memory and update; the default.
    Diagonal,
    /// Dense precision matrix, O(d²) memory; for d ≤ 64.
    Full,
}

/// A logistic version's prior N(mean, I / precision).
#[derive(Debug, Clone, PartialEq)]
pub struct LogisticPrior {
    form: CovarianceForm,
    mean: Array1<f64>,
    precision: f64,
}

impl LogisticPrior {
    /// A prior with the given mean (its length is the dimension) and
    /// isotropic precision.
    pub fn new(
        form: CovarianceForm,
        mean: Vec<f64>,
        precision: f64,
    ) -> Result<Self, PosteriorError> {
        let max_dim = match form {
            CovarianceForm::Diagonal => MAX_DIM_DIAGONAL,
            CovarianceForm::Full => MAX_DIM_FULL,
        };
        if mean.is_empty() || mean.len() > max_dim {
            return Err(PosteriorError::OutOfRange {
                field: "dim",
                value: mean.len() as f64,
                reason: "must be in 1..=4096 (diagonal) or 1..=64 (full)",
            });
        }
        if let Some(index) = mean.iter().position(|m| !m.is_finite()) {
            return Err(PosteriorError::NonFinite {
                field: "prior_mean",
                index,
                value: mean[index],
            });
        }
        if !precision.is_finite() {
            return Err(PosteriorError::NonFinite {
                field: "prior_precision",
                index: 0,
                value: precision,
            });
        }
        if precision < PRECISION_FLOOR {
            return Err(PosteriorError::OutOfRange {
                field: "prior_precision",
                value: precision,
                reason: "must be >= 1e-6",
            });
        }
        Ok(Self {
            form,
            mean: Array1::from(mean),
            precision,
        })
    }

    /// A zero-mean prior of dimension `dim`.
    pub fn isotropic(
        form: CovarianceForm,
        dim: usize,
        precision: f64,
    ) -> Result<Self, PosteriorError> {
        Self::new(form, vec![0.0; dim], precision)
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// Diagonal or full.
    pub fn form(&self) -> CovarianceForm {
        self.form
    }

    /// Prior mean m₀.
    pub fn mean(&self) -> &Array1<f64> {
        &self.mean
    }

    /// Prior precision q₀ of every coordinate.
    pub fn precision(&self) -> f64 {
        self.precision
    }
}

/// What an update did, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct UpdateStats {
    /// Newton iterations of the MAP step.
    pub newton_iterations: u32,
    /// Whether Newton met its tolerance before the cap.
    pub converged: bool,
}

/// Gaussian posterior N(m, diag(1/q)) over the logistic weights.
///
/// The mean and the precisions live in one allocation (m then q), so the
/// posterior is one pointer wide inside a [`super::KeyState`] and an
/// update's data is one contiguous block.
#[derive(Debug, Clone, PartialEq)]
pub struct DiagonalGaussian {
    /// m₀ … m_{d−1}, then q₀ … q_{d−1}.
    params: Box<[f64]>,
}

impl DiagonalGaussian {
    /// Prefetches the mean and precision vectors (see `crate::prefetch`).
    pub(crate) fn prefetch(&self) {
        crate::prefetch::prefetch_slice(&self.params);
    }

    /// The prior itself.
    pub fn prior(prior: &LogisticPrior) -> Self {
        let d = prior.dim();
        let mut params = Vec::with_capacity(2 * d);
        params.extend(prior.mean.iter().copied());
        params.resize(2 * d, prior.precision);
        Self {
            params: params.into_boxed_slice(),
        }
    }

    /// Rebuilds a posterior from stored parameters, checking them.
    pub fn from_parts(mean: Vec<f64>, precision: Vec<f64>) -> Result<Self, PosteriorError> {
        if mean.len() != precision.len() || mean.is_empty() {
            return Err(PosteriorError::WrongDimension {
                field: "precision",
                expected: mean.len(),
                got: precision.len(),
            });
        }
        check_finite("mean", &mean)?;
        check_finite("precision", &precision)?;
        if let Some(index) = precision.iter().position(|&q| q < PRECISION_FLOOR) {
            return Err(PosteriorError::OutOfRange {
                field: "precision",
                value: precision[index],
                reason: "must be >= 1e-6",
            });
        }
        let mut params = mean;
        params.extend_from_slice(&precision);
        Ok(Self {
            params: params.into_boxed_slice(),
        })
    }

    /// The dimension d.
    pub fn dim(&self) -> usize {
        self.params.len() / 2
    }

    /// Posterior mean m.
    pub fn mean(&self) -> &[f64] {
        &self.params[..self.dim()]
    }

    /// Posterior precisions q (variances are 1/q).
    pub fn precision(&self) -> &[f64] {
        &self.params[self.dim()..]
    }

    /// (m, q), mutably.
    fn parts_mut(&mut self) -> (&mut [f64], &mut [f64]) {
        let d = self.dim();
        self.params.split_at_mut(d)
    }

    /// Applies a micro-batch (Algorithm 3, see the module doc). Every
    /// observation is validated first; on any error, or if the result would
    /// not be finite, the state is left untouched.
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
        let factor = match forgetting {
            Some(forgetting) => {
                let newest_ms = batch.iter().map(|o| o.event_time_ms).max();
                forgetting.factor(last_event_ms, newest_ms.unwrap_or(last_event_ms))
            }
            None => 1.0,
        };
        if let [obs] = batch {
            return self.update_single(prior, factor, obs);
        }
        if factor < 1.0 {
            // Forgetting first, on a copy: a refused update leaves the
            // state as it was.
            let mut next = self.clone();
            next.decay(prior, factor);
            let stats = next.apply_batch(batch)?;
            *self = next;
            return Ok(stats);
        }
        self.apply_batch(batch)
    }

    /// The MAP step of a batch of two or more observations, then each
    /// one's curvature added to the precisions. Everything is computed and
    /// checked before the state is written, so an error leaves it as it
    /// was, without the copy of the state an update once made for that
    /// (a third of the allocations of a micro-batch's update).
    fn apply_batch(&mut self, batch: &[Observation<'_>]) -> Result<UpdateStats, PosteriorError> {
        let step = map_step(self.mean(), &Precision::Diagonal(self.precision()), batch)?;
        let curvatures: smallvec::SmallVec<[f64; 16]> = batch
            .iter()
            .map(|obs| {
                let p = sigmoid(dot_f32(&step.w, obs.context));
                obs.weight * p * (1.0 - p)
            })
            .collect();
        // The state is finite and q ≥ 1e-6, the contexts finite f32 and
        // the weights ≤ 1e6, so the new precisions are finite whenever the
        // curvatures are (see `update_single`), and the new mean is `w`.
        if !(step.w.iter().all(|w| w.is_finite()) && curvatures.iter().all(|c| c.is_finite())) {
            return Err(PosteriorError::Unstable);
        }
        let (mean, precision) = self.parts_mut();
        mean.copy_from_slice(&step.w);
        for (obs, &curvature) in batch.iter().zip(&curvatures) {
            for (qi, &xi) in precision.iter_mut().zip(obs.context) {
                let xi = f64::from(xi);
                *qi += curvature * xi * xi;
            }
        }
        debug_assert!(self.is_finite(), "the checks above keep the state finite");
        Ok(UpdateStats {
            newton_iterations: step.iterations,
            converged: step.converged,
        })
    }

    /// The update for one observation, the common case of a fresh click,
    /// without allocation: the dual step reduces to a scalar root (see
    /// `newton::single_step`). The scalars the new state is made of are
    /// checked before any coordinate is written, so a rejected update
    /// changes nothing.
    fn update_single(
        &mut self,
        prior: &LogisticPrior,
        factor: f64,
        obs: &Observation<'_>,
    ) -> Result<UpdateStats, PosteriorError> {
        let (q0, m0) = (prior.precision, prior.mean.as_slice().expect("contiguous"));
        let (mean, precision) = self.parts_mut();
        // Forgetting first, in natural parameters, exactly as `decay` does.
        let (a, k) = if factor == 1.0 {
            logit_and_spread(mean, precision, obs.context)
        } else {
            let (mut a, mut k) = (0.0, 0.0);
            for (((&m, &q), &m0i), &x) in mean.iter().zip(precision.iter()).zip(m0).zip(obs.context)
            {
                let (m, q) = decay_coordinate(m, q, m0i, q0, factor);
                let x = f64::from(x);
                a += m * x;
                k += x * x / q;
            }
            (a, k)
        };
        let (c, iterations, converged) = single_step(a, k, obs.reward, obs.weight);
        let p = sigmoid(a + k * c);
        let curvature = obs.weight * p * (1.0 - p);
        // The state is finite and q ≥ 1e-6, x is a finite f32 and the
        // weight ≤ 1e6, so every new coordinate is finite whenever these
        // scalars are: |c| ≤ ω, |x|/q < 1e45, x² < 1e77.
        if !(a.is_finite() && k.is_finite() && c.is_finite() && curvature.is_finite()) {
            return Err(PosteriorError::Unstable);
        }
        if factor == 1.0 {
            step_diagonal(mean, precision, obs.context, c, curvature);
        } else {
            for (((m, q), &m0i), &x) in mean
                .iter_mut()
                .zip(precision.iter_mut())
                .zip(m0)
                .zip(obs.context)
            {
                let (m_old, q_old) = decay_coordinate(*m, *q, m0i, q0, factor);
                let x = f64::from(x);
                *m = m_old + c * x / q_old;
                *q = q_old + curvature * x * x;
            }
        }
        Ok(UpdateStats {
            newton_iterations: iterations,
            converged,
        })
    }

    /// Decays the evidence toward the prior in natural parameters
    /// (precision q and information η = q·m) by `factor` ∈ (0, 1].
    pub fn decay(&mut self, prior: &LogisticPrior, factor: f64) {
        let q0 = prior.precision;
        let (mean, precision) = self.parts_mut();
        for ((m, q), &m0) in mean.iter_mut().zip(precision).zip(&prior.mean) {
            (*m, *q) = decay_coordinate(*m, *q, m0, q0, factor);
        }
    }

    /// Mean score σ(m·x). Checks the context.
    pub fn mean_score(&self, context: &[f32]) -> Result<f64, PosteriorError> {
        validate_context(context, self.dim())?;
        Ok(sigmoid(self.mean_logit(context)))
    }

    /// Thompson score σ(w̃·x), w̃ ~ N(m, diag(1/q)). Drawn as one normal of
    /// the logit, N(m·x, Σ xᵢ²/qᵢ), which has exactly the distribution of
    /// w̃·x for a single context. Checks the context.
    pub fn sample_score<R: Rng + ?Sized>(
        &self,
        context: &[f32],
        rng: &mut R,
    ) -> Result<f64, PosteriorError> {
        validate_context(context, self.dim())?;
        // The logit's mean and variance in one pass (lane sums).
        let (logit, variance) = logit_and_spread(self.mean(), self.precision(), context);
        let z: f64 = rng.sample(StandardNormal);
        Ok(sigmoid(logit + variance.sqrt() * z))
    }

    /// A full weight draw w̃ ~ N(m, diag(1/q)), for scoring several contexts
    /// with one draw.
    pub fn sample_weights<R: Rng + ?Sized>(&self, rng: &mut R) -> Array1<f64> {
        self.mean()
            .iter()
            .zip(self.precision())
            .map(|(m, q)| m + rng.sample::<f64, _>(StandardNormal) / q.sqrt())
            .collect()
    }

    fn mean_logit(&self, context: &[f32]) -> f64 {
        dot_f32(self.mean(), context)
    }

    fn is_finite(&self) -> bool {
        self.mean().iter().all(|m| m.is_finite())
            && self
                .precision()
                .iter()
                .all(|q| q.is_finite() && *q >= PRECISION_FLOOR)
    }
}

/// One coordinate (mean, precision) decayed toward the prior (m₀, q₀) in
/// natural parameters; `factor` 1 leaves it as is.
#[inline]
fn decay_coordinate(m: f64, q: f64, m0: f64, q0: f64, factor: f64) -> (f64, f64) {
    if factor == 1.0 {
        return (m, q);
    }
    let eta = decay(q * m, q0 * m0, factor);
    let q = decay(q, q0, factor).max(PRECISION_FLOOR);
    (eta / q, q)
}

pub(crate) fn check_finite(field: &'static str, values: &[f64]) -> Result<(), PosteriorError> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(index) => Err(PosteriorError::NonFinite {
            field,
            index,
            value: values[index],
        }),
        None => Ok(()),
    }
}

pub(crate) fn check_prior_dim(prior: &LogisticPrior, dim: usize) -> Result<(), PosteriorError> {
    if prior.dim() != dim {
        return Err(PosteriorError::WrongDimension {
            field: "prior_mean",
            expected: dim,
            got: prior.dim(),
        });
    }
    Ok(())
}
