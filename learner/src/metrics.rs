//! The learner's Prometheus metrics and the `[metrics]` config table.
//!
//! The metrics live on an explicit [`Registry`] that the binary creates
//! (no global state that tests would share) and serves on `GET /metrics`.
//!
//! Hot path: the engine processes millions of samples a second, so it
//! never touches an atomic or a lock per sample. It keeps plain integers
//! ([`Counters`], [`EngineStats`]); the runner copies them here once per
//! publish interval ([`LearnerMetrics::export`]), and times checkpoints,
//! savepoints and publishes, which happen at most a few times a second.
//! Counters count from the process's start (a restart is a counter reset,
//! as Prometheus expects), not from the start of the checkpointed state.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use serde::Deserialize;

use crate::engine::{BATCH_SIZE_BUCKETS, Counters, Engine, EngineStats};
use crate::params::ParamChange;
use crate::registry::VersionId;

/// `[metrics]`: where `GET /metrics` is served (Prometheus text format).
/// Absent: no endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Address of the HTTP listener, e.g. `127.0.0.1:9100` (port 0: any
    /// free port, logged at start).
    pub listen: String,
}

impl MetricsConfig {
    /// The listen address, or why `listen` is not one.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.listen
            .parse()
            .map_err(|e| format!("{e} (expected host:port, e.g. 127.0.0.1:9100)"))
    }
}

/// Label of the series of one A/B version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct VersionLabel {
    /// The version's name (versions are few: created by admins).
    pub version: String,
}

/// Labels of the series of one (version, dead-letter reason).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeadLetterLabels {
    /// The registered version the record names; empty when it names none
    /// (undecodable, or `unknown_version`: a name from the input never
    /// becomes a label, so bad data cannot grow the series).
    pub version: String,
    /// A stable reason from the engine (`late`, `duplicate`, …).
    pub reason: String,
}

/// Label of the series of one source partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PartitionLabel {
    /// The partition (0 for a file, stdin or the simulator).
    pub partition: u32,
}

/// Seconds as a gauge value.
type SecondsGauge = Gauge<f64, AtomicU64>;

/// The learner's metrics (names in the README's "Metrics" section).
#[derive(Debug)]
pub struct LearnerMetrics {
    applied: Family<VersionLabel, Counter>,
    dead_letters: Family<DeadLetterLabels, Counter>,
    updates: Counter,
    unconverged: Family<VersionLabel, Counter>,
    update_latency: UpdateLatency,
    batch_sizes: BatchSizes,
    keys: Family<VersionLabel, Gauge>,
    buffered: Gauge,
    freshness: SecondsGauge,
    watermark_delay: Family<PartitionLabel, SecondsGauge>,
    consumer_lag: Family<PartitionLabel, Gauge>,
    stall: SecondsGauge,
    publish_duration: Histogram,
    publish_queue: Gauge,
    checkpoint_blocked: Histogram,
    checkpoint_write: Histogram,
    checkpoint_delivery: Histogram,
    checkpoint_bytes: Histogram,
    stored_ahead: Counter,
    savepoint_duration: Histogram,
    savepoint_bytes: Histogram,
    /// What the last export saw, to turn the engine's totals into
    /// increments.
    exported: Mutex<Option<Exported>>,
}

/// The engine's totals at the last export.
#[derive(Debug, Clone)]
struct Exported {
    counters: Counters,
    applied_by_version: Vec<u64>,
    dead_by_version: BTreeMap<(&'static str, Option<VersionId>), u64>,
    unconverged_by_version: Vec<u64>,
}

/// Buckets of durations in seconds: 100 µs to ~100 s.
fn seconds_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1e-4, 4.0, 11)
}

/// Buckets of sizes in bytes: 4 KiB to ~16 GiB.
fn bytes_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(4096.0, 4.0, 12)
}

impl LearnerMetrics {
    /// Creates the metrics and registers them on `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            applied: Family::default(),
            dead_letters: Family::default(),
            updates: Counter::default(),
            unconverged: Family::default(),
            update_latency: UpdateLatency::default(),
            batch_sizes: BatchSizes::default(),
            keys: Family::default(),
            buffered: Gauge::default(),
            freshness: SecondsGauge::default(),
            watermark_delay: Family::default(),
            consumer_lag: Family::default(),
            stall: SecondsGauge::default(),
            publish_duration: Histogram::new(seconds_buckets()),
            publish_queue: Gauge::default(),
            checkpoint_blocked: Histogram::new(seconds_buckets()),
            checkpoint_write: Histogram::new(seconds_buckets()),
            checkpoint_delivery: Histogram::new(seconds_buckets()),
            checkpoint_bytes: Histogram::new(bytes_buckets()),
            stored_ahead: Counter::default(),
            savepoint_duration: Histogram::new(seconds_buckets()),
            savepoint_bytes: Histogram::new(bytes_buckets()),
            exported: Mutex::new(None),
        };
        let r = registry;
        let m = &metrics;
        r.register(
            "posterior_learner_samples_applied",
            "Samples applied to a posterior, by version",
            m.applied.clone(),
        );
        r.register(
            "posterior_learner_dead_letters",
            "Records not applied (dead letters), by version (empty: none registered) and reason",
            m.dead_letters.clone(),
        );
        r.register(
            "posterior_learner_updates",
            "Posterior updates (micro-batches) applied",
            m.updates.clone(),
        );
        r.register(
            "posterior_learner_unconverged_updates",
            "Logistic updates whose MAP solve stopped at the Newton iteration cap (applied from its last iterate), by version",
            m.unconverged.clone(),
        );
        r.register(
            "posterior_learner_update_latency_seconds",
            "Per published update: wall time of its publish minus the event time of the newest sample in it",
            m.update_latency.clone(),
        );
        r.register(
            "posterior_learner_micro_batch_size_samples",
            "Samples per applied micro-batch",
            m.batch_sizes.clone(),
        );
        r.register(
            "posterior_learner_keys",
            "(version, doc) keys in the parameter table, by version",
            m.keys.clone(),
        );
        r.register(
            "posterior_learner_reorder_buffered_samples",
            "Samples waiting in the reorder buffer for the watermark",
            m.buffered.clone(),
        );
        r.register(
            "posterior_learner_freshness_seconds",
            "Wall time now minus the event time of the newest applied sample",
            m.freshness.clone(),
        );
        r.register(
            "posterior_learner_watermark_delay_seconds",
            "Wall time now minus the partition's event-time watermark",
            m.watermark_delay.clone(),
        );
        r.register(
            "posterior_learner_consumer_lag_records",
            "Kafka: the partition's high watermark minus the next offset to read",
            m.consumer_lag.clone(),
        );
        r.register(
            "posterior_learner_stall_seconds",
            "Kafka: how long the next offsets have not moved while a partition has lag (0 when live; the watchdog exits at source.stall_timeout_ms)",
            m.stall.clone(),
        );
        r.register(
            "posterior_learner_publish_duration_seconds",
            "Time to hand one publish interval's changed keys to the sink (waits for a full queue included)",
            m.publish_duration.clone(),
        );
        r.register(
            "posterior_learner_publish_queue_depth",
            "Publications waiting in the sink's bounded queue",
            m.publish_queue.clone(),
        );
        r.register(
            "posterior_learner_checkpoint_blocked_seconds",
            "Time a checkpoint blocked ingestion (publish, dead letters, delta, wait)",
            m.checkpoint_blocked.clone(),
        );
        r.register(
            "posterior_learner_keys_stored_ahead",
            "Changed keys whose states were taken ahead of a checkpoint put off by a running write",
            m.stored_ahead.clone(),
        );
        r.register(
            "posterior_learner_checkpoint_write_seconds",
            "Time of a checkpoint's RocksDB write and flush (on the writer thread)",
            m.checkpoint_write.clone(),
        );
        r.register(
            "posterior_learner_checkpoint_delivery_seconds",
            "Time the checkpoint writer waited for the broker's acknowledgements of the params \
             and dead letters a checkpoint covers, before writing it",
            m.checkpoint_delivery.clone(),
        );
        r.register(
            "posterior_learner_checkpoint_size_bytes",
            "Key and value bytes a checkpoint wrote",
            m.checkpoint_bytes.clone(),
        );
        r.register(
            "posterior_learner_savepoint_duration_seconds",
            "Time to take a savepoint (after its checkpoint)",
            m.savepoint_duration.clone(),
        );
        r.register(
            "posterior_learner_savepoint_size_bytes",
            "Bytes of a savepoint's files",
            m.savepoint_bytes.clone(),
        );
        metrics
    }

    /// Copies the engine's totals and gauges, as of wall time `now_ms`
    /// (Unix ms). The first call of a run sets the baseline: counts from
    /// before it (restored with the state) are not exported. Cost: a few
    /// map lookups per version, reason and partition.
    pub fn export(&self, engine: &Engine, now_ms: i64) {
        let stats = engine.stats();
        let names: Vec<&str> = engine
            .registry()
            .entries()
            .iter()
            .map(|e| e.spec.name.as_str())
            .collect();
        let mut exported = self
            .exported
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = || Exported {
            counters: engine.counters().clone(),
            applied_by_version: stats.applied_by_version.clone(),
            dead_by_version: stats.dead_by_version.clone(),
            unconverged_by_version: stats.unconverged_by_version.clone(),
        };
        let last = exported.get_or_insert_with(now);
        self.export_counts(engine.counters(), stats, &names, last);
        *last = now();
        drop(exported);
        self.batch_sizes.set(stats);
        for (id, &n) in stats.keys_by_version.iter().enumerate() {
            if let Some(name) = names.get(id) {
                self.keys.get_or_create(&version(name)).set(gauge(n));
            }
        }
        self.buffered.set(gauge(engine.buffered() as u64));
        if let Some(t) = stats.last_applied_event_ms {
            self.freshness.set(seconds_between(t, now_ms));
        }
        for &partition in engine.clocks().keys() {
            let watermark = engine.partition_watermark(partition);
            if watermark > i64::MIN {
                self.watermark_delay
                    .get_or_create(&PartitionLabel { partition })
                    .set(seconds_between(watermark, now_ms));
            }
        }
    }

    fn export_counts(
        &self,
        counters: &Counters,
        stats: &EngineStats,
        names: &[&str],
        last: &Exported,
    ) {
        self.updates
            .inc_by(counters.updates.saturating_sub(last.counters.updates));
        for (key @ &(reason, id), &n) in &stats.dead_by_version {
            let before = last.dead_by_version.get(key).copied().unwrap_or(0);
            let name = id.and_then(|id| names.get(id.0 as usize)).copied();
            let counter = self.dead_letters.get_or_create(&DeadLetterLabels {
                version: name.unwrap_or_default().to_owned(),
                reason: reason.to_owned(),
            });
            counter.inc_by(n.saturating_sub(before));
        }
        for (id, &n) in stats.applied_by_version.iter().enumerate() {
            let before = last.applied_by_version.get(id).copied().unwrap_or(0);
            if let Some(name) = names.get(id) {
                self.applied
                    .get_or_create(&version(name))
                    .inc_by(n.saturating_sub(before));
            }
        }
        // Every version's series, at 0 too, so that an alert on it sees a
        // value rather than an absent series.
        for (id, name) in names.iter().enumerate() {
            let count = |counts: &[u64]| counts.get(id).copied().unwrap_or(0);
            let new = count(&stats.unconverged_by_version)
                .saturating_sub(count(&last.unconverged_by_version));
            self.unconverged.get_or_create(&version(name)).inc_by(new);
            if new > 0 {
                // Once per export at most: a solve at the cap is applied
                // from its last iterate, which may be off the MAP. (Logged
                // by the process side; without it, the counter alone.)
                #[cfg(feature = "io")]
                tracing::warn!(
                    "{new} updates of version {name} stopped at the Newton iteration cap ({}) \
                     since the last export; each was applied from its last iterate",
                    crate::posterior::MAX_NEWTON_ITERATIONS
                );
            }
        }
    }

    /// Kafka: each partition's lag, from the high watermarks (fetched by
    /// the caller) and the engine's next offsets.
    pub fn export_lag(&self, high_watermarks: &BTreeMap<u32, u64>, next: &BTreeMap<u32, u64>) {
        for (&partition, &high) in high_watermarks {
            let at = next.get(&partition).copied().unwrap_or(0);
            self.consumer_lag
                .get_or_create(&PartitionLabel { partition })
                .set(gauge(high.saturating_sub(at)));
        }
    }

    /// The liveness watchdog's view: how long consumption has stalled
    /// with records waiting (zero when live).
    pub fn set_stall(&self, stalled_for: Duration) {
        self.stall.set(stalled_for.as_secs_f64());
    }

    /// One publish: how long handing the updates over took, and the
    /// sink's queue afterwards.
    pub fn observe_publish(&self, took: Duration, queued: u64) {
        self.publish_duration.observe(took.as_secs_f64());
        self.publish_queue.set(gauge(queued));
    }

    /// One publish of `updates` at wall time `now_ms` (Unix ms): each
    /// update's latency from the event time of its newest sample.
    pub fn observe_update_latency(&self, updates: &[ParamChange], now_ms: i64) {
        self.update_latency.observe(
            updates.iter().map(|u| u.state.updated_event_time_ms),
            now_ms,
        );
    }

    /// One checkpoint handed to the writer: what it blocked ingestion for.
    pub fn observe_checkpoint_blocked(&self, blocked: Duration) {
        self.checkpoint_blocked.observe(blocked.as_secs_f64());
    }

    /// Changed keys taken ahead of a put-off checkpoint.
    pub fn observe_stored_ahead(&self, keys: usize) {
        self.stored_ahead.inc_by(keys as u64);
    }

    /// One checkpoint written: its write's time and bytes, and how long
    /// its writer waited for deliveries first.
    pub fn observe_checkpoint_write(&self, took: Duration, bytes: u64, delivery: Duration) {
        self.checkpoint_write.observe(took.as_secs_f64());
        self.checkpoint_bytes.observe(bytes as f64);
        self.checkpoint_delivery.observe(delivery.as_secs_f64());
    }

    /// One savepoint taken: its time and the bytes of its files.
    pub fn observe_savepoint(&self, took: Duration, bytes: u64) {
        self.savepoint_duration.observe(took.as_secs_f64());
        self.savepoint_bytes.observe(bytes as f64);
    }
}

fn version(name: &str) -> VersionLabel {
    VersionLabel {
        version: name.to_owned(),
    }
}

/// A count as a gauge value (saturating: gauges are `i64`).
fn gauge(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Seconds from event time `from_ms` to wall time `to_ms` (negative when
/// the event time is ahead of the clock).
fn seconds_between(from_ms: i64, to_ms: i64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

/// The engine's micro-batch size histogram, exported as a Prometheus
/// histogram: the engine counts batches in power-of-two buckets with
/// plain integers ([`EngineStats::batch_sizes`]), copied here.
#[derive(Debug, Clone, Default)]
struct BatchSizes(std::sync::Arc<Mutex<Option<BatchSnapshot>>>);

#[derive(Debug, Clone)]
struct BatchSnapshot {
    sum: u64,
    buckets: [u64; BATCH_SIZE_BUCKETS],
}

impl BatchSizes {
    fn set(&self, stats: &EngineStats) {
        let snapshot = BatchSnapshot {
            sum: stats.batch_sizes_sum,
            buckets: stats.batch_sizes,
        };
        *self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(snapshot);
    }
}

impl TypedMetric for BatchSizes {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for BatchSizes {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .unwrap_or(BatchSnapshot {
                sum: 0,
                buckets: [0; BATCH_SIZE_BUCKETS],
            });
        // Bucket i holds sizes up to 2^i (the last: any size).
        encode_buckets(encoder, snapshot.sum as f64, &snapshot.buckets, |i| {
            (1_u64 << i) as f64
        })
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Buckets of [`UpdateLatency`]: upper bounds 1 ms × 4^i, i < this
/// (1 ms to ~19 h), then +Inf.
const LATENCY_BUCKETS: usize = 14;

/// A histogram of update latencies filled a publish at a time: the
/// publish counts its updates into plain integers and takes the lock
/// once, where a Prometheus histogram would take atomics per update.
#[derive(Debug, Clone, Default)]
struct UpdateLatency(std::sync::Arc<Mutex<LatencyCounts>>);

#[derive(Debug, Clone, Default)]
struct LatencyCounts {
    sum_ms: i128,
    /// Bucket `i < LATENCY_BUCKETS` counts latencies in (4^(i-1), 4^i]
    /// ms (bucket 0: ≤ 1 ms, negative included); the last, the rest.
    buckets: [u64; LATENCY_BUCKETS + 1],
}

impl UpdateLatency {
    fn observe(&self, event_times_ms: impl Iterator<Item = i64>, now_ms: i64) {
        let mut counts = LatencyCounts::default();
        for t in event_times_ms {
            let ms = now_ms.saturating_sub(t);
            counts.sum_ms += i128::from(ms);
            counts.buckets[latency_bucket(ms)] += 1;
        }
        if counts.buckets.iter().all(|&n| n == 0) {
            return;
        }
        let mut total = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        total.sum_ms += counts.sum_ms;
        for (total, n) in total.buckets.iter_mut().zip(counts.buckets) {
            *total += n;
        }
    }
}

/// The bucket of a latency of `ms`: the smallest `i` with `ms ≤ 4^i`.
fn latency_bucket(ms: i64) -> usize {
    if ms <= 1 {
        return 0;
    }
    // ⌈log2(ms)⌉, then ⌈/2⌉ for base 4.
    let log2 = u64::BITS - (ms as u64 - 1).leading_zeros();
    (log2.div_ceil(2) as usize).min(LATENCY_BUCKETS)
}

impl TypedMetric for UpdateLatency {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for UpdateLatency {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let counts = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        encode_buckets(
            encoder,
            counts.sum_ms as f64 / 1000.0,
            &counts.buckets,
            |i| 4_f64.powi(i as i32) / 1000.0,
        )
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Encodes per-bucket counts as a Prometheus histogram: bucket `i` has
/// the upper bound `bound(i)`, the last one +Inf.
fn encode_buckets(
    mut encoder: MetricEncoder,
    sum: f64,
    counts: &[u64],
    bound: impl Fn(usize) -> f64,
) -> Result<(), std::fmt::Error> {
    let last = counts.len().saturating_sub(1);
    let buckets: Vec<(f64, u64)> = counts
        .iter()
        .enumerate()
        .map(|(i, &n)| (if i == last { f64::INFINITY } else { bound(i) }, n))
        .collect();
    encoder.encode_histogram::<NoLabelSet>(sum, counts.iter().sum(), &buckets, None)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use super::*;
    use crate::engine::{EngineConfig, Payload};
    use crate::registry::Registry as Versions;
    use crate::sample::Sample;

    fn text(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).unwrap();
        out
    }

    #[test]
    fn the_listen_address_is_checked() {
        let ok = MetricsConfig {
            listen: "127.0.0.1:0".into(),
        };
        assert!(ok.listen_addr().is_ok());
        let bad = MetricsConfig {
            listen: "localhost".into(),
        };
        assert!(bad.listen_addr().unwrap_err().contains("host:port"));
    }

    #[test]
    fn latency_buckets_are_powers_of_four_milliseconds() {
        for (ms, bucket) in [
            (-5, 0),
            (0, 0),
            (1, 0),
            (2, 1),
            (4, 1),
            (5, 2),
            (16, 2),
            (17, 3),
            (1_024, 5),
            (1_025, 6),
            (i64::MAX, LATENCY_BUCKETS),
        ] {
            assert_eq!(latency_bucket(ms), bucket, "{ms} ms");
        }
    }

    #[test]
    fn update_latencies_encode_as_a_cumulative_histogram_in_seconds() {
        let latency = UpdateLatency::default();
        // 1 ms, 3 ms and 10 s after their events; then an empty publish.
        latency.observe([9_999, 9_997, 0].into_iter(), 10_000);
        latency.observe(std::iter::empty(), 20_000);
        let mut registry = Registry::default();
        registry.register("u", "update latency", latency);
        let out = text(&registry);
        assert!(out.contains("u_sum 10.004\n"), "{out}");
        assert!(out.contains("u_count 3\n"), "{out}");
        assert!(out.contains("u_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("u_bucket{le=\"0.004\"} 2\n"), "{out}");
        assert!(out.contains("u_bucket{le=\"4.096\"} 2\n"), "{out}");
        assert!(out.contains("u_bucket{le=\"16.384\"} 3\n"), "{out}");
        assert!(out.contains("u_bucket{le=\"+Inf\"} 3\n"), "{out}");
    }

    #[test]
    fn batch_sizes_encode_as_a_cumulative_histogram() {
        let sizes = BatchSizes::default();
        let mut stats = EngineStats::default();
        // Two batches of 1, one of 3 (bucket ≤ 4), one of 1000 (≤ 1024).
        for n in [1, 1, 3, 1000] {
            stats.count_batch(crate::registry::VersionId(0), n, 0);
        }
        sizes.set(&stats);
        let mut registry = Registry::default();
        registry.register("b", "batch sizes", sizes);
        let out = text(&registry);
        assert!(out.contains("b_sum 1005.0\n"), "{out}");
        assert!(out.contains("b_count 4\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"1.0\"} 2\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"2.0\"} 2\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"4.0\"} 3\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"512.0\"} 3\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"1024.0\"} 4\n"), "{out}");
        assert!(out.contains("b_bucket{le=\"+Inf\"} 4\n"), "{out}");
    }

    fn sample(version: &str, doc_id: u64, t: i64) -> Payload {
        Payload::Sample(Sample {
            doc_id,
            version: version.into(),
            event_time_ms: t,
            context: vec![],
            labels: crate::sample::labels([("click", 1.0)]),
            weight: 1.0,
            sample_id: None,
        })
    }

    /// Updates stopped at the iteration cap (forced: one iteration on this
    /// thread) are exported by version, counted from the baseline.
    #[test]
    fn updates_at_the_iteration_cap_are_exported_by_version() {
        use crate::posterior::{CovarianceForm, LogisticPrior, ModelKind, ModelSpec};
        let logistic = crate::version::VersionSpec {
            name: "l".into(),
            model: ModelSpec::new(ModelKind::Logistic(
                LogisticPrior::isotropic(CovarianceForm::Diagonal, 2, 1.0).unwrap(),
            )),
            reward: crate::version::RewardSpec::binary("click"),
            use_sample_weight: false,
        };
        let config = EngineConfig {
            out_of_orderness_ms: 0,
            reorder_capacity: 1_000,
            dedup: None,
            batch: crate::batcher::BatchPolicy {
                max_samples: 4,
                max_positives: 0,
                max_age_ms: None,
            },
        };
        let mut engine = Engine::new(config, Versions::with_versions([logistic]).unwrap(), [0]);
        let mut registry = Registry::default();
        let metrics = LearnerMetrics::register(&mut registry);
        metrics.export(&engine, 0);
        crate::posterior::newton::with_iteration_cap(1, || {
            for i in 0..16_u64 {
                let x = i as f32 / 4.0 - 2.0;
                engine.ingest(
                    0,
                    i,
                    Payload::Sample(Sample {
                        doc_id: 1 + i % 2,
                        version: "l".into(),
                        event_time_ms: 1_000 + i as i64,
                        context: vec![1.0, x],
                        labels: crate::sample::labels([("click", f32::from(i % 3 == 0))]),
                        weight: 1.0,
                        sample_id: None,
                    }),
                );
            }
            engine.finish();
        });
        let stopped = engine.stats().unconverged_by_version[0];
        assert!(
            stopped >= 2,
            "{stopped} of {} updates",
            engine.counters().updates
        );
        metrics.export(&engine, 10_000);
        let line =
            format!("posterior_learner_unconverged_updates_total{{version=\"l\"}} {stopped}\n");
        let out = text(&registry);
        assert!(out.contains(&line), "missing {line:?} in\n{out}");
    }

    #[test]
    fn exports_count_from_the_first_export_by_version_and_reason() {
        let beta = |name: &str| crate::version::VersionSpec {
            name: name.into(),
            model: crate::posterior::ModelSpec::new(crate::posterior::ModelKind::Beta(
                crate::posterior::BetaPrior::UNIFORM,
            )),
            reward: crate::version::RewardSpec::binary("click"),
            use_sample_weight: false,
        };
        let versions = Versions::with_versions([beta("a"), beta("b")]).unwrap();
        let config = EngineConfig {
            out_of_orderness_ms: 0,
            reorder_capacity: 1_000,
            dedup: None,
            batch: crate::batcher::BatchPolicy::default(),
        };
        let mut engine = Engine::new(config, versions, [0]);
        let mut registry = Registry::default();
        let metrics = LearnerMetrics::register(&mut registry);
        engine.ingest(0, 0, sample("a", 1, 1_000));
        engine.ingest(0, 1, sample("a", 2, 2_000));
        assert_eq!(engine.counters().applied, 1);
        metrics.export(&engine, 10_000);
        // Applied before the first export (the baseline): not exported.
        let out = text(&registry);
        assert!(
            out.contains("posterior_learner_samples_applied_total{version=\"a\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("posterior_learner_keys{version=\"a\"} 1\n"),
            "{out}"
        );
        engine.ingest(0, 2, sample("b", 1, 3_000));
        engine.ingest(0, 3, sample("zzz", 1, 4_000));
        engine.ingest(0, 4, sample("a", 1, 500));
        engine.finish();
        metrics.export(&engine, 10_000);
        let out = text(&registry);
        for line in [
            "posterior_learner_samples_applied_total{version=\"a\"} 1\n",
            "posterior_learner_samples_applied_total{version=\"b\"} 1\n",
            // A name the registry never had is not a label.
            "posterior_learner_dead_letters_total{version=\"\",reason=\"unknown_version\"} 1\n",
            "posterior_learner_dead_letters_total{version=\"a\",reason=\"late\"} 1\n",
            "posterior_learner_updates_total 2\n",
            // Beta updates have no solve: present, at 0.
            "posterior_learner_unconverged_updates_total{version=\"a\"} 0\n",
            "posterior_learner_keys{version=\"a\"} 2\n",
            "posterior_learner_keys{version=\"b\"} 1\n",
            // The newest applied sample is b's at 3 s.
            "posterior_learner_freshness_seconds 7.0\n",
        ] {
            assert!(out.contains(line), "missing {line:?} in\n{out}");
        }
    }
}
