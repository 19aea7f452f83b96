//! Dead letters: samples that were not applied, with where they came from
//! and why. Nothing is dropped silently; every dead letter is also counted
//! by reason.

use serde::Serialize;

/// Every dead-letter reason this build emits.
pub const REASONS: [&str; 13] = [
    "undecodable",
    "non_finite",
    "negative_weight",
    "weight_too_large",
    "bad_event_time",
    "empty_version",
    "wrong_dimension",
    "missing_label",
    "version_mismatch",
    "unknown_version",
    "late",
    "duplicate",
    "rejected_update",
];

/// A record that was not applied.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeadLetter {
    /// Source partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// Stable reason: `undecodable`, `non_finite`, `negative_weight`,
    /// `weight_too_large`, `bad_event_time`, `empty_version`, `wrong_dimension`, `missing_label`,
    /// `unknown_version`, `late`, `duplicate`, `rejected_update`.
    pub reason: &'static str,
    /// Human-readable detail.
    pub detail: String,
    /// The sample's doc, when it could be read.
    pub doc_id: Option<u64>,
    /// The sample's version, when it could be read.
    pub version: Option<String>,
    /// The sample's event time, when it could be read.
    pub event_time_ms: Option<i64>,
}
