//! Standalone param-server replicas fed by the Kafka `params` topic: a
//! learner runs over a generated log and publishes to the topic; two
//! `param-server` processes with `[feed.kafka]` become ready and serve
//! exactly the learner's final state, identical to each other; one is
//! killed with SIGKILL and restarted from its snapshot, and serves the
//! same parameters again (no seq goes backwards); an admin fork sent
//! through a replica's AdminService reaches a running learner through the
//! `control` topic, and the forked version reaches both replicas through
//! the `params` topic. That learner also hosts an embedded param-server
//! (`[param_server]` with `[publish.kafka]`), which ends up serving what
//! the replicas serve. A replica whose hold for updates ahead of their
//! version's announcement overflows reads the topic again before it
//! serves.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use posterior_learner::config::Config;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogRecord, LogSpec, clicked_beta, generate_records};
use posterior_tests::oracle::produce_samples;
use posterior_tests::scrape::{logged_addr, scrape, series};
use posterior_tests::serving::{
    self, ADMIN_TOKEN, Process, Served, difference, learned, ready, replica_config, start_replica,
    with_priors, with_token,
};
use posterior_tests::{binary, finish_within, learner_until_end, log_file};

const DOCS: u64 = 300;
const PARTITIONS: u32 = 2;
const VERSIONS: [&str; 2] = ["beta", "logistic"];

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

fn fetch(runtime: &tokio::runtime::Runtime, endpoint: &str) -> Served {
    runtime
        .block_on(serving::fetch(endpoint, &VERSIONS, DOCS))
        .unwrap()
}

fn assert_serves(served: &Served, expected: &Served, who: &str) {
    if let Some(difference) = difference(served, expected) {
        panic!("{who}: {difference}");
    }
}

/// `request` with the admin token.
fn bearer<T>(request: T) -> tonic::Request<T> {
    with_token(ADMIN_TOKEN, request)
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
    let served_a = fetch(&runtime, &endpoint_a);
    let served_b = fetch(&runtime, &endpoint_b);
    let expected = with_priors(&learned(&config), &served_a);
    let learned = expected.values().filter(|p| !p.is_prior).count();
    assert!(learned > DOCS as usize, "{learned} keys learned");
    assert_serves(&served_a, &expected, "replica a");
    assert_serves(&served_b, &expected, "replica b");

    // Replica b's metrics count what its feed applied: at least one
    // update per learned key, and the keys it serves.
    let metrics = logged_addr(&logs[1], "param-server metrics listening local=");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let page = scrape(metrics);
        let applied = series(&page, "posterior_param_server_feed_updates_total")
            .get("outcome=\"applied\"")
            .copied()
            .unwrap_or(0.0);
        let keys: f64 = series(&page, "posterior_param_server_keys").values().sum();
        // The feed's counts reach the metrics every 100 ms.
        if applied >= learned as f64 {
            assert_eq!(keys, learned as f64, "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "{applied} applied:\n{page}");
        std::thread::sleep(Duration::from_millis(50));
    }

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
    let again = fetch(&runtime, &endpoint_a);
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
    // That learner also serves from an embedded param-server: it
    // publishes to both the embedded server and the topic.
    let embedded_path = dir.path().join("learner-embedded.toml");
    std::fs::write(
        &embedded_path,
        format!(
            "{learner_text}
[param_server]
listen = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();
    let learner = Process::spawn(
        Command::new(binary("learner"))
            .args(["run", "--config"])
            .arg(&embedded_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&learner_log)),
    );
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
        .map(|doc| clicked_beta(doc, after))
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

    // The embedded server (every restored key at its start, then the
    // updates) and the replicas (the topic) converge on the same values.
    let embedded = format!(
        "http://{}",
        logged_addr(&learner_log, "param-server listening on ")
    );
    let all = ["beta", "logistic", "beta-b"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let served = |endpoint: &str| runtime.block_on(serving::fetch(endpoint, &all, DOCS));
        let (from_embedded, from_a, from_b) = (
            served(&embedded).unwrap(),
            served(&endpoint_a).unwrap(),
            served(&endpoint_b).unwrap(),
        );
        let differs = difference(&from_embedded, &from_a).or_else(|| difference(&from_b, &from_a));
        let Some(differs) = differs else {
            assert!(
                from_a.values().filter(|p| !p.is_prior).count() > learned,
                "the fork's warm keys are served too"
            );
            break;
        };
        assert!(
            Instant::now() < deadline,
            "embedded server and replicas never converged: {differs}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    learner.terminate(&learner_log);
    a.terminate(&logs[0]);
    b.terminate(&logs[1]);
}

/// A compacted `params` topic can put a version's updates before its only
/// announcement left. A replica that holds fewer of them than wait
/// (`max_held_updates = 2`) reads the partition again once it has caught
/// up, and serves every key from the moment it turns ready.
#[test]
fn updates_beyond_the_hold_are_read_again_before_serving() {
    use posterior_learner::params::{ANNOUNCEMENT_KEY, announcement_to_wire, update_to_wire};
    use posterior_learner::posterior::{BetaPosterior, BetaPrior, ModelKind, ModelSpec};
    use posterior_learner::registry::{VersionEntry, VersionId};
    use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
    use prost::Message as _;

    const LATE_DOCS: u64 = 6;
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("params", 1);
    broker.create_topic("control", 1);
    // Doc d's update has seq d + 1; the announcement comes last.
    let mut records: Vec<(Vec<u8>, Vec<u8>)> = (0..LATE_DOCS)
        .map(|doc| {
            let seq = doc + 1;
            let state = KeyState {
                seq,
                sample_count: seq as f64,
                updated_event_time_ms: 1_700_000_000_000,
                posterior: Posterior::Beta(
                    BetaPosterior::from_parts(1.0 + seq as f64, 2.0).unwrap(),
                ),
            };
            (
                format!("late/{doc}").into_bytes(),
                update_to_wire("late", doc, &state).encode_to_vec(),
            )
        })
        .collect();
    let spec = VersionSpec {
        name: "late".into(),
        model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    };
    let announcement = announcement_to_wire(&[VersionEntry {
        id: VersionId(0),
        spec,
        retired: false,
    }]);
    records.push((ANNOUNCEMENT_KEY.to_vec(), announcement.encode_to_vec()));
    broker.produce(
        "params",
        records
            .iter()
            .map(|(key, value)| (0, key.clone(), value.as_slice())),
    );

    let config = replica_config(dir.path(), "replica", &broker.bootstrap());
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "topic = \"params\"\n",
        "topic = \"params\"\nmax_held_updates = 2\n",
    );
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("replica.log");
    let (replica, endpoint) = start_replica(&config, &log);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(ready(&endpoint));
    let served = runtime
        .block_on(serving::fetch(&endpoint, &["late"], LATE_DOCS))
        .unwrap();
    let seqs: Vec<u64> = (0..LATE_DOCS)
        .map(|doc| served[&("late".to_owned(), doc)].seq)
        .collect();
    let expected: Vec<u64> = (1..=LATE_DOCS).collect();
    assert_eq!(seqs, expected, "every update served once ready");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("reading those partitions again"), "{text}");
    replica.terminate(&log);
}
