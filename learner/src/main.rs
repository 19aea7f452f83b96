//! `learner`: the online Thompson-sampling job.
//!
//! - `learner run --config FILE`: consume the configured source, checkpoint
//!   into the state directory, resume exactly where a previous run stopped.
//! - `learner dump --config FILE`: print every key's state as exact JSONL.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use posterior_learner::config::{Config, SourceConfig};
use posterior_learner::runner::{KafkaRunMode, open_engine, run_bounded, run_kafka};
use posterior_learner::store::RocksStore;

#[derive(Parser)]
#[command(version, about = "Posterior's online Thompson-sampling learner")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the source with checkpoints: a file or stdin to its end,
    /// Kafka until SIGTERM/SIGINT (or `--until-end`).
    Run {
        /// The learner's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Kafka: stop at the high watermarks seen at start and end the
        /// input there (release and apply everything), as for a file.
        #[arg(long)]
        until_end: bool,
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
        Command::Run { config, until_end } => {
            let config = load(&config)?;
            let summary = match &config.source {
                SourceConfig::Kafka(_) => {
                    let stop = Arc::new(AtomicBool::new(false));
                    for signal in [SIGTERM, SIGINT] {
                        signal_hook::flag::register(signal, Arc::clone(&stop))
                            .context("install signal handler")?;
                    }
                    let mode = if until_end {
                        KafkaRunMode::UntilEnd
                    } else {
                        KafkaRunMode::Unbounded
                    };
                    run_kafka(&config, mode, &stop)?
                }
                _ => {
                    anyhow::ensure!(!until_end, "--until-end is for kafka sources");
                    run_bounded(&config)?
                }
            };
            eprintln!(
                "learner: {} records ({}), {} checkpoints, {} throttles; applied {}, dead letters {:?}",
                summary.records,
                if summary.restored {
                    "resumed from checkpoint"
                } else {
                    "fresh state"
                },
                summary.checkpoints,
                summary.throttles,
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
