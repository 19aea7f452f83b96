//! The harness of the gRPC tests: a param-server on `127.0.0.1:0` over a
//! store the test feeds directly, and clients connected to it.

#![allow(dead_code)] // each test binary uses part of the harness
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

pub mod admin;
pub mod fixtures;

#[allow(unused_imports, reason = "each test binary uses part of the harness")]
pub use fixtures::{beta_spec, beta_state, diagonal_spec, diagonal_state};

use std::net::SocketAddr;
use std::sync::Arc;

use posterior_param_server::{Limits, ParamStore, ServeOptions, ServerError, serve};
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A running server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Arc<ParamStore>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServerError>>>,
}

impl TestServer {
    /// Starts a server with a Beta version `ctr` and a diagonal d = 4
    /// version `dwell`.
    pub async fn start(limits: Limits, watch_buffer: usize) -> Self {
        Self::start_with(limits, watch_buffer, |_| ServeOptions::default()).await
    }

    /// [`TestServer::start`] with the admin service, TLS, ... that
    /// `options` builds over the store.
    pub async fn start_with(
        limits: Limits,
        watch_buffer: usize,
        options: impl FnOnce(&Arc<ParamStore>) -> ServeOptions,
    ) -> Self {
        let store = Arc::new(ParamStore::new(watch_buffer));
        store.register(beta_spec("ctr")).unwrap();
        store.register(diagonal_spec("dwell", 4)).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let options = options(&store);
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&store),
            limits,
            options,
            async {
                let _ = stopped.await;
            },
        ));
        Self {
            addr,
            store,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// A client of `ParamService` accepting responses up to 64 MiB.
    pub async fn client(&self) -> ParamServiceClient<Channel> {
        ParamServiceClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    /// A channel to the server, for the clients of other services.
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Whether the health service says `ParamService` is serving.
    pub async fn healthy(&self) -> bool {
        let mut health = HealthClient::new(self.channel().await);
        let request = tonic_health::pb::HealthCheckRequest {
            service: "posterior.v1.ParamService".into(),
        };
        let status = health.check(request).await.unwrap().into_inner().status;
        status == ServingStatus::Serving as i32
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

/// Checks that `params` is whole: every field agrees with its seq.
pub fn assert_whole(params: &v1::Params) {
    if params.is_prior {
        assert_eq!(
            (params.seq, params.sample_count),
            (0, 0.0),
            "prior with updates"
        );
        return;
    }
    let s = params.seq as f64;
    assert_eq!(params.sample_count, s, "torn sample_count");
    assert_eq!(params.updated_event_time_ms, params.seq as i64, "torn time");
    match &params.model {
        Some(v1::params::Model::Beta(b)) => {
            assert_eq!((b.alpha, b.beta), (1.0 + s, 1.0 + 2.0 * s), "torn beta")
        }
        Some(v1::params::Model::Gaussian(g)) => {
            assert!(g.mean.iter().all(|&m| m == s), "torn mean");
            assert!(g.precision.iter().all(|&q| q == 1.0 + s), "torn precision");
        }
        None => panic!("no model"),
    }
}

pub fn get(version: &str, doc_ids: Vec<u64>) -> v1::GetParamsRequest {
    v1::GetParamsRequest {
        version: version.into(),
        doc_ids,
    }
}

/// The resident set of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}
