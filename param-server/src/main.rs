//! `param-server`: serves Posterior's parameters over gRPC
//! (`posterior.v1.ParamService`, `AdminService` when tokens are
//! configured, health, reflection).
//!
//! `param-server --config param-server.toml [--listen 127.0.0.1:50051] [--check]`
//!
//! The config is the file, overridden by `POSTERIOR_PARAM_SERVER__*`
//! environment variables (`POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS=4`),
//! overridden by the flags. It is read and validated before any socket is
//! bound; `--check` stops there. With `[feed.kafka]` the server is a
//! standalone replica: it loads its snapshot (`[feed.snapshot]`), follows the learner's `params`
//! topic, and reports `NOT_SERVING` (refusing `ParamService` calls with
//! UNAVAILABLE) until it has caught up; at SIGTERM it writes a last
//! snapshot. Without it, it serves its versions' priors. With
//! `[control.kafka]` admin commands go to the learners' `control` topic;
//! without it they are refused with UNAVAILABLE. With `[metrics]` it
//! serves `GET /metrics` (Prometheus text format) on that address.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use posterior_learner::overrides::{self, Override};
use posterior_param_server::config::{Config, ENV_PREFIX, LogFormat};
use posterior_param_server::control::{ControlPlane, NoControlPlane};
use posterior_param_server::exposition::serve_metrics;
use posterior_param_server::metrics::ServerMetrics;
use posterior_param_server::runner::{build_store, prepare, run};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(version, about = "Serves Posterior's parameters over gRPC")]
struct Args {
    /// The TOML configuration file.
    #[arg(long)]
    config: PathBuf,
    /// Overrides `listen` of the config file.
    #[arg(long)]
    listen: Option<String>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check: bool,
}

/// The config file with the `POSTERIOR_PARAM_SERVER__*` variables, then
/// the flags, applied; validated.
fn load(args: &Args) -> Result<Config> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read config {}", args.config.display()))?;
    let mut overrides = overrides::from_env(ENV_PREFIX)?;
    if let Some(listen) = &args.listen {
        overrides.push(Override::flag("--listen", "listen", listen.as_str().into()));
    }
    Config::load(&text, &overrides)
        .with_context(|| format!("invalid config {}", args.config.display()))
}

/// Resolves at SIGTERM or SIGINT. The handlers are installed when this is
/// called — before the listener is announced — so a signal sent right
/// after the "listening" line stops the server gracefully instead of
/// killing it (a lazily installed handler would race the first requests).
fn shutdown_signal() -> Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("install the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("install the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        tracing::info!("shutting down");
    })
}

/// Installs the logger of `[log] format` (after the config loaded: a
/// config that fails to load is reported in plain text).
fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logger = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logger
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logger.json().flatten_event(true).init(),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match load(&args) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("Error: {err:?}");
            return ExitCode::FAILURE;
        }
    };
    let format = config.log.format;
    init_logging(format);
    let served = tokio::runtime::Runtime::new()
        .context("start the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(&args, config)));
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            match format {
                LogFormat::Text => eprintln!("Error: {err:?}"),
                LogFormat::Json => tracing::error!("{err:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Serves `config` until SIGTERM/SIGINT (`--check`: only validates).
async fn serve(args: &Args, config: Config) -> Result<()> {
    let store = build_store(&config).context("build the store")?;
    // Tokens, audit file and certificates are checked by `--check` too.
    let options =
        prepare(&config, &store, control_plane(&config)?).context("prepare admin and TLS")?;
    if args.check {
        println!("config ok: {} version(s)", config.versions.len());
        return Ok(());
    }
    let shutdown = shutdown_signal()?;
    let mut registry = Registry::default();
    let metrics = config
        .metrics
        .as_ref()
        .map(|_| ServerMetrics::register(&mut registry, &store));
    let replica = start_replica(&config, &store, metrics.clone())?;
    #[cfg(feature = "kafka")]
    let options = posterior_param_server::ServeOptions {
        readiness: replica.as_ref().map(Replica::readiness),
        ..options
    };
    let options = posterior_param_server::ServeOptions { metrics, ..options };
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    if let Some(metrics) = &config.metrics {
        let addr = metrics.listen_addr().map_err(anyhow::Error::msg)?;
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("bind metrics.listen {addr}"))?;
        let local = listener.local_addr().context("local address")?;
        tracing::info!(%local, "param-server metrics listening");
        tokio::spawn(serve_metrics(listener, Arc::new(registry), async {
            let _ = metrics_stopped.await;
        }));
    }
    let addr = config.listen_addr().context("listen address")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let local = listener.local_addr().context("local address")?;
    tracing::info!(%local, versions = config.versions.len(), "param-server listening");
    run(
        &config,
        Arc::clone(&store),
        listener,
        None,
        options,
        shutdown,
    )
    .await
    .context("serve")?;
    let _ = metrics_stop.send(());
    stop_replica(replica, &store)
}

/// The control path of `[control.kafka]`, or none (commands refused).
fn control_plane(config: &Config) -> Result<Arc<dyn ControlPlane>> {
    #[cfg(feature = "kafka")]
    if let Some(kafka) = &config.control.kafka {
        use posterior_param_server::kafka_control::KafkaControlPlane;
        let plane = KafkaControlPlane::open(kafka).context("[control.kafka]")?;
        tracing::info!(
            topic = plane.topic(),
            "admin commands go to the control topic"
        );
        return Ok(Arc::new(plane));
    }
    // Validation refuses [control.kafka] without the feature.
    let _ = config;
    Ok(Arc::new(NoControlPlane))
}

#[cfg(feature = "kafka")]
type Replica = posterior_param_server::replica::Replica;
#[cfg(not(feature = "kafka"))]
type Replica = std::convert::Infallible;

/// The `[feed.kafka]` replica, following the topic from now on.
fn start_replica(
    config: &Config,
    store: &Arc<posterior_param_server::ParamStore>,
    metrics: Option<Arc<ServerMetrics>>,
) -> Result<Option<Replica>> {
    #[cfg(feature = "kafka")]
    if config.feed.kafka.is_some() {
        let replica = Replica::start(&config.feed, store, metrics).context("[feed.kafka]")?;
        return Ok(Some(replica));
    }
    let _ = (config, store, metrics);
    Ok(None)
}

/// Stops the feed and writes the last snapshot.
fn stop_replica(
    replica: Option<Replica>,
    store: &posterior_param_server::ParamStore,
) -> Result<()> {
    #[cfg(feature = "kafka")]
    if let Some(replica) = replica {
        replica.stop(store).context("stop the replica")?;
    }
    #[cfg(not(feature = "kafka"))]
    let _ = (replica, store);
    Ok(())
}
