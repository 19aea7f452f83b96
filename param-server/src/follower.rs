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

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use posterior_learner::params::ParamsRecord;

use crate::feed::{FeedStats, learn_version};
use crate::readiness::Readiness;
use crate::store::ParamStore;

/// Undecodable records logged one by one; beyond, one in
/// [`LOG_EVERY_UNDECODABLE`] is.
const LOG_FIRST_UNDECODABLE: u64 = 20;
/// See [`LOG_FIRST_UNDECODABLE`].
const LOG_EVERY_UNDECODABLE: u64 = 10_000;

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
            }
            Some(Ok(ParamsRecord::Update(update))) => {
                self.stats.count(self.store.apply_wire(&update));
            }
            Some(Err(error)) => self.undecodable(partition, offset, &error.to_string()),
            None => self.undecodable(partition, offset, "record without a value"),
        }
        self.next_offsets.insert(partition, offset + 1);
        if self
            .behind
            .get(&partition)
            .is_some_and(|&high| offset + 1 >= high)
        {
            self.behind.remove(&partition);
            self.check_ready();
        }
    }

    /// `partition` has delivered everything the broker holds (its end may
    /// lie past the last record's offset: compaction, transactions).
    pub fn end_of_partition(&mut self, partition: u32) {
        if self.behind.remove(&partition).is_some() {
            self.check_ready();
        }
    }

    /// The next offset to read of every partition: every record below it
    /// has been applied.
    pub fn next_offsets(&self) -> &BTreeMap<u32, u64> {
        &self.next_offsets
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

    fn check_ready(&mut self) {
        if self.behind.is_empty() && !self.readiness.is_ready() {
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
        let state = KeyState {
            seq,
            sample_count: seq as f64,
            updated_event_time_ms: 0,
            posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + seq as f64, 1.0).unwrap()),
        };
        (
            format!("ctr/{doc_id}").into_bytes(),
            update_to_wire("ctr", doc_id, &state).encode_to_vec(),
        )
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
        let stats = f.stats();
        assert_eq!(
            (
                stats.versions_added,
                stats.applied,
                stats.stale,
                stats.rejected
            ),
            (1, 1, 1, 2)
        );
        assert_eq!(f.next_offsets(), &[(0, 4), (1, 1), (2, 0)].into());
        assert_eq!(store.params("ctr", 7).unwrap().seq, 2);
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
