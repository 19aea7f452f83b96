//! Command-line arguments of the `experiments` binary.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::bernoulli::BernoulliPolicy;
use crate::policy::PriorConfig;
use posterior_learner::simulation::world::{CtrLevel, WorldConfig};

/// Simulations that check Posterior's Thompson sampling learns.
#[derive(Debug, Parser)]
#[command(name = "experiments", version)]
pub struct Cli {
    /// The scenario.
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Options every scenario takes.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Options every scenario takes.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Seed every random stream derives from; a run replays from it.
    #[arg(long, global = true, default_value_t = 1)]
    pub seed: u64,
    /// Output directory (summary.json, curves CSV, PNG plots).
    #[arg(long, global = true, default_value = "out")]
    pub out: PathBuf,
    /// Worker threads (default: one per core).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
    /// Hide the progress bar.
    #[arg(long, global = true)]
    pub no_progress: bool,
    /// Curve checkpoints per decade of t.
    #[arg(long, global = true, default_value_t = 10)]
    pub per_decade: u32,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Chapelle & Li 2011 Figure 1: Beta TS vs UCB1 vs the Lai–Robbins bound.
    Bernoulli(BernoulliArgs),
    /// Per-doc logistic TS on contexts, against baselines and Vowpal Wabbit.
    Contextual(ContextualArgs),
    /// The docs' click-rates are permuted at T/2: with and without forgetting.
    Drift(DriftArgs),
    /// Labels arrive after exponential delays, applied in per-doc micro-batches.
    Delayed(DelayedArgs),
    /// The README's run: bernoulli K=10 ε=0.1 and contextual low-CTR with VW.
    Headline(HeadlineArgs),
    /// Redraws the plots of a result already written to --out.
    Replot,
}

/// `bernoulli` options.
#[derive(Debug, Args)]
pub struct BernoulliArgs {
    /// Number of arms K.
    #[arg(long, default_value_t = 10)]
    pub arms: usize,
    /// Gap ε between the best arm (0.5) and the others.
    #[arg(long, default_value_t = 0.1)]
    pub epsilon: f64,
    /// Steps per run.
    #[arg(long, default_value_t = 1_000_000)]
    pub horizon: u64,
    /// Runs averaged, seeds derived from --seed.
    #[arg(long, default_value_t = 8)]
    pub seeds: usize,
    /// Policies to run.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ts,ucb1,e-greedy,uniform"
    )]
    pub policies: Vec<BernoulliPolicy>,
    /// Exploration rate of the ε-greedy baseline.
    #[arg(long, default_value_t = 0.1)]
    pub egreedy_epsilon: f64,
}

/// The contextual world's options.
#[derive(Debug, Args, Clone)]
pub struct WorldArgs {
    /// Number of docs D.
    #[arg(long, default_value_t = 100)]
    pub docs: usize,
    /// Context dimension d, including the bias coordinate.
    #[arg(long, default_value_t = 8)]
    pub dim: usize,
    /// Candidates per request K.
    #[arg(long, default_value_t = 10)]
    pub candidates: usize,
    /// Click-rate regime: low ≈ 0.5 %, high ≈ 7 %.
    #[arg(long, value_enum, default_value = "low")]
    pub ctr: CtrLevel,
    /// Requests per run.
    #[arg(long, default_value_t = 200_000)]
    pub horizon: u64,
    /// Replicates averaged, seeds derived from --seed.
    #[arg(long, default_value_t = 1)]
    pub seeds: usize,
    /// Standard deviation of the docs' bias logits.
    #[arg(long, default_value_t = 0.5)]
    pub bias_sd: f64,
    /// Standard deviation of each hidden context weight.
    #[arg(long, default_value_t = 0.35)]
    pub weight_sd: f64,
    /// Event time between requests.
    #[arg(long, default_value_t = 10)]
    pub step_ms: i64,
    /// Prior precision of the logistic weights (variance = 1/precision).
    #[arg(long, default_value_t = 4.0)]
    pub prior_precision: f64,
}

impl WorldArgs {
    pub(crate) fn world(&self) -> WorldConfig {
        WorldConfig {
            docs: self.docs,
            dim: self.dim,
            candidates: self.candidates,
            ctr: self.ctr,
            bias_sd: self.bias_sd,
            weight_sd: self.weight_sd,
            step_ms: self.step_ms,
            drift_at: None,
            mean_delay_ms: 0.0,
        }
    }

    pub(crate) fn prior(&self) -> PriorConfig {
        PriorConfig {
            bias_mean: self.ctr.base_logit(),
            precision: self.prior_precision,
            beta: self.ctr.beta_prior(),
        }
    }
}

/// Vowpal Wabbit peer options.
#[derive(Debug, Args, Clone)]
pub struct VwArgs {
    /// Skip the Vowpal Wabbit peer.
    #[arg(long)]
    pub no_vw: bool,
    /// A VW variant `name=ARGS` (repeatable; default: squarecb γ ∈ {10,
    /// 100, 1000}, bag 5 and 10, ε-greedy 0.05 and 0.01).
    #[arg(long = "vw-variant")]
    pub variants: Vec<String>,
    /// Python of the venv with vowpalwabbit (default:
    /// $POSTERIOR_VENV or ~/.cache/posterior/venv).
    #[arg(long)]
    pub vw_python: Option<PathBuf>,
    /// Keep the environment files handed to VW.
    #[arg(long)]
    pub keep_env: bool,
}

/// `contextual` options.
#[derive(Debug, Args)]
pub struct ContextualArgs {
    /// The world.
    #[command(flatten)]
    pub world: WorldArgs,
    /// The peer.
    #[command(flatten)]
    pub vw: VwArgs,
    /// Exploration rate of the ε-greedy logistic baseline.
    #[arg(long, default_value_t = 0.05)]
    pub greedy_epsilon: f64,
}

/// `drift` options.
#[derive(Debug, Args)]
pub struct DriftArgs {
    /// The world (the docs' weights are permuted at horizon / 2).
    #[command(flatten)]
    pub world: WorldArgs,
    /// The peer.
    #[command(flatten)]
    pub vw: VwArgs,
    /// Forgetting half-life in event-time ms (default: horizon × step / 20).
    #[arg(long)]
    pub half_life_ms: Option<i64>,
}

/// `delayed` options.
#[derive(Debug, Args)]
pub struct DelayedArgs {
    /// The world.
    #[command(flatten)]
    pub world: WorldArgs,
    /// Mean label delay in event-time ms.
    #[arg(long, default_value_t = 60_000.0)]
    pub mean_delay_ms: f64,
    /// Micro-batch sizes (labels per doc per update) of the delayed rows.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    pub batch_sizes: Vec<usize>,
}

/// `headline` options.
#[derive(Debug, Args)]
pub struct HeadlineArgs {
    /// Horizon of the bernoulli part.
    #[arg(long, default_value_t = 100_000)]
    pub bernoulli_horizon: u64,
    /// Seeds of the bernoulli part.
    #[arg(long, default_value_t = 8)]
    pub bernoulli_seeds: usize,
    /// Horizon of the contextual part.
    #[arg(long, default_value_t = 500_000)]
    pub contextual_horizon: u64,
    /// The peer.
    #[command(flatten)]
    pub vw: VwArgs,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_bernoulli_command() {
        let cli = Cli::try_parse_from([
            "experiments",
            "bernoulli",
            "--seed",
            "7",
            "--out",
            "o",
            "--arms",
            "100",
            "--epsilon",
            "0.02",
            "--policies",
            "ts,ucb1",
        ])
        .unwrap();
        assert_eq!(cli.common.seed, 7);
        let Scenario::Bernoulli(args) = cli.scenario else {
            panic!("not bernoulli")
        };
        assert_eq!(args.arms, 100);
        assert_eq!(
            args.policies,
            vec![BernoulliPolicy::Ts, BernoulliPolicy::Ucb1]
        );
    }

    #[test]
    fn parses_vw_variants() {
        let cli = Cli::try_parse_from([
            "experiments",
            "contextual",
            "--ctr",
            "high",
            "--vw-variant",
            "sq=--squarecb",
            "--vw-variant",
            "e=--epsilon 0.1",
        ])
        .unwrap();
        let Scenario::Contextual(args) = cli.scenario else {
            panic!("not contextual")
        };
        assert_eq!(args.vw.variants.len(), 2);
        assert_eq!(args.world.ctr, CtrLevel::High);
    }
}
