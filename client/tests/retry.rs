//! The retry policy over real gRPC, against a test double of
//! `ParamService` that fails as told.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::fast_config;
use posterior_client::{Client, ClientConfig, ClientError, RetryPolicy};
use posterior_proto::v1;
use posterior_proto::v1::param_service_server::{ParamService, ParamServiceServer};
use tonic::transport::server::TcpIncoming;
use tonic::{Code, Request, Response, Status};

/// Fails `GetParams` with `code` while `failures` lasts (sleeping
/// `sleep_ms` first on each failing call when set), then answers; always
/// refuses `SampleScores` with INVALID_ARGUMENT.
struct Flaky {
    failures: AtomicU32,
    code: Code,
    sleep_ms: u64,
    get_calls: Arc<AtomicU32>,
    sample_calls: Arc<AtomicU32>,
    grpc_timeouts: Arc<Mutex<Vec<String>>>,
}

#[tonic::async_trait]
impl ParamService for Flaky {
    async fn get_params(
        &self,
        request: Request<v1::GetParamsRequest>,
    ) -> Result<Response<v1::GetParamsResponse>, Status> {
        self.get_calls.fetch_add(1, Ordering::SeqCst);
        if let Some(timeout) = request.metadata().get("grpc-timeout") {
            let timeout = timeout.to_str().unwrap().to_owned();
            self.grpc_timeouts.lock().unwrap().push(timeout);
        }
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            if self.sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(self.sleep_ms)).await;
            }
            return Err(Status::new(self.code, "try later"));
        }
        let request = request.into_inner();
        let params = request
            .doc_ids
            .iter()
            .map(|&doc_id| v1::Params {
                version: request.version.clone(),
                doc_id,
                model: Some(v1::params::Model::Beta(v1::BetaParams {
                    alpha: 2.0,
                    beta: 3.0,
                })),
                seq: 1,
                sample_count: 1.0,
                updated_event_time_ms: 10,
                is_prior: false,
            })
            .collect();
        Ok(Response::new(v1::GetParamsResponse { params }))
    }

    async fn sample_scores(
        &self,
        _: Request<v1::SampleScoresRequest>,
    ) -> Result<Response<v1::SampleScoresResponse>, Status> {
        self.sample_calls.fetch_add(1, Ordering::SeqCst);
        Err(Status::invalid_argument("context has 3 values, dim is 4"))
    }

    type WatchParamsStream = tokio_stream::Empty<Result<v1::WatchParamsEvent, Status>>;

    async fn watch_params(
        &self,
        _: Request<v1::WatchParamsRequest>,
    ) -> Result<Response<Self::WatchParamsStream>, Status> {
        Err(Status::unimplemented("not in this double"))
    }
}

struct Double {
    addr: SocketAddr,
    get_calls: Arc<AtomicU32>,
    sample_calls: Arc<AtomicU32>,
    grpc_timeouts: Arc<Mutex<Vec<String>>>,
}

async fn start(failures: u32, code: Code, sleep_ms: u64) -> Double {
    let get_calls = Arc::new(AtomicU32::new(0));
    let sample_calls = Arc::new(AtomicU32::new(0));
    let grpc_timeouts = Arc::new(Mutex::new(Vec::new()));
    let flaky = Flaky {
        failures: AtomicU32::new(failures),
        code,
        sleep_ms,
        get_calls: Arc::clone(&get_calls),
        sample_calls: Arc::clone(&sample_calls),
        grpc_timeouts: Arc::clone(&grpc_timeouts),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ParamServiceServer::new(flaky))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    Double {
        addr,
        get_calls,
        sample_calls,
        grpc_timeouts,
    }
}

async fn connect(double: &Double, config: ClientConfig) -> Client {
    Client::connect(format!("http://{}", double.addr), config)
        .await
        .unwrap()
}

#[tokio::test]
async fn unavailable_is_retried_until_it_succeeds() {
    let double = start(3, Code::Unavailable, 0).await;
    let client = connect(&double, fast_config()).await;
    let params = client.get_params("ctr", &[4, 2]).await.unwrap();
    assert_eq!(double.get_calls.load(Ordering::SeqCst), 4, "3 failures + 1");
    assert_eq!(params.len(), 2);
    assert_eq!((params[1].doc_id, params[1].seq), (2, 1));
    // Every attempt carried the request deadline (1 s by default).
    let timeouts = double.grpc_timeouts.lock().unwrap().clone();
    assert_eq!(timeouts.len(), 4);
    assert!(timeouts.iter().all(|t| t == "1000000u"), "{timeouts:?}");
}

#[tokio::test]
async fn resource_exhausted_is_retried_too() {
    let double = start(1, Code::ResourceExhausted, 0).await;
    let client = connect(&double, fast_config()).await;
    client.get_params("ctr", &[1]).await.unwrap();
    assert_eq!(double.get_calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn attempts_are_bounded() {
    let double = start(100, Code::Unavailable, 0).await;
    let mut config = fast_config();
    config.retry.max_attempts = 3;
    let client = connect(&double, config).await;
    let err = client.get_params("ctr", &[1]).await.unwrap_err();
    assert!(
        matches!(
            err,
            ClientError::Status {
                code: Code::Unavailable,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(double.get_calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn invalid_argument_and_not_found_are_never_retried() {
    let double = start(0, Code::Ok, 0).await;
    let client = connect(&double, fast_config()).await;
    let err = client
        .sample_scores("dwell", &[1], Some(&[0.0; 3]), None)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.to_string().contains("dim is 4"), "{err}");
    assert_eq!(double.sample_calls.load(Ordering::SeqCst), 1);

    let double = start(5, Code::NotFound, 0).await;
    let client = connect(&double, fast_config()).await;
    let err = client.get_params("nope", &[1]).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(double.get_calls.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_attempt_past_its_deadline_is_retried_as_deadline_exceeded() {
    // The first attempt takes 500 ms against a 100 ms deadline.
    let double = start(1, Code::Unavailable, 500).await;
    let mut config = fast_config();
    config.request_timeout_ms = 100;
    let client = connect(&double, config.clone()).await;
    client.get_params("ctr", &[1]).await.unwrap();
    assert_eq!(double.get_calls.load(Ordering::SeqCst), 2);

    // Without retries the deadline surfaces as DEADLINE_EXCEEDED.
    let double = start(1, Code::Unavailable, 500).await;
    config.retry = RetryPolicy::none();
    let client = connect(&double, config).await;
    let err = client.get_params("ctr", &[1]).await.unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
}
