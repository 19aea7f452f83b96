//! A version as the param-server serves it: its spec, its prior, its
//! parameter table and the stream of its applied updates.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use arc_swap::ArcSwap;
use posterior_learner::params::params_to_wire;
use posterior_learner::posterior::ModelKind;
use posterior_learner::{KeyState, Posterior, VersionSpec};
use prost::Message;
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
    /// [`ServedVersion::min_doc_response_bytes`].
    min_doc_response_bytes: usize,
    /// Open `WatchParams` streams, each counted by its [`WatchSlot`]
    /// until the stream is dropped.
    open_watches: AtomicUsize,
    /// Set once the learners retired the version; its parameters stay
    /// served.
    retired: AtomicBool,
}

/// [`ServedVersion::min_doc_response_bytes`] of a version: the prior's
/// `Params` with doc 0 and every scalar that a stored state may set (seq,
/// sample count, event time, the prior flag) at its default, which the
/// encoding leaves out; plus the response field's tag and length.
fn min_doc_response_bytes(spec: &VersionSpec, prior: &KeyState) -> usize {
    let params = posterior_proto::v1::Params {
        seq: 0,
        sample_count: 0.0,
        updated_event_time_ms: 0,
        is_prior: false,
        ..params_to_wire(&spec.name, 0, prior)
    };
    let len = params.encoded_len();
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// One open `WatchParams` stream of a version: counted against the
/// version's limit from [`ServedVersion::reserve_watch`] until dropped.
#[derive(Debug)]
pub struct WatchSlot {
    version: Arc<ServedVersion>,
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.version.open_watches.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ServedVersion {
    /// A version with an empty table whose watchers each get a buffer of
    /// `watch_buffer` updates.
    pub fn new(id: u32, spec: VersionSpec, watch_buffer: usize) -> Self {
        let prior = KeyState::prior(&spec.model);
        let table = ParamTable::new(&spec.model.kind, 0);
        let watch_buffer = watch_buffer.max(1);
        let (updates, _) = broadcast::channel(watch_buffer);
        let min_doc_response_bytes = min_doc_response_bytes(&spec, &prior);
        Self {
            id,
            spec,
            prior,
            table: ArcSwap::from_pointee(table),
            updates,
            watch_buffer,
            min_doc_response_bytes,
            open_watches: AtomicUsize::new(0),
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

    /// Open `WatchParams` streams of this version: followers, and
    /// streams told to resync whose client has not yet read or dropped
    /// what they hold.
    pub fn watchers(&self) -> usize {
        self.open_watches.load(Ordering::Acquire)
    }

    /// Reserves a watch stream if fewer than `max` are open; the slot is
    /// held until the returned guard drops. Concurrent reservations never
    /// overshoot `max`.
    pub fn reserve_watch(self: &Arc<Self>, max: usize) -> Option<WatchSlot> {
        self.open_watches
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |open| {
                (open < max).then_some(open + 1)
            })
            .ok()?;
        Some(WatchSlot {
            version: Arc::clone(self),
        })
    }

    /// Whether any watcher follows the updates now (publishing to none
    /// is skipped).
    pub fn has_followers(&self) -> bool {
        self.updates.receiver_count() > 0
    }

    /// The fewest bytes one doc of this version adds to a `GetParams`
    /// response: every doc's parameters have the prior's number of values,
    /// and a doc's other scalars only add bytes. A request's doc count
    /// times this is a lower bound of its response, checked against the
    /// size limit before the response is built.
    pub fn min_doc_response_bytes(&self) -> usize {
        self.min_doc_response_bytes
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
