//! Runs policies on the contextual world: the `contextual`, `drift` and
//! `delayed` scenarios share this runner and differ by world and lineup.
//!
//! Regret is Σ_t (p_best − p_chosen) in expected clicks; CTR is realised
//! clicks per request.

use std::time::Instant;

use anyhow::{Result, ensure};
use posterior_learner::posterior::CovarianceForm;
use serde::Serialize;

use crate::curve::{Band, Checkpoints, Curve, Recorder};
use crate::feedback::{Feedback, Label};
use crate::parallel::{PROGRESS_EVERY_STEPS, Runner};
use crate::policy::{self, PolicySpec, PriorConfig};
use crate::report::{PolicyResult, ScenarioResult};
use posterior_learner::simulation::seed::{Stream, replicate_seed, stream_rng};
use posterior_learner::simulation::world::{Request, World, WorldConfig};

/// One row of a comparison: a policy and how its labels arrive.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// The policy.
    pub spec: PolicySpec,
    /// Whether labels wait for the world's delay (else they arrive at once).
    pub delayed: bool,
    /// Labels per doc per update.
    pub batch_size: usize,
}

impl Entry {
    /// Immediate updates, one label at a time.
    pub fn immediate(spec: PolicySpec) -> Self {
        Self {
            spec,
            delayed: false,
            batch_size: 1,
        }
    }

    /// Row label.
    pub fn label(&self) -> String {
        if self.delayed {
            format!("{} delayed batch={}", self.spec.label(), self.batch_size)
        } else if self.batch_size > 1 {
            format!("{} batch={}", self.spec.label(), self.batch_size)
        } else {
            self.spec.label()
        }
    }
}

/// Parameters of a contextual comparison.
#[derive(Debug, Clone, Serialize)]
pub struct ContextualConfig {
    /// Scenario name (output stem).
    pub name: String,
    /// The world.
    pub world: WorldConfig,
    /// Requests per run.
    pub horizon: u64,
    /// Replicates (seeds derived from `seed`).
    pub seeds: usize,
    /// The seed the run replays from.
    pub seed: u64,
    /// The policies' shared prior.
    pub prior: PriorConfig,
    /// Rows.
    pub entries: Vec<Entry>,
    /// Checkpoints per decade.
    pub per_decade: u32,
}

/// The standard lineup of the `contextual` scenario.
pub fn contextual_lineup(greedy_epsilon: f64) -> Vec<Entry> {
    [
        PolicySpec::LogisticTs {
            form: CovarianceForm::Diagonal,
            half_life_ms: None,
        },
        PolicySpec::LogisticTs {
            form: CovarianceForm::Full,
            half_life_ms: None,
        },
        PolicySpec::BetaTs { half_life_ms: None },
        PolicySpec::LogisticGreedy {
            epsilon: greedy_epsilon,
        },
        PolicySpec::Uniform,
        PolicySpec::Oracle,
    ]
    .into_iter()
    .map(Entry::immediate)
    .collect()
}

/// One finished run.
#[derive(Debug)]
pub struct RunOutput {
    /// Its curve.
    pub curve: Curve,
    /// Requests per second of wall time.
    pub steps_per_s: f64,
}

/// Runs `entry` on `world` (replicate seed `seed`) for `horizon` requests.
pub fn run_once(
    world: &World,
    entry: &Entry,
    prior: &PriorConfig,
    seed: u64,
    policy_id: u64,
    checkpoints: &Checkpoints,
    on_progress: &(dyn Fn(u64) + Sync),
) -> Result<RunOutput> {
    let c = world.config();
    let mut policy = policy::build(&entry.spec, prior, c.docs, c.dim)?;
    let mut feedback = Feedback::new(c.docs, entry.batch_size)?;
    let mut rng = stream_rng(seed, Stream::Policy, policy_id);
    let mut recorder = Recorder::new(checkpoints);
    let mut request = Request::default();
    let horizon = checkpoints.horizon();
    let started = Instant::now();
    for t in 0..horizon {
        world.request_into(t, &mut request);
        if policy.learns() {
            feedback.deliver(request.event_time_ms, policy.as_mut())?;
        }
        let k = policy.choose(&request, &mut rng)?;
        let click = request.clicks[k];
        recorder.record(request.best_prob() - request.probs[k], click);
        if policy.learns() {
            let delay_ms = if entry.delayed { request.delay_ms } else { 0 };
            let label = Label {
                doc: request.docs[k],
                context: request.context(k).to_vec(),
                reward: click,
                event_time_ms: request.event_time_ms,
            };
            feedback.send(label, request.event_time_ms + delay_ms)?;
        }
        if (t + 1) % PROGRESS_EVERY_STEPS == 0 {
            on_progress(PROGRESS_EVERY_STEPS);
        }
    }
    on_progress(horizon % PROGRESS_EVERY_STEPS);
    let elapsed_s = started.elapsed().as_secs_f64().max(1e-9);
    Ok(RunOutput {
        curve: recorder.finish(),
        steps_per_s: horizon as f64 / elapsed_s,
    })
}

/// Runs every entry on every replicate and aggregates (without peers).
pub fn run(config: &ContextualConfig, runner: &Runner) -> Result<ScenarioResult> {
    ensure!(
        config.horizon > 0 && config.seeds > 0,
        "horizon and seeds must be > 0"
    );
    ensure!(!config.entries.is_empty(), "no policy to run");
    config.world.validate()?;
    let checkpoints = Checkpoints::log_spaced(config.horizon, config.per_decade);
    let worlds: Vec<World> = (0..config.seeds)
        .map(|i| World::new(config.world.clone(), replicate_seed(config.seed, i)))
        .collect::<Result<_, _>>()?;
    let jobs: Vec<(usize, usize)> = (0..config.entries.len())
        .flat_map(|e| (0..config.seeds).map(move |i| (e, i)))
        .collect();
    let bar = runner.bar(&config.name, config.horizon * jobs.len() as u64);
    let progress = |n: u64| bar.inc(n);
    let outputs = runner.map(&jobs, |&(e, i)| {
        let seed = replicate_seed(config.seed, i);
        run_once(
            &worlds[i],
            &config.entries[e],
            &config.prior,
            seed,
            e as u64,
            &checkpoints,
            &progress,
        )
    })?;
    bar.finish_and_clear();
    let policies = config
        .entries
        .iter()
        .enumerate()
        .map(|(e, entry)| {
            let runs: Vec<&RunOutput> = jobs
                .iter()
                .zip(&outputs)
                .filter(|((je, _), _)| *je == e)
                .map(|(_, o)| o)
                .collect();
            let curves: Vec<Curve> = runs.iter().map(|o| o.curve.clone()).collect();
            PolicyResult {
                name: entry.label(),
                band: Band::from_curves(&curves),
                examples_per_s: runs.iter().map(|o| o.steps_per_s).sum::<f64>() / runs.len() as f64,
                note: String::new(),
            }
        })
        .collect();
    Ok(ScenarioResult {
        scenario: config.name.clone(),
        seed: config.seed,
        params: serde_json::to_value(config)?,
        checkpoints,
        policies,
        references: Vec::new(),
        notes: vec![format!(
            "regret = sum of (best p - chosen p) in expected clicks; CTR = realised clicks per request; {} seed(s) derived from --seed {}",
            config.seeds, config.seed
        )],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::simulation::world::CtrLevel;

    pub(crate) fn config(horizon: u64) -> ContextualConfig {
        ContextualConfig {
            name: "contextual-test".into(),
            world: WorldConfig {
                docs: 20,
                dim: 4,
                candidates: 5,
                ctr: CtrLevel::High,
                bias_sd: 0.5,
                weight_sd: 0.5,
                step_ms: 10,
                drift_at: None,
                mean_delay_ms: 0.0,
            },
            horizon,
            seeds: 1,
            seed: 11,
            prior: PriorConfig {
                bias_mean: CtrLevel::High.base_logit(),
                precision: 4.0,
                beta: CtrLevel::High.beta_prior(),
            },
            entries: contextual_lineup(0.1),
            per_decade: 5,
        }
    }

    /// Statistical check, fixed seed, wide margins, short horizon.
    #[test]
    fn logistic_ts_beats_greedy_and_uniform() {
        let result = run(&config(20_000), &Runner::quiet(2)).unwrap();
        let regret = |name: &str| {
            result
                .policies
                .iter()
                .find(|p| p.name.starts_with(name))
                .map(|p| p.band.last().0)
                .unwrap()
        };
        let (ts, greedy, uniform, oracle) = (
            regret("ts-logistic-diag"),
            regret("e-greedy"),
            regret("uniform"),
            regret("oracle"),
        );
        assert_eq!(oracle, 0.0);
        assert!(ts < 0.5 * uniform, "ts {ts} vs uniform {uniform}");
        assert!(ts < greedy, "ts {ts} vs e-greedy {greedy}");
    }

    #[test]
    fn policies_share_the_world_draws() {
        let mut c = config(300);
        c.entries = vec![Entry::immediate(PolicySpec::Oracle); 2];
        let r = run(&c, &Runner::quiet(2)).unwrap();
        assert_eq!(r.policies[0].band, r.policies[1].band);
    }
}
