//! `/metrics` of a real server over real gRPC and HTTP: every call is
//! timed under its method and status code, and the store's series are
//! read at scrape time.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use posterior_param_server::exposition::serve_metrics;
use posterior_param_server::metrics::ServerMetrics;
use posterior_param_server::{Limits, ServeOptions};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One `GET /metrics` over HTTP/1.1: the body.
async fn scrape(addr: std::net::SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    stream.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
    out.split_once("\r\n\r\n").unwrap().1.to_owned()
}

/// The value of the series `name{labels}` (labels as written, in order).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

#[tokio::test]
async fn calls_are_timed_by_method_and_code_and_the_store_is_read_at_scrape() {
    let registry = Arc::new(Mutex::new(Some(Registry::default())));
    let server = TestServer::start_with(Limits::default(), 64, |store| {
        let mut guard = registry.lock().unwrap();
        let metrics = ServerMetrics::register(guard.as_mut().unwrap(), store);
        ServeOptions {
            metrics: Some(metrics),
            ..ServeOptions::default()
        }
    })
    .await;
    let registry = Arc::new(registry.lock().unwrap().take().unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let endpoint = tokio::spawn(serve_metrics(listener, registry, async {
        let _ = stopped.await;
    }));

    server.store.apply("ctr", 5, beta_state(3)).unwrap();
    server.store.apply("ctr", 6, beta_state(1)).unwrap();
    let mut client = server.client().await;
    client.get_params(get("ctr", vec![5])).await.unwrap();
    client.get_params(get("ctr", vec![5, 6])).await.unwrap();
    let missing = client.get_params(get("nope", vec![5])).await.unwrap_err();
    assert_eq!(missing.code(), tonic::Code::NotFound);
    let watch = client
        .watch_params(posterior_proto::v1::WatchParamsRequest {
            version: "ctr".into(),
            ..Default::default()
        })
        .await
        .unwrap();

    let text = scrape(metrics_addr).await;
    let series = |method: &str, code: &str, suffix: &str| {
        format!(
            "posterior_param_server_grpc_request_duration_seconds_{suffix}{{service=\"posterior.v1.ParamService\",method=\"{method}\",code=\"{code}\"}}"
        )
    };
    assert_eq!(
        value(&text, &series("GetParams", "OK", "count")),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        value(&text, &series("GetParams", "NOT_FOUND", "count")),
        Some(1.0),
        "{text}"
    );
    let ok_sum = value(&text, &series("GetParams", "OK", "sum")).unwrap();
    assert!(ok_sum > 0.0 && ok_sum < 10.0, "{ok_sum}");
    // The open stream has no status yet: not observed, but subscribed.
    assert_eq!(
        value(&text, &series("WatchParams", "OK", "count")),
        None,
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "posterior_param_server_watch_subscribers{version=\"ctr\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "posterior_param_server_keys{version=\"ctr\"}"),
        Some(2.0),
        "{text}"
    );
    // Every GetParams took a work slot (the version is looked up in it).
    assert_eq!(
        value(&text, "posterior_param_server_requests_admitted_total"),
        Some(3.0),
        "{text}"
    );
    // All of them small enough to run on the worker that received them.
    assert_eq!(
        value(&text, "posterior_param_server_requests_run_inline_total"),
        Some(3.0),
        "{text}"
    );
    assert_eq!(
        value(
            &text,
            "posterior_param_server_requests_shed_total{limit=\"queue_full\"}"
        ),
        Some(0.0),
        "{text}"
    );

    // The client drops the stream: the call ends as CANCELLED once the
    // server notices.
    drop(watch);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let text = scrape(metrics_addr).await;
        if value(&text, &series("WatchParams", "CANCELLED", "count")) == Some(1.0) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{text}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.send(()).unwrap();
    endpoint.await.unwrap();
    server.stop().await;
}
