//! Publishing: the keys an update changed leave the learner as coalesced
//! [`ParamChange`]s — one per key per publish, with the key's latest state
//! and its sequence number (the key's update count, from the input, never
//! a clock). The state is shared with the engine, not copied: an
//! in-process consumer takes it as is, and only the Kafka sink encodes it
//! (as a `ParamUpdate`).
//!
//! After a crash the learner replays from its checkpoint and, being
//! deterministic, republishes identical values under identical sequence
//! numbers; a consumer that keeps the highest sequence number per key
//! therefore never sees a parameter go backwards. Before every checkpoint
//! is written, everything published before it has been delivered (the
//! checkpoint writer waits on [`ParamSink::delivered_later`]): a crash can
//! repeat publications, never lose them.
//!
//! Sinks have bounded queues. When one is full, publishing blocks (the
//! learner stops taking records) and the time blocked is counted — the
//! backpressure is visible, the memory bounded.

use std::time::{Duration, Instant};

use std::sync::Arc;

use prost::Message as _;

use crate::engine::Engine;
use crate::params::{ParamChange, Publication, announcement_to_wire};
use crate::partitioning::partition_of;
use crate::producer::{CheckedProducer, DeliveryBarrier, ProducerError};
use crate::registry::VersionEntry;

/// Why publishing failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The consumer of an in-process channel is gone.
    #[error("the params channel is closed")]
    Closed,
    /// The Kafka producer failed.
    #[error(transparent)]
    Kafka(#[from] ProducerError),
}

/// Counts of a sink, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PublishStats {
    /// Publish calls.
    pub batches: u64,
    /// Updates handed over.
    pub updates: u64,
    /// Microseconds spent blocked on a full queue.
    pub blocked_us: u64,
}

/// Where coalesced updates go.
pub trait ParamSink {
    /// Hands over one batch of coalesced updates (at most one per key),
    /// blocking while the sink's bounded queue is full.
    fn publish(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError>;

    /// Hands over every version (at start and whenever the registry
    /// changes). Everything published after it is delivered after it, so
    /// a consumer learns a version before its first update.
    fn announce(&mut self, versions: &[VersionEntry]) -> Result<(), PublishError>;

    /// Returns once everything handed over is delivered.
    fn flush(&mut self) -> Result<(), PublishError>;

    /// What [`Self::flush`] waits for, to be waited for on another thread
    /// (the checkpoint writer's, before it writes) while this one goes on
    /// publishing. By default it flushes here and returns an empty
    /// [`Delivered`]; a sink whose deliveries take a round trip (Kafka)
    /// hands the wait over.
    fn delivered_later(&mut self) -> Result<Delivered, PublishError> {
        self.flush()?;
        Ok(Delivered::default())
    }

    /// True for a consumer that starts empty with the learner (an embedded
    /// param-server): the learner's first publish then holds every key,
    /// not only those changed since the restore.
    fn wants_every_key_at_start(&self) -> bool {
        false
    }

    /// Hands over every other key at the start of a run, for a consumer
    /// that starts empty ([`Self::wants_every_key_at_start`]): the keys
    /// changed since the restore went through [`Self::publish`] just
    /// before, so each key arrives once. A sink whose consumer does not
    /// start empty (a topic) skips this.
    fn publish_every_key(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        if self.wants_every_key_at_start() {
            self.publish(updates)
        } else {
            Ok(())
        }
    }

    /// Says, once per run, that the start's publications (the versions,
    /// the keys changed since the restore, every other key) are handed
    /// over: a consumer that starts empty holds the learner's whole state
    /// from here on. Nothing to say for a sink whose consumer does not
    /// start empty.
    fn started(&mut self) -> Result<(), PublishError> {
        Ok(())
    }

    /// The sink's counts.
    fn stats(&self) -> PublishStats;

    /// What waits in the sink's bounded queue now (publications in a
    /// channel, records in a producer), for metrics.
    fn queued(&self) -> u64 {
        0
    }
}

/// Deliveries still to wait for: [`ParamSink::delivered_later`].
#[derive(Default)]
#[must_use = "a checkpoint must wait for its deliveries before it is written"]
pub struct Delivered(Vec<DeliveryBarrier>);

impl Delivered {
    /// Returns once everything published before it was taken is
    /// delivered; fails like [`ParamSink::flush`].
    pub fn wait(self) -> Result<(), PublishError> {
        for barrier in self.0 {
            barrier.wait()?;
        }
        Ok(())
    }

    /// Both `self`'s deliveries and `other`'s.
    pub fn and(mut self, other: Self) -> Self {
        self.0.extend(other.0);
        self
    }
}

/// The coalesced updates of every key the engine changed since the last
/// call, in the order the keys first changed.
pub fn take_updates(engine: &mut Engine) -> Vec<ParamChange> {
    // Indexed by version id (ids are dense, in creation order).
    let names: Vec<Arc<str>> = engine
        .registry()
        .entries()
        .iter()
        .map(|e| Arc::from(e.spec.name.as_str()))
        .collect();
    engine.take_changed_as(|key, state| ParamChange {
        version: Arc::clone(&names[key.version.0 as usize]),
        doc_id: key.doc_id,
        state: state.clone(),
    })
}

/// Drops every update: a learner nobody reads from (replays, tests).
#[derive(Debug, Default)]
pub struct NullSink {
    stats: PublishStats,
}

impl ParamSink for NullSink {
    fn publish(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        self.stats.batches += 1;
        self.stats.updates += updates.len() as u64;
        Ok(())
    }

    fn announce(&mut self, _: &[VersionEntry]) -> Result<(), PublishError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        Ok(())
    }

    fn stats(&self) -> PublishStats {
        self.stats
    }
}

/// An in-process bounded channel of [`Publication`]s (update batches and
/// version announcements), read by an embedded param-server.
#[derive(Debug)]
pub struct ChannelSink {
    tx: tokio::sync::mpsc::Sender<Publication>,
    stats: PublishStats,
}

/// A channel sink holding at most `capacity` publications, and its
/// receiver.
pub fn channel(capacity: usize) -> (ChannelSink, tokio::sync::mpsc::Receiver<Publication>) {
    let (tx, rx) = tokio::sync::mpsc::channel(capacity.max(1));
    (
        ChannelSink {
            tx,
            stats: PublishStats::default(),
        },
        rx,
    )
}

impl ChannelSink {
    /// Sends, blocking (and counting the time) while the channel is full.
    fn send(&mut self, publication: Publication) -> Result<(), PublishError> {
        match self.tx.try_send(publication) {
            Ok(()) => Ok(()),
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => Err(PublishError::Closed),
            Err(tokio::sync::mpsc::error::TrySendError::Full(publication)) => {
                let start = Instant::now();
                let sent = self.tx.blocking_send(publication);
                self.stats.blocked_us += start.elapsed().as_micros() as u64;
                sent.map_err(|_| PublishError::Closed)
            }
        }
    }
}

impl ParamSink for ChannelSink {
    fn publish(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        if updates.is_empty() {
            return Ok(());
        }
        self.stats.batches += 1;
        self.stats.updates += updates.len() as u64;
        self.send(Publication::Params(updates))
    }

    fn announce(&mut self, versions: &[VersionEntry]) -> Result<(), PublishError> {
        self.send(Publication::Versions(versions.to_vec()))
    }

    fn wants_every_key_at_start(&self) -> bool {
        true
    }

    fn started(&mut self) -> Result<(), PublishError> {
        self.send(Publication::Current)
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        // The receiver applies batches in order; nothing is in flight
        // outside the queue.
        if self.tx.is_closed() {
            return Err(PublishError::Closed);
        }
        Ok(())
    }

    fn stats(&self) -> PublishStats {
        self.stats
    }

    fn queued(&self) -> u64 {
        (self.tx.max_capacity() - self.tx.capacity()) as u64
    }
}

/// Two sinks fed the same publications in the same order: a learner
/// that serves from an embedded param-server and feeds standalone
/// replicas through the `params` topic too. The start's every-key
/// publish goes only to the sink that starts empty
/// ([`ParamSink::publish_every_key`]), so a restart does not rewrite the
/// whole table to the topic. A failure of either is the tee's failure.
pub struct TeeSink {
    first: Box<dyn ParamSink>,
    second: Box<dyn ParamSink>,
}

impl TeeSink {
    /// Publishes to `first`, then to `second`.
    pub fn new(first: Box<dyn ParamSink>, second: Box<dyn ParamSink>) -> Self {
        Self { first, second }
    }
}

impl ParamSink for TeeSink {
    fn publish(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        // The states are shared: a copy of the list costs one reference
        // count per update.
        self.first.publish(updates.clone())?;
        self.second.publish(updates)
    }

    fn announce(&mut self, versions: &[VersionEntry]) -> Result<(), PublishError> {
        self.first.announce(versions)?;
        self.second.announce(versions)
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        self.first.flush()?;
        self.second.flush()
    }

    fn delivered_later(&mut self) -> Result<Delivered, PublishError> {
        Ok(self
            .first
            .delivered_later()?
            .and(self.second.delivered_later()?))
    }

    fn wants_every_key_at_start(&self) -> bool {
        self.first.wants_every_key_at_start() || self.second.wants_every_key_at_start()
    }

    fn publish_every_key(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        self.first.publish_every_key(updates.clone())?;
        self.second.publish_every_key(updates)
    }

    fn started(&mut self) -> Result<(), PublishError> {
        self.first.started()?;
        self.second.started()
    }

    /// The two sinks' counts added up.
    fn stats(&self) -> PublishStats {
        let (a, b) = (self.first.stats(), self.second.stats());
        PublishStats {
            batches: a.batches + b.batches,
            updates: a.updates + b.updates,
            blocked_us: a.blocked_us + b.blocked_us,
        }
    }

    fn queued(&self) -> u64 {
        self.first.queued() + self.second.queued()
    }
}

/// The Kafka `params` topic: key `version/doc_id`, value a protobuf
/// `ParamUpdate`, partition `partitioning::partition_of(doc_id, n)` — the
/// samples topic's rule, so a key's updates stay in order on one
/// partition and the topic can be compacted.
pub struct KafkaSink {
    producer: CheckedProducer,
    stats: PublishStats,
    announcement_key: Vec<u8>,
}

impl KafkaSink {
    /// Connects to `brokers` and reads the partition count of `topic`.
    pub fn open(brokers: &str, topic: &str, flush_timeout: Duration) -> Result<Self, PublishError> {
        Ok(Self {
            producer: CheckedProducer::open(brokers, topic, flush_timeout)?,
            stats: PublishStats::default(),
            announcement_key: crate::params::ANNOUNCEMENT_KEY.to_vec(),
        })
    }

    /// Announces versions under `key`, a learner's own
    /// ([`crate::params::announcement_key`]); a learner of every partition
    /// keeps the default, [`crate::params::ANNOUNCEMENT_KEY`].
    pub fn with_announcement_key(mut self, key: Vec<u8>) -> Self {
        self.announcement_key = key;
        self
    }
}

impl ParamSink for KafkaSink {
    fn publish(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        self.stats.batches += 1;
        self.stats.updates += updates.len() as u64;
        for update in updates {
            let key = format!("{}/{}", update.version, update.doc_id);
            let partition = partition_of(update.doc_id, self.producer.partitions());
            let blocked =
                self.producer
                    .send(partition, key.as_bytes(), &update.to_wire().encode_to_vec())?;
            self.stats.blocked_us += blocked.as_micros() as u64;
        }
        self.producer.poll();
        Ok(())
    }

    /// One record per partition, delivered before this returns: the
    /// updates sent after it cannot overtake it, even on a producer retry.
    fn announce(&mut self, versions: &[VersionEntry]) -> Result<(), PublishError> {
        let value = announcement_to_wire(versions).encode_to_vec();
        for partition in 0..self.producer.partitions() {
            let blocked = self
                .producer
                .send(partition, &self.announcement_key, &value)?;
            self.stats.blocked_us += blocked.as_micros() as u64;
        }
        Ok(self.producer.flush()?)
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        Ok(self.producer.flush()?)
    }

    fn delivered_later(&mut self) -> Result<Delivered, PublishError> {
        Ok(Delivered(vec![self.producer.delivered_later()]))
    }

    fn stats(&self) -> PublishStats {
        self.stats
    }

    fn queued(&self) -> u64 {
        self.producer.in_flight()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posterior::{BetaPrior, KeyState, ModelKind, ModelSpec, SharedState};

    fn update(doc_id: u64, seq: u64) -> ParamChange {
        let spec = ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM));
        ParamChange {
            version: "v".into(),
            doc_id,
            state: SharedState::new(KeyState {
                seq,
                ..KeyState::prior(&spec)
            }),
        }
    }

    #[test]
    fn a_full_channel_blocks_the_publisher_until_the_reader_drains_it() {
        let (mut sink, mut rx) = channel(1);
        sink.publish(vec![update(1, 1)]).unwrap();
        let reader = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            let mut seen = Vec::new();
            while let Some(publication) = rx.blocking_recv() {
                let Publication::Params(batch) = publication else {
                    panic!("only updates were published");
                };
                seen.extend(batch.into_iter().map(|u| u.state.seq));
            }
            seen
        });
        sink.publish(vec![update(1, 2)]).unwrap();
        sink.publish(vec![update(1, 3), update(2, 1)]).unwrap();
        let stats = sink.stats();
        assert!(stats.blocked_us >= 20_000, "{stats:?}");
        assert_eq!((stats.batches, stats.updates), (3, 4));
        drop(sink);
        assert_eq!(reader.join().unwrap(), vec![1, 2, 3, 1]);
    }

    #[test]
    fn a_tee_feeds_both_sinks_in_order_and_every_key_only_to_the_one_starting_empty() {
        let (channel_sink, mut rx) = channel(16);
        let mut tee = TeeSink::new(Box::new(channel_sink), Box::new(NullSink::default()));
        assert!(tee.wants_every_key_at_start());
        tee.publish(vec![update(1, 1)]).unwrap();
        tee.publish_every_key(vec![update(1, 1), update(2, 4)])
            .unwrap();
        tee.publish(vec![update(2, 5)]).unwrap();
        tee.flush().unwrap();
        let mut seen = Vec::new();
        while let Ok(publication) = rx.try_recv() {
            let Publication::Params(batch) = publication else {
                panic!("only updates were published");
            };
            seen.push(
                batch
                    .iter()
                    .map(|u| (u.doc_id, u.state.seq))
                    .collect::<Vec<_>>(),
            );
        }
        assert_eq!(seen, vec![vec![(1, 1)], vec![(1, 1), (2, 4)], vec![(2, 5)]]);
        // The null sink (a topic's stand-in) skipped the every-key batch:
        // 3 batches of 4 updates in the channel, 2 of 2 in the null sink.
        let stats = tee.stats();
        assert_eq!((stats.batches, stats.updates), (5, 6));
        drop(rx);
        assert!(matches!(
            tee.publish(vec![update(3, 1)]),
            Err(PublishError::Closed)
        ));
    }

    #[test]
    fn a_closed_channel_is_an_error_not_a_hang() {
        let (mut sink, rx) = channel(1);
        drop(rx);
        assert!(matches!(
            sink.publish(vec![update(1, 1)]),
            Err(PublishError::Closed)
        ));
        assert!(matches!(sink.flush(), Err(PublishError::Closed)));
    }
}
