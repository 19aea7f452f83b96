//! `Mirror` against a real param-server: it converges to what
//! `GetParams` answers, survives a resync and a server restart, and no
//! doc's seq ever goes backwards while it does.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;
use posterior_client::{Client, Mirror, MirrorConfig};
use posterior_param_server::{Limits, ParamStore};

const WAIT: Duration = Duration::from_secs(20);

/// Whether the mirror holds exactly what `GetParams` answers for `docs`.
async fn mirror_matches(mirror: &Mirror, client: &Client, docs: &[u64]) -> bool {
    let served = client.get_params(mirror.version(), docs).await.unwrap();
    let mirrored = mirror.get_many(docs);
    served
        .iter()
        .zip(&mirrored)
        .all(|(p, m)| m.as_ref().is_some_and(|m| **m == *p) && mirror.get(p.doc_id) == *m)
}

/// A thread that reads `docs` from the mirror in a loop and records any
/// doc whose seq went down, until stopped.
struct SeqWatcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<String>>,
}

impl SeqWatcher {
    fn start(mirror: Mirror, docs: Vec<u64>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut seen = vec![0_u64; docs.len()];
            let mut regressions = Vec::new();
            while !stopped.load(Ordering::Relaxed) {
                for (i, &doc) in docs.iter().enumerate() {
                    let seq = mirror.get(doc).map_or(0, |p| p.seq);
                    if seq < seen[i] {
                        regressions.push(format!("doc {doc}: {} -> {seq}", seen[i]));
                    }
                    seen[i] = seen[i].max(seq);
                }
                std::thread::yield_now();
            }
            regressions
        });
        Self { stop, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A client of `server` and a mirror of its `ctr`, caught up.
async fn caught_up_mirror(server: &ParamServer) -> (Client, Mirror) {
    let client = Client::connect(server.endpoint(), fast_config())
        .await
        .unwrap();
    let mirror = Mirror::start(client.clone(), "ctr", MirrorConfig::default());
    tokio::time::timeout(WAIT, mirror.caught_up())
        .await
        .unwrap()
        .unwrap();
    (client, mirror)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_equals_get_params_once_updates_quiesce() {
    let server = ParamServer::any_port(4_096);
    for doc in 0..20 {
        server.store.apply("ctr", doc, beta_state(doc + 1)).unwrap();
    }
    let (client, mirror) = caught_up_mirror(&server).await;
    assert_eq!(mirror.len(), 20, "the snapshot");
    assert_eq!(mirror.last_seq(), 20);

    // 2 000 updates over 40 docs (20 of them new), in seq order per doc.
    let store = Arc::clone(&server.store);
    tokio::task::spawn_blocking(move || {
        for round in 0..50_u64 {
            for doc in 0..40 {
                store
                    .apply("ctr", doc, beta_state(doc + 2 + round))
                    .unwrap();
            }
        }
    })
    .await
    .unwrap();
    let docs: Vec<u64> = (0..40).collect();
    eventually(WAIT, "the mirror to match GetParams", || {
        mirror_matches(&mirror, &client, &docs)
    })
    .await;
    assert_eq!(mirror.len(), 40);
    assert_eq!(mirror.last_seq(), 39 + 2 + 49);
    let status = mirror.status();
    assert!(status.caught_up && status.stopped.is_none(), "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_rebuilds_after_a_resync_without_going_backwards() {
    // A 4-update server buffer and a 1-event stream buffer: a burst of
    // 20 000 updates leaves any watcher behind.
    let limits = Limits {
        watch_stream_events: 1,
        ..Limits::default()
    };
    let server = ParamServer::start(
        ParamServer::store(4),
        limits,
        "127.0.0.1:0".parse().unwrap(),
    );
    let client = Client::connect(server.endpoint(), fast_config())
        .await
        .unwrap();
    let mirror = Mirror::start(client.clone(), "dwell", MirrorConfig::default());
    tokio::time::timeout(WAIT, mirror.caught_up())
        .await
        .unwrap()
        .unwrap();
    let docs: Vec<u64> = (0..8).collect();
    let watcher = SeqWatcher::start(mirror.clone(), docs.clone());

    let store = Arc::clone(&server.store);
    tokio::task::spawn_blocking(move || {
        for seq in 1..=2_500_u64 {
            for doc in 0..8 {
                store.apply("dwell", doc, diagonal_state(seq, 4)).unwrap();
            }
        }
    })
    .await
    .unwrap();

    let status = tokio::time::timeout(WAIT, mirror.wait_for(|s| s.resyncs >= 1))
        .await
        .unwrap();
    assert!(status.stopped.is_none(), "{status:?}");
    eventually(WAIT, "the rebuilt mirror to match GetParams", || {
        mirror_matches(&mirror, &client, &docs)
    })
    .await;
    assert!(docs.iter().all(|&d| mirror.get(d).unwrap().seq == 2_500));
    let status = mirror.status();
    assert!(status.sessions >= 2, "{status:?}");
    assert_eq!(watcher.finish(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mirror_survives_a_server_restart_and_keeps_the_newest_seqs() {
    let first = ParamServer::any_port(1_024);
    for doc in 0..10 {
        first.store.apply("ctr", doc, beta_state(5)).unwrap();
    }
    let addr = first.addr;
    let (client, mirror) = caught_up_mirror(&first).await;
    let docs: Vec<u64> = (0..10).chain([20]).collect();
    let watcher = SeqWatcher::start(mirror.clone(), docs.clone());

    // The replacement restored older states of docs 0..5 (seq 2), has
    // newer ones of docs 5..10 (seq 9) and a new doc 20.
    first.kill();
    let store = Arc::new(ParamStore::new(1_024));
    store.register(beta_spec("ctr")).unwrap();
    for doc in 0..5 {
        store.apply("ctr", doc, beta_state(2)).unwrap();
    }
    for doc in (5..10).chain([20]) {
        store.apply("ctr", doc, beta_state(9)).unwrap();
    }
    let second = ParamServer::start(Arc::clone(&store), Limits::default(), addr);

    let status = tokio::time::timeout(WAIT, mirror.wait_for(|s| s.sessions >= 2 && s.caught_up))
        .await
        .unwrap();
    assert!(status.stopped.is_none(), "{status:?}");
    let seqs: Vec<u64> = docs.iter().map(|&d| mirror.get(d).unwrap().seq).collect();
    assert_eq!(seqs, [5, 5, 5, 5, 5, 9, 9, 9, 9, 9, 9]);

    // Live updates flow again once the replacement catches up.
    second.store.apply("ctr", 0, beta_state(6)).unwrap();
    eventually(WAIT, "the live update of doc 0", || async {
        mirror.get(0).is_some_and(|p| p.seq == 6)
    })
    .await;
    assert_eq!(
        *mirror.get(0).unwrap(),
        client.get_params("ctr", &[0]).await.unwrap()[0]
    );
    assert_eq!(watcher.finish(), Vec::<String>::new());
}

/// A server restarted without the version yet (an embedded learner that
/// has not announced it) answers NOT_FOUND: a mirror that was caught up
/// waits for it with backoff and catches up again, instead of stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mirror_waits_for_its_version_to_come_back_after_a_restart() {
    let first = ParamServer::any_port(1_024);
    first.store.apply("ctr", 1, beta_state(5)).unwrap();
    let addr = first.addr;
    let (_client, mirror) = caught_up_mirror(&first).await;
    first.kill();
    // The replacement serves no version at first.
    let store = Arc::new(ParamStore::new(1_024));
    let second = ParamServer::start(Arc::clone(&store), Limits::default(), addr);
    // Long enough for several reconnects to be told NOT_FOUND.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(mirror.status().stopped.is_none(), "{:?}", mirror.status());
    store.register(beta_spec("ctr")).unwrap();
    store.apply("ctr", 1, beta_state(7)).unwrap();
    let status = tokio::time::timeout(WAIT, mirror.wait_for(|s| s.sessions >= 2 && s.caught_up))
        .await
        .unwrap();
    assert!(status.stopped.is_none(), "{status:?}");
    assert_eq!(mirror.get(1).unwrap().seq, 7);
    drop(second);
}

/// A watcher that falls behind right after every snapshot is told to
/// resync each time: its reconnects back off (50, 100, 200, … ms) rather
/// than pulling a snapshot every 50 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_resyncs_back_off() {
    // A buffer of one update: a burst of ten overflows it at once.
    let server = ParamServer::any_port(1);
    let (_client, mirror) = caught_up_mirror(&server).await;
    let store = Arc::clone(&server.store);
    let bursts = tokio::spawn(async move {
        let mut seq = 1;
        let until = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while std::time::Instant::now() < until {
            for doc in 0..10 {
                store.apply("ctr", doc, beta_state(seq)).unwrap();
            }
            seq += 1;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    });
    bursts.await.unwrap();
    let status = mirror.status();
    assert!(status.resyncs >= 3, "{status:?}");
    // Without backing off, a reconnect every ≤ 50 ms: 72 in 2 s here;
    // backing off, 7–8.
    assert!(status.sessions <= 12, "{status:?}");
    assert!(status.stopped.is_none(), "{status:?}");
}

#[tokio::test]
async fn a_mirror_of_an_unknown_version_stops_with_not_found() {
    let server = ParamServer::any_port(64);
    let client = Client::connect(server.endpoint(), fast_config())
        .await
        .unwrap();
    let mirror = Mirror::start(client, "nope", MirrorConfig::default());
    let err = tokio::time::timeout(WAIT, mirror.caught_up())
        .await
        .unwrap()
        .unwrap_err();
    assert!(err.to_string().contains("NotFound"), "{err}");
    assert_eq!(mirror.status().sessions, 0);
}
