//! Domain → wire: a key's state as the `posterior.v1.Params` and
//! `ParamUpdate` messages that the param-server publishes, and the
//! in-process form of a published update, [`ParamChange`].

use std::sync::Arc;

use posterior_proto::v1;

use crate::posterior::{KeyState, Posterior};

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
