//! Bad requests get the status that names their problem and leave the
//! server healthy, with flat memory.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::*;
use posterior_param_server::Limits;
use posterior_param_server::encoded::Encoded;
use posterior_proto::v1;
use tonic::Code;

fn limits() -> Limits {
    Limits {
        max_request_bytes: 64 << 10,
        max_docs_per_request: 1_000,
        ..Limits::default()
    }
}

fn sample(version: &str, doc_ids: Vec<u64>, context: Vec<f32>) -> v1::SampleScoresRequest {
    v1::SampleScoresRequest {
        version: version.into(),
        doc_ids,
        context,
        seed: Some(1),
    }
}

fn watch(version: &str) -> v1::WatchParamsRequest {
    v1::WatchParamsRequest {
        version: version.into(),
        doc_ids: vec![],
        from_seq: 0,
    }
}

fn expect<T: std::fmt::Debug>(result: Result<T, tonic::Status>, code: Code, text: &str) {
    let status = result.expect_err("refused");
    assert_eq!(status.code(), code, "{status:?}");
    assert!(
        status.message().contains(text),
        "{:?} lacks {text}",
        status.message()
    );
}

/// Calls `method` of `ParamService` with `body` as the request message's
/// bytes, whatever they hold.
async fn raw_call(server: &TestServer, method: &str, body: &[u8]) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    grpc.ready().await.unwrap();
    let path = tonic::codegen::http::uri::PathAndQuery::try_from(format!(
        "/posterior.v1.ParamService/{method}"
    ))
    .unwrap();
    let codec = posterior_proto::codec::SliceCodec::<Encoded, Encoded>::default();
    let request = tonic::Request::new(Encoded::from_encoding(body.to_vec()));
    grpc.unary(request, path, codec).await.map(drop)
}

/// Sends every kind of bad request once and checks each status.
async fn send_bad_requests(server: &TestServer) {
    // Bytes that are no message: field 1 (the version) with a cut length.
    for method in ["GetParams", "SampleScores", "WatchParams"] {
        let status = raw_call(server, method, &[0x0a, 0xff]).await;
        expect(
            status,
            Code::InvalidArgument,
            &format!("undecodable {method}Request: failed to decode Protobuf message"),
        );
    }
    let mut client = server.client().await;
    // 20 000 ids of 10 bytes each: over the 64 KiB request limit.
    let huge: Vec<u64> = (0..20_000).map(|i| u64::MAX - i).collect();
    expect(
        client.get_params(get("ctr", huge)).await,
        Code::OutOfRange,
        "too large",
    );
    let million: Vec<u64> = (0..1_000_000).collect();
    expect(
        client.get_params(get("ctr", million)).await,
        Code::OutOfRange,
        "too large",
    );
    let over: Vec<u64> = (0..1_001).collect();
    expect(
        client.get_params(get("ctr", over.clone())).await,
        Code::InvalidArgument,
        "1001 doc ids",
    );
    expect(
        client.sample_scores(sample("ctr", over, vec![])).await,
        Code::InvalidArgument,
        "limit is 1000",
    );
    let nan = vec![0.0, 1.0, f32::NAN, 0.0];
    expect(
        client.sample_scores(sample("dwell", vec![1], nan)).await,
        Code::InvalidArgument,
        "context[2]",
    );
    let inf = vec![f32::INFINITY, 1.0, 0.0, 0.0];
    expect(
        client.sample_scores(sample("dwell", vec![1], inf)).await,
        Code::InvalidArgument,
        "context[0]",
    );
    expect(
        client
            .sample_scores(sample("dwell", vec![1, 2], vec![1.0; 5]))
            .await,
        Code::InvalidArgument,
        "needs 4",
    );
    expect(
        client
            .sample_scores(sample("ctr", vec![1], vec![1.0]))
            .await,
        Code::InvalidArgument,
        "needs 0",
    );
    expect(
        client.get_params(get("nope", vec![1])).await,
        Code::NotFound,
        "\"nope\"",
    );
    expect(
        client.sample_scores(sample("nope", vec![1], vec![])).await,
        Code::NotFound,
        "nope",
    );
    expect(
        client.watch_params(watch("nope")).await,
        Code::NotFound,
        "nope",
    );
    expect(
        client.get_params(get("", vec![1])).await,
        Code::InvalidArgument,
        "version",
    );
}

async fn assert_serving(server: &TestServer) {
    assert!(server.healthy().await);
    let mut client = server.client().await;
    let params = client
        .get_params(get("ctr", vec![1]))
        .await
        .unwrap()
        .into_inner()
        .params;
    assert_eq!(params.len(), 1);
}

#[tokio::test]
async fn bad_requests_get_their_status_and_leave_the_server_healthy() {
    let server = TestServer::start(limits(), 64).await;
    send_bad_requests(&server).await;
    assert_serving(&server).await;
    // Memory stays flat over many rounds (after one round of warm-up).
    let before = rss_bytes();
    for _ in 0..20 {
        send_bad_requests(&server).await;
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(grown < 32 << 20, "rss grew by {grown} bytes");
    assert_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_million_doc_ids_under_the_size_limit_is_refused_by_count() {
    // The default 4 MiB limit admits 10^6 small ids; the doc limit refuses them.
    let server = TestServer::start(Limits::default(), 64).await;
    let mut client = server.client().await;
    let million: Vec<u64> = (0..1_000_000).collect();
    let status = client.get_params(get("ctr", million)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("1000000 doc ids"),
        "{}",
        status.message()
    );
    assert_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn watchers_beyond_the_limit_are_refused_as_exhausted() {
    let server = TestServer::start(
        Limits {
            max_watchers_per_version: 2,
            ..Limits::default()
        },
        64,
    )
    .await;
    let mut client = server.client().await;
    let _a = client.watch_params(watch("ctr")).await.unwrap();
    let _b = client.watch_params(watch("ctr")).await.unwrap();
    let status = client.watch_params(watch("ctr")).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    // Another version has its own slots.
    let c = client.watch_params(watch("dwell")).await.unwrap();
    drop((_a, _b, c));
    server.stop().await;
}

/// Concurrent watches never take more slots than the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_watches_never_exceed_the_limit() {
    let server = TestServer::start(
        Limits {
            max_watchers_per_version: 3,
            ..Limits::default()
        },
        64,
    )
    .await;
    let client = server.client().await;
    let calls = (0..24).map(|_| {
        let mut client = client.clone();
        tokio::spawn(async move { client.watch_params(watch("ctr")).await })
    });
    let mut open = Vec::new();
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(stream) => open.push(stream),
            Err(status) => assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}"),
        }
    }
    assert_eq!(open.len(), 3);
    assert_eq!(server.store.version("ctr").unwrap().watchers(), 3);
    drop(open);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_as_exhausted() {
    let server = TestServer::start(
        Limits {
            max_concurrent_requests_per_connection: 1,
            ..Limits::default()
        },
        64,
    )
    .await;
    // 32 requests of 10 000 draws at once on one connection: with one
    // allowed in flight, the others that arrive meanwhile are shed.
    let client = server.client().await;
    let calls = (0..32).map(|seed| {
        let mut client = client.clone();
        tokio::spawn(async move {
            let request = sample("dwell", vec![1; 10_000], vec![0.5; 4]);
            let request = v1::SampleScoresRequest {
                seed: Some(seed),
                ..request
            };
            client.sample_scores(request).await.map(|_| ())
        })
    });
    let mut shed = 0;
    let mut served = 0;
    for call in calls.collect::<Vec<_>>() {
        match call.await.unwrap() {
            Ok(()) => served += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                shed += 1;
            }
        }
    }
    assert!(served >= 1 && shed >= 1, "served {served}, shed {shed}");
    assert_serving(&server).await;
    server.stop().await;
}

#[tokio::test]
async fn a_response_over_the_size_limit_is_refused_and_a_smaller_one_served() {
    let server = TestServer::start(
        Limits {
            max_response_bytes: 2 << 10,
            ..Limits::default()
        },
        64,
    )
    .await;
    let mut client = server.client().await;
    // 100 diagonal d = 4 params: about 12 KiB encoded, refused from the
    // doc count before the response is built, naming what would fit.
    let status = client
        .get_params(get("dwell", (0..100).collect()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::OutOfRange, "{status:?}");
    assert!(
        status.message().contains("100 docs of version \"dwell\"")
            && status.message().contains("ask for at most"),
        "{}",
        status.message()
    );
    let params = client
        .get_params(get("dwell", vec![1, 2]))
        .await
        .unwrap()
        .into_inner()
        .params;
    assert_eq!(params.len(), 2);
    assert_serving(&server).await;
    server.stop().await;
}
