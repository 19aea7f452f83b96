//! `learner`: the online Thompson-sampling job.
//!
//! - `learner run --config FILE`: consume the configured source, checkpoint
//!   into the state directory, resume exactly where a previous run stopped.
//! - `learner dump --config FILE`: print every key's state as exact JSONL.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use posterior_learner::config::Config;
use posterior_learner::runner::{open_engine, run_bounded};
use posterior_learner::store::RocksStore;

#[derive(Parser)]
#[command(version, about = "Posterior's online Thompson-sampling learner")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the source to its end, with checkpoints.
    Run {
        /// The learner's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Print every key's state as JSONL.
    Dump {
        /// The learner's TOML config (for the state directory).
        #[arg(long)]
        config: PathBuf,
    },
}

fn load(path: &PathBuf) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Config::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Run { config } => {
            let config = load(&config)?;
            let summary = run_bounded(&config)?;
            eprintln!(
                "learner: {} records ({}), {} checkpoints; applied {}, dead letters {:?}",
                summary.records,
                if summary.restored {
                    "resumed from checkpoint"
                } else {
                    "fresh state"
                },
                summary.checkpoints,
                summary.counters.applied,
                summary.counters.dead,
            );
        }
        Command::Dump { config } => {
            let config = load(&config)?;
            let store = RocksStore::open(&config.state.dir).context("open state store")?;
            let (engine, _, _) = open_engine(&config, &store)?;
            let stdout = std::io::stdout();
            posterior_learner::dump::dump(&engine, &mut stdout.lock()).context("write dump")?;
        }
    }
    Ok(())
}
