//! One version's parameter table: doc id → state, read without locks.
//!
//! - Beta and diagonal-Gaussian versions (the common case, and the one
//!   the benchmarks measure) use a flat table (`flat.rs`): fixed-size slots
//!   in flat memory under a sequence lock, and an open-addressing index,
//!   read in prefetched groups.
//! - Full-covariance versions keep each key's `KeyState` whole (its
//!   Cholesky factor included: rebuilding it on every read would cost
//!   O(d³)) in a `papaya` map: an update swaps in a new immutable value
//!   with one compare-and-swap, and the old one is freed once no reader
//!   holds it.
//!
//! Either way a reader sees the old or the new state of a key, whole,
//! with its sequence number — never a mix, never an older one after a
//! newer (`readers_never_see_a_torn_state_or_a_seq_going_back`). `scc`'s
//! `HashIndex` was also measured (`benches/store.rs`) but its reads are
//! not linearizable: under updates a reader saw a key's seq go backwards.

use papaya::{Compute, Operation};
use posterior_learner::KeyState;
use posterior_learner::posterior::{CovarianceForm, ModelKind};

use crate::flat::{FlatTable, Shape};
use crate::stored::StateView;

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

/// A state of another model or dimension than its table's (the store
/// checks states against the version first, so this is a caller's bug).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the state's model or dimension is not the table's")]
pub struct WrongShape;

/// Doc id → state for one version.
#[derive(Debug)]
pub struct ParamTable {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Flat(FlatTable),
    Boxed(papaya::HashMap<u64, KeyState, DocHasher>),
}

impl ParamTable {
    /// An empty table for states of `kind`, sized for `capacity` keys.
    pub fn new(kind: &ModelKind, capacity: usize) -> Self {
        let inner = match kind {
            ModelKind::Beta(_) => Inner::Flat(FlatTable::new(Shape::Beta, capacity)),
            ModelKind::Logistic(prior) => match prior.form() {
                CovarianceForm::Diagonal => Inner::Flat(FlatTable::new(
                    Shape::Diagonal { dim: prior.dim() },
                    capacity,
                )),
                CovarianceForm::Full => Inner::Boxed(papaya::HashMap::with_capacity_and_hasher(
                    capacity,
                    DocHasher::default(),
                )),
            },
        };
        Self { inner }
    }

    /// Stores `state` for `doc_id` unless the stored seq is equal or higher;
    /// the check and the store are one atomic step for readers.
    pub fn apply(&self, doc_id: u64, state: &KeyState) -> Result<ApplyOutcome, WrongShape> {
        match &self.inner {
            Inner::Flat(table) => table.apply(doc_id, state).ok_or(WrongShape),
            Inner::Boxed(map) => {
                if FlatTable::shape_of(state).is_some() {
                    return Err(WrongShape);
                }
                let seq = state.seq;
                // papaya may call the closure again when the entry changed
                // under it; each call gets its own copy of the new value.
                // A doc never seen is at the prior, whose seq is 0.
                let map = map.pin();
                let result = map.compute(doc_id, |entry| {
                    let stored_seq = entry.map_or(0, |(_, stored)| stored.seq);
                    if seq > stored_seq {
                        Operation::Insert(state.clone())
                    } else {
                        Operation::Abort(stored_seq)
                    }
                });
                Ok(match result {
                    Compute::Aborted(stored_seq) => ApplyOutcome::Stale { stored_seq },
                    Compute::Inserted(..) | Compute::Updated { .. } | Compute::Removed(..) => {
                        ApplyOutcome::Applied
                    }
                })
            }
        }
    }

    /// Calls `read` with the stored state of each doc of `doc_ids` (or
    /// `None`), in order; a flat table overlaps the docs' cache misses.
    pub fn read_each(&self, doc_ids: &[u64], mut read: impl FnMut(u64, Option<StateView<'_>>)) {
        match &self.inner {
            Inner::Flat(table) => table.read_each(doc_ids, read),
            Inner::Boxed(map) => {
                let map = map.pin();
                for &doc_id in doc_ids {
                    read(doc_id, map.get(&doc_id).map(StateView::of));
                }
            }
        }
    }

    /// Calls `read` with the stored state of `doc_id` (or `None`).
    pub fn read<R>(&self, doc_id: u64, read: impl FnOnce(Option<StateView<'_>>) -> R) -> R {
        let mut read = Some(read);
        let mut result = None;
        self.read_each(&[doc_id], |_, state| {
            if let Some(read) = read.take() {
                result = Some(read(state));
            }
        });
        result.expect("one doc read")
    }

    /// The stored state of `doc_id`, rebuilt as the learner's.
    pub fn get(&self, doc_id: u64) -> Option<KeyState> {
        self.read(doc_id, |state| state.map(|s| s.to_key_state()))
    }

    /// Every doc id present now (a weakly consistent scan: keys added during
    /// the scan may or may not appear).
    pub fn doc_ids(&self) -> Vec<u64> {
        match &self.inner {
            Inner::Flat(table) => table.doc_ids(),
            Inner::Boxed(map) => map.pin().keys().copied().collect(),
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        match &self.inner {
            Inner::Flat(table) => table.len(),
            Inner::Boxed(map) => map.len(),
        }
    }

    /// True when no key is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
