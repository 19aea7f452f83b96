//! [`Metered`]: a service wrapper that observes every gRPC call's latency
//! by service, method and status code.
//!
//! The status is read where gRPC puts it: in the response headers of a
//! trailers-only response (an error before any message), else in the
//! trailers at the end of the body — so a call is timed from its request
//! to its status, and a `WatchParams` stream for its whole life. A call
//! whose response or body is dropped before a status (the client went
//! away, the server's timeout or shutdown) is counted as `CANCELLED`.
//!
//! Per call: one lookup in a fixed table of histograms (no label strings
//! are built) and one histogram observation.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::Frame;
use prometheus_client::metrics::histogram::Histogram;
use tonic::body::Body;
use tonic::codegen::{Bytes, StdError, http};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::audit::code_name;
use crate::metrics::{GrpcLabels, ServerMetrics};

/// The methods of `posterior.v1.ParamService`.
pub const PARAM_METHODS: &[&str] = &["GetParams", "SampleScores", "WatchParams"];
/// The methods of `posterior.v1.AdminService`.
pub const ADMIN_METHODS: &[&str] = &[
    "CreateVersion",
    "ForkVersion",
    "ListVersions",
    "RetireVersion",
    "TriggerSavepoint",
    "RollbackVersion",
];

/// Status codes 0..=16 (`OK` … `UNAUTHENTICATED`).
const CODES: usize = 17;

/// The histograms of one service: one per (method or `unknown`, code),
/// created in the registry on first use.
#[derive(Debug)]
struct Table {
    metrics: Arc<ServerMetrics>,
    service: &'static str,
    methods: &'static [&'static str],
    /// `(methods.len() + 1) × CODES` slots; the last method row is
    /// `unknown`.
    slots: Vec<OnceLock<Histogram>>,
}

impl Table {
    fn histogram(&self, method: usize, code: Code) -> &Histogram {
        let code_index = (code as usize).min(CODES - 1);
        self.slots[method * CODES + code_index].get_or_init(|| {
            self.metrics.grpc_latency(&GrpcLabels {
                service: self.service,
                method: self.methods.get(method).copied().unwrap_or("unknown"),
                code: code_name(code),
            })
        })
    }

    /// The row of a path `/package.Service/Method`.
    fn method_of(&self, path: &str) -> usize {
        let name = path.rsplit('/').next().unwrap_or_default();
        self.methods
            .iter()
            .position(|m| *m == name)
            .unwrap_or(self.methods.len())
    }
}

/// `inner` with every call's latency observed in `metrics`.
#[derive(Debug, Clone)]
pub struct Metered<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S: NamedService> Metered<S> {
    /// Wraps `inner`, whose methods are `methods` (other paths are
    /// labelled `unknown`).
    pub fn new(inner: S, metrics: Arc<ServerMetrics>, methods: &'static [&'static str]) -> Self {
        let slots = (0..(methods.len() + 1) * CODES)
            .map(|_| OnceLock::new())
            .collect();
        Self {
            inner,
            table: Arc::new(Table {
                metrics,
                service: S::NAME,
                methods,
                slots,
            }),
        }
    }
}

impl<S: NamedService> NamedService for Metered<S> {
    const NAME: &'static str = S::NAME;
}

/// A call waiting for its status; observed once, when it is known or the
/// call is dropped.
struct Call {
    table: Arc<Table>,
    method: usize,
    start: Instant,
    done: bool,
}

impl Call {
    fn finish(&mut self, code: Code) {
        if !self.done {
            self.done = true;
            self.table
                .histogram(self.method, code)
                .observe(self.start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

/// The `grpc-status` of a header map, if it has one.
fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    headers
        .get("grpc-status")
        .map(|v| Code::from_bytes(v.as_bytes()))
}

type MeteredFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S, B> tonic::codegen::Service<http::Request<Body>> for Metered<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<B>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = MeteredFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let mut call = Call {
            method: self.table.method_of(request.uri().path()),
            table: Arc::clone(&self.table),
            start: Instant::now(),
            done: false,
        };
        // The inner service was made ready by `poll_ready`; a fresh clone
        // stays behind for the next call (the tower idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            let (parts, body) = response.into_parts();
            let body = match status_in(&parts.headers) {
                Some(code) => {
                    call.finish(code);
                    Body::new(body)
                }
                None => Body::new(MeteredBody {
                    inner: Body::new(body),
                    call,
                }),
            };
            Ok(http::Response::from_parts(parts, body))
        })
    }
}

/// A response body that observes its call when the trailers carry the
/// status.
struct MeteredBody {
    inner: Body,
    call: Call,
}

impl http_body::Body for MeteredBody {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call
                        .finish(status_in(trailers).unwrap_or(Code::Unknown));
                }
            }
            Poll::Ready(Some(Err(status))) => this.call.finish(status.code()),
            // Ended without trailers: no status was sent.
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
