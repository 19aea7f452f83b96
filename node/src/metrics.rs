//! The learner process's `GET /metrics` endpoint (the `[metrics]` table):
//! the learner's metrics and, with an embedded param-server, the server's
//! on the same registry, so one scrape sees both. It serves from a thread
//! of its own, on a small runtime, off the ingesting thread.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{Context, Result};
use posterior_learner::config::Config;
use posterior_learner::metrics::LearnerMetrics;
use posterior_learner::runner::Controls;
use posterior_param_server::exposition::serve_metrics;
use prometheus_client::registry::Registry;
use tokio::sync::oneshot;

/// The registry of a run with `[metrics]`, the learner's metrics
/// registered on it and handed to the run through `controls`; `None`
/// without the table.
pub fn learner_registry(config: &Config, controls: &mut Controls) -> Option<Registry> {
    config.metrics.as_ref()?;
    let mut registry = Registry::default();
    controls.metrics = Some(Arc::new(LearnerMetrics::register(&mut registry)));
    Some(registry)
}

/// A running `/metrics` endpoint.
pub struct MetricsEndpoint {
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl MetricsEndpoint {
    /// Binds `config`'s `[metrics] listen` (before returning, so a taken
    /// port fails the start) and serves `registry` until stopped.
    pub fn start(config: &Config, registry: Registry) -> Result<Option<Self>> {
        let Some(metrics) = &config.metrics else {
            return Ok(None);
        };
        let addr = metrics
            .listen_addr()
            .map_err(anyhow::Error::msg)
            .context("metrics.listen")?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the metrics runtime")?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("bind metrics.listen {addr}"))?;
        let addr = listener.local_addr().context("local address")?;
        let (shutdown, stopped) = oneshot::channel::<()>();
        let registry = Arc::new(registry);
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                runtime.block_on(serve_metrics(listener, registry, async {
                    // A dropped sender stops the endpoint too.
                    let _ = stopped.await;
                }));
            })
            .context("spawn the metrics thread")?;
        Ok(Some(Self {
            addr,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }))
    }

    /// The address it serves on (the bound port when the config said 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsEndpoint {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the metrics thread panicked");
        }
    }
}
