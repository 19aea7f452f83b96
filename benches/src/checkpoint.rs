//! Bench 4 of issue 3: checkpoints of ~100 000 changed keys at d = 32
//! into a `RocksStore` on disk (synced), the ingestion stall they cause,
//! and the restore of 1 M keys.
//!
//! The loop is the runner's loop with its checkpoint step spelled out,
//! because `runner::Checkpointer` is private: publish the changed keys to
//! a `NullSink` every 100 ms (the default `publish.interval_ms`, checked
//! every 1024 records), and every `every` records publish and flush, append
//! the dead letters to a file and `fsync` it, `Engine::checkpoint_delta()`
//! (encode), then `RocksStore::write` (one synced `WriteBatch`, with the
//! dead-letter length under the runner's meta key). The stall is the
//! longest interval between the starts of two consecutive `ingest` calls
//! (record generation is done in chunks beforehand and excluded).
//!
//! Docs are uniform over the keys in phase 2 (skew 1), so a checkpoint
//! every 105 361 records finds ≈ 100 000 changed keys
//! (1 M · (1 − e^(−0.105361)) = 100 000).

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use posterior_learner::codec::Table;
use posterior_learner::config::Config;
use posterior_learner::engine::{Engine, Payload, Write};
use posterior_learner::publish::{NullSink, ParamSink, take_updates};
use posterior_learner::runner::{fresh_engine, restore_engine};
use posterior_learner::store::{CheckpointStats, RocksStore};

use crate::workload::{Record, Workload, WorkloadSpec};

/// Records per checkpoint for ≈ 100 000 changed keys of 1 M uniform keys.
pub const EVERY_FOR_100K_KEYS: u64 = 105_361;
/// The runner's meta key for the dead-letter file length.
const DEAD_LETTER_BYTES: &[u8] = b"dead_letter_bytes";
/// Records generated per chunk, outside the measured loop.
const CHUNK: usize = 1 << 16;
/// The default `publish.interval_ms`.
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// Records between two looks at the publish interval.
const PUBLISH_CHECK_EVERY: u64 = 1024;

/// One checkpoint's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct Checkpoint {
    /// Records ingested before it (in the whole run).
    pub after_records: u64,
    /// Keys whose params it wrote.
    pub changed_keys: usize,
    /// Publish + flush of the changed keys (`NullSink`).
    pub publish: Duration,
    /// Dead letters appended and synced.
    pub dead_letters: Duration,
    /// `checkpoint_delta()`: deciding and encoding the writes.
    pub delta: Duration,
    /// `RocksStore::write` as a whole (batch build + synced write).
    pub write: Duration,
    /// What the store reported.
    pub stats: CheckpointStats,
}

impl Checkpoint {
    /// Everything the checkpoint blocked ingestion for.
    pub fn total(&self) -> Duration {
        self.publish + self.dead_letters + self.delta + self.write
    }
}

/// A run's checkpoints and stalls.
#[derive(Debug, Clone, Default)]
pub struct CheckpointRun {
    /// Every checkpoint, in order.
    pub checkpoints: Vec<Checkpoint>,
    /// Longest start-to-start interval of consecutive ingests, and after
    /// how many records it ended.
    pub longest_gap: (Duration, u64),
    /// Longest such interval that did not contain a checkpoint.
    pub longest_gap_without_checkpoint: Duration,
    /// Records ingested.
    pub records: u64,
    /// Wall time of the whole loop (generation excluded).
    pub wall: Duration,
    /// Publishes between checkpoints, and the longest.
    pub publishes: (u64, Duration),
}

/// The runner's checkpoint, spelled out and timed.
struct Checkpointer {
    store: RocksStore,
    sink: NullSink,
    dead: BufWriter<File>,
    dead_len: u64,
}

impl Checkpointer {
    fn checkpoint(&mut self, engine: &mut Engine, records: u64) -> Checkpoint {
        let t0 = Instant::now();
        let updates = take_updates(engine);
        self.sink.publish(updates).expect("a null sink accepts");
        self.sink.flush().expect("a null sink flushes");
        let t1 = Instant::now();
        for letter in engine.take_dead_letters() {
            let mut line = serde_json::to_vec(&letter).expect("dead letters encode");
            line.push(b'\n');
            self.dead.write_all(&line).expect("write dead letters");
            self.dead_len += line.len() as u64;
        }
        self.dead.flush().expect("flush dead letters");
        self.dead.get_ref().sync_data().expect("sync dead letters");
        let t2 = Instant::now();
        let mut writes = engine.checkpoint_delta();
        writes.push(Write::Put(
            Table::Meta,
            DEAD_LETTER_BYTES.to_vec(),
            self.dead_len.to_le_bytes().to_vec(),
        ));
        let changed_keys = writes
            .iter()
            .filter(|w| matches!(w, Write::Put(Table::Params, ..)))
            .count();
        let t3 = Instant::now();
        let stats = self.store.write(writes).expect("write checkpoint");
        let t4 = Instant::now();
        Checkpoint {
            after_records: records,
            changed_keys,
            publish: t1 - t0,
            dead_letters: t2 - t1,
            delta: t3 - t2,
            write: t4 - t3,
            stats,
        }
    }
}

/// Runs `phase1` (every key once) then `phase2` records of `spec` into a
/// fresh store under `config.state.dir`, checkpointing every `every`
/// records and once at the end. Returns the run and the engine.
pub fn run(
    config: &Config,
    spec: WorkloadSpec,
    phase2: u64,
    every: u64,
) -> (CheckpointRun, Engine) {
    let _ = std::fs::remove_dir_all(&config.state.dir);
    let store = RocksStore::open(&config.state.dir).expect("open store");
    let dead = BufWriter::new(File::create(&config.dead_letter.path).expect("dead-letter file"));
    let mut checkpointer = Checkpointer {
        store,
        sink: NullSink::default(),
        dead,
        dead_len: 0,
    };
    let mut engine = fresh_engine(config, 0..spec.partitions).expect("bench versions register");
    let mut workload = Workload::new(spec);
    let mut out = CheckpointRun::default();
    let total = spec.keys + phase2;
    let mut loop_time = Duration::ZERO;
    let mut last_publish = Instant::now();
    while out.records < total {
        let chunk: Vec<Record> = workload.records((total - out.records).min(CHUNK as u64) as usize);
        let start = Instant::now();
        let mut previous: Option<Instant> = None;
        let mut checkpointed = false;
        for r in chunk {
            let now = Instant::now();
            if let Some(prev) = previous {
                let gap = now - prev;
                if gap > out.longest_gap.0 {
                    out.longest_gap = (gap, out.records);
                }
                if !checkpointed && gap > out.longest_gap_without_checkpoint {
                    out.longest_gap_without_checkpoint = gap;
                }
            }
            previous = Some(now);
            checkpointed = false;
            engine.ingest(r.partition, r.offset, Payload::Sample(r.sample));
            out.records += 1;
            if out.records.is_multiple_of(every) {
                out.checkpoints
                    .push(checkpointer.checkpoint(&mut engine, out.records));
                checkpointed = true;
                last_publish = Instant::now();
            } else if out.records.is_multiple_of(PUBLISH_CHECK_EVERY)
                && last_publish.elapsed() >= PUBLISH_EVERY
            {
                let start = Instant::now();
                checkpointer
                    .sink
                    .publish(take_updates(&mut engine))
                    .expect("a null sink accepts");
                last_publish = Instant::now();
                out.publishes.0 += 1;
                out.publishes.1 = out.publishes.1.max(last_publish - start);
            }
        }
        loop_time += start.elapsed();
    }
    engine.finish();
    out.checkpoints
        .push(checkpointer.checkpoint(&mut engine, out.records));
    out.wall = loop_time;
    (out, engine)
}

/// Restore: open the store and rebuild the engine as the runner does at
/// start (`runner::restore_engine`). Returns the time and the engine.
pub fn restore(config: &Config) -> (Duration, Duration, Engine) {
    let start = Instant::now();
    let store = RocksStore::open(&config.state.dir).expect("open store");
    let opened = start.elapsed();
    let (engine, _) = restore_engine(config, &store)
        .expect("restore")
        .expect("a checkpoint exists");
    (opened, start.elapsed(), engine)
}

/// Whether two engines hold the same parameters, bit for bit (by their
/// encodings).
pub fn same_params(a: &Engine, b: &Engine) -> bool {
    a.params().len() == b.params().len()
        && a.params()
            .iter()
            .all(|(k, s)| b.params().get(k).is_some_and(|t| t.encode() == s.encode()))
}

/// Size of a directory tree in bytes.
pub fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
