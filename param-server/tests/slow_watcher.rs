//! A watcher that stops reading is told to resync, and the server's memory
//! stays bounded meanwhile. Alone in its binary, so the RSS it measures is
//! this test's.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::Arc;

use common::*;
use posterior_param_server::Limits;
use posterior_proto::v1;
use posterior_proto::v1::watch_params_event::Event;
use tokio_stream::StreamExt;

const DIM: usize = 256;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_watcher_is_told_to_resync_and_memory_stays_bounded() {
    let limits = Limits {
        watch_stream_events: 16,
        ..Limits::default()
    };
    let server = TestServer::start(limits, 256).await;
    server.store.register(diagonal_spec("wide", DIM)).unwrap();
    let mut client = server.client().await;
    let request = v1::WatchParamsRequest {
        version: "wide".into(),
        doc_ids: vec![],
        from_seq: 0,
    };
    let mut stream = client.watch_params(request).await.unwrap().into_inner();
    let first = stream.next().await.unwrap().unwrap().event.unwrap();
    assert_eq!(first, Event::SnapshotDone(true), "the table is empty");

    // 40 000 updates of ~6 KB on the wire each (240 MB if buffered), while
    // the watcher reads nothing.
    let before = rss_bytes();
    let store = Arc::clone(&server.store);
    tokio::task::spawn_blocking(move || {
        for seq in 1..=40_000_u64 {
            store
                .apply("wide", seq % 8, diagonal_state(seq, DIM))
                .unwrap();
        }
    })
    .await
    .unwrap();
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 64 << 20, "rss grew by {} MiB", grown >> 20);

    // Now it reads: some updates, then one resync, then the end.
    let mut updates = 0;
    let reason = loop {
        match stream.next().await {
            Some(Ok(event)) => match event.event.unwrap() {
                Event::Update(p) => {
                    assert_whole(&p);
                    updates += 1;
                }
                Event::Resync(reason) => break reason,
                other => panic!("unexpected {other:?}"),
            },
            other => panic!("stream ended without a resync: {other:?}"),
        }
    };
    assert!(updates < 40_000, "{updates} updates before the resync");
    assert!(reason.contains("buffer of 256"), "{reason}");
    assert!(
        stream.next().await.is_none(),
        "the stream ends after a resync"
    );

    // The slot is free again once the server has dropped the ended
    // stream, and a new watch works.
    let version = server.store.version("wide").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while version.watchers() > 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(version.watchers(), 0);
    let request = v1::WatchParamsRequest {
        version: "wide".into(),
        doc_ids: vec![3],
        from_seq: 0,
    };
    let mut again = client.watch_params(request).await.unwrap().into_inner();
    let Event::Snapshot(p) = again.next().await.unwrap().unwrap().event.unwrap() else {
        panic!("snapshot")
    };
    assert_eq!(p.seq, 39_995);
    assert!(server.healthy().await);
    drop((stream, again));
    server.stop().await;
}
