//! Standalone `param-server` replicas as child processes: their config
//! (fed by the `params` topic, admin commands to the `control` topic),
//! start-up, readiness, and what they serve compared with a learner's
//! checkpointed state.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use posterior_learner::config::Config;
use posterior_learner::params::params_to_wire;
use posterior_learner::runner::restore_engine;
use posterior_learner::store::RocksStore;
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::{binary, finish_within, log_file};

/// The admin bearer token of every replica [`replica_config`] writes.
pub const ADMIN_TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// `request` with `token` as its bearer token (an admin call).
pub fn with_token<T>(token: &str, request: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(request);
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("an ASCII token"),
    );
    request
}

/// Every (version, doc) → the served `Params`.
pub type Served = BTreeMap<(String, u64), v1::Params>;

/// A child process, killed (SIGKILL) if it is still running when dropped
/// — so a failing test or run never leaves one behind.
#[derive(Debug)]
pub struct Process(Option<Child>);

impl Process {
    /// Starts `command`.
    ///
    /// # Panics
    /// When it cannot be started.
    pub fn spawn(command: &mut Command) -> Self {
        Self(Some(command.spawn().expect("start a child process")))
    }

    /// The child's pid, while it runs.
    pub fn id(&self) -> Option<u32> {
        self.0.as_ref().map(Child::id)
    }

    /// SIGKILL, then reaps it.
    ///
    /// # Panics
    /// When it already ended or cannot be signalled.
    pub fn kill(mut self) {
        let mut child = self.0.take().expect("a running child");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap the child");
    }

    /// SIGTERM, then waits at most a minute for it to exit 0.
    ///
    /// # Panics
    /// When it does not exit, or exits with a failure (the panic names
    /// `log`, where its stderr goes).
    pub fn terminate(mut self, log: &Path) {
        let mut child = self.0.take().expect("a running child");
        let pid = child.id().to_string();
        let signalled = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(signalled.success(), "SIGTERM to {pid} failed");
        let status = finish_within(&mut child, Duration::from_secs(60), log);
        assert!(status.success(), "{status}; see {}", log.display());
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Writes `DIR/NAME.toml`, a replica config: no versions of its own (the
/// learners announce them on the `params` topic it reads), a local
/// snapshot every 200 ms under `DIR/NAME-snapshot`, admin commands (token
/// [`ADMIN_TOKEN`]) to the `control` topic. Returns its path.
///
/// # Panics
/// When a file cannot be written.
pub fn replica_config(dir: &Path, name: &str, bootstrap: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt as _;
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("operator admin {ADMIN_TOKEN}\n")).expect("write tokens");
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600))
        .expect("restrict the tokens file");
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

[metrics]
listen = "127.0.0.1:0"
"#,
        tokens = tokens.display(),
        snapshots = dir.join(format!("{name}-snapshot")).display(),
    );
    std::fs::write(&path, text).expect("write the replica config");
    path
}

/// Starts `param-server --config CONFIG` (stderr appended to `log`) and
/// waits for its listening line; returns it and its endpoint
/// (`http://127.0.0.1:PORT`).
///
/// # Panics
/// When it cannot start or does not listen within 30 s.
pub fn start_replica(config: &Path, log: &Path) -> (Process, String) {
    let before = std::fs::read_to_string(log).unwrap_or_default().len();
    let process = Process::spawn(
        Command::new(binary("param-server"))
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(log)),
    );
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

/// Waits until the health service says `ParamService` is SERVING (a
/// replica is once it caught up with the `params` topic); returns how
/// long it took.
///
/// # Panics
/// When the server cannot be reached, or is not ready within 60 s.
pub async fn ready(endpoint: &str) -> Duration {
    let start = Instant::now();
    let channel = tonic::transport::Channel::from_shared(endpoint.to_owned())
        .expect("a valid endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    loop {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: "posterior.v1.ParamService".into(),
            })
            .await
            .expect("health check")
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

/// What `endpoint` serves for docs `0..docs` of each of `versions`, or
/// the first error (e.g. `NOT_FOUND` before a version is announced).
///
/// # Errors
/// When the server cannot be reached or refuses a request.
pub async fn fetch(endpoint: &str, versions: &[&str], docs: u64) -> Result<Served, tonic::Status> {
    let mut client = ParamServiceClient::connect(endpoint.to_owned())
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut served = Served::new();
    for &version in versions {
        let request = v1::GetParamsRequest {
            version: version.into(),
            doc_ids: (0..docs).collect(),
        };
        let response = client.get_params(request).await?.into_inner();
        for params in response.params {
            served.insert((version.to_owned(), params.doc_id), params);
        }
    }
    Ok(served)
}

/// Every key of the learner's checkpointed state, as a replica serves it.
///
/// # Panics
/// When its store cannot be opened or holds no state.
pub fn learned(config: &Config) -> Served {
    let store = RocksStore::open(&config.state.dir).expect("open the learner's store");
    let (engine, _) = restore_engine(config, &store)
        .expect("restore")
        .expect("the store holds a state");
    engine
        .params()
        .map(|(key, state)| {
            let name = &engine
                .registry()
                .get(key.version)
                .expect("a registered version")
                .spec
                .name;
            (
                (name.clone(), key.doc_id),
                params_to_wire(name, key.doc_id, state),
            )
        })
        .collect()
}

/// What a replica should serve: the keys of `learned`, and for every
/// other key of `prior_of` (what some server served) its prior, flagged.
pub fn with_priors(learned: &Served, prior_of: &Served) -> Served {
    let mut expected: Served = prior_of
        .iter()
        .filter(|(_, p)| p.is_prior)
        .map(|(k, p)| (k.clone(), p.clone()))
        .collect();
    expected.extend(learned.iter().map(|(k, p)| (k.clone(), p.clone())));
    expected
}

/// The first difference between `served` and `expected`, if any.
pub fn difference(served: &Served, expected: &Served) -> Option<String> {
    if served.len() != expected.len() {
        return Some(format!(
            "{} keys served, {} expected",
            served.len(),
            expected.len()
        ));
    }
    expected.iter().find_map(|(key, params)| {
        let got = served.get(key);
        (got != Some(params)).then(|| format!("{key:?}: served {got:?}, expected {params:?}"))
    })
}
