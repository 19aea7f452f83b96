//! The param-server embedded in the learner's process — the default
//! single-machine deployment. The learner publishes into a bounded
//! in-process channel ([`posterior_learner::publish::channel`]); the
//! server's feed applies what arrives, sharing the learner's states rather
//! than copying them; the server runs on its own tokio runtime and threads,
//! so serving never runs on the ingesting thread.
//!
//! The learner's config names it with a `[param_server]` table, the
//! `param-server` binary's config without `versions` (the learner announces
//! its own, admin-created ones included). With admin tokens configured,
//! `AdminService` hands its commands to the learner's command inbox, which
//! schedules them at their event time like commands from the `control`
//! topic; an admin call returns once the learner has checkpointed its
//! command, so an accepted command survives a crash.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use posterior_learner::config::VersionConfig;
use posterior_learner::params::Publication;
use posterior_learner::publish::{ChannelSink, ParamSink, TeeSink, channel};
use posterior_learner::runner::{CommandInbox, Controls, open_sink};
use posterior_param_server::config::Config;
use posterior_param_server::control::InProcessControlPlane;
use posterior_param_server::metrics::ServerMetrics;
use posterior_param_server::readiness::Readiness;
use posterior_param_server::runner::{build_store, prepare, run};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, oneshot};

/// Key of the learner's config that holds the embedded server's table.
pub const CONFIG_KEY: &str = "param_server";

/// Publications the channel between the learner and the server holds
/// before the learner waits (each is a batch of up to one publish
/// interval's changed keys, or a version announcement).
pub const CHANNEL_CAPACITY: usize = 64;

/// A running embedded param-server.
pub struct EmbeddedServer {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl EmbeddedServer {
    /// Checks `config` (tokens and certificates included), binds its
    /// listener (before returning, so a taken port fails the start) and
    /// serves on a runtime of its own, applying `publications` as they
    /// arrive and handing admin commands to `inbox`.
    ///
    /// The learner's configured `versions` are served from the start; the
    /// others (created at run time) from the learner's first announcement.
    ///
    /// With `registry` (the learner's `[metrics]` registry, served on one
    /// endpoint) the server's metrics are registered on it.
    pub fn start(
        mut config: Config,
        versions: &[VersionConfig],
        publications: mpsc::Receiver<Publication>,
        inbox: CommandInbox,
        registry: Option<&mut Registry>,
    ) -> Result<Self> {
        check(&config).map_err(anyhow::Error::msg)?;
        config.versions = versions.to_vec();
        let store = build_store(&config).with_context(|| format!("invalid [{CONFIG_KEY}]"))?;
        // An admin call returns once the learner has checkpointed its
        // command, as a call through the `control` topic returns once the
        // broker has it.
        let (control, mut commands) = InProcessControlPlane::durable(
            config.admin.control_queue,
            Duration::from_millis(config.admin.confirm_timeout_ms),
        );
        let mut options = prepare(&config, &store, Arc::new(control))
            .with_context(|| format!("[{CONFIG_KEY}] admin or tls"))?;
        options.metrics = registry.map(|r| ServerMetrics::register(r, &store));
        // Until the learner has restored its state and handed all of it
        // over, the store holds priors: health says NOT_SERVING and
        // `ParamService` answers UNAVAILABLE rather than a prior for a key
        // the learner has.
        options.readiness = Some(Readiness::not_ready());
        let addr = config
            .listen_addr()
            .with_context(|| format!("[{CONFIG_KEY}] listen"))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads())
            .thread_name("param-server")
            .enable_all()
            .build()
            .context("start the param-server's runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("bind {addr}"))?;
        let addr = listener.local_addr().context("local address")?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        runtime.spawn(async move {
            while let Some(handover) = commands.recv().await {
                let (command, durable) = handover.into_parts();
                inbox.send_confirmed(command, move || durable.confirm());
            }
        });
        let thread = std::thread::Builder::new()
            .name("param-server".into())
            .spawn(move || {
                let serving = run(
                    &config,
                    store,
                    listener,
                    Some(publications),
                    options,
                    async {
                        // A dropped sender stops the server too.
                        let _ = stopped.await;
                    },
                );
                runtime.block_on(serving).context("embedded param-server")
            })
            .context("spawn the param-server thread")?;
        Ok(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        })
    }

    /// The address it serves on (the bound port when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving (in-flight calls finish) and waits for the server.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        match self.thread.take() {
            Some(thread) => thread
                .join()
                .map_err(|_| anyhow::anyhow!("the param-server thread panicked"))?,
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedServer {
    fn drop(&mut self) {
        if let Err(error) = self.stop_inner() {
            tracing::error!(%error, "embedded param-server stopped with an error");
        }
    }
}

/// The server's worker threads: the machine's cores less the one the
/// learner's ingest thread keeps busy, at least one.
fn worker_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get().saturating_sub(1))
        .max(1)
}

/// Where a learner run publishes: into a new embedded server when the
/// config has a `[param_server]` table (returned, serving), and to the
/// config's own sink (the `params` topic of `[publish.kafka]`), both
/// when the config has both.
pub fn attach(
    config: &posterior_learner::config::Config,
    server: Option<Config>,
    controls: &Controls,
    registry: Option<&mut Registry>,
) -> Result<(Box<dyn ParamSink>, Option<EmbeddedServer>)> {
    let has_topic = config
        .publish
        .as_ref()
        .is_some_and(|publish| publish.kafka.is_some());
    Ok(match server {
        // Both: the topic's producer opens first, so an unreachable
        // broker stops the run before the server binds.
        Some(server) if has_topic => {
            let topic = open_sink(config)?;
            let (sink, serving) = serve(config, server, controls, registry)?;
            (Box::new(TeeSink::new(Box::new(sink), topic)), Some(serving))
        }
        Some(server) => {
            let (sink, serving) = serve(config, server, controls, registry)?;
            (Box::new(sink), Some(serving))
        }
        None => (open_sink(config)?, None),
    })
}

/// Starts the embedded server of `config`'s learner, and the sink the
/// learner publishes into it through (the config's own sink aside).
pub fn serve(
    config: &posterior_learner::config::Config,
    server: Config,
    controls: &Controls,
    registry: Option<&mut Registry>,
) -> Result<(ChannelSink, EmbeddedServer)> {
    let (sink, publications) = channel(CHANNEL_CAPACITY);
    let serving = EmbeddedServer::start(
        server,
        &config.versions,
        publications,
        controls.commands.clone(),
        registry,
    )?;
    tracing::info!("param-server listening on {}", serving.addr());
    Ok((sink, serving))
}

/// Refuses what an embedded server's table may not hold: the learner
/// gives it its versions, its feed and its control path.
pub fn check(config: &Config) -> Result<(), String> {
    if !config.versions.is_empty() {
        return Err(format!(
            "{CONFIG_KEY}.versions: an embedded param-server serves the learner's versions; remove the table"
        ));
    }
    if config.feed != Default::default() || config.control != Default::default() {
        return Err(format!(
            "{CONFIG_KEY}.feed / {CONFIG_KEY}.control: an embedded param-server is fed by the learner and reaches it in process; remove the tables"
        ));
    }
    if config.metrics.is_some() {
        return Err(format!(
            "{CONFIG_KEY}.metrics: the learner's [metrics] endpoint serves the embedded \
             param-server's metrics too; remove the table"
        ));
    }
    if config.log != Default::default() {
        return Err(format!(
            "{CONFIG_KEY}.log: the learner's [log] table sets the whole process's log format; \
             remove the table"
        ));
    }
    // An admin call waits for the learner's checkpoint; past the server's
    // own timeout it would end as a bare CANCELLED ("Timeout expired"),
    // saying nothing of the command.
    let (confirm, request) = (
        config.admin.confirm_timeout_ms,
        config.limits.request_timeout_ms,
    );
    if confirm >= request {
        return Err(format!(
            "{CONFIG_KEY}.admin.confirm_timeout_ms: {confirm} ms must stay below \
             {CONFIG_KEY}.limits.request_timeout_ms ({request} ms), or an admin call the \
             learner is slow to confirm ends in the server's generic timeout; lower it or \
             raise that"
        ));
    }
    Ok(())
}

/// Splits a learner's config document into the learner's own table and
/// the embedded server's `[param_server]` config, if any, parsed by its
/// own strict parser and [`check`]ed; its errors name the key under
/// `param_server.`.
pub fn split_config(mut table: toml::Table) -> Result<(toml::Table, Option<Config>), String> {
    let server = match table.remove(CONFIG_KEY) {
        None => None,
        Some(value) => {
            let text = toml::to_string(&value)
                .map_err(|e| format!("{CONFIG_KEY}: cannot be re-encoded: {e}"))?;
            let config = Config::from_toml(&text)
                .map_err(|e| format!("{CONFIG_KEY}.{}: {}", e.key, e.reason))?;
            check(&config)?;
            Some(config)
        }
    };
    Ok((table, server))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use super::*;

    fn split(text: &str) -> Result<(toml::Table, Option<Config>), String> {
        split_config(text.parse().unwrap())
    }

    #[test]
    fn the_server_table_is_split_off_and_checked_on_its_own() {
        let (learner, server) =
            split("[state]\ndir = \"s\"\n[param_server]\nlisten = \"127.0.0.1:0\"\n").unwrap();
        assert_eq!(learner, split("[state]\ndir = \"s\"\n").unwrap().0);
        assert_eq!(server.unwrap().listen, "127.0.0.1:0");
        let (_, none) = split("[state]\ndir = \"s\"\n").unwrap();
        assert!(none.is_none());
        let err = split("[param_server]\nlisten = \"127.0.0.1:0\"\nlisen = 1\n").unwrap_err();
        assert!(
            err.starts_with("param_server.lisen: unknown field"),
            "{err}"
        );
        let err = split("[param_server]\nlisten = \"127.0.0.1:0\"\nwatch_buffer = \"big\"\n")
            .unwrap_err();
        assert!(
            err.starts_with("param_server.watch_buffer: invalid type"),
            "{err}"
        );
    }

    #[test]
    fn a_confirmation_wait_past_the_request_timeout_is_refused() {
        let base = "[param_server]\nlisten = \"127.0.0.1:0\"\n";
        // The default wait (4 s) fits the default request timeout (5 s)…
        split(base).unwrap();
        // … but not one the operator lowered.
        let err = split(&format!(
            "{base}[param_server.limits]\nrequest_timeout_ms = 3000\n"
        ))
        .unwrap_err();
        assert!(
            err.starts_with("param_server.admin.confirm_timeout_ms: 4000 ms"),
            "{err}"
        );
        assert!(err.contains("(3000 ms)"), "{err}");
        let err = split(&format!(
            "{base}[param_server.admin]\nconfirm_timeout_ms = 5000\n"
        ))
        .unwrap_err();
        assert!(err.contains("confirm_timeout_ms: 5000 ms"), "{err}");
        split(&format!(
            "{base}[param_server.admin]\nconfirm_timeout_ms = 2500\n\
             [param_server.limits]\nrequest_timeout_ms = 3000\n"
        ))
        .unwrap();
    }

    const WITH_VERSIONS: &str = "[param_server]\nlisten = \"127.0.0.1:0\"\n[[param_server.versions]]\nname = \"b\"\nmodel = \"beta\"\nreward_label = \"click\"\n";

    #[test]
    fn a_metrics_table_of_the_embedded_server_is_refused() {
        let err = split(
            "[param_server]\nlisten = \"127.0.0.1:0\"\n[param_server.metrics]\nlisten = \"127.0.0.1:0\"\n",
        )
        .unwrap_err();
        assert!(err.contains("param_server.metrics"), "{err}");
        let err = split(
            "[param_server]\nlisten = \"127.0.0.1:0\"\n[param_server.metrics]\nlisten = \"nowhere\"\n",
        )
        .unwrap_err();
        assert!(err.contains("metrics.listen"), "{err}");
    }

    #[test]
    fn versions_in_the_server_table_are_refused() {
        let err = split(WITH_VERSIONS).unwrap_err();
        assert!(err.starts_with("param_server.versions"), "{err}");
        // … by the server's start too, whoever built its config.
        let server = Config::from_toml(
            "listen = \"127.0.0.1:0\"\n[[versions]]\nname = \"b\"\nmodel = \"beta\"\nreward_label = \"click\"\n",
        )
        .unwrap();
        let (_tx, rx) = mpsc::channel(1);
        let err = EmbeddedServer::start(server, &[], rx, CommandInbox::default(), None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("param_server.versions"), "{err}");
    }
}
