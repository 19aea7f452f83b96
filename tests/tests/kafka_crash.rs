//! The learner on a real Kafka-protocol broker: a generated log of 10⁶
//! samples with defects is produced to a 4-partition `samples` topic; the
//! learner runs as a child process, is killed with SIGKILL at random
//! moments and aborted at fail points, restarted each time, and must end
//! with exactly the state and dead letters that a pure in-process engine
//! (the oracle) computes from the same records; and the `params` topic it
//! published to must end at that state without a value going backwards.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::HashMap;
use std::time::Duration;

use posterior_learner::config::Config;
use posterior_learner::params::ParamsRecord;
use posterior_learner::partitioning::partition_of;
use posterior_learner::runner::restore_engine;
use posterior_learner::store::RocksStore;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogSpec, generate_records};
use posterior_tests::oracle::{
    dump_store, first_difference, oracle, produce_samples, sorted_lines,
};
use posterior_tests::{KillPlan, kill_then_finish};

const PARTITIONS: u32 = 4;

#[test]
fn learner_killed_again_and_again_on_a_broker_ends_equal_to_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    broker.create_topic("params", PARTITIONS);
    let (records, injected) = generate_records(LogSpec {
        records: 1_000_000,
        docs: 10_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 2026,
    });
    let per_partition = produce_samples(&broker, &records, PARTITIONS);
    assert_eq!(broker.high_watermarks("samples", PARTITIONS), per_partition);

    let config_path = dir.path().join("victim.toml");
    std::fs::write(
        &config_path,
        learner_toml(
            dir.path(),
            "victim",
            Source::Kafka(&broker.bootstrap()),
            20_000,
            Some(&broker.bootstrap()),
        ),
    )
    .unwrap();
    let config = Config::from_toml(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let (expected, expected_dead) = oracle(&config, &records, PARTITIONS);
    assert!(expected.lines().count() >= 19_000, "≥ 10 k keys expected");
    let dead_lines = |reason: &str| {
        expected_dead
            .lines()
            .filter(|l| l.contains(&format!("\"reason\":\"{reason}\"")))
            .count() as u64
    };
    assert_eq!(dead_lines("undecodable"), injected.poison);
    assert_eq!(dead_lines("unknown_version"), injected.unknown_version);
    assert!(dead_lines("late") >= injected.late * 9 / 10);
    assert!(dead_lines("duplicate") >= injected.duplicates / 2);

    let crashes = kill_then_finish(
        &config_path,
        true,
        &dir.path().join("learner.log"),
        &KillPlan {
            rounds: 17,
            failpoints: &[
                "before_checkpoint:40000",
                "after_checkpoint:40000",
                "after_ingest:30000",
                "mid_checkpoint:40000",
            ],
            every: 6,
            min_life: Duration::from_millis(300),
            max_life: Duration::from_millis(2_500),
            seed: 99,
            failpoint_life: Duration::from_secs(60),
        },
        Duration::from_secs(900),
    );
    eprintln!("of 17 runs: {crashes:?}");
    assert!(
        crashes.mid_run() >= 10 && crashes.killed >= 4 && crashes.aborted >= 6,
        "too few crashes landed mid-run: {crashes:?}"
    );

    let got = dump_store(&config);
    assert!(
        got == expected,
        "state differs after {crashes:?}: {}",
        first_difference(&got, &expected)
    );
    check_params_topic(&broker, &config);
    // Exactly once each; across partitions they follow the broker's
    // interleaving, so compare them in a canonical order.
    let got_dead = std::fs::read_to_string(config.dead_letter.path().unwrap()).unwrap();
    let (got_dead, expected_dead) = (sorted_lines(&got_dead), sorted_lines(&expected_dead));
    assert!(
        got_dead == expected_dead,
        "dead letters differ: {}",
        first_difference(&got_dead, &expected_dead)
    );
}

/// The params topic, read like a param-server replica would (highest
/// sequence number per key wins), ends at the learner's final state; and
/// every update republished after a crash is identical to the first
/// publication of its sequence number.
fn check_params_topic(broker: &Broker, config: &Config) {
    let store = RocksStore::open(&config.state.dir).unwrap();
    let (engine, _) = restore_engine(config, &store).unwrap().unwrap();
    let mut expected: HashMap<(String, u64), Vec<u8>> = HashMap::new();
    for (key, state) in engine.params() {
        let name = engine
            .registry()
            .get(key.version)
            .unwrap()
            .spec
            .name
            .clone();
        expected.insert((name, key.doc_id), state.encode());
    }
    let mut by_seq: HashMap<(String, u64, u64), Vec<u8>> = HashMap::new();
    let mut latest: HashMap<(String, u64), (u64, Vec<u8>)> = HashMap::new();
    let records = broker.consume_all("params", PARTITIONS);
    assert!(records.len() >= expected.len());
    // Per partition, the versions announced so far: every update's version
    // must have been announced earlier in its partition.
    let mut announced: HashMap<u32, Vec<String>> = HashMap::new();
    for (partition, key, value) in records {
        let update = match ParamsRecord::decode(Some(&key), &value).unwrap() {
            ParamsRecord::Versions(versions) => {
                let names = versions.into_iter().map(|v| v.spec.name).collect();
                announced.insert(partition, names);
                continue;
            }
            ParamsRecord::Update(update) => update,
        };
        let params = update.params.unwrap();
        assert!(
            announced
                .get(&partition)
                .is_some_and(|names| names.contains(&params.version)),
            "an update of {:?} before its version's announcement in partition {partition}",
            params.version
        );
        assert_eq!(partition, partition_of(params.doc_id, PARTITIONS));
        assert_eq!(
            key,
            format!("{}/{}", params.version, params.doc_id).into_bytes()
        );
        let first = by_seq
            .entry((params.version.clone(), params.doc_id, params.seq))
            .or_insert_with(|| update.state.clone());
        assert!(
            *first == update.state,
            "seq {} of {}/{} republished with a different value",
            params.seq,
            params.version,
            params.doc_id
        );
        let slot = latest
            .entry((params.version, params.doc_id))
            .or_insert((0, Vec::new()));
        if params.seq > slot.0 {
            *slot = (params.seq, update.state);
        }
    }
    assert_eq!(latest.len(), expected.len(), "every key published");
    for (key, state) in &expected {
        assert!(
            latest.get(key).is_some_and(|(_, s)| s == state),
            "{key:?}: the newest published state is not the final one"
        );
    }
}
