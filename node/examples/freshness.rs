//! Freshness end to end (issue 4): the time from a sample entering the
//! learner to its key's update arriving on a `WatchParams` stream, in a
//! live stream whose event time runs at wall-clock speed — the way a
//! deployment sees it, unlike the quickstart, whose simulated event time
//! runs many times faster than the clock.
//!
//! Each row of the table is one deployment, started for real on a fresh
//! state directory:
//!
//! - `embedded`: the learner (`[source] kind = "channel"`, fed by this
//!   program) and its param-server in one process, as `learner run` with a
//!   `[param_server]` table runs them ([`posterior_node::embedded`]); a
//!   sample enters when it is handed to the learner's channel.
//! - `kafka` (with `--kafka`): a broker (`nisshi`, in memory, on loopback,
//!   started here for the row: one broker for all rows grew slower row by
//!   row), the learner reading the `samples` topic and publishing
//!   to the `params` topic, and a standalone replica (`replica::Replica`,
//!   as the `param-server` binary runs it) following `params` and serving
//!   `WatchParams`; a sample enters when it is handed to the producer that
//!   writes it to `samples`.
//!
//! Samples go at `--rate` per second to `--docs` docs drawn uniformly, in
//! ticks of one millisecond. A sample's event time is the wall clock at
//! entry less a uniform disorder of up to the row's out-of-orderness — the
//! worst disorder that configuration accepts, so no sample is late. The
//! watermark then holds a sample back until one at least
//! out-of-orderness + 1 ms newer has arrived: that wait is the
//! configuration's, not the system's, and each sample's lower bound for
//! it (`event time + out-of-orderness + 1 ms − entry`, at least 0) is
//! reported apart ("beyond the watermark"). Every key is updated per
//! sample (`[batch] max_samples = 1`); the learner checkpoints every 2 s
//! (RocksDB, synced), so each row's measurement sees several checkpoints.
//!
//! Every measured sample is matched to the first update of its doc whose
//! newest event time covers it (an update carries the newest event time
//! among its key's samples, and samples are applied in event-time order),
//! so coalesced samples are measured too. The first second of each row is
//! a warm-up; samples keep going for a second after the measured ones so
//! the watermark releases them all.
//!
//! ```sh
//! cargo run --release -p posterior-node --example freshness
//! cargo run --release -p posterior-node --example freshness -- --kafka
//! ```

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use posterior_client::{Client, ClientConfig, WatchEvent};
use posterior_learner::engine::Payload;
use posterior_learner::partitioning::partition_of;
use posterior_learner::runner::{Controls, KafkaRunMode, run_kafka, run_local_with};
use posterior_learner::sample::{Sample, labels};
use posterior_node::{embedded, load};
use posterior_proto::v1::JoinedSample;
use posterior_tests::broker::{Broker, Storage};
use prost::Message as _;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use rdkafka::ClientConfig as KafkaConfig;
use rdkafka::producer::{BaseProducer, BaseRecord};
use tokio::sync::oneshot;

#[path = "../../param-server/examples/common/loopback_replica.rs"]
mod loopback_replica;

/// The learner binary's allocator.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(about = "Freshness from a sample entering the learner to WatchParams")]
struct Args {
    /// Samples per second.
    #[arg(long, default_value_t = 20_000)]
    rate: u64,
    /// Docs the samples spread over (uniformly).
    #[arg(long, default_value_t = 10_000)]
    docs: u64,
    /// The version's model: `logistic` (diagonal, d = `--dim`) or `beta`.
    #[arg(long, value_enum, default_value_t = ModelArg::Logistic)]
    model: ModelArg,
    /// Context dimension of the logistic version.
    #[arg(long, default_value_t = 32)]
    dim: usize,
    /// Measured seconds per row (after a one-second warm-up).
    #[arg(long, default_value_t = 8)]
    seconds: u64,
    /// The rows' `[order] out_of_orderness_ms` (and the stream's disorder).
    #[arg(long, value_delimiter = ',', default_value = "0,50")]
    out_of_orderness_ms: Vec<u64>,
    /// The rows' `[publish] interval_ms`.
    #[arg(long, value_delimiter = ',', default_value = "2,100")]
    publish_interval_ms: Vec<u64>,
    /// Also run every row through Kafka (starts a broker).
    #[arg(long)]
    kafka: bool,
    /// Only the Kafka rows.
    #[arg(long)]
    kafka_only: bool,
    /// Partitions of the Kafka topics.
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// A librdkafka property of the learner's Kafka source
    /// (`[source.properties]`), `KEY=VALUE`; repeatable.
    #[arg(long)]
    source_property: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ModelArg {
    Logistic,
    Beta,
}

/// The version every sample belongs to.
const VERSION: &str = "fresh";
/// The reward label.
const LABEL: &str = "click";
/// Unmeasured seconds at the start of a row.
const WARM_UP: Duration = Duration::from_secs(1);
/// Unmeasured samples after the measured ones, so the watermark passes
/// them.
const COOL_DOWN: Duration = Duration::from_secs(1);
/// How long the last measured samples may take to show up.
const DRAIN: Duration = Duration::from_secs(20);

/// One deployment of a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Deployment {
    Embedded,
    Kafka,
}

impl Deployment {
    fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::Kafka => "kafka",
        }
    }
}

/// A measured sample waiting for its update.
#[derive(Debug, Clone, Copy)]
struct Entered {
    at: Instant,
    /// The least the watermark makes it wait, µs.
    floor_us: u64,
}

/// Measured samples by doc, then (event time, serial); and what arrived.
#[derive(Debug, Default)]
struct Ledger {
    waiting: HashMap<u64, BTreeMap<(i64, u64), Entered>>,
    /// (entry → update, the part beyond the watermark's least wait), µs.
    seen: Vec<(u64, u64)>,
    waiting_count: usize,
}

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Ledger {
    fn enter(&mut self, doc_id: u64, event_time_ms: i64, serial: u64, entered: Entered) {
        self.waiting
            .entry(doc_id)
            .or_default()
            .insert((event_time_ms, serial), entered);
        self.waiting_count += 1;
    }

    /// An update of `doc_id` covering event times up to `event_time_ms`
    /// arrived at `now`.
    fn arrived(&mut self, doc_id: u64, event_time_ms: i64, now: Instant) {
        let Some(waiting) = self.waiting.get_mut(&doc_id) else {
            return;
        };
        let later = waiting.split_off(&(event_time_ms + 1, 0));
        let covered = std::mem::replace(waiting, later);
        for entered in covered.into_values() {
            let us = now.saturating_duration_since(entered.at).as_micros() as u64;
            self.seen.push((us, us.saturating_sub(entered.floor_us)));
            self.waiting_count -= 1;
        }
    }
}

/// A row's result.
struct Row {
    path: Deployment,
    out_of_orderness_ms: u64,
    publish_interval_ms: u64,
    sent: u64,
    seen: Vec<(u64, u64)>,
    missing: usize,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut paths = Vec::new();
    if !args.kafka_only {
        paths.push(Deployment::Embedded);
    }
    if args.kafka || args.kafka_only {
        paths.push(Deployment::Kafka);
    }
    println!(
        "{} samples/s over {} docs, {}, {} s measured per row",
        args.rate,
        args.docs,
        match args.model {
            ModelArg::Logistic => format!("logistic d = {} (diagonal)", args.dim),
            ModelArg::Beta => "Beta".to_owned(),
        },
        args.seconds
    );
    println!(
        "\n| path | out-of-orderness ms | publish interval ms | samples | p50 ms | p90 ms | p99 ms | max ms | beyond the watermark p50 / p99 ms | not seen |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for &path in &paths {
        for &ooo in &args.out_of_orderness_ms {
            for &interval in &args.publish_interval_ms {
                let dir = tempfile::tempdir().context("temporary directory")?;
                let row = run_row(&args, path, ooo, interval, dir.path())
                    .with_context(|| format!("{} row, {ooo} / {interval} ms", path.name()))?;
                print_row(row);
            }
        }
    }
    Ok(())
}

fn print_row(mut row: Row) {
    let total_quantiles = |seen: &mut Vec<(u64, u64)>| {
        seen.sort_unstable_by_key(|s| s.0);
        [0.5, 0.9, 0.99, 1.0].map(|q| quantile(seen, q).map_or(f64::NAN, |s| s.0 as f64 / 1e3))
    };
    let [p50, p90, p99, max] = total_quantiles(&mut row.seen);
    row.seen.sort_unstable_by_key(|s| s.1);
    let [b50, b99] =
        [0.5, 0.99].map(|q| quantile(&row.seen, q).map_or(f64::NAN, |s| s.1 as f64 / 1e3));
    println!(
        "| {} | {} | {} | {} of {} | {p50:.1} | {p90:.1} | {p99:.1} | {max:.1} | {b50:.1} / {b99:.1} | {} |",
        row.path.name(),
        row.out_of_orderness_ms,
        row.publish_interval_ms,
        row.seen.len(),
        row.sent,
        row.missing
    );
}

/// The `q` quantile of `sorted`.
fn quantile<T: Copy>(sorted: &[T], q: f64) -> Option<T> {
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len().max(1)) - 1;
    sorted.get(i).copied()
}

/// The learner's config of a row (and the embedded server's table).
fn config_text(
    args: &Args,
    path: Deployment,
    ooo: u64,
    interval: u64,
    dir: &Path,
    topics: Option<(&str, &str, &str)>,
) -> String {
    let version = match args.model {
        ModelArg::Logistic => format!(
            "model = \"logistic\"\ndim = {}\ncovariance = \"diagonal\"\nprior_precision = 1.0",
            args.dim
        ),
        ModelArg::Beta => "model = \"beta\"\nalpha0 = 1.0\nbeta0 = 1.0".to_owned(),
    };
    let properties: String = args
        .source_property
        .iter()
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| format!("\"{k}\" = \"{v}\"\n"))
        .collect();
    let source = match (path, topics) {
        (Deployment::Kafka, Some((brokers, samples, params))) => format!(
            "[source]\nkind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{samples}\"\n\n\
             [source.properties]\n{properties}\n\
             [publish.kafka]\nbrokers = \"{brokers}\"\ntopic = \"{params}\"\n"
        ),
        _ => {
            "[source]\nkind = \"channel\"\n\n[param_server]\nlisten = \"127.0.0.1:0\"\n".to_owned()
        }
    };
    format!(
        "[state]\ndir = \"{state}\"\ncheckpoint_every_records = 10000000\ncheckpoint_every_ms = 2000\n\n\
         [order]\nout_of_orderness_ms = {ooo}\n\n\
         [batch]\nmax_samples = 1\n\n\
         [publish]\ninterval_ms = {interval}\n\n\
         [dead_letter]\npath = \"{dead}\"\n\n\
         [[versions]]\nname = \"{VERSION}\"\n{version}\nreward_label = \"{LABEL}\"\n\n\
         {source}",
        state = dir.join("state").display(),
        dead = dir.join("dead-letters.jsonl").display(),
    )
}

/// Where a row's samples go.
enum Feed {
    Channel(SyncSender<Payload>),
    Kafka {
        producer: BaseProducer,
        topic: String,
        partitions: u32,
    },
}

impl Feed {
    fn send(&self, sample: Sample) -> Result<()> {
        match self {
            Self::Channel(sender) => sender
                .send(Payload::Sample(sample))
                .map_err(|_| anyhow::anyhow!("the learner stopped")),
            Self::Kafka {
                producer,
                topic,
                partitions,
            } => {
                let key = sample.doc_id.to_be_bytes();
                let value = JoinedSample::from(&sample).encode_to_vec();
                let mut record = BaseRecord::to(topic)
                    .partition(partition_of(sample.doc_id, *partitions) as i32)
                    .key(&key[..])
                    .payload(&value);
                loop {
                    match producer.send(record) {
                        Ok(()) => return Ok(()),
                        Err((err, back)) => {
                            if !matches!(
                                err,
                                rdkafka::error::KafkaError::MessageProduction(
                                    rdkafka::types::RDKafkaErrorCode::QueueFull
                                )
                            ) {
                                bail!("produce: {err}");
                            }
                            record = back;
                            producer.poll(Duration::from_millis(1));
                        }
                    }
                }
            }
        }
    }

    /// Hands what the producer holds to its thread.
    fn tick(&self) {
        if let Self::Kafka { producer, .. } = self {
            producer.poll(Duration::ZERO);
        }
    }
}

/// Runs one row: starts the deployment, waits for a watcher, sends the
/// stream, collects the latencies, stops everything.
fn run_row(args: &Args, path: Deployment, ooo: u64, interval: u64, dir: &Path) -> Result<Row> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("freshness")
        .enable_all()
        .build()
        .context("start the watcher's runtime")?;
    // Declared first, dropped (killed) last.
    let mut kafka_broker: Option<Broker> = None;
    let controls = Controls::default();
    let (feed, endpoint, learner, stop_serving): (
        Feed,
        String,
        _,
        Box<dyn FnOnce() -> Result<()>>,
    ) = match path {
        Deployment::Embedded => {
            let text = config_text(args, path, ooo, interval, dir, None);
            let (config, server) = load::parse(&text, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
            let server = server.context("the embedded row has a [param_server]")?;
            let (sink, serving) = embedded::serve(&config, server, &controls, None)?;
            let endpoint = format!("http://{}", serving.addr());
            let (records, pushed) = std::sync::mpsc::sync_channel(65_536);
            let learner = {
                let controls = controls.clone();
                std::thread::Builder::new()
                    .name("learner".into())
                    .spawn(move || run_local_with(&config, &controls, Box::new(sink), Some(pushed)))
                    .context("spawn the learner")?
            };
            (
                Feed::Channel(records),
                endpoint,
                learner,
                Box::new(move || serving.stop()),
            )
        }
        Deployment::Kafka => {
            let broker = kafka_broker.insert(Broker::start(Storage::Memory));
            let (samples, params) = ("samples".to_owned(), "params");
            broker.create_topic(&samples, args.partitions);
            broker.create_topic(params, args.partitions);
            let brokers = broker.bootstrap();
            let text = config_text(
                args,
                path,
                ooo,
                interval,
                dir,
                Some((&brokers, &samples, params)),
            );
            let (config, _) = load::parse(&text, &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
            let learner = {
                let controls = controls.clone();
                std::thread::Builder::new()
                    .name("learner".into())
                    .spawn(move || run_kafka(&config, KafkaRunMode::Unbounded, &controls))
                    .context("spawn the learner")?
            };
            let replica =
                loopback_replica::start(&runtime, &brokers, params, &[], Duration::from_secs(60))?;
            let addr = replica.addr.clone();
            let producer: BaseProducer = KafkaConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("queue.buffering.max.messages", "1000000")
                .create()
                .context("create the samples producer")?;
            (
                Feed::Kafka {
                    producer,
                    topic: samples,
                    partitions: args.partitions,
                },
                format!("http://{addr}"),
                learner,
                Box::new(move || replica.stop()),
            )
        }
    };

    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let (ready, is_ready) = oneshot::channel();
    let watcher = runtime.spawn(watch(endpoint, Arc::clone(&ledger), ready));
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(60), is_ready).await })
        .context("no WatchParams snapshot within 60 s")?
        .context("the watcher ended before its snapshot")?;

    let sent = send_stream(args, ooo, &feed, &ledger)?;
    let drained = Instant::now();
    while locked(&ledger).waiting_count > 0 && drained.elapsed() < DRAIN {
        std::thread::sleep(Duration::from_millis(10));
    }
    controls.stop.store(true, Ordering::Release);
    drop(feed);
    let summary = learner
        .join()
        .map_err(|_| anyhow::anyhow!("the learner thread panicked"))?
        .context("the learner")?;
    watcher.abort();
    stop_serving()?;
    anyhow::ensure!(
        summary.counters.dead.is_empty(),
        "dead letters (a sample late?): {:?}",
        summary.counters.dead
    );
    let ledger = std::mem::take(&mut *locked(&ledger));
    Ok(Row {
        path,
        out_of_orderness_ms: ooo,
        publish_interval_ms: interval,
        sent,
        seen: ledger.seen,
        missing: ledger.waiting_count,
    })
}

/// Wall clock, µs since the epoch.
fn wall_us() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Sends the warm-up, the measured samples and the cool-down in 1 ms
/// ticks; returns the measured samples' count.
fn send_stream(args: &Args, ooo: u64, feed: &Feed, ledger: &Mutex<Ledger>) -> Result<u64> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    let per_ms = args.rate as f64 / 1000.0;
    let measured_from = WARM_UP;
    let measured_to = measured_from + Duration::from_secs(args.seconds);
    let end = measured_to + COOL_DOWN;
    let start = Instant::now();
    let mut due = 0.0_f64;
    let mut sent = 0_u64;
    let mut measured = 0_u64;
    let mut tick = 0_u32;
    loop {
        let tick_at = start + Duration::from_millis(1) * tick;
        std::thread::sleep(tick_at.saturating_duration_since(Instant::now()));
        let since = start.elapsed();
        if since >= end {
            break;
        }
        let measuring = since >= measured_from && since < measured_to;
        due += per_ms;
        while (sent as f64) < due {
            let entry_us = wall_us();
            let event_time_ms = entry_us / 1000 - rng.random_range(0..=ooo) as i64;
            let doc_id = rng.random_range(0..args.docs);
            let sample = Sample {
                doc_id,
                version: VERSION.into(),
                event_time_ms,
                context: match args.model {
                    ModelArg::Logistic => {
                        (0..args.dim).map(|_| rng.random_range(-1.0..1.0)).collect()
                    }
                    ModelArg::Beta => Vec::new(),
                },
                labels: labels([(LABEL, if rng.random_bool(0.05) { 1.0 } else { 0.0 })]),
                weight: 1.0,
                sample_id: None,
            };
            if measuring {
                let release_us = (event_time_ms + ooo as i64 + 1) * 1000;
                let entered = Entered {
                    at: Instant::now(),
                    floor_us: (release_us - entry_us).max(0) as u64,
                };
                locked(ledger).enter(doc_id, event_time_ms, sent, entered);
                measured += 1;
            }
            feed.send(sample)?;
            sent += 1;
        }
        feed.tick();
        tick += 1;
    }
    Ok(measured)
}

/// Follows every doc of the version, matching updates to entered
/// samples; resubscribes after a resync or a broken stream.
async fn watch(endpoint: String, ledger: Arc<Mutex<Ledger>>, ready: oneshot::Sender<()>) {
    let mut ready = Some(ready);
    loop {
        let client = match Client::connect(endpoint.clone(), ClientConfig::default()).await {
            Ok(client) => client,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The version is unknown to a replica until the learner's
        // announcement arrives through the topic.
        let Ok(mut stream) = client.watch(VERSION, &[], 0).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Update(params)) => {
                    let now = Instant::now();
                    locked(&ledger).arrived(params.doc_id, params.updated_event_time_ms, now);
                }
                Ok(WatchEvent::SnapshotDone) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(());
                    }
                }
                Ok(WatchEvent::Snapshot(_)) => {}
                Ok(WatchEvent::Resync(reason)) => {
                    tracing::warn!("watcher told to resync: {reason}");
                    break;
                }
                Err(error) => {
                    tracing::warn!(%error, "watch stream broke");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_accounts_for_every_sample_of_its_doc_it_covers_once() {
        let start = Instant::now();
        let at = |ms: u64| start + Duration::from_millis(ms);
        let entered = |ms, floor_us| Entered {
            at: at(ms),
            floor_us,
        };
        let mut ledger = Ledger::default();
        ledger.enter(1, 100, 0, entered(0, 2_000));
        ledger.enter(1, 100, 1, entered(1, 0));
        ledger.enter(1, 105, 2, entered(2, 0));
        ledger.enter(2, 100, 3, entered(3, 0));
        assert_eq!(ledger.waiting_count, 4);

        // Doc 1 up to event time 100: its two samples there, not 105.
        ledger.arrived(1, 100, at(10));
        assert_eq!(ledger.seen, [(10_000, 8_000), (9_000, 9_000)]);
        assert_eq!(ledger.waiting_count, 2);
        // Again, or a doc nobody waits for: nothing more.
        ledger.arrived(1, 100, at(11));
        ledger.arrived(9, 1_000, at(11));
        assert_eq!(ledger.seen.len(), 2);
        // A later update covers the rest of doc 1; doc 2 still waits.
        ledger.arrived(1, 200, at(12));
        assert_eq!(ledger.seen[2], (10_000, 10_000));
        assert_eq!(ledger.waiting_count, 1);
    }
}
