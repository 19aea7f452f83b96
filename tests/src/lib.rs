//! Shared harness of the end-to-end tests in `tests/tests/`: locating the
//! workspace binaries, a real broker, generating sample logs with known
//! defects, the oracle, replicas as child processes, and the loopback
//! cluster run (also the `cluster` binary behind `scripts/cluster.sh`).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

pub mod broker;
pub mod cluster;
pub mod config;
pub mod log;
pub mod oracle;
pub mod scrape;
pub mod serving;

/// Path of a workspace binary (`learner`, `param-server`), up to date.
///
/// The first call of a process runs `cargo test --workspace --all-targets
/// --no-run` — a no-op after the workspace-wide test command, which builds
/// exactly these units (a `cargo build --all-targets` would not: it builds
/// the examples and benches under another profile) — so that a `cargo test
/// -p posterior-tests` run never tests a stale binary.
///
/// # Panics
/// When the build fails or the binary does not exist.
pub fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> or target/<profile>/<bin> →
    // target/<profile>/<name>
    let mut profile_dir = exe.parent().expect("executables live in target/<profile>");
    if profile_dir.ends_with("deps") {
        profile_dir = profile_dir.parent().expect("target/<profile>/deps");
    }
    let target_dir = profile_dir.parent().expect("target/<profile>");
    BUILT.get_or_init(|| {
        let workspace = workspace_dir();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&workspace)
            .args([
                "test",
                "--no-run",
                "--quiet",
                "--workspace",
                "--all-targets",
                "--target-dir",
            ])
            .arg(target_dir);
        if profile_dir.ends_with("release") {
            cmd.arg("--release");
        }
        // `cargo test` runs this process with the variables it sets for a
        // crate (CARGO_MANIFEST_DIR, CARGO_PKG_NAME, …). Build scripts
        // that track them (ring's does) would see them changed against
        // the outer build, which ran without them, and rebuild half the
        // tree: minutes per suite. The nested build gets the outer's.
        for (key, _) in std::env::vars_os() {
            if key.to_str().is_some_and(set_by_cargo_for_a_crate) {
                cmd.env_remove(key);
            }
        }
        // Cargo's reasons for rebuilding anything go to a log next to the
        // build (a no-op writes nothing worth reading), so a suite that
        // spends minutes here can be told why.
        let log_path = target_dir.join("posterior-tests-build.log");
        // Where this build's part starts: a failure prints only that.
        let start_of_this = std::fs::metadata(&log_path).map_or(0, |m| m.len());
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open the build log");
        let _ = writeln!(
            log,
            "== {} at {:?}",
            exe.display(),
            std::time::SystemTime::now()
        );
        cmd.env("CARGO_LOG", "cargo::core::compiler::fingerprint=info")
            .env("CARGO_TERM_COLOR", "never")
            .stderr(log.try_clone().expect("clone the build log"));
        let start = Instant::now();
        let status = cmd.status().expect("run cargo test --no-run");
        let took = start.elapsed();
        let _ = writeln!(log, "== took {took:.1?}");
        if took > Duration::from_secs(10) {
            eprintln!(
                "posterior-tests: the workspace build took {took:.1?}; cargo's reasons: {}",
                log_path.display()
            );
        }
        assert!(
            status.success(),
            "cargo build of the workspace failed (log: {}):\n{}",
            log_path.display(),
            this_build(&log_path, start_of_this)
        );
    });
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// The build log from byte `start` on (this build's part), without
/// cargo's lines on why it rebuilt each unit, which bury the compiler's
/// errors.
fn this_build(log_path: &Path, start: u64) -> String {
    let text = std::fs::read(log_path).unwrap_or_default();
    let ours = text.get(start as usize..).unwrap_or_default();
    String::from_utf8_lossy(ours)
        .lines()
        .filter(|line| !line.contains("cargo::core::compiler::fingerprint"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Whether `cargo test` sets the variable `name` for the crate under test
/// (see the Cargo book, "Environment variables Cargo sets for crates"),
/// as opposed to the environment it was run in.
fn set_by_cargo_for_a_crate(name: &str) -> bool {
    [
        "CARGO_PKG_",
        "CARGO_MANIFEST_",
        "CARGO_CRATE_",
        "CARGO_BIN_",
    ]
    .iter()
    .any(|prefix| name.starts_with(prefix))
        || matches!(
            name,
            "CARGO_PRIMARY_PACKAGE" | "CARGO_TARGET_TMPDIR" | "CARGO_RUSTC_CURRENT_DIR" | "OUT_DIR"
        )
}

/// The workspace's root directory. Taken from the `CARGO_MANIFEST_DIR`
/// that `cargo test` sets when it runs a test, not the one compiled in:
/// cargo reuses a build made in another checkout of the workspace (it
/// fingerprints path packages relative to the workspace), and that
/// checkout may be gone.
///
/// # Panics
/// Never in practice: `tests/` has a parent.
#[must_use]
pub fn workspace_dir() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest
        .parent()
        .expect("tests/ lives in the workspace")
        .to_path_buf()
}

/// Waits for `child` at most `limit`; on timeout kills it and panics with
/// the last lines of its log (`log`, where its stderr goes).
///
/// # Panics
/// On timeout, or when waiting fails.
pub fn finish_within(child: &mut Child, limit: Duration, log: &Path) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            panic!(
                "{} did not finish within {limit:?}; its log ends:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A file that a child's stderr appends to.
///
/// # Panics
/// When it cannot be opened.
pub fn log_file(path: &Path) -> Stdio {
    Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open log file"),
    )
}

/// How a crash test interrupts the learner: `rounds` processes, each
/// killed with SIGKILL after a random `min_life` to `max_life` (from
/// `seed`) unless it ends first; round `i` also gets fail point
/// `failpoints[i % every]` when there is one (`POSTERIOR_FAILPOINT`), and
/// then runs up to `failpoint_life` instead, so that on a slow machine it
/// still reaches its fail point rather than a random SIGKILL.
#[derive(Debug, Clone, Copy)]
pub struct KillPlan<'a> {
    /// Processes started.
    pub rounds: usize,
    /// Fail points `name:records`, by round modulo `every`.
    pub failpoints: &'a [&'a str],
    /// The period of the fail points (≥ their count).
    pub every: usize,
    /// Shortest life before the SIGKILL.
    pub min_life: Duration,
    /// Longest life before the SIGKILL.
    pub max_life: Duration,
    /// Seed of the lifetimes.
    pub seed: u64,
    /// Longest life of a round with a fail point (it is meant to abort
    /// there; SIGKILLed if it has not by then).
    pub failpoint_life: Duration,
}

/// How the processes of a [`KillPlan`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Crashes {
    /// Killed with SIGKILL while running.
    pub killed: usize,
    /// Ended by themselves without success before their SIGKILL (a fail
    /// point aborts the process).
    pub aborted: usize,
}

impl Crashes {
    /// Processes that crashed mid-run, either way (a round with a fail
    /// point that has not reached it by its `failpoint_life` is
    /// SIGKILLed instead).
    #[must_use]
    pub fn mid_run(&self) -> usize {
        self.killed + self.aborted
    }
}

/// Runs the learner processes of `plan` from `command`; returns how they
/// ended.
///
/// # Panics
/// When a process cannot be started or waited for.
pub fn crash_repeatedly(mut command: impl FnMut() -> Command, plan: &KillPlan<'_>) -> Crashes {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(plan.seed);
    let mut crashes = Crashes::default();
    for round in 0..plan.rounds {
        let mut cmd = command();
        let mut life = rng.random_range(plan.min_life..plan.max_life);
        if let Some(fp) = plan.failpoints.get(round % plan.every) {
            cmd.env("POSTERIOR_FAILPOINT", fp);
            life = plan.failpoint_life;
        }
        let mut child = cmd.spawn().expect("start the learner");
        let deadline = Instant::now() + life;
        while Instant::now() < deadline && child.try_wait().expect("poll child").is_none() {
            std::thread::sleep(Duration::from_millis(10));
        }
        match child.try_wait().expect("poll child") {
            None => {
                child.kill().expect("SIGKILL");
                crashes.killed += 1;
            }
            Some(status) if !status.success() => crashes.aborted += 1,
            Some(_) => {}
        }
        child.wait().expect("reap child");
    }
    crashes
}

/// `learner run --until-end --config CONFIG`, its stderr appended to `log`.
pub fn learner_until_end(config: &Path, log: &Path) -> Command {
    let mut cmd = Command::new(binary("learner"));
    cmd.args(["run", "--until-end", "--config"])
        .arg(config)
        .stderr(log_file(log));
    cmd
}

/// Runs `learner run [--until-end] --config CONFIG` (stderr appended to
/// `log`) under [`crash_repeatedly`], then once more, waiting at most
/// `last_within` for it to end. Returns how the interrupted runs ended.
///
/// # Panics
/// When a process cannot be started, or the last run fails or times out.
pub fn kill_then_finish(
    config: &Path,
    until_end: bool,
    log: &Path,
    plan: &KillPlan<'_>,
    last_within: Duration,
) -> Crashes {
    kill_then_finish_with_env(config, until_end, log, plan, last_within, &[])
}

/// [`kill_then_finish`] with `env` set for every process (test hooks such
/// as `POSTERIOR_SLOW_WRITE_MS`).
pub fn kill_then_finish_with_env(
    config: &Path,
    until_end: bool,
    log: &Path,
    plan: &KillPlan<'_>,
    last_within: Duration,
    env: &[(&str, &str)],
) -> Crashes {
    let learner = binary("learner");
    let run = || {
        let mut cmd = Command::new(&learner);
        cmd.envs(env.iter().copied());
        cmd.arg("run");
        if until_end {
            cmd.arg("--until-end");
        }
        cmd.arg("--config").arg(config).stderr(log_file(log));
        cmd
    };
    let crashes = crash_repeatedly(run, plan);
    let mut last = run().spawn().expect("start the learner");
    let status = finish_within(&mut last, last_within, log);
    assert!(
        status.success(),
        "the last run failed: {status}; see {}",
        log.display()
    );
    crashes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use super::*;

    #[test]
    fn a_failed_build_reports_its_own_part_of_the_log_without_fingerprints() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        std::fs::write(&log, "== earlier\nerror[E0599]: an old failure\n").unwrap();
        let start = std::fs::metadata(&log).unwrap().len();
        let mut file = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        write!(
            file,
            "== this one\n   0.3s  INFO prepare_target: cargo::core::compiler::fingerprint: stale\n\
             error[E0063]: missing field `x`\n"
        )
        .unwrap();
        assert_eq!(
            this_build(&log, start),
            "== this one\nerror[E0063]: missing field `x`"
        );
    }
}
