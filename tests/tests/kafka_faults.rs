//! The learner against a misbehaving broker: a broker restart mid-run (its
//! data kept in SQLite) only pauses the learner, and a broker that lost the
//! records a checkpoint points at stops the learner loudly.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::process::{Command, Stdio};
use std::time::Duration;

use posterior_learner::config::Config;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogSpec, generate_records};
use posterior_tests::oracle::{
    dump_store, first_difference, oracle, produce_samples, sorted_lines,
};
use posterior_tests::{binary, finish_within, log_file};

const PARTITIONS: u32 = 2;

fn write_config(dir: &std::path::Path, bootstrap: &str) -> (std::path::PathBuf, Config) {
    write_config_with(dir, bootstrap, |text| text)
}

fn write_config_with(
    dir: &std::path::Path,
    bootstrap: &str,
    edit: impl FnOnce(String) -> String,
) -> (std::path::PathBuf, Config) {
    let path = dir.join("learner.toml");
    let text = edit(learner_toml(
        dir,
        "learner",
        Source::Kafka(bootstrap),
        10_000,
        None,
    ));
    std::fs::write(&path, &text).unwrap();
    (path, Config::from_toml(&text).unwrap())
}

#[test]
fn a_broker_restart_pauses_the_learner_and_it_ends_equal_to_the_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")));
    broker.create_topic("samples", PARTITIONS);
    let (records, _) = generate_records(LogSpec {
        records: 150_000,
        docs: 2_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 5,
    });
    produce_samples(&broker, &records, PARTITIONS);
    let (config_path, config) = write_config(dir.path(), &broker.bootstrap());
    let (expected, expected_dead) = oracle(&config, &records, PARTITIONS);

    let stderr = std::fs::File::create(dir.path().join("learner.log")).unwrap();
    let mut child = Command::new(binary("learner"))
        .args(["run", "--until-end", "--config"])
        .arg(&config_path)
        .stderr(Stdio::from(stderr))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1_500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the learner finished before the outage; make the log longer"
    );
    broker.kill();
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the learner must wait for the broker, not exit"
    );
    broker.restart();
    let status = finish_within(
        &mut child,
        Duration::from_secs(300),
        &dir.path().join("learner.log"),
    );
    let log = std::fs::read_to_string(dir.path().join("learner.log")).unwrap();
    assert!(status.success(), "learner failed: {log}");

    let got = dump_store(&config);
    assert!(got == expected, "{}", first_difference(&got, &expected));
    let got_dead = std::fs::read_to_string(config.dead_letter.path().unwrap()).unwrap();
    assert_eq!(sorted_lines(&got_dead), sorted_lines(&expected_dead));
}

#[test]
fn a_broker_that_lost_the_checkpointed_records_stops_the_learner_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", 1);
    let (records, _) = generate_records(LogSpec {
        records: 5_000,
        docs: 100,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 8,
    });
    produce_samples(&broker, &records, 1);
    let (config_path, config) = write_config(dir.path(), &broker.bootstrap());
    let learner = binary("learner");
    let run = || {
        Command::new(&learner)
            .args(["run", "--until-end", "--config"])
            .arg(&config_path)
            .output()
            .unwrap()
    };
    assert!(run().status.success());
    let before = dump_store(&config);

    // The in-memory broker comes back empty: the topic is recreated with
    // fewer records than the checkpoint has consumed.
    broker.restart();
    broker.create_topic("samples", 1);
    produce_samples(&broker, &records[..100], 1);
    assert_eq!(broker.high_watermarks("samples", 1), vec![100]);
    let output = run();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "must refuse to start: {stderr}");
    assert!(
        stderr.contains("partition 0") && stderr.contains("records were lost"),
        "unclear error: {stderr}"
    );
    assert_eq!(dump_store(&config), before, "the state is untouched");
}

#[test]
fn a_tiny_reorder_buffer_throttles_the_partitions_but_never_deadlocks() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", 4);
    let (records, _) = generate_records(LogSpec {
        records: 30_000,
        docs: 500,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 21,
    });
    produce_samples(&broker, &records, 4);
    let (config_path, config) = write_config_with(dir.path(), &broker.bootstrap(), |text| {
        // Aligned reads keep the buffer near the out-of-orderness (200
        // records here) plus the alignment's slack: 100 fills it.
        text.replace("reorder_capacity = 100000", "reorder_capacity = 100")
    });
    let (expected, _) = oracle(&config, &records, 4);
    let log_path = dir.path().join("learner.log");
    let mut child = Command::new(binary("learner"))
        .args(["run", "--until-end", "--config"])
        .arg(&config_path)
        .stderr(log_file(&log_path))
        .spawn()
        .unwrap();
    let status = finish_within(&mut child, Duration::from_secs(180), &log_path);
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(status.success(), "{log}");
    let throttles: u64 = log
        .split(" throttles;")
        .next()
        .and_then(|head| head.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(throttles > 0, "the buffer never filled: {log}");
    let got = dump_store(&config);
    assert!(got == expected, "{}", first_difference(&got, &expected));
}
