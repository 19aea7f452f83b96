//! Per-key micro-batches. A key's batch is applied when it reaches a
//! sample count, a count of positives (the positive/negative ratio knob of
//! the seed systems), or an event-time age. Age is measured against the
//! event time of the sample being released, never the wall clock, so a
//! replay cuts the same batches.

use std::collections::BTreeSet;

use crate::keymap::{KeyMap, ONE_SHARD};
use crate::posterior::Observation;
use crate::registry::{ParamKey, VersionId};
use crate::reorder::OrderKey;

/// When a key's pending batch is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchPolicy {
    /// Apply at this many samples (≥ 1; 1 = every sample on its own).
    pub max_samples: usize,
    /// Apply at this many positives (0 = off).
    pub max_positives: usize,
    /// Apply once the oldest pending sample is this much older than the
    /// sample being released (`None` = off).
    pub max_age_ms: Option<i64>,
}

impl Default for BatchPolicy {
    fn default() -> Self {
        Self {
            max_samples: 1,
            max_positives: 0,
            max_age_ms: None,
        }
    }
}

/// An observation that owns its context, waiting in a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingObservation {
    /// Where the sample came from (for dead letters if the batch is refused).
    pub origin: OrderKey,
    /// Context vector.
    pub context: Vec<f32>,
    /// Reward.
    pub reward: bool,
    /// Weight.
    pub weight: f64,
}

impl PendingObservation {
    /// A borrowed view for the maths.
    pub fn as_observation(&self) -> Observation<'_> {
        Observation {
            context: &self.context,
            reward: self.reward,
            weight: self.weight,
            event_time_ms: self.origin.event_time_ms,
        }
    }
}

/// A key's pending batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PendingBatch {
    /// Observations in release order.
    pub observations: Vec<PendingObservation>,
    positives: usize,
}

/// Every key's pending batch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Batcher {
    policy: BatchPolicy,
    pending: KeyMap<PendingBatch, ONE_SHARD>,
    by_age: BTreeSet<(i64, ParamKey)>,
}

/// A batch ready to apply.
pub type ReadyBatch = (ParamKey, Vec<PendingObservation>);

impl Batcher {
    /// An empty batcher.
    pub fn new(policy: BatchPolicy) -> Self {
        Self {
            policy: BatchPolicy {
                max_samples: policy.max_samples.max(1),
                ..policy
            },
            pending: KeyMap::default(),
            by_age: BTreeSet::new(),
        }
    }

    /// Keys with a pending batch.
    pub fn pending_keys(&self) -> usize {
        self.pending.len()
    }

    /// Adds an observation; returns the key's batch if a trigger fired.
    pub fn push(
        &mut self,
        key: ParamKey,
        obs: PendingObservation,
    ) -> Option<Vec<PendingObservation>> {
        if self.fills_alone(key, &obs) {
            return Some(vec![obs]);
        }
        let batch = self.pending.get_or_insert_with(key, PendingBatch::default);
        if batch.observations.is_empty() && self.policy.max_age_ms.is_some() {
            // Only the age trigger reads the index.
            self.by_age.insert((obs.origin.event_time_ms, key));
        }
        batch.positives += usize::from(obs.reward);
        batch.observations.push(obs);
        let full = batch.observations.len() >= self.policy.max_samples
            || (self.policy.max_positives > 0 && batch.positives >= self.policy.max_positives);
        full.then(|| self.take(key))
    }

    /// Whether `obs` would be a batch of its own: `key` has nothing pending
    /// and `obs` alone fires a trigger. Such a batch can be applied at once,
    /// without going through the pending table and the age index (the
    /// common case of `max_samples = 1`).
    pub fn fills_alone(&self, key: ParamKey, obs: &PendingObservation) -> bool {
        (self.policy.max_samples <= 1 || (self.policy.max_positives == 1 && obs.reward))
            && !self.pending.contains_key(&key)
    }

    /// Removes and returns, oldest first, the batches whose oldest sample is
    /// at least `max_age_ms` older than `now_ms`.
    pub fn due(&mut self, now_ms: i64) -> Vec<ReadyBatch> {
        let Some(max_age_ms) = self.policy.max_age_ms else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some(&(oldest_ms, key)) = self.by_age.first()
            && now_ms.saturating_sub(oldest_ms) >= max_age_ms
        {
            out.push((key, self.take(key)));
        }
        out
    }

    /// Removes and returns every batch, in key order (end of a bounded input).
    pub fn drain(&mut self) -> Vec<ReadyBatch> {
        let mut keys: Vec<ParamKey> = self.pending.keys().copied().collect();
        keys.sort_unstable();
        keys.into_iter().map(|k| (k, self.take(k))).collect()
    }

    /// A key's pending observations, if any.
    pub fn get(&self, key: ParamKey) -> Option<&[PendingObservation]> {
        self.pending.get(&key).map(|b| b.observations.as_slice())
    }

    /// Every pending batch, for checkpoints.
    pub fn iter(&self) -> impl Iterator<Item = (&ParamKey, &PendingBatch)> {
        self.pending.iter()
    }

    /// Restores a key's pending batch from a checkpoint.
    pub fn restore(&mut self, key: ParamKey, observations: Vec<PendingObservation>) {
        if let Some(first) = observations.first() {
            if self.policy.max_age_ms.is_some() {
                self.by_age.insert((first.origin.event_time_ms, key));
            }
            let positives = observations.iter().filter(|o| o.reward).count();
            self.pending.insert(
                key,
                PendingBatch {
                    observations,
                    positives,
                },
            );
        }
    }

    /// Drops every pending batch of `version`; returns their keys.
    pub fn remove_version(&mut self, version: VersionId) -> Vec<ParamKey> {
        let mut keys: Vec<ParamKey> = self
            .pending
            .keys()
            .filter(|k| k.version == version)
            .copied()
            .collect();
        keys.sort_unstable();
        for &key in &keys {
            self.take(key);
        }
        keys
    }

    fn take(&mut self, key: ParamKey) -> Vec<PendingObservation> {
        let batch = self.pending.remove(&key).unwrap_or_default();
        if let Some(first) = batch.observations.first() {
            self.by_age.remove(&(first.origin.event_time_ms, key));
        }
        batch.observations
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::VersionId;

    fn key(doc: u64) -> ParamKey {
        ParamKey {
            version: VersionId(0),
            doc_id: doc,
        }
    }

    fn obs(t: i64, reward: bool) -> PendingObservation {
        PendingObservation {
            origin: OrderKey {
                event_time_ms: t,
                partition: 0,
                offset: t as u64,
            },
            context: vec![],
            reward,
            weight: 1.0,
        }
    }

    #[test]
    fn count_and_positive_triggers() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 3,
            max_positives: 1,
            max_age_ms: None,
        });
        assert!(b.push(key(1), obs(1, false)).is_none());
        assert!(b.push(key(1), obs(2, false)).is_none());
        assert_eq!(b.push(key(1), obs(3, false)).map(|v| v.len()), Some(3));
        assert!(b.push(key(2), obs(4, false)).is_none());
        assert_eq!(
            b.push(key(2), obs(5, true)).map(|v| v.len()),
            Some(2),
            "one positive flushes"
        );
        assert_eq!(b.pending_keys(), 0);
    }

    #[test]
    fn age_trigger_uses_event_time_oldest_first() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 100,
            max_positives: 0,
            max_age_ms: Some(10),
        });
        b.push(key(2), obs(5, false));
        b.push(key(1), obs(7, false));
        b.push(key(2), obs(8, false));
        assert!(b.due(14).is_empty());
        let due = b.due(17);
        assert_eq!(
            due.iter()
                .map(|(k, v)| (k.doc_id, v.len()))
                .collect::<Vec<_>>(),
            vec![(2, 2), (1, 1)]
        );
        assert!(b.due(1_000).is_empty());
    }

    #[test]
    fn drain_is_in_key_order() {
        let mut b = Batcher::new(BatchPolicy {
            max_samples: 10,
            ..BatchPolicy::default()
        });
        for doc in [5, 1, 3] {
            b.push(key(doc), obs(doc as i64, true));
        }
        let docs: Vec<u64> = b.drain().into_iter().map(|(k, _)| k.doc_id).collect();
        assert_eq!(docs, vec![1, 3, 5]);
    }
}
