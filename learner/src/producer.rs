//! A Kafka producer that knows whether its records arrived: librdkafka
//! reports each delivery on a background thread, and [`CheckedProducer::flush`]
//! fails when any record since the last flush was not delivered. The
//! `params` sink and the dead-letter topic flush it before every checkpoint,
//! so what a checkpoint covers has been delivered.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::DeliveryResult;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};

use crate::config::PRODUCER_SETTINGS;
use crate::kafka::topic_partitions;

/// Records librdkafka may hold in its queue before `send` waits.
const QUEUE_MESSAGES_MAX: &str = "200000";

/// Why producing to a topic failed.
#[derive(Debug, thiserror::Error)]
#[error("topic {topic:?}: {reason}")]
pub struct ProducerError {
    /// The topic.
    pub topic: String,
    /// What failed.
    pub reason: String,
}

/// Delivery failures reported by librdkafka's background thread.
#[derive(Debug, Default, Clone)]
struct Deliveries {
    failed: Arc<AtomicU64>,
    last_error: Arc<std::sync::Mutex<Option<String>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        if let Err((err, _)) = result {
            self.failed.fetch_add(1, Ordering::Relaxed);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(err.to_string());
            }
        }
    }
}

/// A producer to one topic (`acks=all`), with a bounded queue and checked
/// deliveries.
pub struct CheckedProducer {
    producer: BaseProducer<Deliveries>,
    deliveries: Deliveries,
    topic: String,
    partitions: u32,
    flush_timeout: Duration,
}

impl CheckedProducer {
    /// Connects to `brokers` and reads the partition count of `topic`
    /// (waiting at most `flush_timeout`).
    pub fn open(
        brokers: &str,
        topic: &str,
        flush_timeout: Duration,
    ) -> Result<Self, ProducerError> {
        let error = |reason: String| ProducerError {
            topic: topic.to_owned(),
            reason,
        };
        let deliveries = Deliveries::default();
        let mut client = ClientConfig::new();
        for (key, value) in PRODUCER_SETTINGS {
            client.set(key, value);
        }
        let producer: BaseProducer<Deliveries> = client
            .set("bootstrap.servers", brokers)
            .set("queue.buffering.max.messages", QUEUE_MESSAGES_MAX)
            .create_with_context(deliveries.clone())
            .map_err(|e| error(format!("create producer: {e}")))?;
        let probe: rdkafka::consumer::BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .create()
            .map_err(|e| error(format!("create metadata client: {e}")))?;
        let partitions =
            topic_partitions(&probe, topic, flush_timeout).map_err(|e| error(e.to_string()))?;
        Ok(Self {
            producer,
            deliveries,
            topic: topic.to_owned(),
            partitions: partitions.len() as u32,
            flush_timeout,
        })
    }

    /// The topic's partition count.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Queues one record for `partition`, waiting while the bounded queue
    /// is full; returns the time spent waiting.
    pub fn send(
        &mut self,
        partition: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Duration, ProducerError> {
        let mut record = BaseRecord::to(&self.topic)
            .key(key)
            .payload(value)
            .partition(partition as i32);
        let mut blocked = Duration::ZERO;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(blocked),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The bounded queue is full: wait for deliveries.
                    let start = Instant::now();
                    self.producer.poll(Duration::from_millis(10));
                    blocked += start.elapsed();
                    record = back;
                }
                Err((err, _)) => {
                    return Err(ProducerError {
                        topic: self.topic.clone(),
                        reason: format!("send {}: {err}", String::from_utf8_lossy(key)),
                    });
                }
            }
        }
    }

    /// Records handed to the producer and not yet delivered (or failed).
    pub fn in_flight(&self) -> u64 {
        use rdkafka::producer::Producer as _;
        u64::try_from(self.producer.in_flight_count()).unwrap_or(0)
    }

    /// Serves delivery reports without waiting.
    pub fn poll(&self) {
        self.producer.poll(Duration::ZERO);
    }

    /// Returns once every queued record is delivered; fails when any
    /// record since the last flush was not.
    pub fn flush(&mut self) -> Result<(), ProducerError> {
        let error = |reason: String| ProducerError {
            topic: self.topic.clone(),
            reason,
        };
        self.producer
            .flush(self.flush_timeout)
            .map_err(|e| error(format!("flush: {e}")))?;
        let failed = self.deliveries.failed.swap(0, Ordering::Relaxed);
        if failed > 0 {
            let last = self
                .deliveries
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            return Err(error(format!(
                "{failed} records were not delivered (last error: {last})"
            )));
        }
        Ok(())
    }
}
