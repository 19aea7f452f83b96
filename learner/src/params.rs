//! Domain → wire: a key's state as the `posterior.v1.Params` and
//! `ParamUpdate` messages that the param-server publishes, the in-process
//! form of a published update, [`ParamChange`], and what a learner
//! publishes besides updates: its versions ([`Publication`],
//! [`ParamsRecord`] on the `params` topic).

use std::sync::Arc;

use posterior_proto::v1;

use crate::posterior::{KeyState, Posterior};
use crate::registry::VersionEntry;
use crate::version::VersionSpec;

/// Key of the `params` topic's version announcements. A parameter
/// record's key is `version/doc_id`, which always holds a `/`.
pub const ANNOUNCEMENT_KEY: &[u8] = b"versions";

/// The wire parameters of key (`version`, `doc_id`).
pub fn params_to_wire(version: &str, doc_id: u64, state: &KeyState) -> v1::Params {
    let model = match &state.posterior {
        Posterior::Beta(b) => v1::params::Model::Beta(v1::BetaParams {
            alpha: b.alpha(),
            beta: b.beta(),
        }),
        Posterior::Diagonal(g) => v1::params::Model::Gaussian(v1::GaussianParams {
            mean: g.mean().to_vec(),
            form: v1::CovarianceForm::Diagonal as i32,
            precision: g.precision().to_vec(),
            variance: g.precision().iter().map(|q| 1.0 / q).collect(),
        }),
        Posterior::Full(g) => {
            let q = g.precision();
            let packed = (0..g.dim())
                .flat_map(|i| (0..=i).map(move |j| q[(i, j)]))
                .collect();
            v1::params::Model::Gaussian(v1::GaussianParams {
                mean: g.mean().to_vec(),
                form: v1::CovarianceForm::Full as i32,
                precision: packed,
                variance: g.variances().to_vec(),
            })
        }
    };
    v1::Params {
        version: version.to_owned(),
        doc_id,
        model: Some(model),
        seq: state.seq,
        sample_count: state.sample_count,
        updated_event_time_ms: state.updated_event_time_ms,
        is_prior: state.is_prior(),
    }
}

/// The changelog record of a key: its wire parameters plus the exact
/// binary state, from which a replica rebuilds it bit for bit.
pub fn update_to_wire(version: &str, doc_id: u64, state: &KeyState) -> v1::ParamUpdate {
    v1::ParamUpdate {
        params: Some(params_to_wire(version, doc_id, state)),
        state: state.encode(),
    }
}

/// One key's new state as the learner publishes it: shared, not copied
/// or encoded. An in-process consumer (the embedded param-server) takes
/// it as is; the Kafka sink encodes it with [`ParamChange::to_wire`].
#[derive(Debug, Clone, PartialEq)]
pub struct ParamChange {
    /// Version name.
    pub version: Arc<str>,
    /// Document.
    pub doc_id: u64,
    /// The key's state; `state.seq` is the update's sequence number.
    pub state: Arc<KeyState>,
}

impl ParamChange {
    /// The `ParamUpdate` of the `params` topic.
    pub fn to_wire(&self) -> v1::ParamUpdate {
        update_to_wire(&self.version, self.doc_id, &self.state)
    }
}

/// What a learner hands an in-process consumer, in order: its versions
/// (at start and whenever they change, before the first update of a new
/// version), and batches of coalesced updates.
#[derive(Debug, Clone, PartialEq)]
pub enum Publication {
    /// Every registered version, retired ones included.
    Versions(Vec<VersionEntry>),
    /// Coalesced updates, at most one per key.
    Params(Vec<ParamChange>),
}

/// A learner's versions as announced on the `params` topic.
pub fn announcement_to_wire(versions: &[VersionEntry]) -> v1::VersionAnnouncement {
    v1::VersionAnnouncement {
        versions: versions
            .iter()
            .map(|entry| v1::AnnouncedVersion {
                spec: Some(v1::VersionSpec::from(&entry.spec)),
                retired: entry.retired,
            })
            .collect(),
    }
}

/// One announced version, checked: its spec and whether it is retired.
#[derive(Debug, Clone, PartialEq)]
pub struct AnnouncedVersion {
    /// The version's spec.
    pub spec: VersionSpec,
    /// Retired versions keep their parameters but take no more samples.
    pub retired: bool,
}

/// A record of the `params` topic, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamsRecord {
    /// A learner's versions (key [`ANNOUNCEMENT_KEY`]).
    Versions(Vec<AnnouncedVersion>),
    /// One key's update (key `version/doc_id`).
    Update(v1::ParamUpdate),
}

/// Why a `params` record could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParamsRecordError {
    /// The value is not the protobuf its key says.
    #[error("undecodable {kind}: {reason}")]
    Undecodable {
        /// `version announcement` or `param update`.
        kind: &'static str,
        /// The decoder's message.
        reason: String,
    },
    /// An announced spec is invalid.
    #[error("announced version {index}: {reason}")]
    BadSpec {
        /// Position in the announcement.
        index: usize,
        /// What is wrong.
        reason: String,
    },
}

impl ParamsRecord {
    /// Decodes a record of the `params` topic by its key.
    pub fn decode(key: Option<&[u8]>, value: &[u8]) -> Result<Self, ParamsRecordError> {
        use prost::Message as _;
        let undecodable = |kind| {
            move |e: prost::DecodeError| ParamsRecordError::Undecodable {
                kind,
                reason: e.to_string(),
            }
        };
        if key == Some(ANNOUNCEMENT_KEY) {
            let wire = v1::VersionAnnouncement::decode(value)
                .map_err(undecodable("version announcement"))?;
            let versions = wire
                .versions
                .into_iter()
                .enumerate()
                .map(|(index, announced)| {
                    let bad = |reason: String| ParamsRecordError::BadSpec { index, reason };
                    let spec = announced
                        .spec
                        .ok_or_else(|| bad("spec is missing".into()))?;
                    Ok(AnnouncedVersion {
                        spec: VersionSpec::try_from(spec).map_err(|e| bad(e.to_string()))?,
                        retired: announced.retired,
                    })
                })
                .collect::<Result<_, _>>()?;
            return Ok(Self::Versions(versions));
        }
        v1::ParamUpdate::decode(value)
            .map(Self::Update)
            .map_err(undecodable("param update"))
    }
}
