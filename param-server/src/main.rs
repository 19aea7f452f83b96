//! `param-server`: serves Posterior's parameters over gRPC
//! (`posterior.v1.ParamService`, `AdminService` when tokens are
//! configured, health, reflection).
//!
//! `param-server --config param-server.toml [--listen 127.0.0.1:50051] [--check]`
//!
//! The config is read and validated before any socket is bound; `--check`
//! stops there. This slice has no standalone feed yet (the Kafka `params`
//! topic comes next): the binary serves its versions' priors, and an
//! embedding learner feeds the store through `runner::run`'s channel.
//! Likewise there is no control path to a learner yet: admin commands are
//! refused with UNAVAILABLE (an embedding learner passes an in-process
//! `ControlPlane` to `runner::prepare`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Parser;
use posterior_param_server::config::Config;
use posterior_param_server::control::NoControlPlane;
use posterior_param_server::runner::{build_store, prepare, run};
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

fn load(args: &Args) -> Result<Config> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("read config {}", args.config.display()))?;
    let mut config: Config =
        toml::from_str(&text).with_context(|| format!("parse config {}", args.config.display()))?;
    if let Some(listen) = &args.listen {
        config.listen.clone_from(listen);
    }
    config.validate().context("invalid config")?;
    Ok(config)
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

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let config = load(&args)?;
    let store = build_store(&config).context("build the store")?;
    // Tokens, audit file and certificates are checked by `--check` too.
    let options =
        prepare(&config, &store, Arc::new(NoControlPlane)).context("prepare admin and TLS")?;
    if args.check {
        println!("config ok: {} version(s)", config.versions.len());
        return Ok(());
    }
    let shutdown = shutdown_signal()?;
    let addr = config.listen_addr().context("listen address")?;
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind {addr}"))?;
    let local = listener.local_addr().context("local address")?;
    tracing::info!(%local, versions = config.versions.len(), "param-server listening");
    run(&config, store, listener, None, options, shutdown)
        .await
        .context("serve")?;
    Ok(())
}
