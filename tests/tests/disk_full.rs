//! A full disk: the learner's state lives on a small tmpfs that runs out of
//! space mid-run. The checkpoint write fails, the learner exits with a
//! clear error, nothing is corrupted, and once space is freed it resumes
//! and ends equal to an uninterrupted run.
//!
//! Mounting a tmpfs needs root (the README's commands run as root). Set
//! `POSTERIOR_SKIP_PRIVILEGED=1` to skip it elsewhere; it never skips
//! silently.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::path::{Path, PathBuf};
use std::process::Command;

use posterior_learner::config::Config;
use posterior_learner::runner::run_bounded;
use posterior_tests::binary;
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogSpec, generate};
use posterior_tests::oracle::{dump_store, first_difference};

/// A tmpfs mounted for the test's life.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Self {
        std::fs::create_dir_all(path).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes}"))
            .arg("tmpfs")
            .arg(path)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "mounting a tmpfs needs root; set POSTERIOR_SKIP_PRIVILEGED=1 to skip this test"
        );
        Self(path.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn config(dir: &Path, state_parent: &Path, log: &Path, name: &str) -> (PathBuf, Config) {
    let text = learner_toml(dir, name, Source::File(log), 5_000, None).replace(
        &format!("dir = \"{}", dir.join(format!("{name}-state")).display()),
        &format!(
            "dir = \"{}",
            state_parent.join(format!("{name}-state")).display()
        ),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &text).unwrap();
    (path, Config::from_toml(&text).unwrap())
}

#[test]
fn a_full_disk_fails_the_checkpoint_cleanly_and_the_learner_resumes_once_freed() {
    if std::env::var_os("POSTERIOR_SKIP_PRIVILEGED").is_some() {
        eprintln!("SKIPPED: POSTERIOR_SKIP_PRIVILEGED is set");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("samples.jsonl");
    let (text, _) = generate(LogSpec {
        records: 100_000,
        docs: 20_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 13,
    });
    std::fs::write(&log, text).unwrap();

    let (_, reference) = config(dir.path(), dir.path(), &log, "reference");
    run_bounded(&reference).unwrap();
    let expected = dump_store(&reference);

    let small = Tmpfs::mount(&dir.path().join("small"), 48 << 20);
    // Leave a little room: enough to open the store and write the first
    // checkpoints, not enough for the whole run.
    let filler = small.0.join("filler");
    std::fs::write(&filler, vec![0_u8; 44 << 20]).unwrap();
    let (path, victim) = config(dir.path(), &small.0, &log, "victim");
    let learner = binary("learner");
    let run = || {
        Command::new(&learner)
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let full = run();
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(!full.status.success(), "the run must fail on a full disk");
    assert!(
        stderr.contains("No space left") || stderr.contains("no space"),
        "unclear error: {stderr}"
    );
    assert!(
        victim.state.dir.join("CURRENT").exists(),
        "the store was opened and written before space ran out"
    );

    std::fs::remove_file(&filler).unwrap();
    let resumed = run();
    assert!(
        resumed.status.success(),
        "{}",
        String::from_utf8_lossy(&resumed.stderr)
    );
    assert!(
        String::from_utf8_lossy(&resumed.stderr).contains("resumed from checkpoint"),
        "the first run's checkpoints survived the full disk"
    );
    let got = dump_store(&victim);
    assert!(got == expected, "{}", first_difference(&got, &expected));
    let dead_expected = std::fs::read(reference.dead_letter.path().unwrap()).unwrap();
    assert!(std::fs::read(victim.dead_letter.path().unwrap()).unwrap() == dead_expected);
}
