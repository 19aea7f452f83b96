//! Readers under continuous updates, over gRPC: no torn parameters, no
//! sequence number going backwards, and a WatchParams mirror that equals
//! GetParams once the updates stop.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use posterior_param_server::Limits;
use posterior_proto::v1;
use posterior_proto::v1::watch_params_event::Event;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio_stream::StreamExt;

const DOCS: u64 = 200;

/// Applies `rounds` updates to random docs of `dwell`, each doc's seq
/// counting up; replays an older seq now and then (which must lose).
fn write_updates(
    server: &TestServer,
    rounds: usize,
    seed: u64,
) -> std::thread::JoinHandle<Vec<u64>> {
    let store = Arc::clone(&server.store);
    std::thread::spawn(move || {
        println!("writer seed {seed}");
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut seqs = vec![0_u64; DOCS as usize];
        for round in 0..rounds {
            let doc = rng.random_range(0..DOCS);
            seqs[doc as usize] += 1;
            let seq = seqs[doc as usize];
            store.apply("dwell", doc, diagonal_state(seq, 4)).unwrap();
            if round % 5 == 0 && seq > 2 {
                store
                    .apply("dwell", doc, diagonal_state(seq - 2, 4))
                    .unwrap();
            }
        }
        seqs
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_under_updates_never_see_torn_params_or_seqs_going_back() {
    let server = TestServer::start(Limits::default(), 64).await;
    let done = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for _ in 0..2 {
        let mut client = server.client().await;
        let done = Arc::clone(&done);
        readers.push(tokio::spawn(async move {
            let mut last = vec![0_u64; DOCS as usize];
            let mut reads = 0_usize;
            while !done.load(Ordering::Acquire) {
                let request = get("dwell", (0..DOCS).collect());
                let params = client
                    .get_params(request)
                    .await
                    .unwrap()
                    .into_inner()
                    .params;
                for p in &params {
                    assert_whole(p);
                    assert!(
                        p.seq >= last[p.doc_id as usize],
                        "seq went back on {}",
                        p.doc_id
                    );
                    last[p.doc_id as usize] = p.seq;
                }
                reads += params.len();
            }
            reads
        }));
    }
    let writer = write_updates(&server, 200_000, 17);
    let final_seqs = tokio::task::spawn_blocking(move || writer.join().unwrap())
        .await
        .unwrap();
    done.store(true, Ordering::Release);
    for reader in readers {
        assert!(reader.await.unwrap() > 0);
    }
    let mut client = server.client().await;
    let params = client
        .get_params(get("dwell", (0..DOCS).collect()))
        .await
        .unwrap()
        .into_inner();
    let seqs: Vec<u64> = params.params.iter().map(|p| p.seq).collect();
    assert_eq!(seqs, final_seqs);
    server.stop().await;
}

/// Applies watch events to a mirror, keeping the highest seq per doc.
fn mirror_apply(mirror: &mut HashMap<u64, v1::Params>, params: v1::Params) {
    let newer = mirror
        .get(&params.doc_id)
        .is_none_or(|held| params.seq > held.seq);
    if newer {
        mirror.insert(params.doc_id, params);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_mirror_equals_get_params_after_quiescence() {
    let server = TestServer::start(Limits::default(), 1 << 18).await;
    // Some keys exist before the watch starts, so the snapshot has content.
    for doc in 0..DOCS / 2 {
        server
            .store
            .apply("dwell", doc, diagonal_state(1, 4))
            .unwrap();
    }
    let mut client = server.client().await;
    let request = v1::WatchParamsRequest {
        version: "dwell".into(),
        doc_ids: vec![],
        from_seq: 0,
    };
    let mut stream = client.watch_params(request).await.unwrap().into_inner();
    // Seqs continue from 1 for the first half: start the writer above them.
    let store = Arc::clone(&server.store);
    let writer = std::thread::spawn(move || {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(23);
        let mut seqs = vec![1_u64; DOCS as usize];
        for _ in 0..50_000 {
            let doc = rng.random_range(0..DOCS);
            seqs[doc as usize] += 1;
            store
                .apply("dwell", doc, diagonal_state(seqs[doc as usize], 4))
                .unwrap();
        }
    });
    let mut mirror = HashMap::new();
    let mut snapshot_done = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let event = tokio::time::timeout(Duration::from_secs(2), stream.next()).await;
        match event {
            Ok(Some(event)) => match event.unwrap().event.unwrap() {
                Event::Snapshot(p) | Event::Update(p) => {
                    assert_whole(&p);
                    mirror_apply(&mut mirror, p);
                }
                Event::SnapshotDone(_) => snapshot_done = true,
                Event::Resync(reason) => panic!("resync: {reason}"),
            },
            Ok(None) => panic!("stream ended"),
            // Two quiet seconds after the writer finished: quiescent.
            Err(_) if writer.is_finished() => break,
            Err(_) => {}
        }
        assert!(Instant::now() < deadline, "no quiescence within 60 s");
    }
    writer.join().unwrap();
    assert!(snapshot_done);
    let served = client
        .get_params(get("dwell", (0..DOCS).collect()))
        .await
        .unwrap()
        .into_inner();
    let stored: Vec<_> = served.params.into_iter().filter(|p| !p.is_prior).collect();
    assert_eq!(mirror.len(), stored.len());
    for p in stored {
        assert_eq!(mirror.get(&p.doc_id), Some(&p), "doc {}", p.doc_id);
    }
    drop(stream);
    server.stop().await;
}
