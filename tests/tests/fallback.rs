//! The restore of last resort: a learner with neither live state nor a
//! savepoint seeds its versions from the `params` topic the param-servers
//! serve, bit for bit what the last learner published — a version forked
//! at run time included, registered from the topic's announcements — and
//! checkpoints that at once; a learner that has state never consults it;
//! a learner of some partitions takes only their docs, and replays onto
//! them only the admin commands stamped after what they had applied.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::process::Command;

use posterior_learner::config::Config;
use posterior_learner::partitioning::partition_of;
use posterior_proto::v1::{self, ControlCommand, control_command};
use posterior_tests::binary;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogSpec, generate_records};
use posterior_tests::oracle::{dump_store, first_difference, produce_samples};
use prost::Message as _;

const PARTITIONS: u32 = 2;

fn run(config_path: &std::path::Path, until_end: bool) -> String {
    let output = learner(config_path, until_end).output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    stderr
}

fn learner(config_path: &std::path::Path, until_end: bool) -> Command {
    let mut cmd = Command::new(binary("learner"));
    cmd.arg("run");
    if until_end {
        cmd.arg("--until-end");
    }
    cmd.arg("--config").arg(config_path);
    cmd
}

#[test]
fn a_learner_without_state_or_savepoint_starts_from_the_served_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    broker.create_topic("params", PARTITIONS);
    broker.create_topic("control", 1);
    let (records, _) = generate_records(LogSpec {
        records: 40_000,
        docs: 1_500,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 3,
    });
    produce_samples(&broker, &records, PARTITIONS);
    // Halfway through the log (~40 s of event time), `beta` is forked
    // into a version the config does not name.
    produce_command(&broker, fork("fork-runtime", 20_000, "beta-runtime"));

    // The learner that published, and whose state is then lost.
    let first_path = dir.path().join("first.toml");
    let first_text = learner_toml(
        dir.path(),
        "first",
        Source::Kafka(&broker.bootstrap()),
        5_000,
        Some(&broker.bootstrap()),
    ) + &format!("\n[control]\nbrokers = \"{}\"\n", broker.bootstrap());
    std::fs::write(&first_path, &first_text).unwrap();
    run(&first_path, true);
    let published = dump_store(&Config::from_toml(&first_text).unwrap());
    assert!(
        published.contains("\"beta-runtime\""),
        "the fork has keys to seed"
    );

    // Its replacement: no state, no savepoint, an input with nothing new.
    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let second_text = learner_toml(dir.path(), "second", Source::File(&empty), 5_000, None)
        + &format!("\n[fallback.kafka]\nbrokers = \"{}\"\n", broker.bootstrap());
    let second_path = dir.path().join("second.toml");
    std::fs::write(&second_path, &second_text).unwrap();
    let stderr = run(&second_path, false);
    assert!(
        stderr.contains("had neither live state nor savepoint"),
        "{stderr}"
    );
    let second = Config::from_toml(&second_text).unwrap();
    let got = dump_store(&second);
    assert!(got == published, "{}", first_difference(&got, &published));

    // With state, the served parameters are never consulted again.
    let again = run(&second_path, false);
    assert!(!again.contains("seeded"), "{again}");
    assert!(again.contains("resumed from checkpoint"), "{again}");

    // A seed is checkpointed before the first record: a learner that
    // crashes right after it resumes from it instead of seeding again
    // from served parameters that may have moved on.
    let one = dir.path().join("one.jsonl");
    std::fs::write(&one, records_jsonl(&records[..10])).unwrap();
    let third_text = learner_toml(dir.path(), "third", Source::File(&one), 5_000, None)
        + &format!("\n[fallback.kafka]\nbrokers = \"{}\"\n", broker.bootstrap());
    let third_path = dir.path().join("third.toml");
    std::fs::write(&third_path, &third_text).unwrap();
    let crashed = learner(&third_path, false)
        .env("POSTERIOR_FAILPOINT", "after_ingest:1")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the fail point aborts");
    let after = run(&third_path, false);
    assert!(after.contains("resumed from checkpoint"), "{after}");
    assert!(!after.contains("seeded"), "{after}");

    // A learner of partition 0 only takes partition 0's docs, and does not
    // replay the control topic's commands stamped within what the served
    // parameters had applied (here a fork, which would copy the seeded
    // `beta` into a new version). A command stamped later — an admin call
    // not applied yet when the state was lost — it schedules as any
    // learner would: this fork, stamped past the log's end, is applied
    // onto the seeded parameters when the bounded run ends.
    produce_command(&broker, fork("fork-before", 0, "beta-b"));
    produce_command(&broker, fork("fork-ahead", 10_000_000, "beta-ahead"));
    let fourth_text = learner_toml(
        dir.path(),
        "fourth",
        Source::Kafka(&broker.bootstrap()),
        5_000,
        None,
    )
    .replace(
        "topic = \"samples\"",
        "topic = \"samples\"\npartitions = [0]\nstart = \"latest\"",
    ) + &format!(
        "\n[fallback.kafka]\nbrokers = \"{0}\"\n\n[control]\nbrokers = \"{0}\"\n",
        broker.bootstrap()
    );
    let fourth_path = dir.path().join("fourth.toml");
    std::fs::write(&fourth_path, &fourth_text).unwrap();
    run(&fourth_path, true);
    let dumped = dump_store(&Config::from_toml(&fourth_text).unwrap());
    let (ahead, got): (Vec<&str>, Vec<&str>) = dumped
        .lines()
        .partition(|line| json(line)["version"] == "beta-ahead");
    let got: String = got.iter().map(|line| format!("{line}\n")).collect();
    let expected: String = published
        .lines()
        .filter(|line| {
            let doc = json(line)["doc_id"].as_u64().unwrap();
            partition_of(doc, PARTITIONS) == 0
        })
        .map(|line| format!("{line}\n"))
        .collect();
    assert!(!expected.is_empty() && expected.len() < published.len());
    assert!(got == expected, "{}", first_difference(&got, &expected));
    // The fork copied the seeded `beta` keys, state for state.
    let mut forked: Vec<serde_json::Value> = expected
        .lines()
        .map(json)
        .filter(|line| line["version"] == "beta")
        .map(|mut line| {
            line["version"] = "beta-ahead".into();
            line
        })
        .collect();
    let mut ahead: Vec<serde_json::Value> = ahead.into_iter().map(json).collect();
    let by_doc = |line: &serde_json::Value| line["doc_id"].as_u64();
    forked.sort_by_key(by_doc);
    ahead.sort_by_key(by_doc);
    assert!(!forked.is_empty());
    assert_eq!(
        ahead.len(),
        forked.len(),
        "keys of the fork stamped ahead, applied on the seed"
    );
    assert!(ahead == forked, "the forked states differ from the seed's");
}

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap()
}

/// A fork of `beta` into `to`, `at_ms` after the log's start.
fn fork(id: &str, at_ms: i64, to: &str) -> ControlCommand {
    ControlCommand {
        command_id: id.into(),
        effective_event_time_ms: 1_700_000_000_000 + at_ms,
        issued_by: "fallback-test".into(),
        command: Some(control_command::Command::ForkVersion(
            v1::ForkVersionRequest {
                from: "beta".into(),
                to: to.into(),
                overrides: None,
            },
        )),
    }
}

/// Produces `command` to the `control` topic, keyed by its id.
fn produce_command(broker: &Broker, command: ControlCommand) {
    broker.produce(
        "control",
        [(
            0,
            command.command_id.as_bytes().to_vec(),
            command.encode_to_vec().as_slice(),
        )],
    );
}

/// The JSONL lines of `records`.
fn records_jsonl(records: &[posterior_tests::log::LogRecord]) -> String {
    records.iter().map(|r| r.jsonl.as_str()).collect()
}
