//! Per-key micro-batches. A key's batch is applied when it reaches a
//! sample count, a count of positives (the positive/negative ratio knob of
//! the seed systems), or an event-time age. Age is measured against the
//! event time of the sample being released, never the wall clock, so a
//! replay cuts the same batches.

use std::collections::VecDeque;

use crate::keymap::{FlatKeyMap, ONE_SHARD};
use crate::posterior::Observation;
use crate::prefetch::{prefetch, prefetch_slice};
use crate::registry::{ParamKey, VersionId};
use crate::reorder::OrderKey;

/// When a key's pending batch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Apply at this many samples (≥ 1; 1 = every sample on its own).
    pub max_samples: usize,
    /// Apply at this many positives (0 = off).
    pub max_positives: usize,
    /// Apply once the oldest pending sample is this much older than the
    /// sample being released (`None` = off).
    pub max_age_ms: Option<i64>,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_samples: 1,
            max_positives: 0,
            max_age_ms: None,
        }
    }
}

/// An observation that owns its context, waiting in a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingObservation {
    /// Where the sample came from (for dead letters if the batch is refused).
    pub origin: OrderKey,
    /// Context vector.
    pub context: Vec<f32>,
    /// Reward.
    pub reward: bool,
    /// Weight.
    pub weight: f64,
}

impl PendingObservation {
    /// A borrowed view for the maths.
    pub fn as_observation(&self) -> Observation<'_> {
        Observation {
            context: &self.context,
            reward: self.reward,
            weight: self.weight,
            event_time_ms: self.origin.event_time_ms,
        }
    }
}

/// A key's pending batch.
#[derive(Debug, Clone, Default)]
pub struct PendingBatch {
    /// Observations in release order.
    pub observations: Vec<PendingObservation>,
    positives: u32,
    /// The store's pending table holds this batch (as of some checkpoint).
    stored: bool,
    /// Changed since the last checkpoint; listed in `Batcher::changed`.
    unstored: bool,
}

impl PartialEq for PendingBatch {
    /// Equal observations; where the store stands is not compared.
    fn eq(&self, other: &Self) -> bool {
        self.observations == other.observations && self.positives == other.positives
    }
}

/// Every key's pending batch.
#[derive(Debug, Clone, Default)]
pub struct Batcher {
    policy: BatchPolicy,
    pending: FlatKeyMap<PendingBatch, ONE_SHARD>,
    /// (origin of its first observation, key) of every batch started
    /// while the age trigger is on, in release order. Samples are pushed
    /// in release order, so appending keeps the queue sorted; a batch
    /// taken by another trigger leaves its entry behind, skipped when it
    /// reaches the front (lazy deletion: a push and a pop per batch
    /// instead of an ordered set's insert and remove, which were a tenth
    /// of the micro-batching bench's time). An entry is its batch's only
    /// while the key's batch starts at that very origin: a batch of the
    /// key started again in the same millisecond has its own entry, and
    /// its own place in the order.
    by_age: VecDeque<(OrderKey, ParamKey)>,
    /// The queue may be out of order (after a restore, or a push older
    /// than the newest entry): sorted before it is read.
    by_age_unsorted: bool,
    /// Emptied observation vectors of applied batches, for new batches
    /// (a batch of one sample no longer costs an allocation and a free).
    spare: Vec<Vec<PendingObservation>>,
    /// Keys whose batch changed since the last checkpoint (the mark is in
    /// the batch, so marking costs no lookup in a set). A key whose batch
    /// was taken and started again is listed again; the list is compacted
    /// when it outgrows the pending table, so a run without checkpoints
    /// does not grow it without bound.
    changed: Vec<ParamKey>,
    /// Keys whose stored batch was taken since the last checkpoint: the
    /// store's entry must go (a new batch of the key is put after the
    /// delete).
    gone: Vec<ParamKey>,
}

/// Entries of the change list or the age queue beyond twice the pending
/// batches before it is compacted (a handful in tests, so that the
/// proptests compact often).
const CHANGED_SLACK: usize = if cfg!(test) { 4 } else { 1024 };

/// Changed batches looked up together by [`Batcher::take_changes`].
const CHANGES_GROUP: usize = 16;

/// Emptied batch vectors kept for reuse.
const SPARE_VECTORS: usize = 1024;
/// Largest capacity of a vector kept for reuse (a larger one, from a
/// restore or a large `max_samples`, is freed).
const SPARE_CAPACITY: usize = 64;

impl PartialEq for Batcher {
    /// Equal policies and pending batches; the age queue's stale entries
    /// and the spare vectors are not state.
    fn eq(&self, other: &Self) -> bool {
        self.policy == other.policy && self.pending == other.pending
    }
}

/// A batch ready to apply.
pub type ReadyBatch = (ParamKey, Vec<PendingObservation>);

impl Batcher {
    /// An empty batcher.
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy: BatchPolicy {
                max_samples: policy.max_samples.max(1),
                ..policy
            },
            ..Self::default()
        }
    }

    /// The policy (with `max_samples` at least 1).
    pub fn policy(&self) -> BatchPolicy {
        self.policy
    }

    /// Keys with a pending batch.
    pub fn pending_keys(&self) -> usize {
        self.pending.len()
    }

    /// Adds an observation; returns the key's batch if a trigger fired.
    /// Observations are expected in release order (event time never
    /// decreasing); an older one is still handled correctly, at the cost
    /// of a sort.
    pub fn push(
        &mut self,
        key: ParamKey,
        obs: PendingObservation,
    ) -> Option<Vec<PendingObservation>> {
        if self.fills_alone(key, &obs) {
            let mut alone = self.spare.pop().unwrap_or_default();
            alone.push(obs);
            return Some(alone);
        }
        self.push_pending(key, obs)
    }

    /// [`Batcher::push`] for an observation that does not
    /// [fill a batch alone](Batcher::fills_alone), which the caller has
    /// checked (one lookup fewer); one that does is batched and taken at
    /// once, with the same result.
    pub fn push_pending(
        &mut self,
        key: ParamKey,
        obs: PendingObservation,
    ) -> Option<Vec<PendingObservation>> {
        let spare = &mut self.spare;
        let batch = self.pending.get_or_insert_with(key, || PendingBatch {
            observations: spare.pop().unwrap_or_default(),
            ..PendingBatch::default()
        });
        if !batch.unstored {
            batch.unstored = true;
            self.changed.push(key);
        }
        if batch.observations.is_empty() && self.policy.max_age_ms.is_some() {
            // Only the age trigger reads the queue.
            let origin = obs.origin;
            if self
                .by_age
                .back()
                .is_some_and(|&(newest, _)| origin < newest)
            {
                self.by_age_unsorted = true;
            }
            self.by_age.push_back((origin, key));
        }
        batch.positives = batch.positives.saturating_add(u32::from(obs.reward));
        batch.observations.push(obs);
        let full = batch.observations.len() >= self.policy.max_samples
            || (self.policy.max_positives > 0
                && batch.positives as usize >= self.policy.max_positives);
        if self.changed.len() > 2 * self.pending.len() + CHANGED_SLACK {
            self.compact_changed();
        }
        if self.by_age.len() > 2 * self.pending.len() + CHANGED_SLACK {
            self.compact_by_age();
        }
        full.then(|| self.take(key))
    }

    /// Gives back the vector of a batch taken from this batcher once it is
    /// applied, so the next batch reuses it.
    pub fn recycle(&mut self, mut observations: Vec<PendingObservation>) {
        if self.spare.len() < SPARE_VECTORS && observations.capacity() <= SPARE_CAPACITY {
            observations.clear();
            self.spare.push(observations);
        }
    }

    /// True when no batch is pending.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Asks for the place where a lookup of `key` starts; a hint, for a
    /// release to call on a group of keys well before pushing to them
    /// (then [`Batcher::prefetch`]).
    pub fn prefetch_lookup(&self, key: &ParamKey) {
        self.pending.prefetch(key);
    }

    /// Looks `key` up and asks for the room its next observation will be
    /// written to; a hint, for a release to call on a group of keys before
    /// pushing to them: the lookups of a group overlap where the pushes,
    /// one after the other, would each wait for theirs.
    pub fn prefetch(&self, key: &ParamKey) {
        if let Some(batch) = self.pending.get(key) {
            let observations = &batch.observations;
            prefetch(observations.as_ptr().wrapping_add(observations.len()));
        }
    }

    /// Looks up the batches of the first `n` entries of the age queue,
    /// which the next calls of [`Batcher::due`] read, and asks for their
    /// first observations; a hint, like [`Batcher::prefetch`].
    pub fn prefetch_due(&self, n: usize) {
        if self.policy.max_age_ms.is_none() {
            return;
        }
        for (_, key) in self.by_age.iter().take(n) {
            if let Some(batch) = self.pending.get(key) {
                prefetch(batch.observations.as_ptr());
            }
        }
    }

    /// Asks for the contexts of the batches [`Batcher::prefetch_due`]
    /// asked for (reading those batches' observations, which should have
    /// arrived by then); a hint. A batch applied by age has waited
    /// `max_age_ms` since its first sample: its contexts are out of the
    /// caches too, and were the first miss of the update.
    pub fn prefetch_due_contexts(&self, n: usize) {
        if self.policy.max_age_ms.is_none() {
            return;
        }
        for (_, key) in self.by_age.iter().take(n) {
            if let Some(batch) = self.pending.get(key) {
                for obs in &batch.observations {
                    prefetch_slice(&obs.context);
                }
            }
        }
    }

    /// Keys of the first `n` entries of the age queue: the batches the next
    /// calls of [`Batcher::due`] may apply (some entries are stale). Empty
    /// without an age trigger.
    pub fn due_soon(&self, n: usize) -> impl Iterator<Item = &ParamKey> {
        let n = if self.policy.max_age_ms.is_some() {
            n
        } else {
            0
        };
        self.by_age.iter().take(n).map(|(_, key)| key)
    }

    /// Whether `obs` would be a batch of its own: `key` has nothing pending
    /// and `obs` alone fires a trigger. Such a batch can be applied at once,
    /// without going through the pending table and the age index (the
    /// common case of `max_samples = 1`).
    pub fn fills_alone(&self, key: ParamKey, obs: &PendingObservation) -> bool {
        (self.policy.max_samples <= 1 || (self.policy.max_positives == 1 && obs.reward))
            && (self.pending.is_empty() || !self.pending.contains_key(&key))
    }

    /// Removes and returns the batches whose oldest sample is at least
    /// `max_age_ms` older than `now_ms`, in the release order of their
    /// first samples: by event time, then partition, then offset — the
    /// order in which a running engine started them, so a restored one
    /// applies them in the same order.
    pub fn due(&mut self, now_ms: i64) -> Vec<ReadyBatch> {
        let mut ready = Vec::new();
        self.due_into(now_ms, &mut ready);
        ready
    }

    /// [`Batcher::due`] appending to `ready`: called for every released
    /// sample, it allocates nothing when the caller keeps `ready`.
    pub fn due_into(&mut self, now_ms: i64, ready: &mut Vec<ReadyBatch>) {
        let Some(max_age_ms) = self.policy.max_age_ms else {
            return;
        };
        if self.by_age.front().is_none_or(|&(oldest, _)| {
            !self.by_age_unsorted && now_ms.saturating_sub(oldest.event_time_ms) < max_age_ms
        }) {
            return;
        }
        if self.by_age_unsorted {
            self.by_age.make_contiguous().sort_unstable();
            self.by_age_unsorted = false;
        }
        // The queue is in release order: its due batches are taken as they
        // come, with no sort.
        while let Some(&(oldest, key)) = self.by_age.front()
            && now_ms.saturating_sub(oldest.event_time_ms) >= max_age_ms
        {
            self.by_age.pop_front();
            // The entry's batch, if it is still the key's (see `is_current`),
            // found and removed in one lookup.
            if let Some(batch) = self.pending.remove_if(&key, |b| starts_at(b, oldest)) {
                let observations = self.taken(key, batch);
                ready.push((key, observations));
            }
        }
    }

    /// Whether the age queue's entry (`origin`, `key`) is its batch's:
    /// the key's batch starts at `origin`. Otherwise the batch it was
    /// pushed for has been taken (by count, by positives, or by age at an
    /// entry of the same origin), and the key has no batch or one started
    /// since, which has an entry of its own.
    fn is_current(&self, origin: OrderKey, key: ParamKey) -> bool {
        self.pending.get(&key).is_some_and(|b| starts_at(b, origin))
    }

    /// Removes and returns every batch, in key order (end of a bounded input).
    pub fn drain(&mut self) -> Vec<ReadyBatch> {
        let mut keys: Vec<ParamKey> = self.pending.keys().copied().collect();
        keys.sort_unstable();
        let drained = keys.into_iter().map(|k| (k, self.take(k))).collect();
        self.changed.clear();
        self.by_age.clear();
        self.by_age_unsorted = false;
        drained
    }

    /// Removes and returns every batch of `version`, in key order (the
    /// version is retired: its open batches close at that point).
    pub fn take_version(&mut self, version: VersionId) -> Vec<ReadyBatch> {
        let keys = self.pending.sorted_keys_of(version);
        keys.into_iter().map(|k| (k, self.take(k))).collect()
    }

    /// A key's pending observations, if any.
    pub fn get(&self, key: ParamKey) -> Option<&[PendingObservation]> {
        self.pending.get(&key).map(|b| b.observations.as_slice())
    }

    /// Every pending batch, for checkpoints.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamKey, &PendingBatch)> {
        self.pending.iter()
    }

    /// Drops the age queue's stale entries (batches taken by another
    /// trigger), keeping the order: with a long `max_age_ms` and batches
    /// filled by count they would otherwise pile up for that long.
    fn compact_by_age(&mut self) {
        let mut by_age = std::mem::take(&mut self.by_age);
        by_age.retain(|&(origin, key)| self.is_current(origin, key));
        self.by_age = by_age;
    }

    /// Drops the listed keys that have no batch now and the repeats (a
    /// batch that exists is marked changed only while it is listed).
    fn compact_changed(&mut self) {
        self.changed.sort_unstable();
        self.changed.dedup();
        let pending = &self.pending;
        self.changed.retain(|key| pending.contains_key(key));
    }

    /// At least as many writes as the next [`Self::take_changes`] makes (the
    /// change list counts a batch taken and started again twice), for a
    /// caller to reserve room once.
    pub fn changes_bound(&self) -> usize {
        self.changed.len() + self.gone.len()
    }

    /// Brings the store's pending table up to date: first calls `change`
    /// with `None` for each key whose stored entry must go (a stored
    /// batch taken since; a key at most once, in no particular order),
    /// then with each batch changed since the last call, in the order they
    /// first changed (not sorted: the checkpoint writer sorts). A key can
    /// be both deleted and put (its stored batch was taken and a new one
    /// started): the writes must be applied in the order given. From here
    /// on the batches given to `change` count as stored.
    ///
    /// Nothing here looks up a deleted key: a key is listed for deletion
    /// when its stored batch is taken, and between two checkpoints no
    /// batch becomes stored, so it is listed once. The changed batches
    /// are looked up a group at a time (see the body): marking and
    /// encoding them would otherwise wait for each one's misses in turn.
    pub fn take_changes(
        &mut self,
        mut change: impl FnMut(ParamKey, Option<&[PendingObservation]>),
    ) {
        for key in self.gone.drain(..) {
            change(key, None);
        }
        // A key taken and started again since is listed twice: its batch is
        // put at the first listing, and then no longer marked.
        let mut changed = std::mem::take(&mut self.changed);
        for group in changed.chunks(CHANGES_GROUP) {
            // The batches are out of the caches: a group's lookups go
            // first, back to back so that their misses overlap — the
            // places where the lookups start, then the batches, asking
            // for the observations, then the observations' contexts; the
            // last pass finds them all cached.
            for key in group {
                self.pending.prefetch(key);
            }
            for key in group {
                if let Some(batch) = self.pending.get(key) {
                    prefetch(batch.observations.as_ptr());
                }
            }
            for key in group {
                if let Some(batch) = self.pending.get(key) {
                    for obs in &batch.observations {
                        prefetch_slice(&obs.context);
                    }
                }
            }
            for key in group {
                // Taken since it changed: nothing to put (a stored one is
                // in `gone`).
                if let Some(batch) = self.pending.get_mut(key)
                    && batch.unstored
                {
                    batch.unstored = false;
                    batch.stored = true;
                    change(*key, Some(&batch.observations));
                }
            }
        }
        changed.clear();
        self.changed = changed;
    }

    /// Forgets what the store holds, so the next [`Self::take_changes`]
    /// writes every batch (for a complete checkpoint into an empty store).
    pub fn mark_all_unstored(&mut self) {
        self.gone.clear();
        self.changed.clear();
        for (key, batch) in self.pending.iter_mut() {
            batch.stored = false;
            batch.unstored = true;
            self.changed.push(*key);
        }
    }

    /// Restores a key's pending batch from a checkpoint (it counts as
    /// stored).
    pub fn restore(&mut self, key: ParamKey, observations: Vec<PendingObservation>) {
        if let Some(first) = observations.first() {
            if self.policy.max_age_ms.is_some() {
                self.by_age.push_back((first.origin, key));
                self.by_age_unsorted = true;
            }
            let positives =
                u32::try_from(observations.iter().filter(|o| o.reward).count()).unwrap_or(u32::MAX);
            self.pending.insert(
                key,
                PendingBatch {
                    observations,
                    positives,
                    stored: true,
                    unstored: false,
                },
            );
        }
    }

    /// Drops every pending batch of `version`; returns their keys.
    pub fn remove_version(&mut self, version: VersionId) -> Vec<ParamKey> {
        self.take_version(version)
            .into_iter()
            .map(|(key, dropped)| {
                self.recycle(dropped);
                key
            })
            .collect()
    }

    /// Removes a key's batch (its entry in the age queue goes stale; a
    /// stored one is listed for deletion).
    fn take(&mut self, key: ParamKey) -> Vec<PendingObservation> {
        match self.pending.remove(&key) {
            Some(batch) => self.taken(key, batch),
            None => Vec::new(),
        }
    }

    /// The observations of `key`'s batch, just removed from the table; a
    /// stored batch's entry is listed for deletion from the store.
    fn taken(&mut self, key: ParamKey, batch: PendingBatch) -> Vec<PendingObservation> {
        if batch.stored {
            self.gone.push(key);
        }
        batch.observations
    }
}

/// Whether `batch` starts at `origin`.
#[inline]
fn starts_at(batch: &PendingBatch, origin: OrderKey) -> bool {
    batch
        .observations
        .first()
        .is_some_and(|first| first.origin == origin)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::VersionId;

    /// What a checkpoint writes, collected: the deletes go first.
    #[derive(Debug, Default, PartialEq)]
    struct Changes {
        deletes: Vec<ParamKey>,
        puts: Vec<(ParamKey, Vec<PendingObservation>)>,
    }

    fn changes(b: &mut Batcher) -> Changes {
        let (mut deletes, mut puts) = (Vec::new(), Vec::new());
        b.take_changes(|key, batch| match batch {
            None => deletes.push(key),
            Some(batch) => puts.push((key, batch.to_vec())),
        });
        Changes { deletes, puts }
    }

    fn key(doc: u64) -> ParamKey {
        ParamKey {
            version: VersionId(0),
            doc_id: doc,
        }
    }

    fn obs(t: i64, reward: bool) -> PendingObservation {
        PendingObservation {
            origin: OrderKey {
                event_time_ms: t,
                partition: 0,
                offset: t as u64,
            },
            context: vec![],
            reward,
            weight: 1.0,
        }
    }

    /// An observation from `offset` of `partition` at `t`.
    fn at(t: i64, partition: u32, offset: u64) -> PendingObservation {
        PendingObservation {
            origin: OrderKey {
                event_time_ms: t,
                partition,
                offset,
            },
            ..obs(t, false)
        }
    }

    #[test]
    fn count_and_positive_triggers() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 3,
            max_positives: 1,
            max_age_ms: None,
        });
        assert!(b.push(key(1), obs(1, false)).is_none());
        assert!(b.push(key(1), obs(2, false)).is_none());
        assert_eq!(b.push(key(1), obs(3, false)).map(|v| v.len()), Some(3));
        assert!(b.push(key(2), obs(4, false)).is_none());
        assert_eq!(
            b.push(key(2), obs(5, true)).map(|v| v.len()),
            Some(2),
            "one positive flushes"
        );
        assert_eq!(b.pending_keys(), 0);
    }

    #[test]
    fn age_trigger_uses_event_time_oldest_first() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 100,
            max_positives: 0,
            max_age_ms: Some(10),
        });
        b.push(key(2), obs(5, false));
        b.push(key(1), obs(7, false));
        b.push(key(2), obs(8, false));
        assert!(b.due(14).is_empty());
        let due = b.due(17);
        assert_eq!(
            due.iter()
                .map(|(k, v)| (k.doc_id, v.len()))
                .collect::<Vec<_>>(),
            vec![(2, 2), (1, 1)]
        );
        assert!(b.due(1_000).is_empty());
    }

    #[test]
    fn drain_is_in_key_order() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 10,
            ..BatchPolicy::default()
        });
        for doc in [5, 1, 3] {
            b.push(key(doc), obs(doc as i64, true));
        }
        let docs: Vec<u64> = b.drain().into_iter().map(|(k, _)| k.doc_id).collect();
        assert_eq!(docs, vec![1, 3, 5]);
    }

    #[test]
    fn a_batch_taken_by_count_leaves_no_due_batch_behind() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            max_positives: 0,
            max_age_ms: Some(10),
        });
        assert!(b.push(key(1), obs(1, false)).is_none());
        assert_eq!(b.push(key(1), obs(2, false)).map(|v| v.len()), Some(2));
        // A new batch of the key, started later, is due at its own time.
        assert!(b.push(key(1), obs(6, false)).is_none());
        assert!(b.due(12).is_empty(), "the taken batch's entry is stale");
        let due = b.due(16);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1[0].origin.event_time_ms, 6);
    }

    #[test]
    fn a_batch_restarted_at_the_same_time_is_due_once() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            max_positives: 0,
            max_age_ms: Some(10),
        });
        b.push(key(1), obs(3, false));
        assert!(b.push(key(1), obs(3, false)).is_some());
        b.push(key(1), obs(3, false));
        let due = b.due(13);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].1.len(), 1);
        assert!(b.due(100).is_empty());
        assert_eq!(b.pending_keys(), 0);
    }

    #[test]
    fn a_batch_restarted_in_the_same_millisecond_keeps_its_own_place() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            max_positives: 0,
            max_age_ms: Some(10),
        });
        assert!(b.push(key(1), at(0, 0, 0)).is_none());
        assert!(b.push(key(1), at(0, 0, 1)).is_some(), "filled by count");
        assert!(b.push(key(2), at(0, 0, 2)).is_none());
        assert!(b.push(key(1), at(0, 0, 3)).is_none(), "key 1 starts again");
        // Key 1's first entry (offset 0) is stale: its batch now starts at
        // offset 3, after key 2's.
        let due: Vec<(u64, u64)> = b
            .due(10)
            .iter()
            .map(|(k, batch)| (k.doc_id, batch[0].origin.offset))
            .collect();
        assert_eq!(due, [(2, 2), (1, 3)]);
    }

    #[test]
    fn restored_and_out_of_order_batches_are_due_in_release_order() {
        let policy = BatchPolicy {
            max_samples: 100,
            max_positives: 0,
            max_age_ms: Some(10),
        };
        let mut b = Batcher::new(policy);
        // Restored in key order; released at time 9 as key 3's sample
        // (partition 0), key 5's (partition 1, offset 7), key 1's
        // (partition 1, offset 8).
        b.restore(key(1), vec![at(9, 1, 8), at(10, 1, 9)]);
        b.restore(key(2), vec![at(4, 0, 4)]);
        b.restore(key(3), vec![at(9, 0, 20)]);
        b.restore(key(5), vec![at(9, 1, 7)]);
        b.push(key(4), at(2, 0, 30)); // older than the newest entry
        let order: Vec<u64> = b.due(19).iter().map(|(k, _)| k.doc_id).collect();
        assert_eq!(order, vec![4, 2, 3, 5, 1]);
        // A running batcher started them in that order: the same result.
        let mut live = Batcher::new(policy);
        live.push(key(4), at(2, 0, 30));
        live.push(key(2), at(4, 0, 4));
        live.push(key(3), at(9, 0, 20));
        live.push(key(5), at(9, 1, 7));
        live.push(key(1), at(9, 1, 8));
        live.push(key(1), at(10, 1, 9));
        let order: Vec<u64> = live.due(19).iter().map(|(k, _)| k.doc_id).collect();
        assert_eq!(order, vec![4, 2, 3, 5, 1]);
    }

    #[test]
    fn checkpoints_write_changed_batches_and_delete_applied_stored_ones() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            ..BatchPolicy::default()
        });
        b.push(key(1), obs(1, false));
        b.push(key(2), obs(2, false));
        let first = changes(&mut b);
        assert_eq!(first.deletes, []);
        assert_eq!(
            first
                .puts
                .iter()
                .map(|(k, o)| (k.doc_id, o.len()))
                .collect::<Vec<_>>(),
            [(1, 1), (2, 1)]
        );
        assert_eq!(changes(&mut b), Changes::default(), "nothing changed");
        // Key 1 is applied (stored: delete); key 3 is pushed and applied
        // in between (never stored: nothing); key 2 is applied and starts
        // again (stored: deleted, then the new batch is put).
        assert!(b.push(key(1), obs(3, false)).is_some());
        b.push(key(3), obs(4, false));
        assert!(b.push(key(3), obs(5, false)).is_some());
        assert!(b.push(key(2), obs(6, false)).is_some());
        b.push(key(2), obs(7, false));
        let bound = b.changes_bound();
        let second = changes(&mut b);
        assert!(second.deletes.len() + second.puts.len() <= bound);
        assert_eq!(second.deletes, [key(1), key(2)]);
        assert_eq!(
            second
                .puts
                .iter()
                .map(|(k, o)| (k.doc_id, o[0].origin.event_time_ms))
                .collect::<Vec<_>>(),
            [(2, 7)]
        );
        // Into an empty store: every batch again.
        b.mark_all_unstored();
        let full = changes(&mut b);
        assert_eq!(full.deletes, []);
        assert_eq!(full.puts.len(), 1);
        // A restored batch counts as stored.
        let mut restored = Batcher::new(BatchPolicy {
            max_samples: 2,
            ..BatchPolicy::default()
        });
        restored.restore(key(5), vec![obs(8, false)]);
        assert_eq!(changes(&mut restored), Changes::default());
        assert!(restored.push(key(5), obs(9, false)).is_some());
        assert_eq!(changes(&mut restored).deletes, [key(5)]);
    }

    #[test]
    fn the_change_list_stays_bounded_without_checkpoints() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            ..BatchPolicy::default()
        });
        b.push(key(7), obs(0, false)); // stays pending throughout
        for t in 1..100_000 {
            b.push(key(1), obs(t, false));
            if let Some(batch) = b.push(key(1), obs(t, false)) {
                b.recycle(batch);
            }
        }
        assert!(b.changed.len() <= 2 * b.pending_keys() + CHANGED_SLACK + 1);
        let changes = changes(&mut b);
        assert_eq!(changes.puts.len(), 1, "key 7's batch is still written");
        assert_eq!(changes.puts[0].0, key(7));
    }

    #[test]
    fn due_soon_lists_the_oldest_batches_only_with_an_age_trigger() {
        let aged = BatchPolicy {
            max_samples: 2,
            max_positives: 0,
            max_age_ms: Some(10),
        };
        let mut b = Batcher::new(aged);
        b.push(key(3), obs(1, false));
        b.push(key(1), obs(2, false));
        b.push(key(2), obs(3, false));
        let soon: Vec<u64> = b.due_soon(2).map(|k| k.doc_id).collect();
        assert_eq!(soon, [3, 1]);
        let due: Vec<u64> = b.due(12).iter().map(|(k, _)| k.doc_id).collect();
        assert_eq!(due, [3, 1], "what due_soon announced");
        let mut by_count = Batcher::new(BatchPolicy {
            max_age_ms: None,
            ..aged
        });
        by_count.push(key(3), obs(1, false));
        assert_eq!(by_count.due_soon(2).count(), 0);
    }

    #[test]
    fn the_age_queue_stays_bounded_when_batches_fill_by_count() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            max_positives: 0,
            max_age_ms: Some(1_000_000_000),
        });
        b.push(key(7), obs(0, false));
        for t in 1..100_000 {
            b.push(key(1), obs(t, false));
            if let Some(batch) = b.push(key(1), obs(t, false)) {
                b.recycle(batch);
            }
        }
        assert!(b.by_age.len() <= 2 * b.pending_keys() + CHANGED_SLACK + 1);
        // Key 7's entry survived the compactions: its batch is still due.
        let due = b.due(1_000_000_000);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0, key(7));
    }

    #[test]
    fn recycled_vectors_come_back_empty() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 2,
            ..BatchPolicy::default()
        });
        b.push(key(1), obs(1, true));
        let batch = b.push(key(1), obs(2, false)).expect("full");
        let capacity = batch.capacity();
        b.recycle(batch);
        b.push(key(2), obs(3, false));
        let next = b.push(key(2), obs(4, true)).expect("full");
        assert_eq!(next.capacity(), capacity, "the recycled vector");
        assert_eq!(
            next.iter().map(|o| o.origin.offset).collect::<Vec<_>>(),
            [3, 4]
        );
        b.recycle(Vec::with_capacity(SPARE_CAPACITY + 1));
        assert!(b.spare.is_empty(), "a large vector is freed, not kept");
    }

    /// The batcher's rules, written plainly: per key the pending
    /// observations; due = the batches whose first observation is old
    /// enough, in the order of that observation's origin (event time,
    /// partition, offset).
    #[derive(Default)]
    struct Model {
        pending: std::collections::BTreeMap<ParamKey, Vec<PendingObservation>>,
    }

    impl Model {
        fn push(
            &mut self,
            policy: BatchPolicy,
            key: ParamKey,
            obs: PendingObservation,
        ) -> Option<Vec<PendingObservation>> {
            let batch = self.pending.entry(key).or_default();
            batch.push(obs);
            let positives = batch.iter().filter(|o| o.reward).count();
            let full = batch.len() >= policy.max_samples.max(1)
                || (policy.max_positives > 0 && positives >= policy.max_positives);
            full.then(|| self.pending.remove(&key).expect("just pushed"))
        }

        fn due(&mut self, policy: BatchPolicy, now: i64) -> Vec<ReadyBatch> {
            let Some(max_age) = policy.max_age_ms else {
                return Vec::new();
            };
            let mut due: Vec<(OrderKey, ParamKey)> = self
                .pending
                .iter()
                .map(|(k, b)| (b[0].origin, *k))
                .filter(|&(origin, _)| now.saturating_sub(origin.event_time_ms) >= max_age)
                .collect();
            due.sort_unstable();
            due.into_iter()
                .map(|(_, k)| (k, self.pending.remove(&k).expect("pending")))
                .collect()
        }
    }

    proptest::proptest! {
        #[test]
        fn behaves_like_the_plain_model(
            max_samples in 1_usize..5,
            max_positives in 0_usize..3,
            max_age_ms in proptest::option::of(0_i64..20),
            steps in proptest::collection::vec(
                (0_u8..10, 0_u64..6, -3_i64..6, proptest::bool::ANY),
                1..200,
            ),
        ) {
            let policy = BatchPolicy { max_samples, max_positives, max_age_ms };
            let mut b = Batcher::new(policy);
            let mut model = Model::default();
            let mut store = std::collections::BTreeMap::new();
            let mut now = 0_i64;
            for (i, (op, doc, dt, reward)) in steps.into_iter().enumerate() {
                // Mostly release order; sometimes a step back in time.
                now = (now + dt).max(0);
                match op {
                    0 => proptest::prop_assert_eq!(b.due(now), model.due(policy, now)),
                    // A checkpoint (now and then into an empty store): the
                    // store then holds exactly the pending batches.
                    9 => {
                        if doc == 0 {
                            store.clear();
                            b.mark_all_unstored();
                        }
                        let bound = b.changes_bound();
                        let changes = changes(&mut b);
                        proptest::prop_assert!(changes.deletes.len() + changes.puts.len() <= bound);
                        for key in &changes.deletes {
                            proptest::prop_assert!(store.remove(key).is_some(), "delete of a key not stored");
                        }
                        for (key, batch) in changes.puts {
                            store.insert(key, batch.to_vec());
                        }
                        let pending: std::collections::BTreeMap<_, _> = b
                            .iter()
                            .map(|(k, batch)| (*k, batch.observations.clone()))
                            .collect();
                        proptest::prop_assert_eq!(&store, &pending);
                        if doc == 1 {
                            // A restart from that checkpoint: a batcher
                            // rebuilt from the store goes on as the model.
                            b = Batcher::new(policy);
                            for (key, batch) in &store {
                                b.restore(*key, batch.clone());
                            }
                        }
                    }
                    1 => {
                        let version = VersionId(u32::from(doc % 2 == 0));
                        let got = b.remove_version(version);
                        let want: Vec<ParamKey> = model
                            .pending
                            .keys()
                            .filter(|k| k.version == version)
                            .copied()
                            .collect();
                        model.pending.retain(|k, _| k.version != version);
                        proptest::prop_assert_eq!(got, want);
                    }
                    _ => {
                        let k = ParamKey { version: VersionId(u32::from(doc % 2 == 0)), doc_id: doc };
                        let mut o = obs(now, reward);
                        // Unique origins, pushed out of (partition, offset)
                        // order within a millisecond now and then.
                        o.origin.partition = (doc % 3) as u32;
                        o.origin.offset = i as u64;
                        let got = b.push(k, o.clone());
                        let want = model.push(policy, k, o);
                        proptest::prop_assert_eq!(&got, &want);
                        if let Some(batch) = got {
                            b.recycle(batch);
                        }
                    }
                }
                proptest::prop_assert_eq!(b.pending_keys(), model.pending.len());
            }
            let drained = b.drain();
            let want: Vec<ReadyBatch> = std::mem::take(&mut model.pending).into_iter().collect();
            proptest::prop_assert_eq!(drained, want);
        }
    }
}
