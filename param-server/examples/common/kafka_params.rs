//! What the Kafka examples (`replica_ready`, `kafka_freshness`) write to
//! a `params` topic: a diagonal logistic version and a distinct valid
//! state per doc, sent with the learner's producer settings.

use std::time::Duration;

use anyhow::{Context, Result};
use posterior_learner::params::{ANNOUNCEMENT_KEY, announcement_to_wire};
use posterior_learner::posterior::{
    CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::registry::{VersionEntry, VersionId};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord};

/// The version the examples serve: diagonal logistic, dimension `dim`.
pub fn spec(dim: usize) -> Result<VersionSpec> {
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, dim, 1.0)?;
    Ok(VersionSpec {
        name: "ctr-logistic".into(),
        model: ModelSpec::new(ModelKind::Logistic(prior)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    })
}

/// A distinct, valid state per doc, at sequence number `seq`.
pub fn state(doc_id: u64, seq: u64, dim: usize) -> Result<KeyState> {
    let x = (doc_id % 1000) as f64 / 1000.0;
    let mean = (0..dim).map(|i| x - i as f64 * 0.01).collect();
    let precision = (0..dim).map(|i| 1.0 + x + i as f64).collect();
    Ok(KeyState {
        seq,
        sample_count: 1.0 + x,
        updated_event_time_ms: 1_700_000_000_000 + doc_id as i64,
        posterior: Posterior::Diagonal(DiagonalGaussian::from_parts(mean, precision)?),
    })
}

/// A producer with the learner's settings (`config::PRODUCER_SETTINGS`)
/// and `extra` on top (e.g. a larger queue for bulk loads).
pub fn producer(brokers: &str, extra: &[(&str, &str)]) -> Result<BaseProducer> {
    let mut client = ClientConfig::new();
    for (key, value) in posterior_learner::config::PRODUCER_SETTINGS
        .iter()
        .chain(extra)
    {
        client.set(*key, *value);
    }
    client
        .set("bootstrap.servers", brokers)
        .create()
        .context("create producer")
}

/// Queues one record, polling the producer while its queue is full.
pub fn send(
    producer: &BaseProducer,
    topic: &str,
    partition: u32,
    key: &[u8],
    value: &[u8],
) -> Result<()> {
    let mut record = BaseRecord::to(topic)
        .partition(partition as i32)
        .key(key)
        .payload(value);
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((err, back)) => {
                anyhow::ensure!(
                    err.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull),
                    "produce: {err}"
                );
                record = back;
                producer.poll(Duration::from_millis(10));
            }
        }
    }
}

/// Announces `spec` as version 0 on every partition, as a learner does
/// before its first update.
pub fn announce(
    producer: &BaseProducer,
    topic: &str,
    partitions: u32,
    spec: &VersionSpec,
) -> Result<()> {
    let announcement = announcement_to_wire(&[VersionEntry {
        id: VersionId(0),
        spec: spec.clone(),
        retired: false,
    }])
    .encode_to_vec();
    for partition in 0..partitions {
        send(producer, topic, partition, ANNOUNCEMENT_KEY, &announcement)?;
    }
    Ok(())
}
