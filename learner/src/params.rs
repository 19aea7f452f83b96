//! Domain → wire: a key's state as the `posterior.v1.Params` and
//! `ParamUpdate` messages that the param-server publishes, the in-process
//! form of a published update, [`ParamChange`], and what a learner
//! publishes besides updates: its versions ([`Publication`],
//! [`ParamsRecord`] on the `params` topic).

use std::sync::Arc;

use posterior_proto::v1;

use crate::posterior::{KeyState, Posterior, SharedState};
use crate::registry::VersionEntry;
use crate::version::VersionSpec;

/// Key of the `params` topic's version announcements by a learner of
/// every partition. A parameter record's key is `version/doc_id`, which
/// always holds a `/`.
pub const ANNOUNCEMENT_KEY: &[u8] = b"versions";

/// The key of the version announcements of a learner of `partitions`
/// (`None`: every partition): [`ANNOUNCEMENT_KEY`], or
/// `versions@p<first>-<second>-…` for a learner of some partitions. Each
/// learner announces its own registry to every partition; under one
/// shared key, compaction would keep only the newest learner's, and a
/// lagging learner's could hide a version another has created (the
/// replicas would then never learn it).
pub fn announcement_key(partitions: Option<&std::collections::BTreeSet<u32>>) -> Vec<u8> {
    match partitions {
        None => ANNOUNCEMENT_KEY.to_vec(),
        Some(partitions) => {
            let list: Vec<String> = partitions.iter().map(u32::to_string).collect();
            format!("versions@p{}", list.join("-")).into_bytes()
        }
    }
}

/// Whether `key` is an [`announcement_key`]: `versions`, or `versions@…`
/// without a `/` (a parameter record's key always has one).
pub fn is_announcement_key(key: &[u8]) -> bool {
    key == ANNOUNCEMENT_KEY || (key.starts_with(b"versions@") && !key.contains(&b'/'))
}

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

/// A key's state from its wire parameters, as `GetParams` and
/// `WatchParams` serve them: the inverse of [`params_to_wire`], exact for
/// every model (α and β; the mean and the diagonal or packed
/// lower-triangular precision are the stored floats). Refuses a message
/// without a model, of an unknown covariance form, or whose numbers are
/// not a valid posterior, naming the field.
pub fn params_from_wire(params: &v1::Params) -> Result<KeyState, String> {
    use crate::posterior::{BetaPosterior, DiagonalGaussian, FullGaussian};
    let posterior = match &params.model {
        Some(v1::params::Model::Beta(b)) => {
            Posterior::Beta(BetaPosterior::from_parts(b.alpha, b.beta).map_err(|e| e.to_string())?)
        }
        Some(v1::params::Model::Gaussian(g)) => match v1::CovarianceForm::try_from(g.form) {
            Ok(v1::CovarianceForm::Diagonal) => Posterior::Diagonal(
                DiagonalGaussian::from_parts(g.mean.clone(), g.precision.clone())
                    .map_err(|e| e.to_string())?,
            ),
            Ok(v1::CovarianceForm::Full) => {
                let d = g.mean.len();
                if g.precision.len() != d * (d + 1) / 2 {
                    return Err(format!(
                        "packed precision holds {} values, dimension {d} needs {}",
                        g.precision.len(),
                        d * (d + 1) / 2
                    ));
                }
                let mut q = ndarray::Array2::zeros((d, d));
                let mut packed = g.precision.iter();
                for i in 0..d {
                    for j in 0..=i {
                        let v = *packed.next().expect("length checked");
                        q[(i, j)] = v;
                        q[(j, i)] = v;
                    }
                }
                Posterior::Full(Box::new(
                    FullGaussian::from_parts(g.mean.clone(), q).map_err(|e| e.to_string())?,
                ))
            }
            _ => return Err(format!("unknown covariance form {}", g.form)),
        },
        None => return Err("no model".into()),
    };
    Ok(KeyState {
        seq: params.seq,
        sample_count: params.sample_count,
        updated_event_time_ms: params.updated_event_time_ms,
        posterior,
    })
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
    pub state: SharedState,
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
    /// Sent once per run, after the start's publications: the consumer
    /// (an embedded param-server that starts empty) now holds every key
    /// the learner has, and may answer for them.
    Current,
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
    /// A learner's versions (an [`announcement_key`]).
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
        if key.is_some_and(is_announcement_key) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posterior::{
        BetaPrior, CovarianceForm, LogisticPrior, ModelKind, ModelSpec, Observation,
    };

    /// A state of `kind` after a few updates, so no value is the prior's.
    fn learned(kind: ModelKind, dim: usize) -> KeyState {
        let spec = ModelSpec::new(kind);
        let mut state = KeyState::prior(&spec);
        for i in 0..5 {
            let context: Vec<f32> = (0..dim).map(|j| ((i + j) % 3) as f32 - 0.7).collect();
            let obs = Observation {
                context: &context,
                reward: i % 2 == 0,
                weight: 1.0,
                event_time_ms: 100 + i as i64,
            };
            state.update(&spec, &[obs]).unwrap();
        }
        state
    }

    /// Learners of some partitions announce under keys of their own, which
    /// compaction keeps apart; none is taken for a parameter record's, nor
    /// a parameter record's (a version may be named `versions@…`) for one.
    #[test]
    fn each_learner_announces_under_its_own_key() {
        use std::collections::BTreeSet;
        let every = announcement_key(None);
        let some = announcement_key(Some(&BTreeSet::from([0, 2])));
        let others = announcement_key(Some(&BTreeSet::from([1, 3])));
        assert_eq!(every, b"versions");
        assert_eq!(some, b"versions@p0-2");
        assert_ne!(some, others);
        for key in [&every, &some, &others] {
            assert!(is_announcement_key(key));
        }
        for key in [&b"versions/7"[..], b"versions@p0/7", b"ctr/1", b"version"] {
            assert!(
                !is_announcement_key(key),
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        let announced = announcement_to_wire(&[]);
        let value = prost::Message::encode_to_vec(&announced);
        assert_eq!(
            ParamsRecord::decode(Some(&some), &value).unwrap(),
            ParamsRecord::Versions(Vec::new())
        );
    }

    #[test]
    fn wire_params_give_back_the_exact_state_of_every_model() {
        let states = [
            learned(ModelKind::Beta(BetaPrior::UNIFORM), 0),
            learned(
                ModelKind::Logistic(
                    LogisticPrior::isotropic(CovarianceForm::Diagonal, 4, 1.0).unwrap(),
                ),
                4,
            ),
            learned(
                ModelKind::Logistic(
                    LogisticPrior::isotropic(CovarianceForm::Full, 3, 2.0).unwrap(),
                ),
                3,
            ),
        ];
        for state in states {
            let wire = params_to_wire("v", 7, &state);
            let back = params_from_wire(&wire).unwrap();
            assert_eq!(back.encode(), state.encode(), "{state:?}");
        }
    }

    #[test]
    fn wire_params_that_are_no_posterior_are_refused_by_name() {
        let state = learned(
            ModelKind::Logistic(LogisticPrior::isotropic(CovarianceForm::Full, 3, 2.0).unwrap()),
            3,
        );
        let mut wire = params_to_wire("v", 7, &state);
        wire.model = None;
        assert_eq!(params_from_wire(&wire).unwrap_err(), "no model");
        let mut wire = params_to_wire("v", 7, &state);
        let Some(v1::params::Model::Gaussian(g)) = wire.model.as_mut() else {
            unreachable!()
        };
        g.precision.pop();
        let err = params_from_wire(&wire).unwrap_err();
        assert!(err.contains("packed precision holds 5"), "{err}");
        let mut wire = params_to_wire("v", 7, &learned(ModelKind::Beta(BetaPrior::UNIFORM), 0));
        if let Some(v1::params::Model::Beta(b)) = wire.model.as_mut() {
            b.alpha = f64::NAN;
        }
        let err = params_from_wire(&wire).unwrap_err();
        assert!(err.contains("alpha"), "{err}");
    }
}
