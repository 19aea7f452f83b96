//! A checkpoint covers only delivered publications: with the `params`
//! topic's broker gone, the learner's checkpoint call hands the wait for
//! the broker's acknowledgements to the checkpoint writer and returns (the
//! ingesting thread does not wait on the broker), and the writer then
//! fails without writing — the store keeps the previous checkpoint, so a
//! restart republishes what was lost. A producer whose queue stays full
//! (the broker gone) fails a send after the flush timeout instead of
//! blocking the ingesting thread for librdkafka's message timeout.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use posterior_learner::config::Config;
use posterior_learner::engine::{Engine, Payload};
use posterior_learner::producer::CheckedProducer;
use posterior_learner::runner::{Checkpointer, fresh_engine, open_sink, restore_engine};
use posterior_learner::sample::{Sample, labels};
use posterior_learner::store::RocksStore;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};

/// Ingests one click per doc of `docs` at event time `at_ms`, from
/// offset `offset` on (a click ends a micro-batch: applied on release).
fn ingest(engine: &mut Engine, offset: &mut u64, docs: std::ops::Range<u64>, at_ms: i64) {
    for doc_id in docs {
        let sample = Sample {
            doc_id,
            version: "beta".into(),
            event_time_ms: at_ms,
            context: Vec::new(),
            labels: labels([("click", 1.0)]),
            weight: 1.0,
            sample_id: None,
        };
        engine.ingest(0, *offset, Payload::Sample(sample));
        *offset += 1;
    }
}

#[test]
fn a_checkpoint_is_written_only_once_its_publications_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(Storage::Memory);
    broker.create_topic("params", 1);
    let empty = dir.path().join("samples.jsonl");
    std::fs::write(&empty, "").unwrap();
    let text = learner_toml(
        dir.path(),
        "learner",
        Source::File(&empty),
        1_000_000,
        Some(&broker.bootstrap()),
    )
    .replace(
        "topic = \"params\"\n",
        "topic = \"params\"\nflush_timeout_ms = 2000\n",
    );
    let config = Config::from_toml(&text).unwrap();
    let store = RocksStore::open(&config.state.dir).unwrap();
    let mut checkpointer =
        Checkpointer::new(&config, store, None, open_sink(&config).unwrap()).unwrap();
    let mut engine = fresh_engine(&config, [0]).unwrap();
    let mut offset = 0;

    // With the broker up: published, delivered, written.
    ingest(&mut engine, &mut offset, 0..100, 1_000);
    ingest(
        &mut engine,
        &mut offset,
        100..101,
        1_000 + 2 * OUT_OF_ORDERNESS_MS,
    );
    checkpointer.checkpoint(&mut engine, offset).unwrap();
    let first = checkpointer.wait().unwrap().unwrap().offsets.clone();
    assert_eq!(first.get(&0), Some(&offset));

    // The broker goes: the next checkpoint's publications cannot arrive.
    broker.kill();
    ingest(
        &mut engine,
        &mut offset,
        0..100,
        1_000 + 4 * OUT_OF_ORDERNESS_MS,
    );
    ingest(
        &mut engine,
        &mut offset,
        100..101,
        1_000 + 6 * OUT_OF_ORDERNESS_MS,
    );
    assert!(
        engine.stats().applied_by_version.iter().sum::<u64>() >= 200,
        "the second round was applied (and so published)"
    );
    // Handing the checkpoint over does not wait for the broker...
    checkpointer
        .checkpoint(&mut engine, offset)
        .expect("the ingesting thread does not wait for deliveries");
    // ...its write does, and fails without writing.
    let err = checkpointer.wait().unwrap_err();
    let message = format!("{err:#}");
    assert!(
        message.contains("params") && message.contains("not delivered"),
        "unclear error: {message}"
    );
    drop(checkpointer);

    let store = RocksStore::open(&config.state.dir).unwrap();
    let (restored, _) = restore_engine(&config, &store).unwrap().unwrap();
    assert_eq!(
        restored.next_offsets(),
        &first,
        "the store holds the checkpoint whose publications were delivered"
    );
}

#[test]
fn a_send_into_a_queue_that_stays_full_fails_after_the_flush_timeout() {
    let mut broker = Broker::start(Storage::Memory);
    broker.create_topic("params", 1);
    let timeout = std::time::Duration::from_millis(1_500);
    let mut producer = CheckedProducer::open(&broker.bootstrap(), "params", timeout).unwrap();
    broker.kill();
    let started = std::time::Instant::now();
    let mut sent = 0_u64;
    let err = loop {
        match producer.send(0, b"key", &[0_u8; 64]) {
            Ok(_) => sent += 1,
            Err(err) => break err,
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "still sending after {sent} records"
        );
    };
    let message = err.to_string();
    assert!(message.contains("stayed full"), "{message}");
    assert!(sent > 1_000, "the queue filled after {sent} records");
    assert!(
        started.elapsed() >= timeout,
        "failed before the timeout: {:?}",
        started.elapsed()
    );
}
