//! Freshness through Kafka: the time from handing a parameter update to a
//! producer with the learner's `params` sink settings to its arrival on a
//! `WatchParams` stream of a standalone replica, side by side for replicas
//! that differ only in their consumer settings, in one run.
//!
//! Announces a diagonal logistic version (d = `--dim`) and one update per
//! watched doc on `--topic` (which must exist), then starts one replica
//! (`replica::Replica`, as the binary does, each on its own store and
//! gRPC server on loopback) per contender:
//!
//! - `posterior`: the replica's own consumer settings
//!   (`config::CONSUMER_DEFAULTS` of the learner, `fetch.wait.max.ms` =
//!   10);
//! - the same with `fetch.wait.max.ms` = 100, the learner's source's
//!   setting before 2026-12-03;
//! - `librdkafka defaults`: the same with `fetch.wait.max.ms` = 500 and
//!   `fetch.queue.backoff.ms` = 1000, librdkafka's defaults.
//!
//! The variants are set through `[feed.kafka.properties]`, as an operator
//! would.
//!
//! Each contender's watcher subscribes to the watched docs. Then updates
//! go at `--rate` per second in batches every `--batch-ms`, each batch
//! sent the way the learner's `KafkaSink::publish` sends a publication
//! (one record per update keyed `version/doc`, the samples topic's
//! partitioning, then one poll of the producer); every update carries a
//! sequence number above all earlier ones, so the watchers match arrivals
//! to send times by it. The learner adds its publish interval
//! (`publish_interval_ms`, 100 ms by default) and the reorder wait in
//! front of this.
//!
//! Run: `scripts/bench-replica.sh freshness` (starts the tests' broker,
//! creates the topic), or against a broker of your own:
//! `cargo run --release -p posterior-param-server --example kafka_freshness
//! -- --brokers HOST:PORT --topic params-fresh`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use posterior_learner::params::update_to_wire;
use posterior_learner::partitioning::partition_of;
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use posterior_proto::v1::watch_params_event::Event;
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rdkafka::producer::Producer as _;
use tokio::sync::oneshot;

#[path = "common/kafka_params.rs"]
mod kafka_params;
#[path = "common/loopback_replica.rs"]
mod loopback_replica;

/// Command-line arguments.
#[derive(Debug, Parser)]
struct Args {
    /// `bootstrap.servers`.
    #[arg(long)]
    brokers: String,
    /// The topic (created beforehand, empty).
    #[arg(long, default_value = "params-fresh")]
    topic: String,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Context dimension of the diagonal version.
    #[arg(long, default_value_t = 32)]
    dim: usize,
    /// Docs watched (and updated).
    #[arg(long, default_value_t = 1000)]
    watched: u64,
    /// Updates per second.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Milliseconds between two batches of updates.
    #[arg(long, default_value_t = 10)]
    batch_ms: u64,
    /// Seconds of updates.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// Send time of every update, by `seq - FIRST_SEQ`.
type SentAt = Arc<Mutex<Vec<Option<Instant>>>>;

/// Sequence number of the first timed update (the initial ones have 1).
const FIRST_SEQ: u64 = 2;

/// A replica on its own store, served over gRPC on loopback.
struct Contender {
    name: &'static str,
    served: loopback_replica::LoopbackReplica,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec = kafka_params::spec(args.dim)?;
    let producer = kafka_params::producer(&args.brokers, &[])?;
    kafka_params::announce(&producer, &args.topic, args.partitions, &spec)?;
    let watched: Vec<u64> = (0..args.watched).collect();
    for &doc_id in &watched {
        let state = kafka_params::state(doc_id, 1, args.dim)?;
        send_update(&producer, &args, &spec.name, doc_id, &state)?;
    }
    producer
        .flush(Duration::from_secs(60))
        .context("flush the initial updates")?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let librdkafka_defaults = [
        ("fetch.wait.max.ms", "500"),
        ("fetch.queue.backoff.ms", "1000"),
    ];
    let contenders = vec![
        start(&runtime, &args, "posterior", &[])?,
        start(
            &runtime,
            &args,
            "fetch.wait.max.ms = 100 (the learner's before 2026-12-03)",
            &[("fetch.wait.max.ms", "100")],
        )?,
        start(&runtime, &args, "librdkafka defaults", &librdkafka_defaults)?,
    ];
    for c in &contenders {
        let served = c.served.store.version(&spec.name)?.table().len() as u64;
        anyhow::ensure!(served == args.watched, "{}: {served} docs served", c.name);
    }

    let total = args.rate * args.seconds;
    let sent_at: SentAt = Arc::new(Mutex::new(vec![None; total as usize]));
    let mut watchers = Vec::new();
    for c in &contenders {
        let (ready, is_ready) = oneshot::channel();
        watchers.push(runtime.spawn(watch(
            c.served.addr.clone(),
            spec.name.clone(),
            watched.clone(),
            total,
            Arc::clone(&sent_at),
            ready,
        )));
        runtime
            .block_on(is_ready)
            .with_context(|| format!("{}: the watcher ended before its snapshot", c.name))?;
    }

    let per_batch = (args.rate * args.batch_ms / 1000).max(1);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let start = Instant::now();
    let mut k = 0;
    let mut batches = 0_u32;
    while k < total {
        let due = start + Duration::from_millis(args.batch_ms) * batches;
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let end = (k + per_batch).min(total);
        let batch = (k..end)
            .map(|k| {
                let doc_id = watched[rng.random_range(0..watched.len())];
                kafka_params::state(doc_id, FIRST_SEQ + k, args.dim).map(|s| (doc_id, s))
            })
            .collect::<Result<Vec<_>>>()?;
        let now = Instant::now();
        sent_at.lock().expect("not poisoned")[k as usize..end as usize].fill(Some(now));
        for (doc_id, state) in &batch {
            send_update(&producer, &args, &spec.name, *doc_id, state)?;
        }
        producer.poll(Duration::ZERO);
        k = end;
        batches += 1;
    }
    producer.flush(Duration::from_secs(60))?;

    println!(
        "{} updates in {:.1} s ({} per batch every {} ms) to {} docs, d = {}, {} partitions",
        total,
        start.elapsed().as_secs_f64(),
        per_batch,
        args.batch_ms,
        args.watched,
        args.dim,
        args.partitions
    );
    println!(
        "\n| replica consumer | updates arrived | p50 ms | p90 ms | p99 ms | max ms |\n|---|---:|---:|---:|---:|---:|"
    );
    for (c, watcher) in contenders.into_iter().zip(watchers) {
        let mut latencies = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(30), watcher)
                .await
                .with_context(|| format!("{}: updates missing after 30 s", c.name))
        })???;
        latencies.sort_unstable();
        let [p50, p90, p99, max] = [0.5, 0.9, 0.99, 1.0].map(|q| quantile_ms(&latencies, q));
        println!(
            "| {} | {} | {p50:.1} | {p90:.1} | {p99:.1} | {max:.1} |",
            c.name,
            latencies.len()
        );
        c.served.stop()?;
    }
    Ok(())
}

/// One update as `KafkaSink::publish` sends it.
fn send_update(
    producer: &rdkafka::producer::BaseProducer,
    args: &Args,
    version: &str,
    doc_id: u64,
    state: &posterior_learner::KeyState,
) -> Result<()> {
    let key = format!("{version}/{doc_id}");
    let value = update_to_wire(version, doc_id, state).encode_to_vec();
    kafka_params::send(
        producer,
        &args.topic,
        partition_of(doc_id, args.partitions),
        key.as_bytes(),
        &value,
    )
}

/// Starts a replica with `properties` (see `loopback_replica::start`).
fn start(
    runtime: &tokio::runtime::Runtime,
    args: &Args,
    name: &'static str,
    properties: &[(&str, &str)],
) -> Result<Contender> {
    let served = loopback_replica::start(
        runtime,
        &args.brokers,
        &args.topic,
        properties,
        Duration::from_secs(120),
    )
    .with_context(|| format!("{name}: start"))?;
    Ok(Contender { name, served })
}

/// Follows `doc_ids` until `total` timed updates arrived; returns their
/// delays since sending, in µs.
async fn watch(
    addr: String,
    version: String,
    doc_ids: Vec<u64>,
    total: u64,
    sent_at: SentAt,
    ready: oneshot::Sender<()>,
) -> Result<Vec<u64>> {
    let mut client = ParamServiceClient::connect(format!("http://{addr}")).await?;
    let request = v1::WatchParamsRequest {
        version,
        doc_ids,
        from_seq: FIRST_SEQ - 1,
    };
    let mut stream = client.watch_params(request).await?.into_inner();
    let mut ready = Some(ready);
    let mut latencies = Vec::with_capacity(total as usize);
    while (latencies.len() as u64) < total {
        let Some(event) = stream.message().await? else {
            bail!("the watch stream ended");
        };
        match event.event {
            Some(Event::SnapshotDone(_)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Some(Event::Update(params)) => {
                let arrived = Instant::now();
                let Some(index) = params.seq.checked_sub(FIRST_SEQ) else {
                    continue; // an initial update, not timed
                };
                let sent = sent_at.lock().expect("not poisoned")[index as usize]
                    .context("an update arrived before it was sent")?;
                latencies.push((arrived - sent).as_micros() as u64);
            }
            Some(Event::Resync(reason)) => bail!("watcher told to resync: {reason}"),
            Some(Event::Snapshot(_)) | None => {}
        }
    }
    Ok(latencies)
}

/// The `q` quantile of `sorted` (µs, ascending), in ms.
fn quantile_ms(sorted: &[u64], q: f64) -> f64 {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).map_or(f64::NAN, |&v| v as f64 / 1000.0)
}
