//! The contract of each `ParamService` RPC, over real gRPC on loopback.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::*;
use posterior_param_server::Limits;
use posterior_proto::v1;
use posterior_proto::v1::watch_params_event::Event;
use tokio_stream::StreamExt;

#[tokio::test]
async fn get_params_answers_in_request_order_with_priors_flagged() {
    let server = TestServer::start(Limits::default(), 64).await;
    server.store.apply("ctr", 5, beta_state(3)).unwrap();
    server
        .store
        .apply("dwell", 9, diagonal_state(2, 4))
        .unwrap();
    let mut client = server.client().await;

    let got = client.get_params(get("ctr", vec![7, 5, 5])).await.unwrap();
    let params = got.into_inner().params;
    let ids: Vec<_> = params
        .iter()
        .map(|p| (p.doc_id, p.seq, p.is_prior))
        .collect();
    assert_eq!(ids, [(7, 0, true), (5, 3, false), (5, 3, false)]);
    assert!(params.iter().all(|p| p.version == "ctr"));
    params.iter().for_each(assert_whole);

    let got = client.get_params(get("dwell", vec![9, 1])).await.unwrap();
    let params = got.into_inner().params;
    let Some(v1::params::Model::Gaussian(g)) = &params[0].model else {
        panic!("dwell is logistic")
    };
    assert_eq!(g.form, v1::CovarianceForm::Diagonal as i32);
    assert_eq!(g.mean, [2.0; 4]);
    assert_eq!(g.variance, [1.0 / 3.0; 4]);
    assert!(params[1].is_prior);
    assert!(
        client
            .get_params(get("ctr", vec![]))
            .await
            .unwrap()
            .into_inner()
            .params
            .is_empty()
    );
    server.stop().await;
}

#[tokio::test]
async fn sample_scores_are_reproducible_with_a_seed_and_follow_the_posterior() {
    let server = TestServer::start(Limits::default(), 64).await;
    // Beta(1 + 30, 1 + 60): mean 31/92.
    server.store.apply("ctr", 1, beta_state(30)).unwrap();
    let mut client = server.client().await;
    let request = |seed| v1::SampleScoresRequest {
        version: "ctr".into(),
        doc_ids: vec![1; 5_000],
        context: vec![],
        seed: Some(seed),
    };
    let a = client.sample_scores(request(7)).await.unwrap().into_inner();
    let b = client.sample_scores(request(7)).await.unwrap().into_inner();
    let c = client.sample_scores(request(8)).await.unwrap().into_inner();
    assert_eq!(a, b);
    assert_ne!(a.sampled, c.sampled);
    let mean = 31.0 / 92.0;
    assert!(a.mean.iter().all(|&m| m == mean));
    let drawn = a.sampled.iter().sum::<f64>() / a.sampled.len() as f64;
    // sd of Beta(31, 61) ≈ 0.049; s.e. of 5000 draws ≈ 7e-4; allow 5 s.e.
    assert!((drawn - mean).abs() < 3.5e-3, "mean draw {drawn}");

    // A logistic version with one context per doc; unseen docs score 0.5.
    server
        .store
        .apply("dwell", 2, diagonal_state(1, 4))
        .unwrap();
    let request = v1::SampleScoresRequest {
        version: "dwell".into(),
        doc_ids: vec![2, 3],
        context: vec![1.0, 0.0, 0.0, 0.0, 0.5, 0.5, 0.5, 0.5],
        seed: Some(1),
    };
    let scores = client.sample_scores(request).await.unwrap().into_inner();
    assert_eq!(scores.mean[1], 0.5);
    assert_eq!(scores.mean[0], posterior_learner::posterior::sigmoid(1.0));
    assert!(scores.sampled.iter().all(|s| (0.0..=1.0).contains(s)));
    server.stop().await;
}

#[tokio::test]
async fn watch_params_sends_a_snapshot_then_updates() {
    let server = TestServer::start(Limits::default(), 64).await;
    server.store.apply("ctr", 1, beta_state(1)).unwrap();
    server.store.apply("ctr", 2, beta_state(1)).unwrap();
    let mut client = server.client().await;

    // Docs 1 and 3 only, updates above seq 2.
    let request = v1::WatchParamsRequest {
        version: "ctr".into(),
        doc_ids: vec![1, 3],
        from_seq: 2,
    };
    let mut stream = client.watch_params(request).await.unwrap().into_inner();
    let mut next = async || stream.next().await.unwrap().unwrap().event.unwrap();
    let Event::Snapshot(first) = next().await else {
        panic!("snapshot first")
    };
    let Event::Snapshot(second) = next().await else {
        panic!("snapshot")
    };
    assert_eq!((first.doc_id, first.seq), (1, 1));
    assert_eq!((second.doc_id, second.is_prior), (3, true));
    assert_eq!(next().await, Event::SnapshotDone(true));
    server.store.apply("ctr", 2, beta_state(5)).unwrap(); // filtered out: doc 2
    server.store.apply("ctr", 1, beta_state(2)).unwrap(); // filtered out: seq 2
    server.store.apply("ctr", 3, beta_state(4)).unwrap();
    server.store.apply("ctr", 1, beta_state(3)).unwrap();
    let Event::Update(a) = next().await else {
        panic!("update")
    };
    let Event::Update(b) = next().await else {
        panic!("update")
    };
    assert_eq!([(a.doc_id, a.seq), (b.doc_id, b.seq)], [(3, 4), (1, 3)]);
    assert_whole(&a);
    assert_whole(&b);
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn watching_every_doc_snapshots_the_stored_keys() {
    let server = TestServer::start(Limits::default(), 64).await;
    for doc in 0..600 {
        server
            .store
            .apply("dwell", doc, diagonal_state(doc + 1, 4))
            .unwrap();
    }
    let mut client = server.client().await;
    let request = v1::WatchParamsRequest {
        version: "dwell".into(),
        doc_ids: vec![],
        from_seq: 0,
    };
    let mut stream = client.watch_params(request).await.unwrap().into_inner();
    let mut seen = std::collections::BTreeMap::new();
    loop {
        match stream.next().await.unwrap().unwrap().event.unwrap() {
            Event::Snapshot(p) => {
                assert_whole(&p);
                seen.insert(p.doc_id, p.seq);
            }
            Event::SnapshotDone(_) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen.len(), 600);
    assert!(seen.iter().all(|(doc, seq)| *seq == doc + 1));
    drop(stream);
    server.stop().await;
}

#[tokio::test]
async fn health_and_reflection_are_served() {
    let server = TestServer::start(Limits::default(), 64).await;
    assert!(server.healthy().await);
    let mut reflection =
        tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(
            server.channel().await,
        );
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_request::MessageRequest,
        server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("list services")
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"posterior.v1.ParamService"), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health"), "{names:?}");
    drop(responses);
    server.stop().await;
}

#[tokio::test]
async fn responses_are_not_held_back_by_nagle() {
    // Without TCP_NODELAY on accepted sockets, these responses (100 docs)
    // waited for a delayed ACK: a median of 44 ms per request here.
    let server = TestServer::start(Limits::default(), 64).await;
    for doc in 0..100 {
        server
            .store
            .apply("dwell", doc, diagonal_state(1, 4))
            .unwrap();
    }
    let mut client = server.client().await;
    let mut times = Vec::new();
    for _ in 0..41 {
        let started = std::time::Instant::now();
        client
            .get_params(get("dwell", (0..100).collect()))
            .await
            .unwrap();
        times.push(started.elapsed());
    }
    times.sort();
    assert!(
        times[20] < std::time::Duration::from_millis(20),
        "median {:?}",
        times[20]
    );
    server.stop().await;
}
