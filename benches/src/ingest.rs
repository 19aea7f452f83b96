//! Benches 1 and 2 of issue 3: the in-memory pipeline (pre-decoded
//! samples → engine → publish) and ingest from a length-delimited protobuf
//! file (`file_source::FileSource` → engine → publish), plus the raw
//! decode rate of that file.
//!
//! Every run has two phases (see `workload`): phase 1 feeds each of the
//! `keys` docs once, then skewed docs until every key exists in the
//! engine (the key table fills), phase 2 feeds skewed docs over the full
//! table; then `Engine::finish` releases and applies what the reorder
//! buffer still holds (about `samples_per_ms × out_of_orderness`
//! samples), as the runner does at the end of a bounded input.
//!
//! The steady-state figure is phase 2 *without* the finish: phase 2
//! applies the samples phase 1 left in the buffer, and leaves about as many
//! to the finish, so its work is that of its own records: updates of
//! keys that exist. Bench 2 reads a file written in advance, so its phase
//! 2 is what is left of the file once the keys exist. The whole-run
//! figure (both phases and the finish) is printed next to it.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::Duration;

use posterior_learner::engine::Payload;
use posterior_learner::file_source::{FileReadAhead, FileSource, Format, decode_protobuf};
use posterior_learner::prefetch::{RECORDS_AHEAD, prefetch_slice};
use posterior_learner::runner::fresh_engine;
use posterior_tests::log::{LogSpec, generate_records};
use prost::Message as _;

use crate::config::{Batching, BenchConfig, SourceToml};
use crate::driver::{Driver, SinkKind};
use crate::machine::Stopwatch;
use crate::workload::{Record, Workload, WorkloadSpec};

/// Records generated per chunk (outside the timed interval).
const CHUNK: u64 = 1 << 16;
/// Partition of a file source (the runner's).
const FILE_PARTITION: u32 = 0;

/// Time and count of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Records ingested.
    pub records: u64,
    /// Timed wall time.
    pub wall: Duration,
    /// Thread CPU time within it.
    pub cpu: Duration,
}

impl Phase {
    /// Records per second of wall time.
    pub fn rate(&self) -> f64 {
        crate::machine::rate(self.records, self.wall)
    }

    fn since(watch: &Stopwatch, wall0: Duration, cpu0: Duration, records: u64) -> Self {
        Self {
            records,
            wall: watch.wall() - wall0,
            cpu: watch.cpu() - cpu0,
        }
    }
}

/// Settings of bench 1 that default to the learner's config defaults.
#[derive(Debug, Clone, Copy)]
pub struct Knobs {
    /// Publish interval; `None` = the config default (10 ms in process).
    pub publish_interval_ms: Option<u64>,
    /// Records between two drains of the change tracking (default
    /// 100 000, the config's checkpoint interval before 09dc90b; it is
    /// 1 000 000 now, so the bench drains more often than a learner).
    pub checkpoint_every_records: u64,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            publish_interval_ms: None,
            checkpoint_every_records: 100_000,
        }
    }
}

/// What a pipeline run did.
#[derive(Debug, Clone, Default)]
pub struct PipelineRun {
    /// Filling the key table.
    pub phase1: Phase,
    /// Skewed docs over the full table.
    pub phase2: Phase,
    /// `Engine::finish` and the last publish.
    pub finish: Phase,
    /// Samples applied to posteriors.
    pub applied: u64,
    /// Updates (micro-batches) applied.
    pub updates: u64,
    /// Dead letters.
    pub dead: u64,
    /// Keys in the table at the end.
    pub keys: usize,
    /// Keys in the table at the end of phase 1 (bench 1; 0 in bench 2).
    pub keys_after_phase1: usize,
    /// Updates handed to the sink.
    pub published: u64,
    /// Updates the channel's reader received (channel sink only).
    pub received: Option<u64>,
    /// Mean wall time of a change-tracking drain (`checkpoint_delta`,
    /// untimed), both phases.
    pub drain: Duration,
}

fn summarize(driver: Driver, phase1: Phase, phase2: Phase, finish: Phase) -> PipelineRun {
    let counters = driver.engine.counters().clone();
    let mut run = PipelineRun {
        phase1,
        phase2,
        finish,
        applied: counters.applied,
        updates: counters.updates,
        dead: counters.dead.values().sum(),
        keys: driver.engine.params().len(),
        keys_after_phase1: 0,
        published: driver.published,
        received: None,
        drain: driver
            .drained
            .checked_div(driver.drains.max(1) as u32)
            .unwrap_or_default(),
    };
    run.received = driver.close();
    run
}

/// Bench 1: `keys` + `phase2` pre-decoded samples of `spec` through the
/// engine, publishing to `sink`.
pub fn in_memory(
    spec: WorkloadSpec,
    batching: Batching,
    sink: SinkKind,
    phase2: u64,
    dir: &Path,
    knobs: Knobs,
) -> PipelineRun {
    let config = BenchConfig {
        model: spec.model,
        batching,
        dir,
        source: SourceToml::File(&dir.join("unused.pb")),
        checkpoint_every_records: knobs.checkpoint_every_records,
        dedup: spec.sample_ids,
    }
    .build();
    let engine = fresh_engine(&config, 0..spec.partitions).expect("bench versions register");
    let mut driver = Driver::new(
        engine,
        sink,
        knobs
            .publish_interval_ms
            .unwrap_or_else(|| config.publish_interval_ms()),
        config.state.checkpoint_every_records,
    );
    let mut workload = Workload::new(spec);
    let phase1 = fill_table(&mut driver, &mut workload, spec.keys);
    let keys_after_phase1 = driver.engine.param_count();
    let phase2 = feed(&mut driver, &mut workload, phase2);
    let finish = finish(&mut driver);
    PipelineRun {
        keys_after_phase1,
        ..summarize(driver, phase1, phase2, finish)
    }
}

/// Feeds `n` records, generated in chunks outside the timed interval;
/// ends with a publish (timed).
fn feed(driver: &mut Driver, workload: &mut Workload, n: u64) -> Phase {
    let (wall0, cpu0) = (driver.watch.wall(), driver.watch.cpu());
    feed_records(driver, workload, n);
    publish(driver);
    Phase::since(&driver.watch, wall0, cpu0, n)
}

/// Records fed at a time while phase 1 waits for the last keys.
const SETTLE_CHUNK: u64 = 1 << 13;
/// Phase 1 feeds at most this many times `keys`, plus [`SETTLE_CAP`].
const SETTLE_CAP_FACTOR: u64 = 4;
/// See [`SETTLE_CAP_FACTOR`].
const SETTLE_CAP: u64 = 1 << 20;

/// Phase 1: one record of each of the `keys` docs, then further records
/// until every doc has its key in the engine's table. A doc's first
/// sample creates its key only once the watermark releases it (and, with
/// an age trigger, once its batch is applied): until then it waits in the
/// reorder buffer or a pending batch, about `samples_per_ms ×
/// out_of_orderness` samples (half the keys at the defaults). Phase 2 then
/// times updates of a full table, not the creation of the keys phase 1
/// left buffered. A bench bug that never creates some key panics rather
/// than feeding for ever.
fn fill_table(driver: &mut Driver, workload: &mut Workload, keys: u64) -> Phase {
    let (wall0, cpu0) = (driver.watch.wall(), driver.watch.cpu());
    feed_records(driver, workload, keys);
    let mut fed = keys;
    while (driver.engine.param_count() as u64) < keys {
        assert!(
            fed < SETTLE_CAP_FACTOR * keys + SETTLE_CAP,
            "phase 1 fed {fed} records and {} of {keys} keys exist",
            driver.engine.param_count()
        );
        feed_records(driver, workload, SETTLE_CHUNK);
        fed += SETTLE_CHUNK;
    }
    publish(driver);
    Phase::since(&driver.watch, wall0, cpu0, fed)
}

/// A publish, timed.
fn publish(driver: &mut Driver) {
    driver.watch.start();
    driver.publish();
    driver.watch.stop();
}

/// Feeds `n` records, generated in chunks outside the timed interval.
fn feed_records(driver: &mut Driver, workload: &mut Workload, n: u64) {
    let mut left = n;
    while left > 0 {
        let records = workload.records(left.min(CHUNK) as usize);
        left -= records.len() as u64;
        driver.watch.start();
        // As the Kafka and file read-aheads hand their decoded records to
        // the engine: each record and its context asked for a few records
        // before the engine's first touch of them. The records of a chunk
        // were generated before the timed interval and are out of the
        // engine's caches, as decoded records are.
        let mut records = records.into_iter();
        for ahead in records.as_slice().iter().take(RECORDS_AHEAD) {
            prefetch_record(ahead);
        }
        while let Some(r) = records.next() {
            if let Some(ahead) = records.as_slice().get(RECORDS_AHEAD - 1) {
                prefetch_record(ahead);
            }
            driver.ingest(
                r.partition,
                r.offset,
                r.offset + 1,
                Payload::Sample(r.sample),
            );
        }
        driver.watch.stop();
    }
}

/// Asks for a record and its sample's context (a hint; see
/// [`RECORDS_AHEAD`]).
fn prefetch_record(record: &Record) {
    prefetch_slice(std::slice::from_ref(record));
    prefetch_slice(&record.sample.context);
}

/// `Engine::finish` and a publish, timed.
fn finish(driver: &mut Driver) -> Phase {
    let (wall0, cpu0) = (driver.watch.wall(), driver.watch.cpu());
    driver.watch.start();
    driver.engine.finish();
    driver.publish();
    driver.watch.stop();
    Phase::since(&driver.watch, wall0, cpu0, 0)
}

impl PipelineRun {
    /// Every record over every timed interval (both phases and the finish).
    pub fn whole(&self) -> Phase {
        Phase {
            records: self.phase1.records + self.phase2.records,
            wall: self.phase1.wall + self.phase2.wall + self.finish.wall,
            cpu: self.phase1.cpu + self.phase2.cpu + self.finish.cpu,
        }
    }
}

/// Writes `n` records of `spec` as length-delimited `JoinedSample`s;
/// returns the file's size in bytes.
pub fn write_protobuf_file(path: &Path, spec: WorkloadSpec, n: u64) -> u64 {
    let mut out = BufWriter::new(File::create(path).expect("create sample file"));
    let mut workload = Workload::new(spec);
    let mut buf = Vec::new();
    for _ in 0..n {
        let (_, wire) = workload.next_wire();
        buf.clear();
        wire.encode_length_delimited(&mut buf).expect("a Vec grows");
        out.write_all(&buf).expect("write sample file");
    }
    out.flush().expect("flush sample file");
    std::fs::metadata(path).expect("stat sample file").len()
}

/// Writes the end-to-end tests' generated log (`posterior_tests::log`:
/// a `beta` and a 4-dimensional `logistic` version, 10 000 docs, ~4 %
/// defects) as length-delimited protobuf; returns the file's size.
pub fn write_test_log(path: &Path, records: usize) -> u64 {
    let (log, _) = generate_records(LogSpec {
        records,
        docs: 10_000,
        out_of_orderness_ms: posterior_tests::config::OUT_OF_ORDERNESS_MS,
        seed: 0x10C,
    });
    let mut out = BufWriter::new(File::create(path).expect("create log file"));
    let mut prefix = Vec::new();
    for r in log {
        prefix.clear();
        prost::encoding::encode_varint(r.protobuf.len() as u64, &mut prefix);
        out.write_all(&prefix).expect("write log file");
        out.write_all(&r.protobuf).expect("write log file");
    }
    out.flush().expect("flush log file");
    std::fs::metadata(path).expect("stat log file").len()
}

/// Raw decode through the file source: read, frame, decode, validate;
/// no engine. Returns the phase and the count of invalid records.
pub fn decode_file(path: &Path) -> (Phase, u64) {
    let mut source = FileSource::open(path, Format::Protobuf, 0).expect("open sample file");
    let mut watch = Stopwatch::new();
    let (mut records, mut invalid) = (0_u64, 0_u64);
    watch.start();
    while let Some((_, payload)) = source.next_record().expect("read sample file") {
        records += 1;
        invalid += u64::from(matches!(payload, Payload::Invalid { .. }));
        std::hint::black_box(payload);
    }
    watch.stop();
    (
        Phase::since(&watch, Duration::ZERO, Duration::ZERO, records),
        invalid,
    )
}

/// Decode alone: `decode_protobuf` (prost + validation) over the file's
/// records, framed in memory beforehand (no I/O, no framing).
pub fn decode_in_memory(path: &Path) -> Phase {
    let bytes = std::fs::read(path).expect("read sample file");
    let mut frames = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let mut rest = &bytes[at..];
        let len = prost::encoding::decode_varint(&mut rest).expect("framed records") as usize;
        let start = bytes.len() - rest.len();
        frames.push(start..start + len);
        at = start + len;
    }
    let mut watch = Stopwatch::new();
    watch.start();
    for frame in &frames {
        std::hint::black_box(decode_protobuf(&bytes[frame.clone()]));
    }
    watch.stop();
    Phase::since(&watch, Duration::ZERO, Duration::ZERO, frames.len() as u64)
}

/// Bench 2: the file through the engine (one partition, as the runner
/// reads files), publishing to a `NullSink`, ending with
/// `Engine::finish` as the runner does at the end of a file. The file is
/// read by a [`FileReadAhead`] (the runner's way: read and decoded on a
/// second thread) or, with `read_ahead` false, by a [`FileSource`] on the
/// engine's thread. With `keys` above 0, phase 1 (timed apart) runs until
/// the file's first `keys` records are read and the engine's table holds
/// `keys` keys, as in bench 1's `fill_table`; phase 2 is the rest of the
/// file. The run's CPU figures are the engine thread's; the second value
/// is the whole process over the whole run (wall time from the start to
/// the end of the finish, untimed drains included; CPU time of every
/// thread, the reader's included).
pub fn from_file(
    path: &Path,
    config: &posterior_learner::config::Config,
    keys: u64,
    read_ahead: bool,
) -> (PipelineRun, Phase) {
    let engine = fresh_engine(config, [FILE_PARTITION]).expect("bench versions register");
    let mut driver = Driver::new(
        engine,
        SinkKind::Null,
        config.publish_interval_ms(),
        config.state.checkpoint_every_records,
    );
    let (start, process0) = (std::time::Instant::now(), crate::machine::process_cpu());
    let source = FileSource::open(path, Format::Protobuf, 0).expect("open sample file");
    let mut source = if read_ahead {
        let ahead = FileReadAhead::start(source).expect("start the file reader");
        if let Some(contexts) = ahead.context_return() {
            driver.engine.return_contexts_to(contexts);
        }
        Source::Ahead(ahead)
    } else {
        Source::Direct(source)
    };
    let mut phase1 = Phase::default();
    let mut filling = keys > 0;
    driver.watch.start();
    while let Some((offset, next_offset, payload)) = source.next_record() {
        driver.ingest(FILE_PARTITION, offset, next_offset, payload);
        if filling && driver.records >= keys && driver.engine.param_count() as u64 >= keys {
            filling = false;
            driver.publish();
            phase1 = Phase::since(
                &driver.watch,
                Duration::ZERO,
                Duration::ZERO,
                driver.records,
            );
        }
    }
    driver.publish();
    driver.watch.stop();
    let both = Phase::since(
        &driver.watch,
        Duration::ZERO,
        Duration::ZERO,
        driver.records,
    );
    let phase2 = Phase {
        records: both.records - phase1.records,
        wall: both.wall - phase1.wall,
        cpu: both.cpu.saturating_sub(phase1.cpu),
    };
    let finish = finish(&mut driver);
    drop(source);
    let process = Phase {
        records: driver.records,
        wall: start.elapsed(),
        cpu: crate::machine::process_cpu().saturating_sub(process0),
    };
    (summarize(driver, phase1, phase2, finish), process)
}

/// Bench 2's two ways of reading the file.
enum Source {
    Ahead(FileReadAhead),
    Direct(FileSource),
}

impl Source {
    /// The next (offset, next offset, payload); `None` at the end.
    fn next_record(&mut self) -> Option<(u64, u64, Payload)> {
        match self {
            Self::Ahead(source) => source.next_record().expect("read sample file"),
            Self::Direct(source) => source
                .next_record()
                .expect("read sample file")
                .map(|(offset, payload)| (offset, source.position(), payload)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::Model;

    /// Phase 1 feeds past one record per key, until the keys whose first
    /// record waited in the reorder buffer (and, micro-batched, in a
    /// pending batch) exist; phase 2 then creates none.
    #[test]
    fn phase_one_ends_with_every_key_in_the_table() {
        for batching in [Batching::Single, Batching::Micro] {
            let dir = tempfile::tempdir().expect("temp dir");
            let spec = WorkloadSpec {
                keys: 5_000,
                samples_per_ms: 5,
                ..WorkloadSpec::new(Model::Beta)
            };
            let run = in_memory(
                spec,
                batching,
                SinkKind::Null,
                10_000,
                dir.path(),
                Knobs::default(),
            );
            assert_eq!(run.keys_after_phase1, 5_000, "{batching:?}");
            assert_eq!(run.keys, 5_000, "{batching:?}");
            // 1 s of disorder at 5 samples per ms holds ~5 000 back.
            assert!(run.phase1.records > 6_000, "{batching:?}: {:?}", run.phase1);
            assert_eq!(run.phase2.records, 10_000);
            assert_eq!(
                run.applied,
                run.phase1.records + run.phase2.records,
                "{batching:?}"
            );
        }
    }
}
