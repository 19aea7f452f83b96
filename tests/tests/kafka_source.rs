//! The Kafka source against a real broker: every record of every partition
//! once and in offset order, and aligned reads — no partition read further
//! ahead (in event time) of the slowest one with records left than the
//! alignment allows — while a source reading as delivered gets whole
//! partitions one after the other from this broker; a paused partition
//! holds no other back and resumes exactly where it stopped. And the
//! runner's end of a bounded run: one checkpoint, not two back to back.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use posterior_learner::config::{Config, KafkaConfig, SourceConfig};
use posterior_learner::engine::Payload;
use posterior_learner::kafka::{KafkaSource, Polled};
use posterior_learner::publish::NullSink;
use posterior_learner::runner::{self, Controls, KafkaRunMode, RunSummary};
use posterior_learner::store;
use posterior_proto::v1::JoinedSample;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{Source, learner_toml};
use posterior_tests::oracle::assert_same_end;
use prost::Message as _;

const PARTITIONS: u32 = 4;
const PER_PARTITION: u64 = 3_000;
/// Event time step within a partition: each spans 15 s.
const STEP_MS: i64 = 5;
const BASE_MS: i64 = 1_700_000_000_000;
const ALIGN_MS: i64 = 1_000;

/// Partition `p`'s record `i`: a sample at `BASE_MS + i × STEP_MS + p`,
/// except every 500th record of partition 1, which does not decode.
fn record(p: u32, i: u64) -> Vec<u8> {
    if p == 1 && i % 500 == 7 {
        return vec![0xff, 0xff, 0xff];
    }
    JoinedSample {
        doc_id: u64::from(p) * 1_000_000 + i,
        version: "beta".into(),
        event_time_ms: BASE_MS + i as i64 * STEP_MS + i64::from(p),
        context: vec![],
        labels: [("click".to_owned(), 0.0)].into(),
        weight: 1.0,
        sample_id: String::new(),
    }
    .encode_to_vec()
}

/// A broker holding `per_partition` records of [`record`] in each of the
/// [`PARTITIONS`] partitions of `samples`.
fn filled_broker(per_partition: u64) -> Broker {
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    produce_records(&broker, 0..PARTITIONS, 0..per_partition);
    broker
}

/// Produces records `indices` of [`record`] to each of `partitions`.
fn produce_records(
    broker: &Broker,
    partitions: std::ops::Range<u32>,
    indices: std::ops::Range<u64>,
) {
    let values: Vec<(u32, Vec<u8>)> = partitions
        .flat_map(|p| indices.clone().map(move |i| (p, record(p, i))))
        .collect();
    broker.produce(
        "samples",
        values
            .iter()
            .map(|(p, v)| (*p, p.to_be_bytes().to_vec(), v.as_slice())),
    );
}

fn kafka_config(dir: &std::path::Path, bootstrap: &str) -> KafkaConfig {
    let text = learner_toml(dir, "source", Source::Kafka(bootstrap), 10_000, None);
    match Config::from_toml(&text).unwrap().source {
        SourceConfig::Kafka(kafka) => kafka,
        other => panic!("a kafka source, not {other:?}"),
    }
}

/// What a read of the whole topic saw.
struct Read {
    /// Largest lead of a partition's clock, before a record of it was
    /// delivered, over the slowest partition with records left (one
    /// without a sample yet counting as at the topic's start).
    max_lead_ms: i64,
    undecodable: u64,
}

/// Reads every partition to its end, checking offsets (each once, in
/// order) and, with `align_ms`, that no record came from a partition whose
/// clock was beyond the alignment limit. The limit is computed as the
/// reader computes it, from what was delivered before (the channel keeps
/// the reader's order).
fn read_all(kafka: &KafkaConfig, align_ms: Option<i64>) -> Read {
    let mut source = KafkaSource::open(kafka, &BTreeMap::new(), align_ms).unwrap();
    let n = PARTITIONS as usize;
    let mut next = vec![0_u64; n];
    let mut clock: Vec<Option<i64>> = vec![None; n];
    let mut at_end = vec![false; n];
    let mut read = Read {
        max_lead_ms: i64::MIN,
        undecodable: 0,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(next.iter().all(|&o| o == PER_PARTITION) && at_end.iter().all(|&e| e)) {
        assert!(
            Instant::now() < deadline,
            "timed out: next offsets {next:?}, at end {at_end:?}"
        );
        match source.poll(Duration::from_millis(100)).unwrap() {
            Polled::Record {
                partition,
                offset,
                payload,
            } => {
                let p = partition as usize;
                assert_eq!(offset, next[p], "partition {p}: offsets once, in order");
                next[p] += 1;
                let slowest = (0..n)
                    .filter(|&q| !at_end[q])
                    .map(|q| clock[q].unwrap_or(i64::MIN))
                    .min()
                    .expect("the partition delivering is not at its end");
                if let (Some(c), Some(align_ms)) = (clock[p], align_ms) {
                    assert!(
                        c <= slowest.saturating_add(align_ms),
                        "partition {p} at {c} read beyond the slowest ({slowest}) + {align_ms} ms"
                    );
                }
                // For the lead, a partition without a sample yet is at the
                // topic's first event time.
                if let Some(c) = clock[p] {
                    let behind = (0..n)
                        .filter(|&q| !at_end[q])
                        .map(|q| clock[q].unwrap_or(BASE_MS))
                        .min()
                        .unwrap_or(c);
                    read.max_lead_ms = read.max_lead_ms.max(c - behind);
                }
                at_end[p] = false;
                match payload {
                    Payload::Sample(sample) => {
                        let t = sample.event_time_ms;
                        clock[p] = Some(clock[p].map_or(t, |c| c.max(t)));
                    }
                    Payload::Invalid { reason, .. } => {
                        assert_eq!(reason, "undecodable");
                        read.undecodable += 1;
                    }
                }
            }
            Polled::CaughtUp {
                partition,
                next_offset,
            } => {
                let p = partition as usize;
                // Where librdkafka reports the end, as an aligned read
                // hands it on: the next record's offset (past a commit
                // marker, when there is one).
                match (align_ms, next_offset) {
                    (Some(_), Some(n)) => assert_eq!(n, next[p], "partition {p}'s end"),
                    (Some(_), None) => panic!("partition {p}'s end without its offset"),
                    (None, _) => {}
                }
                at_end[p] = true;
            }
            Polled::Nothing(_) => {}
        }
    }
    read
}

/// A bounded Kafka run of `config` to the topic's end, publishing nowhere.
fn run_until_end(config: &Config, controls: &Controls) -> RunSummary {
    runner::run_kafka_with(
        config,
        KafkaRunMode::UntilEnd,
        controls,
        Box::new(NullSink::default()),
    )
    .unwrap()
}

#[test]
fn reads_are_aligned_across_partitions_and_each_partition_stays_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = filled_broker(PER_PARTITION);
    let kafka = kafka_config(dir.path(), &broker.bootstrap());

    let aligned = read_all(&kafka, Some(ALIGN_MS));
    let delivered = read_all(&kafka, None);
    eprintln!(
        "largest lead over the slowest partition: aligned {} ms, as delivered {} ms",
        aligned.max_lead_ms, delivered.max_lead_ms
    );
    let expected_undecodable = PER_PARTITION.div_ceil(500);
    assert_eq!(aligned.undecodable, expected_undecodable);
    assert_eq!(delivered.undecodable, expected_undecodable);
    // Aligned reads come close to the limit (the check above is not
    // vacuous: partitions did run ahead of each other, up to it).
    assert!(
        (ALIGN_MS / 2..=ALIGN_MS + STEP_MS).contains(&aligned.max_lead_ms),
        "aligned lead {} ms",
        aligned.max_lead_ms
    );
    // This broker hands whole partitions over one after the other: read as
    // delivered, one partition got seconds ahead of another.
    assert!(
        delivered.max_lead_ms > 4 * ALIGN_MS,
        "as delivered, the lead was only {} ms",
        delivered.max_lead_ms
    );
}

/// What a test read of each partition: the next offset, and whether the
/// partition reported its end since its last record.
struct Reading {
    next: Vec<u64>,
    at_end: Vec<bool>,
}

impl Default for Reading {
    fn default() -> Self {
        Self {
            next: vec![0; PARTITIONS as usize],
            at_end: vec![false; PARTITIONS as usize],
        }
    }
}

impl Reading {
    /// One poll of `source`, waiting up to `wait`; checks that each
    /// partition's records come once and in offset order, and returns the
    /// partition of a record.
    fn take(&mut self, source: &mut KafkaSource, wait: Duration) -> Option<usize> {
        match source.poll(wait).unwrap() {
            Polled::Record {
                partition, offset, ..
            } => {
                let p = partition as usize;
                assert_eq!(
                    offset, self.next[p],
                    "partition {p}: offsets once, in order"
                );
                self.next[p] += 1;
                self.at_end[p] = false;
                Some(p)
            }
            Polled::CaughtUp { partition: p, .. } => {
                self.at_end[p as usize] = true;
                None
            }
            Polled::Nothing(_) => None,
        }
    }
}

#[test]
fn a_paused_partition_holds_no_one_back_and_resumes_where_it_stopped() {
    const PER: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let broker = filled_broker(PER);
    let kafka = kafka_config(dir.path(), &broker.bootstrap());
    let mut source = KafkaSource::open(&kafka, &BTreeMap::new(), Some(ALIGN_MS)).unwrap();
    let n = PARTITIONS as usize;
    let mut reading = Reading::default();
    let wait = Duration::from_millis(100);
    let deadline = Instant::now() + Duration::from_secs(60);
    // Pause partition 0 at its first record; the others run to their end.
    while reading.next[0] == 0 {
        assert!(Instant::now() < deadline, "partition 0 never delivered");
        reading.take(&mut source, wait);
    }
    source.set_paused(&[0]);
    while !(1..n).all(|p| reading.next[p] == PER && reading.at_end[p]) {
        assert!(
            Instant::now() < deadline,
            "the others stalled behind the paused partition: {:?}",
            reading.next
        );
        reading.take(&mut source, wait);
    }
    // What was read ahead of the pause has arrived (the others' last
    // records came after it); partition 0 stopped well before its end.
    let stopped_at = reading.next[0];
    assert!(stopped_at < PER / 2, "partition 0 ran on to {stopped_at}");
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        assert_ne!(
            reading.take(&mut source, wait),
            Some(0),
            "a record of the paused partition"
        );
    }
    source.set_paused(&[]);
    while !(reading.next[0] == PER && reading.at_end[0]) {
        assert!(
            Instant::now() < deadline,
            "partition 0 did not resume: {:?}",
            reading.next
        );
        reading.take(&mut source, wait);
    }
    eprintln!("partition 0 paused at offset {stopped_at}, resumed and read to {PER}");
}

/// A partition paused right after it reported its end, and resumed once
/// more records were produced, goes on at the first of them, read aligned
/// or as delivered (librdkafka's own position had moved one past the end
/// with the end's report, and a resume went on from there: the record
/// produced at the end was skipped).
#[test]
fn a_partition_paused_at_its_end_resumes_at_the_next_record() {
    const PER: u64 = 100;
    for align in [Some(ALIGN_MS), None] {
        let dir = tempfile::tempdir().unwrap();
        let broker = filled_broker(PER);
        let kafka = kafka_config(dir.path(), &broker.bootstrap());
        let mut source = KafkaSource::open(&kafka, &BTreeMap::new(), align).unwrap();
        let mut reading = Reading::default();
        let deadline = Instant::now() + Duration::from_secs(60);
        let poll = |source: &mut KafkaSource, reading: &mut Reading| {
            assert!(
                Instant::now() < deadline,
                "{align:?}: stalled at {:?}",
                reading.next
            );
            reading.take(source, Duration::from_millis(50))
        };
        while !(0..PARTITIONS as usize).all(|p| reading.next[p] == PER && reading.at_end[p]) {
            poll(&mut source, &mut reading);
        }
        source.set_paused(&[0]);
        let settle = Instant::now() + Duration::from_millis(300);
        while Instant::now() < settle {
            poll(&mut source, &mut reading);
        }
        produce_records(&broker, 0..1, PER..PER + 10);
        let quiet = Instant::now() + Duration::from_millis(500);
        while Instant::now() < quiet {
            assert_ne!(
                poll(&mut source, &mut reading),
                Some(0),
                "{align:?}: a record of the paused partition"
            );
        }
        source.set_paused(&[]);
        while reading.next[0] < PER + 10 {
            poll(&mut source, &mut reading);
        }
    }
}

/// The consumer's cached high watermarks (what the lag metric reads) are
/// the broker's once the partitions were fetched, and reading them never
/// waits for the broker, even one that is gone.
#[test]
fn cached_high_watermarks_match_the_broker_and_never_wait() {
    const PER: u64 = 50;
    let dir = tempfile::tempdir().unwrap();
    let mut broker = filled_broker(PER);
    let kafka = kafka_config(dir.path(), &broker.bootstrap());
    let mut source = KafkaSource::open(&kafka, &BTreeMap::new(), Some(ALIGN_MS)).unwrap();
    let mut at_end = vec![false; PARTITIONS as usize];
    let deadline = Instant::now() + Duration::from_secs(60);
    while !at_end.iter().all(|&e| e) {
        assert!(Instant::now() < deadline, "never caught up");
        if let Polled::CaughtUp { partition: p, .. } =
            source.poll(Duration::from_millis(50)).unwrap()
        {
            at_end[p as usize] = true;
        }
    }
    let all: BTreeMap<u32, u64> = (0..PARTITIONS).map(|p| (p, PER)).collect();
    assert_eq!(source.cached_high_watermarks(), all);
    assert_eq!(source.high_watermarks().unwrap(), all);
    broker.kill();
    let asked = Instant::now();
    assert_eq!(source.cached_high_watermarks(), all);
    assert!(
        asked.elapsed() < Duration::from_millis(100),
        "{:?}",
        asked.elapsed()
    );
}

/// A bounded run (`--until-end`) whose last record makes a periodic
/// checkpoint due leaves it to the final checkpoint right after: the state
/// is written once at the end, not twice back to back (the second waiting
/// for the first), and ends equal to a run that checkpointed along the way,
/// from which a restart has nothing left to read.
#[test]
fn a_bounded_run_writes_its_end_once() {
    let dir = tempfile::tempdir().unwrap();
    let broker = filled_broker(PER_PARTITION);
    let total = u64::from(PARTITIONS) * PER_PARTITION;
    let config = |name: &str, every_records: u64| {
        let text = learner_toml(
            dir.path(),
            name,
            Source::Kafka(&broker.bootstrap()),
            every_records,
            None,
        );
        let mut config = Config::from_toml(&text).unwrap();
        // By record count only, so that the counts below are the rule's.
        config.state.checkpoint_every_ms = 0;
        config
    };
    let run = |config: &Config| run_until_end(config, &Controls::default());

    let at_end = config("at-end", total);
    let once = run(&at_end);
    assert_eq!(once.records, total);
    assert_eq!(
        once.checkpoints, 1,
        "the checkpoint due at the last record is the final one"
    );
    // Flushed to table files: the next open replays no log.
    let log = store::log_bytes(&at_end.state.dir);
    assert!(log < 4 << 10, "{log} bytes of log left after the run");
    let along = config("along", total / 3);
    let several = run(&along);
    assert_eq!(several.records, total);
    assert!(
        several.checkpoints >= 2,
        "{} checkpoints along the way and at the end",
        several.checkpoints
    );
    assert_same_end(&at_end, &along, "one checkpoint at the end vs several");
    assert!(once.counters.applied > 0 && once.counters.applied == several.counters.applied);

    let again = run(&at_end);
    assert!(again.restored);
    assert_eq!(again.records, 0, "the end's checkpoint holds every offset");
}

/// With `start = "latest"`, a partition that delivered nothing before a
/// restart still resumes where it started, not at the end it has then:
/// what came in while the learner was down is read. (Its start is kept in
/// the checkpoint; before, it was not, and those records were skipped.)
#[test]
fn a_partition_that_delivered_nothing_resumes_at_its_start_after_a_restart() {
    use posterior_learner::config::StartPosition;

    let dir = tempfile::tempdir().unwrap();
    // Partitions 0–2 hold records, partition 3 none.
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    produce_records(&broker, 0..3, 0..100);
    let text = learner_toml(
        dir.path(),
        "latest",
        Source::Kafka(&broker.bootstrap()),
        10_000,
        None,
    );
    let mut config = Config::from_toml(&text).unwrap();
    let SourceConfig::Kafka(kafka) = &mut config.source else {
        unreachable!("a kafka source")
    };
    kafka.start = StartPosition::Latest;
    let run = |config: &Config| run_until_end(config, &Controls::default());
    // Started at the end of every partition: nothing to read, and the run
    // ends because each partition's start is its end.
    let first = run(&config);
    assert_eq!(first.records, 0);
    // While the learner is down, every partition gets 50 more, partition 3
    // its first.
    produce_records(&broker, 0..PARTITIONS, 100..150);
    let second = run(&config);
    assert!(second.restored);
    assert_eq!(
        second.records,
        u64::from(PARTITIONS) * 50,
        "every record produced while it was down, partition 3's included"
    );
}

/// A savepoint asked for by signal that cannot be taken (this learner has
/// no `[savepoints]`) is reported and the run goes on to its end, with the
/// checkpoint taken for it.
#[test]
fn a_savepoint_signal_without_savepoints_does_not_end_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let broker = filled_broker(200);
    let text = learner_toml(
        dir.path(),
        "signal",
        Source::Kafka(&broker.bootstrap()),
        1_000_000,
        None,
    );
    let config = Config::from_toml(&text).unwrap();
    assert!(config.savepoints.is_none());
    let controls = Controls::default();
    controls
        .savepoint
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let summary = run_until_end(&config, &controls);
    assert_eq!(summary.records, u64::from(PARTITIONS) * 200);
    assert!(
        summary.checkpoints >= 2,
        "the signal's checkpoint and the end's: {}",
        summary.checkpoints
    );
}
