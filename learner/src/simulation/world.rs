//! The contextual world: docs with hidden logistic weights, requests with
//! K candidate docs and one context per (request, doc).
//!
//! Common random numbers: request t is a pure function of (seed, t) — its
//! candidates, contexts, true click probabilities, the click each candidate
//! *would* get, and its label delay — so every policy of the experiments
//! (and their Vowpal Wabbit peer) faces exactly the same draws and policies
//! differ only by their choices, and the learner's simulator source
//! (`super::source`) can regenerate any sample from its offset.

use rand::Rng;
use rand_distr::{Distribution, Exp, StandardNormal};
use serde::{Deserialize, Serialize};

use super::seed::{Stream, stream_rng};
use crate::config::ConfigError;
use crate::posterior::sigmoid;

/// Largest number of docs.
pub const DOCS_MAX: usize = 1_000_000;
/// Largest context dimension (the learner's full-covariance limit).
pub const DIM_MAX: usize = 64;

/// How frequent clicks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum CtrLevel {
    /// About 0.5 % average CTR of a random candidate, like the Open Bandit
    /// Dataset's ZOZOTOWN campaigns.
    Low,
    /// About 5–10 %.
    High,
}

impl CtrLevel {
    /// A weak Beta prior (one pseudo-click) centred on the typical doc's
    /// CTR, which the offline model knows; used by the Beta policies.
    pub fn beta_prior(self) -> (f64, f64) {
        let p = sigmoid(self.base_logit());
        (1.0, (1.0 - p) / p)
    }

    /// The bias logit of a typical doc.
    pub fn base_logit(self) -> f64 {
        match self {
            // σ(−5.9) ≈ 0.27 %; the spread of doc biases and contexts
            // lifts a random candidate's mean CTR to ≈ 0.5 %.
            Self::Low => -5.9,
            // σ(−3.1) ≈ 4.3 %; a random candidate's mean CTR ≈ 7 %.
            Self::High => -3.1,
        }
    }
}

/// Parameters of the world.
#[derive(Debug, Clone, Serialize)]
pub struct WorldConfig {
    /// Number of docs D.
    pub docs: usize,
    /// Context dimension d, coordinate 0 being the bias (always 1).
    pub dim: usize,
    /// Candidates per request K (distinct docs).
    pub candidates: usize,
    /// Click-rate regime.
    pub ctr: CtrLevel,
    /// Standard deviation of the docs' bias logits around the base.
    pub bias_sd: f64,
    /// Standard deviation of each non-bias hidden weight.
    pub weight_sd: f64,
    /// Event time between consecutive requests.
    pub step_ms: i64,
    /// Step at which the docs' hidden weights are permuted (drift).
    pub drift_at: Option<u64>,
    /// Mean label delay in event-time ms (0: labels arrive at once).
    pub mean_delay_ms: f64,
}

impl WorldConfig {
    /// Checks the bounds; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let check = |ok: bool, key: &str, reason: String| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError {
                    key: key.to_owned(),
                    reason,
                })
            }
        };
        check(
            (2..=DOCS_MAX).contains(&self.docs),
            "docs",
            format!("must be in 2..={DOCS_MAX}"),
        )?;
        check(
            (1..=DIM_MAX).contains(&self.dim),
            "dim",
            format!("must be in 1..={DIM_MAX}"),
        )?;
        check(
            (1..=self.docs).contains(&self.candidates),
            "candidates",
            "must be in 1..=docs".into(),
        )?;
        check(self.bias_sd >= 0.0, "bias_sd", "must be >= 0".into())?;
        check(self.weight_sd >= 0.0, "weight_sd", "must be >= 0".into())?;
        check(self.step_ms > 0, "step_ms", "must be > 0".into())?;
        check(
            self.mean_delay_ms >= 0.0,
            "mean_delay_ms",
            "must be >= 0".into(),
        )
    }
}

/// One request as drawn, before any policy acts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Request {
    /// 0-based step.
    pub t: u64,
    /// Event time of the exposure.
    pub event_time_ms: i64,
    /// Candidate doc ids (distinct).
    pub docs: Vec<u32>,
    /// Contexts, `candidates × dim`, row-major; column 0 is 1.
    pub contexts: Vec<f32>,
    /// True click probability of each candidate.
    pub probs: Vec<f64>,
    /// Whether each candidate would be clicked if shown.
    pub clicks: Vec<bool>,
    /// Delay until the label of this exposure arrives (event-time ms).
    pub delay_ms: i64,
}

impl Request {
    /// Context of candidate `k`.
    pub fn context(&self, k: usize) -> &[f32] {
        let dim = self.contexts.len() / self.docs.len().max(1);
        &self.contexts[k * dim..(k + 1) * dim]
    }

    /// Largest true probability among the candidates.
    pub fn best_prob(&self) -> f64 {
        self.probs.iter().copied().fold(0.0, f64::max)
    }
}

/// The world: hidden weights, and the request generator.
#[derive(Debug, Clone)]
pub struct World {
    config: WorldConfig,
    seed: u64,
    /// `docs × dim` hidden weights before the drift.
    weights: Vec<f64>,
    /// After the drift, doc i behaves like doc `permutation[i]` did.
    permutation: Vec<u32>,
}

impl World {
    /// Draws the hidden weights of replicate `seed`.
    pub fn new(config: WorldConfig, seed: u64) -> Result<Self, ConfigError> {
        config.validate()?;
        let mut rng = stream_rng(seed, Stream::World, 1);
        let mut weights = Vec::with_capacity(config.docs * config.dim);
        for _ in 0..config.docs {
            let z: f64 = rng.sample(StandardNormal);
            weights.push(config.ctr.base_logit() + config.bias_sd * z);
            for _ in 1..config.dim {
                let z: f64 = rng.sample(StandardNormal);
                weights.push(config.weight_sd * z);
            }
        }
        // A uniformly random permutation (Fisher–Yates) for the drift.
        let mut permutation: Vec<u32> = (0..config.docs as u32).collect();
        for i in (1..permutation.len()).rev() {
            permutation.swap(i, rng.random_range(0..=i));
        }
        Ok(Self {
            config,
            seed,
            weights,
            permutation,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WorldConfig {
        &self.config
    }

    /// Hidden weights of `doc` at step `t` (after the drift, permuted).
    pub fn weights(&self, doc: u32, t: u64) -> &[f64] {
        let drifted = self.config.drift_at.is_some_and(|at| t >= at);
        let row = if drifted {
            self.permutation[doc as usize]
        } else {
            doc
        } as usize;
        &self.weights[row * self.config.dim..(row + 1) * self.config.dim]
    }

    /// Fills `out` with request `t`, a pure function of (seed, t).
    pub fn request_into(&self, t: u64, out: &mut Request) {
        let c = &self.config;
        let mut rng = stream_rng(self.seed, Stream::Steps, t);
        out.t = t;
        out.event_time_ms = t as i64 * c.step_ms;
        out.docs.clear();
        while out.docs.len() < c.candidates {
            let doc = rng.random_range(0..c.docs as u32);
            if !out.docs.contains(&doc) {
                out.docs.push(doc);
            }
        }
        out.contexts.clear();
        out.probs.clear();
        out.clicks.clear();
        for &doc in &out.docs {
            let start = out.contexts.len();
            out.contexts.push(1.0);
            for _ in 1..c.dim {
                let z: f64 = rng.sample(StandardNormal);
                out.contexts.push(z as f32);
            }
            let logit: f64 = self
                .weights(doc, t)
                .iter()
                .zip(&out.contexts[start..])
                .map(|(w, &x)| w * f64::from(x))
                .sum();
            let p = sigmoid(logit);
            out.probs.push(p);
            out.clicks.push(rng.random::<f64>() < p);
        }
        out.delay_ms = if c.mean_delay_ms > 0.0 {
            let exp = Exp::new(1.0 / c.mean_delay_ms).expect("rate is finite and > 0");
            exp.sample(&mut rng).round() as i64
        } else {
            0
        };
    }

    /// Request `t`, freshly allocated.
    pub fn request(&self, t: u64) -> Request {
        let mut r = Request::default();
        self.request_into(t, &mut r);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn config(ctr: CtrLevel) -> WorldConfig {
        WorldConfig {
            docs: 100,
            dim: 8,
            candidates: 10,
            ctr,
            bias_sd: 0.5,
            weight_sd: 0.35,
            step_ms: 10,
            drift_at: None,
            mean_delay_ms: 0.0,
        }
    }

    #[test]
    fn requests_are_pure_functions_of_seed_and_step() {
        let world = World::new(config(CtrLevel::High), 1).unwrap();
        let a = world.request(17);
        let b = world.request(17);
        assert_eq!(a, b);
        assert_ne!(a, world.request(18));
        assert_eq!(a.docs.len(), 10);
        assert_eq!(a.contexts.len(), 80);
        assert_eq!(a.context(3)[0], 1.0);
        let mut sorted = a.docs.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 10);
    }

    #[test]
    fn ctr_levels_are_in_range() {
        for (ctr, lo, hi) in [(CtrLevel::Low, 0.003, 0.007), (CtrLevel::High, 0.05, 0.10)] {
            let world = World::new(config(ctr), 3).unwrap();
            let n = 20_000;
            let mean: f64 = (0..n)
                .map(|t| world.request(t).probs.iter().sum::<f64>() / 10.0)
                .sum::<f64>()
                / n as f64;
            assert!((lo..hi).contains(&mean), "{ctr:?}: mean CTR {mean}");
        }
    }

    #[test]
    fn drift_permutes_weights() {
        let mut c = config(CtrLevel::High);
        c.drift_at = Some(100);
        let world = World::new(c, 5).unwrap();
        let moved = (0..100)
            .filter(|&d| world.weights(d, 0) != world.weights(d, 100))
            .count();
        assert!(moved > 90, "{moved}");
        assert_eq!(world.weights(7, 99), world.weights(7, 0));
    }
}
