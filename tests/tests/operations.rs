//! Operations: JSON logs of both binaries (`[log] format = "json"`), and
//! the learner's liveness watchdog (`[source] stall_timeout_ms`): a learner
//! whose broker dies with records it has not consumed exits with the stall
//! code; an idle one keeps running, even when the broker goes away.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posterior_learner::watchdog::STALL_EXIT_CODE;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogSpec, generate, generate_records};
use posterior_tests::oracle::produce_samples;
use posterior_tests::{binary, finish_within, log_file};

/// Every line of `stderr` as a JSON object with the fields every event
/// carries.
fn json_lines(stderr: &str) -> Vec<serde_json::Value> {
    assert!(!stderr.trim().is_empty(), "no log lines");
    stderr
        .lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
            for key in ["timestamp", "level", "target", "message"] {
                assert!(value.get(key).is_some(), "no {key:?} in {line}");
            }
            value
        })
        .collect()
}

fn message(line: &serde_json::Value) -> &str {
    line["message"].as_str().unwrap()
}

#[test]
fn a_learner_with_json_logs_writes_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let samples = dir.path().join("samples.jsonl");
    let (log, _) = generate(LogSpec {
        records: 2_000,
        docs: 50,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 31,
    });
    std::fs::write(&samples, log).unwrap();
    let text = learner_toml(dir.path(), "learner", Source::File(&samples), 500, None);
    let config = dir.path().join("learner.toml");
    std::fs::write(&config, format!("{text}\n[log]\nformat = \"json\"\n")).unwrap();
    let output = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let lines = json_lines(&stderr);
    let summary = lines
        .iter()
        .find(|l| message(l).contains("records (fresh state)"))
        .unwrap_or_else(|| panic!("no run summary in {stderr}"));
    assert_eq!(summary["level"], "INFO");
    assert!(message(summary).starts_with("2000 records"), "{summary}");

    // A value that is neither is refused before anything runs, in plain
    // text (no logger yet), naming the key.
    std::fs::write(&config, format!("{text}\n[log]\nformat = \"xml\"\n")).unwrap();
    let output = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("log.format: unknown variant `xml`"),
        "{stderr}"
    );
}

/// Sends SIGTERM to `child`.
fn terminate(child: &Child) {
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
}

/// Waits until `log` has a line containing `needle`.
fn wait_for_line(log: &Path, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(Instant::now() < deadline, "no {needle:?} line in:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_param_server_with_json_logs_from_the_environment_writes_one_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("param-server.toml");
    std::fs::write(&config, "listen = \"127.0.0.1:0\"\n").unwrap();
    let log = dir.path().join("param-server.log");
    let mut child = Command::new(binary("param-server"))
        .arg("--config")
        .arg(&config)
        .env("RUST_LOG", "info")
        .env("POSTERIOR_PARAM_SERVER__LOG__FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(log_file(&log))
        .spawn()
        .unwrap();
    let listening = wait_for_line(&log, "param-server listening", Duration::from_secs(30));
    let listening: serde_json::Value = serde_json::from_str(&listening).unwrap();
    // The event's fields are top-level keys.
    assert!(
        listening["local"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{listening}"
    );
    terminate(&child);
    let status = finish_within(&mut child, Duration::from_secs(30), &log);
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{stderr}");
    let lines = json_lines(&stderr);
    assert!(
        lines.iter().any(|l| message(l) == "shutting down"),
        "{stderr}"
    );
}

const PARTITIONS: u32 = 2;

/// A learner config reading `samples` of `bootstrap` with the watchdog at
/// `stall_timeout_ms` and a small prefetch, so that a learner cut off from
/// its broker has few records left to consume.
fn watched_config(dir: &Path, bootstrap: &str, stall_timeout_ms: u64) -> PathBuf {
    let text = learner_toml(dir, "learner", Source::Kafka(bootstrap), 10_000, None).replace(
        "topic = \"samples\"",
        &format!(
            "topic = \"samples\"\nstall_timeout_ms = {stall_timeout_ms}\nidle_timeout_ms = 500\n\
             [source.properties]\n\"queued.min.messages\" = \"100\"\n\
             \"queued.max.messages.kbytes\" = \"64\"\n\"max.partition.fetch.bytes\" = \"16384\""
        ),
    );
    let path = dir.join("learner.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_learner(config: &Path, log: &Path) -> Child {
    Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(log_file(log))
        .spawn()
        .unwrap()
}

#[test]
fn a_learner_whose_broker_dies_with_records_left_exits_with_the_stall_code() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    let (records, _) = generate_records(LogSpec {
        records: 100_000,
        docs: 1_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 41,
    });
    produce_samples(&broker, &records, PARTITIONS);
    let stall_timeout = Duration::from_secs(3);
    let config = watched_config(
        dir.path(),
        &broker.bootstrap(),
        stall_timeout.as_millis() as u64,
    );
    let log = dir.path().join("learner.log");
    let mut child = start_learner(&config, &log);
    wait_for_line(&log, "liveness watchdog started", Duration::from_secs(60));
    std::thread::sleep(Duration::from_millis(300));
    broker.kill();
    let killed = Instant::now();
    // The verdict comes a timeout after the last record, plus a check
    // interval and a watermark query; the margin is for a loaded machine.
    let status = finish_within(&mut child, stall_timeout + Duration::from_secs(30), &log);
    let waited = killed.elapsed();
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        status.code(),
        Some(STALL_EXIT_CODE),
        "{status}; log:\n{text}"
    );
    assert!(waited >= stall_timeout, "exited {waited:?} after the kill");
    let stalled = text
        .lines()
        .find(|l| l.contains("consumption stalled"))
        .unwrap_or_else(|| panic!("no stall error in:\n{text}"));
    assert!(stalled.contains("ERROR"), "{stalled}");
    assert!(stalled.contains("records to consume"), "{stalled}");
}

#[test]
fn an_idle_learner_outlives_its_stall_timeout_even_when_the_broker_goes_away() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(Storage::Sqlite(dir.path().join("broker.db")));
    broker.create_topic("samples", PARTITIONS);
    let (records, _) = generate_records(LogSpec {
        records: 2_000,
        docs: 100,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 43,
    });
    produce_samples(&broker, &records, PARTITIONS);
    let config = watched_config(dir.path(), &broker.bootstrap(), 1_000);
    let log = dir.path().join("learner.log");
    let mut child = start_learner(&config, &log);
    wait_for_line(&log, "liveness watchdog started", Duration::from_secs(60));
    // Everything is consumed within a second or two; then idle for more
    // than the timeout.
    std::thread::sleep(Duration::from_secs(5));
    assert!(
        child.try_wait().unwrap().is_none(),
        "an idle learner exited"
    );
    // Caught up when the broker went away: nothing known is waiting.
    broker.kill();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        child.try_wait().unwrap().is_none(),
        "a caught-up learner exited when its broker went away"
    );
    broker.restart();
    terminate(&child);
    let status = finish_within(&mut child, Duration::from_secs(60), &log);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{status}; log:\n{text}");
    assert!(!text.contains("consumption stalled"), "{text}");
    assert!(text.contains("2000 records"), "not all consumed:\n{text}");
}
