//! A Kafka producer that knows whether its records arrived: librdkafka
//! reports each delivery on a background thread, and [`CheckedProducer::flush`]
//! fails when any record it was handed was not delivered. A failure stays:
//! every later flush and barrier fails too, whichever thread looks first,
//! so no checkpoint can cover a lost record (the run ends, and replays
//! from the checkpoint before it). The
//! `params` sink and the dead-letter topic flush it before every checkpoint,
//! so what a checkpoint covers has been delivered.
//!
//! A flush waits for every record in the producer, so the thread that
//! calls it stops producing. [`CheckedProducer::delivered_later`] instead
//! returns a [`DeliveryBarrier`] for the records sent so far, which
//! another thread waits on while this one goes on sending: the
//! checkpoint writer waits for the `params` records a checkpoint covers
//! before it writes, and ingestion does not wait for the broker's
//! acknowledgements (on the tests' broker a flush took about 100 ms, and
//! every checkpoint stalled the samples behind it that long).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// Records sent and not yet reported, by sequence number: `front` is the
/// oldest unreported one, `reported[i]` whether `front + i` was.
#[derive(Debug, Default)]
struct Outstanding {
    front: u64,
    reported: VecDeque<bool>,
}

impl Outstanding {
    /// A sequence number for the next record sent.
    fn sent(&mut self) -> u64 {
        self.reported.push_back(false);
        self.front + self.reported.len() as u64 - 1
    }

    /// Record `seq` was delivered or failed.
    fn reported(&mut self, seq: u64) {
        if let Some(index) = seq.checked_sub(self.front)
            && let Some(slot) = self.reported.get_mut(index as usize)
        {
            *slot = true;
        }
        while self.reported.front() == Some(&true) {
            self.reported.pop_front();
            self.front += 1;
        }
    }

    /// Sequence number of the next record to be sent.
    fn next(&self) -> u64 {
        self.front + self.reported.len() as u64
    }

    /// Every record numbered below `seq` has been reported.
    fn reported_below(&self, seq: u64) -> bool {
        self.front >= seq
    }
}

/// Deliveries reported by librdkafka's background thread: failures, and
/// which records are still out.
#[derive(Debug, Default, Clone)]
struct Deliveries {
    failed: Arc<AtomicU64>,
    last_error: Arc<Mutex<Option<String>>>,
    outstanding: Arc<Mutex<Outstanding>>,
}

impl Deliveries {
    fn outstanding(&self) -> std::sync::MutexGuard<'_, Outstanding> {
        self.outstanding
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The failures so far, with the last error. Not reset by reading:
    /// the ingesting thread's flush and the checkpoint writer's barrier
    /// both see a failure, whichever reads first.
    fn failures(&self) -> Option<(u64, String)> {
        let failed = self.failed.load(Ordering::Acquire);
        (failed > 0).then(|| {
            let last = self
                .last_error
                .lock()
                .ok()
                .and_then(|l| l.clone())
                .unwrap_or_default();
            (failed, last)
        })
    }
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    /// The record's sequence number ([`Outstanding::sent`]).
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        if let Err((err, _)) = result {
            self.failed.fetch_add(1, Ordering::Release);
            if let Ok(mut last) = self.last_error.lock() {
                *last = Some(err.to_string());
            }
        }
        self.outstanding().reported(seq as u64);
    }
}

/// The records a producer had been handed when the barrier was taken;
/// [`Self::wait`] returns once all of them are delivered.
pub struct DeliveryBarrier {
    producer: Arc<BaseProducer<Deliveries>>,
    deliveries: Deliveries,
    below: u64,
    topic: String,
    timeout: Duration,
}

/// How long a [`DeliveryBarrier`] waits for a delivery report at a time
/// (it also returns as soon as one is served).
const BARRIER_POLL: Duration = Duration::from_millis(5);

impl DeliveryBarrier {
    /// Waits until every record sent before the barrier was taken is
    /// delivered (serving delivery reports meanwhile), at most the
    /// producer's flush timeout; fails like [`CheckedProducer::flush`]
    /// when one was not — or when any other record failed meanwhile, as
    /// that flush would.
    pub fn wait(self) -> Result<(), ProducerError> {
        let deadline = Instant::now() + self.timeout;
        while !self.deliveries.outstanding().reported_below(self.below) {
            if Instant::now() >= deadline {
                return Err(ProducerError {
                    topic: self.topic,
                    reason: format!(
                        "records not delivered within {} ms",
                        self.timeout.as_millis()
                    ),
                });
            }
            self.producer.poll(BARRIER_POLL);
        }
        match self.deliveries.failures() {
            Some((failed, last)) => Err(ProducerError {
                topic: self.topic,
                reason: format!("{failed} records were not delivered (last error: {last})"),
            }),
            None => Ok(()),
        }
    }
}

/// A producer to one topic (`acks=all`), with a bounded queue and checked
/// deliveries.
pub struct CheckedProducer {
    /// Shared with the [`DeliveryBarrier`]s, which poll it for reports.
    producer: Arc<BaseProducer<Deliveries>>,
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
            producer: Arc::new(producer),
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
    /// is full, at most the flush timeout (a queue that stays full that
    /// long means the broker is gone: an error, as a checkpoint's wait
    /// for deliveries fails); returns the time spent waiting.
    pub fn send(
        &mut self,
        partition: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<Duration, ProducerError> {
        let seq = self.deliveries.outstanding().sent();
        let mut record = BaseRecord::with_opaque_to(&self.topic, seq as usize)
            .key(key)
            .payload(value)
            .partition(partition as i32);
        let mut blocked = Duration::ZERO;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(blocked),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    if blocked >= self.flush_timeout {
                        self.deliveries.outstanding().reported(seq);
                        return Err(ProducerError {
                            topic: self.topic.clone(),
                            reason: format!(
                                "send {}: the queue stayed full for {} ms (flush_timeout_ms): \
                                 records are not being delivered",
                                String::from_utf8_lossy(key),
                                blocked.as_millis()
                            ),
                        });
                    }
                    // The bounded queue is full: wait for deliveries.
                    let start = Instant::now();
                    self.producer.poll(Duration::from_millis(10));
                    blocked += start.elapsed();
                    record = back;
                }
                Err((err, _)) => {
                    // Never queued: no report will come for it.
                    self.deliveries.outstanding().reported(seq);
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
        match self.deliveries.failures() {
            Some((failed, last)) => Err(error(format!(
                "{failed} records were not delivered (last error: {last})"
            ))),
            None => Ok(()),
        }
    }

    /// A barrier for the records sent so far, to wait on in another
    /// thread while this one goes on sending (see the module's doc).
    pub fn delivered_later(&self) -> DeliveryBarrier {
        DeliveryBarrier {
            producer: Arc::clone(&self.producer),
            deliveries: self.deliveries.clone(),
            below: self.deliveries.outstanding().next(),
            topic: self.topic.clone(),
            timeout: self.flush_timeout,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_delivery_is_seen_by_every_later_check() {
        let deliveries = Deliveries::default();
        assert_eq!(deliveries.failures(), None);
        deliveries.failed.fetch_add(1, Ordering::Release);
        *deliveries.last_error.lock().unwrap() = Some("message timed out".into());
        // The writer's barrier and the ingesting thread's flush each see
        // it: the first to look does not clear it for the other.
        let expected = Some((1, "message timed out".to_owned()));
        assert_eq!(deliveries.clone().failures(), expected);
        assert_eq!(deliveries.failures(), expected);
    }

    #[test]
    fn a_barrier_passes_once_every_earlier_record_is_reported_in_any_order() {
        let mut out = Outstanding::default();
        let seqs: Vec<u64> = (0..4).map(|_| out.sent()).collect();
        assert_eq!(seqs, [0, 1, 2, 3]);
        let barrier = out.next();
        let later = out.sent();
        assert!(!out.reported_below(barrier));
        // Partitions report in their own order.
        for seq in [2, 0, later, 3] {
            out.reported(seq);
            assert!(!out.reported_below(barrier), "record 1 is still out");
        }
        out.reported(1);
        assert!(out.reported_below(barrier));
        assert!(
            out.reported_below(later + 1),
            "the later record was reported too"
        );
        assert_eq!(out.next(), later + 1);
        assert!(out.reported.is_empty());
        // A report twice, or of a number never sent, changes nothing.
        out.reported(1);
        out.reported(99);
        let next = out.sent();
        assert_eq!(next, later + 1);
        assert!(!out.reported_below(next + 1));
    }
}
