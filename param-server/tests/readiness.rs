//! A replica that has not caught up: health says `NOT_SERVING` and every
//! `ParamService` call is refused with `UNAVAILABLE`, over real gRPC;
//! once ready, both turn at once.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::time::Duration;

use common::*;
use posterior_param_server::{Limits, Readiness, ServeOptions};

#[tokio::test]
async fn until_ready_health_is_not_serving_and_params_calls_are_unavailable() {
    let readiness = Readiness::not_ready();
    let server = TestServer::start_with(Limits::default(), 64, |_| ServeOptions {
        readiness: Some(readiness.clone()),
        ..ServeOptions::default()
    })
    .await;
    server.store.apply("ctr", 5, beta_state(3)).unwrap();
    let mut client = server.client().await;
    assert!(!server.healthy().await);
    let refused = client.get_params(get("ctr", vec![5])).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert!(refused.message().contains("catching up"), "{refused:?}");

    readiness.set_ready();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !server.healthy().await {
        assert!(tokio::time::Instant::now() < deadline, "never SERVING");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let params = client
        .get_params(get("ctr", vec![5]))
        .await
        .unwrap()
        .into_inner()
        .params;
    assert_eq!(params[0].seq, 3);
    server.stop().await;
}
