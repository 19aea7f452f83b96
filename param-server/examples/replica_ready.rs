//! How long a standalone replica takes to become ready: from the `params`
//! topic alone, then from its local snapshot (same keys, nothing left to
//! read), side by side in one run.
//!
//! Produces a version announcement and `--keys` diagonal d = `--dim`
//! updates (one per key, what a learner's `[publish.kafka]` writes) to
//! `--topic` (which must exist, with any number of partitions), then
//! starts a replica (`replica::Replica`, as the binary does) on a fresh
//! store and times it until ready; stops it, which writes the snapshot
//! (timed); and starts a second replica on another fresh store from that
//! snapshot, timed until ready.
//!
//! Run: `scripts/bench-replica.sh` (starts the tests' broker, creates
//! the topic), or against a broker of your own:
//! `cargo run --release -p posterior-param-server --example replica_ready --
//! --brokers HOST:PORT --topic params-bench --keys 1000000 --dim 32`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use posterior_learner::VersionSpec;
use posterior_learner::params::update_to_wire;
use posterior_param_server::ParamStore;
use posterior_param_server::config::{FeedConfig, KafkaFeedConfig, SnapshotConfig};
use posterior_param_server::replica::Replica;
use prost::Message as _;
use rdkafka::producer::Producer as _;

#[path = "common/kafka_params.rs"]
mod kafka_params;

/// Command-line arguments.
#[derive(Debug, Parser)]
struct Args {
    /// `bootstrap.servers`.
    #[arg(long)]
    brokers: String,
    /// The topic (created beforehand).
    #[arg(long, default_value = "params-bench")]
    topic: String,
    /// Keys produced.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Context dimension of the diagonal version.
    #[arg(long, default_value_t = 32)]
    dim: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Directory of the snapshot (a temporary one when absent).
    #[arg(long)]
    snapshot_dir: Option<std::path::PathBuf>,
    /// Reuse what a previous run produced (the topic holds it already).
    #[arg(long)]
    skip_produce: bool,
}

fn produce(args: &Args, spec: &VersionSpec) -> Result<Duration> {
    let start = Instant::now();
    // Larger batches than the learner's (a bulk load, not a stream).
    let producer = kafka_params::producer(
        &args.brokers,
        &[
            ("linger.ms", "20"),
            ("batch.num.messages", "10000"),
            ("queue.buffering.max.messages", "500000"),
        ],
    )?;
    kafka_params::announce(&producer, &args.topic, args.partitions, spec)?;
    for doc_id in 0..args.keys {
        let key = format!("{}/{doc_id}", spec.name);
        let state = kafka_params::state(doc_id, 1 + doc_id % 7, args.dim)?;
        let value = update_to_wire(&spec.name, doc_id, &state).encode_to_vec();
        kafka_params::send(
            &producer,
            &args.topic,
            (doc_id % u64::from(args.partitions)) as u32,
            key.as_bytes(),
            &value,
        )?;
    }
    producer
        .flush(Duration::from_secs(600))
        .context("flush the producer")?;
    Ok(start.elapsed())
}

/// Starts a replica on a fresh store, waits until ready; returns it, its
/// store and the time taken.
fn until_ready(feed: &FeedConfig) -> Result<(Replica, Arc<ParamStore>, Duration)> {
    let store = Arc::new(ParamStore::default());
    let start = Instant::now();
    let replica = Replica::start(feed, &store, None).context("start the replica")?;
    let readiness = replica.readiness();
    while !readiness.is_ready() {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(3600),
            "not ready in an hour"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok((replica, store, start.elapsed()))
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let spec = kafka_params::spec(args.dim)?;
    let temp = tempfile::tempdir().context("temporary directory")?;
    let dir = args
        .snapshot_dir
        .clone()
        .unwrap_or_else(|| temp.path().to_owned());
    let _ = std::fs::remove_file(posterior_param_server::snapshot::path_in(&dir));
    if !args.skip_produce {
        let took = produce(&args, &spec)?;
        println!(
            "produced {} keys (d = {}) in {:.2} s",
            args.keys,
            args.dim,
            took.as_secs_f64()
        );
    }
    let feed = FeedConfig {
        kafka: Some(KafkaFeedConfig {
            brokers: args.brokers.clone(),
            topic: args.topic.clone(),
            request_timeout_ms: 30_000,
            max_held_updates: posterior_param_server::follower::MAX_HELD,
            properties: BTreeMap::new(),
        }),
        snapshot: Some(SnapshotConfig {
            dir: dir.clone(),
            every_ms: 86_400_000,
        }),
    };
    let (replica, store, from_topic) = until_ready(&feed)?;
    let keys = store.version(&spec.name)?.table().len();
    anyhow::ensure!(keys as u64 == args.keys, "{keys} keys served");
    let start = Instant::now();
    replica.stop(&store).context("stop (writes the snapshot)")?;
    let write = start.elapsed();
    let bytes = std::fs::metadata(posterior_param_server::snapshot::path_in(&dir))?.len();
    drop(store);
    let (replica, store, from_snapshot) = until_ready(&feed)?;
    let again = store.version(&spec.name)?.table().len();
    anyhow::ensure!(again == keys, "{again} keys after the snapshot");
    replica.stop(&store)?;
    let rate = |d: Duration| keys as f64 / d.as_secs_f64();
    println!(
        "keys {keys}, d = {}, snapshot {:.0} MB",
        args.dim,
        bytes as f64 / 1e6
    );
    println!(
        "ready from the topic:    {:8.2} s  ({:.0} keys/s)",
        from_topic.as_secs_f64(),
        rate(from_topic)
    );
    println!(
        "snapshot write (stop):   {:8.2} s  ({:.0} keys/s)",
        write.as_secs_f64(),
        rate(write)
    );
    println!(
        "ready from the snapshot: {:8.2} s  ({:.0} keys/s); {:.1}x faster than the topic",
        from_snapshot.as_secs_f64(),
        rate(from_snapshot),
        from_topic.as_secs_f64() / from_snapshot.as_secs_f64()
    );
    Ok(())
}
