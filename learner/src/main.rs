//! `learner`: the online Thompson-sampling job.
//!
//! - `learner run --config FILE [--until-end] [--from-savepoint latest|DIR]`:
//!   consume the configured source, checkpoint into the state directory,
//!   resume exactly where a previous run stopped. Kafka runs stop on
//!   SIGTERM/SIGINT and take a savepoint on SIGUSR1.
//! - `learner dump --config FILE` or `--savepoint DIR`: print every key's
//!   state as exact JSONL.
//! - `learner savepoint create|list|verify`: savepoints of the live state.

use std::path::PathBuf;
use std::sync::Arc;

/// mimalloc: the engine allocates and frees per sample (its fields, the
/// reorder buffer's entries, the encodings of a checkpoint), and glibc's
/// allocator was ~45 % of the pipeline's profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use posterior_learner::config::{Config, SourceConfig};
use posterior_learner::runner::{
    Controls, KafkaRunMode, SavepointChoice, open_engine, restore_savepoint,
    restore_savepoint_if_missing, run_bounded, run_kafka,
};
use posterior_learner::savepoint;
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
        /// Start from a savepoint (`latest` under `[savepoints] dir`, or a
        /// directory) instead of the live state, which must be absent.
        #[arg(long)]
        from_savepoint: Option<String>,
    },
    /// Print every key's state as JSONL.
    Dump {
        /// The learner's TOML config (for the state directory).
        #[arg(long, required_unless_present = "savepoint")]
        config: Option<PathBuf>,
        /// Dump a savepoint instead of the live state.
        #[arg(long, conflicts_with = "config")]
        savepoint: Option<PathBuf>,
    },
    /// Savepoints of the live state.
    Savepoint {
        #[command(subcommand)]
        action: SavepointAction,
    },
}

#[derive(Subcommand)]
enum SavepointAction {
    /// Take a savepoint of the live state's last checkpoint (offline).
    Create {
        /// The learner's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Partition count of the samples topic (1 for a file or stdin).
        #[arg(long, default_value_t = 1)]
        partition_count: u32,
    },
    /// List the valid savepoints, oldest first, and the invalid ones.
    List {
        /// The learner's TOML config.
        #[arg(long)]
        config: PathBuf,
    },
    /// Check a savepoint's manifest and checksums.
    Verify {
        /// The savepoint directory.
        dir: PathBuf,
    },
}

fn load(path: &PathBuf) -> Result<Config> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    Config::from_toml(&text).with_context(|| format!("invalid config {}", path.display()))
}

fn savepoint_root(config: &Config) -> Result<&PathBuf> {
    Ok(&config
        .savepoints
        .as_ref()
        .context("the config has no [savepoints] dir")?
        .dir)
}

fn run(config: &Config, until_end: bool, from_savepoint: Option<String>) -> Result<()> {
    if let Some(choice) = from_savepoint {
        let choice = match choice.as_str() {
            "latest" => SavepointChoice::Latest,
            dir => SavepointChoice::Dir(dir.into()),
        };
        let restored = restore_savepoint(config, &choice)?;
        eprintln!("learner: restored savepoint {}", restored.dir.display());
    } else if let Some(restored) = restore_savepoint_if_missing(config)? {
        eprintln!(
            "learner: no live state: restored the newest savepoint {}",
            restored.dir.display()
        );
    }
    let summary = match &config.source {
        SourceConfig::Kafka(_) => {
            let controls = Controls::default();
            for signal in [SIGTERM, SIGINT] {
                signal_hook::flag::register(signal, Arc::clone(&controls.stop))
                    .context("install signal handler")?;
            }
            signal_hook::flag::register(SIGUSR1, Arc::clone(&controls.savepoint))
                .context("install signal handler")?;
            let mode = if until_end {
                KafkaRunMode::UntilEnd
            } else {
                KafkaRunMode::Unbounded
            };
            run_kafka(config, mode, &controls)?
        }
        _ => {
            anyhow::ensure!(!until_end, "--until-end is for kafka sources");
            run_bounded(config)?
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
    Ok(())
}

fn main() -> Result<()> {
    match Args::parse().command {
        Command::Run {
            config,
            until_end,
            from_savepoint,
        } => run(&load(&config)?, until_end, from_savepoint)?,
        Command::Dump { config, savepoint } => {
            let (config, _scratch) = match (config, savepoint) {
                (Some(config), _) => (load(&config)?, None),
                (None, Some(dir)) => {
                    // Restore the savepoint into a scratch store and dump it.
                    let scratch = tempfile::tempdir().context("scratch directory")?;
                    let config = scratch_config(&dir, scratch.path())?;
                    restore_savepoint(&config, &SavepointChoice::Dir(dir))?;
                    (config, Some(scratch))
                }
                (None, None) => anyhow::bail!("give --config or --savepoint"),
            };
            let store = RocksStore::open(&config.state.dir).context("open state store")?;
            let (engine, _, _) = open_engine(&config, &store)?;
            let stdout = std::io::stdout();
            posterior_learner::dump::dump(&engine, &mut stdout.lock()).context("write dump")?;
        }
        Command::Savepoint { action } => match action {
            SavepointAction::Create {
                config,
                partition_count,
            } => {
                let config = load(&config)?;
                let store = RocksStore::open(&config.state.dir).context("open state store")?;
                let taken = savepoint::write(savepoint_root(&config)?, &store, partition_count)?;
                println!("{}", taken.dir.display());
            }
            SavepointAction::List { config } => {
                let config = load(&config)?;
                let (valid, invalid) = savepoint::list(savepoint_root(&config)?)?;
                for s in valid {
                    println!(
                        "{}\tpartitions {:?}\toffsets {:?}\tapplied {}",
                        s.dir.display(),
                        s.manifest.partitions,
                        s.manifest.next_offsets,
                        s.manifest.applied
                    );
                }
                for err in invalid {
                    println!("INVALID\t{err}");
                }
            }
            SavepointAction::Verify { dir } => {
                let s = savepoint::verify(&dir)?;
                println!(
                    "{}: valid, {} files, partitions {:?}",
                    s.dir.display(),
                    s.manifest.files.len(),
                    s.manifest.partitions
                );
            }
        },
    }
    Ok(())
}

/// A minimal config whose live store is `scratch`, for dumping a savepoint
/// (the versions come from the savepoint's registry).
fn scratch_config(savepoint: &std::path::Path, scratch: &std::path::Path) -> Result<Config> {
    let text = format!(
        "[state]\ndir = {:?}\n[source]\nkind = \"stdin\"\nformat = \"jsonl\"\n[dead_letter]\npath = {:?}\n",
        scratch.join("state"),
        scratch.join("dead.jsonl"),
    );
    Config::from_toml(&text).with_context(|| format!("scratch config for {}", savepoint.display()))
}
