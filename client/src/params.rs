//! The parameters of one (version, doc) key as a predictor sees them:
//! the wire `posterior.v1.Params` checked and converted at this boundary.

use ndarray::Array2;
use posterior_learner::posterior::{
    BetaPosterior, DiagonalGaussian, FullGaussian, KeyState, Posterior, PosteriorError,
};
use posterior_proto::v1;

/// How the Gaussian's precision is stored.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// Independent coordinates: one precision per coordinate.
    Diagonal(Vec<f64>),
    /// Dense precision matrix, lower triangle packed by rows:
    /// `Q[0][0], Q[1][0], Q[1][1], …` (dim · (dim + 1) / 2 entries).
    Full(Vec<f64>),
}

/// A key's posterior.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Model {
    /// Beta–Bernoulli: θ ~ Beta(alpha, beta).
    Beta {
        /// α.
        alpha: f64,
        /// β.
        beta: f64,
    },
    /// Logistic: w ~ N(mean, precision⁻¹), score σ(w · x).
    Gaussian {
        /// Posterior mean of the weights.
        mean: Vec<f64>,
        /// Marginal variance of each weight.
        variance: Vec<f64>,
        /// The precision, as the server keeps it.
        precision: Precision,
    },
}

/// The parameters of one doc of a version.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Params {
    /// The doc.
    pub doc_id: u64,
    /// The posterior.
    pub model: Model,
    /// The key's update count; never goes backwards, and a replay
    /// republishes the same value under the same number.
    pub seq: u64,
    /// Weighted number of samples applied.
    pub sample_count: f64,
    /// Event time of the newest sample applied (Unix ms).
    pub updated_event_time_ms: i64,
    /// True when the key has never been updated: the version's prior.
    pub is_prior: bool,
}

impl Model {
    /// Posterior mean score: α / (α + β) for Beta, σ(mean · context) for
    /// Gaussian (`None` when the context's length is not the dimension).
    pub fn mean_score(&self, context: &[f32]) -> Option<f64> {
        match self {
            Model::Beta { alpha, beta } => Some(alpha / (alpha + beta)),
            Model::Gaussian { mean, .. } => (mean.len() == context.len()).then(|| {
                let z: f64 = mean
                    .iter()
                    .zip(context)
                    .map(|(m, &x)| m * f64::from(x))
                    .sum();
                1.0 / (1.0 + (-z).exp())
            }),
        }
    }
}

impl Params {
    /// The learner's state of this key, for local Thompson draws with
    /// [`KeyState::sample_score`] (the same maths the server samples with).
    pub fn to_key_state(&self) -> Result<KeyState, PosteriorError> {
        let posterior = match &self.model {
            Model::Beta { alpha, beta } => {
                Posterior::Beta(BetaPosterior::from_parts(*alpha, *beta)?)
            }
            Model::Gaussian {
                mean,
                precision: Precision::Diagonal(q),
                ..
            } => Posterior::Diagonal(DiagonalGaussian::from_parts(mean.clone(), q.clone())?),
            Model::Gaussian {
                mean,
                precision: Precision::Full(packed),
                ..
            } => Posterior::Full(Box::new(FullGaussian::from_parts(
                mean.clone(),
                unpack_lower(mean.len(), packed)?,
            )?)),
        };
        Ok(KeyState {
            seq: self.seq,
            sample_count: self.sample_count,
            updated_event_time_ms: self.updated_event_time_ms,
            posterior,
        })
    }
}

/// The symmetric matrix whose lower triangle is `packed` (by rows).
fn unpack_lower(dim: usize, packed: &[f64]) -> Result<Array2<f64>, PosteriorError> {
    if packed.len() != dim * (dim + 1) / 2 {
        return Err(PosteriorError::WrongDimension {
            field: "precision",
            expected: dim * (dim + 1) / 2,
            got: packed.len(),
        });
    }
    let mut q = Array2::zeros((dim, dim));
    let mut values = packed.iter();
    for i in 0..dim {
        for j in 0..=i {
            let v = *values.next().expect("length checked above");
            q[(i, j)] = v;
            q[(j, i)] = v;
        }
    }
    Ok(q)
}

impl TryFrom<v1::Params> for Params {
    type Error = String;

    /// Checks that the model is present and its vectors agree in length.
    fn try_from(wire: v1::Params) -> Result<Self, Self::Error> {
        let doc = wire.doc_id;
        let model = match wire.model {
            Some(v1::params::Model::Beta(b)) => Model::Beta {
                alpha: b.alpha,
                beta: b.beta,
            },
            Some(v1::params::Model::Gaussian(g)) => {
                let dim = g.mean.len();
                if g.variance.len() != dim {
                    return Err(format!(
                        "doc {doc}: {} variances for {dim} means",
                        g.variance.len()
                    ));
                }
                let precision = match v1::CovarianceForm::try_from(g.form) {
                    Ok(v1::CovarianceForm::Diagonal) if g.precision.len() == dim => {
                        Precision::Diagonal(g.precision)
                    }
                    Ok(v1::CovarianceForm::Full) if g.precision.len() == dim * (dim + 1) / 2 => {
                        Precision::Full(g.precision)
                    }
                    form => {
                        return Err(format!(
                            "doc {doc}: covariance form {form:?} with {} precision values for dim {dim}",
                            g.precision.len()
                        ));
                    }
                };
                Model::Gaussian {
                    mean: g.mean,
                    variance: g.variance,
                    precision,
                }
            }
            None => return Err(format!("doc {doc}: no model")),
        };
        Ok(Self {
            doc_id: doc,
            model,
            seq: wire.seq,
            sample_count: wire.sample_count,
            updated_event_time_ms: wire.updated_event_time_ms,
            is_prior: wire.is_prior,
        })
    }
}

/// Server-side Thompson draws of a batch of docs, in request order.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Scores {
    /// One Thompson draw per doc.
    pub sampled: Vec<f64>,
    /// Posterior mean score per doc.
    pub mean: Vec<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::params::params_to_wire;
    use rand::SeedableRng;

    #[test]
    fn wire_params_convert_and_rebuild_the_learners_state() {
        let g = DiagonalGaussian::from_parts(vec![0.5, -1.0], vec![2.0, 4.0]).unwrap();
        let state = KeyState {
            seq: 7,
            sample_count: 3.0,
            updated_event_time_ms: 1_700,
            posterior: Posterior::Diagonal(g),
        };
        let params = Params::try_from(params_to_wire("dwell", 9, &state)).unwrap();
        let Model::Gaussian { variance, .. } = &params.model else {
            panic!("gaussian")
        };
        assert_eq!(variance, &[0.5, 0.25]);
        assert_eq!((params.doc_id, params.seq, params.is_prior), (9, 7, false));
        assert_eq!(params.to_key_state().unwrap(), state);
        let mut a = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(1);
        let mut b = a.clone();
        assert_eq!(
            params
                .to_key_state()
                .unwrap()
                .sample_score(&[1.0, 1.0], &mut a)
                .unwrap(),
            state.sample_score(&[1.0, 1.0], &mut b).unwrap()
        );
        let z: f64 = 0.5 - 1.0;
        assert_eq!(
            params.model.mean_score(&[1.0, 1.0]),
            Some(1.0 / (1.0 + (-z).exp()))
        );
        assert_eq!(params.model.mean_score(&[1.0]), None);
    }

    #[test]
    fn full_precision_unpacks_symmetrically() {
        let q = unpack_lower(2, &[2.0, 0.5, 3.0]).unwrap();
        assert_eq!(q, ndarray::arr2(&[[2.0, 0.5], [0.5, 3.0]]));
        assert!(unpack_lower(2, &[1.0, 2.0]).is_err());
    }

    #[test]
    fn malformed_wire_params_are_rejected() {
        let mut wire = v1::Params {
            doc_id: 4,
            ..v1::Params::default()
        };
        assert!(
            Params::try_from(wire.clone())
                .unwrap_err()
                .contains("no model")
        );
        wire.model = Some(v1::params::Model::Gaussian(v1::GaussianParams {
            mean: vec![0.0; 2],
            form: v1::CovarianceForm::Diagonal as i32,
            precision: vec![1.0; 3],
            variance: vec![1.0; 2],
        }));
        let err = Params::try_from(wire).unwrap_err();
        assert!(err.contains("3 precision values for dim 2"), "{err}");
    }
}
