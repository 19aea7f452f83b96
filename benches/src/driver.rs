//! Drives an engine the way the learner's runner does, minus the store:
//! ingest every record, publish the changed keys every
//! `publish_interval_ms` (the config's: 2 ms in process by default) of
//! timed pipeline time, and
//! every `checkpoint_every_records` (the bench's default 100 000; the
//! learner's is 1 000 000) records drain the
//! engine's change tracking with `checkpoint_delta_into` (a runner's
//! ingesting thread's part of a checkpoint) *outside* the timed interval — so the engine's dirty sets stay the size they have in a
//! checkpointing learner, while the checkpoint's own cost is left to the
//! checkpoint bench.
//!
//! The publish interval is checked every [`PUBLISH_CHECK_EVERY`] records,
//! so the bench does not read the clock per sample.

use std::thread::JoinHandle;
use std::time::Duration;

use posterior_learner::engine::{Engine, Payload, Write};
use posterior_learner::params::Publication;
use posterior_learner::publish::{self, NullSink, ParamSink, take_updates};

use crate::machine::Stopwatch;

/// Records between two looks at the publish interval.
pub const PUBLISH_CHECK_EVERY: u64 = 1024;
/// Batches the channel sink holds before the publisher blocks.
const CHANNEL_CAPACITY: usize = 16;

/// Where published updates go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    /// `publish::NullSink`: the updates are built, handed over and dropped
    /// on the engine's thread.
    Null,
    /// `publish::channel`, drained (and dropped) by a second thread.
    Channel,
}

impl SinkKind {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            SinkKind::Null => "NullSink",
            SinkKind::Channel => "channel + reader thread",
        }
    }
}

/// An engine with its sink, stopwatch and counts.
pub struct Driver {
    /// The engine.
    pub engine: Engine,
    sink: Box<dyn ParamSink>,
    reader: Option<JoinHandle<u64>>,
    /// Timed pipeline time (ingest + publish).
    pub watch: Stopwatch,
    publish_every: Duration,
    last_publish: Duration,
    drain_every: u64,
    /// Records ingested.
    pub records: u64,
    /// Updates handed to the sink.
    pub published: u64,
    /// Publish calls with at least one update.
    pub publishes: u64,
    /// Wall time of the change-tracking drains (outside the timed
    /// interval; a runner spends it on its ingesting thread).
    pub drained: Duration,
    /// Drains made.
    pub drains: u64,
    /// The drains' write list, kept like a runner's.
    writes: Vec<Write>,
}

impl Driver {
    /// Drives `engine`, publishing to `sink` every `publish_interval_ms`
    /// and draining its change tracking every `drain_every` records.
    pub fn new(engine: Engine, sink: SinkKind, publish_interval_ms: u64, drain_every: u64) -> Self {
        let (sink, reader): (Box<dyn ParamSink>, _) = match sink {
            SinkKind::Null => (Box::new(NullSink::default()), None),
            SinkKind::Channel => {
                let (sink, mut rx) = publish::channel(CHANNEL_CAPACITY);
                let reader = std::thread::spawn(move || {
                    let mut received = 0_u64;
                    while let Some(publication) = rx.blocking_recv() {
                        if let Publication::Params(batch) = publication {
                            received += batch.len() as u64;
                        }
                    }
                    received
                });
                (Box::new(sink), Some(reader))
            }
        };
        Self {
            engine,
            sink,
            reader,
            watch: Stopwatch::new(),
            publish_every: Duration::from_millis(publish_interval_ms),
            last_publish: Duration::ZERO,
            drain_every: drain_every.max(1),
            records: 0,
            published: 0,
            publishes: 0,
            drained: Duration::ZERO,
            drains: 0,
            writes: Vec::new(),
        }
    }

    /// Ingests one record (the stopwatch must be running).
    #[inline]
    pub fn ingest(&mut self, partition: u32, offset: u64, next_offset: u64, payload: Payload) {
        self.engine
            .ingest_at(partition, offset, next_offset, payload);
        self.records += 1;
        if self.records.is_multiple_of(PUBLISH_CHECK_EVERY) {
            let now = self.watch.wall();
            if now - self.last_publish >= self.publish_every {
                self.publish();
                self.last_publish = now;
            }
        }
        if self.records.is_multiple_of(self.drain_every) {
            self.watch.stop();
            // What a runner's ingesting thread does at a checkpoint: the
            // delta into its kept list (the writer thread sorts and
            // writes it, and the writes are dropped there).
            let start = std::time::Instant::now();
            self.engine.checkpoint_delta_into(&mut self.writes);
            drop(self.engine.take_dead_letters());
            self.drained += start.elapsed();
            self.drains += 1;
            self.writes.clear();
            self.watch.start();
        }
    }

    /// Publishes what changed since the last publish.
    pub fn publish(&mut self) {
        let updates = take_updates(&mut self.engine);
        if !updates.is_empty() {
            self.published += updates.len() as u64;
            self.publishes += 1;
            self.sink.publish(updates).expect("the bench sinks accept");
        }
    }

    /// Closes the sink; returns the updates its reader thread received
    /// (for the channel sink).
    pub fn close(self) -> Option<u64> {
        drop(self.sink);
        self.reader
            .map(|r| r.join().expect("the channel reader does not panic"))
    }
}
