//! The simulator source in the learner process: sample t sits at offset t
//! and is a pure function of (seed, t), so a learner killed with SIGKILL
//! (or stopped with SIGTERM) and restarted resumes exactly where its
//! checkpoint stopped and ends bit for bit where an uninterrupted run
//! ends — with no log kept anywhere.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use posterior_learner::config::{Config, SourceConfig};
use posterior_learner::runner::{fresh_engine, run_bounded};
use posterior_learner::simulation::source::{PARTITION, Simulator};
use posterior_learner::store::RocksStore;
use posterior_tests::config::{Source, learner_toml};
use posterior_tests::oracle::{assert_same_end, dump_store, first_difference};
use posterior_tests::{KillPlan, binary, finish_within, kill_then_finish, log_file};

const SEED: u64 = 2027;

/// Writes the config of a simulator learner named `name` into `dir`.
fn write_config(dir: &Path, name: &str, samples: Option<u64>) -> (std::path::PathBuf, Config) {
    write_config_every(dir, name, samples, 5_000)
}

/// [`write_config`], checkpointing every `every` records.
fn write_config_every(
    dir: &Path,
    name: &str,
    samples: Option<u64>,
    every: u64,
) -> (std::path::PathBuf, Config) {
    let path = dir.join(format!("{name}.toml"));
    let text = learner_toml(
        dir,
        name,
        Source::Simulator {
            seed: SEED,
            samples,
        },
        every,
        None,
    );
    std::fs::write(&path, &text).unwrap();
    (path, Config::from_toml(&text).unwrap())
}

#[test]
fn killed_and_restarted_simulator_learner_ends_bit_identical() {
    let dir = tempfile::tempdir().unwrap();
    let samples = 400_000;
    let (_, reference) = write_config(dir.path(), "reference", Some(samples));
    let summary = run_bounded(&reference).unwrap();
    assert_eq!(summary.records, samples);
    // A run that ends normally leaves its store flushed: the next start
    // replays no log (the run's checkpoints held several MB).
    let log = posterior_learner::store::log_bytes(&reference.state.dir);
    assert!(log < 64 << 10, "log left after a normal end: {log} bytes");
    let late = summary.counters.dead.get("late").copied().unwrap_or(0);
    assert!(
        (100..samples / 20).contains(&late),
        "a few label delays exceed the allowed disorder: {:?}",
        summary.counters
    );
    assert_eq!(summary.counters.applied + late, samples);
    let expected = dump_store(&reference);
    assert!(expected.lines().count() >= 9_000, "≥ 9 k keys expected");
    eprintln!("seed {SEED}: {samples} samples, {late} late");

    let (victim_path, victim) = write_config(dir.path(), "victim", Some(samples));
    let crashes = kill_then_finish(
        &victim_path,
        false,
        &dir.path().join("victim.log"),
        &KillPlan {
            rounds: 14,
            failpoints: &[
                "before_checkpoint:10000",
                "after_checkpoint:20000",
                "after_ingest:15000",
            ],
            every: 4,
            min_life: Duration::from_millis(50),
            max_life: Duration::from_millis(700),
            seed: 11,
            failpoint_life: Duration::from_secs(30),
        },
        Duration::from_secs(300),
    );
    eprintln!("of 14 runs: {crashes:?}");
    assert!(
        crashes.mid_run() >= 3 && crashes.killed >= 1 && crashes.aborted >= 3,
        "too few crashes landed mid-run: {crashes:?}"
    );
    assert_same_end(&victim, &reference, &format!("after {crashes:?}"));
}

#[test]
fn an_unbounded_simulator_stops_on_sigterm_and_resumes_at_its_offset() {
    let dir = tempfile::tempdir().unwrap();
    let (path, unbounded) = write_config(dir.path(), "learner", None);
    let log = dir.path().join("learner.log");
    let mut child = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&path)
        .stderr(log_file(&log))
        .spawn()
        .unwrap();
    // Let it run past a few checkpoints, then ask it to stop.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        assert!(
            child.try_wait().unwrap().is_none(),
            "an unbounded run ended"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = finish_within(&mut child, Duration::from_secs(60), &log);
    assert!(status.success(), "SIGTERM ends the run cleanly: {status}");

    // The stop checkpointed everything read, without ending the input: the
    // state is that of the pure engine over samples 0..T, not finished.
    let stopped_at = {
        let store = RocksStore::open(&unbounded.state.dir).unwrap();
        let (engine, _) = posterior_learner::runner::restore_engine(&unbounded, &store)
            .unwrap()
            .unwrap();
        engine.next_offsets()[&PARTITION]
    };
    assert!(stopped_at > 5_000, "only {stopped_at} samples in 3 s");
    let SourceConfig::Simulator(simulator) = &unbounded.source else {
        unreachable!("a simulator config");
    };
    let mut simulator = Simulator::new(simulator, &unbounded.version_specs(), 0).unwrap();
    let mut engine = fresh_engine(&unbounded, [PARTITION]).unwrap();
    while simulator.next_offset() < stopped_at {
        let (offset, payload) = simulator.next_record().unwrap();
        engine.ingest(PARTITION, offset, payload);
    }
    let mut expected = Vec::new();
    posterior_learner::dump::dump(&engine, &mut expected).unwrap();
    let got = dump_store(&unbounded);
    let expected = String::from_utf8(expected).unwrap();
    assert!(
        got == expected,
        "stopped at {stopped_at}: {}",
        first_difference(&got, &expected)
    );

    // Bounded now, the same learner resumes at T and ends where a run of
    // T + 20 000 samples from scratch ends.
    let total = stopped_at + 20_000;
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("seed = ", &format!("samples = {total}\nseed = "));
    std::fs::write(&path, text).unwrap();
    let resumed = Config::from_toml(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let summary = run_bounded(&resumed).unwrap();
    assert!(summary.restored);
    assert_eq!(summary.records, 20_000);
    let (_, reference) = write_config(dir.path(), "reference", Some(total));
    run_bounded(&reference).unwrap();
    assert_same_end(&resumed, &reference, "resumed after SIGTERM");
}

/// A simulator run with `samples` whose last sample makes a checkpoint
/// due leaves it to the run's last checkpoint (one write at the end, not
/// two back to back), and ends as a run that checkpointed along the way.
#[test]
fn a_bounded_simulator_run_writes_its_end_once() {
    const SAMPLES: u64 = 20_000;
    let dir = tempfile::tempdir().unwrap();
    let (_, at_end) = write_config_every(dir.path(), "at-end", Some(SAMPLES), SAMPLES);
    let once = run_bounded(&at_end).unwrap();
    assert_eq!(once.records, SAMPLES);
    assert_eq!(
        once.checkpoints, 1,
        "the checkpoint due at the last sample is the last one"
    );
    let (_, along) = write_config_every(dir.path(), "along", Some(SAMPLES), SAMPLES / 4);
    let several = run_bounded(&along).unwrap();
    assert!(several.checkpoints >= 2, "{several:?}");
    assert_same_end(&at_end, &along, "one checkpoint at the end vs several");
}
