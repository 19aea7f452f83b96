//! Tests of the logistic posteriors against an independent reference, and
//! property tests of the invariants every model keeps.

use ndarray::Array2;
use proptest::prelude::*;
use rand::{Rng, SeedableRng};
use rand_distr::StandardNormal;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;

/// Reference Laplace step written from the formula, independently of
/// `newton.rs`: minimise ½(w−m)ᵀQ(w−m) + Σ ω log(1+exp(−s w·x)) with
/// Newton (each step halved while it would raise the objective) and
/// Gaussian elimination until the gradient vanishes; return the mode and
/// the Laplace precision Q + Σ ω p(1−p) x xᵀ at the mode.
fn reference_laplace(
    m: &[f64],
    q: &Array2<f64>,
    batch: &[(Vec<f32>, bool, f64)],
) -> (Vec<f64>, Array2<f64>) {
    let d = m.len();
    let mut w = m.to_vec();
    let sig = |z: f64| 1.0 / (1.0 + (-z).exp());
    let objective = |w: &[f64]| -> f64 {
        let prior: f64 = (0..d)
            .flat_map(|i| (0..d).map(move |j| (i, j)))
            .map(|(i, j)| 0.5 * (w[i] - m[i]) * q[(i, j)] * (w[j] - m[j]))
            .sum();
        let loss: f64 = batch
            .iter()
            .map(|(x, y, weight)| {
                let s = if *y { 1.0 } else { -1.0 };
                let z: f64 = x.iter().zip(w).map(|(a, b)| f64::from(*a) * b).sum();
                weight * (-s * z).exp().ln_1p()
            })
            .sum();
        prior + loss
    };
    let mut converged = false;
    for _ in 0..200 {
        let mut grad: Vec<f64> = (0..d)
            .map(|i| (0..d).map(|j| q[(i, j)] * (w[j] - m[j])).sum())
            .collect();
        let mut hess = q.clone();
        for (x, y, weight) in batch {
            let x: Vec<f64> = x.iter().map(|&v| f64::from(v)).collect();
            let s = if *y { 1.0 } else { -1.0 };
            let z: f64 = x.iter().zip(&w).map(|(a, b)| a * b).sum();
            let p = sig(z);
            // d/dw log(1 + exp(−s z)) = −s σ(−s z) x
            for i in 0..d {
                grad[i] -= weight * s * sig(-s * z) * x[i];
                for j in 0..d {
                    hess[(i, j)] += weight * p * (1.0 - p) * x[i] * x[j];
                }
            }
        }
        let step = gauss_solve(hess, grad.clone());
        // The gradient's rounding floor grows with the contexts' scale;
        // a step this small is below any difference the tests look at.
        let largest = |v: &[f64]| v.iter().fold(0.0_f64, |a, x| a.max(x.abs()));
        if largest(&grad) < 1e-12 || largest(&step) < 1e-13 * (1.0 + largest(&w)) {
            converged = true;
            break;
        }
        // Small steps are taken whole: their change of the objective is
        // below its rounding.
        let small = largest(&step) < 1e-8 * (1.0 + largest(&w));
        let before = objective(&w);
        let mut t = 1.0;
        loop {
            let trial: Vec<f64> = (0..d).map(|i| w[i] - t * step[i]).collect();
            if small || objective(&trial) <= before || t < 1e-6 {
                w = trial;
                break;
            }
            t *= 0.5;
        }
    }
    assert!(converged, "the reference did not converge: {w:?}");
    let mut laplace = q.clone();
    for (x, _, weight) in batch {
        let z: f64 = x.iter().zip(&w).map(|(a, b)| f64::from(*a) * b).sum();
        let p = sig(z);
        for i in 0..d {
            for j in 0..d {
                laplace[(i, j)] += weight * p * (1.0 - p) * f64::from(x[i]) * f64::from(x[j]);
            }
        }
    }
    (w, laplace)
}

fn gauss_solve(mut a: Array2<f64>, mut b: Vec<f64>) -> Vec<f64> {
    let n = b.len();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| a[(i, col)].abs().total_cmp(&a[(j, col)].abs()))
            .unwrap();
        for k in 0..n {
            a.swap((col, k), (pivot, k));
        }
        b.swap(col, pivot);
        for row in (col + 1)..n {
            let f = a[(row, col)] / a[(col, col)];
            for k in col..n {
                a[(row, k)] -= f * a[(col, k)];
            }
            b[row] -= f * b[col];
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let s: f64 = ((row + 1)..n).map(|k| a[(row, k)] * x[k]).sum();
        x[row] = (b[row] - s) / a[(row, row)];
    }
    x
}

fn random_batch(rng: &mut Xoshiro256PlusPlus, n: usize, d: usize) -> Vec<(Vec<f32>, bool, f64)> {
    (0..n)
        .map(|_| {
            let x: Vec<f32> = (0..d)
                .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
                .collect();
            (x, rng.random_bool(0.4), 0.5 + rng.random::<f64>())
        })
        .collect()
}

fn observations(batch: &[(Vec<f32>, bool, f64)]) -> Vec<Observation<'_>> {
    batch
        .iter()
        .enumerate()
        .map(|(t, (x, y, w))| Observation {
            context: x,
            reward: *y,
            weight: *w,
            event_time_ms: t as i64,
        })
        .collect()
}

fn assert_close(a: f64, b: f64, tol: f64, what: &str) {
    assert!(
        (a - b).abs() <= tol * (1.0 + b.abs()),
        "{what}: {a} vs reference {b}"
    );
}

/// Updates the diagonal `post` with `batch` and checks it against the
/// reference Laplace step from the same state: converged, the same mean,
/// and the diagonal of the reference precision (the diagonal form keeps
/// only the diagonal of the curvature).
fn assert_update_matches_reference_laplace(
    post: &mut DiagonalGaussian,
    prior: &LogisticPrior,
    batch: &[(Vec<f32>, bool, f64)],
) {
    let q = Array2::from_diag(&ndarray::ArrayView1::from(post.precision()));
    let (w_ref, q_ref) = reference_laplace(post.mean(), &q, batch);
    let stats = post.update(prior, None, 0, &observations(batch)).unwrap();
    assert!(stats.converged, "n = {}: {stats:?}", batch.len());
    for i in 0..post.mean().len() {
        assert_close(post.mean()[i], w_ref[i], 1e-9, "mean");
        assert_close(post.precision()[i], q_ref[(i, i)], 1e-9, "precision");
    }
}

#[test]
fn diagonal_update_matches_reference_laplace() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let d = 5;
    let prior = LogisticPrior::new(
        CovarianceForm::Diagonal,
        vec![0.3, -0.2, 0.0, 0.1, -1.0],
        2.0,
    )
    .unwrap();
    // n = 1 and 3 take the dual path, n = 12 the primal path.
    for n in [1, 3, 12] {
        let mut post = DiagonalGaussian::prior(&prior);
        post.update(
            &prior,
            None,
            0,
            &observations(&random_batch(&mut rng, 4, d)),
        )
        .unwrap();
        let batch = random_batch(&mut rng, n, d);
        assert_update_matches_reference_laplace(&mut post, &prior, &batch);
    }
}

/// One click on a young d = 32 state whose score is low — the regime where
/// the scalar solve's Newton steps used to swing between the ends of its
/// bracket and could stop unconverged, applying a wrong mean (see
/// `newton::single_step`). Bench 1's contexts, `[1, u₁ … u₃₁]`; every
/// update lands on the reference mode and its Laplace precision.
#[test]
fn single_clicks_on_young_states_match_reference_laplace() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(23);
    let d = 32;
    for _ in 0..100 {
        let mut mean = vec![0.0; d];
        mean[0] = rng.random_range(-8.0..-2.0);
        let prior =
            LogisticPrior::new(CovarianceForm::Diagonal, mean, rng.random_range(0.6..1.2)).unwrap();
        let mut post = DiagonalGaussian::prior(&prior);
        let x: Vec<f32> = (0..d)
            .map(|i| {
                if i == 0 {
                    1.0
                } else {
                    rng.random_range(-1.0..1.0)
                }
            })
            .collect();
        assert_update_matches_reference_laplace(&mut post, &prior, &[(x, true, 1.0)]);
    }
}

/// The dual solve's line search sums the softplus changes with one
/// logarithm per 64 samples when the batch shares one weight, and one per
/// sample otherwise. Both land on the reference mode: with small batches,
/// with contexts scaled up so that whole Newton steps overshoot and the
/// search shortens them, and with more than 64 samples in the dual form.
#[test]
fn dual_solves_match_reference_laplace_with_one_weight_or_many() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(13);
    for (d, n, scale, one_weight) in [
        (8, 2, 1.0, true),
        (8, 2, 1.0, false),
        (8, 7, 6.0, true),
        (8, 7, 6.0, false),
        (80, 70, 1.0, true),
        (80, 70, 3.0, false),
    ] {
        let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, d, 1.0).unwrap();
        let mut post = DiagonalGaussian::prior(&prior);
        post.update(
            &prior,
            None,
            0,
            &observations(&random_batch(&mut rng, 3, d)),
        )
        .unwrap();
        let mut batch = random_batch(&mut rng, n, d);
        for (x, _, weight) in &mut batch {
            x.iter_mut().for_each(|v| *v *= scale);
            if one_weight {
                *weight = 1.25;
            }
        }
        let case = format!("d {d}, n {n}, scale {scale}, one weight {one_weight}");
        let q = Array2::from_diag(&ndarray::ArrayView1::from(post.precision()));
        let (w_ref, q_ref) = reference_laplace(post.mean(), &q, &batch);
        let stats = post.update(&prior, None, 0, &observations(&batch)).unwrap();
        assert!(stats.converged, "{case}: {stats:?}");
        for i in 0..d {
            assert_close(post.mean()[i], w_ref[i], 1e-9, &format!("{case}: mean"));
            // The curvature p(1 − p)x² carries the mode's tolerance
            // into the precision times the contexts' scale squared.
            assert_close(
                post.precision()[i],
                q_ref[(i, i)],
                1e-9 * f64::from(scale * scale),
                &format!("{case}: precision"),
            );
        }
    }
}

#[test]
fn full_update_matches_reference_laplace() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(12);
    let d = 4;
    let prior = LogisticPrior::isotropic(CovarianceForm::Full, d, 1.5).unwrap();
    for n in [1, 4, 9] {
        let mut post = FullGaussian::prior(&prior);
        post.update(
            &prior,
            None,
            0,
            &observations(&random_batch(&mut rng, 6, d)),
        )
        .unwrap();
        let batch = random_batch(&mut rng, n, d);
        let (w_ref, q_ref) =
            reference_laplace(post.mean().as_slice().unwrap(), post.precision(), &batch);
        post.update(&prior, None, 0, &observations(&batch)).unwrap();
        for i in 0..d {
            assert_close(post.mean()[i], w_ref[i], 1e-9, "mean");
            for j in 0..d {
                assert_close(post.precision()[(i, j)], q_ref[(i, j)], 1e-9, "precision");
            }
        }
    }
}

#[test]
fn a_negative_label_lowers_the_score() {
    // A 0/1 label fed into a ±1 loss would treat "no click" as no evidence.
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, 2, 1.0).unwrap();
    let x = [1.0_f32, 0.5];
    let mut post = DiagonalGaussian::prior(&prior);
    post.update(&prior, None, 0, &[Observation::new(&x, false)])
        .unwrap();
    assert!(post.mean_score(&x).unwrap() < 0.5 - 0.05);
    let mut post = DiagonalGaussian::prior(&prior);
    post.update(&prior, None, 0, &[Observation::new(&x, true)])
        .unwrap();
    assert!(post.mean_score(&x).unwrap() > 0.5 + 0.05);
}

#[test]
fn weight_draws_have_variance_one_over_precision() {
    let post = DiagonalGaussian::from_parts(vec![0.5, -1.0], vec![4.0, 0.25]).unwrap();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(5);
    let n = 100_000;
    let draws: Vec<_> = (0..n).map(|_| post.sample_weights(&mut rng)).collect();
    for (i, (mean, var)) in [(0.5, 0.25), (-1.0, 4.0)].into_iter().enumerate() {
        let m = draws.iter().map(|w| w[i]).sum::<f64>() / n as f64;
        let v = draws.iter().map(|w| (w[i] - m).powi(2)).sum::<f64>() / n as f64;
        assert!((m - mean).abs() < 5.0 * (var / n as f64).sqrt(), "mean {m}");
        assert!((v / var - 1.0).abs() < 0.03, "variance {v} vs {var}");
    }
}

#[test]
fn score_draws_match_weight_draws_in_distribution() {
    // The one-normal shortcut and the full weight draw give the same logit law.
    let mut q = Array2::eye(3) * 2.0;
    q[(0, 1)] = 0.7;
    q[(1, 0)] = 0.7;
    let post = FullGaussian::from_parts(vec![0.2, -0.4, 0.1], q).unwrap();
    let x = [1.0_f32, -2.0, 0.5];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(6);
    let n = 100_000;
    let logit = |p: f64| (p / (1.0 - p)).ln();
    let via_score: Vec<f64> = (0..n)
        .map(|_| logit(post.sample_score(&x, &mut rng).unwrap()))
        .collect();
    let via_weights: Vec<f64> = (0..n)
        .map(|_| {
            let w = post.sample_weights(&mut rng);
            w.iter().zip(&x).map(|(a, b)| a * f64::from(*b)).sum()
        })
        .collect();
    let moments = |v: &[f64]| {
        let m = v.iter().sum::<f64>() / v.len() as f64;
        (
            m,
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64,
        )
    };
    let ((m1, v1), (m2, v2)) = (moments(&via_score), moments(&via_weights));
    let exact_mean: f64 = post
        .mean()
        .iter()
        .zip(&x)
        .map(|(a, b)| a * f64::from(*b))
        .sum();
    assert!(
        (m1 - exact_mean).abs() < 0.03 && (m2 - exact_mean).abs() < 0.03,
        "{m1} {m2} {exact_mean}"
    );
    assert!((v1 / v2 - 1.0).abs() < 0.03, "variances {v1} vs {v2}");
}

#[test]
fn posterior_mean_converges_to_true_weights() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(21);
    let d = 8;
    let truth: Vec<f64> = (0..d)
        .map(|_| rng.sample::<f64, _>(StandardNormal))
        .collect();
    for form in [CovarianceForm::Diagonal, CovarianceForm::Full] {
        let prior = LogisticPrior::isotropic(form, d, 1.0).unwrap();
        let mut state = KeyState::prior(&ModelSpec::new(ModelKind::Logistic(prior.clone())));
        let spec = ModelSpec::new(ModelKind::Logistic(prior));
        for _ in 0..1_000 {
            let batch: Vec<(Vec<f32>, bool, f64)> = (0..16)
                .map(|_| {
                    let x: Vec<f32> = (0..d)
                        .map(|_| rng.sample::<f64, _>(StandardNormal) as f32)
                        .collect();
                    let z: f64 = x.iter().zip(&truth).map(|(a, b)| f64::from(*a) * b).sum();
                    (x, rng.random_bool(sigmoid(z)), 1.0)
                })
                .collect();
            state.update(&spec, &observations(&batch)).unwrap();
        }
        let mean = match &state.posterior {
            Posterior::Diagonal(g) => g.mean().to_vec(),
            Posterior::Full(g) => g.mean().to_vec(),
            Posterior::Beta(_) => unreachable!(),
        };
        let dot: f64 = mean.iter().zip(&truth).map(|(a, b)| a * b).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        let cosine = dot / (norm(&mean) * norm(&truth));
        assert!(cosine > 0.95, "{form:?}: cosine {cosine}");
    }
}

#[test]
fn bad_inputs_are_rejected_by_name_and_never_applied() {
    let prior = LogisticPrior::isotropic(CovarianceForm::Full, 3, 1.0).unwrap();
    let spec = ModelSpec::new(ModelKind::Logistic(prior));
    let mut state = KeyState::prior(&spec);
    let good = [0.5_f32, 0.5, 0.5];
    state
        .update(&spec, &[Observation::new(&good, true)])
        .unwrap();
    let before = state.clone();
    let cases: [(&[f32], f64, &str); 4] = [
        (&[0.5, f32::NAN, 0.5], 1.0, "context[1]"),
        (&[f32::INFINITY, 0.5, 0.5], 1.0, "context[0]"),
        (&[0.5, 0.5], 1.0, "context has dimension 2, expected 3"),
        (&good, f64::NAN, "weight"),
    ];
    for (context, weight, needle) in cases {
        let batch = [
            Observation::new(&good, true),
            Observation {
                weight,
                ..Observation::new(context, false)
            },
        ];
        let err = state.update(&spec, &batch).unwrap_err();
        assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        assert_eq!(state, before);
    }
    assert!(
        state
            .sample_score(
                &[1.0, f32::NAN, 0.0],
                &mut Xoshiro256PlusPlus::seed_from_u64(1)
            )
            .is_err()
    );
    assert!(state.mean_score(&[1.0]).is_err());
}

#[test]
fn forgetting_returns_a_gaussian_to_its_prior() {
    let prior = LogisticPrior::new(CovarianceForm::Diagonal, vec![1.0, -1.0], 2.0).unwrap();
    let spec = ModelSpec {
        kind: ModelKind::Logistic(prior.clone()),
        forgetting: Some(Forgetting::new(1_000).unwrap()),
    };
    let mut state = KeyState::prior(&spec);
    let x = [1.0_f32, 1.0];
    for t in 0..50 {
        let obs = Observation {
            event_time_ms: t,
            ..Observation::new(&x, true)
        };
        state.update(&spec, &[obs]).unwrap();
    }
    let Posterior::Diagonal(trained) = state.posterior.clone() else {
        unreachable!()
    };
    assert!(trained.precision()[0] > 4.0);
    // One neutral-looking update a long time later: the old evidence is gone.
    let late = Observation {
        event_time_ms: 1_000_000,
        weight: 0.0,
        ..Observation::new(&x, true)
    };
    state.update(&spec, &[late]).unwrap();
    let Posterior::Diagonal(forgot) = &state.posterior else {
        unreachable!()
    };
    assert_close(forgot.precision()[0], 2.0, 1e-12, "precision");
    assert_close(forgot.mean()[0], 1.0, 1e-12, "mean");
    // A full-covariance posterior forgets the same way.
    let full_prior = LogisticPrior::new(CovarianceForm::Full, vec![1.0, -1.0], 2.0).unwrap();
    let mut full = FullGaussian::prior(&full_prior);
    full.update(&full_prior, None, 0, &[Observation::new(&x, true); 5])
        .unwrap();
    full.decay(&full_prior, 0.0).unwrap();
    assert_eq!(
        full.precision(),
        FullGaussian::prior(&full_prior).precision()
    );
    assert_close(full.mean()[0], 1.0, 1e-12, "full mean");
    assert_close(full.mean()[1], -1.0, 1e-12, "full mean");
}

fn spec_for(model: u8, d: usize) -> ModelSpec {
    let kind = match model {
        0 => ModelKind::Beta(BetaPrior::new(1.5, 2.5).unwrap()),
        1 => {
            ModelKind::Logistic(LogisticPrior::isotropic(CovarianceForm::Diagonal, d, 0.5).unwrap())
        }
        _ => ModelKind::Logistic(LogisticPrior::isotropic(CovarianceForm::Full, d, 0.5).unwrap()),
    };
    ModelSpec {
        kind,
        forgetting: Some(Forgetting::new(10_000).unwrap()),
    }
}

/// (context, reward, weight, event time) per observation, batched.
type Batches = Vec<Vec<(Vec<f32>, bool, f64, i64)>>;

fn arb_batches(d: usize) -> impl Strategy<Value = Batches> {
    let obs = (
        prop::collection::vec(-1.0e3_f32..1.0e3, d),
        any::<bool>(),
        0.0_f64..100.0,
        0_i64..100_000,
    );
    prop::collection::vec(prop::collection::vec(obs, 1..12), 1..6)
}

fn run(spec: &ModelSpec, batches: &Batches, dim: usize) -> KeyState {
    let mut state = KeyState::prior(spec);
    for batch in batches {
        let obs: Vec<Observation<'_>> = batch
            .iter()
            .map(|(x, y, w, t)| Observation {
                context: if dim == 0 { &[] } else { x },
                reward: *y,
                weight: *w,
                event_time_ms: *t,
            })
            .collect();
        state.update(spec, &obs).unwrap();
    }
    state
}

fn assert_invariants(state: &KeyState) {
    assert!(state.sample_count.is_finite());
    match &state.posterior {
        Posterior::Beta(b) => assert!(
            b.alpha() > 0.0 && b.beta() > 0.0 && b.alpha().is_finite() && b.beta().is_finite()
        ),
        Posterior::Diagonal(g) => {
            assert!(g.mean().iter().all(|m| m.is_finite()));
            assert!(
                g.precision()
                    .iter()
                    .all(|q| q.is_finite() && *q >= PRECISION_FLOOR)
            );
        }
        Posterior::Full(g) => {
            assert!(g.mean().iter().all(|m| m.is_finite()));
            let q = g.precision();
            assert_eq!(q, &q.t(), "symmetric");
            // Positive definite: from_parts factors it or fails.
            FullGaussian::from_parts(g.mean().to_vec(), q.clone()).unwrap();
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn beta_counts_are_exact_under_any_order(
        outcomes in prop::collection::vec((any::<bool>(), 0_u32..64), 1..200),
        seed in any::<u64>(),
    ) {
        // Weights that are multiples of 1/8 make every partial sum exact.
        let prior = BetaPrior::UNIFORM;
        let ctx: [f32; 0] = [];
        let apply = |order: &[(bool, u32)]| {
            let mut post = BetaPosterior::prior(&prior);
            for &(y, w) in order {
                post.observe(y, f64::from(w) / 8.0);
            }
            post
        };
        let mut shuffled = outcomes.clone();
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        for i in (1..shuffled.len()).rev() {
            shuffled.swap(i, rng.random_range(0..=i));
        }
        let (a, b) = (apply(&outcomes), apply(&shuffled));
        prop_assert_eq!(a.alpha().to_bits(), b.alpha().to_bits());
        prop_assert_eq!(a.beta().to_bits(), b.beta().to_bits());
        let positives: u32 = outcomes.iter().filter(|o| o.0).map(|o| o.1).sum();
        prop_assert_eq!(a.alpha(), 1.0 + f64::from(positives) / 8.0);
        let _ = ctx;
    }

    #[test]
    fn every_model_stays_finite_and_positive_definite(model in 0_u8..3, batches in arb_batches(6)) {
        let dim = if model == 0 { 0 } else { 6 };
        let state = run(&spec_for(model, 6), &batches, dim);
        assert_invariants(&state);
        prop_assert_eq!(state.seq, batches.len() as u64);
    }

    #[test]
    fn updates_are_deterministic_and_round_trip(model in 0_u8..3, batches in arb_batches(4)) {
        let dim = if model == 0 { 0 } else { 4 };
        let spec = spec_for(model, 4);
        let (a, b) = (run(&spec, &batches, dim), run(&spec, &batches, dim));
        let bytes = a.encode();
        prop_assert_eq!(&bytes, &b.encode());
        prop_assert_eq!(bytes.len(), a.encoded_len());
        let decoded = KeyState::decode(&bytes).unwrap();
        prop_assert_eq!(&decoded, &a);
        prop_assert_eq!(decoded.encode(), bytes);
    }

    #[test]
    fn decode_never_panics_on_corrupt_bytes(
        model in 0_u8..3,
        batches in arb_batches(3),
        flip in any::<prop::sample::Index>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let dim = if model == 0 { 0 } else { 3 };
        let bytes = run(&spec_for(model, 3), &batches, dim).encode();
        let mut flipped = bytes.clone();
        let i = flip.index(flipped.len());
        flipped[i] ^= 0x5a;
        if let Ok(state) = KeyState::decode(&flipped) {
            assert_invariants(&state);
        }
        let truncated = &bytes[..cut.index(bytes.len())];
        prop_assert!(KeyState::decode(truncated).is_err());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Far outside any real feature scale: an update may be refused as
    /// unstable, but it never panics and never leaves a broken state.
    #[test]
    fn extreme_inputs_never_break_invariants(
        model in 1_u8..3,
        batches in prop::collection::vec(
            prop::collection::vec(
                (
                    prop::collection::vec(
                        prop_oneof![-1.0e15_f32..1.0e15, -1.0e-20_f32..1.0e-20, Just(0.0_f32)],
                        3,
                    ),
                    any::<bool>(),
                    prop_oneof![Just(0.0), 0.0_f64..MAX_WEIGHT],
                    any::<i64>(),
                ),
                1..8,
            ),
            1..5,
        ),
    ) {
        let spec = spec_for(model, 3);
        let mut state = KeyState::prior(&spec);
        for batch in &batches {
            let before = state.clone();
            let obs: Vec<Observation<'_>> = batch
                .iter()
                .map(|(x, y, w, t)| Observation { context: x, reward: *y, weight: *w, event_time_ms: *t })
                .collect();
            if state.update(&spec, &obs).is_err() {
                prop_assert_eq!(&state, &before);
            }
            assert_invariants(&state);
        }
    }
}

#[test]
fn decode_refuses_other_formats() {
    let state = KeyState::prior(&spec_for(1, 2));
    let mut bytes = state.encode();
    bytes[4] = 9;
    assert_eq!(
        KeyState::decode(&bytes),
        Err(DecodeError::UnsupportedVersion(9))
    );
    bytes[..4].copy_from_slice(b"NOPE");
    assert_eq!(KeyState::decode(&bytes), Err(DecodeError::BadMagic));
    let mut bytes = state.encode();
    bytes[6] = 7;
    assert_eq!(KeyState::decode(&bytes), Err(DecodeError::UnknownModel(7)));
}

#[test]
fn model_mismatch_is_an_error() {
    let mut state = KeyState::prior(&spec_for(0, 2));
    let err = state
        .update(&spec_for(1, 2), &[Observation::new(&[1.0, 1.0], true)])
        .unwrap_err();
    assert!(matches!(err, PosteriorError::ModelMismatch { .. }), "{err}");
    assert!(state.is_prior());
}

/// A key's state and the two counters of its `Arc` fit one 64-byte cache
/// line: the engine keeps each key's state behind an `Arc`, and an
/// update of a Beta key then reads one line, the one the release's
/// warm-up prefetches. (With the diagonal Gaussian's two arrays and the
/// full Gaussian inline, a state was 208 bytes and a Beta update read its
/// first and its fourth line.) The logistic variants keep their floats
/// behind one pointer.
#[test]
fn a_key_state_and_its_arc_counters_fit_a_cache_line() {
    let arc_counters = 2 * size_of::<usize>();
    assert!(
        size_of::<KeyState>() + arc_counters <= 64,
        "KeyState is {} bytes",
        size_of::<KeyState>()
    );
    assert!(size_of::<Posterior>() <= 24, "{}", size_of::<Posterior>());
}

/// `ModelKind::has_prefetched_parts` says which states `warm` asks for
/// parts: exactly those whose posterior `KeyState::prefetch_parts` reads
/// further (a diagonal one's vectors).
#[test]
fn only_diagonal_states_have_parts_to_prefetch() {
    let kinds = [
        ModelKind::Beta(BetaPrior::new(1.0, 1.0).unwrap()),
        ModelKind::Logistic(LogisticPrior::isotropic(CovarianceForm::Diagonal, 4, 1.0).unwrap()),
        ModelKind::Logistic(LogisticPrior::isotropic(CovarianceForm::Full, 4, 1.0).unwrap()),
    ];
    for kind in kinds {
        let state = KeyState::prior(&ModelSpec::new(kind.clone()));
        assert_eq!(
            kind.has_prefetched_parts(),
            matches!(state.posterior, Posterior::Diagonal(_)),
            "{}",
            kind.name()
        );
    }
}
