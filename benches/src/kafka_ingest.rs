//! Bench 3 of issue 3: Kafka ingest side by side with a no-op consumer.
//!
//! One `nisshi` broker (memory storage) on loopback holds a `samples`
//! topic of N generated records. Each contender reads the whole topic from
//! the beginning to the high watermarks, in the same process, in turn:
//!
//! - `noop`: a plain rdkafka `BaseConsumer` with the learner's consumer
//!   settings (`kafka::consumer_config` and the source's own), assigned
//!   every partition; per record it only reads the payload length.
//! - `source+engine`: the learner's `KafkaSource` (decode + validate, on
//!   its reader thread) and the engine, publishing to a `NullSink` at the
//!   config's interval (2 ms: no `[publish.kafka]`), like the runner's
//!   loop without checkpoints (change tracking
//!   is not drained); once with reads aligned across partitions like the
//!   runner's, once unaligned (as the broker hands the partitions over).
//! - `runner`: `runner::run_kafka_with` in `UntilEnd` mode, i.e. the
//!   learner itself with its RocksDB store, synced checkpoints every
//!   `--checkpoint-every-records` (the config's default, 1 000 000) or
//!   10 s, and its dead-letter file.
//!
//! Every contender's wall time, the CPU time of this process (all its
//! threads, librdkafka's included) and of the broker process are read
//! around the run, to tell whether the broker is the bottleneck.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use posterior_learner::config::{Config, SourceConfig};
use posterior_learner::kafka::{KafkaSource, Polled, consumer_config};
use posterior_learner::publish::NullSink;
use posterior_learner::runner::{self, Controls, KafkaRunMode, fresh_engine};
use posterior_tests::broker::{Broker, Storage};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::driver::{Driver, SinkKind};
use crate::machine::{cpu_time, process_cpu, thread_cpu};
use crate::workload::{Workload, WorkloadSpec};

/// The topic the benches read.
pub const TOPIC: &str = "samples";
/// Longest a contender may take to read the topic.
const DEADLINE: Duration = Duration::from_secs(900);

/// A broker holding the topic, and what it holds.
pub struct Topic {
    /// The broker (killed when dropped).
    pub broker: Broker,
    /// Its pid, for CPU time.
    pub broker_pid: Option<u32>,
    /// High watermark of every partition.
    pub highs: BTreeMap<u32, u64>,
    /// Total value bytes produced.
    pub bytes: u64,
    /// Time the producer took (for scale).
    pub produce: Duration,
}

/// What one contender did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Consumed {
    /// Records read.
    pub records: u64,
    /// Wall time from the first poll to the last record.
    pub wall: Duration,
    /// CPU time of this process meanwhile (every thread).
    pub cpu: Duration,
    /// CPU time of the thread that ran the contender meanwhile: the one
    /// that polls (no-op), or that runs the engine (the others; their
    /// readers are threads of their own). Near the wall time, that thread
    /// is the bottleneck.
    pub thread_cpu: Duration,
    /// CPU time of the broker process meanwhile.
    pub broker_cpu: Option<Duration>,
}

impl Consumed {
    /// Records per second.
    pub fn rate(&self) -> f64 {
        crate::machine::rate(self.records, self.wall)
    }
}

/// Starts a memory broker and fills `TOPIC` with `n` records of `spec`
/// (partition = doc mod partitions, key = doc id).
pub fn fill(spec: WorkloadSpec, n: u64) -> Topic {
    let broker = Broker::start(Storage::Memory);
    broker.create_topic(TOPIC, spec.partitions);
    let mut workload = Workload::new(spec);
    let records: Vec<(u32, Vec<u8>, Vec<u8>)> = (0..n)
        .map(|_| {
            let (partition, wire) = workload.next_wire();
            (
                partition,
                wire.doc_id.to_string().into_bytes(),
                wire.encode_to_vec(),
            )
        })
        .collect();
    let bytes = records.iter().map(|(_, _, v)| v.len() as u64).sum();
    let start = Instant::now();
    broker.produce(
        TOPIC,
        records.iter().map(|(p, k, v)| (*p, k.clone(), &v[..])),
    );
    let produce = start.elapsed();
    let highs = broker
        .high_watermarks(TOPIC, spec.partitions)
        .into_iter()
        .enumerate()
        .map(|(p, h)| (p as u32, h))
        .collect();
    let broker_pid = find_pid(&broker.bootstrap());
    Topic {
        broker,
        broker_pid,
        highs,
        bytes,
        produce,
    }
}

/// The pid of the nisshi process listening on `bootstrap`.
fn find_pid(bootstrap: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|entry| {
        let entry = entry.ok()?;
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        (cmdline.contains("nisshi") && cmdline.contains(bootstrap)).then_some(pid)
    })
}

impl Topic {
    fn measure(&self, read: impl FnOnce() -> u64) -> Consumed {
        let pid = self.broker_pid.map(|p| p.to_string());
        let broker0 = pid.as_deref().and_then(cpu_time);
        let cpu0 = process_cpu();
        let thread0 = thread_cpu();
        let start = Instant::now();
        let records = read();
        let wall = start.elapsed();
        Consumed {
            records,
            wall,
            cpu: process_cpu().saturating_sub(cpu0),
            thread_cpu: thread_cpu().saturating_sub(thread0),
            broker_cpu: broker0
                .zip(pid.as_deref().and_then(cpu_time))
                .map(|(a, b)| b.saturating_sub(a)),
        }
    }

    fn total(&self) -> u64 {
        self.highs.values().sum()
    }

    /// The no-op consumer: every record's payload length, nothing else.
    pub fn noop(&self) -> Consumed {
        self.measure(|| {
            let consumer: BaseConsumer = consumer_config()
                .set("bootstrap.servers", self.broker.bootstrap())
                .set("group.id", "posterior-bench-noop")
                .set("enable.auto.commit", "false")
                .set("enable.auto.offset.store", "false")
                .set("auto.offset.reset", "error")
                .set("enable.partition.eof", "true")
                .create()
                .expect("create consumer");
            let mut list = TopicPartitionList::new();
            for &p in self.highs.keys() {
                list.add_partition_offset(TOPIC, p as i32, Offset::Beginning)
                    .expect("add partition");
            }
            consumer.assign(&list).expect("assign");
            let mut next: BTreeMap<u32, u64> = self.highs.keys().map(|&p| (p, 0)).collect();
            let (mut records, mut bytes) = (0_u64, 0_u64);
            let deadline = Instant::now() + DEADLINE;
            while next.iter().any(|(p, n)| *n < self.highs[p]) {
                assert!(Instant::now() < deadline, "the no-op consumer timed out");
                match consumer.poll(Duration::from_millis(100)) {
                    Some(Ok(message)) => {
                        records += 1;
                        bytes += message.payload().map_or(0, |v| v.len() as u64);
                        next.insert(message.partition() as u32, message.offset() as u64 + 1);
                    }
                    Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                    Some(Err(err)) => eprintln!("noop consumer: {err}"),
                }
            }
            std::hint::black_box(bytes);
            records
        })
    }

    /// The learner's source and engine, without the store; reads aligned
    /// like the runner's, or as the broker hands the partitions over.
    /// Also returns the samples applied and the reorder buffer's peak.
    pub fn source_and_engine(&self, config: &Config, aligned: bool) -> (Consumed, u64, usize) {
        let SourceConfig::Kafka(kafka) = &config.source else {
            panic!("a kafka config");
        };
        let (mut applied, mut peak) = (0, 0);
        let consumed = self.measure(|| {
            let align_ms = aligned.then(|| runner::throttle_slack_ms(config));
            let mut source =
                KafkaSource::open(kafka, &BTreeMap::new(), align_ms).expect("open source");
            let mut engine = fresh_engine(config, source.partitions().iter().copied())
                .expect("bench versions register");
            engine.return_contexts_to(source.context_return());
            let mut driver = Driver::new(
                engine,
                SinkKind::Null,
                config.publish_interval_ms(),
                u64::MAX,
            );
            driver.watch.start();
            let deadline = Instant::now() + DEADLINE;
            let done = |driver: &Driver| {
                self.highs
                    .iter()
                    .all(|(p, h)| driver.engine.next_offsets().get(p).copied().unwrap_or(0) >= *h)
            };
            while !done(&driver) {
                assert!(Instant::now() < deadline, "the learner's source timed out");
                match source.poll(Duration::from_millis(100)).expect("poll") {
                    Polled::Record {
                        partition,
                        offset,
                        payload,
                    } => {
                        driver.ingest(partition, offset, offset + 1, payload);
                        peak = peak.max(driver.engine.buffered());
                    }
                    Polled::CaughtUp { partition: p, .. } => {
                        let next = driver.engine.next_offsets().get(&p).copied().unwrap_or(0);
                        if next >= self.highs[&p] {
                            driver.engine.set_idle(p, true);
                        }
                    }
                    Polled::Nothing(_) => {}
                }
            }
            driver.engine.finish();
            driver.publish();
            applied = driver.engine.counters().applied;
            driver.records
        });
        (consumed, applied, peak)
    }

    /// The learner's runner, until the end of the topic, into a fresh
    /// state directory; also returns the samples applied, the checkpoints,
    /// the throttles (reorder buffer full) and the time its shutdown took
    /// (the final checkpoint and flush, inside the wall time).
    pub fn runner(&self, config: &Config) -> (Consumed, u64, u64, u64, Duration) {
        let _ = std::fs::remove_dir_all(&config.state.dir);
        let mut summary = None;
        let consumed = self.measure(|| {
            let run = runner::run_kafka_with(
                config,
                KafkaRunMode::UntilEnd,
                &Controls::default(),
                Box::new(NullSink::default()),
            )
            .expect("the runner reads the topic");
            let records = run.records;
            summary = Some(run);
            records
        });
        let summary = summary.expect("the runner ran");
        (
            consumed,
            summary.counters.applied,
            summary.checkpoints,
            summary.throttles,
            summary.shutdown,
        )
    }

    /// Total records in the topic.
    pub fn records(&self) -> u64 {
        self.total()
    }
}
