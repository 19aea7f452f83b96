//! A standalone replica for the Kafka examples (`kafka_freshness`, and
//! `node/examples/freshness.rs`, which includes this file): it follows a
//! `params` topic into its own store (`replica::Replica`, as the
//! `param-server` binary runs it), is waited for until ready, and serves
//! gRPC on a loopback port.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use posterior_param_server::config::{FeedConfig, KafkaFeedConfig};
use posterior_param_server::replica::Replica;
use posterior_param_server::{Limits, ParamStore, ServeOptions, serve};
use tokio::sync::oneshot;

/// A ready replica and its server.
pub struct LoopbackReplica {
    /// The follower of the topic.
    pub replica: Replica,
    /// What it serves.
    pub store: Arc<ParamStore>,
    /// `host:port` of its gRPC server.
    pub addr: String,
    shutdown: oneshot::Sender<()>,
}

/// Starts a replica of `topic` on `brokers` with the consumer
/// `properties` (`[feed.kafka.properties]`) on a fresh store, waits at
/// most `ready_within` until it is ready, and serves it on `runtime`.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    brokers: &str,
    topic: &str,
    properties: &[(&str, &str)],
    ready_within: Duration,
) -> Result<LoopbackReplica> {
    let feed = FeedConfig {
        kafka: Some(KafkaFeedConfig {
            brokers: brokers.to_owned(),
            topic: topic.to_owned(),
            request_timeout_ms: 30_000,
            max_held_updates: posterior_param_server::follower::MAX_HELD,
            properties: properties
                .iter()
                .map(|&(k, v)| (k.to_owned(), v.to_owned()))
                .collect::<BTreeMap<_, _>>(),
        }),
        snapshot: None,
    };
    let store = Arc::new(ParamStore::default());
    let replica = Replica::start(&feed, &store, None).context("start the replica")?;
    let readiness = replica.readiness();
    let begun = Instant::now();
    while !readiness.is_ready() {
        anyhow::ensure!(
            begun.elapsed() < ready_within,
            "the replica of {topic} was not ready within {ready_within:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let (shutdown, stop) = oneshot::channel::<()>();
    runtime.spawn(serve(
        listener,
        Arc::clone(&store),
        Limits::default(),
        ServeOptions::default(),
        async {
            let _ = stop.await;
        },
    ));
    Ok(LoopbackReplica {
        replica,
        store,
        addr,
        shutdown,
    })
}

impl LoopbackReplica {
    /// Stops serving and following the topic.
    pub fn stop(self) -> Result<()> {
        let _ = self.shutdown.send(());
        self.replica.stop(&self.store)?;
        Ok(())
    }
}
