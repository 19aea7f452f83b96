//! A key's state as a reader of the store sees it: a borrowed view of the
//! stored numbers, from which the response is built without rebuilding
//! the learner's [`KeyState`] (no allocation, no re-validation).
//!
//! The view also encodes a `Params` message straight into a response
//! buffer, byte for byte what prost writes for [`StateView::to_wire`]
//! (`tests::the_direct_encoding_is_prosts`), so `GetParams` skips the
//! per-doc message with its three vectors and the second walk prost makes
//! to size it.

use posterior_learner::params::params_to_wire;
use posterior_learner::posterior::{BetaPosterior, DiagonalGaussian, FullGaussian};
use posterior_learner::{KeyState, Posterior};
use posterior_proto::v1;

/// One key's parameters and bookkeeping, borrowed from the store (or from
/// a `KeyState`, such as the version's prior).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StateView<'a> {
    /// The key's update sequence number (0: the prior).
    pub seq: u64,
    /// Weighted number of samples applied.
    pub sample_count: f64,
    /// Event time of the newest sample applied (Unix ms).
    pub updated_event_time_ms: i64,
    /// The posterior's numbers.
    pub body: BodyView<'a>,
}

/// A posterior's numbers.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BodyView<'a> {
    /// Beta(α, β).
    Beta {
        /// α.
        alpha: f64,
        /// β.
        beta: f64,
    },
    /// N(mean, diag(precision)⁻¹).
    Diagonal {
        /// The d means.
        mean: &'a [f64],
        /// The d precisions.
        precision: &'a [f64],
    },
    /// A dense-precision Gaussian, kept whole with its Cholesky factor.
    Full(&'a FullGaussian),
}

impl<'a> StateView<'a> {
    /// The view of a learner state.
    pub fn of(state: &'a KeyState) -> Self {
        let body = match &state.posterior {
            Posterior::Beta(b) => BodyView::Beta {
                alpha: b.alpha(),
                beta: b.beta(),
            },
            Posterior::Diagonal(g) => BodyView::Diagonal {
                mean: g.mean(),
                precision: g.precision(),
            },
            Posterior::Full(g) => BodyView::Full(g),
        };
        Self {
            seq: state.seq,
            sample_count: state.sample_count,
            updated_event_time_ms: state.updated_event_time_ms,
            body,
        }
    }

    /// Rebuilds the learner's state, on which the maths (draws, mean
    /// scores, exact encoding) runs unchanged.
    pub fn to_key_state(&self) -> KeyState {
        let posterior = match self.body {
            BodyView::Beta { alpha, beta } => Posterior::Beta(
                BetaPosterior::from_parts(alpha, beta)
                    .expect("stored from a validated Beta posterior"),
            ),
            BodyView::Diagonal { mean, precision } => Posterior::Diagonal(
                DiagonalGaussian::from_parts(mean.to_vec(), precision.to_vec())
                    .expect("stored from a validated diagonal Gaussian"),
            ),
            BodyView::Full(gaussian) => Posterior::Full(Box::new(gaussian.clone())),
        };
        KeyState {
            seq: self.seq,
            sample_count: self.sample_count,
            updated_event_time_ms: self.updated_event_time_ms,
            posterior,
        }
    }

    /// The wire parameters of this state as key (`version`, `doc_id`):
    /// equal to `params_to_wire` of [`StateView::to_key_state`].
    pub fn to_wire(&self, version: &str, doc_id: u64) -> v1::Params {
        let model = match self.body {
            BodyView::Beta { alpha, beta } => {
                v1::params::Model::Beta(v1::BetaParams { alpha, beta })
            }
            BodyView::Diagonal { mean, precision } => {
                v1::params::Model::Gaussian(v1::GaussianParams {
                    mean: mean.to_vec(),
                    form: v1::CovarianceForm::Diagonal as i32,
                    precision: precision.to_vec(),
                    variance: precision.iter().map(|q| 1.0 / q).collect(),
                })
            }
            BodyView::Full(_) => return params_to_wire(version, doc_id, &self.to_key_state()),
        };
        v1::Params {
            version: version.to_owned(),
            doc_id,
            model: Some(model),
            seq: self.seq,
            sample_count: self.sample_count,
            updated_event_time_ms: self.updated_event_time_ms,
            is_prior: self.seq == 0,
        }
    }

    /// Appends the `Params` message of this state as key (`version`,
    /// `doc_id`) to `buf` as field `field` of the enclosing message (tag,
    /// length, body): the bytes prost writes for
    /// [`StateView::to_wire`] in a repeated message field.
    pub fn encode_as_field(&self, field: u32, version: &str, doc_id: u64, buf: &mut Vec<u8>) {
        let BodyView::Diagonal { mean, precision } = self.body else {
            // Beta (a few bytes) and full covariance (rare; its packed
            // triangle and variances need the maths) go through prost.
            let params = self.to_wire(version, doc_id);
            prost::encoding::message::encode(field, &params, buf);
            return;
        };
        let doubles = 8 * mean.len();
        let gaussian_len = packed_len(doubles) + 2 + 2 * packed_len(doubles);
        let params_len = string_len(version)
            + uint64_len(doc_id)
            + 1
            + varint_len(gaussian_len as u64)
            + gaussian_len
            + uint64_len(self.seq)
            + double_len(self.sample_count)
            + uint64_len(self.updated_event_time_ms as u64)
            + 2 * usize::from(self.seq == 0);
        buf.reserve(1 + varint_len(params_len as u64) + params_len);
        put_key(buf, field, LEN);
        put_varint(buf, params_len as u64);
        if !version.is_empty() {
            put_key(buf, 1, LEN);
            put_varint(buf, version.len() as u64);
            buf.extend_from_slice(version.as_bytes());
        }
        put_uint64(buf, 2, doc_id);
        put_key(buf, 4, LEN);
        put_varint(buf, gaussian_len as u64);
        put_packed(buf, 1, mean.iter().copied());
        put_key(buf, 2, VARINT);
        put_varint(buf, v1::CovarianceForm::Diagonal as u64);
        put_packed(buf, 3, precision.iter().copied());
        put_packed(buf, 4, precision.iter().map(|q| 1.0 / q));
        put_uint64(buf, 5, self.seq);
        if self.sample_count != 0.0 {
            put_key(buf, 6, FIXED64);
            buf.extend_from_slice(&self.sample_count.to_le_bytes());
        }
        put_uint64(buf, 7, self.updated_event_time_ms as u64);
        if self.seq == 0 {
            put_key(buf, 8, VARINT);
            buf.push(1);
        }
    }
}

const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;

fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least 1.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

fn put_varint(buf: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        buf.push((value as u8) | 0x80);
        value >>= 7;
    }
    buf.push(value as u8);
}

/// Field numbers here are below 16: one key byte.
fn put_key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    debug_assert!(field < 16);
    buf.push(((field << 3) | wire_type) as u8);
}

/// proto3 leaves a zero scalar out.
fn put_uint64(buf: &mut Vec<u8>, field: u32, value: u64) {
    if value != 0 {
        put_key(buf, field, VARINT);
        put_varint(buf, value);
    }
}

fn uint64_len(value: u64) -> usize {
    if value == 0 { 0 } else { 1 + varint_len(value) }
}

fn double_len(value: f64) -> usize {
    if value == 0.0 { 0 } else { 9 }
}

fn string_len(value: &str) -> usize {
    if value.is_empty() {
        0
    } else {
        1 + varint_len(value.len() as u64) + value.len()
    }
}

/// A packed repeated double of `bytes` bytes; an empty one is left out.
fn packed_len(bytes: usize) -> usize {
    if bytes == 0 {
        0
    } else {
        1 + varint_len(bytes as u64) + bytes
    }
}

fn put_packed(buf: &mut Vec<u8>, field: u32, values: impl ExactSizeIterator<Item = f64>) {
    let bytes = 8 * values.len();
    if bytes == 0 {
        return;
    }
    put_key(buf, field, LEN);
    put_varint(buf, bytes as u64);
    for value in values {
        buf.extend_from_slice(&value.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::Observation;
    use posterior_learner::posterior::{
        BetaPrior, CovarianceForm, LogisticPrior, ModelKind, ModelSpec,
    };
    use prost::Message;

    fn updated(kind: ModelKind, dim: usize) -> KeyState {
        let spec = ModelSpec::new(kind);
        let mut state = KeyState::prior(&spec);
        let context: Vec<f32> = (0..dim).map(|i| 0.1 * i as f32 - 0.4).collect();
        let batch = [
            Observation::new(&context, true),
            Observation::new(&context, false),
        ];
        state.update(&spec, &batch).unwrap();
        state
    }

    fn states() -> Vec<KeyState> {
        let beta = ModelKind::Beta(BetaPrior::new(2.0, 3.0).unwrap());
        let diagonal = ModelKind::Logistic(
            LogisticPrior::isotropic(CovarianceForm::Diagonal, 8, 1.5).unwrap(),
        );
        let full =
            ModelKind::Logistic(LogisticPrior::isotropic(CovarianceForm::Full, 4, 2.0).unwrap());
        let mut states = vec![
            updated(beta.clone(), 0),
            updated(diagonal.clone(), 8),
            updated(full.clone(), 4),
        ];
        // Priors (seq 0, no samples, time 0: fields proto3 leaves out),
        // a negative event time (a 10-byte varint) and a zero mean.
        for kind in [beta, diagonal, full] {
            states.push(KeyState::prior(&ModelSpec::new(kind)));
        }
        let mut odd = updated(
            ModelKind::Logistic(
                LogisticPrior::isotropic(CovarianceForm::Diagonal, 1, 1.0).unwrap(),
            ),
            1,
        );
        odd.updated_event_time_ms = -5;
        odd.seq = 300;
        states.push(odd);
        states
    }

    #[test]
    fn the_view_round_trips_bit_for_bit() {
        for state in states() {
            let view = StateView::of(&state);
            assert_eq!(view.to_key_state(), state);
            assert_eq!(view.to_key_state().encode(), state.encode());
            assert_eq!(
                view.to_wire("v", 7),
                params_to_wire("v", 7, &state),
                "{state:?}"
            );
        }
    }

    #[test]
    fn the_direct_encoding_is_prosts() {
        for state in states() {
            for version in ["", "dwell", &"x".repeat(200)] {
                for doc_id in [0, 7, u64::MAX] {
                    let view = StateView::of(&state);
                    let mut direct = vec![0xAB];
                    view.encode_as_field(1, version, doc_id, &mut direct);
                    let response = v1::GetParamsResponse {
                        params: vec![params_to_wire(version, doc_id, &state)],
                    };
                    let mut expected = vec![0xAB];
                    response.encode(&mut expected).unwrap();
                    assert_eq!(direct, expected, "{version:?} {doc_id} {state:?}");
                }
            }
        }
    }

    #[test]
    fn varint_lengths_match_the_encoding() {
        for value in [0, 1, 127, 128, 16_383, 16_384, u64::MAX / 2, u64::MAX] {
            let mut buf = Vec::new();
            put_varint(&mut buf, value);
            assert_eq!(buf.len(), varint_len(value), "{value}");
        }
    }
}
