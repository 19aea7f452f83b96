//! De-duplication by `sample_id` within a bounded event-time window.
//!
//! Checked in release order, so it is deterministic: a sample is a
//! duplicate when a released sample with the same id had an event time at
//! most `window_ms` earlier and was applied (a sample refused for its
//! version or content holds no id: sent again corrected, it is applied). Ids older than the window are forgotten; if
//! more than `max_ids` ids fall inside the window, the oldest are forgotten
//! early, in release order (a duplicate of a forgotten id would be applied
//! again: size the bound above ids-per-window). Samples without an id are
//! never duplicates.
//!
//! Release order is event-time order, so ids arrive oldest first: they are
//! held in a queue in arrival order, and both expiry and the bound pop its
//! front. Each id carries its position in the release order (a sequence
//! number), stored with it, so a restored window is in the same order and
//! forgets the same ids as the live one would have. Every sample of a
//! de-duplicated stream is checked here: a check allocates nothing for ids
//! of up to 24 bytes ([`Name`]) and touches no ordered map.

use std::collections::{HashSet, VecDeque};

use crate::sample::Name;

/// A held id.
#[derive(Debug, Clone, PartialEq)]
struct Held {
    event_ms: i64,
    /// Position in the release order.
    seq: u64,
    id: Name,
}

impl Held {
    fn change(&self, added: bool) -> Change<'_> {
        Change {
            event_ms: self.event_ms,
            id: &self.id,
            seq: self.seq,
            added,
        }
    }
}

/// One change of the held ids, for incremental checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change<'a> {
    /// Event time of the id's sample.
    pub event_ms: i64,
    /// The id.
    pub id: &'a str,
    /// Its position in the release order (what a restore orders by).
    pub seq: u64,
    /// True when the id was added, false when a stored one was forgotten.
    pub added: bool,
}

/// Recently released sample ids.
#[derive(Debug, Clone, Default)]
pub struct Dedup {
    window_ms: i64,
    max_ids: usize,
    /// Held ids in release order (event time non-decreasing).
    held: VecDeque<Held>,
    /// The ids of `held`.
    seen: HashSet<Name, foldhash::fast::RandomState>,
    /// Sequence number of the next id held.
    next_seq: u64,
    /// How many entries at the back of `held` were added since the last
    /// [`Dedup::take_changes`] (the rest are stored).
    fresh: usize,
    /// Stored entries forgotten since the last [`Dedup::take_changes`].
    removed: Vec<Held>,
}

/// Two windows are equal when they have the same bounds, hold the same
/// ids in the same order, and have the same changes to hand over (the
/// sequence numbers themselves aside: only their order matters).
impl PartialEq for Dedup {
    fn eq(&self, other: &Self) -> bool {
        fn ids<'a>(held: impl Iterator<Item = &'a Held>) -> Vec<(i64, &'a str)> {
            held.map(|h| (h.event_ms, h.id.as_str())).collect()
        }
        self.window_ms == other.window_ms
            && self.max_ids == other.max_ids
            && ids(self.held.iter()) == ids(other.held.iter())
            && self.fresh == other.fresh
            && ids(self.removed.iter()) == ids(other.removed.iter())
    }
}

impl Dedup {
    /// A window of `window_ms` event-time ms holding at most `max_ids` ids.
    pub fn new(window_ms: i64, max_ids: usize) -> Self {
        Self {
            window_ms: window_ms.max(0),
            max_ids: max_ids.max(1),
            ..Self::default()
        }
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// True when no id is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Records `id` released at `event_ms`; returns true if it is a
    /// duplicate (and then records nothing). Called in release order.
    pub fn check(&mut self, id: &str, event_ms: i64) -> bool {
        self.expire(event_ms.saturating_sub(self.window_ms));
        if self.seen.contains(id) {
            return true;
        }
        if self.held.len() >= self.max_ids {
            self.forget_front();
        }
        debug_assert!(
            self.held.back().is_none_or(|h| h.event_ms <= event_ms),
            "ids are checked in release order"
        );
        let id = Name::from(id);
        self.seen.insert(id.clone());
        self.held.push_back(Held {
            event_ms,
            seq: self.next_seq,
            id,
        });
        self.next_seq += 1;
        self.fresh += 1;
        false
    }

    /// Every held id as (event time, id, sequence number), in release
    /// order, for checkpoints.
    pub fn entries(&self) -> impl ExactSizeIterator<Item = (i64, &str, u64)> {
        self.held.iter().map(|h| (h.event_ms, h.id.as_str(), h.seq))
    }

    /// Restores held ids, given as (event time, id, sequence number) in any
    /// order, into an empty window; they count as stored. Ids stored
    /// without a sequence number (0) take the order of their ids within
    /// their millisecond.
    pub fn restore(&mut self, entries: impl IntoIterator<Item = (i64, String, u64)>) {
        debug_assert!(self.is_empty(), "restored into an empty window");
        let mut held: Vec<Held> = entries
            .into_iter()
            .map(|(event_ms, id, seq)| Held {
                event_ms,
                seq,
                id: Name::from(id),
            })
            .collect();
        held.sort_unstable_by(|a, b| (a.event_ms, a.seq, &a.id).cmp(&(b.event_ms, b.seq, &b.id)));
        for h in held {
            self.next_seq = self.next_seq.max(h.seq + 1);
            if self.seen.insert(h.id.clone()) {
                self.held.push_back(h);
            }
        }
        // The windows of several learners' savepoints, joined, may hold
        // more than the bound: the oldest go (the next checkpoint deletes
        // them), as one learner of all those partitions would have
        // forgotten them.
        while self.held.len() > self.max_ids {
            self.forget_front();
        }
    }

    /// Number of changes [`Dedup::take_changes`] would hand over.
    pub fn changes_len(&self) -> usize {
        self.removed.len() + self.fresh
    }

    /// Hands over the changes since the last call, the forgotten stored
    /// ids first, then the added ones; an id added and forgotten between
    /// two calls is in neither. Applied in this order to the stored ids,
    /// they give the held ones.
    pub fn take_changes(&mut self, mut f: impl FnMut(Change<'_>)) {
        for h in self.removed.drain(..) {
            f(h.change(false));
        }
        for h in self.held.range(self.held.len() - self.fresh..) {
            f(h.change(true));
        }
        self.fresh = 0;
    }

    fn expire(&mut self, before_ms: i64) {
        while self.held.front().is_some_and(|h| h.event_ms < before_ms) {
            self.forget_front();
        }
    }

    fn forget_front(&mut self) {
        let stored = self.held.len() - self.fresh;
        let Some(front) = self.held.pop_front() else {
            return;
        };
        self.seen.remove(&front.id);
        if stored > 0 {
            self.removed.push(front);
        } else {
            self.fresh -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use proptest::prelude::*;

    use super::*;

    /// A restored window over the bound (joined from several savepoints)
    /// keeps the newest ids and reports the others forgotten.
    #[test]
    fn a_restored_window_over_the_bound_forgets_its_oldest() {
        let mut dedup = Dedup::new(10_000, 3);
        dedup.restore((0..5).map(|i| (100 + i, format!("id-{i}"), 7 - i as u64)));
        assert_eq!(dedup.len(), 3);
        let mut forgotten = Vec::new();
        dedup.take_changes(|c| {
            assert!(!c.added);
            forgotten.push(c.id.to_owned());
        });
        assert_eq!(forgotten, ["id-0", "id-1"]);
        assert!(dedup.check("id-4", 110), "a kept id is a duplicate");
        assert!(!dedup.check("id-0", 110), "a forgotten id is new again");
    }

    #[test]
    fn duplicates_within_the_window_only() {
        let mut d = Dedup::new(100, 1_000);
        assert!(!d.check("a", 1_000));
        assert!(d.check("a", 1_050));
        assert!(
            d.check("a", 1_100),
            "exactly window_ms later is still inside"
        );
        assert!(!d.check("a", 1_101), "forgotten after the window");
        assert!(!d.check("b", 1_101));
    }

    #[test]
    fn the_id_bound_forgets_the_oldest() {
        let mut d = Dedup::new(1_000_000, 2);
        assert!(!d.check("a", 1));
        assert!(!d.check("b", 2));
        assert!(!d.check("c", 3));
        assert_eq!(d.len(), 2);
        assert!(!d.check("a", 4), "a was evicted by the bound");
        assert!(d.check("c", 5));
    }

    #[test]
    fn the_id_bound_forgets_in_release_order_within_a_millisecond() {
        let mut d = Dedup::new(1_000_000, 3);
        assert!(!d.check("c", 1));
        assert!(!d.check("a", 1));
        assert!(!d.check("b", 1));
        assert!(!d.check("d", 2), "forgets c, the first released");
        assert!(d.check("a", 2));
        assert!(d.check("b", 2));
        assert!(!d.check("c", 2));
    }

    /// The rules spelled out with ordered maps: ids by (event time,
    /// release position).
    #[derive(Default)]
    struct Reference {
        window_ms: i64,
        max_ids: usize,
        next_seq: u64,
        seen: BTreeMap<String, (i64, u64)>,
        by_time: BTreeSet<(i64, u64, String)>,
    }

    impl Reference {
        fn check(&mut self, id: &str, event_ms: i64) -> bool {
            let before = event_ms.saturating_sub(self.window_ms);
            while let Some((t, _, _)) = self.by_time.first()
                && *t < before
            {
                let entry = self.by_time.pop_first().expect("first exists");
                self.forget(entry);
            }
            if self.seen.contains_key(id) {
                return true;
            }
            if self.seen.len() >= self.max_ids
                && let Some(oldest) = self.by_time.pop_first()
            {
                self.forget(oldest);
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            self.seen.insert(id.to_owned(), (event_ms, seq));
            self.by_time.insert((event_ms, seq, id.to_owned()));
            false
        }

        fn forget(&mut self, (_, _, id): (i64, u64, String)) {
            self.seen.remove(&id);
        }
    }

    /// Applies `d`'s changes to `stored` (id → event time and sequence
    /// number), as a checkpoint does.
    fn checkpoint(d: &mut Dedup, stored: &mut BTreeMap<(i64, String), u64>) {
        let announced = d.changes_len();
        let mut handed = 0;
        d.take_changes(|c| {
            handed += 1;
            let key = (c.event_ms, c.id.to_owned());
            if c.added {
                stored.insert(key, c.seq);
            } else {
                assert_eq!(stored.remove(&key), Some(c.seq), "forgets a stored id");
            }
        });
        assert_eq!(handed, announced, "changes_len counts the changes");
        assert_eq!(d.changes_len(), 0);
    }

    proptest! {
        /// Against the reference: the same verdicts, the same held ids in
        /// the same order, checkpoints that rebuild them, and a window
        /// restored from any checkpoint that carries on exactly like the
        /// live one.
        #[test]
        fn matches_the_reference(
            steps in prop::collection::vec((0u8..12, 0i64..4, any::<bool>()), 1..300),
            window_ms in 0i64..6,
            max_ids in 1usize..8,
        ) {
            let mut d = Dedup::new(window_ms, max_ids);
            let mut r = Reference { window_ms, max_ids, ..Reference::default() };
            let mut stored = BTreeMap::new();
            let mut restored: Option<Dedup> = None;
            let mut t = 0;
            for (id, dt, take) in steps {
                t += dt;
                let id = format!("id-{id}");
                let dup = d.check(&id, t);
                prop_assert_eq!(dup, r.check(&id, t), "verdict for {} at {}", id, t);
                let held: Vec<_> = d.entries().map(|(t, id, _)| (t, id.to_owned())).collect();
                let expected: Vec<_> = r.by_time.iter().map(|(t, _, id)| (*t, id.clone())).collect();
                prop_assert_eq!(&held, &expected);
                if let Some(restored) = restored.as_mut() {
                    prop_assert_eq!(restored.check(&id, t), dup);
                    let again: Vec<_> =
                        restored.entries().map(|(t, id, _)| (t, id.to_owned())).collect();
                    prop_assert_eq!(&again, &held);
                }
                if take {
                    checkpoint(&mut d, &mut stored);
                    let mut back: Vec<_> = stored.keys().cloned().collect();
                    let mut sorted_held = held.clone();
                    sorted_held.sort();
                    back.sort();
                    prop_assert_eq!(&back, &sorted_held);
                    let mut fresh = Dedup::new(window_ms, max_ids);
                    fresh.restore(stored.iter().map(|((t, id), seq)| (*t, id.clone(), *seq)));
                    prop_assert!(fresh == d, "restored equals live");
                    restored = Some(fresh);
                }
            }
        }
    }
}
