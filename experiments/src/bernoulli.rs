//! The `bernoulli` scenario: Chapelle & Li (2011), Figure 1.
//!
//! K arms, the best pays 0.5 and the others 0.5 − ε. Thompson sampling
//! with Beta(1, 1) priors (the learner's [`BetaPosterior`]) against UCB1,
//! ε-greedy and uniform play, and the Lai–Robbins bound shifted to zero at
//! T = 100. Regret is the pseudo-regret Σ_t Δ_{a_t}.

use std::time::Instant;

use anyhow::{Result, ensure};
use posterior_learner::posterior::{BetaPosterior, BetaPrior};
use rand::Rng;
use serde::Serialize;

use crate::bound::shifted_bound;
use crate::curve::{Band, Checkpoints, Recorder};
use crate::parallel::{PROGRESS_EVERY_STEPS, Runner};
use crate::report::{PolicyResult, ReferenceCurve, ScenarioResult};
use crate::ucb::Ucb1;
use posterior_learner::simulation::seed::{SimRng, Stream, replicate_seed, stream_rng};

/// Largest number of arms (bounds per-step work and memory).
pub const ARMS_MAX: usize = 100_000;

/// The policies this scenario compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum BernoulliPolicy {
    /// Thompson sampling with Beta(1, 1) priors.
    Ts,
    /// UCB1.
    Ucb1,
    /// ε-greedy on the posterior means.
    EGreedy,
    /// Uniformly random arms.
    Uniform,
}

impl BernoulliPolicy {
    /// Row label.
    pub fn label(self, egreedy_epsilon: f64) -> String {
        match self {
            Self::Ts => "ts-beta(1,1)".into(),
            Self::Ucb1 => "ucb1".into(),
            Self::EGreedy => format!("e-greedy({egreedy_epsilon})"),
            Self::Uniform => "uniform".into(),
        }
    }
}

/// Parameters of a `bernoulli` run.
#[derive(Debug, Clone, Serialize)]
pub struct BernoulliConfig {
    /// Number of arms K.
    pub arms: usize,
    /// Gap ε between the best arm and the others.
    pub epsilon: f64,
    /// The best arm's rate (0.5 in the paper).
    pub best_rate: f64,
    /// Steps per run.
    pub horizon: u64,
    /// Runs averaged (seeds derived from `seed`).
    pub seeds: usize,
    /// The seed the run replays from.
    pub seed: u64,
    /// Exploration rate of the ε-greedy baseline.
    pub egreedy_epsilon: f64,
    /// Policies to run.
    pub policies: Vec<BernoulliPolicy>,
    /// Checkpoints per decade of the curves.
    pub per_decade: u32,
}

impl BernoulliConfig {
    fn validate(&self) -> Result<()> {
        ensure!(
            (2..=ARMS_MAX).contains(&self.arms),
            "arms must be in 2..={ARMS_MAX}"
        );
        ensure!(
            self.epsilon > 0.0 && self.epsilon < self.best_rate && self.best_rate <= 1.0,
            "need 0 < epsilon < best rate <= 1"
        );
        ensure!(
            self.horizon > 0 && self.seeds > 0,
            "horizon and seeds must be > 0"
        );
        ensure!(
            (0.0..=1.0).contains(&self.egreedy_epsilon),
            "e-greedy epsilon must be in [0, 1]"
        );
        ensure!(!self.policies.is_empty(), "no policy to run");
        Ok(())
    }

    /// The arms' rates of replicate `seed`: one best arm at a random
    /// position, the others ε below.
    pub fn rates(&self, seed: u64) -> Vec<f64> {
        let mut rates = vec![self.best_rate - self.epsilon; self.arms];
        let best = stream_rng(seed, Stream::World, 0).random_range(0..self.arms);
        rates[best] = self.best_rate;
        rates
    }
}

/// One finished run.
#[derive(Debug)]
pub struct RunOutput {
    /// Its curve.
    pub curve: crate::curve::Curve,
    /// Steps per second of wall time.
    pub steps_per_s: f64,
}

/// Runs `policy` once on replicate seed `seed`. Rewards use common random
/// numbers: step t's reward is `u_t < p_a` with the same `u_t` for every
/// policy.
pub fn run_once(
    config: &BernoulliConfig,
    policy: BernoulliPolicy,
    seed: u64,
    checkpoints: &Checkpoints,
    on_progress: &(dyn Fn(u64) + Sync),
) -> RunOutput {
    let rates = config.rates(seed);
    let best = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let gaps: Vec<f64> = rates.iter().map(|p| best - p).collect();
    let mut steps_rng = stream_rng(seed, Stream::Steps, 0);
    let mut policy_rng = stream_rng(seed, Stream::Policy, policy as u64);
    let mut player = Player::new(policy, config);
    let mut recorder = Recorder::new(checkpoints);
    let started = Instant::now();
    for t in 1..=config.horizon {
        let arm = player.choose(&mut policy_rng);
        let reward = steps_rng.random::<f64>() < rates[arm];
        player.observe(arm, reward);
        recorder.record(gaps[arm], reward);
        if t % PROGRESS_EVERY_STEPS == 0 {
            on_progress(PROGRESS_EVERY_STEPS);
        }
    }
    on_progress(config.horizon % PROGRESS_EVERY_STEPS);
    let elapsed_s = started.elapsed().as_secs_f64().max(1e-9);
    RunOutput {
        curve: recorder.finish(),
        steps_per_s: config.horizon as f64 / elapsed_s,
    }
}

/// A policy's state during one run.
enum Player {
    Thompson(Vec<BetaPosterior>),
    Ucb(Ucb1),
    Greedy {
        posteriors: Vec<BetaPosterior>,
        epsilon: f64,
    },
    Uniform(usize),
}

impl Player {
    fn new(policy: BernoulliPolicy, config: &BernoulliConfig) -> Self {
        let fresh = || vec![BetaPosterior::prior(&BetaPrior::UNIFORM); config.arms];
        match policy {
            BernoulliPolicy::Ts => Self::Thompson(fresh()),
            BernoulliPolicy::Ucb1 => Self::Ucb(Ucb1::new(config.arms)),
            BernoulliPolicy::EGreedy => Self::Greedy {
                posteriors: fresh(),
                epsilon: config.egreedy_epsilon,
            },
            BernoulliPolicy::Uniform => Self::Uniform(config.arms),
        }
    }

    #[inline]
    fn choose(&self, rng: &mut SimRng) -> usize {
        match self {
            Self::Thompson(posteriors) => argmax(posteriors.iter().map(|p| p.sample(rng))),
            Self::Ucb(ucb) => ucb.choose(),
            Self::Greedy {
                posteriors,
                epsilon,
            } => {
                if rng.random::<f64>() < *epsilon {
                    rng.random_range(0..posteriors.len())
                } else {
                    argmax(posteriors.iter().map(BetaPosterior::mean))
                }
            }
            Self::Uniform(arms) => rng.random_range(0..*arms),
        }
    }

    #[inline]
    fn observe(&mut self, arm: usize, reward: bool) {
        match self {
            Self::Thompson(posteriors) | Self::Greedy { posteriors, .. } => {
                posteriors[arm].observe(reward, 1.0);
            }
            Self::Ucb(ucb) => ucb.observe(arm, f64::from(u8::from(reward))),
            Self::Uniform(_) => {}
        }
    }
}

/// Index of the largest value (first on ties).
pub fn argmax(values: impl Iterator<Item = f64>) -> usize {
    let mut best = (0, f64::NEG_INFINITY);
    for (i, v) in values.enumerate() {
        if v > best.1 {
            best = (i, v);
        }
    }
    best.0
}

/// Runs every policy on every replicate seed and aggregates.
pub fn run(config: &BernoulliConfig, runner: &Runner) -> Result<ScenarioResult> {
    config.validate()?;
    let checkpoints = Checkpoints::log_spaced(config.horizon, config.per_decade);
    let jobs: Vec<(BernoulliPolicy, usize)> = config
        .policies
        .iter()
        .flat_map(|&p| (0..config.seeds).map(move |i| (p, i)))
        .collect();
    let label = format!("K={} e={}", config.arms, config.epsilon);
    let bar = runner.bar(&label, config.horizon * jobs.len() as u64);
    let progress = |n: u64| bar.inc(n);
    let outputs = runner.map(&jobs, |&(policy, i)| {
        let seed = replicate_seed(config.seed, i);
        Ok(run_once(config, policy, seed, &checkpoints, &progress))
    })?;
    bar.finish_and_clear();
    let policies = config
        .policies
        .iter()
        .map(|&policy| {
            let runs: Vec<&RunOutput> = jobs
                .iter()
                .zip(&outputs)
                .filter(|((p, _), _)| *p == policy)
                .map(|(_, o)| o)
                .collect();
            let curves: Vec<_> = runs.iter().map(|o| o.curve.clone()).collect();
            PolicyResult {
                name: policy.label(config.egreedy_epsilon),
                band: Band::from_curves(&curves),
                examples_per_s: runs.iter().map(|o| o.steps_per_s).sum::<f64>() / runs.len() as f64,
                note: String::new(),
            }
        })
        .collect();
    let rates = config.rates(config.seed);
    let bound = ReferenceCurve {
        name: "lai-robbins bound (shifted to 0 at T=100)".into(),
        values: checkpoints
            .steps()
            .iter()
            .map(|&t| shifted_bound(&rates, t))
            .collect(),
    };
    Ok(ScenarioResult {
        scenario: format!("bernoulli-k{}-eps{}", config.arms, config.epsilon),
        seed: config.seed,
        params: serde_json::to_value(config)?,
        checkpoints,
        policies,
        references: vec![bound],
        notes: vec![format!(
            "regret = pseudo-regret sum of gaps; mean ± standard error over {} seeds derived from --seed {}",
            config.seeds, config.seed
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(horizon: u64, seeds: usize) -> BernoulliConfig {
        BernoulliConfig {
            arms: 10,
            epsilon: 0.1,
            best_rate: 0.5,
            horizon,
            seeds,
            seed: 42,
            egreedy_epsilon: 0.1,
            policies: vec![
                BernoulliPolicy::Ts,
                BernoulliPolicy::Ucb1,
                BernoulliPolicy::EGreedy,
                BernoulliPolicy::Uniform,
            ],
            per_decade: 5,
        }
    }

    #[test]
    fn rates_have_one_best_arm() {
        let c = config(10, 1);
        let rates = c.rates(5);
        assert_eq!(rates.iter().filter(|&&p| p == 0.5).count(), 1);
        assert_eq!(
            rates.iter().filter(|&&p| (p - 0.4).abs() < 1e-12).count(),
            9
        );
    }

    #[test]
    fn runs_replay_from_the_seed() {
        let c = config(2_000, 1);
        let cp = Checkpoints::log_spaced(c.horizon, 5);
        let a = run_once(&c, BernoulliPolicy::Ts, 9, &cp, &|_| {});
        let b = run_once(&c, BernoulliPolicy::Ts, 9, &cp, &|_| {});
        assert_eq!(a.curve, b.curve);
    }

    /// Statistical check, fixed seeds, wide margins: at T = 50 000 the
    /// expected regrets are roughly TS ≈ 200, ε-greedy(0.1) ≥ 450 and
    /// uniform = 4 500.
    #[test]
    fn thompson_beats_e_greedy_and_uniform() {
        let c = config(50_000, 4);
        let result = run(&c, &Runner::quiet(2)).unwrap();
        let last = |i: usize| result.policies[i].band.last().0;
        let (ts, ucb, greedy, uniform) = (last(0), last(1), last(2), last(3));
        assert!(ts < 0.7 * greedy, "ts {ts} vs e-greedy {greedy}");
        assert!(ts < 0.2 * uniform, "ts {ts} vs uniform {uniform}");
        assert!(ts < ucb, "ts {ts} vs ucb1 {ucb}");
        assert!((uniform - 4_500.0).abs() < 150.0, "uniform {uniform}");
    }
}
