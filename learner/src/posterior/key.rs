//! One key's state: the posterior plus its bookkeeping.

use rand::Rng;

use super::logistic::UpdateStats;
use super::{
    BetaPosterior, CovarianceForm, DiagonalGaussian, FullGaussian, ModelKind, ModelSpec,
    Observation, PosteriorError,
};

/// The posterior of one key, by model.
#[derive(Debug, Clone, PartialEq)]
pub enum Posterior {
    /// Beta–Bernoulli.
    Beta(BetaPosterior),
    /// Logistic, diagonal covariance.
    Diagonal(DiagonalGaussian),
    /// Logistic, full covariance (boxed: a d × d precision and its factor
    /// are far larger than the other variants, which stay inline).
    Full(Box<FullGaussian>),
}

impl Posterior {
    /// Short name of the model, for errors.
    pub fn name(&self) -> &'static str {
        match self {
            Posterior::Beta(_) => "beta",
            Posterior::Diagonal(_) => "logistic-diagonal",
            Posterior::Full(_) => "logistic-full",
        }
    }
}

/// Everything stored per key = (version, doc).
#[derive(Debug, Clone, PartialEq)]
pub struct KeyState {
    /// Number of updates applied; the key's publish sequence number. It
    /// comes from the input, never a clock, so a replay reproduces it.
    pub seq: u64,
    /// Weighted number of samples applied.
    pub sample_count: f64,
    /// Newest event time applied (Unix ms); `i64::MIN` before any update.
    pub updated_event_time_ms: i64,
    /// The model's posterior.
    pub posterior: Posterior,
}

impl KeyState {
    /// A key that has seen nothing: the version's prior.
    pub fn prior(spec: &ModelSpec) -> Self {
        let posterior = match &spec.kind {
            ModelKind::Beta(prior) => Posterior::Beta(BetaPosterior::prior(prior)),
            ModelKind::Logistic(prior) => match prior.form() {
                CovarianceForm::Diagonal => Posterior::Diagonal(DiagonalGaussian::prior(prior)),
                CovarianceForm::Full => Posterior::Full(Box::new(FullGaussian::prior(prior))),
            },
        };
        Self {
            seq: 0,
            sample_count: 0.0,
            updated_event_time_ms: i64::MIN,
            posterior,
        }
    }

    /// Prefetches the heap parts an update of this state reads (see
    /// `crate::prefetch`): a diagonal posterior's vectors. A full
    /// covariance is too large to be worth it.
    pub(crate) fn prefetch_parts(&self) {
        if let Posterior::Diagonal(gaussian) = &self.posterior {
            gaussian.prefetch();
        }
    }

    /// True while no update has been applied.
    pub fn is_prior(&self) -> bool {
        self.seq == 0
    }

    /// Applies one micro-batch in order. On error nothing changes. An empty
    /// batch changes nothing and does not bump `seq`.
    pub fn update(
        &mut self,
        spec: &ModelSpec,
        batch: &[Observation<'_>],
    ) -> Result<UpdateStats, PosteriorError> {
        if batch.is_empty() {
            return Ok(UpdateStats::default());
        }
        let forgetting = spec.forgetting.as_ref();
        let last = self.updated_event_time_ms;
        let stats = match (&mut self.posterior, &spec.kind) {
            (Posterior::Beta(post), ModelKind::Beta(prior)) => {
                post.update(prior, forgetting, last, batch)?;
                UpdateStats {
                    newton_iterations: 0,
                    converged: true,
                }
            }
            (Posterior::Diagonal(post), ModelKind::Logistic(prior))
                if prior.form() == CovarianceForm::Diagonal =>
            {
                post.update(prior, forgetting, last, batch)?
            }
            (Posterior::Full(post), ModelKind::Logistic(prior))
                if prior.form() == CovarianceForm::Full =>
            {
                post.update(prior, forgetting, last, batch)?
            }
            (posterior, kind) => {
                return Err(PosteriorError::ModelMismatch {
                    state: posterior.name(),
                    spec: kind.name(),
                });
            }
        };
        self.seq += 1;
        self.sample_count += batch.iter().map(|o| o.weight).sum::<f64>();
        let newest = batch.iter().map(|o| o.event_time_ms).max().unwrap_or(last);
        self.updated_event_time_ms = self.updated_event_time_ms.max(newest);
        Ok(stats)
    }

    /// Posterior mean score for a context (ignored by Beta models).
    pub fn mean_score(&self, context: &[f32]) -> Result<f64, PosteriorError> {
        match &self.posterior {
            Posterior::Beta(post) => Ok(post.mean()),
            Posterior::Diagonal(post) => post.mean_score(context),
            Posterior::Full(post) => post.mean_score(context),
        }
    }

    /// Thompson draw of the score for a context (ignored by Beta models).
    pub fn sample_score<R: Rng + ?Sized>(
        &self,
        context: &[f32],
        rng: &mut R,
    ) -> Result<f64, PosteriorError> {
        match &self.posterior {
            Posterior::Beta(post) => Ok(post.sample(rng)),
            Posterior::Diagonal(post) => post.sample_score(context, rng),
            Posterior::Full(post) => post.sample_score(context, rng),
        }
    }
}
