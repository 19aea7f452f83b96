//! The version registry: which A/B versions exist, by name and by a
//! compact id that keys the parameter table.

use std::collections::HashMap;

use crate::version::VersionSpec;

/// The hasher of the tables keyed by [`ParamKey`]: foldhash, seeded at
/// random per table. These tables are touched several times per sample,
/// and SipHash (std's default) was a visible part of the engine's cost.
/// foldhash resists accidental collision patterns (e.g. doc ids that are
/// multiples of a power of two) and, being seeded, fixed lists of colliding
/// keys; it does not claim to resist an attacker who can measure the
/// learner's timing, which the joiner feeding it is not.
pub type KeyHasher = foldhash::fast::RandomState;

/// Compact id of a version, assigned in creation order and stable for the
/// life of the state (checkpoints key parameters by it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionId(pub u32);

/// One key of the parameter table: (version, doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ParamKey {
    /// The version.
    pub version: VersionId,
    /// The document.
    pub doc_id: u64,
}

/// A registered version.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionEntry {
    /// Its id.
    pub id: VersionId,
    /// Its spec.
    pub spec: VersionSpec,
    /// Retired versions keep their parameters but take no more samples.
    pub retired: bool,
}

/// Why a registry change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// A version of that name exists (retired names are not reused).
    #[error("version {0:?} already exists")]
    AlreadyExists(String),
    /// No version of that name.
    #[error("version {0:?} not found")]
    NotFound(String),
}

/// Every version, in creation order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Registry {
    entries: Vec<VersionEntry>,
    by_name: HashMap<String, VersionId, foldhash::fast::RandomState>,
}

impl Registry {
    /// A registry holding `specs`, created in order.
    pub fn with_versions(
        specs: impl IntoIterator<Item = VersionSpec>,
    ) -> Result<Self, RegistryError> {
        let mut registry = Self::default();
        for spec in specs {
            registry.create(spec)?;
        }
        Ok(registry)
    }

    /// Adds a version.
    pub fn create(&mut self, spec: VersionSpec) -> Result<VersionId, RegistryError> {
        if self.by_name.contains_key(&spec.name) {
            return Err(RegistryError::AlreadyExists(spec.name));
        }
        let id = VersionId(u32::try_from(self.entries.len()).expect("fewer than 2^32 versions"));
        self.by_name.insert(spec.name.clone(), id);
        self.entries.push(VersionEntry {
            id,
            spec,
            retired: false,
        });
        Ok(id)
    }

    /// Retires a version: its samples go to the dead-letter sink from now on.
    pub fn retire(&mut self, name: &str) -> Result<VersionId, RegistryError> {
        let id = *self
            .by_name
            .get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_owned()))?;
        self.entries[id.0 as usize].retired = true;
        Ok(id)
    }

    /// The live (not retired) version called `name`.
    pub fn live(&self, name: &str) -> Option<&VersionEntry> {
        self.by_name
            .get(name)
            .map(|id| &self.entries[id.0 as usize])
            .filter(|e| !e.retired)
    }

    /// The id of the version called `name`, live or retired.
    pub fn id(&self, name: &str) -> Option<VersionId> {
        self.by_name.get(name).copied()
    }

    /// The version with id `id`.
    pub fn get(&self, id: VersionId) -> Option<&VersionEntry> {
        self.entries.get(id.0 as usize)
    }

    /// Every version, in creation order.
    pub fn entries(&self) -> &[VersionEntry] {
        &self.entries
    }
}
