//! The parameter store: every (version, doc) state in memory.
//!
//! - The version table (name → [`ServedVersion`]: id, spec with model kind,
//!   dimension and prior) sits behind an `ArcSwap`: a read is one atomic
//!   load, and registering a version publishes a new table at once.
//! - Each version's keys live in a [`ParamTable`] (reads without locks),
//!   itself behind an
//!   `ArcSwap` so that a restore or rollback swaps the whole table.
//! - Reads never block on writes and never see a torn value: a key's state
//!   is an immutable value swapped in with its sequence number.
//! - An update whose seq is not greater than the stored one is ignored. A
//!   learner replaying from a checkpoint republishes identical values under
//!   identical seqs, so predictors never see a parameter go backwards.
//! - A doc never seen reads as the version's prior, flagged `is_prior`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use posterior_learner::KeyState;
use posterior_learner::params::params_to_wire;
use posterior_proto::v1;

use crate::error::StoreError;
use crate::stored::StateView;
use crate::table::{ApplyOutcome, ParamTable};
use crate::version::ServedVersion;

/// Updates a watcher may fall behind by before it is told to resync.
pub const DEFAULT_WATCH_BUFFER: usize = 4096;

type VersionTable = HashMap<String, Arc<ServedVersion>>;

/// All served parameters.
#[derive(Debug)]
pub struct ParamStore {
    versions: ArcSwap<VersionTable>,
    /// Serialises registrations (rare); readers never take it.
    register_lock: Mutex<()>,
    watch_buffer: usize,
}

impl Default for ParamStore {
    fn default() -> Self {
        Self::new(DEFAULT_WATCH_BUFFER)
    }
}

impl ParamStore {
    /// An empty store whose watchers may fall `watch_buffer` updates behind.
    pub fn new(watch_buffer: usize) -> Self {
        Self {
            versions: ArcSwap::from_pointee(VersionTable::new()),
            register_lock: Mutex::new(()),
            watch_buffer,
        }
    }

    /// Serves a new version with an empty table (every doc at the prior).
    pub fn register(
        &self,
        spec: posterior_learner::VersionSpec,
    ) -> Result<Arc<ServedVersion>, StoreError> {
        let _serial = self
            .register_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.versions.load_full();
        if current.contains_key(&spec.name) {
            return Err(StoreError::VersionExists(spec.name));
        }
        let id = u32::try_from(current.len()).expect("fewer than 2^32 versions");
        let version = Arc::new(ServedVersion::new(id, spec, self.watch_buffer));
        let mut next = VersionTable::clone(&current);
        next.insert(version.name().to_owned(), Arc::clone(&version));
        self.versions.store(Arc::new(next));
        Ok(version)
    }

    /// Registers a version the learners announced (created or forked):
    /// idempotent, so a repeated announcement (a replayed control topic,
    /// a restarted learner) returns the version already served. A name
    /// already served with another spec is refused (`SpecConflict`).
    pub fn register_announced(
        &self,
        spec: posterior_learner::VersionSpec,
    ) -> Result<Arc<ServedVersion>, StoreError> {
        match self.register(spec.clone()) {
            Err(StoreError::VersionExists(name)) => {
                let served = self.version(&name)?;
                if *served.spec() == spec {
                    Ok(served)
                } else {
                    Err(StoreError::SpecConflict(name))
                }
            }
            other => other,
        }
    }

    /// Marks `name` retired, as the learners announced; its parameters
    /// stay served. Returns whether it was live until now (a repeated
    /// announcement returns `false` and changes nothing).
    pub fn retire(&self, name: &str) -> Result<bool, StoreError> {
        Ok(self.version(name)?.retire())
    }

    /// The version called `name`.
    pub fn version(&self, name: &str) -> Result<Arc<ServedVersion>, StoreError> {
        self.versions
            .load()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::UnknownVersion(name.to_owned()))
    }

    /// Every served version, by id.
    pub fn versions(&self) -> Vec<Arc<ServedVersion>> {
        let mut all: Vec<_> = self.versions.load().values().cloned().collect();
        all.sort_by_key(|v| v.id());
        all
    }

    /// Applies one key's new state (its seq is `state.seq`). A state whose
    /// seq is not above the stored one is ignored (`Stale`); a state of the
    /// wrong model or dimension is refused and changes nothing.
    pub fn apply(
        &self,
        version: &str,
        doc_id: u64,
        state: KeyState,
    ) -> Result<ApplyOutcome, StoreError> {
        self.apply_shared(version, doc_id, &state)
    }

    /// [`ParamStore::apply`] of a state the caller keeps (the learner's
    /// in-process publications share their states): it is copied into
    /// the store's own form.
    pub fn apply_shared(
        &self,
        version: &str,
        doc_id: u64,
        state: &KeyState,
    ) -> Result<ApplyOutcome, StoreError> {
        let served = self.version(version)?;
        served
            .check_model(state)
            .map_err(|(got, want)| StoreError::ModelMismatch {
                version: version.to_owned(),
                doc_id,
                got,
                want,
            })?;
        let table = served.table();
        let outcome = table
            .apply(doc_id, state)
            .map_err(|wrong| StoreError::BadUpdate {
                version: version.to_owned(),
                doc_id,
                reason: wrong.to_string(),
            })?;
        // Watchers are counted after the insert: one that subscribed too
        // late to be counted reads its snapshot after the insert, and so
        // sees the state there. The state is read back (a newer one may
        // be read, which its own writer also publishes: a harmless repeat).
        if outcome == ApplyOutcome::Applied
            && served.has_followers()
            && let Some(state) = table.get(doc_id)
        {
            served.publish(doc_id, Arc::new(state));
        }
        Ok(outcome)
    }

    /// Applies a changelog record: the exact state is decoded from
    /// `update.state` (validated by the learner's decoder) and keyed by
    /// `update.params`. A malformed record is an error, never a panic.
    pub fn apply_wire(&self, update: &v1::ParamUpdate) -> Result<ApplyOutcome, StoreError> {
        let bad = |version: &str, doc_id, reason: String| StoreError::BadUpdate {
            version: version.to_owned(),
            doc_id,
            reason,
        };
        let params = update
            .params
            .as_ref()
            .ok_or_else(|| bad("", 0, "no params".to_owned()))?;
        let (version, doc_id) = (params.version.as_str(), params.doc_id);
        let state = KeyState::decode(&update.state)
            .map_err(|e| bad(version, doc_id, format!("state: {e}")))?;
        if state.seq != params.seq {
            return Err(bad(
                version,
                doc_id,
                format!("params.seq {} but state seq {}", params.seq, state.seq),
            ));
        }
        self.apply(version, doc_id, state)
    }

    /// The wire parameters of one key: its stored state, or the version's
    /// prior (`is_prior`) for a doc never seen.
    pub fn params(&self, version: &str, doc_id: u64) -> Result<v1::Params, StoreError> {
        let served = self.version(version)?;
        Ok(wire_params(&served, &served.table(), doc_id))
    }
}

/// The wire parameters of `doc_id` in `version`, read from `table` (the
/// version's current table, loaded once per request): the stored state, or
/// the prior when the doc was never seen.
pub fn wire_params(version: &ServedVersion, table: &ParamTable, doc_id: u64) -> v1::Params {
    table.read(doc_id, |stored| to_wire(version, doc_id, stored))
}

/// [`wire_params`] of each of `doc_ids`, in order, read as one batch (a
/// flat table overlaps the docs' cache misses).
pub fn wire_params_each(
    version: &ServedVersion,
    table: &ParamTable,
    doc_ids: &[u64],
) -> Vec<v1::Params> {
    let mut params = Vec::with_capacity(doc_ids.len());
    table.read_each(doc_ids, |doc_id, stored| {
        params.push(to_wire(version, doc_id, stored));
    });
    params
}

fn to_wire(version: &ServedVersion, doc_id: u64, stored: Option<StateView<'_>>) -> v1::Params {
    match stored {
        Some(stored) => stored.to_wire(version.name(), doc_id),
        None => params_to_wire(version.name(), doc_id, version.prior()),
    }
}

/// The `GetParamsResponse` of `doc_ids` in `version`, encoded straight
/// from the table (each doc's stored state or the prior): the bytes prost
/// writes for the response [`wire_params`] builds, without building it.
pub fn encode_get_params(version: &ServedVersion, table: &ParamTable, doc_ids: &[u64]) -> Vec<u8> {
    let prior = StateView::of(version.prior());
    let mut buf = Vec::new();
    table.read_each(doc_ids, |doc_id, stored| {
        stored
            .unwrap_or(prior)
            .encode_as_field(1, version.name(), doc_id, &mut buf);
    });
    buf
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod tests;
