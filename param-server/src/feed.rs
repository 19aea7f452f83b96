//! Feeds the store from a channel of the learner's [`Publication`]s —
//! what its in-process channel sink produces: version announcements, and
//! update batches whose states are shared with the learner, neither
//! encoded nor decoded on the way, so an embedded learner hands its
//! publications straight to the server. (The Kafka `params` topic feed
//! decodes the same two kinds of records and ends in the same calls.)
//!
//! A bad update is logged once here, counted, and skipped: it changes
//! nothing and does not stop the feed. A stale one (seq not above the
//! stored seq, as in a learner's replay) is counted and ignored. An
//! announced version the store lacks is registered; one it serves under
//! another spec is refused (the config and the learner disagree).

use std::sync::Arc;

use posterior_learner::VersionSpec;
use posterior_learner::params::Publication;
use tokio::sync::mpsc;

use crate::metrics::ServerMetrics;
use crate::readiness::Readiness;
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
    /// Announced versions registered.
    pub versions_added: u64,
    /// Announced versions refused (their spec differs from the served one).
    pub versions_refused: u64,
}

impl FeedStats {
    /// Counts one update's outcome, logging a refusal.
    pub fn count(&mut self, outcome: Result<ApplyOutcome, crate::StoreError>) {
        match outcome {
            Ok(ApplyOutcome::Applied) => self.applied += 1,
            Ok(ApplyOutcome::Stale { .. }) => self.stale += 1,
            Err(error) => {
                self.rejected += 1;
                tracing::warn!(%error, retryable = error.is_retryable(), "update rejected");
            }
        }
    }
}

/// Serves an announced version: registers it when the store lacks it,
/// marks it retired when announced so; refuses (and logs) one served under
/// a different spec.
pub fn learn_version(store: &ParamStore, spec: &VersionSpec, retired: bool, stats: &mut FeedStats) {
    let before = store.versions().len();
    match store.register_announced(spec.clone()) {
        Ok(_) => {
            if store.versions().len() > before {
                stats.versions_added += 1;
                tracing::info!(version = %spec.name, "serving an announced version");
            }
            if retired && matches!(store.retire(&spec.name), Ok(true)) {
                tracing::info!(version = %spec.name, "announced version retired");
            }
        }
        Err(error) => {
            stats.versions_refused += 1;
            tracing::warn!(
                %error,
                announced = ?spec,
                "announced version differs from the served one; kept the served spec"
            );
        }
    }
}

/// Applies every batch received until the sender side closes.
pub async fn feed(store: Arc<ParamStore>, publications: mpsc::Receiver<Publication>) -> FeedStats {
    feed_metered(store, publications, None, None).await
}

/// [`feed`], adding each publication's outcomes to `metrics`, and setting
/// `readiness` when the learner says its start is handed over
/// ([`Publication::Current`]).
pub async fn feed_metered(
    store: Arc<ParamStore>,
    mut publications: mpsc::Receiver<Publication>,
    metrics: Option<Arc<ServerMetrics>>,
    readiness: Option<Readiness>,
) -> FeedStats {
    let mut stats = FeedStats::default();
    while let Some(publication) = publications.recv().await {
        let before = stats;
        match publication {
            Publication::Versions(entries) => {
                for entry in &entries {
                    learn_version(&store, &entry.spec, entry.retired, &mut stats);
                }
            }
            Publication::Params(batch) => {
                for change in &batch {
                    stats.count(store.apply_shared(&change.version, change.doc_id, &change.state));
                }
            }
            Publication::Current => {
                if let Some(readiness) = &readiness
                    && !readiness.is_ready()
                {
                    tracing::info!("the learner's state is served: ready");
                    readiness.set_ready();
                }
            }
        }
        if let Some(metrics) = &metrics {
            metrics.count_feed(&before, &stats);
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
            state: state.into(),
        };
        let mut wrong_model = state(1);
        let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, 2, 1.0).unwrap();
        wrong_model.posterior = Posterior::Diagonal(DiagonalGaussian::prior(&prior));
        tx.send(Publication::Params(vec![
            change("ctr", 1, state(2)),
            change("ctr", 3, wrong_model),
        ]))
        .await
        .unwrap();
        tx.send(Publication::Params(vec![
            change("ctr", 1, state(2)),
            change("other", 1, state(1)),
            change("ctr", 2, state(1)),
        ]))
        .await
        .unwrap();
        drop(tx);
        let stats = task.await.unwrap();
        assert_eq!(
            stats,
            FeedStats {
                applied: 2,
                stale: 1,
                rejected: 2,
                ..FeedStats::default()
            }
        );
        assert_eq!(store.params("ctr", 1).unwrap().seq, 2);
        assert!(store.params("ctr", 3).unwrap().is_prior);
    }

    #[tokio::test]
    async fn an_announced_version_is_served_before_its_updates_and_a_conflicting_one_refused() {
        use posterior_learner::registry::{VersionEntry, VersionId};
        let beta = |name: &str, label: &str| VersionSpec {
            name: name.into(),
            model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
            reward: RewardSpec::binary(label),
            use_sample_weight: false,
        };
        let store = Arc::new(ParamStore::default());
        store.register(beta("ctr", "click")).unwrap();
        let (tx, rx) = mpsc::channel(4);
        let task = tokio::spawn(feed(Arc::clone(&store), rx));
        let entry = |id, spec, retired| VersionEntry {
            id: VersionId(id),
            spec,
            retired,
        };
        tx.send(Publication::Versions(vec![
            entry(0, beta("ctr", "order"), false),
            entry(1, beta("fork", "click"), true),
        ]))
        .await
        .unwrap();
        tx.send(Publication::Params(vec![ParamChange {
            version: "fork".into(),
            doc_id: 9,
            state: state(3).into(),
        }]))
        .await
        .unwrap();
        drop(tx);
        let stats = task.await.unwrap();
        assert_eq!((stats.versions_added, stats.versions_refused), (1, 1));
        assert_eq!(stats.applied, 1);
        assert_eq!(store.params("fork", 9).unwrap().seq, 3);
        assert!(store.version("fork").unwrap().is_retired());
        assert_eq!(
            store.version("ctr").unwrap().spec().reward.label,
            "click",
            "the served spec is kept"
        );
    }
}
