//! The Kafka source: protobuf `JoinedSample` records of one topic, read
//! from partitions the learner assigns itself, starting at the offsets of
//! its own checkpoint.
//!
//! Offsets live in the learner's checkpoint, in the same RocksDB write as
//! the state they produced; the broker's consumer group offsets are only
//! informational (committed after each checkpoint, for lag dashboards).
//! Auto commit and the auto offset store are off, and
//! `auto.offset.reset=error`: when a checkpointed offset is no longer on
//! the broker (retention, a broker that lost data), the source fails
//! loudly instead of silently skipping or replaying. Partitions without a
//! checkpointed offset start at the configured [`StartPosition`].
//!
//! A record that does not decode is still a record: it becomes a
//! `Payload::Invalid` for the engine's dead-letter sink, and its offset
//! advances like any other.
//!
//! A reader thread polls and decodes ahead of the engine, with reads
//! aligned in event time across partitions (`read_ahead`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::{CONSUMER_DEFAULTS, KafkaConfig, StartPosition};
use crate::contexts::ContextReturn;
use crate::engine::Payload;
use crate::params::ParamsRecord;
use crate::read_ahead::{Lanes, ReadAhead};

/// Why the Kafka source failed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    /// The client could not be created or a request failed.
    #[error("kafka {what}: {source}")]
    Client {
        /// What was attempted.
        what: String,
        /// The client's error.
        source: KafkaError,
    },
    /// The topic is missing or lacks a configured partition.
    #[error("topic {topic:?}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// What is wrong.
        reason: String,
    },
    /// At start, a checkpointed offset lies outside the records the broker
    /// holds: below its oldest (deleted by retention) or beyond its newest
    /// (the broker lost data).
    #[error(
        "partition {partition}: the checkpoint's next offset {next} is outside the broker's \
         records [{low}, {high}); records were lost — restore from a savepoint or reset the \
         offset explicitly"
    )]
    OffsetOutsideBroker {
        /// The partition.
        partition: u32,
        /// The checkpointed next offset.
        next: u64,
        /// The broker's oldest offset.
        low: i64,
        /// The broker's high watermark.
        high: i64,
    },
    /// A checkpointed offset is not on the broker any more: records were
    /// lost (retention, broker data loss). Never skipped silently.
    #[error(
        "partition {partition}: the checkpointed offset is no longer on the broker ({source}); \
         records were lost — restore from a savepoint or reset the offset explicitly"
    )]
    OffsetLost {
        /// The partition.
        partition: u32,
        /// The client's error.
        source: KafkaError,
    },
    /// The reader thread could not be started.
    #[error("start the kafka reader thread: {0}")]
    ReaderSpawn(std::io::Error),
    /// The reader thread ended while the source was in use (it only ends
    /// when the source is dropped, so this means it panicked).
    #[error("the kafka reader thread stopped unexpectedly")]
    ReaderStopped,
}

/// The consumer settings every Posterior consumer starts from (the
/// learner's sources, its control and fallback readers):
/// [`CONSUMER_DEFAULTS`]; properties set after these override them.
pub fn consumer_config() -> ClientConfig {
    let mut client = ClientConfig::new();
    for (key, value) in CONSUMER_DEFAULTS {
        client.set(key, value);
    }
    client
}

/// The samples consumer's settings: [`consumer_config`], then the
/// configured properties, then the ones the delivery guarantee depends on
/// (which the configuration cannot set: `RESERVED_PROPERTIES`).
fn source_client(config: &KafkaConfig) -> ClientConfig {
    let mut client = consumer_config();
    for (key, value) in &config.properties {
        client.set(key, value);
    }
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "error")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed");
    client
}

/// What one poll returned.
#[derive(Debug)]
pub enum Polled {
    /// A record of `partition` at `offset`.
    Record {
        /// Partition.
        partition: u32,
        /// Offset.
        offset: u64,
        /// The decoded record.
        payload: Payload,
    },
    /// `partition` has delivered everything the broker holds.
    CaughtUp {
        /// Partition.
        partition: u32,
        /// The offset its next record will have, where the client reports
        /// it (an aligned read does): past a transaction's trailing commit
        /// marker, which no record stands for.
        next_offset: Option<u64>,
    },
    /// Nothing within the timeout, or a transient client error (the
    /// client retries by itself; the error is kept for logs and metrics).
    Nothing(Option<KafkaError>),
}

/// A consumer over the learner's partitions of the samples topic.
///
/// A reader thread polls the consumer and decodes ahead of the caller
/// (see `read_ahead`); [`Self::poll`] hands out what it read, in order.
pub struct KafkaSource {
    consumer: Arc<BaseConsumer>,
    reader: ReadAhead,
    /// Where the engine hands the records' contexts back to the reader.
    contexts: ContextReturn,
    topic: String,
    partitions: Vec<u32>,
    partition_count: u32,
    timeout: Duration,
    starts: BTreeMap<u32, u64>,
}

impl KafkaSource {
    /// Connects, resolves the partitions (the configured ones, or all of
    /// the topic's) and assigns them at `next_offsets` (checkpointed) or
    /// the configured start.
    ///
    /// With `align_ms`, no partition is read more than that far (in event
    /// time) ahead of the slowest one that has records to give: the reorder
    /// buffer then holds about the out-of-orderness plus `align_ms` of
    /// event time while the learner catches up, whatever order the broker
    /// hands the partitions over in (see `read_ahead`).
    pub fn open(
        config: &KafkaConfig,
        next_offsets: &BTreeMap<u32, u64>,
        align_ms: Option<i64>,
    ) -> Result<Self, KafkaSourceError> {
        let consumer = create_consumer(&source_client(config), "create consumer")?;
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let partitions = topic_partitions(&consumer, &config.topic, timeout)?;
        let partition_count = partitions.len() as u32;
        let partitions = match &config.partitions {
            None => partitions,
            Some(wanted) => {
                let present: BTreeSet<u32> = partitions.into_iter().collect();
                if let Some(missing) = wanted.iter().find(|p| !present.contains(p)) {
                    return Err(KafkaSourceError::Topic {
                        topic: config.topic.clone(),
                        reason: format!("has no partition {missing} (it has {})", present.len()),
                    });
                }
                let mut wanted = wanted.clone();
                wanted.sort_unstable();
                wanted.dedup();
                wanted
            }
        };
        // A checkpointed offset outside what the broker holds means records
        // were lost (retention) or the broker lost data: refuse to start.
        // A partition without one starts at the configured end, resolved
        // to an offset now: the engine keeps it as the partition's next
        // offset, so a checkpoint holds it even before the partition
        // delivers a record (with `latest`, a restart would otherwise
        // start at the new end and skip what came in between).
        let mut starts = BTreeMap::new();
        for &p in &partitions {
            let (low, high) = watermarks(&consumer, &config.topic, p, timeout)?;
            match next_offsets.get(&p) {
                Some(&next) if (next as i64) < low || (next as i64) > high => {
                    return Err(KafkaSourceError::OffsetOutsideBroker {
                        partition: p,
                        next,
                        low,
                        high,
                    });
                }
                Some(_) => {}
                None => {
                    let start = match config.start {
                        StartPosition::Earliest => low,
                        StartPosition::Latest => high,
                    };
                    starts.insert(p, start.max(0) as u64);
                }
            }
        }
        let mut assignment = TopicPartitionList::new();
        let mut assigned = BTreeMap::new();
        for &p in &partitions {
            let next = next_offsets.get(&p).or_else(|| starts.get(&p));
            let next = next.copied().unwrap_or(0);
            assigned.insert(p, next);
            let offset = Offset::Offset(next as i64);
            assignment
                .add_partition_offset(&config.topic, p as i32, offset)
                .map_err(|source| KafkaSourceError::Client {
                    what: format!("assign partition {p}"),
                    source,
                })?;
        }
        let consumer = Arc::new(consumer);
        let lanes = align_ms
            .map(|align_ms| Lanes::split(&consumer, &config.topic, &partitions, align_ms))
            .transpose()?;
        consumer
            .assign(&assignment)
            .map_err(|source| KafkaSourceError::Client {
                what: "assign partitions".into(),
                source,
            })?;
        let (contexts, supply) = crate::contexts::channel();
        let reader = ReadAhead::start(
            Arc::clone(&consumer),
            config.topic.clone(),
            lanes,
            assigned,
            supply,
        )?;
        Ok(Self {
            consumer,
            reader,
            contexts,
            topic: config.topic.clone(),
            partitions,
            partition_count,
            timeout,
            starts,
        })
    }

    /// Where each partition without a checkpointed offset starts: the
    /// configured start (`earliest`: the oldest record held; `latest`: the
    /// end) as the offset it was when the source opened. The runner hands
    /// them to the engine ([`crate::engine::Engine::start_partition_at`]).
    pub fn start_offsets(&self) -> &BTreeMap<u32, u64> {
        &self.starts
    }

    /// How many partitions the topic has (this source may read fewer).
    pub fn partition_count(&self) -> u32 {
        self.partition_count
    }

    /// The partitions this source reads, ascending.
    pub fn partitions(&self) -> &[u32] {
        &self.partitions
    }

    /// The broker's high watermark (the offset the next produced record
    /// will get) of every assigned partition.
    pub fn high_watermarks(&self) -> Result<BTreeMap<u32, u64>, KafkaSourceError> {
        let mut out = BTreeMap::new();
        for &p in &self.partitions {
            let (_, high) = watermarks(&self.consumer, &self.topic, p, self.timeout)?;
            out.insert(p, high.max(0) as u64);
        }
        Ok(out)
    }

    /// The high watermark of every assigned partition as the consumer
    /// last learnt it from a fetch (no request to the broker, never
    /// blocks); partitions not fetched yet are left out. For metrics.
    pub fn cached_high_watermarks(&self) -> BTreeMap<u32, u64> {
        self.partitions
            .iter()
            .filter_map(|&p| {
                crate::kafka_queue::cached_high_watermark(&self.consumer, &self.topic, p)
                    .map(|high| (p, high))
            })
            .collect()
    }

    /// Waits up to `timeout` for the next record or event.
    pub fn poll(&mut self, timeout: Duration) -> Result<Polled, KafkaSourceError> {
        self.reader.next(timeout)
    }

    /// The end through which an engine hands the contexts of this
    /// source's records back to its reader thread for reuse
    /// ([`crate::engine::Engine::return_contexts_to`]); optional.
    pub fn context_return(&self) -> ContextReturn {
        self.contexts.clone()
    }

    /// True when the next [`KafkaSource::poll`] hands on a record already
    /// read ahead, without waiting.
    pub fn has_buffered(&self) -> bool {
        self.reader.has_buffered()
    }

    /// Keeps exactly `partitions` from being fetched (backpressure), from
    /// the reader's next poll on; an empty list resumes all. Records of
    /// theirs already read ahead (at most a few thousand) still arrive.
    pub fn set_paused(&self, partitions: &[u32]) {
        self.reader.set_paused(partitions);
    }

    /// Commits checkpointed offsets to the consumer group, for lag
    /// monitoring only: the learner never reads them back.
    pub fn commit_informational(
        &self,
        next_offsets: &BTreeMap<u32, u64>,
    ) -> Result<(), KafkaError> {
        let mut list = TopicPartitionList::new();
        for (&p, &next) in next_offsets {
            list.add_partition_offset(&self.topic, p as i32, Offset::Offset(next as i64))?;
        }
        self.consumer.commit(&list, CommitMode::Async)
    }
}

/// The partitions of `topic`, ascending; an error when it does not exist.
pub fn topic_partitions(
    consumer: &BaseConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<u32>, KafkaSourceError> {
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|source| KafkaSourceError::Client {
            what: format!("fetch metadata of topic {topic:?}"),
            source,
        })?;
    let Some(found) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaSourceError::Topic {
            topic: topic.into(),
            reason: "not in the broker's metadata".into(),
        });
    };
    if let Some(err) = found.error() {
        return Err(KafkaSourceError::Topic {
            topic: topic.into(),
            reason: format!("{:?}", RDKafkaErrorCode::from(err)),
        });
    }
    let mut partitions: Vec<u32> = found.partitions().iter().map(|p| p.id() as u32).collect();
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(KafkaSourceError::Topic {
            topic: topic.into(),
            reason: "has no partitions".into(),
        });
    }
    Ok(partitions)
}

pub(crate) fn is_offset_lost(err: &KafkaError) -> bool {
    matches!(
        err.rdkafka_error_code(),
        Some(RDKafkaErrorCode::OffsetOutOfRange | RDKafkaErrorCode::AutoOffsetReset)
    )
}

/// librdkafka names the partition in the message of an offset reset
/// error, not in a field; `u32::MAX` when it cannot be read.
pub(crate) fn lost_partition(err: &KafkaError) -> u32 {
    let text = err.to_string();
    text.split(['[', ']'])
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(u32::MAX)
}

/// The `control` topic (partition 0), read whole by every learner from the
/// offset in its checkpoint: admin commands reach all learners in the
/// same order, and a restarted learner reads again what its checkpoint
/// had not covered (the engine ignores the ids it already applied).
pub struct ControlReader {
    consumer: BaseConsumer,
    topic: String,
    timeout: Duration,
}

impl ControlReader {
    /// Connects and assigns partition 0 of the topic at `next_offset`, or
    /// at its beginning for a fresh state (every command ever issued is
    /// replayed, in order). A checkpointed offset the broker no longer
    /// holds is refused like a samples offset: commands were lost.
    pub fn open(
        config: &crate::config::ControlConfig,
        next_offset: Option<u64>,
    ) -> Result<Self, KafkaSourceError> {
        let consumer = create_consumer(
            consumer_config()
                .set("bootstrap.servers", &config.brokers)
                .set("group.id", "posterior-learner-control")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "error"),
            "create control consumer",
        )?;
        let timeout = Duration::from_millis(config.request_timeout_ms);
        topic_partitions(&consumer, &config.topic, timeout)?;
        let offset = match next_offset {
            Some(next) => {
                let (low, high) = watermarks(&consumer, &config.topic, 0, timeout)?;
                if (next as i64) < low || (next as i64) > high {
                    return Err(KafkaSourceError::Topic {
                        topic: config.topic.clone(),
                        reason: format!(
                            "the checkpoint's next offset {next} is outside the broker's records \
                             [{low}, {high}); admin commands were lost"
                        ),
                    });
                }
                Offset::Offset(next as i64)
            }
            None => Offset::Beginning,
        };
        let mut assignment = TopicPartitionList::new();
        assignment
            .add_partition_offset(&config.topic, 0, offset)
            .and_then(|()| consumer.assign(&assignment))
            .map_err(|source| KafkaSourceError::Client {
                what: "assign the control topic".into(),
                source,
            })?;
        Ok(Self {
            consumer,
            topic: config.topic.clone(),
            timeout,
        })
    }

    /// The records available now, as (offset, value); never waits.
    pub fn poll_ready(&self) -> Result<Vec<(u64, Vec<u8>)>, KafkaSourceError> {
        let mut out = Vec::new();
        while let Some(result) = self.consumer.poll(Duration::ZERO) {
            match result {
                Ok(message) => out.push((
                    message.offset() as u64,
                    message.payload().unwrap_or_default().to_vec(),
                )),
                Err(err) if is_offset_lost(&err) => {
                    return Err(KafkaSourceError::OffsetLost {
                        partition: 0,
                        source: err,
                    });
                }
                Err(KafkaError::PartitionEOF(_)) => break,
                Err(err) => {
                    tracing::warn!("control topic: {err}");
                    break;
                }
            }
        }
        Ok(out)
    }

    /// Every record up to the topic's high watermark as of now: a learner
    /// reads the commands issued before it started before it releases any
    /// sample, so a command stamped ahead of the input is never late.
    pub fn read_to_end(
        &self,
        next_offset: Option<u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>, KafkaSourceError> {
        let (low, high) = watermarks(&self.consumer, &self.topic, 0, self.timeout)?;
        let high = high.max(0) as u64;
        let mut next = control_start(next_offset, low);
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + self.timeout;
        while next < high {
            if std::time::Instant::now() > deadline {
                return Err(KafkaSourceError::Topic {
                    topic: self.topic.clone(),
                    reason: format!(
                        "read only to offset {next} of {high} within {:?}",
                        self.timeout
                    ),
                });
            }
            match self.consumer.poll(Duration::from_millis(100)) {
                Some(Ok(message)) => {
                    next = message.offset() as u64 + 1;
                    out.push((
                        message.offset() as u64,
                        message.payload().unwrap_or_default().to_vec(),
                    ));
                }
                Some(Err(err)) if is_offset_lost(&err) => {
                    return Err(KafkaSourceError::OffsetLost {
                        partition: 0,
                        source: err,
                    });
                }
                Some(Err(_)) | None => {}
            }
        }
        Ok(out)
    }
}

/// The `control` topic's high watermark: the offset its next command will
/// get.
pub fn control_end(config: &crate::config::ControlConfig) -> Result<u64, KafkaSourceError> {
    let consumer = create_consumer(
        consumer_config().set("bootstrap.servers", &config.brokers),
        "create control consumer",
    )?;
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let (_, high) = watermarks(&consumer, &config.topic, 0, timeout)?;
    Ok(high.max(0) as u64)
}

/// A consumer of `client`'s settings; `what` names it in the error.
fn create_consumer(client: &ClientConfig, what: &str) -> Result<BaseConsumer, KafkaSourceError> {
    client.create().map_err(|source| KafkaSourceError::Client {
        what: what.into(),
        source,
    })
}

/// The (low, high) watermarks of `partition` of `topic`, asked of the
/// broker (waiting at most `timeout`).
fn watermarks(
    consumer: &BaseConsumer,
    topic: &str,
    partition: u32,
    timeout: Duration,
) -> Result<(i64, i64), KafkaSourceError> {
    consumer
        .fetch_watermarks(topic, partition as i32, timeout)
        .map_err(|source| KafkaSourceError::Client {
            what: format!("fetch watermarks of partition {partition} of topic {topic:?}"),
            source,
        })
}

/// Where [`ControlReader::read_to_end`] starts: after the last command read,
/// or, for a learner that has read none, at the oldest the broker still
/// holds (the consumer starts there too). Not at 0: once retention has
/// deleted every command, offset 0 never arrives, and waiting for it would
/// keep the learner from starting.
fn control_start(next_offset: Option<u64>, low_watermark: i64) -> u64 {
    next_offset.unwrap_or(low_watermark.max(0) as u64)
}

/// The `params` topic read to its end: the newest published state of
/// every key, which is what the param-servers fed by the topic serve. A
/// [`ServedParams`](crate::fallback::ServedParams) source for the restore
/// of last resort.
pub struct ParamsTopic {
    by_version: std::collections::HashMap<String, BTreeMap<u64, crate::posterior::KeyState>>,
    /// Every announced version, in the order first announced; retired
    /// once any announcement says so.
    versions: Vec<crate::params::AnnouncedVersion>,
}

impl ParamsTopic {
    /// Reads every partition of `topic` from its beginning to the high
    /// watermark it has now, keeping per key the state with the highest
    /// sequence number (a replayed publication repeats the same one).
    pub fn read(brokers: &str, topic: &str, timeout: Duration) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let consumer: BaseConsumer = consumer_config()
            .set("bootstrap.servers", brokers)
            .set("group.id", "posterior-learner-fallback")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()
            .context("create params consumer")?;
        let partitions = topic_partitions(&consumer, topic, timeout)?;
        let mut remaining = BTreeMap::new();
        let mut assignment = TopicPartitionList::new();
        for &p in &partitions {
            let (low, high) = consumer
                .fetch_watermarks(topic, p as i32, timeout)
                .with_context(|| format!("watermarks of {topic}/{p}"))?;
            if high > low {
                remaining.insert(p, high);
                assignment.add_partition_offset(topic, p as i32, Offset::Offset(low))?;
            }
        }
        consumer
            .assign(&assignment)
            .context("assign params topic")?;
        let mut by_version: std::collections::HashMap<
            String,
            BTreeMap<u64, crate::posterior::KeyState>,
        > = std::collections::HashMap::new();
        let mut versions: Vec<crate::params::AnnouncedVersion> = Vec::new();
        let deadline = std::time::Instant::now() + timeout;
        while !remaining.is_empty() {
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "params topic {topic:?} not read to its end within {timeout:?}; left: {remaining:?}"
            );
            let Some(result) = consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = result.context("read params topic")?;
            let p = message.partition() as u32;
            if remaining
                .get(&p)
                .is_some_and(|&high| message.offset() + 1 >= high)
            {
                remaining.remove(&p);
            }
            let record = ParamsRecord::decode(message.key(), message.payload().unwrap_or_default())
                .with_context(|| format!("params record {topic}/{p}@{}", message.offset()))?;
            let update = match record {
                ParamsRecord::Update(update) => update,
                ParamsRecord::Versions(announced) => {
                    for version in announced {
                        match versions
                            .iter_mut()
                            .find(|v| v.spec.name == version.spec.name)
                        {
                            Some(known) => known.retired |= version.retired,
                            None => versions.push(version),
                        }
                    }
                    continue;
                }
            };
            let params = update.params.unwrap_or_default();
            let state = crate::posterior::KeyState::decode(&update.state).map_err(|e| {
                anyhow::anyhow!("params record {topic}/{p}@{}: {e}", message.offset())
            })?;
            let keys = by_version.entry(params.version).or_default();
            match keys.get(&params.doc_id) {
                Some(held) if held.seq > state.seq => {}
                _ => {
                    keys.insert(params.doc_id, state);
                }
            }
        }
        Ok(Self {
            by_version,
            versions,
        })
    }
}

impl crate::fallback::ServedParams for ParamsTopic {
    fn fetch(
        &mut self,
        version: &crate::version::VersionSpec,
    ) -> anyhow::Result<Vec<(u64, crate::posterior::KeyState)>> {
        Ok(self
            .by_version
            .remove(&version.name)
            .map(|keys| keys.into_iter().collect())
            .unwrap_or_default())
    }

    fn versions(&mut self) -> anyhow::Result<Vec<crate::params::AnnouncedVersion>> {
        Ok(self.versions.clone())
    }
}

/// The outcome of the one record [`send_control`] produces.
#[derive(Default, Clone)]
struct OneDelivery(std::sync::Arc<std::sync::Mutex<Option<Result<i64, String>>>>);

impl rdkafka::ClientContext for OneDelivery {}

impl rdkafka::producer::ProducerContext for OneDelivery {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &rdkafka::producer::DeliveryResult<'_>, (): ()) {
        let outcome = match result {
            Ok(message) => Ok(message.offset()),
            Err((err, _)) => Err(err.to_string()),
        };
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(outcome);
        }
    }
}

/// Sends one admin command to the `control` topic (partition 0, keyed by
/// its id) and waits for the broker's acknowledgement; returns its offset.
/// The operator's path until the param-server's admin API issues them.
pub fn send_control(
    config: &crate::config::ControlConfig,
    command: &posterior_proto::v1::ControlCommand,
) -> anyhow::Result<u64> {
    use anyhow::Context as _;
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let outcome = OneDelivery::default();
    let producer: BaseProducer<OneDelivery> = ClientConfig::new()
        .set("bootstrap.servers", &config.brokers)
        .set("acks", "all")
        .set("message.timeout.ms", timeout.as_millis().to_string())
        .create_with_context(outcome.clone())
        .context("create control producer")?;
    let bytes = prost::Message::encode_to_vec(command);
    producer
        .send(
            BaseRecord::to(&config.topic)
                .partition(0)
                .key(&command.command_id)
                .payload(&bytes),
        )
        .map_err(|(err, _)| anyhow::anyhow!("send to {:?}: {err}", config.topic))?;
    producer.flush(timeout).with_context(|| {
        format!(
            "no acknowledgement from {:?} within {timeout:?}",
            config.topic
        )
    })?;
    let delivered = outcome
        .0
        .lock()
        .map_err(|_| anyhow::anyhow!("delivery report lock poisoned"))?
        .take()
        .context("flushed without a delivery report")?;
    let offset =
        delivered.map_err(|err| anyhow::anyhow!("deliver to {:?}: {err}", config.topic))?;
    Ok(offset as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_learner_that_read_no_command_starts_at_the_oldest_one_held() {
        // Every command deleted by retention: nothing before offset 7.
        assert_eq!(control_start(None, 7), 7);
        assert_eq!(control_start(None, 0), 0);
        assert_eq!(control_start(None, -1), 0, "librdkafka's unknown");
        // A learner that read some resumes after them (a gap below the
        // broker's oldest fails loudly when it is read).
        assert_eq!(control_start(Some(3), 7), 3);
    }

    fn kafka_config(properties: &[(&str, &str)]) -> KafkaConfig {
        let toml = format!(
            "brokers = \"127.0.0.1:9\"\n[properties]\n{}",
            properties
                .iter()
                .map(|(k, v)| format!("{k:?} = {v:?}\n"))
                .collect::<String>()
        );
        toml::from_str(&toml).expect("a kafka source config")
    }

    #[test]
    fn consumers_back_off_briefly_when_their_queue_is_full() {
        let backoff = |client: &ClientConfig| {
            client
                .get("fetch.queue.backoff.ms")
                .map(|ms| ms.parse::<u64>().expect("milliseconds"))
        };
        // librdkafka's default is 1000 ms (see `CONSUMER_DEFAULTS`).
        assert!(backoff(&consumer_config()).is_some_and(|ms| ms <= 50));
        let source = source_client(&kafka_config(&[]));
        assert!(backoff(&source).is_some_and(|ms| ms <= 50));
        // librdkafka's default, 500 ms, delays every record of a live
        // stream on the tests' broker (see `CONSUMER_DEFAULTS`).
        let wait = source.get("fetch.wait.max.ms").map(|ms| ms.parse::<u64>());
        assert!(matches!(wait, Some(Ok(ms)) if ms <= 10), "{wait:?}");
        assert_eq!(source.get("auto.offset.reset"), Some("error"));
    }

    #[test]
    fn configured_properties_override_the_defaults_but_not_the_guarantee() {
        let source = source_client(&kafka_config(&[
            ("fetch.queue.backoff.ms", "250"),
            ("fetch.wait.max.ms", "20"),
            ("queued.max.messages.kbytes", "1024"),
            // Refused by `Config::validate`; even unvalidated, it loses.
            ("enable.auto.commit", "true"),
        ]));
        assert_eq!(source.get("fetch.queue.backoff.ms"), Some("250"));
        assert_eq!(source.get("fetch.wait.max.ms"), Some("20"));
        assert_eq!(source.get("queued.max.messages.kbytes"), Some("1024"));
        assert_eq!(source.get("enable.auto.commit"), Some("false"));
        assert_eq!(source.get("bootstrap.servers"), Some("127.0.0.1:9"));
    }
}
