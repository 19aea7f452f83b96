//! The restore of last resort: for a version with neither live state nor
//! a savepoint, the parameters the param-servers serve (the last published
//! values) seed the learner, so a lost state never resets a version to its
//! prior in front of users.
//!
//! The restore order at start is: the live checkpoint; else the newest
//! verified savepoint (when asked, or when `[savepoints]
//! restore_when_missing` is on and the live state is missing); else, per
//! version, a [`ServedParams`] source. Served parameters carry no input
//! offsets: the learner then reads from its configured start position, so
//! samples between what the served values had seen and that position may
//! be missed or counted twice. That is the price of a last line of
//! defence, and the log says so.
//!
//! A learner that starts without any state also registers the versions
//! created at run time (by admin commands the control topic no longer
//! replays to it) that the source lists, before seeding: a fork's or a
//! created version's parameters come back with the config's.

use crate::params::AnnouncedVersion;
use crate::posterior::{KeyState, Posterior};
use crate::version::VersionSpec;

/// Where served parameters come from: the `params` topic the param-servers
/// are fed by (`kafka::ParamsTopic`), or a param-server's API.
pub trait ServedParams {
    /// Every served key of `version` as (doc id, state); empty when the
    /// version was never served.
    fn fetch(&mut self, version: &VersionSpec) -> anyhow::Result<Vec<(u64, KeyState)>>;

    /// The served versions, retired ones included, in the order they
    /// were registered; empty when the source cannot list them (then
    /// only the config's versions are seeded).
    fn versions(&mut self) -> anyhow::Result<Vec<AnnouncedVersion>>;
}

/// Why served parameters were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SeedError {
    /// The version is not registered.
    #[error("version {0:?} is not registered")]
    UnknownVersion(String),
    /// The version already has keys: its state was restored, so served
    /// values (older by construction) must not overwrite it.
    #[error("version {0:?} already has state; served parameters only seed an empty version")]
    HasState(String),
    /// A served state is of another model than the version's.
    #[error("doc {doc_id} of version {version:?}: served {got}, the version runs {expected}")]
    WrongModel {
        /// The version.
        version: String,
        /// The doc.
        doc_id: u64,
        /// The version's model.
        expected: String,
        /// The served state's model.
        got: String,
    },
}

/// The model and dimension of a posterior, e.g. `logistic-diagonal/4`.
fn shape(posterior: &Posterior) -> String {
    match posterior {
        Posterior::Beta(_) => "beta".into(),
        Posterior::Diagonal(g) => format!("logistic-diagonal/{}", g.dim()),
        Posterior::Full(g) => format!("logistic-full/{}", g.dim()),
    }
}

/// Checks that every served state fits `spec`'s model.
pub fn check_model(spec: &VersionSpec, states: &[(u64, KeyState)]) -> Result<(), SeedError> {
    let expected = shape(&KeyState::prior(&spec.model).posterior);
    for (doc_id, state) in states {
        let got = shape(&state.posterior);
        if got != expected {
            return Err(SeedError::WrongModel {
                version: spec.name.clone(),
                doc_id: *doc_id,
                expected,
                got,
            });
        }
    }
    Ok(())
}
