//! The param-server's Prometheus metrics, on an explicit [`Registry`]
//! that the binary (or an embedding learner) creates and serves on
//! `GET /metrics` ([`crate::exposition`]).
//!
//! - gRPC calls: a latency histogram per service, method and status code,
//!   observed by [`Metered`] around the mounted services
//!   ([`crate::grpc_metrics`]).
//! - What is read from the store and the admission control at scrape
//!   time, so serving pays nothing for it: keys and `WatchParams`
//!   subscribers per version, requests admitted and shed by the limit that
//!   shed them.
//! - Updates applied from the feed, by outcome (counted per batch).
//!
//! [`Metered`]: crate::grpc_metrics::Metered

use std::sync::{Arc, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::admission::Admission;
use crate::feed::FeedStats;
use crate::store::ParamStore;

/// Labels of one gRPC latency series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GrpcLabels {
    /// Full service name, e.g. `posterior.v1.ParamService`.
    pub service: &'static str,
    /// Method name, e.g. `GetParams` (`unknown` for a path the service
    /// does not define, so clients cannot grow the label set).
    pub method: &'static str,
    /// Status code name, e.g. `OK`, `NOT_FOUND`.
    pub code: &'static str,
}

/// Label of a feed outcome series.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// The param-server's metrics.
#[derive(Debug)]
pub struct ServerMetrics {
    grpc: Family<GrpcLabels, Histogram>,
    feed: Family<OutcomeLabel, Counter>,
    admission: Arc<OnceLock<Arc<Admission>>>,
}

/// Buckets of gRPC latencies in seconds: 25 µs to ~13 s.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(25e-6, 2.0, 20)
}

impl ServerMetrics {
    /// Creates the metrics of a server over `store` and registers them on
    /// `registry`.
    pub fn register(registry: &mut Registry, store: &Arc<ParamStore>) -> Arc<Self> {
        let metrics = Arc::new(Self {
            grpc: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            feed: Family::default(),
            admission: Arc::default(),
        });
        registry.register(
            "posterior_param_server_grpc_request_duration_seconds",
            "gRPC calls from request to status (for WatchParams: the stream's life), by service, method and code",
            metrics.grpc.clone(),
        );
        registry.register(
            "posterior_param_server_feed_updates",
            "Updates received from the feed, by outcome (applied, stale, rejected)",
            metrics.feed.clone(),
        );
        registry.register_collector(Box::new(StoreCollector {
            store: Arc::clone(store),
            admission: Arc::clone(&metrics.admission),
        }));
        metrics
    }

    /// The histogram of one (service, method, code).
    pub fn grpc_latency(&self, labels: &GrpcLabels) -> Histogram {
        self.grpc.get_or_create(labels).clone()
    }

    /// Reports admission decisions from `admission` (the server's, set
    /// once by `serve`).
    pub fn attach_admission(&self, admission: &Arc<Admission>) {
        let _ = self.admission.set(Arc::clone(admission));
    }

    /// Adds what a feed did since `before` (its stats then) to the
    /// counters.
    pub fn count_feed(&self, before: &FeedStats, now: &FeedStats) {
        for (outcome, before, now) in [
            ("applied", before.applied, now.applied),
            ("stale", before.stale, now.stale),
            ("rejected", before.rejected, now.rejected),
        ] {
            if now > before {
                self.feed
                    .get_or_create(&OutcomeLabel { outcome })
                    .inc_by(now - before);
            }
        }
    }
}

/// Reads the store and the admission control at scrape time.
#[derive(Debug)]
struct StoreCollector {
    store: Arc<ParamStore>,
    admission: Arc<OnceLock<Arc<Admission>>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

impl Collector for StoreCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let versions = self.store.versions();
        let per_version = |encoder: &mut DescriptorEncoder,
                           name: &str,
                           help: &str,
                           value: &dyn Fn(&crate::ServedVersion) -> usize|
         -> Result<(), std::fmt::Error> {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for version in &versions {
                let labels = [("version", version.name())];
                let n = i64::try_from(value(version)).unwrap_or(i64::MAX);
                ConstGauge::new(n).encode(family.encode_family(&labels)?)?;
            }
            Ok(())
        };
        per_version(
            &mut encoder,
            "posterior_param_server_keys",
            "Docs with served parameters, by version",
            &|v| v.table().len(),
        )?;
        per_version(
            &mut encoder,
            "posterior_param_server_watch_subscribers",
            "Open WatchParams streams, by version",
            &|v| v.watchers(),
        )?;
        let Some(admission) = self.admission.get() else {
            return Ok(());
        };
        let stats = admission.stats();
        for (name, help, value) in [
            (
                "posterior_param_server_requests_admitted",
                "GetParams / SampleScores requests given a work slot",
                stats.admitted,
            ),
            (
                "posterior_param_server_requests_run_inline",
                "Admitted requests whose work ran on the runtime worker that received them, not on the blocking pool",
                stats.admitted_inline,
            ),
        ] {
            let counter = ConstCounter::new(value);
            counter.encode(encoder.encode_descriptor(
                name,
                help,
                None,
                counter.metric_type(),
            )?)?;
        }
        let mut shed = encoder.encode_descriptor(
            "posterior_param_server_requests_shed",
            "Requests refused by admission control (RESOURCE_EXHAUSTED; deadline: DEADLINE_EXCEEDED), by limit",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (limit, n) in [
            // limits.max_queued_requests or max_queued_request_bytes.
            ("queue_full", stats.shed_queue_full),
            // The predicted wait exceeds limits.max_queue_wait_ms or the deadline.
            ("backlog", stats.shed_backlog),
            // No slot freed within limits.max_queue_wait_ms or the deadline.
            ("queue_wait", stats.shed_waited),
            // The deadline is shorter than the request's own work.
            ("deadline", stats.refused_deadline),
        ] {
            ConstCounter::new(n).encode(shed.encode_family(&LimitLabel { limit })?)?;
        }
        Ok(())
    }
}

/// Renders `registry` in the Prometheus text format (version 0.0.4).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut out, registry)
        .expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use posterior_learner::posterior::{BetaPrior, ModelKind, ModelSpec};
    use posterior_learner::{RewardSpec, VersionSpec};

    use super::*;

    #[test]
    fn store_and_feed_series_are_read_at_scrape_time() {
        let store = Arc::new(ParamStore::default());
        store
            .register(VersionSpec {
                name: "ctr".into(),
                model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
                reward: RewardSpec::binary("click"),
                use_sample_weight: false,
            })
            .unwrap();
        let mut registry = Registry::default();
        let metrics = ServerMetrics::register(&mut registry, &store);
        let out = render(&registry);
        assert!(
            out.contains("posterior_param_server_keys{version=\"ctr\"} 0\n"),
            "{out}"
        );
        // No admission attached yet: no admission series.
        assert!(!out.contains("requests_shed"), "{out}");
        let _watch = store.version("ctr").unwrap().reserve_watch(1).unwrap();
        metrics.count_feed(
            &FeedStats::default(),
            &FeedStats {
                applied: 3,
                rejected: 1,
                ..FeedStats::default()
            },
        );
        let limits = crate::Limits::default();
        metrics.attach_admission(&Arc::new(Admission::new(&limits)));
        let out = render(&registry);
        for line in [
            "posterior_param_server_watch_subscribers{version=\"ctr\"} 1\n",
            "posterior_param_server_feed_updates_total{outcome=\"applied\"} 3\n",
            "posterior_param_server_feed_updates_total{outcome=\"rejected\"} 1\n",
            "posterior_param_server_requests_shed_total{limit=\"queue_full\"} 0\n",
            "posterior_param_server_requests_run_inline_total 0\n",
            "# TYPE posterior_param_server_requests_shed_total counter\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
        assert!(!out.contains("outcome=\"stale\""), "{out}");
    }
}
