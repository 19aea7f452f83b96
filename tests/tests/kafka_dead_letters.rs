//! Dead letters to a Kafka topic, at least once: a learner reading a log
//! with poison records, late samples, duplicates and unknown versions from
//! a broker is killed with SIGKILL and aborted at fail points (after its
//! letters were produced and before the checkpoint that covers them),
//! restarted each time, and the dead-letter topic must end holding exactly
//! the oracle's letters once keyed copies are merged — every repeat of a
//! key `partition/offset` carrying byte-identical JSON. And a dead-letter
//! topic whose broker dies under a live learner stops it before a
//! checkpoint that would cover undelivered letters: none is lost.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use posterior_learner::config::Config;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, dead_letters_to_topic, learner_toml};
use posterior_tests::log::{LogSpec, generate_records};
use posterior_tests::oracle::{
    dump_store, first_difference, oracle, produce_samples, sorted_lines,
};
use posterior_tests::{
    KillPlan, binary, finish_within, kill_then_finish, learner_until_end, log_file,
};

const PARTITIONS: u32 = 2;
const DEAD_PARTITIONS: u32 = 3;
const TOPIC: &str = "dead-letters";

#[test]
fn dead_letters_on_a_topic_survive_crashes_with_identical_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    broker.create_topic(TOPIC, DEAD_PARTITIONS);
    let (records, injected) = generate_records(LogSpec {
        records: 300_000,
        docs: 2_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 314,
    });
    produce_samples(&broker, &records, PARTITIONS);

    let (config_path, config) = write_config(dir.path(), &broker, &broker, "");
    assert_eq!(config.dead_letter.path(), None);
    let (expected_dump, expected_dead) = oracle(&config, &records, PARTITIONS);
    assert!(
        injected.poison > 0 && injected.late > 0 && injected.unknown_version > 0,
        "{injected:?}"
    );

    // Of every four rounds, one aborts after producing the letters of a
    // checkpoint and before writing it (so those letters are produced
    // again), one right after writing it (letters not yet delivered would
    // be lost), and two are killed with SIGKILL at a random moment. A
    // round with a fail point runs until it reaches it, however slow the
    // machine.
    let log = dir.path().join("learner.log");
    let crashes = kill_then_finish(
        &config_path,
        true,
        &log,
        &KillPlan {
            rounds: 12,
            failpoints: &["before_checkpoint:10000", "after_checkpoint:10000"],
            every: 4,
            min_life: Duration::from_millis(200),
            // Short enough that a fast build is still running at the
            // SIGKILLs of all six rounds without a fail point.
            max_life: Duration::from_millis(1_000),
            seed: 5,
            failpoint_life: Duration::from_secs(60),
        },
        Duration::from_secs(300),
    );
    assert!(
        crashes.mid_run() >= 5 && crashes.killed >= 2 && crashes.aborted >= 4,
        "too few crashes landed mid-run: {crashes:?}"
    );
    let got_dump = dump_store(&config);
    assert!(
        got_dump == expected_dump,
        "state differs: {}",
        first_difference(&got_dump, &expected_dump)
    );

    let (got, repeats) = letters_on_topic(&broker, DEAD_PARTITIONS);
    eprintln!("{crashes:?}, {repeats} repeated dead letters");
    assert!(
        repeats > 0,
        "no letter was produced twice: no replay was tested"
    );
    let expected = sorted_lines(&expected_dead);
    assert!(
        got == expected,
        "distinct dead letters differ from the oracle's: {}",
        first_difference(&got, &expected)
    );
}

#[test]
fn a_dead_letter_topic_that_fails_stops_the_learner_before_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let samples = Broker::start(Storage::Memory);
    samples.create_topic("samples", 1);
    let mut dead = Broker::start(Storage::Sqlite(dir.path().join("dead.db")));
    dead.create_topic(TOPIC, 1);
    let (records, _) = generate_records(LogSpec {
        records: 150_000,
        docs: 2_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 42,
    });
    let (before, after) = records.split_at(100_000);
    produce_samples(&samples, before, 1);
    let (config_path, config) =
        write_config(dir.path(), &samples, &dead, "flush_timeout_ms = 2000\n");
    let (expected_dump, expected_dead) = oracle(&config, &records, 1);

    // A live learner (it waits for more records at the end of the topic),
    // mid-run: letters of its first checkpoints are on the topic.
    let log = dir.path().join("learner.log");
    let mut child = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&config_path)
        .stderr(log_file(&log))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while dead.high_watermarks(TOPIC, 1)[0] == 0 {
        assert!(
            Instant::now() < deadline,
            "no dead letter reached the topic"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the learner stopped early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The letters of the next checkpoints cannot be delivered: the
    // learner must stop before writing a checkpoint that covers them,
    // not lose them.
    dead.kill();
    produce_samples(&samples, after, 1);
    let status = finish_within(&mut child, Duration::from_secs(120), &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!status.success(), "the learner went on without its topic");
    assert!(
        text.contains("dead letters") && text.contains(TOPIC),
        "unclear error: {text}"
    );

    dead.restart();
    let mut child = learner_until_end(&config_path, &log).spawn().unwrap();
    let status = finish_within(&mut child, Duration::from_secs(300), &log);
    assert!(status.success(), "see {}", log.display());
    let got_dump = dump_store(&config);
    assert!(
        got_dump == expected_dump,
        "state differs: {}",
        first_difference(&got_dump, &expected_dump)
    );
    let (got, _) = letters_on_topic(&dead, 1);
    let expected = sorted_lines(&expected_dead);
    assert!(
        got == expected,
        "distinct dead letters differ from the oracle's: {}",
        first_difference(&got, &expected)
    );
}

/// Writes the config of a learner reading `samples` and sending its dead
/// letters to [`TOPIC`] on `dead`, with `extra` lines in `[dead_letter]`.
fn write_config(dir: &Path, samples: &Broker, dead: &Broker, extra: &str) -> (PathBuf, Config) {
    let text = dead_letters_to_topic(
        &learner_toml(
            dir,
            "learner",
            Source::Kafka(&samples.bootstrap()),
            5_000,
            None,
        ),
        &dead.bootstrap(),
        TOPIC,
    )
    .replace(
        &format!("topic = \"{TOPIC}\"\n"),
        &format!("topic = \"{TOPIC}\"\n{extra}"),
    );
    let path = dir.join("learner.toml");
    std::fs::write(&path, &text).unwrap();
    (path, Config::from_toml(&text).unwrap())
}

/// The distinct letters of the dead-letter topic as sorted JSONL, and how
/// many records repeated a key. Checks that each record is keyed
/// `partition/offset`, sits on partition `partition mod n`, and repeats
/// its key's first value byte for byte.
fn letters_on_topic(broker: &Broker, partitions: u32) -> (String, usize) {
    let mut by_key: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut repeats = 0;
    for (partition, key, value) in broker.consume_all(TOPIC, partitions) {
        let letter: serde_json::Value = serde_json::from_slice(&value).unwrap();
        let (source_partition, offset) = (
            letter["partition"].as_u64().unwrap(),
            letter["offset"].as_u64().unwrap(),
        );
        assert_eq!(key, format!("{source_partition}/{offset}").into_bytes());
        assert_eq!(
            u64::from(partition),
            source_partition % u64::from(partitions)
        );
        match by_key.get(&key) {
            Some(first) => {
                assert!(
                    *first == value,
                    "{} repeated with different bytes",
                    String::from_utf8_lossy(&key)
                );
                repeats += 1;
            }
            None => {
                by_key.insert(key, value);
            }
        }
    }
    let text: String = by_key
        .into_values()
        .map(|v| String::from_utf8(v).unwrap() + "\n")
        .collect();
    (sorted_lines(&text), repeats)
}
