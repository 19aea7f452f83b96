//! The `param-server` binary and `runner::run`: config checked before
//! binding, a channel feed visible over gRPC, a clean SIGTERM stop.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posterior_learner::params::{ParamChange, Publication, params_to_wire};
use posterior_learner::posterior::BetaPosterior;
use posterior_learner::{KeyState, Posterior};
use posterior_param_server::config::Config;
use posterior_param_server::runner::{build_store, run};
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const CONFIG: &str = r#"
listen = "127.0.0.1:0"

[[versions]]
name = "ctr"
model = "beta"
reward_label = "click"
"#;

fn write_config(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("param-server.toml");
    std::fs::write(&path, text).unwrap();
    (dir, path)
}

fn binary() -> Command {
    Command::new(env!("CARGO_BIN_EXE_param-server"))
}

#[test]
fn a_bad_config_is_refused_before_binding_with_its_key_named() {
    let (_dir, path) =
        write_config(&CONFIG.replace("model = \"beta\"", "model = \"beta\"\nalpha0 = -1"));
    let out = binary().arg("--config").arg(&path).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("versions[0]") && stderr.contains("alpha0"),
        "{stderr}"
    );
    let (_dir, path) = write_config(CONFIG);
    let out = binary()
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = binary()
        .arg("--config")
        .arg(&path)
        .args(["--listen", "nowhere", "--check"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
    let out = binary()
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .env("POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS", "257")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(
            "POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS: limits.work_slots: must be <= 256"
        ),
        "{stderr}"
    );
}

#[test]
fn the_binary_serves_until_sigterm() {
    let (_dir, path) = write_config(CONFIG);
    let mut child = binary()
        .arg("--config")
        .arg(&path)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("a listening line").unwrap();
        if let Some(rest) = line.split("local=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_owned();
        }
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let params = runtime.block_on(async {
        let mut client = ParamServiceClient::connect(format!("http://{addr}"))
            .await
            .unwrap();
        let request = v1::GetParamsRequest {
            version: "ctr".into(),
            doc_ids: vec![1],
        };
        client
            .get_params(request)
            .await
            .unwrap()
            .into_inner()
            .params
    });
    assert!(params[0].is_prior);
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn run_applies_a_channel_feed_visible_over_grpc() {
    let config = Config::from_toml(CONFIG).unwrap();
    let store = build_store(&config).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (updates, rx) = mpsc::channel(8);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn({
        let store = Arc::clone(&store);
        async move {
            run(
                &config,
                store,
                listener,
                Some(rx),
                Default::default(),
                async {
                    let _ = stopped.await;
                },
            )
            .await
        }
    });
    let state = KeyState {
        seq: 4,
        sample_count: 4.0,
        updated_event_time_ms: 9,
        posterior: Posterior::Beta(BetaPosterior::from_parts(3.0, 3.0).unwrap()),
    };
    updates
        .send(Publication::Params(vec![ParamChange {
            version: "ctr".into(),
            doc_id: 7,
            state: state.clone().into(),
        }]))
        .await
        .unwrap();
    let mut client = ParamServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = v1::GetParamsRequest {
            version: "ctr".into(),
            doc_ids: vec![7],
        };
        let params = client
            .get_params(request)
            .await
            .unwrap()
            .into_inner()
            .params;
        if params[0].seq == 4 {
            assert_eq!(params[0], params_to_wire("ctr", 7, &state));
            break;
        }
        assert!(Instant::now() < deadline, "the update never became visible");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}

/// Writes `text` as a tokens file with `mode`.
#[cfg(unix)]
fn write_tokens(dir: &std::path::Path, text: &str, mode: u32) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("tokens");
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

#[cfg(unix)]
#[test]
fn admin_and_tls_settings_are_checked_before_binding() {
    let dir = tempfile::tempdir().unwrap();
    let open_tokens = write_tokens(dir.path(), "alice admin 0123456789abcdef0123", 0o644);
    let cases = [
        (
            format!(
                "[admin]\ntokens_file = {:?}\n",
                open_tokens.display().to_string()
            ),
            ["admin.tokens_file", "chmod 600"],
        ),
        (
            "[admin]\ntokens_env = \"POSTERIOR_TEST_UNSET_TOKENS_VAR\"\n".to_owned(),
            ["admin.tokens_env", "POSTERIOR_TEST_UNSET_TOKENS_VAR"],
        ),
        (
            "[tls]\ncert_file = \"/nonexistent/server.pem\"\nkey_file = \"/nonexistent/k\"\n"
                .to_owned(),
            ["tls.cert_file", "/nonexistent/server.pem"],
        ),
    ];
    for (table, wanted) in cases {
        let (_dir, path) = write_config(&format!("{CONFIG}\n{table}"));
        let out = binary()
            .arg("--config")
            .arg(&path)
            .arg("--check")
            .output()
            .unwrap();
        assert!(!out.status.success(), "{table} passed --check");
        let stderr = String::from_utf8_lossy(&out.stderr);
        for word in wanted {
            assert!(stderr.contains(word), "{word} not in {stderr}");
        }
        assert!(!stderr.contains("0123456789abcdef"), "a token was logged");
    }
}

#[cfg(unix)]
#[tokio::test]
async fn an_embedded_server_hands_admin_commands_to_its_control_channel() {
    use posterior_param_server::InProcessControlPlane;
    use posterior_param_server::runner::prepare;
    use posterior_proto::v1::admin_service_client::AdminServiceClient;

    let dir = tempfile::tempdir().unwrap();
    let tokens = write_tokens(dir.path(), "ops admin 0123456789abcdef0123", 0o600);
    let audit = dir.path().join("audit.jsonl");
    let text = format!(
        "{CONFIG}\n[admin]\ntokens_file = {:?}\naudit_file = {:?}\ncommand_lead_ms = 60000\n",
        tokens.display().to_string(),
        audit.display().to_string()
    );
    let config = Config::from_toml(&text).unwrap();
    let store = build_store(&config).unwrap();
    let (control, mut commands) = InProcessControlPlane::channel(4);
    let options = prepare(&config, &store, Arc::new(control)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        run(&config, store, listener, None, options, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut client = AdminServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let mut request = tonic::Request::new(v1::RetireVersionRequest { name: "ctr".into() });
    request.metadata_mut().insert(
        "authorization",
        "Bearer 0123456789abcdef0123".parse().unwrap(),
    );
    let before_ms = posterior_param_server::admin::system_clock_ms();
    let response = client.retire_version(request).await.unwrap().into_inner();
    let command = commands.recv().await.unwrap().command;
    assert_eq!(command.command_id, response.command_id);
    assert_eq!(command.issued_by, "ops");
    assert!(command.effective_event_time_ms >= before_ms + 60_000);
    assert!(
        command.effective_event_time_ms
            <= posterior_param_server::admin::system_clock_ms() + 60_000
    );
    let line = std::fs::read_to_string(&audit).unwrap();
    assert!(line.contains("\"RetireVersion\"") && line.contains(&response.command_id));
    drop(client);
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
}
