//! Standalone param-server replicas fed by the Kafka `params` topic: a
//! learner runs over a generated log and publishes to the topic; two
//! `param-server` processes with `[feed.kafka]` become ready and serve
//! exactly the learner's final state, identical to each other; one is
//! killed with SIGKILL and restarted from its snapshot, and serves the
//! same parameters again (no seq goes backwards); an admin fork sent
//! through a replica's AdminService reaches a running learner through the
//! `control` topic, and the forked version reaches both replicas through
//! the `params` topic.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posterior_learner::config::Config;
use posterior_learner::params::params_to_wire;
use posterior_learner::runner::restore_engine;
use posterior_learner::store::RocksStore;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogRecord, LogSpec, generate_records};
use posterior_tests::oracle::produce_samples;
use posterior_tests::{binary, finish_within, learner_until_end, log_file};
use prost::Message as _;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const DOCS: u64 = 300;
const PARTITIONS: u32 = 2;
const VERSIONS: [&str; 2] = ["beta", "logistic"];
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// Every (version, doc) → the served `Params`.
type Served = BTreeMap<(String, u64), v1::Params>;

/// A child process killed if a failing test leaves it running.
struct Process(Option<Child>);

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Process {
    fn kill(mut self) {
        let mut child = self.0.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// SIGTERM, then a clean exit within a minute.
    fn terminate(mut self, log: &Path) {
        let mut child = self.0.take().unwrap();
        let pid = child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let status = finish_within(&mut child, Duration::from_secs(60), log);
        assert!(status.success(), "{status}; see {}", log.display());
    }
}

/// The learner's config: the samples topic (never idle: no wall clock in
/// what it applies), the params topic, the control topic.
fn learner_config(dir: &Path, bootstrap: &str) -> String {
    let text = learner_toml(
        dir,
        "learner",
        Source::Kafka(bootstrap),
        5_000,
        Some(bootstrap),
    );
    let text = text.replace(
        "topic = \"samples\"",
        "topic = \"samples\"\nidle_timeout_ms = 0",
    );
    format!("{text}\n[control]\nbrokers = \"{bootstrap}\"\ntopic = \"control\"\n")
}

/// A replica's config: no versions of its own (the learner announces
/// them), a snapshot every 200 ms, admin commands to the control topic.
fn replica_config(dir: &Path, name: &str, bootstrap: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("operator admin {TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    let path = dir.join(format!("{name}.toml"));
    let text = format!(
        r#"listen = "127.0.0.1:0"

[admin]
tokens_file = "{tokens}"

[feed.kafka]
brokers = "{bootstrap}"
topic = "params"

[feed.snapshot]
dir = "{snapshots}"
every_ms = 200

[control.kafka]
brokers = "{bootstrap}"
topic = "control"
"#,
        tokens = tokens.display(),
        snapshots = dir.join(format!("{name}-snapshot")).display(),
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Starts `param-server --config CONFIG`; returns it and its endpoint.
fn start_replica(config: &Path, log: &Path) -> (Process, String) {
    let before = std::fs::read_to_string(log).unwrap_or_default().len();
    let child = Command::new(binary("param-server"))
        .arg("--config")
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(log))
        .spawn()
        .unwrap();
    let process = Process(Some(child));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let listening = text[before..]
            .lines()
            .filter(|l| l.contains("param-server listening"))
            .find_map(|l| l.split("local=").nth(1))
            .and_then(|rest| rest.split_whitespace().next());
        if let Some(addr) = listening {
            return (process, format!("http://{addr}"));
        }
        assert!(Instant::now() < deadline, "no listening line in:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits until the health service says SERVING; returns how long it took.
async fn ready(endpoint: &str) -> Duration {
    let start = Instant::now();
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "posterior.v1.ParamService".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        if status == ServingStatus::Serving as i32 {
            return start.elapsed();
        }
        assert_eq!(status, ServingStatus::NotServing as i32);
        assert!(start.elapsed() < Duration::from_secs(60), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn fetch(endpoint: &str, versions: &[&str]) -> Served {
    let mut client = ParamServiceClient::connect(endpoint.to_owned())
        .await
        .unwrap();
    let mut served = Served::new();
    for &version in versions {
        let request = v1::GetParamsRequest {
            version: version.into(),
            doc_ids: (0..DOCS).collect(),
        };
        let response = client.get_params(request).await.unwrap().into_inner();
        for params in response.params {
            served.insert((version.to_owned(), params.doc_id), params);
        }
    }
    served
}

/// The learner's checkpointed state, as a replica should serve it: every
/// key of the store, and the prior (flagged) for the others.
fn expected(config: &Config, prior_of: &Served) -> Served {
    let store = RocksStore::open(&config.state.dir).unwrap();
    let (engine, _) = restore_engine(config, &store).unwrap().unwrap();
    let mut expected: Served = prior_of
        .iter()
        .filter(|(_, p)| p.is_prior)
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    for (key, state) in engine.params() {
        let name = &engine.registry().get(key.version).unwrap().spec.name;
        expected.insert(
            (name.clone(), key.doc_id),
            params_to_wire(name, key.doc_id, state),
        );
    }
    expected
}

fn assert_serves(served: &Served, expected: &Served, who: &str) {
    assert_eq!(served.len(), expected.len(), "{who}");
    for (key, params) in expected {
        assert_eq!(served.get(key), Some(params), "{key:?} served by {who}");
    }
}

/// `request` with the admin token.
fn bearer<T>(request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    request
}

/// A clicked `beta` sample of `doc_id` at `t`.
fn beta_sample(doc_id: u64, t: i64) -> LogRecord {
    let sample = v1::JoinedSample {
        doc_id,
        version: "beta".into(),
        event_time_ms: t,
        labels: [("click".to_owned(), 1.0)].into(),
        weight: 1.0,
        sample_id: format!("beyond-{doc_id}-{t}"),
        ..v1::JoinedSample::default()
    };
    LogRecord {
        doc_id,
        jsonl: String::new(),
        protobuf: sample.encode_to_vec(),
    }
}

#[test]
fn replicas_fed_by_the_params_topic_serve_the_learners_state_and_survive_a_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    broker.create_topic("params", PARTITIONS);
    broker.create_topic("control", 1);
    let (records, _) = generate_records(LogSpec {
        records: 20_000,
        docs: DOCS,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 31,
    });
    produce_samples(&broker, &records, PARTITIONS);
    let learner_path = dir.path().join("learner.toml");
    let learner_text = learner_config(dir.path(), &broker.bootstrap());
    std::fs::write(&learner_path, &learner_text).unwrap();
    let config = Config::from_toml(&learner_text).unwrap();
    let learner_log = dir.path().join("learner.log");

    // The learner reads the whole log, publishes, checkpoints and exits.
    let mut learner = learner_until_end(&learner_path, &learner_log)
        .spawn()
        .unwrap();
    let status = finish_within(&mut learner, Duration::from_secs(120), &learner_log);
    assert!(status.success(), "{status}; see {}", learner_log.display());

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let configs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| replica_config(dir.path(), name, &broker.bootstrap()))
        .collect();
    let logs: Vec<PathBuf> = ["a", "b"]
        .iter()
        .map(|name| dir.path().join(format!("replica-{name}.log")))
        .collect();
    let (a, endpoint_a) = start_replica(&configs[0], &logs[0]);
    let (b, endpoint_b) = start_replica(&configs[1], &logs[1]);
    runtime.block_on(ready(&endpoint_a));
    runtime.block_on(ready(&endpoint_b));
    let served_a = runtime.block_on(fetch(&endpoint_a, &VERSIONS));
    let served_b = runtime.block_on(fetch(&endpoint_b, &VERSIONS));
    let expected = expected(&config, &served_a);
    let learned = expected.values().filter(|p| !p.is_prior).count();
    assert!(learned > DOCS as usize, "{learned} keys learned");
    assert_serves(&served_a, &expected, "replica a");
    assert_serves(&served_b, &expected, "replica b");

    // SIGKILL replica a once it wrote a snapshot; it restarts from it.
    let snapshot = dir.path().join("a-snapshot/replica.snapshot");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !snapshot.exists() {
        assert!(Instant::now() < deadline, "replica a wrote no snapshot");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(400)); // one written after ready
    a.kill();
    let (a, endpoint_a) = start_replica(&configs[0], &logs[0]);
    runtime.block_on(ready(&endpoint_a));
    let again = runtime.block_on(fetch(&endpoint_a, &VERSIONS));
    assert_serves(&again, &expected, "replica a after its restart");
    for (key, params) in &served_a {
        assert!(again[key].seq >= params.seq, "{key:?} went backwards");
    }
    let text = std::fs::read_to_string(&logs[0]).unwrap();
    assert!(
        text.contains("snapshot loaded"),
        "restarted from the snapshot:\n{text}"
    );

    // An admin fork through replica b reaches a running learner through
    // the control topic; the fork reaches both replicas through the
    // params topic.
    let learner = Process(Some(
        Command::new(binary("learner"))
            .args(["run", "--config"])
            .arg(&learner_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&learner_log))
            .spawn()
            .unwrap(),
    ));
    let mut admin = runtime
        .block_on(AdminServiceClient::connect(endpoint_b.clone()))
        .unwrap();
    let accepted = runtime
        .block_on(admin.fork_version(bearer(v1::ForkVersionRequest {
            from: "beta".into(),
            to: "beta-b".into(),
            overrides: None,
        })))
        .unwrap()
        .into_inner();
    // The command waits for its event time: one sample per partition
    // beyond it moves the learner's watermark past it.
    let after = accepted.effective_event_time_ms + OUT_OF_ORDERNESS_MS + 1_000;
    let beyond: Vec<LogRecord> = (0..u64::from(PARTITIONS))
        .map(|doc| beta_sample(doc, after))
        .collect();
    produce_samples(&broker, &beyond, PARTITIONS);
    let deadline = Instant::now() + Duration::from_secs(60);
    for endpoint in [&endpoint_a, &endpoint_b] {
        loop {
            let served = runtime.block_on(async {
                let mut client = ParamServiceClient::connect(endpoint.clone()).await.unwrap();
                client
                    .get_params(v1::GetParamsRequest {
                        version: "beta-b".into(),
                        doc_ids: (0..DOCS).collect(),
                    })
                    .await
            });
            // The version is announced before its (warm-started) keys.
            let warm = served.map_or(0, |response| {
                let params = response.into_inner().params;
                params.iter().filter(|p| !p.is_prior).count()
            });
            if warm > 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the warm-started fork never reached {endpoint}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let text = std::fs::read_to_string(&learner_log).unwrap();
    assert!(
        text.contains(&accepted.command_id),
        "the learner applied the command from the control topic:\n{text}"
    );
    learner.terminate(&learner_log);
    a.terminate(&logs[0]);
    b.terminate(&logs[1]);
}
