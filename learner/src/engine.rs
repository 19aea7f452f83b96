//! The learner's pure core: records in, parameters and dead letters out.
//!
//! [`Engine::ingest`] takes one record of one partition (already decoded by
//! the source, or marked undecodable), judges it against its partition's
//! watermark, buffers it, and releases everything below the instance
//! watermark in (event_time, partition, offset) order. A released sample is
//! de-duplicated, matched to its version, reduced to that version's
//! observation and added to its key's micro-batch; full or aged batches are
//! applied to the key's posterior. [`Engine::finish`] ends a bounded input:
//! it releases and applies everything left.
//!
//! No I/O, no clock: the engine is driven by a source and checkpointed by
//! its owner. Given the same records per partition it reaches the same
//! state bit for bit, whatever the interleaving of partitions (see
//! `watermark`) — which is what makes replay from a checkpoint harmless.

use std::collections::BTreeMap;

use smallvec::SmallVec;

use crate::batcher::{BatchPolicy, Batcher, PendingObservation, ReadyBatch};
use crate::contexts::ContextReturn;
use crate::control::{Command, Outcome, Scheduled, forked_spec};
use crate::deadletter::DeadLetter;
use crate::dedup::Dedup;
use crate::keymap::{FlatKeyMap, Located};
use crate::posterior::{KeyState, Observation, SharedState};
use crate::prefetch::{prefetch, prefetch_slice};
use crate::registry::{ParamKey, Registry, RegistryError, VersionId};
use crate::reorder::{OrderKey, ReorderBuffer};
use crate::sample::{Sample, names_equal};
use crate::sample_log::SampleLog;
use crate::version::VersionSpec;
use crate::watermark::{Timeliness, Watermarks};

/// Samples (keys) whose memory the release (the publish) prefetches at a
/// time: enough misses to overlap, few enough lines to stay cached until
/// they are used.
const PREFETCH_GROUP: usize = 64;

/// Versions a group's warm-up remembers by name (see `Engine::warm`).
const SEEN_VERSIONS: usize = 4;

/// Samples of a batch whose views [`Engine::apply`] keeps on the stack; a
/// longer batch puts them on the heap.
const BATCH_VIEWS: usize = 8;

/// Released samples whose room the engine keeps between releases (a
/// release is usually one event-time millisecond's samples).
const RELEASING_KEPT: usize = 16 * 1024;

/// Samples a release takes out of the reorder buffer at a time (whole
/// milliseconds, so a little more): a release of the whole buffer (the
/// end of a bounded input, a watermark that jumps) goes in parts through
/// room already mapped instead of a second copy of the buffer in fresh
/// memory.
const RELEASE_PART: usize = RELEASING_KEPT / 2;

/// Tuning of the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EngineConfig {
    /// Allowed out-of-orderness of event times within a partition.
    pub out_of_orderness_ms: i64,
    /// Soft bound of the reorder buffer; beyond it the driver pauses the
    /// partitions that are ahead (see [`Engine::buffer_full`]).
    pub reorder_capacity: usize,
    /// De-duplication window (event-time ms) and id bound; `None` = off.
    pub dedup: Option<(i64, usize)>,
    /// Micro-batch triggers.
    pub batch: BatchPolicy,
}

/// What a record carries, as decoded by the source.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A valid sample.
    Sample(Sample),
    /// A record that could not become a sample.
    Invalid {
        /// Stable reason, e.g. `undecodable`, `non_finite`.
        reason: &'static str,
        /// Detail for the dead letter.
        detail: String,
    },
}

/// Counts by outcome, for metrics and tests.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Counters {
    /// Samples applied to a posterior.
    pub applied: u64,
    /// Updates (micro-batches) applied.
    pub updates: u64,
    /// Dead letters by reason.
    pub dead: BTreeMap<&'static str, u64>,
}

impl Counters {
    /// Adds `other`'s counts (of another learner's partitions) to these.
    pub fn add(&mut self, other: &Counters) {
        self.applied += other.applied;
        self.updates += other.updates;
        for (reason, n) in &other.dead {
            *self.dead.entry(reason).or_default() += n;
        }
    }
}

/// Buckets of [`EngineStats::batch_sizes`].
pub const BATCH_SIZE_BUCKETS: usize = 12;

/// Counts for metrics, kept since the engine was created or restored (not
/// checkpointed, unlike [`Counters`]): plain integers bumped once per
/// applied micro-batch, never an atomic or a lock on the hot path (the
/// runner copies them out, see `metrics`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineStats {
    /// Samples applied, indexed by version id.
    pub applied_by_version: Vec<u64>,
    /// Applied micro-batches by size: bucket `i` counts sizes in
    /// `(2^(i-1), 2^i]` (bucket 0: size 1; the last: every larger size).
    pub batch_sizes: [u64; BATCH_SIZE_BUCKETS],
    /// Samples in those micro-batches.
    pub batch_sizes_sum: u64,
    /// Event time of the newest applied sample.
    pub last_applied_event_ms: Option<i64>,
    /// Keys in the parameter table, indexed by version id (a state, so
    /// counted from the restored table too).
    pub keys_by_version: Vec<u64>,
    /// Dead letters by reason and the registered version their sample
    /// names (none: undecodable, or a name the registry never had).
    pub dead_by_version: BTreeMap<(&'static str, Option<VersionId>), u64>,
    /// Applied updates whose MAP solve stopped at the iteration cap
    /// (applied from its last iterate), indexed by version id.
    pub unconverged_by_version: Vec<u64>,
}

impl EngineStats {
    /// Counts one applied micro-batch of `len` samples of `version`, the
    /// newest at `event_time_ms`.
    #[inline]
    pub fn count_batch(&mut self, version: VersionId, len: usize, event_time_ms: i64) {
        add_by_version(&mut self.applied_by_version, version, len as u64);
        let bucket = (usize::BITS - len.saturating_sub(1).leading_zeros()) as usize;
        self.batch_sizes[bucket.min(BATCH_SIZE_BUCKETS - 1)] += 1;
        self.batch_sizes_sum += len as u64;
        self.last_applied_event_ms = Some(
            self.last_applied_event_ms
                .map_or(event_time_ms, |t| t.max(event_time_ms)),
        );
    }

    /// Counts an applied update whose solve did not converge.
    #[cold]
    pub fn count_unconverged(&mut self, version: VersionId) {
        add_by_version(&mut self.unconverged_by_version, version, 1);
    }

    /// Counts a key entering the parameter table.
    #[inline]
    pub fn count_key(&mut self, version: VersionId) {
        add_by_version(&mut self.keys_by_version, version, 1);
    }
}

/// Adds `n` to `version`'s count in `counts` (indexed by version id),
/// growing it for a version it has not seen.
#[inline]
fn add_by_version(counts: &mut Vec<u64>, version: VersionId, n: u64) {
    let i = version.0 as usize;
    if i >= counts.len() {
        counts.resize(i + 1, 0);
    }
    counts[i] += n;
}

/// The learner's state and logic, without I/O.
#[derive(Debug)]
pub struct Engine {
    watermarks: Watermarks,
    buffer: ReorderBuffer,
    /// The buffered samples as the store keeps them.
    log: SampleLog,
    dedup: Option<Dedup>,
    batcher: Batcher,
    registry: Registry,
    params: FlatKeyMap<Slot>,
    next_offsets: BTreeMap<u32, u64>,
    released_below_ms: i64,
    /// Samples being released (empty between releases; kept for its
    /// capacity, see [`ReorderBuffer::release_below_into`]).
    releasing: Vec<(OrderKey, Sample)>,
    /// The keys `warm` resolved for a release group, located in the
    /// parameter table (kept for its room).
    resolved: Vec<Option<Located>>,
    /// Batches the age trigger hands over before a sample is processed
    /// (kept for its room: filled for nearly every sample).
    ready: Vec<ReadyBatch>,
    /// Keys updated since the last [`Engine::take_changed`] (each once:
    /// see [`Slot::unpublished`]).
    changed: Vec<ParamKey>,
    dead_letters: Vec<DeadLetter>,
    counters: Counters,
    stats: EngineStats,
    dirty: Dirty,
    /// The checkpoints' pending-batch values are cut from these.
    values: persist::ValueChunks,
    control: ControlState,
    /// Where applied samples' contexts go back to the reader that decoded
    /// them (see [`Engine::return_contexts_to`]); freed here without one.
    contexts: Option<ContextReturn>,
}

/// Admin commands waiting for their event time, and what was applied.
#[derive(Debug, Default)]
struct ControlState {
    /// By (event time, arrival order).
    scheduled: BTreeMap<(i64, u64), Scheduled>,
    next_arrival: u64,
    /// Ids of every command applied (or refused) so far. Commands are
    /// rare admin actions, so this is kept whole.
    applied_ids: std::collections::BTreeSet<String>,
    /// Next offset of the `control` topic, when one is read.
    next_offset: Option<u64>,
    outcomes: Vec<Outcome>,
    /// The barrier command the release stopped at (see
    /// [`Engine::barrier`]). Not stored: a checkpoint keeps it in
    /// `scheduled`, so a restored engine stops at it again.
    barrier: Option<Scheduled>,
}

impl ControlState {
    /// The backlog as stored, in application order, with the release at
    /// `released_below_ms`. A command there with an earlier time came late
    /// and was held at the point the release stood at then, which is this
    /// one (the release does not move past a waiting barrier): it goes back
    /// at that point, behind what waited there before it, not at its own
    /// time ahead of them.
    fn restore(backlog: crate::meta::ControlBacklog, released_below_ms: i64) -> Self {
        let scheduled: BTreeMap<_, _> = backlog
            .scheduled
            .into_iter()
            .zip(0_u64..)
            .map(|(c, arrival)| ((c.at_ms.max(released_below_ms), arrival), c))
            .collect();
        Self {
            next_arrival: scheduled.len() as u64,
            scheduled,
            applied_ids: backlog.applied_ids.into_iter().collect(),
            next_offset: backlog.next_offset,
            outcomes: Vec::new(),
            barrier: None,
        }
    }

    /// Event time of the first scheduled barrier command.
    fn first_barrier_at(&self) -> Option<i64> {
        self.scheduled
            .iter()
            .find(|(_, c)| c.command.is_barrier())
            .map(|(&(at, _), _)| at)
    }
}

/// What [`Engine::schedule`] did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScheduleResult {
    /// Waiting for the released watermark to reach its event time.
    Scheduled,
    /// Its event time was already released: applied at once, at the
    /// current watermark (see its [`Outcome`]).
    AppliedLate,
    /// A command with this id was scheduled or applied before: ignored.
    Duplicate,
}

/// What changed since the last checkpoint delta (the reorder buffer,
/// the sample log and the batcher track their own changes).
#[derive(Debug, Default)]
struct Dirty {
    /// Each key once: see [`Slot::unstored`].
    params: Vec<ParamKey>,
    /// Parameter puts taken ahead of the next delta
    /// ([`Engine::store_ahead`]), which leads with them, one segment per
    /// call: a list that grows by segments never copies itself over on
    /// the ingesting thread. A key changed again since is in `params`
    /// too: its later put wins.
    ahead: Vec<Vec<Write>>,
}

/// One key of the parameter table.
///
/// The change marks live in the slot, next to the state the update has
/// just touched, so marking a key costs a flag test and, once per
/// publish or checkpoint interval, a push — not a lookup in a set as
/// large as the interval's changes.
#[derive(Debug, Clone)]
struct Slot {
    /// The state. A publish or a checkpoint takes a handle to it, not a
    /// copy; the key's next update copies it first if one is still held
    /// (copy on write), so what was taken never changes.
    state: SharedState,
    /// Listed in `Engine::changed`.
    unpublished: bool,
    /// Listed in `Dirty::params`.
    unstored: bool,
}

impl Slot {
    /// A slot whose state the store and the publications already hold.
    fn clean(state: KeyState) -> Self {
        Self {
            state: SharedState::new(state),
            unpublished: false,
            unstored: false,
        }
    }

    /// Marks the key changed for the next publish and checkpoint.
    fn mark(&mut self, key: ParamKey, changed: &mut Vec<ParamKey>, dirty: &mut Vec<ParamKey>) {
        if !self.unpublished {
            self.unpublished = true;
            changed.push(key);
        }
        if !self.unstored {
            self.unstored = true;
            dirty.push(key);
        }
    }
}

/// How [`Engine::process`] finds a sample's version.
#[derive(Debug, Clone, Copy)]
enum Version {
    /// Resolved by `warm` for the sample's group, with the registry as it
    /// still is: the key of the live version, located in the parameter
    /// table, or `None` (unknown or retired).
    Resolved(Option<Located>),
    /// Looked up by name.
    Lookup,
}

impl Engine {
    /// A fresh engine over the assigned `partitions`.
    pub fn new(
        config: EngineConfig,
        registry: Registry,
        partitions: impl IntoIterator<Item = u32>,
    ) -> Self {
        Self {
            watermarks: Watermarks::new(config.out_of_orderness_ms, partitions),
            buffer: ReorderBuffer::new(config.reorder_capacity),
            log: SampleLog::default(),
            dedup: config
                .dedup
                .map(|(window_ms, max_ids)| Dedup::new(window_ms, max_ids)),
            batcher: Batcher::new(config.batch),
            registry,
            params: FlatKeyMap::default(),
            next_offsets: BTreeMap::new(),
            released_below_ms: i64::MIN,
            releasing: Vec::new(),
            resolved: Vec::new(),
            ready: Vec::new(),
            changed: Vec::new(),
            dead_letters: Vec::new(),
            counters: Counters::default(),
            stats: EngineStats::default(),
            dirty: Dirty::default(),
            values: persist::ValueChunks::default(),
            control: ControlState::default(),
            contexts: None,
        }
    }

    /// Takes one record of `partition` at `offset` (Kafka offsets: the next
    /// record is at `offset + 1`). The partition's next offset advances
    /// whatever the record holds.
    pub fn ingest(&mut self, partition: u32, offset: u64, payload: Payload) {
        self.ingest_at(partition, offset, offset + 1, payload);
    }

    /// Like [`Engine::ingest`] for sources whose offsets are not dense (a
    /// file's byte positions): `next_offset` is where the next record starts.
    pub fn ingest_at(&mut self, partition: u32, offset: u64, next_offset: u64, payload: Payload) {
        self.next_offsets.insert(partition, next_offset);
        // The sample stays in `payload` until it moves into the buffer:
        // bound by value here, it was copied (~170 bytes) once more.
        let sample = match payload {
            Payload::Sample(ref sample) => sample,
            Payload::Invalid { reason, detail } => {
                self.dead(partition, offset, reason, detail, None);
                return;
            }
        };
        let t = sample.event_time_ms;
        let late = match self.watermarks.observe(partition, t) {
            Timeliness::Late { watermark_ms } => Some(watermark_ms),
            Timeliness::OnTime if t < self.released_below_ms => Some(self.released_below_ms),
            Timeliness::OnTime => None,
        };
        if let Some(watermark_ms) = late {
            let detail = format!("event time {t} is below watermark {watermark_ms}");
            self.dead(partition, offset, "late", detail, Some(sample));
            return;
        }
        let key = OrderKey {
            event_time_ms: t,
            partition,
            offset,
        };
        self.log.append(key, sample, self.released_below_ms);
        let Payload::Sample(sample) = payload else {
            unreachable!("matched above")
        };
        self.buffer.insert(key, sample);
        self.release(self.watermarks.instance_watermark());
    }

    /// Marks a partition idle (left out of the instance watermark) or
    /// active, and releases what that allows.
    pub fn set_idle(&mut self, partition: u32, idle: bool) {
        self.watermarks.set_idle(partition, idle);
        self.release(self.watermarks.instance_watermark());
    }

    /// Ends a bounded input: releases every buffered sample and applies
    /// every pending batch. Returns false, having done neither, when the
    /// release stopped at a barrier command (see [`Engine::barrier`]):
    /// complete it and call `finish` again.
    ///
    /// Every scheduled command is applied too. The release frontier then
    /// stays just past the newest event time delivered, not at the end of
    /// time: a later run on this state (input appended to the file, an
    /// unbounded run after `--until-end`) judges its samples against what
    /// was applied instead of finding every one late.
    pub fn finish(&mut self) -> bool {
        let before = self.released_below_ms;
        self.release(i64::MAX);
        if self.control.barrier.is_some() {
            return false;
        }
        let newest = self
            .watermarks
            .clocks()
            .values()
            .filter_map(|c| c.max_event_ms)
            .max();
        self.released_below_ms = newest.map_or(before, |t| t.saturating_add(1).max(before));
        for (key, batch) in self.batcher.drain() {
            self.apply(key, &batch);
        }
        true
    }

    /// True when the reorder buffer is at its soft bound.
    pub fn buffer_full(&self) -> bool {
        self.buffer.is_full()
    }

    /// Samples waiting in the reorder buffer.
    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// True when the reorder buffer holds at most half its soft bound.
    pub fn buffer_half_empty(&self) -> bool {
        self.buffer.is_half_empty()
    }

    /// The instance watermark: samples below it are released.
    pub fn instance_watermark(&self) -> i64 {
        self.watermarks.instance_watermark()
    }

    /// The partitions this engine owns and their watermark clocks.
    pub fn clocks(&self) -> &BTreeMap<u32, crate::watermark::PartitionClock> {
        self.watermarks.clocks()
    }

    /// Where `partition` starts when it has no next offset yet (a source
    /// resolved its configured start): kept as its next offset, so the
    /// next checkpoint holds it whether or not a record comes first.
    pub fn start_partition_at(&mut self, partition: u32, offset: u64) {
        self.next_offsets.entry(partition).or_insert(offset);
    }

    /// Takes note that `partition` holds no record below `next_offset`
    /// left to read: its next offset moves up to it, never down. A Kafka
    /// partition's end comes past a transaction's commit marker, which no
    /// record stands for; without this the learner's offset stays below
    /// the high watermark for good.
    pub fn skip_to(&mut self, partition: u32, next_offset: u64) {
        let next = self.next_offsets.entry(partition).or_insert(next_offset);
        *next = (*next).max(next_offset);
    }

    /// The next offset to read per partition.
    pub fn next_offsets(&self) -> &BTreeMap<u32, u64> {
        &self.next_offsets
    }

    /// Keys updated since the last call, with their state (for
    /// publishing), in the order they first changed: deterministic for a
    /// given input, and not sorted — no sink needs key order, and sorting
    /// a publish's keys was 4 % of bench 1's Beta profile. The states
    /// are shared, not copied: a key's next update copies its state first
    /// while one is held.
    pub fn take_changed(&mut self) -> Vec<(ParamKey, SharedState)> {
        self.take_changed_as(|key, state| (key, state.clone()))
    }

    /// [`Engine::take_changed`], each key and state mapped by `f` as it is
    /// taken: a sink's records are built in one pass, without a vector of
    /// pairs in between.
    pub fn take_changed_as<T>(&mut self, mut f: impl FnMut(ParamKey, &SharedState) -> T) -> Vec<T> {
        let mut keys = std::mem::take(&mut self.changed);
        let mut taken = Vec::with_capacity(keys.len());
        self.for_each_slot(&keys, |key, slot| {
            slot.unpublished = false;
            taken.push(f(key, &slot.state));
        });
        keys.clear();
        self.changed = keys;
        taken
    }

    /// Calls `f` with the slot of each of `keys` (all in the table), a
    /// group at a time: the slots and states are out of the caches, so a
    /// group's slots are asked for together, then its states (see
    /// `warm`).
    fn for_each_slot(&mut self, keys: &[ParamKey], mut f: impl FnMut(ParamKey, &mut Slot)) {
        let mut located = Vec::with_capacity(PREFETCH_GROUP.min(keys.len()));
        for group in keys.chunks(PREFETCH_GROUP) {
            // Each key hashed once for its three lookups.
            located.clear();
            located.extend(group.iter().map(|key| self.params.located(key)));
            for at in &located {
                self.params.prefetch_located(at);
            }
            for at in &located {
                if let Some(slot) = self.params.get_located(at) {
                    prefetch(slot.state.as_ptr());
                }
            }
            for at in &located {
                let slot = self.params.get_mut_located(at);
                f(at.key, slot.expect("listed keys exist"));
            }
        }
    }

    /// Marks every key for the next [`Self::take_changed`] (not for the
    /// next checkpoint): a consumer that starts empty, such as a
    /// param-server embedded in a restarted learner, then receives every
    /// key's state.
    pub fn mark_all_unpublished(&mut self) {
        for (key, slot) in self.params.iter_mut() {
            if !slot.unpublished {
                slot.unpublished = true;
                self.changed.push(*key);
            }
        }
    }

    /// Dead letters since the last call.
    pub fn take_dead_letters(&mut self) -> Vec<DeadLetter> {
        std::mem::take(&mut self.dead_letters)
    }

    /// Counts by outcome since start.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// Counts for metrics since this engine was created or restored.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// A partition's event-time watermark (`i64::MIN` before its first
    /// sample).
    pub fn partition_watermark(&self, partition: u32) -> i64 {
        self.watermarks.partition_watermark(partition)
    }

    /// Every key with its state, in no particular order.
    pub fn params(&self) -> impl ExactSizeIterator<Item = (&ParamKey, &KeyState)> {
        self.params.iter().map(|(key, slot)| (key, &*slot.state))
    }

    /// One key's state.
    pub fn param(&self, key: &ParamKey) -> Option<&KeyState> {
        self.params.get(key).map(|slot| &*slot.state)
    }

    /// Keys in the parameter table.
    pub fn param_count(&self) -> usize {
        self.params.len()
    }

    /// The version registry.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Seeds an empty version with served parameters (the restore of last
    /// resort, see [`crate::fallback`]); the keys are checkpointed and
    /// published like updated ones. Returns how many keys were seeded.
    pub fn seed_version(
        &mut self,
        version: &str,
        states: Vec<(u64, KeyState)>,
    ) -> Result<usize, crate::fallback::SeedError> {
        use crate::fallback::{SeedError, check_model};
        let entry = self
            .registry
            .entries()
            .iter()
            .find(|e| e.spec.name == version)
            .ok_or_else(|| SeedError::UnknownVersion(version.to_owned()))?;
        let id = entry.id;
        if self.params.keys().any(|k| k.version == id) {
            return Err(SeedError::HasState(version.to_owned()));
        }
        check_model(&entry.spec, &states)?;
        let seeded = states.len();
        for (doc_id, state) in states {
            let key = ParamKey {
                version: id,
                doc_id,
            };
            self.insert_changed(key, state);
        }
        Ok(seeded)
    }

    /// Puts a new key's state in the table, marked for the next publish
    /// and checkpoint (seeded and forked keys: both start from a version
    /// without state).
    fn insert_changed(&mut self, key: ParamKey, state: KeyState) {
        let mut slot = Slot::clean(state);
        slot.mark(key, &mut self.changed, &mut self.dirty.params);
        let old = self.params.insert(key, slot);
        debug_assert!(old.is_none(), "{key:?} was in the table");
        self.stats.count_key(key.version);
    }

    /// Registers a version the served parameters list (the restore of
    /// last resort, on an engine without state: a version created at run
    /// time), retired when listed so.
    pub fn register_served(
        &mut self,
        version: crate::params::AnnouncedVersion,
    ) -> Result<VersionId, RegistryError> {
        let name = version.spec.name.clone();
        let id = self.registry.create(version.spec)?;
        if version.retired {
            self.registry.retire(&name)?;
        }
        Ok(id)
    }

    /// Registers a version; its samples are accepted from the next released
    /// sample on.
    pub fn create_version(&mut self, spec: VersionSpec) -> Result<VersionId, RegistryError> {
        self.registry.create(spec)
    }

    /// Schedules an admin command at its event time: it is applied after
    /// every sample below that time and before every sample at or after it
    /// (so at the same point on every learner and in every replay). A
    /// command whose time is already released is applied at once, at the
    /// current released watermark, and its outcome says so. Outcomes are
    /// collected by [`Engine::take_control_outcomes`].
    pub fn schedule(&mut self, command: Scheduled) -> ScheduleResult {
        let known = self.control.applied_ids.contains(&command.id)
            || self.control.scheduled.values().any(|c| c.id == command.id)
            || self
                .control
                .barrier
                .as_ref()
                .is_some_and(|c| c.id == command.id);
        if known {
            return ScheduleResult::Duplicate;
        }
        let arrival = self.control.next_arrival;
        if command.at_ms < self.released_below_ms {
            let at = self.released_below_ms;
            if command.command.is_barrier() {
                // Held at the current point, after the commands waiting
                // there, once no other barrier is held.
                self.control.next_arrival += 1;
                self.control.scheduled.insert((at, arrival), command);
                if self.control.barrier.is_none() {
                    self.apply_commands_until(at);
                }
            } else {
                self.apply_command(command, at);
            }
            return ScheduleResult::AppliedLate;
        }
        self.control.next_arrival += 1;
        self.control
            .scheduled
            .insert((command.at_ms, arrival), command);
        ScheduleResult::Scheduled
    }

    /// The barrier command the release stopped at, if any: a savepoint or
    /// a rollback (see [`Command::is_barrier`]) whose event time the
    /// release reached. Every sample below its time is applied, none at or
    /// after it; nothing more is released until the driver does the I/O
    /// the command needs and calls [`Engine::complete_barrier`]. Records
    /// keep arriving meanwhile and wait in the reorder buffer.
    pub fn barrier(&self) -> Option<&Scheduled> {
        self.control.barrier.as_ref()
    }

    /// Completes the held barrier command with what the driver did (for a
    /// rollback, after [`Engine::rollback_version`]), records its outcome
    /// and resumes the release up to the instance watermark, which may
    /// stop at the next barrier.
    pub fn complete_barrier(&mut self, result: Result<String, String>) {
        let Some(command) = self.control.barrier.take() else {
            return;
        };
        self.record_outcome(command, self.released_below_ms, result);
        self.release(self.watermarks.instance_watermark());
    }

    /// Replaces `version`'s parameters with `states` (doc id, state), as a
    /// rollback to a savepoint does: each key of the version takes its
    /// saved state, or the prior when the savepoint lacks it, with a
    /// sequence number one above the larger of its current and saved ones
    /// (so predictors see the rollback as newer values, and a replay
    /// reproduces it); the version's pending micro-batches are dropped.
    /// Every key touched is published and checkpointed. Keys of other
    /// versions are untouched.
    pub fn rollback_version(
        &mut self,
        version: &str,
        states: Vec<(u64, KeyState)>,
    ) -> Result<String, String> {
        let entry = self
            .registry
            .entries()
            .iter()
            .find(|e| e.spec.name == version)
            .ok_or_else(|| RegistryError::NotFound(version.to_owned()).to_string())?;
        let (id, model) = (entry.id, entry.spec.model.clone());
        crate::fallback::check_model(&entry.spec, &states).map_err(|e| e.to_string())?;
        let mut saved: std::collections::HashMap<u64, KeyState> = states.into_iter().collect();
        let keys = self.params.sorted_keys_of(id);
        let (mut restored, mut reset) = (0_usize, 0_usize);
        for key in keys {
            let slot = self.params.get_mut(&key).expect("listed keys exist");
            let current = slot.state.seq;
            let mut state = match saved.remove(&key.doc_id) {
                Some(state) => {
                    restored += 1;
                    state
                }
                None => {
                    reset += 1;
                    KeyState::prior(&model)
                }
            };
            state.seq = current.max(state.seq) + 1;
            slot.state = SharedState::new(state);
            slot.mark(key, &mut self.changed, &mut self.dirty.params);
        }
        let mut added: Vec<(u64, KeyState)> = saved.into_iter().collect();
        added.sort_unstable_by_key(|(doc, _)| *doc);
        let created = added.len();
        for (doc_id, mut state) in added {
            state.seq += 1;
            self.insert_changed(
                ParamKey {
                    version: id,
                    doc_id,
                },
                state,
            );
        }
        let dropped = self.batcher.remove_version(id);
        Ok(format!(
            "rolled {version:?} back: {} keys from the savepoint ({created} it alone held), \
             {reset} keys it lacked reset to the prior, {} pending micro-batches dropped",
            restored + created,
            dropped.len()
        ))
    }

    /// Commands waiting for their event time (a held barrier first).
    pub fn scheduled_commands(&self) -> impl Iterator<Item = &Scheduled> {
        self.control
            .barrier
            .iter()
            .chain(self.control.scheduled.values())
    }

    /// What became of the commands applied since the last call.
    pub fn take_control_outcomes(&mut self) -> Vec<Outcome> {
        std::mem::take(&mut self.control.outcomes)
    }

    /// Next offset of the `control` topic, as checkpointed.
    pub fn control_offset(&self) -> Option<u64> {
        self.control.next_offset
    }

    /// Records that the `control` topic was read up to `next_offset`.
    pub fn set_control_offset(&mut self, next_offset: u64) {
        self.control.next_offset = Some(next_offset);
    }

    /// Applies, in order, the scheduled commands with event time at or
    /// below `t`, up to the first barrier command, which it holds (the
    /// release never passes a barrier's time, so in the release loop none
    /// is met).
    fn apply_commands_until(&mut self, t: i64) {
        while let Some(entry) = self.control.scheduled.first_entry()
            && entry.key().0 <= t
        {
            let command = entry.remove();
            if command.command.is_barrier() {
                self.control.barrier = Some(command);
                return;
            }
            let at = command.at_ms;
            self.apply_command(command, at);
        }
    }

    fn apply_command(&mut self, command: Scheduled, applied_at_ms: i64) {
        let result = match &command.command {
            Command::Create(spec) => self
                .registry
                .create(spec.clone())
                .map(|id| format!("created version id {}", id.0))
                .map_err(|e| e.to_string()),
            Command::Fork {
                from,
                to,
                overrides,
            } => self.fork(from, to, overrides),
            Command::Retire(name) => self
                .registry
                .retire(name)
                .map(|id| {
                    // Its open micro-batches close here: what it took
                    // before the retirement is applied now, and nothing
                    // changes its parameters after it (a batch without an
                    // age trigger would otherwise wait for the input's end).
                    for (key, batch) in self.batcher.take_version(id) {
                        self.apply(key, &batch);
                        self.recycle(batch);
                    }
                    format!("retired {name:?}")
                })
                .map_err(|e| e.to_string()),
            Command::Savepoint { .. } | Command::Rollback { .. } => {
                unreachable!("barrier commands are held, not applied here")
            }
        };
        self.record_outcome(command, applied_at_ms, result);
    }

    fn record_outcome(
        &mut self,
        command: Scheduled,
        applied_at_ms: i64,
        result: Result<String, String>,
    ) {
        self.control.applied_ids.insert(command.id.clone());
        self.control.outcomes.push(Outcome {
            id: command.id,
            issued_by: command.issued_by,
            at_ms: command.at_ms,
            applied_at_ms,
            result,
        });
    }

    /// Registers `to` and copies every key of `from` into it.
    fn fork(
        &mut self,
        from: &str,
        to: &str,
        overrides: &posterior_proto::v1::VersionOverrides,
    ) -> Result<String, String> {
        let source = self
            .registry
            .entries()
            .iter()
            .find(|e| e.spec.name == from)
            .ok_or_else(|| RegistryError::NotFound(from.to_owned()).to_string())?;
        let from_id = source.id;
        let spec = forked_spec(&source.spec, to, overrides);
        let to_id = self.registry.create(spec).map_err(|e| e.to_string())?;
        let copies: Vec<(ParamKey, KeyState)> = self
            .params
            .iter()
            .filter(|(k, _)| k.version == from_id)
            .map(|(k, state)| {
                let key = ParamKey {
                    version: to_id,
                    doc_id: k.doc_id,
                };
                (key, KeyState::clone(&state.state))
            })
            .collect();
        let copied = copies.len();
        for (key, state) in copies {
            self.insert_changed(key, state);
        }
        Ok(format!(
            "forked {from:?} into {to:?} (version id {}), {copied} keys warm-started",
            to_id.0
        ))
    }

    /// Releases the buffered samples below `watermark_ms`, applying the
    /// commands due on the way; stops at the first barrier command below
    /// it (see [`Engine::barrier`]).
    fn release(&mut self, watermark_ms: i64) {
        if self.control.barrier.is_some() {
            return;
        }
        let stop = if self.control.scheduled.is_empty() {
            None
        } else {
            self.control
                .first_barrier_at()
                .filter(|&t| t < watermark_ms)
        };
        let upto = stop.map_or(watermark_ms, |t| t.max(self.released_below_ms));
        if upto > self.released_below_ms {
            let mut releasing = std::mem::take(&mut self.releasing);
            let mut resolved = std::mem::take(&mut self.resolved);
            while self
                .buffer
                .release_below_into(upto, RELEASE_PART, &mut releasing)
                > 0
            {
                // In groups, so what a group's warm-up fetched is still in
                // the caches when the group is processed. Each sample is
                // processed where it lies: moving ~170 bytes out per sample
                // cost the Beta path two copies.
                for group in releasing.chunks_mut(PREFETCH_GROUP) {
                    resolved.clear();
                    self.warm(group, &mut resolved);
                    // Only a command changes the registry: with none
                    // waiting, the versions `warm` resolved hold for the
                    // whole group (no name is looked up twice).
                    let whole = self.control.scheduled.is_empty() && resolved.len() == group.len();
                    for (i, (key, sample)) in group.iter_mut().enumerate() {
                        if !self.control.scheduled.is_empty() {
                            self.apply_commands_until(key.event_time_ms);
                        }
                        let version = if whole {
                            Version::Resolved(resolved[i])
                        } else {
                            Version::Lookup
                        };
                        self.process(*key, sample, version);
                    }
                }
                releasing.clear();
            }
            // A millisecond can hold more than a part: that room is not kept.
            releasing.shrink_to(RELEASING_KEPT);
            self.releasing = releasing;
            self.resolved = resolved;
            if !self.control.scheduled.is_empty() {
                self.apply_commands_until(upto - 1);
            }
            self.released_below_ms = upto;
        }
        if stop.is_some() {
            self.apply_commands_until(upto);
        }
    }

    /// Prefetches what processing `released` will read, before
    /// processing any of it.
    ///
    /// A released sample has waited in the reorder buffer for up to the
    /// allowed out-of-orderness, so its context (its one heap part) and
    /// its key's slot and state are out of the caches;
    /// processed one by one, each sample would wait for those misses in
    /// turn. Asked for together, they overlap. A hint only: what a command
    /// changes between two samples is still read afresh by `process`.
    ///
    /// Appends to `resolved` the key of each of `released`'s samples in
    /// its live version, located in the parameter table (`None`: unknown
    /// or retired version), in order — or nothing, for a group too small
    /// to warm.
    fn warm(&self, released: &[(OrderKey, Sample)], resolved: &mut Vec<Option<Located>>) {
        if released.len() < 2 {
            return;
        }
        // A sample's version and labels are inline (`sample::Name`): its
        // one heap part is the context.
        for (_, sample) in released {
            prefetch_slice(&sample.context);
        }
        // Resolving versions (string hashing) between the table lookups
        // would keep too few lookups in flight: keys first.
        // A group's samples share a handful of versions: each name is
        // hashed and looked up once, then compared with those seen. Each
        // key is hashed once, here, for every lookup of it in the
        // parameter table up to its update.
        let mut seen: [(&str, Option<VersionId>); SEEN_VERSIONS] = [("", None); SEEN_VERSIONS];
        let mut filled = 0;
        resolved.extend(released.iter().map(|(_, sample)| {
            let name = sample.version.as_str();
            let id = match seen[..filled].iter().find(|(n, _)| names_equal(n, name)) {
                Some(&(_, id)) => id,
                None => {
                    let id = self.registry.live(name).map(|e| e.id);
                    // Past `SEEN_VERSIONS` names, the others are looked up
                    // each time.
                    if filled < SEEN_VERSIONS {
                        seen[filled] = (name, id);
                        filled += 1;
                    }
                    id
                }
            };
            id.map(|version| {
                self.params.located(&ParamKey {
                    version,
                    doc_id: sample.doc_id,
                })
            })
        }));
        // The batches the age trigger applies in this group are other keys'
        // (started one `max_age_ms` earlier): their slots and states too.
        let soon: Vec<Located> = if self.batcher.is_empty() {
            Vec::new()
        } else {
            self.batcher
                .due_soon(released.len())
                .map(|key| self.params.located(key))
                .collect()
        };
        // The states read now are those of the samples applied as they
        // are released — every one at batch 1 — and of the due batches.
        // With micro-batches most samples wait in a batch instead; of
        // those released, the positives are asked for where positives fill
        // a batch (a hint: a positive may still wait, a count may fill).
        let policy = self.batcher.policy();
        let applied: Vec<Located> = if policy.max_samples <= 1 {
            resolved.iter().flatten().copied().collect()
        } else if policy.max_positives == 0 {
            Vec::new()
        } else {
            released
                .iter()
                .zip(resolved.iter())
                .filter_map(|((_, sample), at)| {
                    let at = (*at)?;
                    let entry = self.registry.get(at.key.version)?;
                    entry.spec.rewards(sample).then_some(at)
                })
                .collect()
        };
        for at in applied.iter().chain(&soon) {
            self.params.prefetch_located(at);
        }
        // Their pending batches' lookups likewise (a due batch's key is
        // looked up in both tables).
        let keys = || resolved.iter().flatten().map(|at| &at.key);
        if !self.batcher.is_empty() {
            for key in keys().chain(soon.iter().map(|at| &at.key)) {
                self.batcher.prefetch_lookup(key);
            }
        }
        // A state's heap parts are asked for once the state has arrived,
        // which reading it waits for: only where there are parts (not for
        // Beta states, which are all inline).
        let states: Vec<&SharedState> = applied
            .iter()
            .chain(&soon)
            .filter_map(|at| {
                let slot = self.params.get_located(at)?;
                prefetch(slot.state.as_ptr());
                self.registry
                    .get(at.key.version)
                    .is_some_and(|e| e.spec.model.kind.has_prefetched_parts())
                    .then_some(&slot.state)
            })
            .collect();
        for state in states {
            state.prefetch_parts();
        }
        if !self.batcher.is_empty() {
            for key in keys() {
                self.batcher.prefetch(key);
            }
            self.batcher.prefetch_due(released.len());
            // Reading a due batch's observations for their contexts waits
            // for them: not where no version has a context.
            if self
                .registry
                .entries()
                .iter()
                .any(|e| e.spec.model.kind.dim() > 0)
            {
                self.batcher.prefetch_due_contexts(released.len());
            }
        }
    }

    /// Applies (or batches, or dead-letters) one released sample. Its
    /// context moves into the batch; the caller drops the rest.
    fn process(&mut self, origin: OrderKey, sample: &mut Sample, version: Version) {
        let mut ready = std::mem::take(&mut self.ready);
        self.batcher.due_into(origin.event_time_ms, &mut ready);
        for (key, batch) in ready.drain(..) {
            self.apply(key, &batch);
            self.recycle(batch);
        }
        self.ready = ready;
        let (entry, located) = match version {
            Version::Resolved(at) => (at.and_then(|at| self.registry.get(at.key.version)), at),
            Version::Lookup => (self.registry.live(&sample.version), None),
        };
        debug_assert_eq!(
            entry.map(|e| e.id),
            self.registry.live(&sample.version).map(|e| e.id),
            "a resolved version is the one a lookup finds"
        );
        let Some(entry) = entry else {
            let detail = format!("version {:?} is not registered or retired", sample.version);
            self.dead(
                origin.partition,
                origin.offset,
                "unknown_version",
                detail,
                Some(sample),
            );
            return;
        };
        let key = ParamKey {
            version: entry.id,
            doc_id: sample.doc_id,
        };
        debug_assert!(located.is_none_or(|at| at.key == key));
        // The entry is the one the sample's version names (above).
        let (reward, weight) = match entry.spec.observation_of_own(sample) {
            Ok(obs) => (obs.reward, obs.weight),
            Err(err) => {
                self.dead(
                    origin.partition,
                    origin.offset,
                    err.reason(),
                    err.to_string(),
                    Some(sample),
                );
                return;
            }
        };
        // Only a sample that will be applied holds its id: one refused
        // above (a missing label, say) and sent again corrected is not a
        // duplicate.
        if let (Some(dedup), Some(id)) = (self.dedup.as_mut(), sample.sample_id.as_deref())
            && dedup.check(id, origin.event_time_ms)
        {
            let detail = format!("sample_id {id:?} already applied");
            self.dead(
                origin.partition,
                origin.offset,
                "duplicate",
                detail,
                Some(sample),
            );
            return;
        }
        let obs = PendingObservation {
            origin,
            context: std::mem::take(&mut sample.context),
            reward,
            weight,
        };
        if self.batcher.fills_alone(key, &obs) {
            // Nothing was pending for the key and nothing will be.
            let at = located.unwrap_or_else(|| self.params.located(&key));
            self.apply_located(&at, std::slice::from_ref(&obs));
            if let Some(contexts) = &mut self.contexts {
                contexts.give(obs.context);
            }
        } else {
            if let Some(batch) = self.batcher.push_pending(key, obs) {
                self.apply(key, &batch);
                self.recycle(batch);
            }
        }
    }

    /// Gives an applied batch's vector back to the batcher, and its
    /// contexts to the reader that decoded them.
    fn recycle(&mut self, mut batch: Vec<PendingObservation>) {
        if let Some(contexts) = &mut self.contexts {
            for obs in &mut batch {
                contexts.give(std::mem::take(&mut obs.context));
            }
        }
        self.batcher.recycle(batch);
    }

    /// Hands the contexts of applied samples back through `contexts`, to
    /// the reader thread that decoded them, which reuses their vectors
    /// ([`crate::contexts`]; from
    /// [`crate::kafka::KafkaSource::context_return`] or
    /// [`crate::file_source::FileReadAhead::context_return`]). Changes no
    /// result.
    pub fn return_contexts_to(&mut self, contexts: ContextReturn) {
        self.contexts = Some(contexts);
    }

    fn apply(&mut self, key: ParamKey, batch: &[PendingObservation]) {
        self.apply_located(&self.params.located(&key), batch);
    }

    /// [`Engine::apply`] to a key located in the parameter table.
    fn apply_located(&mut self, at: &Located, batch: &[PendingObservation]) {
        let key = at.key;
        let spec = &self
            .registry
            .get(key.version)
            .expect("keys are created from registered versions")
            .spec;
        // The views of a batch up to `BATCH_VIEWS` long stay on the stack
        // (most are: a micro-batch policy caps a batch at a few samples).
        // Built in place: a collected `SmallVec` is returned by value, a
        // copy of all its room (3.6 % of bench 1's micro-batched Beta
        // thread), and a batch of one — nearly every update — needs no
        // vector.
        let one: [Observation<'_>; 1];
        let mut many: SmallVec<[Observation<'_>; BATCH_VIEWS]>;
        let observations: &[Observation<'_>] = if let [obs] = batch {
            one = [obs.as_observation()];
            &one
        } else {
            many = SmallVec::new();
            many.extend(batch.iter().map(PendingObservation::as_observation));
            &many
        };
        let (changed, dirty) = (&mut self.changed, &mut self.dirty.params);
        let updated = match self.params.get_mut_located(at) {
            Some(slot) => slot
                .state
                .make_mut()
                .update(&spec.model, observations)
                .map(|stats| {
                    slot.mark(key, changed, dirty);
                    stats.converged
                }),
            // A key enters the table with its first successful update: a
            // refused first batch leaves no prior behind (which a restore
            // would not have).
            None => {
                let mut state = KeyState::prior(&spec.model);
                state.update(&spec.model, observations).map(|stats| {
                    let mut slot = Slot::clean(state);
                    slot.mark(key, changed, dirty);
                    self.params.insert(key, slot);
                    self.stats.count_key(key.version);
                    stats.converged
                })
            }
        };
        match updated {
            Ok(converged) => {
                if !converged {
                    self.stats.count_unconverged(key.version);
                }
                self.counters.applied += batch.len() as u64;
                self.counters.updates += 1;
                let newest = batch.last().map_or(i64::MIN, |o| o.origin.event_time_ms);
                self.stats.count_batch(key.version, batch.len(), newest);
            }
            Err(err) => {
                let version = spec.name.clone();
                let n = batch.len() as u64;
                *self.counters.dead.entry("rejected_update").or_default() += n;
                *self
                    .stats
                    .dead_by_version
                    .entry(("rejected_update", Some(key.version)))
                    .or_default() += n;
                for obs in batch {
                    self.dead_letters.push(DeadLetter {
                        partition: obs.origin.partition,
                        offset: obs.origin.offset,
                        reason: "rejected_update",
                        detail: err.to_string(),
                        doc_id: Some(key.doc_id),
                        version: Some(version.clone()),
                        event_time_ms: Some(obs.origin.event_time_ms),
                    });
                }
            }
        }
    }

    fn dead(
        &mut self,
        partition: u32,
        offset: u64,
        reason: &'static str,
        detail: String,
        sample: Option<&Sample>,
    ) {
        *self.counters.dead.entry(reason).or_default() += 1;
        let version = sample.and_then(|s| self.registry.id(&s.version));
        *self
            .stats
            .dead_by_version
            .entry((reason, version))
            .or_default() += 1;
        self.dead_letters.push(DeadLetter {
            partition,
            offset,
            reason,
            detail,
            doc_id: sample.map(|s| s.doc_id),
            version: sample.map(|s| s.version.to_string()),
            event_time_ms: sample.map(|s| s.event_time_ms),
        });
    }
}

mod persist;
#[cfg(test)]
mod tests;

pub use persist::{
    Ahead, DeltaPuts, Entries, MemoryStore, SPARE_IDLE_CHECKPOINTS, SpareWrites, Write, sort_puts,
};
