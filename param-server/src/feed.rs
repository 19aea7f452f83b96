//! Feeds the store from a channel of `ParamChange` batches — what the
//! learner's in-process channel sink produces: states shared with the
//! learner, neither encoded nor decoded on the way, so an embedded learner
//! hands its publications straight to the server. (The Kafka `params`
//! topic feed comes later and ends in `ParamStore::apply_wire`.)
//!
//! A bad update is logged once here, counted, and skipped: it changes
//! nothing and does not stop the feed. A stale one (seq not above the
//! stored seq, as in a learner's replay) is counted and ignored.

use std::sync::Arc;

use posterior_learner::params::ParamChange;
use tokio::sync::mpsc;

use crate::store::ParamStore;
use crate::table::ApplyOutcome;

/// What a feed applied, until its channel closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FeedStats {
    /// Updates now visible.
    pub applied: u64,
    /// Updates whose seq was not above the stored one.
    pub stale: u64,
    /// Updates refused (undecodable, inconsistent, unknown version, wrong model).
    pub rejected: u64,
}

/// Applies every batch received until the sender side closes.
pub async fn feed(
    store: Arc<ParamStore>,
    mut updates: mpsc::Receiver<Vec<ParamChange>>,
) -> FeedStats {
    let mut stats = FeedStats::default();
    while let Some(batch) = updates.recv().await {
        for change in &batch {
            match store.apply_shared(&change.version, change.doc_id, &change.state) {
                Ok(ApplyOutcome::Applied) => stats.applied += 1,
                Ok(ApplyOutcome::Stale { .. }) => stats.stale += 1,
                Err(error) => {
                    stats.rejected += 1;
                    tracing::warn!(%error, retryable = error.is_retryable(), "update rejected");
                }
            }
        }
    }
    tracing::info!(stats.applied, stats.stale, stats.rejected, "feed closed");
    stats
}

#[cfg(test)]
mod tests {
    use posterior_learner::params::ParamChange;
    use posterior_learner::posterior::{
        BetaPosterior, BetaPrior, CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind,
        ModelSpec,
    };
    use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};

    use super::*;

    fn state(seq: u64) -> KeyState {
        KeyState {
            seq,
            sample_count: seq as f64,
            updated_event_time_ms: 0,
            posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + seq as f64, 1.0).unwrap()),
        }
    }

    #[tokio::test]
    async fn batches_are_applied_and_bad_updates_skipped() {
        let store = Arc::new(ParamStore::default());
        store
            .register(VersionSpec {
                name: "ctr".into(),
                model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
                reward: RewardSpec::binary("click"),
                use_sample_weight: false,
            })
            .unwrap();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(feed(Arc::clone(&store), rx));
        let change = |version: &str, doc_id, state: KeyState| ParamChange {
            version: version.into(),
            doc_id,
            state: Arc::new(state),
        };
        let mut wrong_model = state(1);
        let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, 2, 1.0).unwrap();
        wrong_model.posterior = Posterior::Diagonal(DiagonalGaussian::prior(&prior));
        tx.send(vec![
            change("ctr", 1, state(2)),
            change("ctr", 3, wrong_model),
        ])
        .await
        .unwrap();
        tx.send(vec![
            change("ctr", 1, state(2)),
            change("other", 1, state(1)),
            change("ctr", 2, state(1)),
        ])
        .await
        .unwrap();
        drop(tx);
        let stats = task.await.unwrap();
        assert_eq!(
            stats,
            FeedStats {
                applied: 2,
                stale: 1,
                rejected: 2
            }
        );
        assert_eq!(store.params("ctr", 1).unwrap().seq, 2);
        assert!(store.params("ctr", 3).unwrap().is_prior);
    }
}
