//! The central test: the learner runs as a child process over a generated
//! log with defects, is killed with SIGKILL at random moments and aborted
//! at fail points (before a checkpoint's write, between its write and its
//! flush, after it), restarted each time, and must end with exactly the
//! state and the dead letters of an uninterrupted run — bit for bit. Also:
//! an abort inside a run's last checkpoint, and a corrupt store.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use posterior_learner::config::Config;
use posterior_learner::runner::{open_engine, run_bounded};
use posterior_learner::store::RocksStore;
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{Injected, LogSpec, generate};
use posterior_tests::oracle::assert_same_end;
use posterior_tests::{KillPlan, binary, kill_then_finish, kill_then_finish_with_env};

fn config_text(dir: &Path, log: &Path, name: &str) -> String {
    learner_toml(dir, name, Source::File(log), 5_000, None)
}

/// Writes a generated log (`records` records over `docs` docs per version,
/// seed `seed`) to `dir/samples.jsonl`; returns its path and the defects
/// injected.
fn write_log(dir: &Path, records: usize, docs: u64, seed: u64) -> (PathBuf, Injected) {
    let log = dir.join("samples.jsonl");
    let (text, injected) = generate(LogSpec {
        records,
        docs,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed,
    });
    std::fs::write(&log, text).unwrap();
    (log, injected)
}

fn dump(config: &Config) -> String {
    let store = RocksStore::open(&config.state.dir).unwrap();
    let (engine, _, _) = open_engine(config, &store).unwrap();
    let mut out = Vec::new();
    posterior_learner::dump::dump(&engine, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn killed_and_restarted_learner_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that the victim is still running at ten or more of its
    // deadlines however fast it gets: at 200 000 records a faster build
    // finished the log early and only 9 SIGKILLs landed.
    let (log, injected) = write_log(dir.path(), 300_000, 5_000, 42);

    // The reference: one uninterrupted run, in process.
    let reference_path = dir.path().join("reference.toml");
    std::fs::write(&reference_path, config_text(dir.path(), &log, "reference")).unwrap();
    let reference = Config::from_toml(&std::fs::read_to_string(&reference_path).unwrap()).unwrap();
    let summary = run_bounded(&reference).unwrap();
    let dead = &summary.counters.dead;
    assert_eq!(
        dead.get("undecodable").copied().unwrap_or(0),
        injected.poison
    );
    assert_eq!(
        dead.get("unknown_version").copied().unwrap_or(0),
        injected.unknown_version
    );
    assert!(
        dead.get("late").copied().unwrap_or(0) >= injected.late * 9 / 10,
        "{dead:?} vs {injected:?}"
    );
    assert!(
        dead.get("duplicate").copied().unwrap_or(0) >= injected.duplicates / 2,
        "{dead:?}"
    );
    let expected_dump = dump(&reference);
    assert!(
        expected_dump.lines().count() >= 9_000,
        "≥ 10 k keys expected"
    );

    // The victim: a child process, killed again and again.
    let victim_path = dir.path().join("victim.toml");
    std::fs::write(&victim_path, config_text(dir.path(), &log, "victim")).unwrap();
    let crashes = kill_then_finish(
        &victim_path,
        false,
        &dir.path().join("victim.log"),
        &KillPlan {
            rounds: 14,
            failpoints: &[
                "before_checkpoint:10000",
                "after_checkpoint:20000",
                "after_ingest:30000",
                "mid_checkpoint:15000",
            ],
            every: 6,
            min_life: Duration::from_millis(100),
            max_life: Duration::from_millis(1_200),
            seed: 7,
            failpoint_life: Duration::from_secs(60),
        },
        Duration::from_secs(300),
    );
    eprintln!("of 14 runs: {crashes:?}");
    assert!(
        crashes.mid_run() >= 10 && crashes.killed >= 3 && crashes.aborted >= 6,
        "too few crashes landed mid-run: {crashes:?}"
    );
    let victim = Config::from_toml(&std::fs::read_to_string(&victim_path).unwrap()).unwrap();
    assert_same_end(&victim, &reference, &format!("after {crashes:?}"));
}

/// Checkpoints put off behind slow writes (`POSTERIOR_SLOW_WRITE_MS`)
/// take changed keys' states ahead of them (`[state] store_ahead_above`
/// set low, so nearly every record's key is taken ahead, often twice
/// before its checkpoint): a learner killed among such checkpoints, and
/// aborted just before and after their writes, still ends bit-identical
/// to an uninterrupted run without slow writes.
#[test]
fn keys_stored_ahead_of_put_off_checkpoints_survive_crashes() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that a run outlives its kill: with 80 000 records a
    // fast machine finished the file within a round's life, and the later
    // rounds, with nothing left to read, neither died mid-run nor reached
    // their fail points (2 of 3 runs in a row on 2026-12-03).
    let (log, _) = write_log(dir.path(), 160_000, 2_000, 43);
    let config_text = |name: &str| {
        let text = learner_toml(dir.path(), name, Source::File(&log), 1_000, None);
        let with = text.replace(
            "checkpoint_every_ms = 1000\n",
            "checkpoint_every_ms = 1000\nstore_ahead_above = 16\n",
        );
        assert_ne!(text, with, "the [state] table takes the setting");
        with
    };
    let reference_path = dir.path().join("reference.toml");
    std::fs::write(&reference_path, config_text("reference")).unwrap();
    let reference = Config::from_toml(&std::fs::read_to_string(&reference_path).unwrap()).unwrap();
    run_bounded(&reference).unwrap();

    let victim_path = dir.path().join("victim.toml");
    std::fs::write(&victim_path, config_text("victim")).unwrap();
    let victim_log = dir.path().join("victim.log");
    let crashes = kill_then_finish_with_env(
        &victim_path,
        false,
        &victim_log,
        &KillPlan {
            rounds: 6,
            failpoints: &["before_checkpoint:15000", "after_checkpoint:25000"],
            every: 3,
            min_life: Duration::from_millis(150),
            max_life: Duration::from_millis(900),
            seed: 11,
            failpoint_life: Duration::from_secs(60),
        },
        Duration::from_secs(120),
        &[("POSTERIOR_SLOW_WRITE_MS", "200")],
    );
    eprintln!("of 6 runs: {crashes:?}");
    assert!(
        crashes.mid_run() >= 3 && crashes.aborted >= 2,
        "too few crashes landed mid-run: {crashes:?}"
    );
    let logged = std::fs::read_to_string(&victim_log).unwrap();
    let ahead = logged
        .lines()
        .filter(|l| l.contains("stored ahead"))
        .count();
    assert!(
        ahead >= 3,
        "checkpoints with keys stored ahead: {ahead}; see {}",
        victim_log.display()
    );
    let victim = Config::from_toml(&std::fs::read_to_string(&victim_path).unwrap()).unwrap();
    assert_same_end(&victim, &reference, &format!("after {crashes:?}"));
}

/// A run aborted between a checkpoint's write, which skips the log, and
/// the flush that makes it durable — a periodic checkpoint, then a run's
/// last: each time the store reopens whole at the checkpoint before, and
/// the next run replays from there and ends bit-identical to an
/// uninterrupted run.
#[test]
fn a_run_aborted_before_a_checkpoint_is_flushed_resumes_from_the_one_before() {
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of the checkpoint interval (5 000 records): the last
    // periodic checkpoint falls short of the end.
    let (log, _) = write_log(dir.path(), 18_500, 500, 5);
    let reference = Config::from_toml(&config_text(dir.path(), &log, "reference")).unwrap();
    run_bounded(&reference).unwrap();
    let victim_path = dir.path().join("victim.toml");
    let victim_text = config_text(dir.path(), &log, "victim");
    std::fs::write(&victim_path, &victim_text).unwrap();
    let victim = Config::from_toml(&victim_text).unwrap();
    let run = |failpoint: Option<&str>| {
        let mut cmd = Command::new(binary("learner"));
        cmd.args(["run", "--config"]).arg(&victim_path);
        if let Some(fp) = failpoint {
            cmd.env("POSTERIOR_FAILPOINT", fp);
        }
        cmd.output().unwrap()
    };
    let next_offsets = |config: &Config| {
        let store = RocksStore::open(&config.state.dir).unwrap();
        let (engine, restored, _) = open_engine(config, &store).unwrap();
        assert!(
            restored,
            "{} holds a checkpoint",
            config.state.dir.display()
        );
        engine.next_offsets().clone()
    };

    // The first checkpoint at 7 000 records or later (due at 10 000, or
    // later when put off behind a write in flight, or the run's last) is
    // aborted before its flush: the store has the one before (due at
    // 5 000), not the aborted one.
    let aborted = run(Some("mid_checkpoint:7000"));
    assert!(
        !aborted.status.success(),
        "the fail point aborts a periodic checkpoint"
    );
    // A file's offsets are byte positions: record 7 000 starts after the
    // first 7 000 lines.
    let record_7000: u64 = std::fs::read_to_string(&log)
        .unwrap()
        .split_inclusive('\n')
        .take(7_000)
        .map(|line| line.len() as u64)
        .sum();
    let at_abort: u64 = next_offsets(&victim).values().sum();
    assert!(
        at_abort > 0 && at_abort < record_7000,
        "the store is at the checkpoint before the aborted one: offset {at_abort}, \
         record 7 000 at {record_7000}"
    );

    let aborted = run(Some("mid_last_checkpoint:0"));
    assert!(
        !aborted.status.success(),
        "the fail point aborts the last checkpoint"
    );
    let (at_abort, at_end) = (next_offsets(&victim), next_offsets(&reference));
    assert!(
        at_abort.values().sum::<u64>() < at_end.values().sum::<u64>(),
        "the unflushed last checkpoint is gone: {at_abort:?} vs {at_end:?}"
    );

    let resumed = run(None);
    let stderr = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{stderr}");
    assert!(stderr.contains("resumed from checkpoint"), "{stderr}");
    assert_same_end(&victim, &reference, "after an abort before the last flush");
}

/// A file run whose last record makes a checkpoint due leaves it to the
/// run's last checkpoint (the source knows the file has no byte left):
/// one write at the end, not two back to back; the state ends as a run's
/// that checkpointed along the way.
#[test]
fn a_file_run_writes_its_end_once() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = write_log(dir.path(), 12_000, 300, 6);
    let records = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count() as u64;
    let config = |name: &str, every: u64| {
        let text = learner_toml(dir.path(), name, Source::File(&log), every, None);
        Config::from_toml(&text).unwrap()
    };
    let at_end = config("at-end", records);
    let once = run_bounded(&at_end).unwrap();
    assert_eq!(once.records, records);
    assert_eq!(
        once.checkpoints, 1,
        "the checkpoint due at the last record is the last one"
    );
    let along = config("along", records / 4);
    let several = run_bounded(&along).unwrap();
    assert!(several.checkpoints >= 2, "{several:?}");
    assert_same_end(&at_end, &along, "one checkpoint at the end vs several");
}

#[test]
fn a_corrupt_state_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let (log, _) = write_log(dir.path(), 20_000, 100, 3);
    let config = Config::from_toml(&config_text(dir.path(), &log, "c")).unwrap();
    run_bounded(&config).unwrap();
    // Damage every table file of the store.
    let mut damaged = 0;
    for entry in std::fs::read_dir(&config.state.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst" || e == "log") {
            let mut bytes = std::fs::read(&path).unwrap();
            if bytes.len() > 64 {
                for b in bytes.iter_mut().skip(32).step_by(97) {
                    *b ^= 0xff;
                }
                std::fs::write(&path, bytes).unwrap();
                damaged += 1;
            }
        }
    }
    assert!(damaged > 0);
    let err = RocksStore::open(&config.state.dir)
        .map_err(anyhow::Error::from)
        .and_then(|store| open_engine(&config, &store).map(|_| ()));
    let message = format!("{:#}", err.expect_err("corruption must be detected"));
    assert!(
        message.to_lowercase().contains("corrupt") || message.contains("checksum"),
        "unclear error: {message}"
    );
}
