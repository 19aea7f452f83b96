//! Contextual policies: pick one of a request's candidates, learn from the
//! shown candidate's label. Every learning policy keeps one posterior per
//! doc from the learner's posterior module and never re-implements it.

use anyhow::{Context, Result};
use posterior_learner::posterior::{
    BetaPosterior, BetaPrior, CovarianceForm, DiagonalGaussian, Forgetting, FullGaussian,
    LogisticPrior, Observation, PosteriorError,
};
use rand::Rng;
use serde::Serialize;

use crate::bernoulli::argmax;
use posterior_learner::simulation::seed::SimRng;
use posterior_learner::simulation::world::Request;

/// Which policy, with its knobs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum PolicySpec {
    /// Logistic Thompson sampling, one Gaussian per doc.
    LogisticTs {
        /// Diagonal or full covariance.
        form: CovarianceForm,
        /// Forgetting half-life in event-time ms, if any.
        half_life_ms: Option<i64>,
    },
    /// ε-greedy on the logistic posterior mean (same updates as TS).
    LogisticGreedy {
        /// Exploration rate.
        epsilon: f64,
    },
    /// Beta TS per doc, ignoring the context.
    BetaTs {
        /// Forgetting half-life in event-time ms, if any.
        half_life_ms: Option<i64>,
    },
    /// Uniformly random candidate.
    Uniform,
    /// The candidate with the largest true probability.
    Oracle,
}

impl PolicySpec {
    /// Row label.
    pub fn label(&self) -> String {
        let forget = |h: &Option<i64>| match h {
            Some(ms) => format!(" forget={}s", *ms as f64 / 1000.0),
            None => String::new(),
        };
        match self {
            Self::LogisticTs { form, half_life_ms } => {
                let form = match form {
                    CovarianceForm::Diagonal => "diag",
                    CovarianceForm::Full => "full",
                };
                format!("ts-logistic-{form}{}", forget(half_life_ms))
            }
            Self::LogisticGreedy { epsilon } => format!("e-greedy-logistic({epsilon})"),
            Self::BetaTs { half_life_ms } => format!("ts-beta{}", forget(half_life_ms)),
            Self::Uniform => "uniform".into(),
            Self::Oracle => "oracle".into(),
        }
    }
}

/// Prior knowledge every learning policy starts from.
#[derive(Debug, Clone, Serialize)]
pub struct PriorConfig {
    /// Prior mean of the bias weight: logit of the base CTR, which the
    /// offline model knows.
    pub bias_mean: f64,
    /// Isotropic prior precision of the logistic weights.
    pub precision: f64,
    /// Beta prior (α₀, β₀) of the Beta policies.
    pub beta: (f64, f64),
}

/// A policy during a run.
pub trait Policy: Send {
    /// Index of the candidate to show.
    fn choose(&mut self, request: &Request, rng: &mut SimRng) -> Result<usize>;
    /// Applies a micro-batch of labels of one doc.
    fn learn(&mut self, doc: u32, batch: &[Observation<'_>]) -> Result<()>;
    /// Whether `learn` does anything (lets the runner skip bookkeeping).
    fn learns(&self) -> bool {
        true
    }
}

/// Builds a policy for `docs` docs of dimension `dim`.
pub fn build(
    spec: &PolicySpec,
    prior: &PriorConfig,
    docs: usize,
    dim: usize,
) -> Result<Box<dyn Policy>> {
    let forgetting = |h: &Option<i64>| -> Result<Option<Forgetting>> {
        h.map(Forgetting::new)
            .transpose()
            .context("forgetting half-life")
    };
    let logistic_prior = |form| -> Result<LogisticPrior> {
        let mut mean = vec![0.0; dim];
        mean[0] = prior.bias_mean;
        LogisticPrior::new(form, mean, prior.precision).context("logistic prior")
    };
    Ok(match spec {
        PolicySpec::LogisticTs { form, half_life_ms } => {
            let p = logistic_prior(*form)?;
            let f = forgetting(half_life_ms)?;
            match form {
                CovarianceForm::Diagonal => {
                    Box::new(Logistic::<DiagonalGaussian>::new(p, f, docs, None))
                }
                CovarianceForm::Full => Box::new(Logistic::<FullGaussian>::new(p, f, docs, None)),
            }
        }
        PolicySpec::LogisticGreedy { epsilon } => {
            let p = logistic_prior(CovarianceForm::Diagonal)?;
            Box::new(Logistic::<DiagonalGaussian>::new(
                p,
                None,
                docs,
                Some(*epsilon),
            ))
        }
        PolicySpec::BetaTs { half_life_ms } => {
            let p = BetaPrior::new(prior.beta.0, prior.beta.1).context("beta prior")?;
            Box::new(BetaTs {
                posteriors: vec![BetaPosterior::prior(&p); docs],
                last_event_ms: vec![0; docs],
                prior: p,
                forgetting: forgetting(half_life_ms)?,
            })
        }
        PolicySpec::Uniform => Box::new(Uniform),
        PolicySpec::Oracle => Box::new(Oracle),
    })
}

/// The two logistic posteriors, seen alike.
trait LogisticModel: Clone + Send {
    fn from_prior(prior: &LogisticPrior) -> Self;
    fn sample(&self, context: &[f32], rng: &mut SimRng) -> Result<f64, PosteriorError>;
    fn mean(&self, context: &[f32]) -> Result<f64, PosteriorError>;
    fn apply(
        &mut self,
        prior: &LogisticPrior,
        forgetting: Option<&Forgetting>,
        last_event_ms: i64,
        batch: &[Observation<'_>],
    ) -> Result<(), PosteriorError>;
}

macro_rules! logistic_model {
    ($t:ty) => {
        impl LogisticModel for $t {
            fn from_prior(prior: &LogisticPrior) -> Self {
                <$t>::prior(prior)
            }
            fn sample(&self, context: &[f32], rng: &mut SimRng) -> Result<f64, PosteriorError> {
                self.sample_score(context, rng)
            }
            fn mean(&self, context: &[f32]) -> Result<f64, PosteriorError> {
                self.mean_score(context)
            }
            fn apply(
                &mut self,
                prior: &LogisticPrior,
                forgetting: Option<&Forgetting>,
                last_event_ms: i64,
                batch: &[Observation<'_>],
            ) -> Result<(), PosteriorError> {
                self.update(prior, forgetting, last_event_ms, batch)
                    .map(|_| ())
            }
        }
    };
}

logistic_model!(DiagonalGaussian);
logistic_model!(FullGaussian);

/// Logistic TS, or ε-greedy on the mean when `epsilon` is set.
struct Logistic<M> {
    prior: LogisticPrior,
    forgetting: Option<Forgetting>,
    posteriors: Vec<M>,
    last_event_ms: Vec<i64>,
    epsilon: Option<f64>,
    scores: Vec<f64>,
}

impl<M: LogisticModel> Logistic<M> {
    fn new(
        prior: LogisticPrior,
        forgetting: Option<Forgetting>,
        docs: usize,
        epsilon: Option<f64>,
    ) -> Self {
        Self {
            posteriors: vec![M::from_prior(&prior); docs],
            last_event_ms: vec![0; docs],
            prior,
            forgetting,
            epsilon,
            scores: Vec::new(),
        }
    }
}

impl<M: LogisticModel> Policy for Logistic<M> {
    fn choose(&mut self, request: &Request, rng: &mut SimRng) -> Result<usize> {
        if let Some(epsilon) = self.epsilon
            && rng.random::<f64>() < epsilon
        {
            return Ok(rng.random_range(0..request.docs.len()));
        }
        self.scores.clear();
        for (k, &doc) in request.docs.iter().enumerate() {
            let posterior = &self.posteriors[doc as usize];
            let context = request.context(k);
            let score = match self.epsilon {
                Some(_) => posterior.mean(context),
                None => posterior.sample(context, rng),
            };
            self.scores.push(score.context("score candidate")?);
        }
        Ok(argmax(self.scores.iter().copied()))
    }

    fn learn(&mut self, doc: u32, batch: &[Observation<'_>]) -> Result<()> {
        let posterior = &mut self.posteriors[doc as usize];
        learn_doc(&mut self.last_event_ms, doc, batch, |last| {
            posterior.apply(&self.prior, self.forgetting.as_ref(), last, batch)
        })
    }
}

/// Applies `batch` to one doc's posterior through `update`, which gets the
/// doc's last event time (for forgetting), then advances that time.
fn learn_doc(
    last_event_ms: &mut [i64],
    doc: u32,
    batch: &[Observation<'_>],
    update: impl FnOnce(i64) -> Result<(), PosteriorError>,
) -> Result<()> {
    let d = doc as usize;
    update(last_event_ms[d]).with_context(|| format!("update doc {doc}"))?;
    let newest = batch.iter().map(|o| o.event_time_ms).max().unwrap_or(0);
    last_event_ms[d] = last_event_ms[d].max(newest);
    Ok(())
}

/// Beta TS per doc.
struct BetaTs {
    prior: BetaPrior,
    forgetting: Option<Forgetting>,
    posteriors: Vec<BetaPosterior>,
    last_event_ms: Vec<i64>,
}

impl Policy for BetaTs {
    fn choose(&mut self, request: &Request, rng: &mut SimRng) -> Result<usize> {
        Ok(argmax(
            request
                .docs
                .iter()
                .map(|&d| self.posteriors[d as usize].sample(rng)),
        ))
    }

    fn learn(&mut self, doc: u32, batch: &[Observation<'_>]) -> Result<()> {
        let posterior = &mut self.posteriors[doc as usize];
        learn_doc(&mut self.last_event_ms, doc, batch, |last| {
            posterior.update(&self.prior, self.forgetting.as_ref(), last, batch)
        })
    }
}

/// Uniformly random candidate.
struct Uniform;

impl Policy for Uniform {
    fn choose(&mut self, request: &Request, rng: &mut SimRng) -> Result<usize> {
        Ok(rng.random_range(0..request.docs.len()))
    }
    fn learn(&mut self, _doc: u32, _batch: &[Observation<'_>]) -> Result<()> {
        Ok(())
    }
    fn learns(&self) -> bool {
        false
    }
}

/// Knows the true probabilities.
struct Oracle;

impl Policy for Oracle {
    fn choose(&mut self, request: &Request, _rng: &mut SimRng) -> Result<usize> {
        Ok(argmax(request.probs.iter().copied()))
    }
    fn learn(&mut self, _doc: u32, _batch: &[Observation<'_>]) -> Result<()> {
        Ok(())
    }
    fn learns(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_name_the_knobs() {
        let s = PolicySpec::LogisticTs {
            form: CovarianceForm::Full,
            half_life_ms: Some(60_000),
        };
        assert_eq!(s.label(), "ts-logistic-full forget=60s");
        assert_eq!(PolicySpec::BetaTs { half_life_ms: None }.label(), "ts-beta");
    }
}
