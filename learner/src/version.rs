//! An A/B experiment version: which model its keys run and what counts as
//! its reward.

use posterior_proto::v1;

use crate::posterior::{
    BetaPrior, CovarianceForm, Forgetting, LogisticPrior, MAX_DIM_DIAGONAL, MAX_DIM_FULL,
    ModelKind, ModelSpec, Observation, PosteriorError,
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
    /// Whether `sample` is a positive by this version's reward rule, as a
    /// hint: nothing else is checked, and a sample without the label is
    /// not. [`VersionSpec::observation`] decides.
    pub fn rewards(&self, sample: &Sample) -> bool {
        sample
            .label(&self.reward.label)
            .is_some_and(|value| self.is_positive(value))
    }

    /// The reward rule: a label value at or above the threshold.
    fn is_positive(&self, value: f32) -> bool {
        f64::from(value) >= self.reward.threshold
    }

    /// Reduces a sample to the observation this version learns from:
    /// checks the version name and context dimension, reads the reward
    /// label and the weight.
    pub fn observation<'a>(&self, sample: &'a Sample) -> Result<Observation<'a>, SampleError> {
        if sample.version != self.name {
            return Err(SampleError::VersionMismatch {
                expected: self.name.clone(),
                got: sample.version.to_string(),
            });
        }
        self.observation_of_own(sample)
    }

    /// [`Self::observation`] of a sample already found to name this
    /// version (the engine looks its version up by the sample's name):
    /// the name is not compared again, once per sample.
    pub(crate) fn observation_of_own<'a>(
        &self,
        sample: &'a Sample,
    ) -> Result<Observation<'a>, SampleError> {
        debug_assert_eq!(sample.version, self.name, "the sample names this version");
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
            reward: self.is_positive(value),
            weight: if self.use_sample_weight {
                f64::from(sample.weight)
            } else {
                1.0
            },
            event_time_ms: sample.event_time_ms,
        })
    }
}

/// The wire form of a spec (for the admin API and the checkpointed
/// registry); `TryFrom` reads it back exactly.
impl From<&VersionSpec> for v1::VersionSpec {
    fn from(spec: &VersionSpec) -> Self {
        let model = match &spec.model.kind {
            ModelKind::Beta(prior) => v1::version_spec::Model::Beta(v1::BetaModel {
                alpha0: prior.alpha(),
                beta0: prior.beta(),
            }),
            ModelKind::Logistic(prior) => v1::version_spec::Model::Logistic(v1::LogisticModel {
                dim: prior.dim() as u32,
                form: match prior.form() {
                    CovarianceForm::Diagonal => v1::CovarianceForm::Diagonal,
                    CovarianceForm::Full => v1::CovarianceForm::Full,
                } as i32,
                prior_mean: prior.mean().to_vec(),
                prior_precision: prior.precision(),
            }),
        };
        v1::VersionSpec {
            name: spec.name.clone(),
            model: Some(model),
            reward_label: spec.reward.label.clone(),
            reward_threshold: spec.reward.threshold,
            forgetting_half_life_ms: spec.model.forgetting.map_or(0, |f| f.half_life_ms()),
            use_sample_weight: spec.use_sample_weight,
        }
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
                // Checked before the prior mean is made: a command naming
                // dim 4294967295 must not allocate 34 GB first.
                let max_dim = match form {
                    CovarianceForm::Diagonal => MAX_DIM_DIAGONAL,
                    CovarianceForm::Full => MAX_DIM_FULL,
                };
                if dim > max_dim {
                    return Err(PosteriorError::OutOfRange {
                        field: "dim",
                        value: f64::from(l.dim),
                        reason: "must be in 1..=4096 (diagonal) or 1..=64 (full)",
                    });
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_proto::v1::{BetaModel, LogisticModel, version_spec::Model};

    fn logistic_spec(dim: u32) -> v1::VersionSpec {
        v1::VersionSpec {
            name: "dwell".into(),
            model: Some(Model::Logistic(LogisticModel {
                dim,
                form: v1::CovarianceForm::Diagonal as i32,
                prior_mean: vec![],
                prior_precision: 1.0,
            })),
            reward_label: "dwell_s".into(),
            reward_threshold: 30.0,
            forgetting_half_life_ms: 3_600_000,
            use_sample_weight: true,
        }
    }

    fn sample(dwell: f32, context: Vec<f32>) -> Sample {
        Sample {
            doc_id: 1,
            version: "dwell".into(),
            event_time_ms: 5,
            context,
            labels: crate::sample::labels([("click", 1.0), ("dwell_s", dwell)]),
            weight: 2.0,
            sample_id: None,
        }
    }

    #[test]
    fn reward_is_the_versions_label_against_its_threshold() {
        let spec = VersionSpec::try_from(logistic_spec(2)).unwrap();
        assert_eq!(spec.model.forgetting.unwrap().half_life_ms(), 3_600_000);
        let long = sample(45.0, vec![1.0, 0.0]);
        let short = sample(10.0, vec![1.0, 0.0]);
        let obs = spec.observation(&long).unwrap();
        assert!(obs.reward);
        assert_eq!((obs.weight, obs.event_time_ms), (2.0, 5));
        assert!(!spec.observation(&short).unwrap().reward);
        let unweighted = VersionSpec {
            use_sample_weight: false,
            ..spec.clone()
        };
        assert_eq!(unweighted.observation(&long).unwrap().weight, 1.0);
        // The hint agrees with the observation, at the threshold too, and
        // a sample without the label is no positive.
        assert!(spec.rewards(&long));
        assert!(!spec.rewards(&short));
        assert!(spec.rewards(&sample(30.0, vec![1.0, 0.0])));
        assert!(
            spec.observation(&sample(30.0, vec![1.0, 0.0]))
                .unwrap()
                .reward
        );
        let mut no_label = long.clone();
        no_label.labels.retain(|(n, _)| n != "dwell_s");
        assert!(!spec.rewards(&no_label));
    }

    #[test]
    fn specs_round_trip_through_the_wire() {
        let spec = VersionSpec::try_from(logistic_spec(3)).unwrap();
        assert_eq!(
            VersionSpec::try_from(v1::VersionSpec::from(&spec)).unwrap(),
            spec
        );
    }

    #[test]
    fn unusable_samples_are_rejected() {
        let spec = VersionSpec::try_from(logistic_spec(2)).unwrap();
        let err = spec.observation(&sample(45.0, vec![1.0])).unwrap_err();
        assert_eq!(err.reason(), "wrong_dimension");
        let mut no_label = sample(45.0, vec![1.0, 0.0]);
        no_label.labels.retain(|(n, _)| n != "dwell_s");
        let err = spec.observation(&no_label).unwrap_err();
        assert_eq!(err.reason(), "missing_label");
        assert!(err.to_string().contains("dwell_s"));
        let mut other = sample(45.0, vec![1.0, 0.0]);
        other.version = "other".into();
        assert_eq!(
            spec.observation(&other).unwrap_err().reason(),
            "version_mismatch"
        );
    }

    #[test]
    fn invalid_specs_name_the_field() {
        let mut bad_mean = logistic_spec(3);
        if let Some(Model::Logistic(l)) = &mut bad_mean.model {
            l.prior_mean = vec![0.0; 2];
        }
        let cases = [
            (bad_mean, "prior_mean"),
            (
                v1::VersionSpec {
                    model: None,
                    ..logistic_spec(2)
                },
                "model",
            ),
            (logistic_spec(0), "dim"),
            // Refused before a prior mean of that size is made.
            (logistic_spec(u32::MAX), "dim"),
            (logistic_spec(4097), "dim"),
            (
                v1::VersionSpec {
                    reward_label: String::new(),
                    ..logistic_spec(2)
                },
                "reward_label",
            ),
            (
                v1::VersionSpec {
                    model: Some(Model::Beta(BetaModel {
                        alpha0: 1.0,
                        beta0: -2.0,
                    })),
                    ..logistic_spec(2)
                },
                "beta0",
            ),
            (
                v1::VersionSpec {
                    forgetting_half_life_ms: -5,
                    ..logistic_spec(2)
                },
                "forgetting_half_life_ms",
            ),
        ];
        for (spec, field) in cases {
            let err = VersionSpec::try_from(spec).unwrap_err();
            assert!(err.to_string().contains(field), "{err} lacks {field}");
        }
    }
}
