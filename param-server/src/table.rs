//! One version's parameter table: doc id → [`StoredState`], in a
//! concurrent map whose reads take no lock.
//!
//! The map is `papaya`. `scc::HashIndex` looked up 1.3–2× faster in the
//! bench (`benches/store.rs`, figures in NOTES.md) but its reads are not
//! linearizable: under updates a reader saw a key's seq go backwards
//! (`readers_never_see_a_torn_state_or_a_seq_going_back` fails with it),
//! which the store must never show. Values are immutable: an update
//! allocates a new value and swaps the entry's pointer with one
//! compare-and-swap, and the old value is freed once no reader holds it.
//! So a reader sees either the old or the new state of a key, whole, with
//! its sequence number — never a mix, never an older one after a newer.

use papaya::{Compute, Operation};

use crate::stored::StoredState;

/// The hasher of the tables: foldhash, seeded per table. Doc ids come from
/// the learner (not from clients), and a seeded hash resists accidental
/// collision patterns such as ids that are multiples of a power of two.
pub type DocHasher = foldhash::fast::RandomState;

/// What [`ParamTable::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// The key was new or its stored seq was lower: the state is now visible.
    Applied,
    /// The stored seq was equal or higher (a replay or a reordering): ignored.
    Stale {
        /// The seq the table keeps.
        stored_seq: u64,
    },
}

/// Doc id → state for one version.
#[derive(Debug)]
pub struct ParamTable {
    map: papaya::HashMap<u64, StoredState, DocHasher>,
}

impl Default for ParamTable {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl ParamTable {
    /// An empty table sized for `capacity` keys.
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            map: papaya::HashMap::with_capacity_and_hasher(capacity, DocHasher::default()),
        }
    }

    /// Stores `state` for `doc_id` unless the stored seq is equal or higher;
    /// the check and the swap are one atomic step.
    pub fn apply(&self, doc_id: u64, state: StoredState) -> ApplyOutcome {
        let seq = state.seq();
        let map = self.map.pin();
        // papaya may call the closure again when the entry changed under it;
        // each call gets its own copy of the new value.
        // A doc never seen is at the prior, whose seq is 0.
        let result = map.compute(doc_id, |entry| {
            let stored_seq = entry.map_or(0, |(_, stored)| stored.seq());
            if seq > stored_seq {
                Operation::Insert(state.clone())
            } else {
                Operation::Abort(stored_seq)
            }
        });
        match result {
            Compute::Aborted(stored_seq) => ApplyOutcome::Stale { stored_seq },
            Compute::Inserted(..) | Compute::Updated { .. } | Compute::Removed(..) => {
                ApplyOutcome::Applied
            }
        }
    }

    /// Calls `read` with the stored state of `doc_id` (or `None`), under a
    /// short-lived read guard.
    pub fn with<R>(&self, doc_id: u64, read: impl FnOnce(Option<&StoredState>) -> R) -> R {
        let map = self.map.pin();
        read(map.get(&doc_id))
    }

    /// Every doc id present now (a weakly consistent scan: keys added during
    /// the scan may or may not appear).
    pub fn doc_ids(&self) -> Vec<u64> {
        self.map.pin().keys().copied().collect()
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
