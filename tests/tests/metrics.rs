//! `GET /metrics` of the real `learner` binary with an embedded
//! param-server (one endpoint for both), scraped over HTTP while it runs:
//! the samples applied and the dead letters by reason equal those of an
//! uninterrupted in-process run over the same log, and the embedded
//! server's series are on the same page.
//!
//! The learner reads stdin, so it stays up after the log: a last
//! unknown-version sample far in the future releases every sample of the
//! log and ages every micro-batch out (as the end of a file would), and
//! fillers after it (buffered, never released) bring the record count to a
//! checkpoint, which exports the metrics.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posterior_learner::config::Config;
use posterior_learner::runner::run_bounded;
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogSpec, generate};
use posterior_tests::scrape::{label, logged_addr, scrape, series};
use posterior_tests::{binary, finish_within, log_file};

/// Records between checkpoints of the learner under test.
const CHECKPOINT_EVERY: usize = 1_000;

/// The config of a learner named `live` reading stdin (the test's
/// reference reads `log_path`), checkpointing every `every` records, with
/// its metrics endpoint on a free port.
fn stdin_config(dir: &Path, log_path: &Path, every: usize) -> String {
    let file_source = format!(
        "kind = \"file\"\npath = \"{}\"\nformat = \"jsonl\"",
        log_path.display()
    );
    let text = learner_toml(dir, "live", Source::File(log_path), 5_000, None)
        .replace(&file_source, "kind = \"stdin\"\nformat = \"jsonl\"")
        .replace(
            "checkpoint_every_records = 5000",
            &format!("checkpoint_every_records = {every}"),
        );
    format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n")
}

/// Starts `learner run` on the config `text` (written to `live.toml` in
/// `dir`) with a piped stdin, `env` set, and its stderr in `live.log`;
/// returns the child, the log's path and the metrics address it logged.
fn spawn_live(dir: &Path, text: &str, env: &[(&str, &str)]) -> (Child, PathBuf, SocketAddr) {
    let config_path = dir.join("live.toml");
    std::fs::write(&config_path, text).unwrap();
    let learner_log = dir.join("live.log");
    let child = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&config_path)
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(log_file(&learner_log))
        .spawn()
        .unwrap();
    let addr = logged_addr(&learner_log, "metrics listening on ");
    (child, learner_log, addr)
}

#[test]
fn applied_and_dead_letters_by_reason_match_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("samples.jsonl");
    let (log, injected) = generate(LogSpec {
        records: 8_000,
        docs: 300,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 11,
    });
    std::fs::write(&log_path, &log).unwrap();
    assert!(injected.late > 0 && injected.poison > 0 && injected.unknown_version > 0);

    // The reference: the same log as a file, in process, to its end.
    let reference = learner_toml(
        dir.path(),
        "reference",
        Source::File(&log_path),
        5_000,
        None,
    );
    let started = Instant::now();
    let summary = run_bounded(&Config::from_toml(&reference).unwrap()).unwrap();
    // The shutdown (a final synced checkpoint and a flush) takes time, and
    // is part of the run.
    assert!(
        summary.shutdown > Duration::ZERO && summary.shutdown <= started.elapsed(),
        "shutdown {:?} within the run",
        summary.shutdown
    );

    // The learner under test: stdin, the endpoint and the server on free
    // ports.
    let text = format!(
        "{}\n[param_server]\nlisten = \"127.0.0.1:0\"\n",
        stdin_config(dir.path(), &log_path, CHECKPOINT_EVERY)
    );
    let (mut child, learner_log, addr) = spawn_live(dir.path(), &text, &[]);

    let records = log.lines().count();
    let far = 1_800_000_000_000_i64;
    let sentinel = format!(
        "{{\"doc_id\": 1, \"version\": \"sentinel\", \"event_time_ms\": {far}, \"labels\": {{\"click\": 0}}}}\n"
    );
    let fillers = CHECKPOINT_EVERY - (records + 1) % CHECKPOINT_EVERY;
    let filler = sentinel.replace(&far.to_string(), &(far + 10_000).to_string());
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(log.as_bytes()).unwrap();
    stdin.write_all(sentinel.as_bytes()).unwrap();
    stdin.write_all(filler.repeat(fillers).as_bytes()).unwrap();
    stdin.flush().unwrap();

    // The checkpoint at the last filler exports everything before it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let page = loop {
        let page = scrape(addr);
        let buffered = series(&page, "posterior_learner_reorder_buffered_samples");
        if buffered.get("").copied() == Some(fillers as f64) {
            break page;
        }
        assert!(Instant::now() < deadline, "never caught up:\n{page}");
        std::thread::sleep(Duration::from_millis(50));
    };

    let applied = series(&page, "posterior_learner_samples_applied_total");
    assert_eq!(
        applied.values().sum::<f64>(),
        summary.counters.applied as f64,
        "{page}"
    );
    for version in ["beta", "logistic"] {
        let n = applied[&format!("version=\"{version}\"")];
        assert!(n > 0.0, "{version}: {page}");
    }
    // Dead letters by version and reason: summed by reason, those of the
    // reference; a registered version's name only where the record named
    // one.
    let mut dead: BTreeMap<String, f64> = BTreeMap::new();
    for (labels, n) in series(&page, "posterior_learner_dead_letters_total") {
        let reason = label(&labels, "reason").unwrap();
        let version = label(&labels, "version").unwrap();
        match reason {
            "undecodable" | "unknown_version" => assert_eq!(version, "", "{labels}"),
            _ => assert!(["beta", "logistic"].contains(&version), "{labels}"),
        }
        *dead.entry(reason.to_owned()).or_default() += n;
    }
    let mut expected = summary.counters.dead.clone();
    *expected.entry("unknown_version").or_default() += 1; // the sentinel
    let expected: BTreeMap<String, f64> = expected
        .into_iter()
        .map(|(reason, n)| (reason.to_owned(), n as f64))
        .collect();
    assert_eq!(dead, expected, "{page}");
    assert_eq!(
        expected["undecodable"], injected.poison as f64,
        "the log's poison lines"
    );
    assert!(expected["late"] > 0.0, "the log's late samples: {page}");
    // Every applied key was published (stdin event times are old: the
    // latencies are large, their count is what is checked).
    let published = series(&page, "posterior_learner_update_latency_seconds_count");
    assert!(published[""] >= 1.0, "{page}");
    let batches = series(&page, "posterior_learner_micro_batch_size_samples_sum");
    assert_eq!(batches[""], summary.counters.applied as f64, "{page}");
    let checkpoints = series(&page, "posterior_learner_checkpoint_write_seconds_count");
    assert!(checkpoints[""] >= 1.0, "{page}");
    // Each write first waited for its deliveries (none to wait for here).
    let delivered = series(&page, "posterior_learner_checkpoint_delivery_seconds_count");
    assert_eq!(delivered[""], checkpoints[""], "{page}");

    // The embedded server's series on the same page: it serves every key
    // the learner has, once the feed has applied the last publication.
    let learner_keys = series(&page, "posterior_learner_keys");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = scrape(addr);
        let served = series(&page, "posterior_param_server_keys");
        if served.get("version=\"beta\"") == learner_keys.get("version=\"beta\"")
            && served.get("version=\"logistic\"") == learner_keys.get("version=\"logistic\"")
        {
            let fed = series(&page, "posterior_param_server_feed_updates_total");
            assert!(fed["outcome=\"applied\""] > 0.0, "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "{learner_keys:?} vs\n{page}");
        std::thread::sleep(Duration::from_millis(50));
    }

    drop(stdin);
    let status = finish_within(&mut child, Duration::from_secs(120), &learner_log);
    assert!(status.success(), "{status:?}");
}

/// Records between checkpoints of the two quiet-pipe tests below.
const QUIET_EVERY: usize = 100;

/// Starts a stdin learner (`env` set) that checkpoints every
/// [`QUIET_EVERY`] records, writes it a log of two checkpoints' worth and
/// waits until it has taken both, with stdin left open and quiet; returns
/// the child, its log and its stdin.
fn two_checkpoints_then_quiet(
    dir: &Path,
    seed: u64,
    env: &[(&str, &str)],
) -> (Child, PathBuf, std::process::ChildStdin) {
    let (log, _) = generate(LogSpec {
        records: 2 * QUIET_EVERY,
        docs: 50,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed,
    });
    let log_path = dir.join("samples.jsonl");
    std::fs::write(&log_path, &log).unwrap();
    let text = stdin_config(dir, &log_path, QUIET_EVERY);
    let (mut child, learner_log, addr) = spawn_live(dir, &text, env);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(log.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = scrape(addr);
        // Checkpoints taken (each observes how long it blocked ingestion).
        let taken = series(&page, "posterior_learner_checkpoint_blocked_seconds_count");
        if taken.get("").copied() == Some(2.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the second checkpoint was never taken:\n{page}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (child, learner_log, stdin)
}

/// A checkpoint that falls due while the previous one is still being
/// written is put off to a later record, but stdin may give no later
/// record: the learner must take it anyway. Each write is slowed down
/// (`POSTERIOR_SLOW_WRITE_MS`) so the second checkpoint always finds the
/// first one in flight.
#[test]
fn a_stdin_learner_takes_a_checkpoint_put_off_by_a_running_write() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, learner_log, stdin) =
        two_checkpoints_then_quiet(dir.path(), 3, &[("POSTERIOR_SLOW_WRITE_MS", "500")]);
    drop(stdin);
    let status = finish_within(&mut child, Duration::from_secs(60), &learner_log);
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&learner_log).unwrap()
    );
}

/// SIGTERM reaches a stdin learner whose pipe is open and quiet: stdin is
/// read on a thread of its own, so the run loop idles instead of blocking
/// in a read, sees the stop, writes its last checkpoint and exits 0 with
/// every record it read counted, while the pipe is still open.
#[test]
fn a_stdin_learner_with_a_quiet_pipe_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, learner_log, stdin) = two_checkpoints_then_quiet(dir.path(), 5, &[]);
    let pid = child.id().to_string();
    let signalled = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(signalled.success(), "SIGTERM to {pid}");
    let status = finish_within(&mut child, Duration::from_secs(30), &learner_log);
    let text = std::fs::read_to_string(&learner_log).unwrap();
    assert!(status.success(), "{status:?}\n{text}");
    let summary = format!("{} records (fresh state), 3 checkpoints", 2 * QUIET_EVERY);
    assert!(text.contains(&summary), "no `{summary}` in\n{text}");
    // The pipe was open all along.
    drop(stdin);
}

/// A checkpoint write that fails at a SIGUSR1 savepoint ends the run, as
/// a failed write does at any other checkpoint: its changes are marked
/// stored, so going on would lose them from every later checkpoint. Only
/// the savepoint itself (here: no `[savepoints]` dir) may fail and leave
/// the run going.
#[test]
fn a_failed_checkpoint_write_at_a_signal_savepoint_ends_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = generate(LogSpec {
        records: 50,
        docs: 10,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 7,
    });
    let log_path = dir.path().join("samples.jsonl");
    std::fs::write(&log_path, &log).unwrap();
    // No record-counted checkpoint comes first: the signal's is write 1.
    let text = stdin_config(dir.path(), &log_path, 1_000_000);
    let (mut child, learner_log, _) =
        spawn_live(dir.path(), &text, &[("POSTERIOR_FAIL_WRITE", "1")]);
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(log.as_bytes()).unwrap();
    stdin.flush().unwrap();
    let pid = child.id().to_string();
    let signalled = Command::new("kill").args(["-USR1", &pid]).status().unwrap();
    assert!(signalled.success(), "SIGUSR1 to {pid}");
    // The pipe stays open: only the failure can end the run.
    let status = finish_within(&mut child, Duration::from_secs(30), &learner_log);
    let text = std::fs::read_to_string(&learner_log).unwrap();
    assert!(!status.success(), "{status:?}\n{text}");
    assert!(text.contains("injected write failure"), "{text}");
    drop(stdin);
}
