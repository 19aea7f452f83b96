//! Bench 4 of issue 3: checkpoints of ~100 000 changed keys at d = 32
//! into a `RocksStore` on disk (synced), the ingestion stall they cause,
//! and the restore of 1 M keys from the checkpoint and from a savepoint.
//!
//! The loop is the runner's loop around the runner's own
//! [`Checkpointer`]: publish the changed keys to a `NullSink` every 100 ms
//! (the default `publish.interval_ms` to a topic, checked every 1024
//! records), and
//! every `every` records checkpoint (publish and flush, dead letters
//! synced, delta encoded, wait for the previous write, hand this one to
//! the writer thread). The stall is the longest interval between the
//! starts of two consecutive `ingest` calls (record generation is done in
//! chunks beforehand and excluded). Each of the longest intervals comes
//! with the ingest thread's scheduler figures over the [`WINDOW`] records
//! it ended in: whether the time went to work, to waiting for a CPU, or
//! to being blocked or stolen.
//!
//! Docs are uniform over the keys in phase 2 (skew 1), so a checkpoint
//! every 105 361 records finds ≈ 100 000 changed keys
//! (1 M · (1 − e^(−0.105361)) = 100 000).

use std::path::Path;
use std::time::{Duration, Instant};

use posterior_learner::config::{Config, StateConfig};
use posterior_learner::engine::{Engine, Payload};
use posterior_learner::publish::NullSink;
use posterior_learner::runner::{
    CheckpointTiming, Checkpointer, WriteDone, checkpoint_due, fresh_engine, restore_engine,
};
use posterior_learner::savepoint;
use posterior_learner::store::RocksStore;

use crate::machine::{Sched, SchedReader};
use crate::workload::{Record, Workload, WorkloadSpec};

/// Records per checkpoint for ≈ 100 000 changed keys of 1 M uniform keys.
pub const EVERY_FOR_100K_KEYS: u64 = 105_361;
/// Records generated per chunk, outside the measured loop.
const CHUNK: usize = 1 << 16;
/// The publish interval: 100 ms, the default to a `params` topic (in
/// process the default is 10 ms).
const PUBLISH_EVERY: Duration =
    Duration::from_millis(posterior_learner::config::DEFAULT_KAFKA_PUBLISH_INTERVAL_MS);
/// Records between two looks at the publish interval.
const PUBLISH_CHECK_EVERY: u64 = 1024;

/// One checkpoint's figures.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// Records ingested before it (in the whole run).
    pub after_records: u64,
    /// What it blocked ingestion for.
    pub timing: CheckpointTiming,
    /// Its write on the writer thread (known once it completed).
    pub write: Option<WriteDone>,
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
    /// Longest interval in a [`WINDOW`] in which the hypervisor stole no
    /// CPU time from the machine (`None` when no window could be read):
    /// the stall the code and the guest's own load cause.
    pub longest_gap_unstolen: Option<Duration>,
    /// Records ingested.
    pub records: u64,
    /// Wall time of the whole loop (generation excluded).
    pub wall: Duration,
    /// Publishes between checkpoints, and the longest.
    pub publishes: (u64, Duration),
    /// The [`LONGEST_GAPS`] longest intervals, longest first.
    pub longest_gaps: Vec<Gap>,
    /// Shares of changed keys taken ahead of put-off checkpoints.
    pub stored_ahead: u64,
}

/// How many of the longest intervals a run keeps.
pub const LONGEST_GAPS: usize = 5;

/// One start-to-start interval of consecutive ingests.
#[derive(Debug, Clone, Copy)]
pub struct Gap {
    /// Its length.
    pub length: Duration,
    /// Records ingested when it ended.
    pub after_records: u64,
    /// What ran in it besides the ingest.
    pub containing: GapContent,
    /// The ingest thread's figures over the [`WINDOW`] records the
    /// interval ended in (`None` where `/proc` could not be read).
    pub window: Option<Window>,
}

/// Records per window of the ingest thread's scheduler figures: a window
/// of normal ingests lasts about a millisecond, so a long interval in it
/// is most of it.
pub const WINDOW: u64 = 1024;

/// The ingest thread over one window of records.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// Its wall time.
    pub wall: Duration,
    /// Where the thread's time went.
    pub sched: Sched,
}

/// What ran in an interval besides the ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GapContent {
    /// Nothing: the ingest itself (or the thread was not running).
    Ingest,
    /// A publish of the changed keys.
    Publish,
    /// A checkpoint.
    Checkpoint,
    /// Changed keys' states taken ahead of a checkpoint put off while the
    /// previous write runs (`Checkpointer::store_ahead`).
    StoreAhead,
}

impl CheckpointRun {
    /// Keeps `gap` if it is among the longest.
    fn note_gap(&mut self, gap: Gap) {
        if self.longest_gaps.len() == LONGEST_GAPS
            && self
                .longest_gaps
                .last()
                .is_some_and(|g| g.length >= gap.length)
        {
            return;
        }
        let at = self
            .longest_gaps
            .partition_point(|g| g.length >= gap.length);
        self.longest_gaps.insert(at, gap);
        self.longest_gaps.truncate(LONGEST_GAPS);
    }

    /// Gives the window that ended after `records` (and began after
    /// `from`) to the kept intervals that ended in it.
    fn close_window(&mut self, from: u64, records: u64, window: Window) {
        for gap in &mut self.longest_gaps {
            if gap.window.is_none() && (from + 1..=records).contains(&gap.after_records) {
                gap.window = Some(window);
            }
        }
    }
}

impl CheckpointRun {
    /// Takes a checkpoint after the records so far and records its timing
    /// (and the previous write, which it waited for).
    fn checkpoint(&mut self, checkpointer: &mut Checkpointer, engine: &mut Engine) {
        let timing = checkpointer
            .checkpoint(engine, self.records)
            .expect("checkpoint");
        self.note_write(checkpointer);
        self.checkpoints.push(Checkpoint {
            after_records: self.records,
            timing,
            write: None,
        });
    }

    /// Records the write the checkpointer completed last, on the
    /// checkpoint it belongs to (the completed count numbers them).
    fn note_write(&mut self, checkpointer: &Checkpointer) {
        if let Some(done) = checkpointer.last_write() {
            let index = checkpointer.completed() as usize - 1;
            if let Some(c) = self.checkpoints.get_mut(index) {
                c.write.get_or_insert_with(|| done.clone());
            }
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
    defer: bool,
) -> (CheckpointRun, Engine) {
    let _ = std::fs::remove_dir_all(&config.state.dir);
    let store = RocksStore::open(&config.state.dir).expect("open store");
    let mut checkpointer = Checkpointer::new(config, store, None, Box::new(NullSink::default()))
        .expect("checkpointer");
    let mut engine = fresh_engine(config, 0..spec.partitions).expect("bench versions register");
    let mut workload = Workload::new(spec);
    let mut out = CheckpointRun::default();
    let total = spec.keys + phase2;
    let mut loop_time = Duration::ZERO;
    let mut last_publish = Instant::now();
    let mut since_checkpoint = 0_u64;
    let state = StateConfig {
        checkpoint_every_records: every,
        checkpoint_every_ms: 0,
        ..config.state.clone()
    };
    let mut sched = SchedReader::for_this_thread();
    let open_window = |records: u64, sched: &mut Option<SchedReader>| {
        let figures = sched.as_mut().map(SchedReader::read).unwrap_or_default();
        (records, Instant::now(), figures)
    };
    let mut window;
    // The longest interval in the window being read.
    let mut window_longest;
    while out.records < total {
        let chunk: Vec<Record> = workload.records((total - out.records).min(CHUNK as u64) as usize);
        // Windows, like intervals, leave out the generation.
        window = open_window(out.records, &mut sched);
        window_longest = Duration::ZERO;
        let start = Instant::now();
        let mut previous: Option<Instant> = None;
        let mut containing = GapContent::Ingest;
        for r in chunk {
            let now = Instant::now();
            if let Some(prev) = previous {
                let gap = now - prev;
                if gap > out.longest_gap.0 {
                    out.longest_gap = (gap, out.records);
                }
                if !matches!(containing, GapContent::Checkpoint | GapContent::StoreAhead)
                    && gap > out.longest_gap_without_checkpoint
                {
                    out.longest_gap_without_checkpoint = gap;
                }
                window_longest = window_longest.max(gap);
                out.note_gap(Gap {
                    length: gap,
                    after_records: out.records,
                    containing,
                    window: None,
                });
            }
            if out.records.is_multiple_of(WINDOW)
                && out.records > window.0
                && let Some(reader) = sched.as_mut()
            {
                let figures = reader.read();
                let (from, began, at_start) = window;
                let wall = now - began;
                let spent = figures.since(&at_start);
                out.close_window(from, out.records, Window { wall, sched: spent });
                if spent.stolen.is_zero() {
                    let longest = out.longest_gap_unstolen.get_or_insert(Duration::ZERO);
                    *longest = (*longest).max(window_longest);
                }
                window = (out.records, now, figures);
                window_longest = Duration::ZERO;
            }
            previous = Some(now);
            containing = GapContent::Ingest;
            engine.ingest(r.partition, r.offset, Payload::Sample(r.sample));
            out.records += 1;
            since_checkpoint += 1;
            // The runner's rule (records only here); waiting for a write
            // in flight instead when `defer` is off.
            let busy = defer && checkpointer.busy();
            if checkpoint_due(&state, since_checkpoint, Duration::ZERO, busy) {
                since_checkpoint = 0;
                out.checkpoint(&mut checkpointer, &mut engine);
                containing = GapContent::Checkpoint;
                last_publish = Instant::now();
            } else if busy
                && checkpoint_due(&state, since_checkpoint, Duration::ZERO, false)
                && checkpointer.store_ahead(&state, &mut engine) > 0
            {
                out.stored_ahead += 1;
                containing = GapContent::StoreAhead;
            } else if out.records.is_multiple_of(PUBLISH_CHECK_EVERY)
                && last_publish.elapsed() >= PUBLISH_EVERY
            {
                let start = Instant::now();
                checkpointer
                    .publish(&mut engine)
                    .expect("a null sink accepts");
                last_publish = Instant::now();
                out.publishes.0 += 1;
                containing = GapContent::Publish;
                out.publishes.1 = out.publishes.1.max(last_publish - start);
            }
        }
        loop_time += start.elapsed();
    }
    engine.finish();
    out.checkpoint(&mut checkpointer, &mut engine);
    checkpointer.wait().expect("last write");
    out.note_write(&checkpointer);
    out.wall = loop_time;
    (out, engine)
}

/// Takes a savepoint of the store under `config.state.dir` into `root`,
/// then restores it into the empty store `into` and rebuilds the engine
/// as `learner run --from-savepoint` does. Returns the time to write the
/// savepoint, the time of the restore (copy into the store + rebuild),
/// and the engine.
pub fn savepoint_round_trip(
    config: &Config,
    root: &Path,
    into: &Config,
    partition_count: u32,
) -> (Duration, Duration, Engine) {
    let start = Instant::now();
    let taken = {
        let store = RocksStore::open(&config.state.dir).expect("open store");
        savepoint::write(root, &store, partition_count).expect("write savepoint")
    };
    let written = start.elapsed();
    let start = Instant::now();
    let _ = std::fs::remove_dir_all(&into.state.dir);
    if let Some(parent) = into.state.dir.parent() {
        std::fs::create_dir_all(parent).expect("create the restore directory");
    }
    let store = RocksStore::open(&into.state.dir).expect("open empty store");
    let verified = savepoint::verify(&taken.dir).expect("verify savepoint");
    savepoint::restore_into(&verified, None, &store).expect("restore savepoint");
    let (engine, _) = restore_engine(into, &store)
        .expect("restore")
        .expect("a state exists");
    (written, start.elapsed(), engine)
}

/// What a restore cost.
pub struct Restore {
    /// Bytes of write-ahead log in the store directory before the open
    /// (what it reads; entries of tables flushed since are skipped).
    pub log_bytes: u64,
    /// Time of the store's open (the log's replay).
    pub opened: Duration,
    /// Time of the whole restore.
    pub total: Duration,
}

/// Restore: open the store and rebuild the engine as the runner does at
/// start (`runner::restore_engine`). Returns the costs and the engine.
pub fn restore(config: &Config) -> (Restore, Engine) {
    let log_bytes = posterior_learner::store::log_bytes(&config.state.dir);
    let start = Instant::now();
    let store = RocksStore::open(&config.state.dir).expect("open store");
    let opened = start.elapsed();
    let (engine, _) = restore_engine(config, &store)
        .expect("restore")
        .expect("a checkpoint exists");
    let restore = Restore {
        log_bytes,
        opened,
        total: start.elapsed(),
    };
    (restore, engine)
}

/// Whether two engines hold the same parameters, bit for bit (by their
/// encodings).
pub fn same_params(a: &Engine, b: &Engine) -> bool {
    a.params().len() == b.params().len()
        && a.params()
            .all(|(k, s)| b.param(k).is_some_and(|t| t.encode() == s.encode()))
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
