//! `learner`: the online Thompson-sampling job.
//!
//! - `learner run --config FILE [--until-end] [--from-savepoint latest|DIR...]
//!   [--state-dir DIR] [--listen HOST:PORT]`:
//!   consume the configured source, checkpoint into the state directory,
//!   resume exactly where a previous run stopped. Every run checkpoints and
//!   stops on SIGTERM/SIGINT; Kafka runs take a savepoint on SIGUSR1. With
//!   a `[param_server]` table the run serves its parameters over gRPC from
//!   the same process (see [`embedded`]).
//! - `learner quickstart [--config config/quickstart.toml]`: the closed
//!   loop of a ranking system around an embedded learner and param-server
//!   (see [`quickstart`]).
//! - `learner dump --config FILE` or `--savepoint DIR`: print every key's
//!   state as exact JSONL.
//! - `learner savepoint create|list|verify`: savepoints of the live state.
//! - `learner control --config FILE create|fork|retire ...`: an admin
//!   command on the `[control]` topic, applied by every learner at its
//!   event time (`--at-ms`, default now).
//!
//! Every command reads its config through [`load`]: the file, overridden
//! by `POSTERIOR_LEARNER__*` environment variables, overridden by `run`'s
//! flags, checked before anything is opened or bound.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

/// mimalloc: the engine allocates and frees per sample (its fields, the
/// reorder buffer's entries, the encodings of a checkpoint), and glibc's
/// allocator was ~45 % of the pipeline's profile (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM, SIGUSR1};

use posterior_learner::config::VersionConfig;
use posterior_learner::config::{Config, LogFormat, SourceConfig};
use posterior_learner::control::Scheduled;
use posterior_learner::kafka::send_control;
use posterior_learner::runner::{
    Controls, KafkaRunMode, SavepointChoice, describe_savepoints, open_engine, restore_savepoint,
    restore_savepoint_if_missing, run_kafka_with, run_local,
};
use posterior_learner::savepoint;
use posterior_learner::store::RocksStore;
use posterior_node::{embedded, load, metrics, quickstart};
use posterior_proto::v1;

#[derive(Parser)]
#[command(version, about = "Posterior's online Thompson-sampling learner")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Consume the source with checkpoints: a file, stdin or a bounded
    /// simulator to its end, Kafka or an unbounded simulator until
    /// SIGTERM/SIGINT (Kafka: or `--until-end`).
    Run {
        /// The learner's TOML config.
        #[arg(long)]
        config: PathBuf,
        /// Kafka: stop at the high watermarks seen at start and end the
        /// input there (release and apply everything), as for a file.
        #[arg(long)]
        until_end: bool,
        /// Start from a savepoint instead of the live state, which must be
        /// absent: `latest` under `[savepoints] dir`, or a directory, or the
        /// directories of the shares of one savepoint that learners of
        /// different partitions wrote (each partition is taken from the
        /// share that holds it).
        #[arg(long, num_args = 1.., value_name = "latest|DIR")]
        from_savepoint: Vec<String>,
        #[command(flatten)]
        flags: load::RunFlags,
    },
    /// The closed loop in one process: the learner with its param-server,
    /// a simulated predictor ranking with the server's Thompson draws,
    /// simulated users and a sample joiner; prints progress and a summary,
    /// writes a CTR plot (see `config/quickstart.toml`).
    Quickstart {
        /// The quickstart's TOML config.
        #[arg(long, default_value = "config/quickstart.toml")]
        config: PathBuf,
        #[command(flatten)]
        overrides: quickstart::Overrides,
    },
    /// Print every key's state as JSONL.
    Dump {
        /// The learner's TOML config (for the state directory).
        #[arg(long, required_unless_present = "savepoint")]
        config: Option<PathBuf>,
        /// Dump a savepoint instead of the live state (several
        /// directories: the shares of one, merged).
        #[arg(long, num_args = 1.., conflicts_with = "config")]
        savepoint: Vec<PathBuf>,
    },
    /// Savepoints of the live state.
    Savepoint {
        #[command(subcommand)]
        action: SavepointAction,
    },
    /// Send an admin command to the `[control]` topic: every learner
    /// reading it applies the command at its event time.
    Control {
        /// The learner's TOML config (for `[control]`).
        #[arg(long)]
        config: PathBuf,
        /// Event time the command takes effect at (Unix ms); default now,
        /// which is ahead of a learner's watermark.
        #[arg(long)]
        at_ms: Option<i64>,
        /// Command id (default: generated); resending an id is harmless.
        #[arg(long)]
        id: Option<String>,
        #[command(subcommand)]
        action: ControlAction,
    },
}

#[derive(Subcommand)]
enum ControlAction {
    /// Create a version from a `[[versions]]` table given as TOML text,
    /// e.g. 'name = "b2"\nmodel = "beta"\nreward_label = "click"'.
    Create {
        /// The version table.
        #[arg(long)]
        spec: String,
    },
    /// Fork a version from another's current parameters (warm start).
    Fork {
        /// Source version.
        #[arg(long)]
        from: String,
        /// New version.
        #[arg(long)]
        to: String,
        /// Reward label of the fork.
        #[arg(long)]
        reward_label: Option<String>,
        /// Reward threshold of the fork.
        #[arg(long)]
        reward_threshold: Option<f64>,
        /// Forgetting half-life of the fork (0 = off).
        #[arg(long)]
        forgetting_half_life_ms: Option<i64>,
        /// Whether the fork uses sample weights.
        #[arg(long)]
        use_sample_weight: Option<bool>,
    },
    /// Retire a version: its samples become dead letters, its parameters
    /// stay.
    Retire {
        /// The version.
        #[arg(long)]
        name: String,
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

fn savepoint_root(config: &Config) -> Result<&PathBuf> {
    Ok(&config
        .savepoints
        .as_ref()
        .context("the config has no [savepoints] dir")?
        .dir)
}

fn run(
    config: &Config,
    server: Option<posterior_param_server::config::Config>,
    until_end: bool,
    from_savepoint: Vec<String>,
) -> Result<()> {
    anyhow::ensure!(
        !matches!(config.source, SourceConfig::Channel),
        "[source] kind = \"channel\" is pushed by `learner quickstart`; `learner run` has nothing to push"
    );
    let mut controls = Controls::default();
    for signal in [SIGTERM, SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&controls.stop))
            .context("install signal handler")?;
    }
    // Every source takes a savepoint on SIGUSR1. One that arrives during
    // the restore below waits for the run's loop (the signal's default
    // action would end the process).
    signal_hook::flag::register(SIGUSR1, Arc::clone(&controls.savepoint))
        .context("install signal handler")?;
    if !from_savepoint.is_empty() {
        let choice = if from_savepoint.iter().any(|c| c == "latest") {
            anyhow::ensure!(
                from_savepoint.len() == 1,
                "--from-savepoint latest takes no directories beside it"
            );
            SavepointChoice::Latest
        } else {
            SavepointChoice::Dirs(from_savepoint.iter().map(PathBuf::from).collect())
        };
        let restored = restore_savepoint(config, &choice)?;
        tracing::info!("restored savepoint {}", describe_savepoints(&restored));
    } else if let Some(restored) = restore_savepoint_if_missing(config)? {
        tracing::info!(
            "no live state: restored the newest savepoint {}",
            describe_savepoints(&restored)
        );
    }
    let mut registry = metrics::learner_registry(config, &mut controls);
    let (sink, serving) = embedded::attach(config, server, &controls, registry.as_mut())?;
    let endpoint = match registry {
        Some(registry) => metrics::MetricsEndpoint::start(config, registry)?,
        None => None,
    };
    if let Some(endpoint) = &endpoint {
        tracing::info!("metrics listening on {}", endpoint.addr());
    }
    let summary = match &config.source {
        SourceConfig::Kafka(_) => {
            let mode = if until_end {
                KafkaRunMode::UntilEnd
            } else {
                KafkaRunMode::Unbounded
            };
            run_kafka_with(config, mode, &controls, sink)?
        }
        _ => {
            anyhow::ensure!(!until_end, "--until-end is for kafka sources");
            run_local(config, &controls, sink)?
        }
    };
    if let Some(serving) = serving {
        serving.stop()?;
    }
    drop(endpoint);
    tracing::info!(
        "{} records ({}), {} checkpoints, {} throttles; applied {}, dead letters {:?}",
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

/// Whether the logger writes JSON (then the error that ends `main` is
/// logged as an event too).
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Installs the logger of `[log] format`: every line of the process's
/// stderr (the embedded param-server's too) goes through it. Called once,
/// after the config loaded: a config that fails to load is reported in
/// plain text.
fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    match format {
        LogFormat::Text => logger.init(),
        LogFormat::Json => {
            JSON_LOGS.store(true, std::sync::atomic::Ordering::Relaxed);
            logger.json().flatten_event(true).init();
        }
    }
}

fn main() -> ExitCode {
    match run_command(Args::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            if JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed) {
                tracing::error!("{err:#}");
            } else {
                eprintln!("Error: {err:?}");
            }
            ExitCode::FAILURE
        }
    }
}

/// Loads `path` like [`load::load`] and installs its logger.
fn load_logged(path: &std::path::Path) -> Result<Config> {
    let config = load::load(path)?;
    init_logging(config.log.format);
    Ok(config)
}

fn run_command(command: Command) -> Result<()> {
    match command {
        Command::Run {
            config,
            until_end,
            from_savepoint,
            flags,
        } => {
            let (config, server) = load::load_with_flags(&config, &flags)?;
            init_logging(config.log.format);
            run(&config, server, until_end, from_savepoint)?;
        }
        Command::Quickstart { config, overrides } => {
            init_logging(LogFormat::Text);
            quickstart::run(&config, &overrides)?;
        }
        Command::Dump { config, savepoint } => {
            let (config, _scratch) = match (config, savepoint.first()) {
                (Some(config), _) => (load_logged(&config)?, None),
                (None, Some(dir)) => {
                    init_logging(LogFormat::Text);
                    // Restore every partition the savepoint (or its shares)
                    // holds into a scratch store and dump it.
                    let scratch = tempfile::tempdir().context("scratch directory")?;
                    let config = scratch_config(dir, scratch.path())?;
                    let shares = savepoint
                        .iter()
                        .map(|dir| savepoint::verify(dir))
                        .collect::<Result<Vec<_>, _>>()?;
                    let held: BTreeSet<u32> = shares
                        .iter()
                        .flat_map(|s| s.manifest.partitions.iter().copied())
                        .collect();
                    let store = RocksStore::open(&config.state.dir).context("open state store")?;
                    savepoint::restore_shares_into(&shares, Some(&held), &store)?;
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
                let config = load_logged(&config)?;
                let store = RocksStore::open(&config.state.dir).context("open state store")?;
                let taken = savepoint::write(savepoint_root(&config)?, &store, partition_count)?;
                println!("{}", taken.dir.display());
                if let Some(savepoints) = &config.savepoints {
                    posterior_learner::runner::prune_savepoints(savepoints, &taken);
                }
            }
            SavepointAction::List { config } => {
                let config = load_logged(&config)?;
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
                init_logging(LogFormat::Text);
                let s = savepoint::verify(&dir)?;
                println!(
                    "{}: valid, {} files, partitions {:?}",
                    s.dir.display(),
                    s.manifest.files.len(),
                    s.manifest.partitions
                );
            }
        },
        Command::Control {
            config,
            at_ms,
            id,
            action,
        } => {
            let config = load_logged(&config)?;
            let control = config
                .control
                .as_ref()
                .context("the config has no [control] topic")?;
            let command = control_command(action, at_ms, id)?;
            // Refuse what a learner would refuse, before it reaches the topic.
            Scheduled::try_from(command.clone()).context("invalid command")?;
            let offset = send_control(control, &command)?;
            println!(
                "{}\tat {}\toffset {offset}",
                command.command_id, command.effective_event_time_ms
            );
        }
    }
    Ok(())
}

/// The wire command of a `learner control` invocation.
fn control_command(
    action: ControlAction,
    at_ms: Option<i64>,
    id: Option<String>,
) -> Result<v1::ControlCommand> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis() as i64;
    let command = match action {
        ControlAction::Create { spec } => {
            let table: VersionConfig =
                toml::from_str(&spec).context("--spec is not a valid version table")?;
            let spec = table.spec().context("--spec")?;
            v1::control_command::Command::CreateVersion(v1::CreateVersionRequest {
                spec: Some(v1::VersionSpec::from(&spec)),
            })
        }
        ControlAction::Fork {
            from,
            to,
            reward_label,
            reward_threshold,
            forgetting_half_life_ms,
            use_sample_weight,
        } => v1::control_command::Command::ForkVersion(v1::ForkVersionRequest {
            from,
            to,
            overrides: Some(v1::VersionOverrides {
                reward_label,
                reward_threshold,
                forgetting_half_life_ms,
                use_sample_weight,
            }),
        }),
        ControlAction::Retire { name } => {
            v1::control_command::Command::RetireVersion(v1::RetireVersionRequest { name })
        }
    };
    Ok(v1::ControlCommand {
        command_id: id.unwrap_or_else(|| format!("cli-{now_ms}-{}", std::process::id())),
        effective_event_time_ms: at_ms.unwrap_or(now_ms),
        issued_by: std::env::var("USER").unwrap_or_else(|_| "learner-cli".into()),
        command: Some(command),
    })
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
