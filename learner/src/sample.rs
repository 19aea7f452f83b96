//! The domain sample, converted from the wire `JoinedSample` and validated
//! at that boundary: nothing non-finite gets past it.

use crate::posterior::MAX_WEIGHT;
use posterior_proto::v1::JoinedSample;

/// A version or label name, or a sample id. Names of up to 24 bytes
/// (`ctr-ts-2026-12`, `click`, `dwell_s`) live inside the value itself, so
/// a sample's names cost no allocation and no cache miss of their own when
/// the sample is read far from where it was decoded; longer ones spill to
/// the heap.
pub type Name = compact_str::CompactString;

/// A sample's labels, sorted by name; up to two are stored inline.
pub type Labels = smallvec::SmallVec<[(Name, f32); 2]>;

/// Why a sample cannot be applied. Each variant has a stable
/// [`SampleError::reason`] for dead-letter records and metrics.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SampleError {
    /// `version` was empty.
    #[error("version is empty")]
    EmptyVersion,
    /// A context entry, label or the weight was NaN or infinite.
    #[error("{field} is not finite ({value})")]
    NonFinite {
        /// `context[i]`, `labels.<name>` or `weight`.
        field: String,
        /// The offending value.
        value: f32,
    },
    /// The weight was negative.
    #[error("weight {0} is negative")]
    NegativeWeight(f32),
    /// The weight was above [`MAX_WEIGHT`] (where the posterior maths
    /// would refuse it, and with it every sample of its micro-batch).
    #[error("weight {0} is above the largest allowed, 1e6")]
    WeightTooLarge(f32),
    /// The event time is outside ±[`MAX_EVENT_TIME_MS`] (a timestamp in
    /// micro- or nanoseconds, or a sentinel such as `i64::MIN`).
    #[error("event_time_ms {0} is outside ±{MAX_EVENT_TIME_MS} (year 9999 in Unix milliseconds)")]
    EventTimeOutOfRange(i64),
    /// The context length does not match the version's dimension.
    #[error("context has dimension {got}, expected {expected}")]
    WrongDimension {
        /// The version's dimension.
        expected: usize,
        /// The sample's.
        got: usize,
    },
    /// The version's reward label is absent.
    #[error("reward label {label:?} is missing")]
    MissingLabel {
        /// The label the version rewards.
        label: String,
    },
    /// The sample was routed to the wrong version's spec.
    #[error("sample of version {got:?} given to version {expected:?}")]
    VersionMismatch {
        /// The spec's version.
        expected: String,
        /// The sample's version.
        got: String,
    },
}

impl SampleError {
    /// Stable, low-cardinality reason for dead-letter records and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            SampleError::EmptyVersion => "empty_version",
            SampleError::NonFinite { .. } => "non_finite",
            SampleError::NegativeWeight(_) => "negative_weight",
            SampleError::WeightTooLarge(_) => "weight_too_large",
            SampleError::EventTimeOutOfRange(_) => "bad_event_time",
            SampleError::WrongDimension { .. } => "wrong_dimension",
            SampleError::MissingLabel { .. } => "missing_label",
            SampleError::VersionMismatch { .. } => "version_mismatch",
        }
    }
}

/// Largest event time, in absolute value, a sample may carry:
/// 9999-12-31T23:59:59.999Z in Unix milliseconds. Beyond it lie
/// timestamps sent in micro- or nanoseconds (now ~1.8e15 µs), which would
/// push their partition's watermark so far ahead that every later sample
/// of it were late, and the sentinels `i64::MIN` / `i64::MAX`, which the
/// reorder buffer and the sample log reserve.
pub const MAX_EVENT_TIME_MS: i64 = 253_402_300_799_999;

/// Whether `event_time_ms` is within ±[`MAX_EVENT_TIME_MS`].
pub fn event_time_in_range(event_time_ms: i64) -> bool {
    (-MAX_EVENT_TIME_MS..=MAX_EVENT_TIME_MS).contains(&event_time_ms)
}

/// Labels from `(name, value)` pairs, sorted by name as a [`Sample`] keeps
/// them.
pub fn labels<const N: usize>(pairs: [(&str, f32); N]) -> Labels {
    let mut labels: Labels = pairs
        .into_iter()
        .map(|(name, value)| (Name::from(name), value))
        .collect();
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    labels
}

/// A validated joined sample: finite context, labels and weight.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Document shown.
    pub doc_id: u64,
    /// A/B version that ranked the request.
    pub version: Name,
    /// Exposure time (Unix ms).
    pub event_time_ms: i64,
    /// Dense context (empty for Beta versions).
    pub context: Vec<f32>,
    /// Labels sorted by name (deterministic iteration).
    pub labels: Labels,
    /// Weight ≥ 0; a wire value of 0 (the proto3 default) reads as 1.
    pub weight: f32,
    /// Optional id for de-duplication (inline, like names, up to 24
    /// bytes: the de-duplication reads it after the sample's wait in the
    /// reorder buffer).
    pub sample_id: Option<Name>,
}

impl Sample {
    /// The value of a label, if present.
    pub fn label(&self, name: &str) -> Option<f32> {
        // A sample has a handful of labels: a scan comparing lengths first
        // beats a binary search comparing bytes.
        self.labels
            .iter()
            .find(|(n, _)| names_equal(n, name))
            .map(|&(_, value)| value)
    }
}

/// Sorts `labels` by name as a [`Sample`] keeps them, keeping the last
/// of a repeated name as a `JoinedSample`'s map does: reversed, a stable
/// sort puts it first among its equals, and `dedup_by` keeps the first of
/// each run.
pub(crate) fn sort_labels(labels: &mut Labels) {
    if labels.len() > 1 && !labels.windows(2).all(|w| w[0].0 < w[1].0) {
        labels.reverse();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        labels.dedup_by(|later, first| later.0 == first.0);
    }
}

/// `a == b` for the short names samples carry (versions, labels): up to
/// 16 bytes compared as two overlapping words each, without a call to
/// `memcmp` (which two comparisons per sample paid for, about a twentieth
/// of a Beta sample's instructions in bench 1).
#[inline]
pub fn names_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let word = |s: &[u8], at: usize| u64::from_le_bytes(s[at..at + 8].try_into().expect("8"));
    let half = |s: &[u8], at: usize| u32::from_le_bytes(s[at..at + 4].try_into().expect("4"));
    match n {
        0 => true,
        // The first, middle and last bytes are every byte of 1 to 3.
        1..=3 => a[0] == b[0] && a[n / 2] == b[n / 2] && a[n - 1] == b[n - 1],
        4..=7 => half(a, 0) == half(b, 0) && half(a, n - 4) == half(b, n - 4),
        8..=16 => word(a, 0) == word(b, 0) && word(a, n - 8) == word(b, n - 8),
        _ => a == b,
    }
}

impl Sample {
    /// Decodes a protobuf `JoinedSample` straight into a valid sample: one
    /// pass over the bytes, labels collected into their sorted vector with
    /// no map in between. `None` when anything is out of the ordinary
    /// (a decoding error, an unknown field, a value the validation of
    /// [`Sample::try_from`] refuses): the caller then takes the general
    /// path (prost and `try_from`), which gives the same sample for every
    /// input this accepts, and the canonical error for the rest.
    pub fn from_wire_fast(bytes: &[u8]) -> Option<Sample> {
        Self::from_wire_fast_with(bytes, Vec::with_capacity)
    }

    /// [`Sample::from_wire_fast`] with the context decoded into a vector
    /// from `fresh`, asked for the context's length: a reader reuses the
    /// vectors the engine hands back (see [`crate::contexts`]). Called at
    /// most once per record, when a packed context field is not empty (a
    /// record the fast path then refuses drops the vector). The vector is
    /// cleared first: the same sample whatever `fresh` gives.
    pub fn from_wire_fast_with(
        bytes: &[u8],
        mut fresh: impl FnMut(usize) -> Vec<f32>,
    ) -> Option<Sample> {
        use prost::encoding::{WireType, decode_key, decode_varint};
        let mut buf = bytes;
        let mut sample = Sample {
            doc_id: 0,
            version: Name::default(),
            event_time_ms: 0,
            context: Vec::new(),
            labels: Labels::new(),
            weight: 0.0,
            sample_id: None,
        };
        let mut sample_id = "";
        while !buf.is_empty() {
            let (tag, wire_type) = decode_key(&mut buf).ok()?;
            match (tag, wire_type) {
                (1, WireType::Varint) => sample.doc_id = decode_varint(&mut buf).ok()?,
                (2, WireType::LengthDelimited) => sample.version = read_str(&mut buf)?.into(),
                (3, WireType::Varint) => {
                    sample.event_time_ms = decode_varint(&mut buf).ok()? as i64;
                }
                (4, WireType::LengthDelimited) => {
                    let packed = read_bytes(&mut buf)?;
                    if packed.len() % 4 != 0 {
                        return None;
                    }
                    if sample.context.capacity() == 0 && !packed.is_empty() {
                        sample.context = fresh(packed.len() / 4);
                        sample.context.clear();
                    }
                    sample.context.extend(
                        packed
                            .chunks_exact(4)
                            .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))),
                    );
                }
                (4, WireType::ThirtyTwoBit) => sample.context.push(read_f32(&mut buf)?),
                (5, WireType::LengthDelimited) => {
                    let mut entry = read_bytes(&mut buf)?;
                    let (mut name, mut value) = ("", 0.0);
                    while !entry.is_empty() {
                        match decode_key(&mut entry).ok()? {
                            (1, WireType::LengthDelimited) => name = read_str(&mut entry)?,
                            (2, WireType::ThirtyTwoBit) => value = read_f32(&mut entry)?,
                            _ => return None,
                        }
                    }
                    sample.labels.push((name.into(), value));
                }
                (6, WireType::ThirtyTwoBit) => sample.weight = read_f32(&mut buf)?,
                (7, WireType::LengthDelimited) => sample_id = read_str(&mut buf)?,
                _ => return None,
            }
        }
        sort_labels(&mut sample.labels);
        let valid = !sample.version.is_empty()
            && event_time_in_range(sample.event_time_ms)
            && sample.context.iter().all(|x| x.is_finite())
            && sample.labels.iter().all(|(_, v)| v.is_finite())
            && sample.weight.is_finite()
            && sample.weight >= 0.0
            && f64::from(sample.weight) <= MAX_WEIGHT;
        if !valid {
            return None;
        }
        if sample.weight == 0.0 {
            sample.weight = 1.0;
        }
        sample.sample_id = (!sample_id.is_empty()).then(|| sample_id.into());
        Some(sample)
    }
}

/// A length-delimited field's bytes.
fn read_bytes<'a>(buf: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = usize::try_from(prost::encoding::decode_varint(buf).ok()?).ok()?;
    let bytes = buf.get(..len)?;
    *buf = &buf[len..];
    Some(bytes)
}

/// A string field (valid UTF-8, as prost requires).
fn read_str<'a>(buf: &mut &'a [u8]) -> Option<&'a str> {
    std::str::from_utf8(read_bytes(buf)?).ok()
}

/// A 32-bit float field.
fn read_f32(buf: &mut &[u8]) -> Option<f32> {
    let bytes: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    *buf = &buf[4..];
    Some(f32::from_le_bytes(bytes))
}

impl TryFrom<JoinedSample> for Sample {
    type Error = SampleError;

    fn try_from(wire: JoinedSample) -> Result<Self, Self::Error> {
        if wire.version.is_empty() {
            return Err(SampleError::EmptyVersion);
        }
        if !event_time_in_range(wire.event_time_ms) {
            return Err(SampleError::EventTimeOutOfRange(wire.event_time_ms));
        }
        if let Some(i) = wire.context.iter().position(|x| !x.is_finite()) {
            return Err(SampleError::NonFinite {
                field: format!("context[{i}]"),
                value: wire.context[i],
            });
        }
        let mut labels: Labels = wire
            .labels
            .into_iter()
            .map(|(name, value)| (Name::from(name), value))
            .collect();
        labels.sort_by(|a, b| a.0.cmp(&b.0));
        if let Some((name, value)) = labels.iter().find(|(_, v)| !v.is_finite()) {
            return Err(SampleError::NonFinite {
                field: format!("labels.{name}"),
                value: *value,
            });
        }
        if !wire.weight.is_finite() {
            return Err(SampleError::NonFinite {
                field: "weight".to_owned(),
                value: wire.weight,
            });
        }
        if wire.weight < 0.0 {
            return Err(SampleError::NegativeWeight(wire.weight));
        }
        if f64::from(wire.weight) > MAX_WEIGHT {
            return Err(SampleError::WeightTooLarge(wire.weight));
        }
        Ok(Self {
            doc_id: wire.doc_id,
            version: wire.version.into(),
            event_time_ms: wire.event_time_ms,
            context: wire.context,
            labels,
            weight: if wire.weight == 0.0 { 1.0 } else { wire.weight },
            sample_id: (!wire.sample_id.is_empty()).then(|| wire.sample_id.into()),
        })
    }
}

/// The wire form of a sample; [`Sample::try_from`] reads it back equal (a
/// weight of 1 is written as 1, not as the proto3 default).
impl From<&Sample> for JoinedSample {
    fn from(sample: &Sample) -> Self {
        JoinedSample {
            doc_id: sample.doc_id,
            version: sample.version.to_string(),
            event_time_ms: sample.event_time_ms,
            context: sample.context.clone(),
            labels: sample
                .labels
                .iter()
                .map(|(name, value)| (name.to_string(), *value))
                .collect(),
            weight: sample.weight,
            sample_id: sample
                .sample_id
                .as_ref()
                .map_or_else(String::new, Name::to_string),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// `names_equal` is `==`, at every length and for names that differ
        /// in one byte anywhere (a case the overlapping words must not miss).
        #[test]
        fn names_equal_is_equality(
            a in "[a-c]{0,20}",
            b in "[a-c]{0,20}",
            flip in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            proptest::prop_assert_eq!(names_equal(&a, &b), a == b);
            proptest::prop_assert!(names_equal(&a, &a));
            if !a.is_empty() {
                let mut bytes = a.clone().into_bytes();
                let i = flip.index(bytes.len());
                bytes[i] = b'z';
                let other = String::from_utf8(bytes).unwrap();
                proptest::prop_assert!(!names_equal(&a, &other));
                proptest::prop_assert!(!names_equal(&other, &a));
            }
        }
    }

    fn wire() -> JoinedSample {
        JoinedSample {
            doc_id: 42,
            version: "ctr-ts".into(),
            event_time_ms: 1_700_000_000_000,
            context: vec![0.1, -0.3, 2.0],
            labels: [("click".to_owned(), 1.0), ("dwell_s".to_owned(), 12.5)].into(),
            weight: 0.0,
            sample_id: String::new(),
        }
    }

    /// Short names (and up to two labels) stay inside the sample on both
    /// decoding paths; a long name spills to the heap and reads the same.
    #[test]
    fn names_and_labels_are_inline_up_to_their_limits() {
        use prost::Message;
        let short = wire();
        let long = JoinedSample {
            version: "v".repeat(25),
            labels: [
                ("a".to_owned(), 1.0),
                ("b".to_owned(), 2.0),
                ("c".repeat(30), 3.0),
            ]
            .into(),
            ..wire()
        };
        for (input, inline) in [(short, true), (long, false)] {
            let bytes = input.encode_to_vec();
            let fast = Sample::from_wire_fast(&bytes).expect("a plain sample");
            let general = Sample::try_from(input.clone()).unwrap();
            assert_eq!(fast, general);
            for sample in [fast, general] {
                assert_eq!(
                    Sample::try_from(JoinedSample::from(&sample)),
                    Ok(sample.clone())
                );
                assert_eq!(sample.version, input.version);
                assert_eq!(sample.version.is_heap_allocated(), !inline);
                assert_eq!(sample.labels.spilled(), !inline);
                for (name, value) in &input.labels {
                    assert_eq!(sample.label(name), Some(*value));
                }
            }
        }
        assert_eq!(std::mem::size_of::<Name>(), std::mem::size_of::<String>());
    }

    #[test]
    fn valid_sample_converts_with_defaults() {
        let sample = Sample::try_from(wire()).unwrap();
        assert_eq!(sample.weight, 1.0, "proto3 default weight reads as 1");
        assert_eq!(sample.sample_id, None);
        assert_eq!(sample.label("dwell_s"), Some(12.5));
        assert_eq!(sample.label("order"), None);
    }

    #[test]
    fn bad_samples_are_rejected_naming_the_field() {
        let cases: Vec<(JoinedSample, &str, &str)> = vec![
            (
                JoinedSample {
                    context: vec![0.0, 0.0, f32::NAN],
                    ..wire()
                },
                "context[2]",
                "non_finite",
            ),
            (
                JoinedSample {
                    labels: [("click".to_owned(), f32::INFINITY)].into(),
                    ..wire()
                },
                "labels.click",
                "non_finite",
            ),
            (
                JoinedSample {
                    weight: -1.0,
                    ..wire()
                },
                "negative",
                "negative_weight",
            ),
            (
                JoinedSample {
                    weight: f32::NAN,
                    ..wire()
                },
                "weight",
                "non_finite",
            ),
            (
                JoinedSample {
                    weight: 2.0e6,
                    ..wire()
                },
                "2000000",
                "weight_too_large",
            ),
            (
                JoinedSample {
                    event_time_ms: i64::MIN,
                    ..wire()
                },
                "-9223372036854775808",
                "bad_event_time",
            ),
            (
                JoinedSample {
                    event_time_ms: i64::MAX,
                    ..wire()
                },
                "event_time_ms",
                "bad_event_time",
            ),
            (
                JoinedSample {
                    // Microseconds sent as milliseconds.
                    event_time_ms: 1_764_892_800_000_000,
                    ..wire()
                },
                "event_time_ms",
                "bad_event_time",
            ),
            (
                JoinedSample {
                    version: String::new(),
                    ..wire()
                },
                "version",
                "empty_version",
            ),
        ];
        for (input, needle, reason) in cases {
            use prost::Message;
            assert_eq!(
                Sample::from_wire_fast(&input.encode_to_vec()),
                None,
                "the fast path refuses {reason} too"
            );
            let err = Sample::try_from(input).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
            assert_eq!(err.reason(), reason);
        }
    }
}
