//! A standalone replica fed by the learner's Kafka `params` topic.
//!
//! At start: the local snapshot (`[feed.snapshot]`), when there is one and
//! it fits, is loaded and checked; the replica assigns itself every
//! partition of the topic (no consumer group: every replica reads the
//! whole topic), resuming at the snapshot's offsets or at the beginning,
//! and notes each partition's high watermark. Until it has read up to
//! those watermarks it is not ready (see [`Readiness`]); then it follows
//! the topic until shutdown.
//!
//! One thread polls the consumer and applies records through a
//! [`Follower`]; every `every_ms` it hands its next offsets to a snapshot
//! thread, which scans the store and writes the file (skipped while the
//! previous one is still being written). At shutdown the feed stops and a
//! last snapshot is written with its final offsets.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{FeedConfig, KafkaFeedConfig, SnapshotConfig};
use crate::feed::FeedStats;
use crate::follower::Follower;
use crate::metrics::ServerMetrics;
use crate::readiness::Readiness;
use crate::snapshot::{self, Snapshot, SnapshotError};
use crate::store::ParamStore;

/// How long one poll of the consumer waits; also the longest a stop
/// request waits for the feed thread.
const POLL_TIMEOUT: Duration = Duration::from_millis(100);
/// Least time between two logs of a transient consumer error.
const ERROR_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// How often the feed's counts reach the metrics (not per record: a
/// catching-up replica applies hundreds of thousands a second).
const METRICS_INTERVAL: Duration = Duration::from_millis(100);

/// Why a replica could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    /// The consumer could not be created or a request at start failed.
    #[error("topic {topic:?}: {what}: {source}")]
    Kafka {
        /// The topic.
        topic: String,
        /// What was attempted.
        what: String,
        /// The client's error.
        source: Box<KafkaError>,
    },
    /// The topic is missing or has no partitions.
    #[error("topic {topic:?}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// A thread could not be started or panicked.
    #[error("replica thread: {0}")]
    Thread(String),
    /// The last snapshot could not be written.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// A running replica feed.
pub struct Replica {
    readiness: Readiness,
    stop: Arc<AtomicBool>,
    feed: Option<JoinHandle<Follower>>,
    snapshots: Option<Snapshots>,
    topic: String,
}

struct Snapshots {
    config: SnapshotConfig,
    requests: Option<SyncSender<BTreeMap<u32, u64>>>,
    worker: Option<JoinHandle<()>>,
}

impl Replica {
    /// Loads the snapshot (if configured and sound), connects, assigns
    /// every partition and starts following the topic into `store`, which
    /// serves its configured versions and nothing else yet. With
    /// `metrics`, what the feed applies is counted in
    /// `posterior_param_server_feed_updates_total`.
    pub fn start(
        config: &FeedConfig,
        store: &Arc<ParamStore>,
        metrics: Option<Arc<ServerMetrics>>,
    ) -> Result<Self, ReplicaError> {
        let started = Instant::now();
        let kafka = config
            .kafka
            .as_ref()
            .ok_or_else(|| ReplicaError::Thread("no [feed.kafka] table".into()))?;
        let topic = kafka.topic.clone();
        let snapshot = config.snapshot.as_ref().and_then(|s| loaded(s, &topic));
        let consumer = consumer(kafka)?;
        let timeout = Duration::from_millis(kafka.request_timeout_ms);
        let watermarks = watermarks(&consumer, &topic, timeout)?;
        let snapshot = snapshot.filter(|s| fits(s, &watermarks));
        let mut offsets = BTreeMap::new();
        if let Some(snapshot) = snapshot {
            let (path, keys) = (snapshot.path.clone(), snapshot.keys());
            let next = snapshot.next_offsets.clone();
            match snapshot.install(store) {
                Ok(()) => {
                    tracing::info!(path = %path.display(), keys, ?next, "snapshot loaded");
                    offsets = next;
                }
                Err(error) => tracing::warn!(%error, "snapshot ignored: rebuilding from the topic"),
            }
        }
        let mut assignment = TopicPartitionList::new();
        let mut start_offsets = BTreeMap::new();
        let mut highs = BTreeMap::new();
        for (&p, &(low, high)) in &watermarks {
            let next = offsets.get(&p).copied().unwrap_or(low).max(low);
            start_offsets.insert(p, next);
            highs.insert(p, high);
            assignment
                .add_partition_offset(&topic, p as i32, Offset::Offset(next as i64))
                .map_err(kafka_error(&topic, format!("assign partition {p}")))?;
        }
        consumer
            .assign(&assignment)
            .map_err(kafka_error(&topic, "assign the partitions".into()))?;
        tracing::info!(%topic, start = ?start_offsets, high = ?highs, "following the params topic");
        let readiness = Readiness::not_ready();
        let follower = Follower::with_hold(
            Arc::clone(store),
            start_offsets,
            &highs,
            readiness.clone(),
            started,
            kafka.max_held_updates,
        );
        let stop = Arc::new(AtomicBool::new(false));
        let snapshots = config
            .snapshot
            .clone()
            .map(|c| Snapshots::start(c, &topic, store))
            .transpose()?;
        let requests = snapshots.as_ref().and_then(|s| {
            s.requests
                .clone()
                .map(|tx| (tx, Duration::from_millis(s.config.every_ms)))
        });
        let feed = std::thread::Builder::new()
            .name("params-feed".into())
            .spawn({
                let stop = Arc::clone(&stop);
                let topic = topic.clone();
                let meter = FeedMeter::new(metrics);
                move || follow(consumer, follower, &topic, timeout, &stop, requests, meter)
            })
            .map_err(|e| ReplicaError::Thread(format!("spawn the feed: {e}")))?;
        Ok(Self {
            readiness,
            stop,
            feed: Some(feed),
            snapshots,
            topic,
        })
    }

    /// Turns ready once the replica has caught up.
    pub fn readiness(&self) -> Readiness {
        self.readiness.clone()
    }

    /// Stops following the topic and writes the last snapshot (when
    /// configured); returns what the feed applied.
    pub fn stop(mut self, store: &ParamStore) -> Result<FeedStats, ReplicaError> {
        self.stop.store(true, Ordering::Release);
        let follower = self
            .feed
            .take()
            .expect("joined once, here")
            .join()
            .map_err(|_| ReplicaError::Thread("the feed thread panicked".into()))?;
        let stats = follower.stats();
        tracing::info!(
            records = follower.records(),
            applied = stats.applied,
            stale = stats.stale,
            rejected = stats.rejected,
            "params feed stopped"
        );
        if let Some(mut snapshots) = self.snapshots.take() {
            snapshots.finish();
            let written = snapshot::write(
                &snapshots.config.dir,
                &self.topic,
                &follower.next_offsets(),
                store,
            )?;
            log_written(&written);
        }
        Ok(stats)
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

impl Snapshots {
    fn start(
        config: SnapshotConfig,
        topic: &str,
        store: &Arc<ParamStore>,
    ) -> Result<Self, ReplicaError> {
        // Rendezvous: a request is taken only while the worker is idle.
        let (requests, received) = std::sync::mpsc::sync_channel(0);
        let worker = std::thread::Builder::new()
            .name("params-snapshot".into())
            .spawn({
                let (dir, topic, store) = (config.dir.clone(), topic.to_owned(), Arc::clone(store));
                move || write_on_request(&received, &dir, &topic, &store)
            })
            .map_err(|e| ReplicaError::Thread(format!("spawn the snapshot writer: {e}")))?;
        Ok(Self {
            config,
            requests: Some(requests),
            worker: Some(worker),
        })
    }

    /// Lets the worker finish the snapshot it is writing, if any.
    fn finish(&mut self) {
        self.requests = None;
        if let Some(worker) = self.worker.take()
            && worker.join().is_err()
        {
            tracing::error!("the snapshot thread panicked");
        }
    }
}

fn write_on_request(
    requests: &Receiver<BTreeMap<u32, u64>>,
    dir: &std::path::Path,
    topic: &str,
    store: &ParamStore,
) {
    while let Ok(offsets) = requests.recv() {
        match snapshot::write(dir, topic, &offsets, store) {
            Ok(written) => log_written(&written),
            // The previous snapshot stays; the next attempt may succeed.
            Err(error) => tracing::error!(%error, "snapshot not written"),
        }
    }
}

fn log_written(written: &snapshot::WriteStats) {
    tracing::info!(
        versions = written.versions,
        keys = written.keys,
        bytes = written.bytes,
        elapsed_ms = written.elapsed.as_millis() as u64,
        "snapshot written"
    );
}

/// The feed thread: polls until `stop`, asking for a snapshot every
/// period (when a snapshot thread exists).
fn follow(
    consumer: BaseConsumer,
    mut follower: Follower,
    topic: &str,
    timeout: Duration,
    stop: &AtomicBool,
    snapshots: Option<(SyncSender<BTreeMap<u32, u64>>, Duration)>,
    mut meter: FeedMeter,
) -> Follower {
    let mut last_snapshot = Instant::now();
    let mut last_error_log: Option<Instant> = None;
    while !stop.load(Ordering::Acquire) {
        match consumer.poll(POLL_TIMEOUT) {
            Some(Ok(message)) => follower.record(
                message.partition() as u32,
                message.offset() as u64,
                message.key(),
                message.payload(),
            ),
            Some(Err(KafkaError::PartitionEOF(p))) => follower.end_of_partition(p as u32),
            // Transient (the client retries), logged at most every interval.
            Some(Err(error))
                if last_error_log.is_none_or(|t| t.elapsed() >= ERROR_LOG_INTERVAL) =>
            {
                last_error_log = Some(Instant::now());
                log_consumer_error(topic, &error);
            }
            Some(Err(_)) | None => {}
        }
        // Partitions whose updates did not fit the hold, read again now
        // that their versions are known (the seek drops what was fetched
        // past it).
        for (partition, from) in follower.take_rewind() {
            let seek = consumer.seek(
                topic,
                partition as i32,
                Offset::Offset(from as i64),
                timeout,
            );
            if let Err(error) = seek {
                tracing::error!(
                    %topic,
                    partition,
                    from,
                    %error,
                    "cannot read again the updates the hold rejected: serving without them \
                     until a restart"
                );
                follower.rewind_failed(partition, from);
            }
        }
        meter.tick(follower.stats(), false);
        if let Some((requests, every)) = &snapshots
            && last_snapshot.elapsed() >= *every
        {
            match requests.try_send(follower.next_offsets()) {
                Ok(()) => last_snapshot = Instant::now(),
                Err(TrySendError::Full(_)) => {} // still writing the last one
                Err(TrySendError::Disconnected(_)) => {
                    tracing::error!("the snapshot thread is gone; no more snapshots");
                    last_snapshot = Instant::now() + Duration::from_secs(86_400 * 365);
                }
            }
        }
    }
    meter.tick(follower.stats(), true);
    follower
}

/// Copies the feed's counts into the metrics every
/// [`METRICS_INTERVAL`].
struct FeedMeter {
    metrics: Option<Arc<ServerMetrics>>,
    counted: FeedStats,
    at: Instant,
}

impl FeedMeter {
    fn new(metrics: Option<Arc<ServerMetrics>>) -> Self {
        Self {
            metrics,
            counted: FeedStats::default(),
            at: Instant::now(),
        }
    }

    /// Counts what `now` adds, if the interval is over or `force`.
    fn tick(&mut self, now: FeedStats, force: bool) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        if force || self.at.elapsed() >= METRICS_INTERVAL {
            metrics.count_feed(&self.counted, &now);
            self.counted = now;
            self.at = Instant::now();
        }
    }
}

fn log_consumer_error(topic: &str, error: &KafkaError) {
    let lost = matches!(
        error.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
    );
    if lost {
        tracing::error!(
            %topic,
            %error,
            "params records were deleted before this replica read them; resuming at the oldest"
        );
    } else {
        tracing::warn!(%topic, %error, "params consumer error; the client retries");
    }
}

fn loaded(config: &SnapshotConfig, topic: &str) -> Option<Snapshot> {
    let start = Instant::now();
    match snapshot::load(&config.dir, topic) {
        Ok(Some(snapshot)) => {
            tracing::info!(
                keys = snapshot.keys(),
                elapsed_ms = start.elapsed().as_millis() as u64,
                "snapshot read"
            );
            Some(snapshot)
        }
        Ok(None) => {
            tracing::info!(dir = %config.dir.display(), "no snapshot: reading the topic from its start");
            None
        }
        Err(error) => {
            tracing::warn!(%error, "snapshot ignored: rebuilding from the topic");
            None
        }
    }
}

/// Whether the snapshot's offsets fit the topic as it is: every partition
/// present, no offset beyond the high watermark (that would be another
/// incarnation of the topic). An offset below the oldest record only
/// means records were deleted meanwhile: the feed resumes at the oldest.
fn fits(snapshot: &Snapshot, watermarks: &BTreeMap<u32, (u64, u64)>) -> bool {
    for (&p, &next) in &snapshot.next_offsets {
        let why = match watermarks.get(&p) {
            None => format!("partition {p} is not in the topic"),
            Some(&(_, high)) if next > high => {
                format!("partition {p}: its next offset {next} is beyond the topic's end {high}")
            }
            Some(&(low, _)) => {
                if next < low {
                    tracing::warn!(
                        partition = p,
                        next,
                        low,
                        "records after the snapshot were deleted from the topic"
                    );
                }
                continue;
            }
        };
        tracing::warn!(path = %snapshot.path.display(), reason = %why, "snapshot ignored: rebuilding from the topic");
        return false;
    }
    true
}

fn consumer(config: &KafkaFeedConfig) -> Result<BaseConsumer, ReplicaError> {
    client_config(config)
        .create()
        .map_err(kafka_error(&config.topic, "create the consumer".into()))
}

/// The replica consumer's settings: the learner's consumer defaults
/// (`fetch.queue.backoff.ms`: with librdkafka's 1 s a replica applying a
/// full queue waited a second per refill; `fetch.wait.max.ms`: on the
/// tests' broker, with updates flowing, the delay from publish to a
/// replica's `WatchParams` stream grew with it, BENCHMARKS.md "Freshness
/// through Kafka"), the configured properties, then what the replica's
/// reading depends on.
fn client_config(config: &KafkaFeedConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in posterior_learner::config::CONSUMER_DEFAULTS {
        client.set(key, value);
    }
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        // Required by the client; no group is joined (partitions are
        // assigned, offsets live in the snapshot, nothing is committed).
        .set("group.id", "posterior-param-server")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true");
    client
}

/// (oldest offset, high watermark) of every partition of `topic`.
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<u32, (u64, u64)>, ReplicaError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(kafka_error(topic, "fetch metadata".into()))?;
    let missing = |reason: String| ReplicaError::Topic {
        topic: topic.to_owned(),
        reason,
    };
    let found = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .ok_or_else(|| missing("not in the broker's metadata".into()))?;
    if let Some(error) = found.error() {
        return Err(missing(format!("{:?}", RDKafkaErrorCode::from(error))));
    }
    if found.partitions().is_empty() {
        return Err(missing("has no partitions".into()));
    }
    let mut out = BTreeMap::new();
    for partition in found.partitions() {
        let p = partition.id();
        let (low, high) = consumer
            .fetch_watermarks(topic, p, timeout)
            .map_err(kafka_error(
                topic,
                format!("fetch watermarks of partition {p}"),
            ))?;
        out.insert(p as u32, (low.max(0) as u64, high.max(0) as u64));
    }
    Ok(out)
}

fn kafka_error(topic: &str, what: String) -> impl FnOnce(KafkaError) -> ReplicaError {
    let topic = topic.to_owned();
    move |source| ReplicaError::Kafka {
        topic,
        what,
        source: Box::new(source),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(properties: &[(&str, &str)]) -> KafkaFeedConfig {
        let toml = format!(
            "brokers = \"127.0.0.1:9\"\n[properties]\n{}",
            properties
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}\n"))
                .collect::<String>()
        );
        toml::from_str(&toml).expect("a kafka feed config")
    }

    #[test]
    fn the_replica_consumer_starts_from_the_learners_defaults() {
        let client = client_config(&feed(&[]));
        for (key, value) in posterior_learner::config::CONSUMER_DEFAULTS {
            assert_eq!(client.get(key), Some(value), "{key}");
        }
        let client = client_config(&feed(&[
            ("fetch.queue.backoff.ms", "500"),
            ("enable.partition.eof", "false"),
        ]));
        assert_eq!(client.get("fetch.queue.backoff.ms"), Some("500"));
        // The replica's readiness depends on end-of-partition events.
        assert_eq!(client.get("enable.partition.eof"), Some("true"));
    }
}
