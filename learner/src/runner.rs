//! Drives the engine over a source with the RocksDB store and a
//! dead-letter sink: restore, read from the checkpointed offsets,
//! checkpoint every N records (and, for Kafka, every T ms), and finish a
//! bounded input at its end.
//!
//! Before each checkpoint write, the published updates are flushed and the
//! dead letters made durable (`deadletter_sink`: a file exactly once, with
//! its length in the checkpoint; a topic at least once, keyed
//! `partition/offset`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::codec::{CorruptState, Table};
use crate::config::{Config, SavepointConfig, SourceConfig};
use crate::control::{Command, Scheduled};
use crate::deadletter_sink::{self, DeadLetterError, DeadLetterSink};
use crate::engine::ScheduleResult;
use crate::engine::{Counters, Engine, Payload, SpareWrites, Write, sort_puts};
use crate::fallback::ServedParams;
use crate::file_source::{FileReadAhead, FileSource, StdinReader};
use crate::kafka::{ControlReader, KafkaSource, ParamsTopic, Polled};
use crate::metrics::LearnerMetrics;
use crate::producer::DeliveryBarrier;
use crate::publish::{KafkaSink, NullSink, ParamSink, take_updates};
use crate::registry::{Registry, VersionEntry};
use crate::savepoint::{self, Savepoint};
use crate::simulation::source::Simulator;
use crate::store::{CheckpointStats, RocksStore};
use crate::watchdog::{Progress, Watchdog};
use crate::watermark::PartitionClock;

/// Smallest event-time gap a throttled partition may run ahead (ms).
const MIN_THROTTLE_SLACK_MS: i64 = 1_000;
/// How often a Kafka run prints its progress to stderr.
const STATUS_EVERY: Duration = Duration::from_secs(5);

/// Records a Kafka run hands on from a batch already read between two
/// reads of the clock (see `run_kafka_with`).
const CLOCK_EVERY_RECORDS: u64 = 32;
/// Meta entry: length of the dead-letter file at the checkpoint.
const DEAD_LETTER_BYTES: &[u8] = b"dead_letter_bytes";
/// The single partition of a file, stdin or simulator source.
const LOCAL_PARTITION: u32 = 0;

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunSummary {
    /// Whether the engine was restored from a checkpoint.
    pub restored: bool,
    /// Records read in this run.
    pub records: u64,
    /// Checkpoints written in this run.
    pub checkpoints: u64,
    /// Counters since the state began.
    pub counters: Counters,
    /// Times a full reorder buffer narrowed fetching to one partition.
    pub throttles: u64,
    /// Keys seeded from served parameters at start (the restore of last
    /// resort, see [`crate::fallback`]).
    pub seeded: usize,
    /// Wall time from the last sample applied (the end of the input, or a
    /// stop) to the end of the run: the final checkpoint, the flush that
    /// follows it and a savepoint on shutdown.
    pub shutdown: Duration,
}

/// Rebuilds the engine from the live store, or `None` when the store is
/// empty. Versions in the config that the stored registry lacks are added,
/// so adding a version never invalidates a checkpoint. Also returns the
/// dead-letter file length recorded with the checkpoint.
pub fn restore_engine(
    config: &Config,
    store: &RocksStore,
) -> Result<Option<(Engine, Option<u64>)>> {
    Ok(restore_engine_adding(config, store)?.map(|(engine, dead, _)| (engine, dead)))
}

/// A restored engine, its checkpointed dead-letter file length, and the
/// configured versions the stored registry lacked (they have no state).
type Restored = (Engine, Option<u64>, Vec<String>);

/// [`restore_engine`], also returning the versions it added.
fn restore_engine_adding(config: &Config, store: &RocksStore) -> Result<Option<Restored>> {
    // Every table but the parameters is read whole; those are streamed
    // (`Engine::restore_streaming`).
    let mut tables = Vec::new();
    for table in Table::ALL {
        if table != Table::Params {
            tables.push((table, store.entries(table).context("read state")?));
        }
    }
    let dead_letter_bytes = tables
        .iter()
        .find(|(t, _)| *t == Table::Meta)
        .and_then(|(_, entries)| entries.iter().find(|(k, _)| k == DEAD_LETTER_BYTES))
        .and_then(|(_, v)| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_le_bytes);
    // `Engine::restore_streaming` reads each table once: hand the entries
    // over instead of copying them.
    let mut read_error = None;
    let restored = Engine::restore_streaming(
        config.engine(),
        |t| {
            tables
                .iter_mut()
                .find(|(table, _)| *table == t)
                .map(|(_, e)| std::mem::take(e))
                .unwrap_or_default()
        },
        store.estimated_entries(Table::Params),
        |visit| match store.for_each(Table::Params, visit) {
            Ok(visited) => visited,
            Err(err) => {
                read_error = Some(err);
                Err(CorruptState::new(
                    Table::Params,
                    b"",
                    "the table could not be read",
                ))
            }
        },
    );
    if let Some(err) = read_error {
        return Err(err).context("read state");
    }
    let restored = restored.context("restore state")?;
    let Some(mut engine) = restored else {
        return Ok(None);
    };
    let mut added = Vec::new();
    for spec in config.version_specs() {
        if engine
            .registry()
            .entries()
            .iter()
            .all(|e| e.spec.name != spec.name)
        {
            added.push(spec.name.clone());
            engine
                .create_version(spec)
                .context("add configured version")?;
        }
    }
    Ok(Some((engine, dead_letter_bytes, added)))
}

/// Which savepoint to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SavepointChoice {
    /// The newest valid one under the config's `[savepoints] dir` that
    /// holds this instance's partitions (another instance's may be newer),
    /// or the newest shares of one savepoint that hold them between them
    /// and merge ([`savepoint::covering`], [`savepoint::check_mergeable`]).
    Latest,
    /// These directories: one savepoint, or shares of one that learners of
    /// different partitions wrote, each partition taken from the one that
    /// holds it ([`savepoint::restore_shares_into`]).
    Dirs(Vec<PathBuf>),
}

/// Restores a verified savepoint into the (empty) live store, taking the
/// partitions this instance owns: the Kafka source's configured ones, or
/// all. Run the learner afterwards as usual; it resumes from it. Returns
/// the savepoints (shares) it was given or chose.
pub fn restore_savepoint(config: &Config, choice: &SavepointChoice) -> Result<Vec<Savepoint>> {
    let partitions = owned_partitions(config);
    let chosen = match choice {
        SavepointChoice::Dirs(dirs) => dirs
            .iter()
            .map(|dir| savepoint::verify(dir))
            .collect::<Result<Vec<_>, _>>()?,
        SavepointChoice::Latest => {
            let root = &config
                .savepoints
                .as_ref()
                .context("--from-savepoint latest needs [savepoints] dir in the config")?
                .dir;
            let (valid, invalid) = savepoint::list(root)?;
            for err in invalid {
                tracing::warn!("skipping invalid savepoint: {err}");
            }
            let (chosen, refused) = newest_covering(valid, partitions.as_ref());
            if chosen.is_some() {
                for why in &refused {
                    tracing::warn!("passing over newer savepoints that do not merge: {why}");
                }
            }
            let mut context = format!(
                "no valid savepoint under {} holds {}",
                root.display(),
                describe_partitions(partitions.as_ref())
            );
            for why in &refused {
                context.push_str("; ");
                context.push_str(why);
            }
            chosen.with_context(|| context)?
        }
    };
    restore_chosen(config, chosen, partitions.as_ref())
}

/// Restores `chosen` (one savepoint or the shares of one) into the live
/// store.
fn restore_chosen(
    config: &Config,
    chosen: Vec<Savepoint>,
    partitions: Option<&BTreeSet<u32>>,
) -> Result<Vec<Savepoint>> {
    let store = RocksStore::open(&config.state.dir).context("open state store")?;
    savepoint::restore_shares_into(&chosen, partitions, &store)
        .with_context(|| format!("restore savepoint {}", describe_savepoints(&chosen)))?;
    Ok(chosen)
}

/// The directories of `savepoints`, for messages.
pub fn describe_savepoints(savepoints: &[Savepoint]) -> String {
    let dirs: Vec<String> = savepoints
        .iter()
        .map(|s| s.dir.display().to_string())
        .collect();
    dirs.join(" + ")
}

/// The partitions this instance owns: the Kafka source's configured ones,
/// or (`None`) every partition of its input.
fn owned_partitions(config: &Config) -> Option<BTreeSet<u32>> {
    match &config.source {
        SourceConfig::Kafka(kafka) => kafka
            .partitions
            .as_ref()
            .map(|p| p.iter().copied().collect()),
        _ => None,
    }
}

fn describe_partitions(partitions: Option<&BTreeSet<u32>>) -> String {
    partitions.map_or_else(
        || "every partition".to_owned(),
        |p| format!("partitions {p:?}"),
    )
}

/// Of `valid`, the newest savepoint that holds `partitions` (`None`:
/// every partition of its topic), or the newest shares of one savepoint
/// (one command's, or one name's, see [`savepoint::base_name`]) that hold
/// them between them and merge; shares rank by the newest of those picked.
/// Learners that share a savepoint root each save their own partitions,
/// so the newest one may be another instance's. Also returns why newer
/// shares that held the partitions between them were passed over.
fn newest_covering(
    valid: Vec<Savepoint>,
    partitions: Option<&BTreeSet<u32>>,
) -> (Option<Vec<Savepoint>>, Vec<String>) {
    let mut groups: BTreeMap<String, Vec<Savepoint>> = BTreeMap::new();
    for s in valid {
        groups.entry(savepoint::base_name(&s)).or_default().push(s);
    }
    let newest = |shares: &[Savepoint]| {
        shares
            .iter()
            .map(|s| (s.manifest.created_unix_ms, s.dir.clone()))
            .max()
    };
    let mut best: Option<Vec<Savepoint>> = None;
    let mut refused = Vec::new();
    for group in groups.into_values() {
        let held: BTreeSet<u32> = group
            .iter()
            .flat_map(|s| s.manifest.partitions.iter().copied())
            .collect();
        let held_between = match partitions {
            Some(wanted) => wanted.is_subset(&held),
            None => group
                .first()
                .is_some_and(|s| (0..s.manifest.partition_count).all(|p| held.contains(&p))),
        };
        let group_newest = newest(&group);
        let chosen = savepoint::covering(group, partitions).and_then(|chosen| {
            savepoint::check_mergeable(&savepoint::plan_shares(&chosen, partitions)?)?;
            Ok(chosen)
        });
        match chosen {
            Ok(chosen) => {
                if best.as_ref().is_none_or(|b| newest(&chosen) > newest(b)) {
                    best = Some(chosen);
                }
            }
            Err(why) if held_between => refused.push((group_newest, why.to_string())),
            Err(_) => {}
        }
    }
    let chosen_at = best.as_deref().and_then(newest);
    let refused = refused
        .into_iter()
        .filter(|(at, _)| *at > chosen_at)
        .map(|(_, why)| why)
        .collect();
    (best, refused)
}

/// The second step of the restore order: when the live store is empty and
/// `[savepoints] restore_when_missing` is on (the default), restores the
/// newest verified savepoint (or shares of one) into it. Returns the ones
/// restored, if any.
pub fn restore_savepoint_if_missing(config: &Config) -> Result<Option<Vec<Savepoint>>> {
    let Some(savepoints) = config
        .savepoints
        .as_ref()
        .filter(|s| s.restore_when_missing)
    else {
        return Ok(None);
    };
    {
        let store = RocksStore::open(&config.state.dir).context("open state store")?;
        if !store.is_empty().context("read state")? {
            return Ok(None);
        }
    }
    if !savepoints.dir.exists() {
        return Ok(None);
    }
    let (valid, invalid) = savepoint::list(&savepoints.dir)?;
    for err in invalid {
        tracing::warn!("skipping invalid savepoint: {err}");
    }
    if valid.is_empty() {
        return Ok(None);
    }
    let partitions = owned_partitions(config);
    let (chosen, refused) = newest_covering(valid, partitions.as_ref());
    for why in refused {
        tracing::warn!("passing over newer savepoints that do not merge: {why}");
    }
    let Some(chosen) = chosen else {
        tracing::warn!(
            "no valid savepoint under {} holds {}: none restored",
            savepoints.dir.display(),
            describe_partitions(partitions.as_ref())
        );
        return Ok(None);
    };
    restore_chosen(config, chosen, partitions.as_ref()).map(Some)
}

/// A fresh engine over `partitions` with the config's versions.
pub fn fresh_engine(config: &Config, partitions: impl IntoIterator<Item = u32>) -> Result<Engine> {
    let registry =
        Registry::with_versions(config.version_specs()).context("configured versions")?;
    Ok(Engine::new(config.engine(), registry, partitions))
}

/// Opens the engine of a file, stdin or simulator source (one partition):
/// restored from the store, or fresh. Returns whether it was restored and
/// the checkpointed dead-letter file length.
pub fn open_engine(config: &Config, store: &RocksStore) -> Result<(Engine, bool, Option<u64>)> {
    let (engine, restored, dead_len, _) = open_engine_seeding(config, store, false)?;
    Ok((engine, restored, dead_len))
}

/// [`open_engine`], seeding (when `seed`) the versions without state from
/// the config's `[fallback]`. Also returns the number of keys seeded.
fn open_engine_seeding(
    config: &Config,
    store: &RocksStore,
    seed: bool,
) -> Result<(Engine, bool, Option<u64>, Seeded)> {
    let (mut engine, restored, dead_len, stateless) = match restore_engine_adding(config, store)? {
        Some((engine, dead_len, added)) => (engine, true, dead_len, added),
        None => {
            let engine = fresh_engine(config, [LOCAL_PARTITION])?;
            let all = names(&engine);
            (engine, false, None, all)
        }
    };
    let seeded = if seed {
        seed_stateless(&mut engine, &stateless, !restored, config, None)?
    } else {
        Seeded::default()
    };
    Ok((engine, restored, dead_len, seeded))
}

fn names(engine: &Engine) -> Vec<String> {
    engine
        .registry()
        .entries()
        .iter()
        .map(|e| e.spec.name.clone())
        .collect()
}

/// Seeds each of `versions` (none of which has state) from the config's
/// served-parameters source, the restore of last resort; returns what it
/// registered and seeded. The source is only opened when a version needs
/// it. An engine `fresh` (nothing restored) first registers the served
/// versions it lacks: those created at run time, whose commands it does
/// not replay. With `owned` (partitions, partition count), only the docs
/// of those partitions: the served parameters hold every learner's, and
/// a key of another learner's partition would be this one's from then on
/// (a rollback would reset it, under sequence numbers its owner also
/// uses).
fn seed_stateless(
    engine: &mut Engine,
    versions: &[String],
    fresh: bool,
    config: &Config,
    owned: Option<(&BTreeSet<u32>, u32)>,
) -> Result<Seeded> {
    let mut seeded = Seeded::default();
    if versions.is_empty() && !fresh {
        return Ok(seeded);
    }
    let Some(mut served) = open_served(config)? else {
        return Ok(seeded);
    };
    let mut versions = versions.to_vec();
    if fresh {
        for listed in served.versions().context("list the served versions")? {
            let name = listed.spec.name.clone();
            if engine.registry().id(&name).is_some() {
                continue; // the config's spec stands
            }
            engine
                .register_served(listed)
                .with_context(|| format!("register the served version {name:?}"))?;
            tracing::warn!(
                "version {name:?}, not in the config (created at run time), registered \
                 as the served parameters list it"
            );
            versions.push(name);
            seeded.versions += 1;
        }
    }
    for name in &versions {
        let spec = engine
            .registry()
            .id(name)
            .and_then(|id| engine.registry().get(id))
            .map(|e| e.spec.clone())
            .with_context(|| format!("version {name:?} to seed"))?;
        let mut states = served
            .fetch(&spec)
            .with_context(|| format!("fetch served parameters of {name:?}"))?;
        if let Some((partitions, count)) = owned {
            states.retain(|(doc_id, _)| {
                partitions.contains(&crate::partitioning::partition_of(*doc_id, count))
            });
        }
        if states.is_empty() {
            continue;
        }
        let newest = states
            .iter()
            .map(|(_, state)| state.updated_event_time_ms)
            .filter(|&t| t != i64::MIN)
            .max();
        seeded.newest_event_ms = seeded.newest_event_ms.max(newest);
        let n = engine
            .seed_version(name, states)
            .with_context(|| format!("seed {name:?} from served parameters"))?;
        tracing::warn!(
            "version {name:?} had neither live state nor savepoint: seeded {n} keys \
             from served parameters; samples between those and the start position may be \
             missed or counted twice"
        );
        seeded.keys += n;
    }
    Ok(seeded)
}

/// What [`seed_stateless`] did: served versions registered, keys seeded.
#[derive(Debug, Clone, Copy, Default)]
struct Seeded {
    versions: usize,
    keys: usize,
    /// The newest event time any seeded key had applied: the learner that
    /// published them had released past it, so it had applied every
    /// command stamped at or before it.
    newest_event_ms: Option<i64>,
}

impl Seeded {
    /// Whether the engine holds anything from the served parameters: then
    /// it is checkpointed before the first record, and the control
    /// topic's commands those parameters hold are not replayed onto it
    /// (see `CommandSources::open`).
    fn any(self) -> bool {
        self.versions > 0 || self.keys > 0
    }
}

/// After a seed from served parameters, a checkpoint before anything is
/// read or published: a crash before the first one would otherwise seed
/// again, from served parameters that have moved on with what this run
/// published, and replay the same records onto another base (one
/// sequence number, two values).
fn checkpoint_seeded(
    checkpointer: &mut Checkpointer,
    engine: &mut Engine,
    seeded: Seeded,
) -> Result<()> {
    if seeded.any() {
        checkpointer.checkpoint(engine, 0)?;
        checkpointer.wait()?;
    }
    Ok(())
}

/// The served-parameters source the config names (`[fallback]`), if any.
pub fn open_served(config: &Config) -> Result<Option<Box<dyn ServedParams>>> {
    let Some(fallback) = config.fallback.as_ref() else {
        return Ok(None);
    };
    if let Some(kafka) = &fallback.kafka {
        return Ok(Some(Box::new(
            ParamsTopic::read(
                &kafka.brokers,
                &kafka.topic,
                Duration::from_millis(kafka.request_timeout_ms),
            )
            .context("read the params topic for the fallback restore")?,
        )));
    }
    if let Some(server) = &fallback.param_server {
        let token = match &server.token_file {
            Some(path) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("read fallback.param_server.token_file {path:?}"))?
                    .trim()
                    .to_owned(),
            ),
            None => None,
        };
        return Ok(Some(Box::new(crate::served::ParamServerSource::new(
            &server.endpoint,
            Duration::from_millis(server.request_timeout_ms),
            token,
        )?)));
    }
    Ok(None)
}

/// The sink the config names: the Kafka `params` topic, or none.
pub fn open_sink(config: &Config) -> Result<Box<dyn ParamSink>> {
    Ok(
        match config.publish.as_ref().and_then(|p| p.kafka.as_ref()) {
            Some(kafka) => Box::new(
                KafkaSink::open(
                    &kafka.brokers,
                    &kafka.topic,
                    Duration::from_millis(kafka.flush_timeout_ms),
                )
                .context("open params topic")?
                .with_announcement_key(crate::params::announcement_key(
                    owned_partitions(config).as_ref(),
                )),
            ),
            None => Box::new(NullSink::default()),
        },
    )
}

/// Runs a file, stdin or simulator source to its end, publishing to the
/// config's sink (a simulator without `samples` never ends: see
/// [`run_local`]).
pub fn run_bounded(config: &Config) -> Result<RunSummary> {
    run_bounded_with(config, open_sink(config)?)
}

/// Runs a file, stdin or simulator source to its end, publishing to `sink`.
pub fn run_bounded_with(config: &Config, sink: Box<dyn ParamSink>) -> Result<RunSummary> {
    run_local(config, &Controls::default(), sink)
}

/// Runs a source of one partition read in this process — a file, stdin or
/// the simulator — to its end (then releases and applies everything, and
/// checkpoints), or until `controls.stop` is set (then checkpoints without
/// ending the input, so the next run resumes where this one stopped).
/// Admin commands come from `controls` and the `control` topic when
/// configured.
pub fn run_local(
    config: &Config,
    controls: &Controls,
    sink: Box<dyn ParamSink>,
) -> Result<RunSummary> {
    run_local_with(config, controls, sink, None)
}

/// [`run_local`], with the records of a `[source] kind = "channel"` pushed
/// by the caller into `pushed` (its senders dropped = the end of the
/// input). While no record arrives the run still polls commands and
/// publishes every publish interval.
pub fn run_local_with(
    config: &Config,
    controls: &Controls,
    sink: Box<dyn ParamSink>,
    pushed: Option<Receiver<Payload>>,
) -> Result<RunSummary> {
    let store = RocksStore::open(&config.state.dir).context("open state store")?;
    let (mut engine, restored, dead_len, seeded) = open_engine_seeding(config, &store, true)?;
    let commands = CommandSources::open(config, controls, &mut engine, seeded)?;
    let mut checkpointer =
        Checkpointer::new(config, store, dead_len, sink)?.with_metrics(controls.metrics.clone());
    checkpointer.export(&engine);
    checkpoint_seeded(&mut checkpointer, &mut engine, seeded)?;
    let mut records = 0_u64;
    let mut since_checkpoint = 0_u64;
    // A restored engine may be held at a savepoint it was taking.
    run_barriers(&mut engine, &mut checkpointer, config, 1, records)?;
    let offset = engine
        .next_offsets()
        .get(&LOCAL_PARTITION)
        .copied()
        .unwrap_or(0);
    let publish_every = Duration::from_millis(config.publish_interval_ms());
    // A quiet stdin or channel wakes the loop every publish interval, at
    // least a millisecond apart (`interval_ms = 0` would spin).
    let idle_after = publish_every.max(Duration::from_millis(1));
    let mut source = LocalSource::open(config, offset, pushed, idle_after)?;
    if let LocalSource::File(file) = &source
        && let Some(contexts) = file.context_return()
    {
        engine.return_contexts_to(contexts);
    }
    let poll_every = source.poll_every();
    let mut stopped = false;
    let mut last_publish = Instant::now();
    loop {
        if controls.savepoint.load(Ordering::Relaxed)
            && controls.savepoint.swap(false, Ordering::Relaxed)
        {
            // As in a Kafka run: a failed checkpoint write ends the run,
            // and a savepoint that cannot be taken is reported.
            checkpointer.checkpoint(&mut engine, records)?;
            checkpointer.wait()?;
            if let Err(err) = checkpointer.savepoint(config, 1, records) {
                tracing::error!("savepoint asked for by signal not taken: {err:#}");
            }
            since_checkpoint = 0;
        }
        let next = source.next_record()?;
        if records.is_multiple_of(poll_every) || matches!(next, Next::Idle) {
            if commands
                .poll(&mut engine)?
                .settle(&mut checkpointer, &mut engine, records)?
            {
                since_checkpoint = 0;
            }
            run_barriers(&mut engine, &mut checkpointer, config, 1, records)?;
            // Every source publishes every interval, as the Kafka driver
            // does; a quiet one (stdin, a channel) from `Next::Idle`.
            if last_publish.elapsed() >= publish_every {
                checkpointer.publish(&mut engine)?;
                last_publish = Instant::now();
            }
        }
        let (offset, next_offset, payload) = match next {
            Next::Record(offset, next_offset, payload) => (offset, next_offset, payload),
            Next::Idle => {
                if controls.stop.load(Ordering::Relaxed) {
                    stopped = true;
                    break;
                }
                // A checkpoint put off while the previous write ran is
                // taken here, not at a record that may be long in coming.
                checkpoint_if_due(
                    config,
                    &mut checkpointer,
                    &mut engine,
                    records,
                    &mut since_checkpoint,
                )?;
                continue;
            }
            Next::End => break,
        };
        engine.ingest_at(LOCAL_PARTITION, offset, next_offset, payload);
        records += 1;
        if engine.barrier().is_some() {
            run_barriers(&mut engine, &mut checkpointer, config, 1, records)?;
        }
        checkpointer.failpoint.hit("after_ingest", records);
        since_checkpoint += 1;
        // A due checkpoint is put off while the previous write runs, to
        // the next record or the next `Next::Idle` (stdin, a channel). At
        // the end of a bounded input the last checkpoint comes next
        // (`finish`): one due now is left to it, as in a Kafka run.
        let due = checkpoint_due(&config.state, since_checkpoint, Duration::ZERO, false);
        if !(due && source.at_end()?) {
            checkpoint_if_due(
                config,
                &mut checkpointer,
                &mut engine,
                records,
                &mut since_checkpoint,
            )?;
        }
        if controls.stop.load(Ordering::Relaxed) {
            stopped = true;
            break;
        }
    }
    // Confirmed by the last checkpoint.
    let owed = commands.poll(&mut engine)?;
    run_barriers(&mut engine, &mut checkpointer, config, 1, records)?;
    if !stopped {
        while !engine.finish() {
            run_barriers(&mut engine, &mut checkpointer, config, 1, records)?;
        }
    }
    let stopping = Instant::now();
    checkpointer.finish(&mut engine, records)?;
    owed.give();
    if config.savepoints.as_ref().is_some_and(|s| s.on_shutdown) {
        checkpointer.savepoint(config, 1, records)?;
    }
    Ok(RunSummary {
        restored,
        records,
        checkpoints: checkpointer.completed(),
        counters: engine.counters().clone(),
        throttles: 0,
        seeded: seeded.keys,
        shutdown: stopping.elapsed(),
    })
}

/// Records between two looks at the command inbox in a bounded run.
const COMMAND_POLL_EVERY: u64 = 1024;

/// Records between two looks at the command sources in a Kafka run (and
/// at every pass that read no record): taking the inbox's lock at every
/// record waited for the record's stores to drain (a locked instruction),
/// and a control topic is a librdkafka poll.
const KAFKA_COMMAND_POLL_EVERY: u64 = 256;

/// Records between two looks at the inbox and the publish clock when the
/// records are pushed live (a channel), so updates leave within about one
/// publish interval at any input rate.
const CHANNEL_POLL_EVERY: u64 = 32;

/// What a local source yields.
enum Next {
    /// (offset, next offset, payload).
    Record(u64, u64, Payload),
    /// Nothing arrived within a publish interval (stdin, a channel).
    Idle,
    /// The end of the input.
    End,
}

/// A source of one partition read in this process.
enum LocalSource {
    /// A file, read and decoded on a second thread; offsets are byte
    /// positions.
    File(FileReadAhead),
    /// Standard input, read on a thread of its own and taken with a
    /// timeout, so a quiet pipe leaves the run loop idle, not blocked;
    /// offsets are byte positions.
    Stdin {
        /// The reader.
        reader: StdinReader,
        /// How long a read waits before reporting [`Next::Idle`].
        idle_after: Duration,
    },
    /// The simulator; sample t at offset t.
    Simulator(Box<Simulator>),
    /// Records pushed by the hosting process, numbered from `next`.
    Channel {
        /// The records; all senders dropped = the end.
        records: Receiver<Payload>,
        /// Offset of the next record.
        next: u64,
        /// How long a receive waits before reporting [`Next::Idle`].
        idle_after: Duration,
    },
}

impl LocalSource {
    /// Opens the configured source at `offset` (a checkpointed next
    /// offset, or 0); a channel source takes `pushed`.
    fn open(
        config: &Config,
        offset: u64,
        pushed: Option<Receiver<Payload>>,
        idle_after: Duration,
    ) -> Result<Self> {
        Ok(match &config.source {
            SourceConfig::File { path, format } => Self::File(
                FileSource::open(path, *format, offset)
                    .and_then(FileReadAhead::start)
                    .with_context(|| format!("open {}", path.display()))?,
            ),
            SourceConfig::Stdin { format } => Self::Stdin {
                reader: StdinReader::start(FileSource::stdin(*format))
                    .context("start reading stdin")?,
                idle_after,
            },
            SourceConfig::Simulator(simulator) => Self::Simulator(Box::new(
                Simulator::new(simulator, &config.version_specs(), offset)
                    .context("start the simulator")?,
            )),
            SourceConfig::Channel => Self::Channel {
                records: pushed.context(
                    "[source] kind = \"channel\" is fed by the process hosting the learner \
                     (`learner quickstart`); `learner run` has nothing to push",
                )?,
                next: offset,
                idle_after,
            },
            SourceConfig::Kafka(_) => {
                anyhow::bail!("run_local reads files, stdin and the simulator; use run_kafka")
            }
        })
    }

    /// Records between two looks at commands and the publish clock.
    fn poll_every(&self) -> u64 {
        match self {
            Self::Channel { .. } | Self::Stdin { .. } => CHANNEL_POLL_EVERY,
            Self::File(_) | Self::Simulator(_) => COMMAND_POLL_EVERY,
        }
    }

    /// The next record, or the end of the input, or (stdin, a channel)
    /// idleness.
    fn next_record(&mut self) -> Result<Next> {
        let record = |r: Option<(u64, u64, Payload)>| {
            r.map_or(Next::End, |(offset, next, payload)| {
                Next::Record(offset, next, payload)
            })
        };
        Ok(match self {
            Self::File(file) => record(file.next_record().context("read source")?),
            Self::Stdin { reader, idle_after } => match reader.next_record(*idle_after) {
                Some(item) => record(item.context("read source")?),
                None => Next::Idle,
            },
            Self::Simulator(simulator) => record(
                simulator
                    .next_record()
                    .map(|(offset, payload)| (offset, offset + 1, payload)),
            ),
            Self::Channel {
                records,
                next,
                idle_after,
            } => match records.recv_timeout(*idle_after) {
                Ok(payload) => {
                    *next += 1;
                    Next::Record(*next - 1, *next, payload)
                }
                Err(RecvTimeoutError::Timeout) => Next::Idle,
                Err(RecvTimeoutError::Disconnected) => Next::End,
            },
        })
    }

    /// True when the next read is known to report the end: a file with no
    /// byte left, a simulator past its `samples`. False when that is not
    /// known without waiting (stdin, a channel).
    fn at_end(&mut self) -> Result<bool> {
        Ok(match self {
            Self::File(file) => file.at_end(),
            Self::Simulator(simulator) => simulator.at_end(),
            Self::Stdin { .. } | Self::Channel { .. } => false,
        })
    }
}

/// How a Kafka run ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaRunMode {
    /// Until `stop` is set (a signal): checkpoint and return.
    Unbounded,
    /// Until every partition reaches the high watermark it had at start,
    /// then end the input like a file (release and apply everything) —
    /// for replays, backfills and tests.
    UntilEnd,
}

/// Requests to a running learner: flags set from signal handlers, and
/// admin commands handed over in process.
#[derive(Debug, Default, Clone)]
pub struct Controls {
    /// Checkpoint and return (SIGTERM, SIGINT).
    pub stop: Arc<AtomicBool>,
    /// Checkpoint and take a savepoint, then go on (SIGUSR1).
    pub savepoint: Arc<AtomicBool>,
    /// Admin commands from an embedded param-server.
    pub commands: CommandInbox,
    /// Where the run reports its metrics (every publish, checkpoint and
    /// savepoint); none when absent.
    pub metrics: Option<Arc<LearnerMetrics>>,
}

/// Admin commands handed to a running learner in process (the embedded
/// control path; standalone deployments use the `control` topic). The
/// learner takes them between records (every few hundred records, and
/// whenever its source is idle) and schedules them at their event time. A
/// command sent with [`CommandInbox::send_confirmed`] is confirmed once a
/// checkpoint holding it is written: the learner takes that checkpoint at
/// once, so an admin call that waits for the confirmation survives a
/// crash. One sent with [`CommandInbox::send`] is durable from the next
/// checkpoint; one lost in a crash before that must be sent again (its id
/// makes a resend harmless).
#[derive(Debug, Default, Clone)]
pub struct CommandInbox(Arc<Mutex<Vec<Inboxed>>>);

/// Called once a command is durable.
type Confirm = Box<dyn FnOnce() + Send>;

/// A command waiting in the inbox, with its confirmation if it has one.
struct Inboxed {
    command: posterior_proto::v1::ControlCommand,
    confirm: Option<Confirm>,
}

impl std::fmt::Debug for Inboxed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inboxed")
            .field("command", &self.command)
            .field("confirmed", &self.confirm.is_some())
            .finish()
    }
}

impl CommandInbox {
    /// Hands a command to the learner.
    pub fn send(&self, command: posterior_proto::v1::ControlCommand) {
        self.push(Inboxed {
            command,
            confirm: None,
        });
    }

    /// Hands a command to the learner, which calls `durable` once it has
    /// taken the command and written a checkpoint after that: the command
    /// is then in the checkpoint's backlog, or applied, or was refused (a
    /// repeated id, an undecodable command: sending it again changes
    /// nothing). A learner that stops first (a crash, a failed checkpoint)
    /// drops `durable` uncalled.
    pub fn send_confirmed(
        &self,
        command: posterior_proto::v1::ControlCommand,
        durable: impl FnOnce() + Send + 'static,
    ) {
        self.push(Inboxed {
            command,
            confirm: Some(Box::new(durable)),
        });
    }

    fn push(&self, inboxed: Inboxed) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(inboxed);
    }

    fn take(&self) -> Vec<Inboxed> {
        std::mem::take(
            &mut *self
                .0
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }
}

/// Confirmations owed once a checkpoint is written.
#[derive(Default)]
#[must_use = "the confirmations are owed after a checkpoint"]
struct Owed(Vec<Confirm>);

impl Owed {
    /// Takes a checkpoint now and waits for it when a confirmation is
    /// owed, then gives them. Returns whether it checkpointed.
    fn settle(
        self,
        checkpointer: &mut Checkpointer,
        engine: &mut Engine,
        records: u64,
    ) -> Result<bool> {
        if self.0.is_empty() {
            return Ok(false);
        }
        checkpointer.checkpoint(engine, records)?;
        checkpointer.wait()?;
        self.give();
        Ok(true)
    }

    /// Gives every confirmation (the checkpoint holding the commands is
    /// written).
    fn give(self) {
        for confirm in self.0 {
            confirm();
        }
    }
}

/// Where admin commands come from: the in-process inbox and, when
/// configured, the `control` topic.
struct CommandSources {
    inbox: CommandInbox,
    topic: Option<ControlReader>,
}

impl CommandSources {
    /// Opens the `control` topic at the engine's checkpointed offset and
    /// schedules every command already on it.
    ///
    /// An engine `seeded` from served parameters has no control offset:
    /// it reads the topic from its start but skips the commands stamped at
    /// or before the newest event time the seeded keys had applied. The
    /// learner that published those had released past them, so the served
    /// parameters hold what they did, and replaying them (a fork, a
    /// rollback) onto them would do it again. A command stamped later — an
    /// admin call the other learners have not applied yet — is scheduled as
    /// on any learner. Replaying one the publisher had applied after its
    /// last published update is harmless: a create or fork finds its
    /// version registered from the served listing, a savepoint finds its
    /// directory written, a rollback resets keys to the values they hold.
    /// Without any seeded event time (versions registered, no keys), the
    /// topic is started at its end, as nothing tells which commands the
    /// parameters hold.
    fn open(
        config: &Config,
        controls: &Controls,
        engine: &mut Engine,
        seeded: Seeded,
    ) -> Result<Self> {
        let topic = match &config.control {
            Some(control) => {
                let mut skip_through = None;
                if seeded.any() && engine.control_offset().is_none() {
                    match seeded.newest_event_ms {
                        Some(newest) => skip_through = Some(newest),
                        None => {
                            let end = crate::kafka::control_end(control)
                                .context("read the end of the control topic")?;
                            tracing::warn!(
                                "seeded from served parameters that hold no applied sample: \
                                 the {end} earlier records of the control topic are not \
                                 replayed"
                            );
                            engine.set_control_offset(end);
                        }
                    }
                }
                let reader = ControlReader::open(control, engine.control_offset())
                    .context("open the control topic")?;
                let backlog = reader
                    .read_to_end(engine.control_offset())
                    .context("read the control topic")?;
                schedule_records(engine, backlog, skip_through);
                Some(reader)
            }
            None => None,
        };
        let sources = Self {
            inbox: controls.commands.clone(),
            topic,
        };
        Ok(sources)
    }

    /// Schedules the commands that arrived since the last call; returns
    /// the confirmations owed once a checkpoint holds them.
    fn poll(&self, engine: &mut Engine) -> Result<Owed> {
        let mut owed = Owed::default();
        for Inboxed { command, confirm } in self.inbox.take() {
            schedule_command(engine, Scheduled::try_from(command), "inbox");
            owed.0.extend(confirm);
        }
        if let Some(reader) = &self.topic {
            schedule_records(
                engine,
                reader.poll_ready().context("read the control topic")?,
                None,
            );
        }
        Ok(owed)
    }
}

/// Schedules the control topic's `records` (offset, value) and moves the
/// engine's control offset past each. A learner seeded from served
/// parameters that had applied samples up to event time `seeded_through`
/// skips the commands stamped at or before it (the parameters hold what
/// they did).
fn schedule_records(
    engine: &mut Engine,
    records: Vec<(u64, Vec<u8>)>,
    seeded_through: Option<i64>,
) {
    let (mut skipped, mut kept) = (0_usize, 0_usize);
    for (offset, bytes) in records {
        match Scheduled::decode(&bytes) {
            Ok(command) if seeded_through.is_some_and(|t| command.at_ms <= t) => skipped += 1,
            decoded => {
                kept += 1;
                schedule_command(engine, decoded, &format!("control topic offset {offset}"));
            }
        }
        engine.set_control_offset(offset + 1);
    }
    if let Some(newest_ms) = seeded_through {
        tracing::warn!(
            "seeded from served parameters that had applied samples up to event time \
             {newest_ms}: {skipped} control commands stamped at or before it are not replayed \
             (the served parameters hold what they did); {kept} later ones are scheduled"
        );
    }
}

fn schedule_command(
    engine: &mut Engine,
    command: Result<Scheduled, crate::control::ControlError>,
    origin: &str,
) {
    match command {
        Ok(command) => {
            let (id, at) = (command.id.clone(), command.at_ms);
            match engine.schedule(command) {
                ScheduleResult::Scheduled => {
                    tracing::info!("control: {id:?} from {origin} scheduled at event time {at}");
                }
                ScheduleResult::AppliedLate => tracing::info!(
                    "control: {id:?} from {origin} is stamped {at}, already released: \
                     applied at the current watermark"
                ),
                ScheduleResult::Duplicate => {}
            }
        }
        Err(err) => tracing::warn!("control: {origin}: refused: {err}"),
    }
}

/// Runs the Kafka source: restore, assign the partitions at the
/// checkpointed offsets, ingest, checkpoint every N records or T ms, and
/// on `stop` (or at the end, see [`KafkaRunMode`]) checkpoint and return.
pub fn run_kafka(config: &Config, mode: KafkaRunMode, controls: &Controls) -> Result<RunSummary> {
    run_kafka_with(config, mode, controls, open_sink(config)?)
}

/// How far (event time) the Kafka source reads ahead of its slowest
/// partition, and the slack of the throttle (see `ahead_partitions`): the
/// out-of-orderness, at least `MIN_THROTTLE_SLACK_MS`. Reads aligned
/// this way keep a catch-up from filling the reorder buffer with one
/// partition.
pub fn throttle_slack_ms(config: &Config) -> i64 {
    config.order.out_of_orderness_ms.max(MIN_THROTTLE_SLACK_MS)
}

/// [`run_kafka`] publishing to `sink`.
pub fn run_kafka_with(
    config: &Config,
    mode: KafkaRunMode,
    controls: &Controls,
    sink: Box<dyn ParamSink>,
) -> Result<RunSummary> {
    let SourceConfig::Kafka(kafka) = &config.source else {
        anyhow::bail!("run_kafka needs a kafka source");
    };
    let store = RocksStore::open(&config.state.dir).context("open state store")?;
    let restored = restore_engine_adding(config, &store)?;
    let (offsets, dead_len) = match &restored {
        Some((engine, dead_len, _)) => (engine.next_offsets().clone(), *dead_len),
        None => (BTreeMap::new(), None),
    };
    let slack_ms = throttle_slack_ms(config);
    let mut source =
        KafkaSource::open(kafka, &offsets, Some(slack_ms)).context("open kafka source")?;
    let partitions: BTreeSet<u32> = source.partitions().iter().copied().collect();
    let was_restored = restored.is_some();
    let (mut engine, stateless) = match restored {
        Some((engine, _, added)) => {
            let owned: BTreeSet<u32> = engine.clocks().keys().copied().collect();
            anyhow::ensure!(
                owned == partitions,
                "the live state belongs to partitions {owned:?} but this instance reads \
                 {partitions:?}; to rescale, restore a savepoint"
            );
            (engine, added)
        }
        None => {
            let engine = fresh_engine(config, partitions.iter().copied())?;
            let all = names(&engine);
            (engine, all)
        }
    };
    engine.return_contexts_to(source.context_return());
    for (&partition, &offset) in source.start_offsets() {
        engine.start_partition_at(partition, offset);
    }
    let seeded = seed_stateless(
        &mut engine,
        &stateless,
        !was_restored,
        config,
        Some((&partitions, source.partition_count())),
    )?;
    let commands = CommandSources::open(config, controls, &mut engine, seeded)?;
    let mut checkpointer =
        Checkpointer::new(config, store, dead_len, sink)?.with_metrics(controls.metrics.clone());
    checkpointer.export(&engine);
    checkpoint_seeded(&mut checkpointer, &mut engine, seeded)?;
    // Deadlines, not durations since: comparing two instants is cheaper
    // than subtracting them, once per record. `None`: never (an interval
    // past the clock's range).
    let publish_every = Duration::from_millis(config.publish_interval_ms());
    let mut publish_at = Instant::now().checked_add(publish_every);
    let mut status_at = Instant::now() + STATUS_EVERY;
    let checkpoint_timer = Duration::from_millis(config.state.checkpoint_every_ms);
    let mut end = match mode {
        KafkaRunMode::UntilEnd => Some(EndOfInput::new(
            source.high_watermarks().context("read high watermarks")?,
        )),
        KafkaRunMode::Unbounded => None,
    };
    let idle_after = Duration::from_millis(kafka.idle_timeout_ms);
    // Only an unbounded run marks quiet partitions idle (a bounded one
    // marks them at their end): the time of each one's last record.
    let marks_idle = end.is_none() && kafka.idle_timeout_ms > 0;
    let mut last_record: BTreeMap<u32, Instant> =
        partitions.iter().map(|&p| (p, Instant::now())).collect();
    let mut caught_up = BTreeSet::new();
    let mut paused: Vec<u32> = Vec::new();
    let mut throttling = false;
    let mut throttles = 0_u64;
    let mut records = 0_u64;
    let mut since_checkpoint = 0_u64;
    let mut checkpoint_at = Instant::now().checked_add(checkpoint_timer);
    // Consumption starts here: the watchdog's clock with it (see
    // `watchdog`); it stops when the loop ends, before the last checkpoint.
    let progress = Arc::new(Progress::new(source.partitions(), engine.next_offsets()));
    let watchdog = Watchdog::start(kafka, Arc::clone(&progress), controls.metrics.clone())?;
    // The clock is read once per pass, after the poll: reading it for each
    // interval check cost ~10 % of this loop's thread in bench 3's profile.
    // A record handed on from a batch the source already holds (no wait)
    // reads it only every `CLOCK_EVERY_RECORDS` records: then `now` lags
    // the clock by at most that many records' work.
    let mut now = Instant::now();
    // The last poll gave no record.
    let mut idle_pass = true;
    loop {
        if controls.stop.load(Ordering::Relaxed) {
            break;
        }
        // A load first: a swap is a locked write, once per record.
        if controls.savepoint.load(Ordering::Relaxed)
            && controls.savepoint.swap(false, Ordering::Relaxed)
        {
            checkpointer.checkpoint(&mut engine, records)?;
            // A failed checkpoint write ends the run, as at any other
            // checkpoint: its changes are marked stored. Then a savepoint
            // that cannot be taken (no `[savepoints]`, a full disk) is
            // reported, and the run goes on.
            checkpointer.wait()?;
            if let Err(err) = checkpointer.savepoint(config, source.partition_count(), records) {
                tracing::error!("savepoint asked for by signal not taken: {err:#}");
            }
            since_checkpoint = 0;
            checkpoint_at = Instant::now().checked_add(checkpoint_timer);
        }
        if idle_pass || records.is_multiple_of(KAFKA_COMMAND_POLL_EVERY) {
            let owed = commands.poll(&mut engine)?;
            if owed.settle(&mut checkpointer, &mut engine, records)? {
                since_checkpoint = 0;
                checkpoint_at = Instant::now().checked_add(checkpoint_timer);
            }
        }
        if engine.barrier().is_some() {
            run_barriers(
                &mut engine,
                &mut checkpointer,
                config,
                source.partition_count(),
                records,
            )?;
        }
        if let Some(done) = checkpointer.poll()?
            && let Err(err) = source.commit_informational(&done.offsets)
        {
            tracing::warn!("informational offset commit failed: {err}");
        }
        if let Some(end) = &mut end {
            if end.reached(&engine) {
                while !engine.finish() {
                    run_barriers(
                        &mut engine,
                        &mut checkpointer,
                        config,
                        source.partition_count(),
                        records,
                    )?;
                }
                break;
            }
            end.idle_finished(&mut engine);
        }
        // Backpressure: from the moment the reorder buffer is full until it
        // is half empty again, partitions far ahead of the one holding the
        // watermark back are paused (see `ahead_partitions`).
        let throttled = engine.buffer_full() || (throttling && !engine.buffer_half_empty());
        if throttled && !throttling {
            throttles += 1;
        }
        throttling = throttled;
        let want_paused = if throttled {
            ahead_partitions(engine.clocks(), &paused, slack_ms)
        } else {
            Vec::new()
        };
        // Both empty is the common case, and skipped before comparing: the
        // comparison of two empty vectors is a `memcmp` of dangling
        // pointers, which glibc's AVX-512 version serves with a masked load
        // that costs a microcode assist — 9-14 % of this loop's time in
        // bench 3's profile, once per record.
        if !(want_paused.is_empty() && paused.is_empty()) && want_paused != paused {
            source.set_paused(&want_paused);
            paused = want_paused;
        }
        if now >= status_at {
            export_lag(controls, &source, &engine);
            tracing::info!(
                "{records} records, next offsets {:?}, {} buffered below watermark {}, \
                 paused {paused:?}, caught up {caught_up:?}",
                engine.next_offsets(),
                engine.buffered(),
                engine.instance_watermark(),
            );
            status_at = now + STATUS_EVERY;
        }
        let waits = !source.has_buffered();
        let polled = source.poll(Duration::from_millis(100))?;
        if waits || records.is_multiple_of(CLOCK_EVERY_RECORDS) {
            now = Instant::now();
        }
        idle_pass = !matches!(polled, Polled::Record { .. });
        match polled {
            Polled::Record {
                partition,
                offset,
                payload,
            } => {
                engine.ingest(partition, offset, payload);
                if let Some(end) = &mut end {
                    end.touched(partition);
                }
                progress.set(partition, offset + 1);
                records += 1;
                since_checkpoint += 1;
                if !caught_up.is_empty() {
                    caught_up.remove(&partition);
                }
                if marks_idle {
                    if let Some(last) = last_record.get_mut(&partition) {
                        *last = now;
                    } else {
                        last_record.insert(partition, now);
                    }
                }
                checkpointer.failpoint.hit("after_ingest", records);
            }
            Polled::CaughtUp {
                partition,
                next_offset,
            } => {
                caught_up.insert(partition);
                if let Some(next) = end_past_last_record(&mut engine, partition, next_offset) {
                    // The end of a bounded run, the watchdog's progress and
                    // the lag count it.
                    progress.set(partition, next);
                    if let Some(end) = &mut end {
                        end.touched(partition);
                    }
                }
            }
            Polled::Nothing(Some(err)) => tracing::warn!("kafka: {err}"),
            Polled::Nothing(None) => {}
        }
        if marks_idle {
            for &p in &caught_up {
                let quiet = last_record
                    .get(&p)
                    .is_none_or(|&t| now.duration_since(t) >= idle_after);
                if quiet && engine.clocks().get(&p).is_some_and(|c| !c.idle) {
                    engine.set_idle(p, true);
                }
            }
        }
        if publish_at.is_some_and(|at| now >= at) {
            checkpointer.publish(&mut engine)?;
            publish_at = Instant::now().checked_add(publish_every);
        }
        let timer = checkpoint_at.is_some_and(|at| now >= at);
        let busy = checkpointer.busy();
        if checkpoint_due_by(&config.state, since_checkpoint, timer, busy) {
            // A bounded run at its end takes its last checkpoint next
            // (`finish`), which would first wait for this one: the state
            // written twice back to back, all of it on the shutdown.
            if !end.as_mut().is_some_and(|end| end.reached(&engine)) {
                checkpointer.checkpoint(&mut engine, records)?;
                since_checkpoint = 0;
                checkpoint_at = Instant::now().checked_add(checkpoint_timer);
            }
        } else if busy && checkpoint_due_by(&config.state, since_checkpoint, timer, false) {
            checkpointer.store_ahead(&config.state, &mut engine);
        }
    }
    drop(watchdog);
    let stopping = Instant::now();
    checkpointer.finish(&mut engine, records)?;
    export_lag(controls, &source, &engine);
    if let Some(done) = checkpointer.last_write()
        && let Err(err) = source.commit_informational(&done.offsets)
    {
        tracing::warn!("informational offset commit failed: {err}");
    }
    if config.savepoints.as_ref().is_some_and(|s| s.on_shutdown) {
        checkpointer.savepoint(config, source.partition_count(), records)?;
    }
    Ok(RunSummary {
        restored: was_restored,
        records,
        checkpoints: checkpointer.completed(),
        counters: engine.counters().clone(),
        throttles,
        seeded: seeded.keys,
        shutdown: stopping.elapsed(),
    })
}

/// Where a [`KafkaRunMode::UntilEnd`] run stops: every partition's high
/// watermark at start. A partition's next offset and watermark clock change
/// only with its own records, so after a first look at every partition
/// only those with records since the last look are looked at again (every
/// partition on every pass was two map walks per record).
#[derive(Debug)]
struct EndOfInput {
    targets: BTreeMap<u32, u64>,
    /// Partitions short of their target.
    short: BTreeSet<u32>,
    /// Partitions to look at on the next pass (every one at first).
    touched: Vec<u32>,
}

impl EndOfInput {
    fn new(targets: BTreeMap<u32, u64>) -> Self {
        Self {
            short: targets.keys().copied().collect(),
            touched: targets.keys().copied().collect(),
            targets,
        }
    }

    /// `partition` had a record.
    fn touched(&mut self, partition: u32) {
        if self.touched.last() != Some(&partition) {
            self.touched.push(partition);
        }
    }

    /// Takes note of the touched partitions now at their target; true when
    /// every partition is.
    fn reached(&mut self, engine: &Engine) -> bool {
        for p in &self.touched {
            let high = self.targets.get(p).copied().unwrap_or(0);
            if engine.next_offsets().get(p).copied().unwrap_or(0) >= high {
                self.short.remove(p);
            }
        }
        self.short.is_empty()
    }

    /// A partition at its end has nothing more to give in this run: it
    /// stops holding the watermark back. Its later records (none in this
    /// run) could not be late, so the order stays the log's. Marks the
    /// touched partitions at their end idle (a record past the end makes
    /// its partition active again, and touched).
    fn idle_finished(&mut self, engine: &mut Engine) {
        for p in self.touched.drain(..) {
            // Short first: the common case, decided by one lookup.
            let at_end = !self.short.contains(&p) && self.targets.contains_key(&p);
            if at_end && engine.clocks().get(&p).is_some_and(|c| !c.idle) {
                engine.set_idle(p, true);
            }
        }
    }
}

/// A partition's end, reported at `next_offset` (an aligned read reports
/// it): past a transaction's trailing commit marker, which no record
/// stands for, it is beyond the last record's offset. Moves the
/// partition's next offset there and returns it when it is ahead, so
/// that the learner's offset reaches the high watermark.
fn end_past_last_record(
    engine: &mut Engine,
    partition: u32,
    next_offset: Option<u64>,
) -> Option<u64> {
    let next = next_offset?;
    let behind = engine
        .next_offsets()
        .get(&partition)
        .is_some_and(|&n| n < next);
    behind.then(|| {
        engine.skip_to(partition, next);
        next
    })
}

/// Kafka, with metrics: each partition's lag behind its high watermark,
/// at the status interval.
fn export_lag(controls: &Controls, source: &KafkaSource, engine: &Engine) {
    let Some(metrics) = &controls.metrics else {
        return;
    };
    // The consumer's cached watermarks: a request per partition here, on
    // the ingesting thread, waited up to the request timeout each while
    // the broker was unreachable.
    metrics.export_lag(&source.cached_high_watermarks(), engine.next_offsets());
}

/// Applies `[savepoints] keep` after `taken` was written: deletes this
/// learner's older savepoints beyond it ([`savepoint::prune`]). A failure
/// is logged, not fatal: the new savepoint stands.
pub fn prune_savepoints(config: &SavepointConfig, taken: &Savepoint) {
    let Some(keep) = config.keep else {
        return;
    };
    match savepoint::prune(&config.dir, taken, keep) {
        Ok(deleted) => {
            for dir in deleted {
                tracing::info!(
                    "savepoint {} deleted ([savepoints] keep = {keep})",
                    dir.display()
                );
            }
        }
        Err(err) => tracing::warn!("deleting savepoints beyond [savepoints] keep = {keep}: {err}"),
    }
}

/// Does the I/O of the barrier command the engine is held at, if any —
/// a savepoint of the state at exactly the command's event time, or the
/// states a rollback restores — and completes it; again while the
/// resumed release stops at another. A savepoint or rollback that cannot
/// be done (no savepoint directory, a missing or invalid savepoint, a
/// full disk) is refused in its outcome and the learner goes on; a
/// failing checkpoint write stops the run as it always does.
fn run_barriers(
    engine: &mut Engine,
    checkpointer: &mut Checkpointer,
    config: &Config,
    partition_count: u32,
    records: u64,
) -> Result<()> {
    while let Some(command) = engine.barrier().cloned() {
        let result = match &command.command {
            Command::Savepoint { label } => {
                // The checkpoint holds the state at the cut, with the
                // command still scheduled: restored, the engine stops here
                // again and finds the savepoint already written.
                checkpointer.checkpoint(engine, records)?;
                checkpointer.savepoint_requested(
                    config,
                    partition_count,
                    savepoint::Requested {
                        command_id: &command.id,
                        label,
                    },
                    records,
                )?
            }
            Command::Rollback {
                version,
                savepoint_id,
            } => rollback_states(config, engine, version, savepoint_id)
                .and_then(|states| engine.rollback_version(version, states)),
            Command::Create(_) | Command::Fork { .. } | Command::Retire(_) => {
                unreachable!("only savepoints and rollbacks are barriers")
            }
        };
        engine.complete_barrier(result);
    }
    Ok(())
}

/// The states `version` had in savepoint `savepoint_id` (a directory
/// under `[savepoints] dir`), restricted to the partitions this learner
/// owns.
fn rollback_states(
    config: &Config,
    engine: &Engine,
    version: &str,
    savepoint_id: &str,
) -> Result<Vec<(u64, crate::posterior::KeyState)>, String> {
    let root = &config
        .savepoints
        .as_ref()
        .ok_or("this learner has no [savepoints] dir")?
        .dir;
    crate::control::check_plain_id(savepoint_id)
        .map_err(|why| format!("savepoint id {savepoint_id:?} {why}"))?;
    let owned: BTreeSet<u32> = engine.clocks().keys().copied().collect();
    // This learner's own share of the command's savepoint, a whole one, or
    // the shares of learners that held its partitions then.
    let chosen =
        savepoint::find_requested(root, savepoint_id, &owned).map_err(|e| e.to_string())?;
    let (_, states) = savepoint::shares_version_states(&chosen, version, &owned)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("savepoint {savepoint_id:?} has no version {version:?}"))?;
    Ok(states)
}

/// While throttled, which partitions to pause: those whose clock is more
/// than `2 × slack_ms` ahead of the slowest partition that is not idle,
/// and, once paused, until they are within `slack_ms` of it. The
/// partitions near the watermark keep flowing together, and the gap
/// between the two thresholds keeps a partition from being paused and
/// resumed (a fetch round trip each) on every record. A caught-up
/// partition counts: while it holds the watermark back nothing is
/// released, so the others wait (paused) until it delivers or turns idle
/// instead of filling the buffer without bound. Nothing is paused when
/// every partition is idle.
fn ahead_partitions(
    clocks: &BTreeMap<u32, PartitionClock>,
    paused: &[u32],
    slack_ms: i64,
) -> Vec<u32> {
    let Some(slowest) = clocks
        .values()
        .filter(|c| !c.idle)
        .map(|c| c.max_event_ms.unwrap_or(i64::MIN))
        .min()
    else {
        return Vec::new();
    };
    clocks
        .iter()
        .filter(|(p, c)| {
            let ahead = c
                .max_event_ms
                .map_or(0, |t| t.saturating_sub(slowest).max(0));
            let limit = if paused.contains(p) {
                slack_ms
            } else {
                slack_ms.saturating_mul(2)
            };
            ahead > limit
        })
        .map(|(&p, _)| p)
        .collect()
}

/// Writes checkpoints: the engine's delta and the dead-letter sink's mark,
/// in one store write, flushed, in the background.
///
/// A checkpoint blocks ingestion only while it publishes and flushes the
/// changed keys, makes the dead letters durable and encodes the delta; the
/// RocksDB write and its flush then run on a writer thread while ingestion goes
/// on. At most one write is in flight: the next checkpoint, a savepoint and
/// the end of a run first wait for it, so writes land in order and a crash
/// at any moment leaves the last completed one (the order of publish,
/// flush, dead letters and write is unchanged, and the guarantee with it).
pub struct Checkpointer {
    store: Arc<RocksStore>,
    dead: Box<dyn DeadLetterSink>,
    sink: Box<dyn ParamSink>,
    /// The versions last announced to the sink (none yet at start).
    announced: Option<Vec<VersionEntry>>,
    failpoint: Failpoint,
    /// Test hook: `POSTERIOR_SLOW_WRITE_MS=n` makes every checkpoint write
    /// take n ms longer, so tests can catch a checkpoint while the previous
    /// one is still being written.
    slow_write: Option<Duration>,
    /// Test hook: `POSTERIOR_FAIL_WRITE=n` makes the n-th checkpoint write
    /// of this process (from 1) fail, as a disk or a broker error would.
    fail_write: Option<u64>,
    /// Checkpoint writes started by this process.
    started: u64,
    count: u64,
    in_flight: Option<InFlight>,
    last_write: Option<WriteDone>,
    metrics: Option<Arc<LearnerMetrics>>,
    /// The emptied write list of the last completed write, whose capacity
    /// the next delta fills (no fresh pages to fault in on the ingesting
    /// thread).
    spare: SpareWrites,
    /// Keys stored ahead of the next checkpoint ([`Self::store_ahead`]).
    stored_ahead: usize,
}

/// What a writer thread did: the result, and the emptied write list.
type Written = (Result<(CheckpointStats, Duration, Duration)>, Vec<Write>);

/// A handed-off write.
struct InFlight {
    records: u64,
    /// Puts and deletes handed to the writer.
    writes: usize,
    offsets: BTreeMap<u32, u64>,
    handle: std::thread::JoinHandle<Written>,
}

/// A completed checkpoint write.
#[derive(Debug, Clone)]
pub struct WriteDone {
    /// What the store reported.
    pub stats: CheckpointStats,
    /// Wall time of the write on the writer thread.
    pub took: Duration,
    /// How long the writer waited, before writing, for the broker's
    /// acknowledgements of what the checkpoint covers (zero without Kafka
    /// sinks).
    pub delivery_wait: Duration,
    /// The next offsets this checkpoint made durable.
    pub offsets: BTreeMap<u32, u64>,
}

/// What one checkpoint cost the ingesting thread.
#[derive(Debug, Clone, Copy, Default)]
pub struct CheckpointTiming {
    /// Publish and flush of the changed keys.
    pub publish: Duration,
    /// Dead letters appended and synced.
    pub dead_letters: Duration,
    /// `Engine::checkpoint_delta`: deciding and encoding the writes.
    pub delta: Duration,
    /// Waiting for the previous write to finish.
    pub waited: Duration,
    /// Keys whose params it writes.
    pub changed_keys: usize,
    /// Puts and deletes it writes.
    pub writes: usize,
}

impl CheckpointTiming {
    /// Everything the checkpoint blocked ingestion for.
    pub fn total(&self) -> Duration {
        self.publish + self.dead_letters + self.delta + self.waited
    }
}

impl Checkpointer {
    /// A checkpointer into `store`, appending dead letters to the config's
    /// file (truncated to `dead_len`, the length the restored checkpoint
    /// recorded, or emptied for a fresh state) and publishing to `sink`.
    pub fn new(
        config: &Config,
        store: RocksStore,
        dead_len: Option<u64>,
        sink: Box<dyn ParamSink>,
    ) -> Result<Self> {
        Ok(Self {
            store: Arc::new(store),
            dead: deadletter_sink::open(&config.dead_letter, dead_len)
                .context("open dead-letter sink")?,
            sink,
            announced: None,
            failpoint: Failpoint::from_env(),
            slow_write: std::env::var("POSTERIOR_SLOW_WRITE_MS")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map(Duration::from_millis),
            fail_write: std::env::var("POSTERIOR_FAIL_WRITE")
                .ok()
                .and_then(|n| n.parse().ok()),
            started: 0,
            count: 0,
            in_flight: None,
            last_write: None,
            spare: SpareWrites::default(),
            stored_ahead: 0,
            metrics: None,
        })
    }

    /// While a checkpoint is due but put off (the previous write still
    /// runs), takes [`AHEAD_KEYS`] changed keys' states ahead of it
    /// whenever more than `[state] store_ahead_above` wait
    /// ([`Engine::store_ahead`]): the delta, which blocks ingestion, then
    /// stays near that size however long the write takes, instead of
    /// growing with the records ingested meanwhile. Returns the keys taken.
    pub fn store_ahead(
        &mut self,
        state: &crate::config::StateConfig,
        engine: &mut Engine,
    ) -> usize {
        if engine.unstored_params() <= state.store_ahead_above {
            return 0;
        }
        let taken = engine.store_ahead(AHEAD_KEYS);
        self.stored_ahead += taken;
        if let Some(metrics) = &self.metrics {
            metrics.observe_stored_ahead(taken);
        }
        taken
    }

    /// Reports every publish, checkpoint and savepoint to `metrics`.
    pub fn with_metrics(mut self, metrics: Option<Arc<LearnerMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Copies the engine's counts into the metrics, if any (the first
    /// call sets their baseline).
    pub fn export(&self, engine: &Engine) {
        if let Some(metrics) = &self.metrics {
            metrics.export(engine, unix_now_ms());
        }
    }

    /// Checkpoints completed so far.
    pub fn completed(&self) -> u64 {
        self.count
    }

    /// The last completed write, if any.
    pub fn last_write(&self) -> Option<&WriteDone> {
        self.last_write.as_ref()
    }

    /// Takes a savepoint of the last checkpoint (after waiting for it).
    pub fn savepoint(&mut self, config: &Config, partition_count: u32, records: u64) -> Result<()> {
        self.wait()?;
        let start = Instant::now();
        let savepoints = config
            .savepoints
            .as_ref()
            .context("a savepoint needs [savepoints] dir in the config")?;
        let failpoint = &self.failpoint;
        let taken = savepoint::write_with(&savepoints.dir, &self.store, partition_count, || {
            failpoint.hit("mid_savepoint", records);
        })
        .context("take savepoint")?;
        self.observe_savepoint(&taken, start);
        tracing::info!("savepoint {}", taken.dir.display());
        prune_savepoints(savepoints, &taken);
        Ok(())
    }

    /// Takes the savepoint an admin command asked for, of the last
    /// checkpoint (after waiting for it), named by the command id; one
    /// already written under that name (before a crash) is kept. Returns
    /// the outcome for the command.
    pub fn savepoint_requested(
        &mut self,
        config: &Config,
        partition_count: u32,
        requested: savepoint::Requested<'_>,
        records: u64,
    ) -> Result<Result<String, String>> {
        self.wait()?;
        let start = Instant::now();
        let Some(dir) = config.savepoints.as_ref().map(|s| &s.dir) else {
            return Ok(Err("this learner has no [savepoints] dir".into()));
        };
        let failpoint = &self.failpoint;
        Ok(
            match savepoint::write_requested(dir, &self.store, partition_count, requested, || {
                failpoint.hit("mid_savepoint", records);
            }) {
                Ok((taken, true)) => {
                    self.observe_savepoint(&taken, start);
                    tracing::info!("savepoint {}", taken.dir.display());
                    Ok(format!("savepoint {} written", taken.dir.display()))
                }
                Ok((taken, false)) => Ok(format!(
                    "savepoint {} was already written",
                    taken.dir.display()
                )),
                Err(err) => Err(format!("savepoint not written: {err}")),
            },
        )
    }

    fn observe_savepoint(&self, taken: &Savepoint, start: Instant) {
        if let Some(metrics) = &self.metrics {
            let bytes = taken.manifest.files.iter().map(|f| f.bytes).sum();
            metrics.observe_savepoint(start.elapsed(), bytes);
        }
    }

    /// Publishes the keys changed since the last publish, and logs the
    /// admin commands applied since; copies the engine's counts into the
    /// metrics.
    pub fn publish(&mut self, engine: &mut Engine) -> Result<()> {
        for outcome in engine.take_control_outcomes() {
            let result = match &outcome.result {
                Ok(done) => format!("ok: {done}"),
                Err(why) => format!("refused: {why}"),
            };
            tracing::info!(
                "control: {:?} by {:?} stamped {} applied at {}: {result}",
                outcome.id,
                outcome.issued_by,
                outcome.at_ms,
                outcome.applied_at_ms
            );
        }
        let everything = self.announced.is_none() && self.sink.wants_every_key_at_start();
        let versions = engine.registry().entries();
        if self.announced.as_deref() != Some(versions) {
            self.sink.announce(versions).context("announce versions")?;
            self.announced = Some(versions.to_vec());
        }
        let start = Instant::now();
        let updates = take_updates(engine);
        if let Some(metrics) = &self.metrics {
            metrics.observe_update_latency(&updates, unix_now_ms());
        }
        // Once per run: the keys this publish holds, left out of the
        // every-key publish below.
        let published: HashSet<(Arc<str>, u64)> = if everything {
            updates
                .iter()
                .map(|u| (Arc::clone(&u.version), u.doc_id))
                .collect()
        } else {
            HashSet::new()
        };
        if !updates.is_empty() {
            self.sink.publish(updates).context("publish updates")?;
        }
        if everything {
            // A consumer that starts empty (an embedded server) gets every
            // other key once, after the changes: not updates, so not
            // timed, and skipped by a sink that does not start empty.
            engine.mark_all_unpublished();
            let mut every_key = take_updates(engine);
            every_key.retain(|u| !published.contains(&(Arc::clone(&u.version), u.doc_id)));
            if !every_key.is_empty() {
                self.sink
                    .publish_every_key(every_key)
                    .context("publish every key")?;
            }
            self.sink.started().context("publish the start's end")?;
        }
        if let Some(metrics) = &self.metrics {
            metrics.observe_publish(start.elapsed(), self.sink.queued());
            metrics.export(engine, unix_now_ms());
        }
        Ok(())
    }

    /// Publishes, makes the dead letters durable, encodes the delta, waits
    /// for the previous write and hands this one to a writer thread, which
    /// waits until everything published so far is delivered before it
    /// writes (so a checkpoint never covers an update that was lost).
    /// Returns what ingestion was blocked for.
    pub fn checkpoint(&mut self, engine: &mut Engine, records: u64) -> Result<CheckpointTiming> {
        self.checkpoint_as(engine, records, false)
    }

    /// [`Self::checkpoint`]; `last` when nothing is written after it (the
    /// end of a run; only the fail points between the write and its flush
    /// differ: `mid_checkpoint` stops any checkpoint there,
    /// `mid_last_checkpoint` only the last).
    fn checkpoint_as(
        &mut self,
        engine: &mut Engine,
        records: u64,
        last: bool,
    ) -> Result<CheckpointTiming> {
        let t0 = Instant::now();
        self.publish(engine)?;
        let delivered = self
            .sink
            .delivered_later()
            .context("flush published updates")?;
        let t1 = Instant::now();
        let dead_mark = self
            .dead
            .commit(&engine.take_dead_letters())
            .context("write dead letters")?;
        let dead_delivered = self.dead.delivered_later();
        let t2 = Instant::now();
        let mut writes = self.spare.take();
        let (puts, ahead) = engine.checkpoint_delta_apart(&mut writes);
        let changed_keys = puts.params;
        if self.stored_ahead > 0 {
            tracing::info!(
                "checkpoint at record {records}: {} changed keys stored ahead of it while \
                 the previous write ran, {} in its delta",
                self.stored_ahead,
                changed_keys - self.stored_ahead.min(changed_keys)
            );
            self.stored_ahead = 0;
        }
        if let Some(dead_bytes) = dead_mark {
            writes.push(Write::Put(
                Table::Meta,
                DEAD_LETTER_BYTES.to_vec(),
                dead_bytes.to_le_bytes().to_vec(),
            ));
        }
        let count = writes.len() + ahead.len();
        let t3 = Instant::now();
        self.wait()?;
        let t4 = Instant::now();
        self.failpoint.hit("before_checkpoint", records);
        let store = Arc::clone(&self.store);
        let slow_write = self.slow_write;
        self.started += 1;
        let fail_write = self.fail_write == Some(self.started);
        let failpoint = self.failpoint.clone();
        let handle = std::thread::Builder::new()
            .name("checkpoint-writer".into())
            .spawn(move || {
                // Ingestion comes first (`priority`).
                if let Err(err) =
                    crate::priority::lower_this_thread(crate::priority::HELPER_NICENESS)
                {
                    tracing::debug!("the checkpoint writer keeps its priority: {err}");
                }
                // A Kafka sink's acknowledgements, waited for here rather
                // than on the ingesting thread.
                let delivering = Instant::now();
                if let Err(err) = delivered.wait() {
                    let err = anyhow::Error::from(err)
                        .context("deliver the updates published before the checkpoint");
                    return (Err(err), writes);
                }
                if let Some(Err(err)) = dead_delivered.map(DeliveryBarrier::wait) {
                    let err = anyhow::Error::from(DeadLetterError::from(err))
                        .context("write dead letters: deliver those the checkpoint covers");
                    return (Err(err), writes);
                }
                let delivery_wait = delivering.elapsed();
                let start = Instant::now();
                if let Some(delay) = slow_write {
                    std::thread::sleep(delay);
                }
                if fail_write {
                    let err = anyhow::anyhow!("injected write failure (POSTERIOR_FAIL_WRITE)");
                    return (Err(err), writes);
                }
                // The keys stored ahead join the delta here, off the
                // ingesting thread.
                ahead.lead(&mut writes);
                sort_puts(&mut writes, puts);
                // Without the log, then flushed: the state's bytes are
                // written once, not to the log and again to table files
                // (BENCHMARKS.md, "Checkpoints without the write-ahead
                // log").
                let written = store.write_flushed_from(&mut writes, || {
                    failpoint.hit("mid_checkpoint", records);
                    if last {
                        failpoint.hit("mid_last_checkpoint", records);
                    }
                });
                let took = start.elapsed();
                (
                    written
                        .map(|stats| (stats, took, delivery_wait))
                        .map_err(anyhow::Error::from),
                    writes,
                )
            })
            .context("start the checkpoint writer")?;
        self.in_flight = Some(InFlight {
            records,
            writes: count,
            offsets: engine.next_offsets().clone(),
            handle,
        });
        let timing = CheckpointTiming {
            publish: t1 - t0,
            dead_letters: t2 - t1,
            delta: t3 - t2,
            waited: t4 - t3,
            changed_keys,
            writes: count,
        };
        if let Some(metrics) = &self.metrics {
            metrics.observe_checkpoint_blocked(timing.total());
        }
        Ok(timing)
    }

    /// Waits for the write in flight, if any; returns the checkpoint it
    /// completed.
    pub fn wait(&mut self) -> Result<Option<&WriteDone>> {
        let Some(in_flight) = self.in_flight.take() else {
            return Ok(None);
        };
        let (written, emptied) = in_flight
            .handle
            .join()
            .map_err(|_| anyhow::anyhow!("the checkpoint writer panicked"))?;
        self.spare.give_back(emptied, in_flight.writes);
        let (stats, took, delivery_wait) = written.context("write checkpoint")?;
        self.count += 1;
        if let Some(metrics) = &self.metrics {
            metrics.observe_checkpoint_write(took, stats.bytes as u64, delivery_wait);
        }
        self.failpoint.hit("after_checkpoint", in_flight.records);
        self.last_write = Some(WriteDone {
            stats,
            took,
            delivery_wait,
            offsets: in_flight.offsets,
        });
        Ok(self.last_write.as_ref())
    }

    /// True while the previous checkpoint's write is still running. A
    /// periodic checkpoint that falls due then is put off to a later
    /// record instead of blocking ingestion on that write (checkpoints do
    /// not overlap; the next one covers more records).
    pub fn busy(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|f| !f.handle.is_finished())
    }

    /// Completes the write in flight if it has finished, without waiting;
    /// returns the checkpoint it completed.
    pub fn poll(&mut self) -> Result<Option<&WriteDone>> {
        if self
            .in_flight
            .as_ref()
            .is_some_and(|f| f.handle.is_finished())
        {
            self.wait()
        } else {
            Ok(None)
        }
    }

    /// Takes a last checkpoint and waits until it is written and flushed
    /// to table files ([`RocksStore::write_flushed_from`], as every
    /// checkpoint). If that fails, the run fails: the state stays at the
    /// checkpoint before, from which the next start replays.
    pub fn finish(&mut self, engine: &mut Engine, records: u64) -> Result<()> {
        self.checkpoint_as(engine, records, true)?;
        self.wait()?;
        Ok(())
    }
}

/// Keys [`Engine::store_ahead`] takes at a time: ~1.3 ms of the ingesting thread
/// at d = 32 on this project's 2-core machine (bench 4: 318 ns per key).
pub const AHEAD_KEYS: usize = 4_096;

/// Whether a periodic checkpoint is due: after `checkpoint_every_records`
/// records, or `checkpoint_every_ms` of wall clock with at least one
/// record, since the last — and not while the last one's write is still
/// running (`busy`): checkpoints do not overlap, and rather than block
/// ingestion on that write the checkpoint is put off to a later record,
/// covering more.
pub fn checkpoint_due(
    state: &crate::config::StateConfig,
    since_records: u64,
    since: Duration,
    busy: bool,
) -> bool {
    let timer = since >= Duration::from_millis(state.checkpoint_every_ms);
    checkpoint_due_by(state, since_records, timer, busy)
}

/// [`checkpoint_due`] with the timer's verdict given: `timer` is true once
/// `checkpoint_every_ms` have passed since the last checkpoint.
fn checkpoint_due_by(
    state: &crate::config::StateConfig,
    since_records: u64,
    timer: bool,
    busy: bool,
) -> bool {
    let by_time = state.checkpoint_every_ms > 0 && since_records > 0 && timer;
    (since_records >= state.checkpoint_every_records || by_time) && !busy
}

/// A local run's record-counted checkpoint: taken when due and no write is
/// running (it is put off otherwise, to a later record or `Next::Idle`).
/// Resets `since_checkpoint` when taken.
fn checkpoint_if_due(
    config: &Config,
    checkpointer: &mut Checkpointer,
    engine: &mut Engine,
    records: u64,
    since_checkpoint: &mut u64,
) -> Result<()> {
    let due = |busy| checkpoint_due(&config.state, *since_checkpoint, Duration::ZERO, busy);
    let busy = checkpointer.busy();
    if due(busy) {
        checkpointer.checkpoint(engine, records)?;
        *since_checkpoint = 0;
    } else if busy && due(false) {
        checkpointer.store_ahead(&config.state, engine);
    }
    Ok(())
}

/// Wall-clock time, Unix ms (0 if the clock is before 1970).
fn unix_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Test hook: `POSTERIOR_FAILPOINT=name:n` aborts the process (as a crash
/// would) the first time fail point `name` is reached after `n` records.
#[derive(Debug, Clone)]
struct Failpoint(Option<(String, u64)>);

impl Failpoint {
    fn from_env() -> Self {
        let parsed = std::env::var("POSTERIOR_FAILPOINT").ok().and_then(|v| {
            let (name, n) = v.split_once(':')?;
            Some((name.to_owned(), n.parse().ok()?))
        });
        Self(parsed)
    }

    #[inline]
    fn hit(&self, name: &str, records: u64) {
        if let Some((point, after)) = &self.0
            && point == name
            && records >= *after
        {
            std::process::abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_due_by_records_or_time_and_never_over_a_running_write() {
        let state = crate::config::StateConfig {
            dir: "/unused".into(),
            checkpoint_every_records: 100,
            checkpoint_every_ms: 1_000,
            store_ahead_above: crate::config::DEFAULT_STORE_AHEAD_ABOVE,
        };
        let ms = Duration::from_millis;
        assert!(!checkpoint_due(&state, 99, ms(999), false));
        assert!(checkpoint_due(&state, 100, ms(0), false));
        assert!(checkpoint_due(&state, 1, ms(1_000), false));
        assert!(
            !checkpoint_due(&state, 0, ms(5_000), false),
            "nothing to save"
        );
        assert!(
            !checkpoint_due(&state, 500, ms(5_000), true),
            "put off while busy"
        );
        let no_timer = crate::config::StateConfig {
            checkpoint_every_ms: 0,
            ..state
        };
        assert!(!checkpoint_due(&no_timer, 99, ms(60_000), false));
    }

    /// An engine of one Beta version over `partitions`.
    fn beta_engine(partitions: impl IntoIterator<Item = u32>) -> Engine {
        use crate::batcher::BatchPolicy;
        use crate::engine::EngineConfig;
        use crate::posterior::{BetaPrior, ModelKind, ModelSpec};
        use crate::version::{RewardSpec, VersionSpec};
        let version = VersionSpec {
            name: "beta".into(),
            model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
            reward: RewardSpec::binary("click"),
            use_sample_weight: true,
        };
        let config = EngineConfig {
            out_of_orderness_ms: 10,
            reorder_capacity: 1_000,
            dedup: None,
            batch: BatchPolicy::default(),
        };
        Engine::new(
            config,
            Registry::with_versions([version]).unwrap(),
            partitions,
        )
    }

    /// A clicked sample of doc 7 at `t`.
    fn sample(t: i64) -> Payload {
        Payload::Sample(crate::sample::Sample {
            doc_id: 7,
            version: "beta".into(),
            event_time_ms: t,
            context: Vec::new(),
            labels: smallvec::smallvec![("click".into(), 1.0)],
            weight: 1.0,
            sample_id: None,
        })
    }

    #[test]
    fn an_until_end_run_ends_when_every_partition_reaches_its_target() {
        let mut engine = beta_engine([0, 1, 2]);
        let idle = |engine: &Engine, p: u32| engine.clocks()[&p].idle;
        // Partition 2 has nothing to give: at its end from the start.
        let mut end = EndOfInput::new([(0, 2), (1, 1), (2, 0)].into());
        assert!(!end.reached(&engine));
        end.idle_finished(&mut engine);
        assert!(idle(&engine, 2) && !idle(&engine, 0) && !idle(&engine, 1));

        engine.ingest(1, 0, sample(100));
        end.touched(1);
        assert!(!end.reached(&engine), "partition 0 is short");
        end.idle_finished(&mut engine);
        assert!(idle(&engine, 1), "partition 1 is at its end");
        // A record past the end makes its partition active; the next pass
        // marks it idle again.
        engine.ingest(1, 1, sample(101));
        end.touched(1);
        assert!(!idle(&engine, 1));
        assert!(!end.reached(&engine));
        end.idle_finished(&mut engine);
        assert!(idle(&engine, 1));

        engine.ingest(0, 0, sample(100));
        end.touched(0);
        assert!(!end.reached(&engine));
        end.idle_finished(&mut engine);
        assert!(!idle(&engine, 0), "one record short");
        engine.ingest(
            0,
            1,
            Payload::Invalid {
                reason: "undecodable",
                detail: "poison".into(),
            },
        );
        end.touched(0);
        assert!(end.reached(&engine), "a dead letter counts as read");
    }

    /// A transaction's commit marker takes the last offset of a partition
    /// (nisshi 0.8.1 refuses transactional producers, so this is tested
    /// here, below the broker): the partition's end, reported past it,
    /// brings the learner's next offset to the high watermark, and a
    /// bounded run ends. An end at or below the next offset, or without
    /// an offset, changes nothing.
    #[test]
    fn a_partitions_end_past_a_commit_marker_completes_a_bounded_run() {
        let mut engine = beta_engine([0]);
        engine.start_partition_at(0, 0);
        // Records at 0 and 1, the commit marker at 2: high watermark 3.
        let mut end = EndOfInput::new([(0, 3)].into());
        for offset in 0..2 {
            engine.ingest(0, offset, sample(100 + offset as i64));
            end.touched(0);
        }
        assert!(!end.reached(&engine), "the marker is not a record");
        assert_eq!(end_past_last_record(&mut engine, 0, None), None);
        assert_eq!(end_past_last_record(&mut engine, 0, Some(2)), None);
        assert_eq!(engine.next_offsets()[&0], 2);
        assert_eq!(end_past_last_record(&mut engine, 0, Some(3)), Some(3));
        end.touched(0);
        assert_eq!(engine.next_offsets()[&0], 3, "checkpointed past the marker");
        assert!(end.reached(&engine));
        assert_eq!(
            end_past_last_record(&mut engine, 0, Some(1)),
            None,
            "never back"
        );
        assert_eq!(engine.next_offsets()[&0], 3);
    }

    fn clock(max_event_ms: i64) -> PartitionClock {
        PartitionClock {
            max_event_ms: Some(max_event_ms),
            idle: false,
        }
    }

    #[test]
    fn throttling_pauses_only_partitions_far_ahead_with_hysteresis() {
        let clocks: BTreeMap<u32, PartitionClock> = [
            (0, clock(10_000)),
            (1, clock(7_000)),
            (2, clock(8_500)),
            (3, clock(9_500)),
        ]
        .into();
        // Slack 1 s: pause beyond 2 s ahead of the slowest (partition 1,
        // whether it can deliver now or is caught up: it holds the
        // watermark back either way).
        assert_eq!(ahead_partitions(&clocks, &[], 1_000), vec![0, 3]);
        // Once paused, a partition stays paused until within 1 s.
        assert_eq!(ahead_partitions(&clocks, &[0, 2, 3], 1_000), vec![0, 2, 3]);
        // An idle partition is not the reference.
        let mut quiet = clocks.clone();
        quiet.get_mut(&1).unwrap().idle = true;
        assert_eq!(ahead_partitions(&quiet, &[], 1_000), Vec::<u32>::new());
        // A partition that delivered nothing yet holds everything back.
        let mut fresh = clocks.clone();
        fresh.insert(
            4,
            PartitionClock {
                max_event_ms: None,
                idle: false,
            },
        );
        assert_eq!(ahead_partitions(&fresh, &[], 1_000), vec![0, 1, 2, 3]);
        let mut idle = clocks;
        for c in idle.values_mut() {
            c.idle = true;
        }
        assert!(ahead_partitions(&idle, &[0], 1_000).is_empty());
    }
}
