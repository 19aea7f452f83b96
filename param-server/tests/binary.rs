//! The `param-server` binary and `runner::run`: config checked before
//! binding, a channel feed visible over gRPC, a clean SIGTERM stop.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use posterior_learner::params::{ParamChange, params_to_wire};
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
        .send(vec![ParamChange {
            version: "ctr".into(),
            doc_id: 7,
            state: Arc::new(state.clone()),
        }])
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
