//! What a replica does with the records of the `params` topic, apart from
//! fetching them: decode, apply to the store, track the next offset of
//! every partition, and turn ready once every partition has reached the
//! high watermark it had when the replica started. No I/O: the Kafka
//! consumer (`replica`) calls it, and so do the unit tests.
//!
//! Version announcements go through [`learn_version`] and updates through
//! [`ParamStore::apply_wire`] (the exact state is decoded once, from the
//! record's `state` bytes; a seq not above the stored one is ignored), so
//! a replayed record is harmless. A record that does not decode is
//! logged, counted as rejected and skipped: it never stops the feed.
//!
//! **Updates ahead of their version's announcement.** The learner writes
//! an announcement (every version, retired ones included) to each
//! partition before the updates of a version it creates. Compaction keeps
//! only a partition's newest announcement, so in a compacted topic the
//! updates of a version created at run time can come before the first
//! announcement that names it. While the replica catches up, such
//! updates are held (the newest seq of each key, at most
//! `max_held_updates`, [`MAX_HELD`] by default) and applied when the
//! announcement comes; the offsets a snapshot records stay at the first
//! held one, so a restart reads it again. What is still held when every
//! partition has caught up names a version no announcement left in the
//! topic names, and is rejected with a warning. Updates beyond the hold
//! are rejected as they come, and the partitions they came from are read
//! again from the first of them once every partition has caught up (the
//! announcements are known by then); the replica turns ready after that
//! second pass, once. (Learners of some partitions each announce under a key of
//! their own, so a lagging learner's announcement never makes compaction
//! drop another's newer one.)

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use posterior_learner::params::ParamsRecord;
use posterior_proto::v1;

use crate::StoreError;
use crate::feed::{FeedStats, learn_version};
use crate::readiness::Readiness;
use crate::store::ParamStore;

/// Undecodable records logged one by one; beyond, one in
/// [`LOG_EVERY_UNDECODABLE`] is.
const LOG_FIRST_UNDECODABLE: u64 = 20;
/// See [`LOG_FIRST_UNDECODABLE`].
const LOG_EVERY_UNDECODABLE: u64 = 10_000;
/// Default `feed.kafka.max_held_updates`: most updates held for their
/// version's announcement (each as received: a few hundred bytes at
/// d = 32, 16 bytes per dimension more for a diagonal model). Beyond,
/// such updates are rejected with a warning, and their partitions read
/// again from the first of them once the replica has caught up.
pub const MAX_HELD: usize = 1 << 20;

/// The feed's position in the topic and its catch-up.
#[derive(Debug)]
pub struct Follower {
    store: Arc<ParamStore>,
    next_offsets: BTreeMap<u32, u64>,
    /// Partitions not caught up yet → the high watermark to reach.
    behind: BTreeMap<u32, u64>,
    stats: FeedStats,
    undecodable: u64,
    records: u64,
    readiness: Readiness,
    started: Instant,
    /// Updates of versions not announced yet, read before the replica was
    /// ready: (version, doc) → (partition, offset, update), the newest
    /// seq of each key.
    held: HashMap<(String, u64), Held>,
    /// Updates rejected because `max_held` were held.
    held_over: u64,
    /// The offset of the first of those, per partition.
    over_from: BTreeMap<u32, u64>,
    /// Most updates held.
    max_held: usize,
    /// Partitions to read again, from these offsets, once caught up: for
    /// the feed to seek to ([`Follower::take_rewind`]).
    rewind: BTreeMap<u32, u64>,
    /// Whether the partitions were read again already (once only: updates
    /// beyond the hold on that pass are rejected for good).
    rewound: bool,
}

/// An update waiting for its version's announcement, and where it was read.
#[derive(Debug)]
struct Held {
    partition: u32,
    offset: u64,
    update: v1::ParamUpdate,
}

impl Follower {
    /// A follower reading every partition of `start_offsets` from there,
    /// ready once each reaches its `high_watermarks` entry (its high
    /// watermark when the replica started). Ready at once when nothing is
    /// behind.
    pub fn new(
        store: Arc<ParamStore>,
        start_offsets: BTreeMap<u32, u64>,
        high_watermarks: &BTreeMap<u32, u64>,
        readiness: Readiness,
        started: Instant,
    ) -> Self {
        Self::with_hold(
            store,
            start_offsets,
            high_watermarks,
            readiness,
            started,
            MAX_HELD,
        )
    }

    /// [`Follower::new`] holding at most `max_held` updates for their
    /// versions' announcements.
    pub fn with_hold(
        store: Arc<ParamStore>,
        start_offsets: BTreeMap<u32, u64>,
        high_watermarks: &BTreeMap<u32, u64>,
        readiness: Readiness,
        started: Instant,
        max_held: usize,
    ) -> Self {
        let behind = start_offsets
            .iter()
            .filter_map(|(&p, &next)| {
                let high = high_watermarks.get(&p).copied().unwrap_or(0);
                (next < high).then_some((p, high))
            })
            .collect();
        let mut follower = Self {
            store,
            next_offsets: start_offsets,
            behind,
            stats: FeedStats::default(),
            undecodable: 0,
            records: 0,
            readiness,
            started,
            held: HashMap::new(),
            held_over: 0,
            over_from: BTreeMap::new(),
            max_held,
            rewind: BTreeMap::new(),
            rewound: false,
        };
        follower.check_ready();
        follower
    }

    /// Applies the record at `offset` of `partition`.
    pub fn record(
        &mut self,
        partition: u32,
        offset: u64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
    ) {
        self.records += 1;
        match value.map(|value| ParamsRecord::decode(key, value)) {
            Some(Ok(ParamsRecord::Versions(versions))) => {
                for announced in &versions {
                    learn_version(
                        &self.store,
                        &announced.spec,
                        announced.retired,
                        &mut self.stats,
                    );
                }
                if !self.held.is_empty() {
                    self.apply_announced();
                }
            }
            Some(Ok(ParamsRecord::Update(update))) => match self.store.apply_wire(&update) {
                Err(StoreError::UnknownVersion(version)) if !self.readiness.is_ready() => {
                    self.hold(version, partition, offset, update);
                }
                outcome => self.stats.count(outcome),
            },
            Some(Err(error)) => self.undecodable(partition, offset, &error.to_string()),
            None => self.undecodable(partition, offset, "record without a value"),
        }
        self.next_offsets.insert(partition, offset + 1);
        if self
            .behind
            .get(&partition)
            .is_some_and(|&high| offset + 1 >= high)
        {
            self.caught_up(partition);
        }
    }

    /// `partition` has delivered everything the broker holds (its end may
    /// lie past the last record's offset: compaction, transactions).
    pub fn end_of_partition(&mut self, partition: u32) {
        if self.behind.contains_key(&partition) {
            self.caught_up(partition);
        }
    }

    /// The next offset to read of every partition: every record below it
    /// has been applied, none held nor rejected for want of room to hold
    /// it (such a partition stays at that offset, so a snapshot's restart
    /// reads it again).
    pub fn next_offsets(&self) -> BTreeMap<u32, u64> {
        let mut next = self.next_offsets.clone();
        let waiting = self.held.values().map(|h| (h.partition, h.offset));
        for (partition, offset) in waiting.chain(self.over_from.iter().map(|(&p, &o)| (p, o))) {
            if let Some(n) = next.get_mut(&partition) {
                *n = (*n).min(offset);
            }
        }
        next
    }

    /// Updates held for their version's announcement.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Holds `update` of `version`, not announced yet, read at `offset` of
    /// `partition`, unless a newer update of its key is held.
    fn hold(&mut self, version: String, partition: u32, offset: u64, update: v1::ParamUpdate) {
        let Some(doc_id) = update.params.as_ref().map(|p| p.doc_id) else {
            return; // apply_wire refuses an update without params first
        };
        if self.held.len() >= self.max_held && !self.held.contains_key(&(version.clone(), doc_id)) {
            self.stats.rejected += 1;
            if self.held_over == 0 {
                tracing::warn!(
                    held = self.max_held,
                    %version,
                    "too many updates wait for their version's announcement: rejecting more"
                );
            }
            self.held_over += 1;
            self.over_from.entry(partition).or_insert(offset);
            return;
        }
        let seq = |u: &v1::ParamUpdate| u.params.as_ref().map_or(0, |p| p.seq);
        let held = Held {
            partition,
            offset,
            update,
        };
        match self.held.entry((version, doc_id)) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                if seq(&held.update) > seq(&e.get().update) {
                    e.insert(held);
                }
                self.stats.stale += 1;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(held);
            }
        }
    }

    /// Applies (and forgets) the held updates whose versions are served
    /// now.
    fn apply_announced(&mut self) {
        let store = &self.store;
        let mut released: Vec<Held> = self
            .held
            .extract_if(|(version, _), _| store.version(version).is_ok())
            .map(|(_, held)| held)
            .collect();
        // In read order, as they came.
        released.sort_unstable_by_key(|h| (h.partition, h.offset));
        for held in released {
            self.stats.count(self.store.apply_wire(&held.update));
        }
    }

    /// `partition` reached its high watermark of the start.
    fn caught_up(&mut self, partition: u32) {
        self.behind.remove(&partition);
        self.check_ready();
    }

    /// What was applied so far.
    pub fn stats(&self) -> FeedStats {
        self.stats
    }

    /// Records seen so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether every partition has caught up.
    pub fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    fn undecodable(&mut self, partition: u32, offset: u64, error: &str) {
        self.stats.rejected += 1;
        self.undecodable += 1;
        let n = self.undecodable;
        if n <= LOG_FIRST_UNDECODABLE || n.is_multiple_of(LOG_EVERY_UNDECODABLE) {
            tracing::warn!(partition, offset, undecodable = n, %error, "params record skipped");
        }
    }

    /// The partitions to read again, and from where: once every partition
    /// has caught up, those whose updates were rejected for want of room
    /// to hold them, from the first of those. The feed seeks there; the
    /// replica turns ready when they are read back to where they were.
    /// Empty most of the time; each entry is returned once.
    pub fn take_rewind(&mut self) -> BTreeMap<u32, u64> {
        std::mem::take(&mut self.rewind)
    }

    /// The feed could not seek `partition` back: it is taken as caught up,
    /// the updates rejected there stay missing until a restart reads them
    /// (the snapshots keep its offset at the first of them).
    pub fn rewind_failed(&mut self, partition: u32, from: u64) {
        self.over_from.entry(partition).or_insert(from);
        if self.behind.contains_key(&partition) {
            self.caught_up(partition);
        }
    }

    fn check_ready(&mut self) {
        if self.behind.is_empty() && !self.readiness.is_ready() && !self.rewound {
            let over = std::mem::take(&mut self.over_from);
            if !over.is_empty() {
                // The announcements read since are known now: the
                // rejected updates find their versions on a second pass.
                self.rewound = true;
                tracing::warn!(
                    rejected = self.held_over,
                    held = self.max_held,
                    from = ?over,
                    "more updates waited for their versions' announcements than the hold \
                     takes: reading those partitions again before serving"
                );
                for (partition, from) in over {
                    let at = self.next_offsets.insert(partition, from).unwrap_or(from);
                    self.behind.insert(partition, at);
                    self.rewind.insert(partition, from);
                }
                self.held_over = 0;
                return;
            }
        }
        if self.behind.is_empty() && !self.readiness.is_ready() {
            if !self.held.is_empty() {
                // Every partition is read to its start's end: no
                // announcement left in the topic names these versions.
                let mut versions: Vec<&str> = self.held.keys().map(|(v, _)| v.as_str()).collect();
                versions.sort_unstable();
                versions.dedup();
                tracing::warn!(
                    updates = self.held.len(),
                    ?versions,
                    "updates of versions that no announcement in the topic names rejected"
                );
                self.stats.rejected += self.held.len() as u64;
                self.held.clear();
            }
            self.readiness.set_ready();
            let s = self.stats;
            tracing::info!(
                ready_ms = self.started.elapsed().as_millis() as u64,
                records = self.records,
                applied = s.applied,
                stale = s.stale,
                rejected = s.rejected,
                versions_added = s.versions_added,
                "caught up with the params topic: serving"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use posterior_learner::params::{ANNOUNCEMENT_KEY, announcement_to_wire, update_to_wire};
    use posterior_learner::posterior::{BetaPosterior, BetaPrior, ModelKind, ModelSpec};
    use posterior_learner::registry::{VersionEntry, VersionId};
    use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
    use prost::Message as _;

    use super::*;

    fn spec() -> VersionSpec {
        VersionSpec {
            name: "ctr".into(),
            model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
            reward: RewardSpec::binary("click"),
            use_sample_weight: false,
        }
    }

    fn update(doc_id: u64, seq: u64) -> (Vec<u8>, Vec<u8>) {
        update_of("ctr", doc_id, seq)
    }

    fn update_of(version: &str, doc_id: u64, seq: u64) -> (Vec<u8>, Vec<u8>) {
        let state = KeyState {
            seq,
            sample_count: seq as f64,
            updated_event_time_ms: 0,
            posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + seq as f64, 1.0).unwrap()),
        };
        (
            format!("{version}/{doc_id}").into_bytes(),
            update_to_wire(version, doc_id, &state).encode_to_vec(),
        )
    }

    /// (versions added, applied, stale, rejected) so far.
    fn counts(f: &Follower) -> (u64, u64, u64, u64) {
        let s = f.stats();
        (s.versions_added, s.applied, s.stale, s.rejected)
    }

    fn announcement() -> Vec<u8> {
        announcement_to_wire(&[VersionEntry {
            id: VersionId(0),
            spec: spec(),
            retired: false,
        }])
        .encode_to_vec()
    }

    #[test]
    fn records_are_applied_bad_ones_skipped_and_ready_comes_at_the_start_watermarks() {
        let store = Arc::new(ParamStore::default());
        let readiness = Readiness::not_ready();
        let highs = [(0, 4), (1, 2), (2, 0)].into();
        let start = [(0, 0), (1, 0), (2, 0)].into();
        let mut f = Follower::new(
            Arc::clone(&store),
            start,
            &highs,
            readiness.clone(),
            Instant::now(),
        );
        assert!(!readiness.is_ready());
        f.record(0, 0, Some(ANNOUNCEMENT_KEY), Some(&announcement()));
        let (key, value) = update(7, 2);
        f.record(0, 1, Some(&key), Some(&value));
        f.record(0, 2, Some(b"ctr/8"), Some(b"\xff\xff not protobuf"));
        f.record(0, 3, Some(b"ctr/8"), None);
        assert!(!readiness.is_ready(), "partition 1 is behind");
        let (key, value) = update(7, 1);
        f.record(1, 0, Some(&key), Some(&value));
        // Partition 1 ends early (a compacted tail).
        f.end_of_partition(1);
        assert!(readiness.is_ready());
        assert_eq!(counts(&f), (1, 1, 1, 2));
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 4), (1, 1), (2, 0)]));
        assert_eq!(store.params("ctr", 7).unwrap().seq, 2);
    }

    /// A compacted topic: updates of a version created at run time come
    /// before the only announcement left that names it. They are held and
    /// applied when it comes (the newest seq of each key), and the
    /// snapshot's offsets stay at the first of them meanwhile. An update
    /// of a version its partition never announces is rejected once the
    /// partition has caught up, and at once after that.
    #[test]
    fn updates_ahead_of_their_versions_announcement_wait_for_it() {
        let store = Arc::new(ParamStore::default());
        let readiness = Readiness::not_ready();
        let mut f = Follower::new(
            Arc::clone(&store),
            [(0, 0), (1, 0)].into(),
            &[(0, 5), (1, 2)].into(),
            readiness.clone(),
            Instant::now(),
        );
        for (offset, (doc, seq)) in [(7, 3), (7, 2), (8, 1)].into_iter().enumerate() {
            let (key, value) = update(doc, seq);
            f.record(0, offset as u64, Some(&key), Some(&value));
        }
        assert_eq!(f.held(), 2, "doc 7's newest and doc 8's");
        assert!(
            store.params("ctr", 7).is_err(),
            "not served before it is announced"
        );
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 0), (1, 0)]));

        f.record(0, 3, Some(ANNOUNCEMENT_KEY), Some(&announcement()));
        assert_eq!(f.held(), 0);
        assert_eq!(store.params("ctr", 7).unwrap().seq, 3);
        assert_eq!(store.params("ctr", 8).unwrap().seq, 1);
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 4), (1, 0)]));

        // Held while any partition is behind, a caught-up one's too.
        let (key, value) = update_of("other", 9, 1);
        f.record(1, 0, Some(&key), Some(&value));
        f.end_of_partition(1);
        assert_eq!(f.held(), 1);
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 4), (1, 0)]));
        let (key, value) = update(7, 4);
        f.record(0, 4, Some(&key), Some(&value));
        assert!(readiness.is_ready());
        assert_eq!(f.held(), 0, "no announcement left names it: rejected");
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 5), (1, 1)]));
        let (key, value) = update_of("other", 9, 2);
        f.record(1, 1, Some(&key), Some(&value));
        assert_eq!(f.held(), 0, "caught up: rejected at once");
        assert_eq!(counts(&f), (1, 3, 1, 2));
    }

    /// At most `max_held` updates wait; those beyond are rejected, and a
    /// newer update of a held key still replaces it. The snapshot's offset
    /// stays at the first rejected one.
    #[test]
    fn the_hold_is_bounded() {
        let mut f = Follower::new(
            Arc::new(ParamStore::default()),
            [(0, 0)].into(),
            &[(0, 100)].into(),
            Readiness::not_ready(),
            Instant::now(),
        );
        f.max_held = 2;
        for (offset, (doc, seq)) in [(1, 1), (2, 1), (3, 1), (1, 2)].into_iter().enumerate() {
            let (key, value) = update(doc, seq);
            f.record(0, offset as u64, Some(&key), Some(&value));
        }
        assert_eq!(f.held(), 2);
        assert_eq!(
            counts(&f),
            (0, 0, 1, 1),
            "doc 3 rejected, doc 1's seq 1 stale"
        );
        f.record(0, 4, Some(ANNOUNCEMENT_KEY), Some(&announcement()));
        assert_eq!(counts(&f), (1, 2, 1, 1));
        assert_eq!(f.held(), 0);
        assert_eq!(
            f.next_offsets(),
            BTreeMap::from([(0, 2)]),
            "doc 3's update, at offset 2, is read again after a restart"
        );
    }

    /// Once every partition has caught up, a partition whose updates did
    /// not fit the hold is read again from the first of them (its
    /// version is known by then), and the follower turns ready only after
    /// that pass.
    #[test]
    fn updates_beyond_the_hold_are_read_again_before_ready() {
        let store = Arc::new(ParamStore::default());
        let readiness = Readiness::not_ready();
        let mut f = Follower::with_hold(
            Arc::clone(&store),
            [(0, 0), (1, 0)].into(),
            &[(0, 6), (1, 1)].into(),
            readiness.clone(),
            Instant::now(),
            2,
        );
        let records: Vec<(Vec<u8>, Vec<u8>)> = vec![
            update(1, 1),
            update(2, 1),
            update(3, 1), // beyond the hold: rejected
            update(1, 2),
            (ANNOUNCEMENT_KEY.to_vec(), announcement()),
            update(4, 1),
        ];
        let read = |f: &mut Follower, from: usize| {
            for (offset, (key, value)) in records.iter().enumerate().skip(from) {
                f.record(0, offset as u64, Some(key), Some(value));
            }
        };
        read(&mut f, 0);
        assert!(f.take_rewind().is_empty(), "partition 1 is behind");
        let (key, value) = update(9, 1);
        f.record(1, 0, Some(&key), Some(&value));
        assert!(!readiness.is_ready(), "caught up, but doc 3 is missing");
        assert_eq!(
            store.params("ctr", 3).unwrap().seq,
            0,
            "served as the prior"
        );
        assert_eq!(f.take_rewind(), BTreeMap::from([(0, 2)]));
        assert!(f.take_rewind().is_empty(), "asked for once");
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 2), (1, 1)]));

        read(&mut f, 2);
        assert!(readiness.is_ready());
        assert_eq!(store.params("ctr", 3).unwrap().seq, 1);
        assert_eq!(store.params("ctr", 1).unwrap().seq, 2);
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 6), (1, 1)]));
        assert!(f.take_rewind().is_empty());
    }

    /// A feed that cannot seek back turns ready without the rejected
    /// updates, and its snapshots keep the partition's offset at the first
    /// of them, so a restart reads them.
    #[test]
    fn a_failed_rewind_serves_and_keeps_the_offset_for_a_restart() {
        let readiness = Readiness::not_ready();
        let mut f = Follower::with_hold(
            Arc::new(ParamStore::default()),
            [(0, 0)].into(),
            &[(0, 3)].into(),
            readiness.clone(),
            Instant::now(),
            1,
        );
        for (offset, doc) in [1, 2, 3].into_iter().enumerate() {
            let (key, value) = update(doc, 1);
            f.record(0, offset as u64, Some(&key), Some(&value));
        }
        let rewind = f.take_rewind();
        assert_eq!(rewind, BTreeMap::from([(0, 1)]));
        f.rewind_failed(0, 1);
        assert!(readiness.is_ready());
        assert_eq!(f.next_offsets(), BTreeMap::from([(0, 1)]));
    }

    #[test]
    fn a_follower_with_nothing_to_read_is_ready_at_once() {
        let readiness = Readiness::not_ready();
        let f = Follower::new(
            Arc::new(ParamStore::default()),
            [(0, 5)].into(),
            &[(0, 5)].into(),
            readiness.clone(),
            Instant::now(),
        );
        assert!(f.is_ready() && readiness.is_ready());
    }
}
