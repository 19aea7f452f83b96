//! Runs a parsed command: builds each scenario's configuration, runs it,
//! adds the Vowpal Wabbit peer, and writes the table, files and plots.

use std::path::Path;

use anyhow::{Context, Result};

use crate::bernoulli::{self, BernoulliConfig, BernoulliPolicy};
use crate::cli::{BernoulliArgs, Cli, CommonArgs, HeadlineArgs, Scenario, VwArgs, WorldArgs};
use crate::contextual::{self, ContextualConfig, Entry};
use crate::curve::Checkpoints;
use crate::parallel::Runner;
use crate::plot::{self, XAxis};
use crate::report::ScenarioResult;
use crate::vw::{self, PeerConfig, Variant};
use crate::{delayed, drift};
use posterior_learner::simulation::world::{CtrLevel, WorldConfig};

/// Runs the parsed command.
pub fn run(cli: Cli) -> Result<()> {
    let common = &cli.common;
    let mut runner = Runner::from_machine();
    if let Some(threads) = common.threads {
        runner = Runner {
            threads: threads.clamp(1, crate::parallel::THREADS_MAX),
            ..runner
        };
    }
    runner.progress = !common.no_progress;
    if !matches!(cli.scenario, Scenario::Replot) {
        println!("seed {} (replay with --seed {})", common.seed, common.seed);
    }
    match &cli.scenario {
        Scenario::Bernoulli(args) => {
            let result = bernoulli::run(&bernoulli_config(args, common), &runner)?;
            emit(&result, &common.out, "")
        }
        Scenario::Contextual(args) => {
            let config = contextual_config(
                "contextual",
                &args.world,
                args.world.world(),
                contextual::contextual_lineup(args.greedy_epsilon),
                common,
            );
            let result = with_peer(
                contextual::run(&config, &runner)?,
                &config,
                &args.vw,
                common,
                &runner,
            )?;
            emit(&result, &common.out, "")
        }
        Scenario::Drift(args) => {
            let (world, entries) =
                drift::setup(&args.world.world(), args.world.horizon, args.half_life_ms);
            let config = contextual_config("drift", &args.world, world, entries, common);
            let result = with_peer(
                contextual::run(&config, &runner)?,
                &config,
                &args.vw,
                common,
                &runner,
            )?;
            emit(&result, &common.out, "")
        }
        Scenario::Delayed(args) => {
            let (world, entries) =
                delayed::setup(&args.world.world(), args.mean_delay_ms, &args.batch_sizes);
            let config = contextual_config("delayed", &args.world, world, entries, common);
            emit(&contextual::run(&config, &runner)?, &common.out, "")
        }
        Scenario::Headline(args) => headline(args, common, &runner),
        Scenario::Replot => {
            let result = crate::reload::load(&common.out)?;
            plots(&result, &common.out, "")
        }
    }
}

fn bernoulli_config(args: &BernoulliArgs, common: &CommonArgs) -> BernoulliConfig {
    BernoulliConfig {
        arms: args.arms,
        epsilon: args.epsilon,
        best_rate: 0.5,
        horizon: args.horizon,
        seeds: args.seeds,
        seed: common.seed,
        egreedy_epsilon: args.egreedy_epsilon,
        policies: args.policies.clone(),
        per_decade: common.per_decade,
    }
}

fn contextual_config(
    name: &str,
    args: &WorldArgs,
    world: WorldConfig,
    entries: Vec<Entry>,
    common: &CommonArgs,
) -> ContextualConfig {
    ContextualConfig {
        name: format!("{name}-ctr-{}", ctr_name(args.ctr)),
        world,
        horizon: args.horizon,
        seeds: args.seeds,
        seed: common.seed,
        prior: args.prior(),
        entries,
        per_decade: common.per_decade,
    }
}

fn ctr_name(ctr: CtrLevel) -> &'static str {
    match ctr {
        CtrLevel::Low => "low",
        CtrLevel::High => "high",
    }
}

/// Appends the VW peer's rows to `result`, or a note saying why not.
fn with_peer(
    mut result: ScenarioResult,
    config: &ContextualConfig,
    args: &VwArgs,
    common: &CommonArgs,
    runner: &Runner,
) -> Result<ScenarioResult> {
    if args.no_vw {
        result.notes.push("vw: skipped (--no-vw)".into());
        return Ok(result);
    }
    let python = args.vw_python.clone().unwrap_or_else(vw::default_python);
    if !vw::available(&python) {
        println!("{}", vw::SKIPPED_NOTE);
        result.notes.push(vw::SKIPPED_NOTE.into());
        return Ok(result);
    }
    let variants = if args.variants.is_empty() {
        vw::default_variants()
    } else {
        args.variants.iter().map(|s| Variant::parse(s)).collect()
    };
    let peer = PeerConfig {
        python,
        variants,
        work_dir: common.out.join(format!("{}-vw", config.name)),
        keep_env: args.keep_env,
    };
    let checkpoints = Checkpoints::log_spaced(config.horizon, config.per_decade);
    let rows = vw::run_peer(
        &peer,
        &config.world,
        config.seed,
        config.seeds,
        &checkpoints,
        runner,
    )
    .context("vw peer")?;
    let tried: Vec<String> = rows
        .iter()
        .map(|r| format!("{} [{}]", r.name, r.note))
        .collect();
    result.notes.push(format!(
        "vw 9.11.9 (python driver, cb_explore_adf, -q dx, pmf-sampled actions, cost -1 per click), variants tried: {}",
        tried.join("; ")
    ));
    result.policies.extend(rows);
    Ok(result)
}

/// Prints the table and writes summary, CSV and plot under `dir`.
fn emit(result: &ScenarioResult, dir: &Path, stem: &str) -> Result<()> {
    println!("{}", result.table());
    result.write(dir, stem)?;
    plots(result, dir, stem)?;
    println!("wrote {}", dir.display());
    Ok(())
}

/// Log-x regret plot; contextual scenarios also get a linear-x one.
fn plots(result: &ScenarioResult, dir: &Path, stem: &str) -> Result<()> {
    let png = dir.join(format!("{}-regret.png", result.file_stem(stem)));
    plot::regret_plot(result, &png, XAxis::Log).context("plot regret")?;
    if !result.scenario.starts_with("bernoulli") {
        let png = dir.join(format!("{}-regret-linear.png", result.file_stem(stem)));
        plot::regret_plot(result, &png, XAxis::Linear).context("plot regret")?;
    }
    Ok(())
}

fn headline(args: &HeadlineArgs, common: &CommonArgs, runner: &Runner) -> Result<()> {
    let bernoulli_args = BernoulliArgs {
        arms: 10,
        epsilon: 0.1,
        horizon: args.bernoulli_horizon,
        seeds: args.bernoulli_seeds,
        policies: vec![
            BernoulliPolicy::Ts,
            BernoulliPolicy::Ucb1,
            BernoulliPolicy::EGreedy,
            BernoulliPolicy::Uniform,
        ],
        egreedy_epsilon: 0.1,
    };
    let result = bernoulli::run(&bernoulli_config(&bernoulli_args, common), runner)?;
    emit(&result, &common.out.join("bernoulli"), "")?;
    let world_args = WorldArgs {
        docs: 100,
        dim: 8,
        candidates: 10,
        ctr: CtrLevel::Low,
        horizon: args.contextual_horizon,
        seeds: 1,
        bias_sd: 0.5,
        weight_sd: 0.35,
        step_ms: 10,
        prior_precision: 4.0,
    };
    let config = contextual_config(
        "contextual",
        &world_args,
        world_args.world(),
        contextual::contextual_lineup(0.05),
        common,
    );
    let mut vw_args = args.vw.clone();
    if vw_args.variants.is_empty() {
        vw_args.variants = vec![
            "squarecb-g1000=--squarecb --gamma_scale 1000".into(),
            "bag5=--bag 5".into(),
        ];
    }
    let result = with_peer(
        contextual::run(&config, runner)?,
        &config,
        &vw_args,
        common,
        runner,
    )?;
    emit(&result, &common.out.join("contextual"), "")
}
