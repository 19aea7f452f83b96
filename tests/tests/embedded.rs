//! The param-server embedded in the `learner` process (`[param_server]`):
//! over real gRPC it serves exactly the state the learner checkpoints, and
//! a restarted learner serves every key again at once, not only those it
//! updates after the restart; an admin call reaches the learner in
//! process, is applied at its event time, and the version it creates is
//! served; a savepoint command cuts the input at its event time and a
//! rollback restores one version from it; a learner that lost everything
//! restores from the server's parameters.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use posterior_learner::config::Config;
use posterior_learner::engine::{Engine, Payload};
use posterior_learner::params::{ParamChange, params_to_wire};
use posterior_learner::publish::{ParamSink, PublishError, PublishStats};
use posterior_learner::registry::VersionEntry;
use posterior_learner::runner::{Checkpointer, fresh_engine, restore_engine};
use posterior_learner::sample::Sample;
use posterior_learner::store::RocksStore;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use posterior_tests::broker::{Broker, Storage};
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogRecord, LogSpec, clicked_beta, generate_records};
use posterior_tests::oracle::produce_samples;
use posterior_tests::scrape::{label, logged_addr, scrape, series};
use posterior_tests::serving::{Process, with_token};
use posterior_tests::{binary, finish_within, log_file};

const DOCS: u64 = 400;
const PARTITIONS: u32 = 2;
const VERSIONS: [&str; 2] = ["beta", "logistic"];

/// Every (version, doc) → the served `Params`.
type Served = BTreeMap<(String, u64), v1::Params>;

/// A learner reading the broker's `samples` topic without ever marking a
/// partition idle (no wall clock in what it applies), with an embedded
/// server on a free port.
fn config_text(dir: &Path, bootstrap: &str) -> String {
    let text = learner_toml(dir, "embedded", Source::Kafka(bootstrap), 5_000, None);
    let text = text.replace(
        "topic = \"samples\"",
        "topic = \"samples\"\nidle_timeout_ms = 0",
    );
    format!("{text}\n[param_server]\nlisten = \"127.0.0.1:0\"\n")
}

const TOKEN: &str = "0123456789abcdef0123456789abcdef";

/// [`config_text`] with admin tokens (a file of mode 600 in `dir`).
fn config_with_admin(dir: &Path, bootstrap: &str) -> String {
    use std::os::unix::fs::PermissionsExt as _;
    let tokens = dir.join("tokens");
    std::fs::write(&tokens, format!("operator admin {TOKEN}\n")).unwrap();
    std::fs::set_permissions(&tokens, std::fs::Permissions::from_mode(0o600)).unwrap();
    format!(
        "{}\n[param_server.admin]\ntokens_file = \"{}\"\n",
        config_text(dir, bootstrap),
        tokens.display()
    )
}

/// `request` with the admin token.
fn bearer<T>(request: T) -> tonic::Request<T> {
    with_token(TOKEN, request)
}

fn start(config: &Path, log: &Path) -> (Process, String) {
    let before = std::fs::read_to_string(log).unwrap_or_default().len();
    let child = Process::spawn(
        Command::new(binary("learner"))
            .args(["run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(log)),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text[before..].lines().find_map(|l| {
            l.split_once("param-server listening on ")
                .map(|(_, addr)| addr)
        }) {
            return (child, format!("http://{}", line.trim()));
        }
        assert!(Instant::now() < deadline, "no listening line in:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The embedded server's `feed_updates_total` by outcome, scraped from
/// the metrics endpoint `log` names.
fn feed_counts(log: &Path) -> BTreeMap<String, f64> {
    let page = scrape(logged_addr(log, "metrics listening on "));
    series(&page, "posterior_param_server_feed_updates_total")
        .into_iter()
        .map(|(labels, n)| (label(&labels, "outcome").unwrap().to_owned(), n))
        .collect()
}

/// Every doc of every version as served, or `None` while the server says
/// UNAVAILABLE (the learner has not handed its state over yet).
async fn fetch(endpoint: &str) -> Option<Served> {
    let mut client = ParamServiceClient::connect(endpoint.to_owned())
        .await
        .unwrap();
    let mut served = Served::new();
    for version in VERSIONS {
        let request = v1::GetParamsRequest {
            version: version.into(),
            doc_ids: (0..DOCS).collect(),
        };
        let response = match client.get_params(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => return None,
            Err(status) => panic!("GetParams: {status:?}"),
        };
        for params in response.params {
            served.insert((version.to_owned(), params.doc_id), params);
        }
    }
    Some(served)
}

/// The first answer the server gives (polling while it is unavailable).
fn first_answer(endpoint: &str) -> Served {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(served) = runtime.block_on(fetch(endpoint)) {
            return served;
        }
        assert!(Instant::now() < deadline, "the server never became ready");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls until two fetches half a second apart agree and `done` holds.
fn settle(endpoint: &str, done: impl Fn(&Served) -> bool) -> Served {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = runtime.block_on(fetch(endpoint));
    loop {
        std::thread::sleep(Duration::from_millis(500));
        let now = runtime.block_on(fetch(endpoint));
        if let Some(now) = now
            .as_ref()
            .filter(|now| last.as_ref() == Some(*now) && done(now))
        {
            return now.clone();
        }
        assert!(
            Instant::now() < deadline,
            "the served params did not settle"
        );
        last = now;
    }
}

/// What the learner's checkpoint holds, as the server should serve it:
/// every key of the store, and the prior (flagged) for the others.
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

#[test]
fn the_embedded_server_serves_the_checkpointed_state_and_all_of_it_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    let config_path = dir.path().join("learner.toml");
    let text = config_text(dir.path(), &broker.bootstrap());
    let text = format!("{text}\n[metrics]\nlisten = \"127.0.0.1:0\"\n");
    std::fs::write(&config_path, &text).unwrap();
    let (_, server) = text.split_once("[param_server]").unwrap();
    let config = Config::from_toml(text.split_once("[param_server]").unwrap().0).unwrap();
    assert!(server.contains("listen"));
    let log = dir.path().join("learner.log");
    let (records, _) = generate_records(LogSpec {
        records: 30_000,
        docs: DOCS,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 23,
    });
    produce_samples(&broker, &records, PARTITIONS);

    // Run 1: the whole log is read (its tail waits for a watermark that no
    // longer moves); what is served settles, then a SIGTERM checkpoints.
    let (learner, endpoint) = start(&config_path, &log);
    let served = settle(&endpoint, |s| {
        s.values().filter(|p| !p.is_prior).count() > DOCS as usize
    });
    // Every update reached the server once: none was stale (a key sent
    // twice at the start would be).
    let feed = feed_counts(&log);
    assert_eq!(feed.get("stale"), None, "{feed:?}");
    learner.terminate(&log);
    let expected = expected(&config, &served);
    let learned = expected.values().filter(|p| !p.is_prior).count();
    assert!(learned > DOCS as usize, "{learned} keys learned");
    assert_eq!(served.len(), expected.len());
    for (key, params) in &expected {
        assert_eq!(
            served.get(key),
            Some(params),
            "{key:?} served before the stop"
        );
    }

    // Run 2: no input at all; the restored state is served in full, each
    // key sent once. The server's very first answer already holds it: it
    // says UNAVAILABLE, not a prior, until the learner has handed it over.
    let log = dir.path().join("learner-2.log");
    let (learner, endpoint) = start(&config_path, &log);
    let first = first_answer(&endpoint);
    for (key, params) in &expected {
        assert_eq!(
            first.get(key),
            Some(params),
            "{key:?} in the first answer after the restart"
        );
    }
    let again = settle(&endpoint, |s| {
        s.values().filter(|p| !p.is_prior).count() == learned
    });
    let feed = feed_counts(&log);
    assert_eq!(feed.get("applied"), Some(&(learned as f64)), "{feed:?}");
    assert_eq!(feed.get("stale"), None, "{feed:?}");
    for (key, params) in &expected {
        assert_eq!(
            again.get(key),
            Some(params),
            "{key:?} served after the restart"
        );
    }
    learner.terminate(&log);
}

/// A learner with the admin service (its config `config_with_admin`
/// plus what `extra` adds for the run's directory) on a broker holding
/// 5 000 generated samples (`seed`), with a runtime and an admin client
/// connected to it.
struct AdminRun {
    dir: tempfile::TempDir,
    broker: Broker,
    log: PathBuf,
    learner: Process,
    endpoint: String,
    runtime: tokio::runtime::Runtime,
    admin: AdminServiceClient<tonic::transport::Channel>,
}

fn start_with_admin(seed: u64, extra: impl FnOnce(&Path) -> String) -> AdminRun {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    let config_path = dir.path().join("learner.toml");
    std::fs::write(
        &config_path,
        format!(
            "{}\n{}",
            config_with_admin(dir.path(), &broker.bootstrap()),
            extra(dir.path())
        ),
    )
    .unwrap();
    let log = dir.path().join("learner.log");
    let (records, _) = generate_records(LogSpec {
        records: 5_000,
        docs: DOCS,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed,
    });
    produce_samples(&broker, &records, PARTITIONS);
    let (learner, endpoint) = start(&config_path, &log);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let admin = runtime
        .block_on(AdminServiceClient::connect(endpoint.clone()))
        .unwrap();
    AdminRun {
        dir,
        broker,
        log,
        learner,
        endpoint,
        runtime,
        admin,
    }
}

#[test]
fn an_admin_fork_reaches_the_learner_and_the_fork_is_served_warm() {
    let AdminRun {
        dir: tempdir,
        broker,
        log,
        learner,
        endpoint,
        runtime,
        mut admin,
    } = start_with_admin(29, |_| String::new());
    let dir = tempdir.path();
    // Refused without the token: nothing reaches the learner.
    let refused = runtime
        .block_on(admin.fork_version(v1::ForkVersionRequest {
            from: "beta".into(),
            to: "intruder".into(),
            overrides: None,
        }))
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let accepted = runtime
        .block_on(admin.fork_version(bearer(v1::ForkVersionRequest {
            from: "beta".into(),
            to: "beta-b".into(),
            overrides: None,
        })))
        .unwrap()
        .into_inner();
    assert!(!accepted.command_id.is_empty());

    // The command waits for its event time (wall clock plus the lead).
    push_watermark_past(&broker, accepted.effective_event_time_ms);
    let listed = versions_until(&runtime, &mut admin, |names| {
        names.iter().any(|n| n == "beta-b")
    });
    assert!(
        !listed
            .iter()
            .any(|v| v.spec.as_ref().unwrap().name == "intruder"),
        "a refused call changed nothing"
    );
    let fork = listed
        .iter()
        .find(|v| v.spec.as_ref().unwrap().name == "beta-b")
        .unwrap();
    assert!(fork.keys > 0, "the fork is warm-started: {fork:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&accepted.command_id) && text.contains("forked \"beta\" into"),
        "the learner logged the applied command:\n{text}"
    );

    // A learner that lost its state and has no savepoint, given a read
    // token, registers the fork (which the config does not name) from
    // the server's list and seeds it with the served keys.
    let token_file = dir.join("fallback-token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let (orphan, _) = run_orphan(
        dir,
        &endpoint,
        &format!("token_file = \"{}\"\n", token_file.display()),
    );
    let id = orphan
        .registry()
        .id("beta-b")
        .expect("the fork is registered");
    let keys = orphan.params().filter(|(k, _)| k.version == id).count();
    assert_eq!(keys as u64, fork.keys, "every served key of the fork");
    learner.terminate(&log);
}

/// The versions `admin` lists, by name, polled until `done` holds them
/// (a minute at most).
fn versions_until(
    runtime: &tokio::runtime::Runtime,
    admin: &mut AdminServiceClient<tonic::transport::Channel>,
    done: impl Fn(&[String]) -> bool,
) -> Vec<v1::VersionInfo> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let versions = runtime
            .block_on(admin.list_versions(bearer(v1::ListVersionsRequest {})))
            .unwrap()
            .into_inner()
            .versions;
        let names: Vec<String> = versions
            .iter()
            .map(|v| v.spec.as_ref().unwrap().name.clone())
            .collect();
        if done(&names) {
            return versions;
        }
        assert!(Instant::now() < deadline, "never listed: {names:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_accepted_admin_command_survives_a_crash_of_the_learner() {
    let AdminRun {
        dir: tempdir,
        broker,
        log,
        learner,
        runtime,
        mut admin,
        ..
    } = start_with_admin(31, |_| String::new());
    let dir = tempdir.path();
    let accepted = runtime
        .block_on(admin.fork_version(bearer(v1::ForkVersionRequest {
            from: "beta".into(),
            to: "beta-c".into(),
            overrides: None,
        })))
        .unwrap()
        .into_inner();
    // At once: the learner checkpoints every second, and the command was
    // still in its memory only, a checkpoint away, before the call waited
    // for it to be checkpointed.
    learner.kill();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&format!(
            "control: {:?} from inbox scheduled",
            accepted.command_id
        )),
        "the learner took the command before the call returned:\n{text}"
    );

    let (learner, endpoint) = start(&dir.join("learner.toml"), &log);
    let mut admin = runtime
        .block_on(AdminServiceClient::connect(endpoint))
        .unwrap();
    // The command waits for its event time (wall clock plus the lead).
    push_watermark_past(&broker, accepted.effective_event_time_ms);
    let listed = versions_until(&runtime, &mut admin, |names| {
        names.iter().any(|n| n == "beta-c")
    });
    let fork = listed
        .iter()
        .find(|v| v.spec.as_ref().unwrap().name == "beta-c")
        .unwrap();
    assert!(fork.keys > 0, "the fork is warm-started: {fork:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    let restarted = text.rfind("param-server listening on ").unwrap();
    assert!(
        text[restarted..].contains(&accepted.command_id)
            && text[restarted..].contains("forked \"beta\" into"),
        "the restarted learner applied the command:\n{text}"
    );
    learner.terminate(&log);
}

/// Runs a learner `orphan` without state or savepoint, with an empty
/// input and `[fallback.param_server]` at `endpoint` (plus `extra` lines
/// of that table), to its end; returns its engine, restored from its
/// checkpoint, and its log.
fn run_orphan(dir: &Path, endpoint: &str, extra: &str) -> (Engine, PathBuf) {
    let empty = dir.join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let text = format!(
        "{}\n[fallback.param_server]\nendpoint = \"{endpoint}\"\n{extra}",
        learner_toml(dir, "orphan", Source::File(&empty), 5_000, None)
    );
    let orphan_path = dir.join("orphan.toml");
    std::fs::write(&orphan_path, &text).unwrap();
    let orphan_log = dir.join("orphan.log");
    let mut orphan = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&orphan_path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log_file(&orphan_log))
        .spawn()
        .unwrap();
    let status = finish_within(&mut orphan, Duration::from_secs(120), &orphan_log);
    assert!(status.success(), "{status}");
    let config = Config::from_toml(&text).unwrap();
    let store = RocksStore::open(&config.state.dir).unwrap();
    let (engine, _) = restore_engine(&config, &store).unwrap().unwrap();
    (engine, orphan_log)
}

fn unix_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    i64::try_from(since.as_millis()).unwrap()
}

/// Waits for `dir/MANIFEST.json` and returns the verified savepoint.
fn wait_for_savepoint(dir: &Path, log: &Path) -> posterior_learner::savepoint::Savepoint {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join(posterior_learner::savepoint::MANIFEST).exists() {
        assert!(
            Instant::now() < deadline,
            "no savepoint {}; log:\n{}",
            dir.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    posterior_learner::savepoint::verify(dir).unwrap()
}

/// One sample per partition far enough beyond `at_ms` to move the
/// watermark past it.
fn push_watermark_past(broker: &Broker, at_ms: i64) {
    let after = at_ms + OUT_OF_ORDERNESS_MS + 1_000;
    let beyond: Vec<LogRecord> = (0..u64::from(PARTITIONS))
        .map(|doc| clicked_beta(doc, after))
        .collect();
    produce_samples(broker, &beyond, PARTITIONS);
}

#[test]
fn an_admin_savepoint_is_cut_at_its_event_time_and_a_rollback_restores_one_version() {
    let AdminRun {
        dir,
        broker,
        log,
        learner,
        endpoint,
        runtime,
        mut admin,
    } = start_with_admin(31, |dir| {
        format!(
            "[savepoints]\ndir = \"{}\"\n",
            dir.join("savepoints").display()
        )
    });
    let savepoints = dir.path().join("savepoints");

    // The savepoint: cut at its event time, named by its command id.
    let called_ms = unix_ms();
    let taken = runtime
        .block_on(admin.trigger_savepoint(bearer(v1::TriggerSavepointRequest {
            label: "before the experiment".into(),
        })))
        .unwrap()
        .into_inner();
    // At least the server's lead: its stamp is wall clock + lead.
    let lead_ms = taken.effective_event_time_ms - called_ms;
    push_watermark_past(&broker, taken.effective_event_time_ms);
    let saved = wait_for_savepoint(&savepoints.join(&taken.command_id), &log);
    assert_eq!(
        saved.manifest.released_below_ms, taken.effective_event_time_ms,
        "every sample below the command's time, none at or after it"
    );
    assert_eq!(
        saved.manifest.command_id.as_deref(),
        Some(&*taken.command_id)
    );
    assert_eq!(
        saved.manifest.label.as_deref(),
        Some("before the experiment")
    );
    let (_, beta_saved) = posterior_learner::savepoint::version_states(&saved, "beta")
        .unwrap()
        .unwrap();
    assert!(beta_saved.len() > DOCS as usize / 2, "{}", beta_saved.len());

    // Beta learns more after the cut, a new doc included.
    let new_doc = DOCS + 7;
    // Right after the samples that moved the watermark past the cut, so
    // not late, and before the rollback's time (wall clock + lead), so
    // rolled back.
    let base = taken.effective_event_time_ms + OUT_OF_ORDERNESS_MS + 1_001;
    let mut more: Vec<LogRecord> = (0..40)
        .map(|i| clicked_beta(if i == 0 { new_doc } else { i % 10 }, base + i as i64))
        .collect();
    // Moves the watermark past all of them: the micro-batches the log left
    // pending flush by age now, so the other version is quiet from here.
    more.extend(
        (0..u64::from(PARTITIONS)).map(|doc| clicked_beta(doc, base + 41 + OUT_OF_ORDERNESS_MS)),
    );
    produce_samples(&broker, &more, PARTITIONS);
    let before = settle(&endpoint, |s| {
        s.get(&("beta".to_owned(), 1))
            .is_some_and(|p| p.sample_count > 1.0)
    });

    // The rollback of beta to that savepoint, at its own event time.
    while unix_ms() + lead_ms < base + 1_000 {
        std::thread::sleep(Duration::from_millis(50));
    }
    let rolled = runtime
        .block_on(admin.rollback_version(bearer(v1::RollbackVersionRequest {
            version: "beta".into(),
            savepoint_id: taken.command_id.clone(),
        })))
        .unwrap()
        .into_inner();
    assert!(rolled.effective_event_time_ms > base);
    push_watermark_past(&broker, rolled.effective_event_time_ms.max(base + 100));
    let by_doc: BTreeMap<u64, &posterior_learner::posterior::KeyState> =
        beta_saved.iter().map(|(d, s)| (*d, s)).collect();
    let after = settle(&endpoint, |s| {
        s.iter()
            .filter(|((v, _), _)| v == "beta")
            .all(|((_, doc), p)| by_doc.get(doc).is_none_or(|st| p.seq > st.seq))
            && s.iter()
                .any(|((v, doc), p)| v == "beta" && before[&(v.clone(), *doc)].seq < p.seq)
    });
    let mut compared = 0;
    for ((version, doc), params) in &after {
        let old = &before[&(version.clone(), *doc)];
        if version != "beta" {
            assert_eq!(params, old, "{version}/{doc}: another version changed");
            continue;
        }
        if let Some(state) = by_doc.get(doc) {
            assert!(params.seq > old.seq, "doc {doc}: seq went back");
            let mut expected = params_to_wire("beta", *doc, state);
            expected.seq = params.seq;
            assert_eq!(params, &expected, "doc {doc} is not as saved");
            compared += 1;
        }
    }
    assert_eq!(compared, beta_saved.len());
    // The doc the savepoint lacked is back at the prior, with a newer seq.
    let new_params = runtime.block_on(async {
        let mut client = ParamServiceClient::connect(endpoint.clone()).await.unwrap();
        client
            .get_params(v1::GetParamsRequest {
                version: "beta".into(),
                doc_ids: vec![new_doc],
            })
            .await
            .unwrap()
            .into_inner()
            .params
            .remove(0)
    });
    assert_eq!(new_params.sample_count, 0.0, "{new_params:?}");
    assert!(new_params.seq >= 2, "{new_params:?}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.contains(&rolled.command_id) && text.contains("rolled \"beta\" back"),
        "the learner logged the rollback:\n{text}"
    );
    learner.terminate(&log);
}

#[test]
fn a_learner_without_state_or_savepoint_restores_from_the_param_server() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(Storage::Memory);
    broker.create_topic("samples", PARTITIONS);
    let serving_path = dir.path().join("serving.toml");
    std::fs::write(&serving_path, config_text(dir.path(), &broker.bootstrap())).unwrap();
    let (records, _) = generate_records(LogSpec {
        records: 5_000,
        docs: DOCS,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 37,
    });
    produce_samples(&broker, &records, PARTITIONS);
    let log = dir.path().join("learner.log");
    let (serving, endpoint) = start(&serving_path, &log);
    let served = settle(&endpoint, |s| {
        s.values().filter(|p| !p.is_prior).count() > DOCS as usize
    });

    // A second learner whose state and savepoints are gone: it seeds both
    // versions from the server, then reads its (empty) input.
    let (engine, orphan_log) = run_orphan(dir.path(), &endpoint, "");
    serving.terminate(&log);

    let learned: Served = served.into_iter().filter(|(_, p)| !p.is_prior).collect();
    assert_eq!(engine.param_count(), learned.len());
    for (key, state) in engine.params() {
        let name = &engine.registry().get(key.version).unwrap().spec.name;
        let got = params_to_wire(name, key.doc_id, state);
        assert_eq!(
            learned.get(&(name.clone(), key.doc_id)),
            Some(&got),
            "{name}/{}: not what the server served",
            key.doc_id
        );
    }
    let text = std::fs::read_to_string(&orphan_log).unwrap();
    assert!(
        text.contains("seeded") && text.contains("from served parameters"),
        "the seeding is logged:\n{text}"
    );
}

/// A sink that starts empty, like an embedded server, and records every
/// (version, doc, seq) it is handed.
struct Recorder(Arc<Mutex<Vec<(String, u64, u64)>>>);

impl ParamSink for Recorder {
    fn publish(&mut self, updates: Vec<ParamChange>) -> Result<(), PublishError> {
        let mut seen = self.0.lock().unwrap();
        seen.extend(
            updates
                .iter()
                .map(|u| (u.version.to_string(), u.doc_id, u.state.seq)),
        );
        Ok(())
    }

    fn announce(&mut self, _: &[VersionEntry]) -> Result<(), PublishError> {
        Ok(())
    }

    fn flush(&mut self) -> Result<(), PublishError> {
        Ok(())
    }

    fn wants_every_key_at_start(&self) -> bool {
        true
    }

    fn stats(&self) -> PublishStats {
        PublishStats::default()
    }
}

/// A clicked `beta` sample of `doc_id` at `t`, as the engine takes it.
fn clicked(doc_id: u64, t: i64) -> Payload {
    Payload::Sample(Sample {
        doc_id,
        version: "beta".into(),
        event_time_ms: t,
        context: vec![],
        labels: posterior_learner::sample::labels([("click", 1.0)]),
        weight: 1.0,
        sample_id: None,
    })
}

#[test]
fn a_restarted_learner_hands_a_consumer_that_starts_empty_each_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let unused = dir.path().join("unused.jsonl");
    let text = learner_toml(
        dir.path(),
        "restart",
        Source::File(&unused),
        1_000_000,
        None,
    );
    let config = Config::from_toml(&text).unwrap();
    // One click a second on each of `docs`, from the offset `from` (its
    // time in seconds), all applied; returns the next offset.
    let feed = |engine: &mut Engine, from: u64, docs: std::ops::Range<u64>| {
        let mut offset = from;
        for doc in docs {
            engine.ingest(0, offset, clicked(doc, offset as i64 * 1_000));
            offset += 1;
        }
        // Moves the watermark just past the last sample (it stays
        // buffered itself), so the next run's samples are not late.
        let last = (offset as i64 - 1) * 1_000;
        engine.ingest(
            0,
            offset,
            clicked(1_000_000, last + OUT_OF_ORDERNESS_MS + 1),
        );
        offset + 1
    };
    let run = |engine: &mut Engine, store: RocksStore, dead: Option<u64>, records: u64| {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let recorder = Box::new(Recorder(Arc::clone(&seen)));
        let mut checkpointer = Checkpointer::new(&config, store, dead, recorder).unwrap();
        checkpointer.checkpoint(engine, records).unwrap();
        checkpointer.finish(engine, records).unwrap();
        drop(checkpointer);
        Arc::try_unwrap(seen).unwrap().into_inner().unwrap()
    };

    let mut engine = fresh_engine(&config, [0]).unwrap();
    let next = feed(&mut engine, 0, 0..100);
    let store = RocksStore::open(&config.state.dir).unwrap();
    let first = run(&mut engine, store, None, next);
    drop(engine);

    // Restored, the learner changes docs 50..150 before its first
    // publish: that publish holds them, and every other restored key.
    let store = RocksStore::open(&config.state.dir).unwrap();
    let (mut engine, dead) = restore_engine(&config, &store).unwrap().unwrap();
    let next = feed(&mut engine, next, 50..150);
    let second = run(&mut engine, store, dead, next);
    let mut keys = std::collections::BTreeSet::new();
    for (version, doc, _) in &second {
        assert!(
            keys.insert((version.clone(), *doc)),
            "{version}/{doc} sent twice"
        );
    }
    for (version, doc, _) in &first {
        assert!(
            keys.contains(&(version.clone(), *doc)),
            "{version}/{doc} not sent"
        );
    }
    let newest: BTreeMap<(&str, u64), u64> = first
        .iter()
        .map(|(v, d, seq)| ((v.as_str(), *d), *seq))
        .collect();
    let changed = second
        .iter()
        .filter(|(v, d, seq)| newest.get(&(v.as_str(), *d)).is_some_and(|s| seq > s))
        .count();
    assert!(
        changed >= 40,
        "{changed} restored keys changed by the second run"
    );
}
