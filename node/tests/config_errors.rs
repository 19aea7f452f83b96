//! The `learner` binary refuses a bad config — in the file, in a
//! `POSTERIOR_LEARNER__*` variable or in a flag — before it opens its
//! state or binds its listener, with an error naming the key.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// A scratch directory with a samples file; the config points inside it.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let sample = r#"{"doc_id": 1, "version": "ctr", "event_time_ms": 1700000000000, "labels": {"click": 1}}"#;
        std::fs::write(dir.path().join("samples.jsonl"), format!("{sample}\n")).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A valid config serving on `listen`.
    fn config(&self, listen: &str) -> String {
        format!(
            "[state]\ndir = {:?}\n\n[source]\nkind = \"file\"\npath = {:?}\nformat = \"jsonl\"\n\n\
             [dead_letter]\npath = {:?}\n\n[savepoints]\ndir = {:?}\n\n\
             [[versions]]\nname = \"ctr\"\nmodel = \"beta\"\nreward_label = \"click\"\n\n\
             [param_server]\nlisten = {listen:?}\n",
            self.path("state"),
            self.path("samples.jsonl"),
            self.path("dead.jsonl"),
            self.path("savepoints"),
        )
    }

    /// Runs `learner run` on `config` with `env` and `flags`.
    fn run(&self, config: &str, env: &[(&str, &str)], flags: &[&str]) -> Output {
        let file = self.path("learner.toml");
        std::fs::write(&file, config).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_learner"));
        command.arg("run").arg("--config").arg(&file).args(flags);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("POSTERIOR_LEARNER__") {
                command.env_remove(name);
            }
        }
        command.envs(env.iter().copied()).output().unwrap()
    }

    /// What the learner creates when it gets as far as opening anything.
    fn created(&self) -> Vec<PathBuf> {
        ["state", "dead.jsonl", "savepoints"]
            .iter()
            .map(|name| self.path(name))
            .filter(|path| path.exists())
            .collect()
    }
}

/// Environment variables of a run.
type Env = &'static [(&'static str, &'static str)];
/// Flags of a run.
type Flags = &'static [&'static str];
/// What its stderr must contain.
type Needles = &'static [&'static str];

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn a_bad_config_stops_the_learner_before_it_opens_or_binds_anything() {
    // The port is ours for the whole test: a learner that got as far as
    // binding it would fail with a bind error, not the config's.
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = held.local_addr().unwrap().to_string();
    let scratch = Scratch::new();
    let good = scratch.config(&listen);

    // The control: a good config does get as far as the (taken) port.
    let control = Scratch::new();
    let out = control.run(&control.config(&listen), &[], &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!("bind {listen}")),
        "{}",
        stderr(&out)
    );

    let cases: [(String, Env, Flags, Needles); 6] = [
        (
            good.replace("[dead_letter]\n", "[dead_letter]\ncolour = \"red\"\n"),
            &[],
            &[],
            &["dead_letter.colour", "unknown field `colour`"],
        ),
        (
            good.replace("[state]\n", "[state]\ncheckpoint_every_records = 0\n"),
            &[],
            &[],
            &["state.checkpoint_every_records: must be >= 1"],
        ),
        (
            good.replace("[param_server]\n", "[param_server]\nwatch_buffer = 0\n"),
            &[],
            &[],
            &["param_server.watch_buffer: must be in"],
        ),
        (
            good.clone(),
            &[("POSTERIOR_LEARNER__STATE__COLOUR", "red")],
            &[],
            &["POSTERIOR_LEARNER__STATE__COLOUR: state.colour: unknown field"],
        ),
        (
            good.clone(),
            &[("POSTERIOR_LEARNER__BATCH__MAX_SAMPLES", "many")],
            &[],
            &["POSTERIOR_LEARNER__BATCH__MAX_SAMPLES: batch.max_samples: invalid type"],
        ),
        (
            good.clone(),
            &[],
            &["--listen", "nowhere"],
            &["--listen: param_server.listen: invalid socket address"],
        ),
    ];
    for (config, env, flags, needles) in cases {
        let out = scratch.run(&config, env, flags);
        let stderr = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        for needle in needles {
            assert!(stderr.contains(needle), "{stderr} lacks {needle}");
        }
        assert!(!stderr.contains("bind"), "{stderr}");
        assert_eq!(scratch.created(), Vec::<PathBuf>::new(), "{stderr}");
    }
    drop(held);
}

#[test]
fn a_good_config_with_overrides_runs() {
    let scratch = Scratch::new();
    let moved = scratch.path("moved-state");
    let out = scratch.run(
        &scratch.config("127.0.0.1:1"),
        &[("POSTERIOR_LEARNER__STATE__CHECKPOINT_EVERY_RECORDS", "1")],
        &[
            "--state-dir",
            moved.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("1 records"), "{}", stderr(&out));
    assert!(is_dir(&moved) && !is_dir(&scratch.path("state")));
}

fn is_dir(path: &Path) -> bool {
    path.is_dir()
}
