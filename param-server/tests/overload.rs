//! Admission under overload, over real gRPC: a flood of heavy requests
//! beyond the server's work slots is partly shed with
//! `RESOURCE_EXHAUSTED` naming the limit, the admitted requests complete,
//! memory stays flat, and the server is healthy afterwards.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use posterior_param_server::Limits;
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use tonic::Code;
use tonic::transport::Channel;

/// Concurrent requests of one flood, spread over the connections.
const FLOOD: usize = 200;
const CONNECTIONS: usize = 4;
/// Docs per request: each one is milliseconds of work.
const DOCS: usize = 5_000;

fn limits() -> Limits {
    Limits {
        work_slots: 1,
        max_queue_wait_ms: 50,
        ..Limits::default()
    }
}

#[derive(Debug, Default)]
struct Outcomes {
    ok: usize,
    shed: usize,
    messages: Vec<String>,
}

/// Sends `FLOOD` `SampleScores` of `DOCS` docs at once; every answer is
/// either the scores or `RESOURCE_EXHAUSTED`.
async fn flood(clients: &[ParamServiceClient<Channel>]) -> Outcomes {
    let calls: Vec<_> = (0..FLOOD)
        .map(|i| {
            let mut client = clients[i % clients.len()].clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(v1::SampleScoresRequest {
                    version: "dwell".into(),
                    doc_ids: (0..DOCS as u64).collect(),
                    context: vec![0.5; 4],
                    seed: Some(i as u64),
                });
                request.set_timeout(Duration::from_secs(30));
                client
                    .sample_scores(request)
                    .await
                    .map(|r| r.into_inner().sampled.len())
            })
        })
        .collect();
    let mut outcomes = Outcomes::default();
    for call in calls {
        match call.await.unwrap() {
            Ok(scores) => {
                assert_eq!(scores, DOCS);
                outcomes.ok += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                outcomes.shed += 1;
                outcomes.messages.push(status.message().to_owned());
            }
        }
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_beyond_the_work_slots_is_shed_and_the_admitted_complete() {
    let server = TestServer::start(limits(), 64).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(server.client().await);
    }
    // One flood to warm allocator pools and connection buffers.
    let warm = flood(&clients).await;
    let before = rss_bytes();
    let mut total = Outcomes::default();
    for _ in 0..2 {
        let outcomes = flood(&clients).await;
        total.ok += outcomes.ok;
        total.shed += outcomes.shed;
        total.messages.extend(outcomes.messages);
    }
    let grown = rss_bytes().saturating_sub(before);
    // One slot and a 50 ms wait: most of each flood is shed, some served.
    assert!(
        total.ok >= 2 && total.shed > total.ok,
        "ok {}, shed {} (warm-up: ok {}, shed {})",
        total.ok,
        total.shed,
        warm.ok,
        warm.shed
    );
    // Every refusal names the limit behind it.
    for message in &total.messages {
        assert!(
            message.starts_with("overloaded") && message.contains("limits."),
            "{message}"
        );
    }
    assert!(
        total.messages.iter().any(|m| m.contains("work slot")),
        "{:?}",
        &total.messages[..3.min(total.messages.len())]
    );
    assert!(grown < 64 << 20, "rss grew by {grown} bytes over 2 floods");
    // Healthy afterwards, and a request on a fresh connection is served.
    assert!(server.healthy().await);
    let mut client = server.client().await;
    let params = client
        .get_params(get("ctr", vec![1, 2]))
        .await
        .unwrap()
        .into_inner()
        .params;
    assert_eq!(params.len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_queue_every_request_beyond_the_slots_is_shed_at_once() {
    let server = TestServer::start(
        Limits {
            max_queued_requests: 0,
            ..limits()
        },
        64,
    )
    .await;
    let clients = vec![server.client().await];
    let outcomes = flood(&clients).await;
    assert!(outcomes.ok >= 1 && outcomes.shed >= 1, "{outcomes:?}");
    for message in &outcomes.messages {
        assert!(
            message.contains("limits.max_queued_requests = 0"),
            "{message}"
        );
    }
    assert!(server.healthy().await);
    server.stop().await;
}
