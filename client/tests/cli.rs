//! The `posterior` binary run as a process against a real param-server
//! (and the admin double): output and exit codes.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::process::Output;

use common::admin_double::{AdminDouble, Received, TOKEN};
use common::*;
use serde_json::Value;

fn server() -> (ParamServer, AdminDouble) {
    let admin = AdminDouble::new(vec![beta_spec("ctr"), diagonal_spec("dwell", 4)]);
    let server = ParamServer::with_admin(ParamServer::store(16), admin.clone());
    server.store.apply("ctr", 5, beta_state(3)).unwrap();
    (server, admin)
}

/// Runs `posterior --endpoint <server> args...` with `env`, and no
/// `POSTERIOR_*` variables from the caller's environment.
fn posterior(server: &ParamServer, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_posterior"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("POSTERIOR_")) {
        command.env_remove(key);
    }
    command
        .arg("--endpoint")
        .arg(server.endpoint())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn stdout_json(output: &Output) -> Value {
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    serde_json::from_slice(&output.stdout).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn get_prints_params_as_json_or_a_table() {
    let (server, _) = server();
    let json = stdout_json(&posterior(
        &server,
        &["--json", "get", "ctr", "5", "7"],
        &[],
    ));
    assert_eq!(json[0]["doc_id"], 5);
    assert_eq!(json[0]["seq"], 3);
    assert_eq!(json[0]["model"]["beta"]["alpha"], 4.0);
    assert_eq!(json[0]["model"]["beta"]["beta"], 7.0);
    assert_eq!(json[1]["is_prior"], true);

    let output = posterior(&server, &["get", "ctr", "5"], &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let text = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("doc_id  seq  prior"), "{text}");
    assert!(lines[1].contains("alpha=4 beta=7"), "{text}");
}

#[test]
fn an_unknown_version_exits_with_not_found() {
    let (server, _) = server();
    let output = posterior(&server, &["get", "nope", "1"], &[]);
    assert_eq!(output.status.code(), Some(10 + 5), "{output:?}");
    assert!(
        stderr(&output).starts_with("error: NOT_FOUND: "),
        "{output:?}"
    );
    assert!(output.stdout.is_empty());

    let output = posterior(&server, &["--json", "get", "nope", "1"], &[]);
    assert_eq!(output.status.code(), Some(15));
    let error: Value = serde_json::from_str(stderr(&output).trim()).unwrap();
    assert_eq!(error["error"]["code"], "NOT_FOUND");
    assert!(error["error"]["message"].as_str().unwrap().contains("nope"));
}

#[test]
fn sample_and_watch_print_json() {
    let (server, _) = server();
    let args = ["--json", "sample", "ctr", "5", "--seed", "3"];
    let a = stdout_json(&posterior(&server, &args, &[]));
    let b = stdout_json(&posterior(&server, &args, &[]));
    assert_eq!(a, b, "seeded draws repeat");
    assert!(
        (a[0]["mean"].as_f64().unwrap() - 4.0 / 11.0).abs() < 1e-12,
        "{a}"
    );

    let output = posterior(&server, &["watch", "ctr", "--max-events", "2"], &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let lines: Vec<Value> = output
        .stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["event"], "snapshot");
    assert_eq!(lines[0]["params"]["doc_id"], 5);
    assert_eq!(lines[1]["event"], "snapshot_done");
}

#[test]
fn versions_list_takes_the_token_from_a_flag_the_environment_or_a_file() {
    let (server, admin) = server();
    let output = posterior(
        &server,
        &["--json", "versions", "list", "--token", TOKEN],
        &[],
    );
    let json = stdout_json(&output);
    assert_eq!(json[0]["name"], "ctr");
    assert_eq!(json[0]["model"], "beta");
    assert_eq!(json[1]["name"], "dwell");
    assert_eq!(json[1]["dim"], 4);
    assert_eq!(json[1]["retired"], true);

    let output = posterior(
        &server,
        &["versions", "list"],
        &[("POSTERIOR_TOKEN", TOKEN)],
    );
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let table = String::from_utf8(output.stdout).unwrap();
    assert!(table.contains("logistic(dim=4, diagonal)"), "{table}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, format!("{TOKEN}\n")).unwrap();
    let file = file.to_str().unwrap();
    let output = posterior(
        &server,
        &["--json", "versions", "list", "--token-file", file],
        &[],
    );
    assert_eq!(stdout_json(&output).as_array().unwrap().len(), 2);
    assert_eq!(admin.received(), vec![Received::List; 3]);

    let output = posterior(&server, &["versions", "list"], &[]);
    assert_eq!(output.status.code(), Some(2), "no token: {output:?}");
    let output = posterior(
        &server,
        &["versions", "list"],
        &[("POSTERIOR_TOKEN", "bad")],
    );
    assert_eq!(output.status.code(), Some(10 + 16), "{output:?}");
    assert!(stderr(&output).contains("UNAUTHENTICATED"), "{output:?}");
}

#[test]
fn versions_create_reads_a_toml_spec() {
    let (server, admin) = server();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.toml");
    std::fs::write(
        &spec,
        "name = \"ctr-b\"\nmodel = \"beta\"\nalpha0 = 2.0\nreward_label = \"order\"\n",
    )
    .unwrap();
    let spec = spec.to_str().unwrap();
    let env = [("POSTERIOR_TOKEN", TOKEN)];
    let output = posterior(&server, &["versions", "create", "--spec", spec], &env);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert_eq!(String::from_utf8(output.stdout).unwrap(), "created ctr-b\n");
    let [Received::Create(request)] = &admin.received()[..] else {
        panic!("{:?}", admin.received())
    };
    let wire = request.spec.clone().unwrap();
    assert_eq!(
        (wire.name.as_str(), wire.reward_label.as_str()),
        ("ctr-b", "order")
    );
    assert_eq!(
        wire.model,
        Some(posterior_proto::v1::version_spec::Model::Beta(
            posterior_proto::v1::BetaModel {
                alpha0: 2.0,
                beta0: 1.0
            }
        ))
    );

    std::fs::write(
        dir.path().join("bad.toml"),
        "name = \"x\"\nmodel = \"beta\"\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    let output = posterior(
        &server,
        &["versions", "create", "--spec", bad.to_str().unwrap()],
        &env,
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "missing reward_label: {output:?}"
    );
    assert!(stderr(&output).contains("reward_label"), "{output:?}");
}

#[test]
fn an_unreachable_server_exits_with_unavailable() {
    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_posterior"))
        .args(["--endpoint", &endpoint, "get", "ctr", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(10 + 14), "{output:?}");
    assert!(stderr(&output).contains("UNAVAILABLE"), "{output:?}");
}

#[test]
fn a_config_file_sets_endpoint_and_token_and_flags_override_it() {
    let (server, _) = server();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let config = dir.path().join("posterior.toml");
    std::fs::write(
        &config,
        format!(
            "endpoint = \"{}\"\ntoken_file = {:?}\n[client]\nrequest_timeout_ms = 2000\n[client.retry]\nmax_attempts = 2\n",
            server.endpoint(),
            token.to_str().unwrap()
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_posterior"))
            .args(args)
            .env_remove("POSTERIOR_ENDPOINT")
            .env_remove("POSTERIOR_TOKEN")
            .env_remove("POSTERIOR_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let output = run(&["--config", config, "--json", "versions", "list"]);
    assert_eq!(stdout_json(&output).as_array().unwrap().len(), 2);

    let unused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let elsewhere = format!("http://{}", unused.local_addr().unwrap());
    drop(unused);
    let output = run(&[
        "--config",
        config,
        "--endpoint",
        &elsewhere,
        "get",
        "ctr",
        "1",
    ]);
    assert_eq!(output.status.code(), Some(24), "the flag wins: {output:?}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[client]\nrequest_timeout = 5\n").unwrap();
    let output = run(&["--config", bad.to_str().unwrap(), "get", "ctr", "1"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).contains("request_timeout"), "{output:?}");
}

/// What the client refuses before sending anything is bad usage (exit 2),
/// not a server's INVALID_ARGUMENT (13).
#[test]
fn arguments_refused_before_sending_are_bad_usage() {
    let (server, _) = server();
    let output = posterior(
        &server,
        &["sample", "dwell", "1", "--context", "1,NaN,0,0"],
        &[],
    );
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("USAGE"), "{output:?}");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_posterior"))
        .args(["--endpoint", "not a uri", "get", "ctr", "1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "{output:?}");
    assert!(stderr(&output).contains("invalid endpoint"), "{output:?}");
}

#[test]
fn the_example_config_is_valid() {
    let (server, _) = server();
    // Read when the test runs: a build reused from another checkout has
    // that checkout's directory compiled in.
    let example = std::env::var("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").to_owned())
        + "/posterior.example.toml";
    let output = posterior(
        &server,
        &["--config", &example, "--json", "get", "ctr", "5"],
        &[],
    );
    assert_eq!(stdout_json(&output)[0]["seq"], 3);
}

#[test]
fn watch_into_a_closed_pipe_ends_quietly() {
    let (server, _) = server();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_posterior"))
        .args(["--endpoint", &server.endpoint(), "watch", "ctr"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read the first line (the snapshot of doc 5), then hang up.
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("\"snapshot\""), "{line}");
    drop(stdout);
    // The next event makes the write fail with EPIPE.
    for seq in 4..200 {
        server.store.apply("ctr", 5, beta_state(seq)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        if child.try_wait().unwrap().is_some() {
            break;
        }
    }
    if child.try_wait().unwrap().is_none() {
        child.kill().unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
}
