//! A version as the param-server serves it: its spec, its prior, its
//! parameter table and the stream of its applied updates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use posterior_learner::posterior::ModelKind;
use posterior_learner::{KeyState, Posterior, VersionSpec};
use tokio::sync::broadcast;

use crate::table::ParamTable;

/// One applied update, as the watchers of a version receive it.
#[derive(Debug, Clone)]
pub struct AppliedUpdate {
    /// The doc whose state changed.
    pub doc_id: u64,
    /// Its new state.
    pub state: Arc<KeyState>,
}

/// A served version.
#[derive(Debug)]
pub struct ServedVersion {
    id: u32,
    spec: VersionSpec,
    prior: KeyState,
    table: ArcSwap<ParamTable>,
    updates: broadcast::Sender<AppliedUpdate>,
    watch_buffer: usize,
    /// Set once the learners retired the version; its parameters stay
    /// served.
    retired: AtomicBool,
}

impl ServedVersion {
    /// A version with an empty table whose watchers each get a buffer of
    /// `watch_buffer` updates.
    pub fn new(id: u32, spec: VersionSpec, watch_buffer: usize) -> Self {
        let prior = KeyState::prior(&spec.model);
        let table = ParamTable::new(&spec.model.kind, 0);
        let watch_buffer = watch_buffer.max(1);
        let (updates, _) = broadcast::channel(watch_buffer);
        Self {
            id,
            spec,
            prior,
            table: ArcSwap::from_pointee(table),
            updates,
            watch_buffer,
            retired: AtomicBool::new(false),
        }
    }

    /// The compact id, in registration order.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The version's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// The full spec (model kind, dimension, prior, reward).
    pub fn spec(&self) -> &VersionSpec {
        &self.spec
    }

    /// Context dimension: 0 for Beta, d for logistic.
    pub fn dim(&self) -> usize {
        self.spec.model.kind.dim()
    }

    /// The state of a doc never updated: the version's prior, seq 0.
    pub fn prior(&self) -> &KeyState {
        &self.prior
    }

    /// The current table. Holding the returned `Arc` keeps that table
    /// alive across a whole-table swap.
    pub fn table(&self) -> Arc<ParamTable> {
        self.table.load_full()
    }

    /// Replaces the whole table at once (restore, rollback): readers see
    /// the old table or the new one, never a mix. Returns the old one.
    pub fn swap_table(&self, table: ParamTable) -> Arc<ParamTable> {
        self.table.swap(Arc::new(table))
    }

    /// Whether the learners retired this version (its samples are no
    /// longer learned from; its parameters are still served).
    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// Marks the version retired; returns whether it was live until now.
    pub fn retire(&self) -> bool {
        !self.retired.swap(true, Ordering::AcqRel)
    }

    /// A receiver of every update applied from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<AppliedUpdate> {
        self.updates.subscribe()
    }

    /// Watchers following this version now.
    pub fn watchers(&self) -> usize {
        self.updates.receiver_count()
    }

    /// Updates a watcher may fall behind by before it must resync.
    pub fn watch_buffer(&self) -> usize {
        self.watch_buffer
    }

    /// Tells the watchers about an applied update.
    pub(crate) fn publish(&self, doc_id: u64, state: Arc<KeyState>) {
        // An error only means the last watcher left meanwhile.
        let _ = self.updates.send(AppliedUpdate { doc_id, state });
    }

    /// Checks that `state` is of this version's model and dimension;
    /// returns (what the state holds, what the spec wants) when not.
    pub fn check_model(&self, state: &KeyState) -> Result<(), (ModelShape, ModelShape)> {
        let want = ModelShape::of_kind(&self.spec.model.kind);
        let got = ModelShape::of_state(&state.posterior);
        if want == got {
            Ok(())
        } else {
            Err((got, want))
        }
    }
}

/// A model and its dimension, for comparing a state with a spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelShape {
    /// `beta`, `logistic-diagonal` or `logistic-full`.
    pub model: &'static str,
    /// Context dimension (0 for Beta).
    pub dim: usize,
}

impl ModelShape {
    fn of_kind(kind: &ModelKind) -> Self {
        Self {
            model: kind.name(),
            dim: kind.dim(),
        }
    }

    fn of_state(posterior: &Posterior) -> Self {
        let dim = match posterior {
            Posterior::Beta(_) => 0,
            Posterior::Diagonal(g) => g.dim(),
            Posterior::Full(g) => g.dim(),
        };
        Self {
            model: posterior.name(),
            dim,
        }
    }
}

impl std::fmt::Display for ModelShape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} d={}", self.model, self.dim)
    }
}
