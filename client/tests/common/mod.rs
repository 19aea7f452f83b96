//! The harness of the client's tests: a real param-server on
//! `127.0.0.1:0`, in its own runtime so that a test can kill it (every
//! connection drops, as in a crash) and start another on the same port.

#![allow(dead_code)] // each test binary uses part of the harness
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

pub mod admin_double;
#[path = "../../../param-server/tests/common/fixtures.rs"]
pub mod fixtures;

#[allow(unused_imports, reason = "each test binary uses part of the harness")]
pub use fixtures::{beta_spec, beta_state, diagonal_spec, diagonal_state};

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use posterior_client::{Backoff, ClientConfig, RetryPolicy};
use posterior_param_server::{Limits, ParamStore, ServeOptions, serve};
use tokio::runtime::Runtime;

/// A param-server running on its own runtime.
pub struct ParamServer {
    pub addr: SocketAddr,
    pub store: Arc<ParamStore>,
    runtime: Option<Runtime>,
}

impl ParamServer {
    /// A store with a Beta version `ctr` and a diagonal d = 4 version
    /// `dwell`, whose update channels hold `watch_buffer` updates.
    pub fn store(watch_buffer: usize) -> Arc<ParamStore> {
        let store = Arc::new(ParamStore::new(watch_buffer));
        store.register(beta_spec("ctr")).unwrap();
        store.register(diagonal_spec("dwell", 4)).unwrap();
        store
    }

    /// Serves `store` on `addr` (`127.0.0.1:0` for any port).
    pub fn start(store: Arc<ParamStore>, limits: Limits, addr: SocketAddr) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        // std sets SO_REUSEADDR, so a restarted server can take the port
        // of a killed one.
        let listener = bind(addr);
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let served = Arc::clone(&store);
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            serve(
                listener,
                served,
                limits,
                ServeOptions::default(),
                std::future::pending(),
            )
            .await
            .unwrap();
        });
        Self {
            addr,
            store,
            runtime: Some(runtime),
        }
    }

    /// `ParamService` over `store` and the admin double on one port (the
    /// param-server's `AdminService` is not built yet), on any port.
    pub fn with_admin(store: Arc<ParamStore>, admin: admin_double::AdminDouble) -> Self {
        use posterior_param_server::ParamServiceImpl;
        use posterior_proto::v1::admin_service_server::AdminServiceServer;
        use posterior_proto::v1::param_service_server::ParamServiceServer;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = bind("127.0.0.1:0".parse().unwrap());
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let params = ParamServiceImpl::new(Arc::clone(&store), Limits::default());
        runtime.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(ParamServiceServer::new(params))
                .add_service(AdminServiceServer::new(admin))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
                .await
                .unwrap();
        });
        Self {
            addr,
            store,
            runtime: Some(runtime),
        }
    }

    /// A server with the default limits on any port.
    pub fn any_port(watch_buffer: usize) -> Self {
        Self::start(
            Self::store(watch_buffer),
            Limits::default(),
            "127.0.0.1:0".parse().unwrap(),
        )
    }

    /// The endpoint clients connect to.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Drops the runtime and with it the listener and every connection.
    pub fn kill(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Binds `addr`, waiting up to 5 s for a killed server's listener on the
/// same port to close.
fn bind(addr: SocketAddr) -> std::net::TcpListener {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match std::net::TcpListener::bind(addr) {
            Ok(listener) => return listener,
            Err(e) if Instant::now() < deadline => {
                eprintln!("bind {addr}: {e}; retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("bind {addr}: {e}"),
        }
    }
}

impl Drop for ParamServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A client config with short delays, so tests that retry stay fast.
pub fn fast_config() -> ClientConfig {
    ClientConfig {
        retry: RetryPolicy {
            max_attempts: 5,
            max_elapsed_ms: 5_000,
            backoff: Backoff {
                initial_backoff_ms: 5,
                max_backoff_ms: 50,
                multiplier: 2.0,
            },
        },
        ..ClientConfig::default()
    }
}

/// Polls `check` every 10 ms until it returns true; panics after
/// `timeout` with `what`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
