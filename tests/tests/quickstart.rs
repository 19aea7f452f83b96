//! `learner quickstart`, the README's main job, as a user runs it: the
//! closed loop over real gRPC learns (the Thompson arms show docs with a
//! higher true CTR than the random control), every joined sample reaches
//! the learner and is applied, the timeline and the PNG plot are written,
//! a rerun starts from empty state again, and state that is not a
//! quickstart's is never deleted.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use posterior_tests::{binary, workspace_dir};

/// The repository's quickstart config with its paths under `dir` and a
/// smaller, high-CTR world, so a debug build learns in seconds.
fn config(dir: &Path, state: &Path) -> PathBuf {
    let text = std::fs::read_to_string(workspace_dir().join("config/quickstart.toml")).unwrap();
    let replace = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "config/quickstart.toml lost {from:?}");
        text.replace(from, to)
    };
    let mut text = replace(
        text,
        "dir = \"out/quickstart/state\"",
        &format!("dir = {:?}", state.display().to_string()),
    );
    text = replace(text, "\"out/quickstart", &format!("\"{}", dir.display()));
    for (from, to) in [
        ("docs = 1000", "docs = 100"),
        ("candidates = 20", "candidates = 10"),
        ("shown = 3", "shown = 2"),
        ("ctr = \"low\"", "ctr = \"high\""),
        ("window_requests = 5000", "window_requests = 1000"),
        ("progress_every_ms = 5000", "progress_every_ms = 1000"),
    ] {
        text = replace(text, from, to);
    }
    let path = dir.join("quickstart.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn quickstart(config: &Path, requests: u64) -> Output {
    Command::new(binary("learner"))
        .args(["quickstart", "--config"])
        .arg(config)
        .args(["--requests", &requests.to_string()])
        .output()
        .unwrap()
}

/// The summary row of `arm`: (requests, impressions, clicks, CTR %,
/// true CTR %, oracle %).
fn row(stdout: &str, arm: &str) -> (u64, u64, u64, f64, f64, f64) {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(arm))
        .unwrap_or_else(|| panic!("no summary row for {arm} in\n{stdout}"));
    let f: Vec<&str> = line.split_whitespace().collect();
    (
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        f[4].parse().unwrap(),
        f[5].parse().unwrap(),
        f[6].parse().unwrap(),
        f[7].parse().unwrap(),
    )
}

/// (sent, applied, dead letters) from the learner's summary line.
fn learner_line(stdout: &str) -> (u64, u64, String) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("learner: "))
        .unwrap_or_else(|| panic!("no learner line in\n{stdout}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    let dead = line
        .split("dead letters ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap()
        .to_owned();
    (words[1].parse().unwrap(), words[4].parse().unwrap(), dead)
}

#[test]
fn the_closed_loop_learns_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let config = config(dir.path(), &state);
    let requests = 9_000;
    let out = quickstart(&config, requests);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");

    let arms = ["ts-beta", "ts-logistic", "control"];
    let rows: Vec<_> = arms.iter().map(|arm| row(&stdout, arm)).collect();
    for (arm, r) in arms.iter().zip(&rows) {
        assert_eq!(r.0, requests / 3, "{arm}: requests are dealt round robin");
        assert_eq!(r.1, 2 * r.0, "{arm}: two docs shown per request");
        assert!(r.4 <= r.5, "{arm}: no arm beats the oracle");
    }
    let control = rows[2].4;
    // The random control shows a random candidate's CTR; Thompson
    // sampling on the server's posteriors learns which docs are better.
    assert!(rows[0].4 > 1.25 * control, "ts-beta vs control: {rows:?}");
    assert!(
        rows[1].4 > 1.15 * control,
        "ts-logistic vs control: {rows:?}"
    );

    let (sent, applied, dead) = learner_line(&stdout);
    assert_eq!(sent, 2 * requests, "every shown doc becomes a sample");
    assert_eq!(applied, sent, "every sample is applied, none late");
    assert_eq!(dead, "{}");
    let clicks: u64 = rows.iter().map(|r| r.2).sum();
    assert!(clicks > 0);

    let timeline = std::fs::read_to_string(dir.path().join("timeline.csv")).unwrap();
    assert_eq!(
        timeline.lines().count() as u64,
        1 + (requests / 1000) * 3,
        "a header, then a row per window of 1000 requests and arm"
    );
    let png = std::fs::read(dir.path().join("ctr.png")).unwrap();
    assert_eq!(&png[..4], b"\x89PNG");

    // A second run starts from empty state again: its learner applies
    // only its own samples.
    let again = quickstart(&config, 300);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(again.status.success(), "{stdout}");
    let (sent, applied, _) = learner_line(&stdout);
    assert_eq!((sent, applied), (600, 600));
}

#[test]
fn state_that_is_not_a_quickstarts_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("somebody-else");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("CURRENT"), "precious").unwrap();
    let config = config(dir.path(), &state);
    let out = quickstart(&config, 300);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("not a quickstart's"), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(state.join("CURRENT")).unwrap(),
        "precious"
    );
}
