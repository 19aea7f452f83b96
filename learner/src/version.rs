//! An A/B experiment version: which model its keys run and what counts as
//! its reward.

use posterior_proto::v1;

use crate::posterior::{
    BetaPrior, CovarianceForm, Forgetting, LogisticPrior, ModelKind, ModelSpec, Observation,
    PosteriorError,
};
use crate::sample::{Sample, SampleError};

/// Which label is the reward and when it counts as positive.
#[derive(Debug, Clone, PartialEq)]
pub struct RewardSpec {
    /// Label name, e.g. `click`, `order`, `dwell_s`.
    pub label: String,
    /// Positive when `labels[label] >= threshold` (e.g. 0.5 for 0/1 labels,
    /// 30 for "dwell ≥ 30 s").
    pub threshold: f64,
}

impl RewardSpec {
    /// A 0/1 label: positive when ≥ 0.5.
    pub fn binary(label: &str) -> Self {
        Self {
            label: label.to_owned(),
            threshold: 0.5,
        }
    }
}

/// A version: its name, model and reward.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionSpec {
    /// Unique name, carried by every sample of the version.
    pub name: String,
    /// Model, prior and forgetting.
    pub model: ModelSpec,
    /// What counts as positive.
    pub reward: RewardSpec,
    /// When false, every sample has weight 1.
    pub use_sample_weight: bool,
}

impl VersionSpec {
    /// Reduces a sample to the observation this version learns from:
    /// checks the version name and context dimension, reads the reward
    /// label and the weight.
    pub fn observation<'a>(&self, sample: &'a Sample) -> Result<Observation<'a>, SampleError> {
        if sample.version != self.name {
            return Err(SampleError::VersionMismatch {
                expected: self.name.clone(),
                got: sample.version.clone(),
            });
        }
        let dim = self.model.kind.dim();
        if sample.context.len() != dim {
            return Err(SampleError::WrongDimension {
                expected: dim,
                got: sample.context.len(),
            });
        }
        let value = sample
            .label(&self.reward.label)
            .ok_or_else(|| SampleError::MissingLabel {
                label: self.reward.label.clone(),
            })?;
        Ok(Observation {
            context: &sample.context,
            reward: f64::from(value) >= self.reward.threshold,
            weight: if self.use_sample_weight {
                f64::from(sample.weight)
            } else {
                1.0
            },
            event_time_ms: sample.event_time_ms,
        })
    }
}

/// Converts an admin or config spec, rejecting anything incomplete or out
/// of range with an error that names the field.
impl TryFrom<v1::VersionSpec> for VersionSpec {
    type Error = PosteriorError;

    fn try_from(spec: v1::VersionSpec) -> Result<Self, Self::Error> {
        let invalid = |field, reason| PosteriorError::OutOfRange {
            field,
            value: f64::NAN,
            reason,
        };
        if spec.name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if spec.reward_label.is_empty() {
            return Err(invalid("reward_label", "must not be empty"));
        }
        if !spec.reward_threshold.is_finite() {
            return Err(PosteriorError::NonFinite {
                field: "reward_threshold",
                index: 0,
                value: spec.reward_threshold,
            });
        }
        let kind = match spec.model {
            Some(v1::version_spec::Model::Beta(b)) => {
                ModelKind::Beta(BetaPrior::new(b.alpha0, b.beta0)?)
            }
            Some(v1::version_spec::Model::Logistic(l)) => {
                let form = match v1::CovarianceForm::try_from(l.form) {
                    Ok(v1::CovarianceForm::Diagonal | v1::CovarianceForm::Unspecified) => {
                        CovarianceForm::Diagonal
                    }
                    Ok(v1::CovarianceForm::Full) => CovarianceForm::Full,
                    Err(_) => return Err(invalid("form", "unknown covariance form")),
                };
                let dim = l.dim as usize;
                let mean = if l.prior_mean.is_empty() {
                    vec![0.0; dim]
                } else if l.prior_mean.len() == dim {
                    l.prior_mean
                } else {
                    return Err(PosteriorError::WrongDimension {
                        field: "prior_mean",
                        expected: dim,
                        got: l.prior_mean.len(),
                    });
                };
                ModelKind::Logistic(LogisticPrior::new(form, mean, l.prior_precision)?)
            }
            None => return Err(invalid("model", "must be beta or logistic")),
        };
        let forgetting = match spec.forgetting_half_life_ms {
            0 => None,
            ms => Some(Forgetting::new(ms)?),
        };
        Ok(Self {
            name: spec.name,
            model: ModelSpec { kind, forgetting },
            reward: RewardSpec {
                label: spec.reward_label,
                threshold: spec.reward_threshold,
            },
            use_sample_weight: spec.use_sample_weight,
        })
    }
}
