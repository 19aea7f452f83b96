//! Shared harness of the end-to-end tests in `tests/tests/`: locating the
//! workspace binaries, and generating sample logs with known defects.

use std::path::PathBuf;
use std::process::Command;

pub mod broker;
pub mod log;

/// Path of a workspace binary (`learner`, `param-server`), building it if
/// the test runs without it (e.g. `cargo test -p posterior-tests`).
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test> → target/<profile>/<name>
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let path = dir.join(name);
    if !path.exists() {
        let package = match name {
            "learner" => "posterior-learner",
            "param-server" => "posterior-param-server",
            other => panic!("unknown binary {other}"),
        };
        let release = dir.ends_with("release");
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "-p", package, "--bin", name]);
        if release {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("run cargo build");
        assert!(status.success(), "cargo build of {name} failed");
    }
    path
}
