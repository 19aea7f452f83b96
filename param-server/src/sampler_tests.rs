//! Unit tests of the sampler, with fixed seeds.

use posterior_learner::posterior::{
    BetaPosterior, BetaPrior, CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind,
    ModelSpec, sigmoid,
};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};

use super::*;
use crate::ParamStore;
use crate::request::DocsRequest;

fn store_with(kind: ModelKind, state: Posterior) -> ParamStore {
    let store = ParamStore::default();
    store
        .register(VersionSpec {
            name: "v".into(),
            model: ModelSpec::new(kind),
            reward: RewardSpec::binary("click"),
            use_sample_weight: false,
        })
        .unwrap();
    let state = KeyState {
        seq: 1,
        sample_count: 1.0,
        updated_event_time_ms: 0,
        posterior: state,
    };
    store.apply("v", 1, state).unwrap();
    store
}

fn request(doc_ids: Vec<u64>, context: Vec<f32>, seed: u64) -> SampleRequest {
    SampleRequest {
        docs: DocsRequest {
            version: "v".into(),
            doc_ids,
        },
        context,
        seed: Some(seed),
    }
}

fn beta_store() -> ParamStore {
    store_with(
        ModelKind::Beta(BetaPrior::UNIFORM),
        Posterior::Beta(BetaPosterior::from_parts(3.0, 7.0).unwrap()),
    )
}

fn diagonal_store() -> ParamStore {
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, 2, 1.0).unwrap();
    let g = DiagonalGaussian::from_parts(vec![0.5, 0.5], vec![4.0, 4.0]).unwrap();
    store_with(ModelKind::Logistic(prior), Posterior::Diagonal(g))
}

#[test]
fn beta_draws_follow_the_posterior_and_the_prior_for_unseen_docs() {
    let store = beta_store();
    let version = store.version("v").unwrap();
    let n = 20_000;
    let scores = sample_scores(&version, &request(vec![1; n], vec![], 11)).unwrap();
    let mean = scores.sampled.iter().sum::<f64>() / n as f64;
    // Beta(3, 7): mean 0.3, sd 0.138, s.e. of the mean ≈ 1e-3; allow 5 s.e.
    assert!((mean - 0.3).abs() < 5e-3, "mean {mean}");
    assert!(scores.mean.iter().all(|&m| m == 0.3));
    let unseen = sample_scores(&version, &request(vec![2], vec![], 11)).unwrap();
    assert_eq!(unseen.mean, [0.5], "uniform prior");
}

#[test]
fn a_seed_makes_the_draws_reproducible() {
    let store = beta_store();
    let version = store.version("v").unwrap();
    let docs = vec![1, 2, 1, 3];
    let a = sample_scores(&version, &request(docs.clone(), vec![], 5)).unwrap();
    let b = sample_scores(&version, &request(docs.clone(), vec![], 5)).unwrap();
    let c = sample_scores(&version, &request(docs, vec![], 6)).unwrap();
    assert_eq!(a, b);
    assert_ne!(a.sampled, c.sampled);
}

#[test]
fn logistic_draws_have_the_logit_moments_of_the_posterior() {
    let store = diagonal_store();
    let version = store.version("v").unwrap();
    let n = 20_000;
    let scores = sample_scores(&version, &request(vec![1; n], vec![1.0, 1.0], 3)).unwrap();
    // w·x ~ N(0.5 + 0.5, 1/4 + 1/4).
    let logits: Vec<f64> = scores
        .sampled
        .iter()
        .map(|p| (p / (1.0 - p)).ln())
        .collect();
    let mean = logits.iter().sum::<f64>() / n as f64;
    let var = logits.iter().map(|l| (l - mean).powi(2)).sum::<f64>() / n as f64;
    assert!((mean - 1.0).abs() < 0.03, "logit mean {mean}");
    assert!((var / 0.5 - 1.0).abs() < 0.05, "logit var {var}");
    assert!(scores.mean.iter().all(|&m| m == sigmoid(1.0)));
}

#[test]
fn contexts_are_shared_or_one_per_doc() {
    let store = diagonal_store();
    let version = store.version("v").unwrap();
    let per_doc = request(vec![1, 2], vec![1.0, 1.0, -1.0, 0.0], 1);
    let scores = sample_scores(&version, &per_doc).unwrap();
    // Doc 1 is the posterior at x = (1, 1); doc 2 the zero-mean prior.
    assert_eq!(scores.mean, [sigmoid(1.0), 0.5]);
    let shared = sample_scores(&version, &request(vec![1, 2], vec![1.0, 1.0], 1)).unwrap();
    assert_eq!(shared.mean, [sigmoid(1.0), 0.5]);
}

#[test]
fn a_context_of_the_wrong_length_is_refused() {
    let logistic = diagonal_store();
    let version = logistic.version("v").unwrap();
    for context in [vec![], vec![1.0], vec![1.0; 3], vec![1.0; 6]] {
        let err = sample_scores(&version, &request(vec![1, 2], context, 1)).unwrap_err();
        assert!(
            matches!(err, ServeError::WrongDimension { dim: 2, .. }),
            "{err}"
        );
    }
    let beta = beta_store();
    let version = beta.version("v").unwrap();
    let err = sample_scores(&version, &request(vec![1], vec![0.5], 1)).unwrap_err();
    assert!(err.to_string().contains("needs 0"), "{err}");
}
