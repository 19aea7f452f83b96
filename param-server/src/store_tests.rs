//! Unit tests of the store: no I/O, threads only for the concurrency check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use posterior_learner::params::update_to_wire;
use posterior_learner::posterior::{
    BetaPrior, CovarianceForm, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{RewardSpec, VersionSpec};
use posterior_proto::v1;

use super::*;

/// The states the gRPC tests use too (every field a function of `seq`,
/// so a reader can tell a torn value from a whole one); their versions
/// are not these tests' (a Beta(2, 3) prior here).
#[path = "../tests/common/fixtures.rs"]
#[allow(dead_code, reason = "the versions there are the gRPC tests'")]
mod fixtures;

use fixtures::{beta_state, diagonal_state};

fn beta_spec(name: &str) -> VersionSpec {
    VersionSpec {
        name: name.to_owned(),
        model: ModelSpec::new(ModelKind::Beta(BetaPrior::new(2.0, 3.0).unwrap())),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    }
}

fn diagonal_spec(name: &str, dim: usize) -> VersionSpec {
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, dim, 1.0).unwrap();
    VersionSpec {
        model: ModelSpec::new(ModelKind::Logistic(prior)),
        ..beta_spec(name)
    }
}

fn beta_of(params: &v1::Params) -> (f64, f64) {
    match &params.model {
        Some(v1::params::Model::Beta(b)) => (b.alpha, b.beta),
        other => panic!("not beta: {other:?}"),
    }
}

#[test]
fn an_unseen_doc_reads_as_the_prior() {
    let store = ParamStore::default();
    store.register(beta_spec("ctr")).unwrap();
    let params = store.params("ctr", 7).unwrap();
    assert!(params.is_prior);
    assert_eq!((params.seq, params.doc_id), (0, 7));
    assert_eq!(beta_of(&params), (2.0, 3.0));
}

#[test]
fn only_a_higher_seq_replaces_a_state() {
    let store = ParamStore::default();
    store.register(beta_spec("ctr")).unwrap();
    assert_eq!(
        store.apply("ctr", 1, beta_state(5)).unwrap(),
        ApplyOutcome::Applied
    );
    for stale in [5, 4, 0] {
        assert_eq!(
            store.apply("ctr", 1, beta_state(stale)).unwrap(),
            ApplyOutcome::Stale { stored_seq: 5 }
        );
    }
    let params = store.params("ctr", 1).unwrap();
    assert_eq!((params.seq, params.is_prior), (5, false));
    assert_eq!(beta_of(&params), (6.0, 11.0));
    assert_eq!(
        store.apply("ctr", 1, beta_state(6)).unwrap(),
        ApplyOutcome::Applied
    );
    assert_eq!(store.params("ctr", 1).unwrap().seq, 6);
}

#[test]
fn a_seq_zero_update_is_stale_for_an_unseen_doc() {
    let store = ParamStore::default();
    store.register(beta_spec("ctr")).unwrap();
    // The prior has seq 0; nothing below or at it is news.
    let outcome = store.apply("ctr", 1, beta_state(0)).unwrap();
    assert_eq!(outcome, ApplyOutcome::Stale { stored_seq: 0 });
    assert!(store.version("ctr").unwrap().table().is_empty());
    let params = store.params("ctr", 1).unwrap();
    assert!(params.is_prior, "a seq 0 state is still the prior");
}

#[test]
fn a_state_of_the_wrong_model_or_dimension_changes_nothing() {
    let store = ParamStore::default();
    store.register(diagonal_spec("dwell", 4)).unwrap();
    let err = store.apply("dwell", 1, beta_state(3)).unwrap_err();
    assert!(matches!(err, StoreError::ModelMismatch { .. }), "{err}");
    let err = store.apply("dwell", 1, diagonal_state(3, 5)).unwrap_err();
    assert!(err.to_string().contains("d=5"), "{err}");
    assert!(store.params("dwell", 1).unwrap().is_prior);
    let err = store.apply("nope", 1, beta_state(3)).unwrap_err();
    assert_eq!(err, StoreError::UnknownVersion("nope".into()));
    assert!(err.is_retryable());
}

#[test]
fn wire_updates_round_trip_and_bad_ones_are_errors() {
    let store = ParamStore::default();
    store.register(diagonal_spec("dwell", 3)).unwrap();
    let state = diagonal_state(9, 3);
    let update = update_to_wire("dwell", 42, &state);
    assert_eq!(store.apply_wire(&update).unwrap(), ApplyOutcome::Applied);
    assert_eq!(
        store.params("dwell", 42).unwrap(),
        update.params.clone().unwrap()
    );

    let mut no_params = update.clone();
    no_params.params = None;
    let mut corrupt = update_to_wire("dwell", 43, &diagonal_state(10, 3));
    corrupt.state.truncate(20);
    let mut seq_mismatch = update_to_wire("dwell", 44, &diagonal_state(10, 3));
    seq_mismatch.params.as_mut().unwrap().seq = 11;
    let mut nan = update_to_wire("dwell", 45, &diagonal_state(10, 3));
    let at = nan.state.len() - 8;
    nan.state[at..].copy_from_slice(&f64::NAN.to_le_bytes());
    for (bad, what) in [
        (no_params, "no params"),
        (corrupt, "bytes"),
        (seq_mismatch, "seq"),
        (nan, "not finite"),
    ] {
        let err = store.apply_wire(&bad).unwrap_err();
        assert!(matches!(err, StoreError::BadUpdate { .. }), "{err}");
        assert!(err.to_string().contains(what), "{err} lacks {what}");
    }
    for doc in 43..=45 {
        assert!(store.params("dwell", doc).unwrap().is_prior);
    }
}

#[test]
fn versions_register_once() {
    let store = ParamStore::default();
    let a = store.register(beta_spec("a")).unwrap();
    let b = store.register(diagonal_spec("b", 2)).unwrap();
    assert_eq!((a.id(), b.id()), (0, 1));
    assert_eq!(
        store.register(beta_spec("a")).unwrap_err(),
        StoreError::VersionExists("a".into())
    );
    let names: Vec<_> = store
        .versions()
        .iter()
        .map(|v| v.name().to_owned())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(store.version("b").unwrap().dim(), 2);
}

#[test]
fn a_table_swap_replaces_every_key_at_once() {
    let store = ParamStore::default();
    let version = store.register(beta_spec("ctr")).unwrap();
    store.apply("ctr", 1, beta_state(4)).unwrap();
    let held = version.table();
    let replacement = ParamTable::new(&version.spec().model.kind, 0);
    replacement.apply(2, &beta_state(1)).unwrap();
    let old = version.swap_table(replacement);
    assert!(Arc::ptr_eq(&old, &held));
    assert!(store.params("ctr", 1).unwrap().is_prior);
    assert_eq!(store.params("ctr", 2).unwrap().seq, 1);
    // A reader holding the old table still sees it whole.
    assert_eq!(held.read(1, |s| s.map(|s| s.seq)), Some(4));
}

#[test]
fn readers_never_see_a_torn_state_or_a_seq_going_back() {
    let store = Arc::new(ParamStore::default());
    store.register(diagonal_spec("dwell", 8)).unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (store, done) = (Arc::clone(&store), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut last = [0_u64; 4];
            let mut reads = 0_u64;
            while !done.load(Ordering::Acquire) {
                for doc in 0..4_u64 {
                    let params = store.params("dwell", doc).unwrap();
                    let s = params.seq as f64;
                    let Some(v1::params::Model::Gaussian(g)) = &params.model else {
                        panic!("not gaussian")
                    };
                    assert!(g.mean.iter().all(|&m| m == s), "torn mean at seq {s}");
                    assert!(g.precision.iter().all(|&q| q == 1.0 + s), "torn precision");
                    assert_eq!(params.sample_count, s);
                    assert!(params.seq >= last[doc as usize], "seq went back");
                    last[doc as usize] = params.seq;
                    reads += 1;
                }
            }
            reads
        })
    };
    for seq in 1..=20_000_u64 {
        for doc in 0..4_u64 {
            store.apply("dwell", doc, diagonal_state(seq, 8)).unwrap();
        }
        // A replayed older update now and then must not win.
        if seq % 7 == 0 {
            store.apply("dwell", 0, diagonal_state(seq - 3, 8)).unwrap();
        }
    }
    done.store(true, Ordering::Release);
    assert!(reader.join().unwrap() > 0);
    assert_eq!(store.params("dwell", 0).unwrap().seq, 20_000);
}

#[test]
fn announced_versions_register_once_and_conflicting_specs_are_refused() {
    let store = ParamStore::default();
    let first = store.register_announced(beta_spec("ctr")).unwrap();
    store.apply("ctr", 1, beta_state(4)).unwrap();
    // A repeated announcement keeps the version and its parameters.
    let again = store.register_announced(beta_spec("ctr")).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(store.params("ctr", 1).unwrap().seq, 4);
    assert_eq!(
        store
            .register_announced(diagonal_spec("ctr", 2))
            .unwrap_err(),
        StoreError::SpecConflict("ctr".into())
    );
    assert_eq!(store.versions().len(), 1);
}

#[test]
fn retiring_keeps_the_parameters_served_and_is_idempotent() {
    let store = ParamStore::default();
    store.register(beta_spec("ctr")).unwrap();
    store.apply("ctr", 1, beta_state(2)).unwrap();
    assert!(!store.version("ctr").unwrap().is_retired());
    assert!(store.retire("ctr").unwrap());
    assert!(!store.retire("ctr").unwrap());
    assert!(store.version("ctr").unwrap().is_retired());
    assert_eq!(store.params("ctr", 1).unwrap().seq, 2);
    assert_eq!(
        store.retire("nope").unwrap_err(),
        StoreError::UnknownVersion("nope".into())
    );
}

/// Runs the test's other tasks until `done` holds (at most ~5 s).
async fn until(mut done: impl FnMut() -> bool) {
    for _ in 0..5_000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    panic!("condition not reached in 5 s");
}

/// A watcher told to resync has left the update channel, but its stream
/// still holds the events its client has not read: it keeps its slot of
/// the version until the stream is dropped, so the watcher limit bounds
/// that memory too.
#[tokio::test]
async fn a_watcher_told_to_resync_keeps_its_slot_until_its_stream_is_dropped() {
    use tokio_stream::StreamExt;

    use crate::error::ServeError;
    use crate::limits::Limits;
    use crate::request::WatchRequest;
    use crate::watch::watch;

    let store = ParamStore::new(8);
    store.register(beta_spec("ctr")).unwrap();
    let version = store.version("ctr").unwrap();
    let limits = Limits {
        max_watchers_per_version: 1,
        watch_stream_events: 4,
        ..Limits::default()
    };
    let request = WatchRequest {
        version: "ctr".into(),
        doc_ids: None,
        from_seq: 0,
    };
    let mut stream = watch(Arc::clone(&version), request.clone(), &limits).unwrap();
    let first = stream.next().await.unwrap().unwrap().event;
    assert_eq!(
        first,
        Some(v1::watch_params_event::Event::SnapshotDone(true))
    );
    // Three updates reach the stream, then 100 more overflow the buffer of
    // 8 while the client reads nothing.
    for seq in 1..=3 {
        store.apply("ctr", seq, beta_state(seq)).unwrap();
    }
    // The test's runtime has one thread: the watcher's task forwards them
    // while this one sleeps.
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    for seq in 4..=103 {
        store.apply("ctr", seq % 16, beta_state(seq)).unwrap();
    }
    until(|| !version.has_followers()).await;
    assert_eq!(version.watchers(), 1, "the unread stream keeps its slot");
    assert!(matches!(
        watch(Arc::clone(&version), request.clone(), &limits),
        Err(ServeError::TooManyWatchers { max: 1, .. })
    ));
    // What the stream holds: the three updates, then the resync.
    let mut updates = 0;
    let resync = loop {
        match stream.next().await.unwrap().unwrap().event.unwrap() {
            v1::watch_params_event::Event::Update(_) => updates += 1,
            v1::watch_params_event::Event::Resync(reason) => break reason,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(updates, 3);
    assert!(resync.contains("buffer of 8"), "{resync}");
    assert_eq!(version.watchers(), 1, "still held until dropped");
    drop(stream);
    assert_eq!(version.watchers(), 0);
    assert!(watch(Arc::clone(&version), request, &limits).is_ok());
}

/// A version's per-doc lower bound of a `GetParams` response is one: no
/// doc's parameters, prior or stored, encode smaller, and a doc whose
/// scalars are at their defaults encodes to exactly it.
#[test]
fn the_per_doc_response_bound_is_below_every_doc_and_tight() {
    use prost::Message;

    let store = ParamStore::new(8);
    store.register(beta_spec("ctr")).unwrap();
    store.register(diagonal_spec("dwell", 32)).unwrap();
    store
        .apply("ctr", u64::MAX, beta_state(u64::MAX >> 1))
        .unwrap();
    store.apply("dwell", 7, diagonal_state(3, 32)).unwrap();
    for (name, docs) in [("ctr", [u64::MAX, 1]), ("dwell", [7, 1])] {
        let version = store.version(name).unwrap();
        let bound = version.min_doc_response_bytes();
        for doc in docs {
            let response = v1::GetParamsResponse {
                params: vec![store.params(name, doc).unwrap()],
            };
            let size = response.encoded_len();
            assert!(bound <= size, "{name}/{doc}: bound {bound} > {size}");
            assert!(
                size - bound <= 40,
                "{name}/{doc}: bound {bound}, size {size}"
            );
        }
        let plain = v1::GetParamsResponse {
            params: vec![v1::Params {
                doc_id: 0,
                seq: 0,
                sample_count: 0.0,
                updated_event_time_ms: 0,
                is_prior: false,
                ..store.params(name, 1).unwrap()
            }],
        };
        assert_eq!(bound, plain.encoded_len(), "{name}");
    }
}
