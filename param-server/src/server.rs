//! The gRPC server: `ParamService`, the guarded `AdminService` (when
//! tokens are configured), the standard health service and server
//! reflection on one listener, optionally over TLS, until a shutdown
//! future resolves. `ParamService`'s work is admitted server-wide
//! ([`crate::admission`]); per connection, requests beyond the concurrency
//! limit are shed with `RESOURCE_EXHAUSTED` (not queued), open streams are
//! bounded, and every request has a timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use posterior_proto::conn::Coalesced;
use posterior_proto::v1::admin_service_server::AdminServiceServer;
use posterior_proto::v1::param_service_server::ParamServiceServer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::{Connected, TcpIncoming};

use crate::admin::AdminServiceImpl;
use crate::audit::AuditLog;
use crate::auth::TokenSet;
use crate::grpc_metrics::{ADMIN_METHODS, Metered, PARAM_METHODS};
use crate::guard::AdminGuard;
use crate::limits::Limits;
use crate::metrics::ServerMetrics;
use crate::readiness::Readiness;
use crate::routes::ParamRoutes;
use crate::service::ParamServiceImpl;
use crate::store::ParamStore;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The reflection service could not read the descriptors.
    #[error("build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The transport failed (or refused the TLS configuration).
    #[error("serve gRPC: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The admin service and what guards it.
#[derive(Debug)]
pub struct AdminSetup {
    /// The handlers.
    pub service: AdminServiceImpl,
    /// Who may call them (must not be empty).
    pub tokens: Arc<TokenSet>,
    /// Where every call is recorded.
    pub audit: Arc<AuditLog>,
}

/// What `serve` adds to `ParamService`.
#[derive(Debug, Default)]
pub struct ServeOptions {
    /// The admin service; not served (UNIMPLEMENTED) when `None`.
    pub admin: Option<AdminSetup>,
    /// TLS of the listener; plaintext when `None`.
    pub tls: Option<ServerTlsConfig>,
    /// A replica's catch-up: until ready, health says `NOT_SERVING` and
    /// `ParamService` calls get `UNAVAILABLE`. Ready at once when `None`.
    pub readiness: Option<Readiness>,
    /// Where calls and admission decisions are counted; nowhere when
    /// `None`.
    pub metrics: Option<Arc<ServerMetrics>>,
}

/// How long in-flight calls get to finish once shutdown is asked for.
/// Open connections (an idle client, a `WatchParams` stream) would hold
/// a graceful shutdown forever; after this the server stops regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Reports the params service (and the server, `""`) `NOT_SERVING` until
/// `readiness` is set, `SERVING` from then on.
async fn report_readiness(health: &tonic_health::server::HealthReporter, readiness: &Readiness) {
    use tonic_health::ServingStatus;
    type Params = ParamServiceServer<ParamServiceImpl>;
    if readiness.is_ready() {
        health.set_serving::<Params>().await;
        return;
    }
    health.set_not_serving::<Params>().await;
    health
        .set_service_status("", ServingStatus::NotServing)
        .await;
    let (health, readiness) = (health.clone(), readiness.clone());
    tokio::spawn(async move {
        readiness.wait().await;
        health.set_serving::<Params>().await;
        health.set_service_status("", ServingStatus::Serving).await;
    });
}

/// Serves `store` on `listener` until `shutdown` resolves; in-flight
/// requests get [`SHUTDOWN_GRACE`] to finish. Tests bind `127.0.0.1:0` and
/// pass the listener.
///
/// Every accepted connection gets `TCP_NODELAY` (small responses must not
/// wait for Nagle's algorithm: 40 ms with delayed ACKs) and coalesced
/// writes ([`Coalesced`]: a small response leaves in one write).
pub async fn serve(
    listener: TcpListener,
    store: Arc<ParamStore>,
    limits: Limits,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError> {
    let incoming = TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .map(|accepted| accepted.map(Coalesced::new));
    serve_connections(incoming, store, limits, options, shutdown).await
}

/// [`serve`] on connections from any source (`incoming`), as they come:
/// for tests that wrap the socket, and for listeners `serve` does not
/// know. The connections are used as given (no `TCP_NODELAY`, no
/// [`Coalesced`] added).
pub async fn serve_connections<I, IO, IE>(
    incoming: I,
    store: Arc<ParamStore>,
    limits: Limits,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServerError>
where
    I: Stream<Item = Result<IO, IE>>,
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let (health, health_service) = tonic_health::server::health_reporter();
    let readiness = options.readiness.unwrap_or_else(Readiness::ready);
    report_readiness(&health, &readiness).await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(posterior_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = ParamServiceImpl::new(store, limits.clone());
    let admission = Arc::clone(service.admission());
    if let Some(metrics) = &options.metrics {
        metrics.attach_admission(&admission);
    }
    tracing::info!(work_slots = admission.slots(), "ParamService admission");
    let params = ParamRoutes::new(service, &limits);
    let params = tonic::service::interceptor::InterceptedService::new(params, {
        let readiness = readiness.clone();
        move |request| readiness.check(request)
    });
    let admin = match options.admin {
        Some(setup) => {
            health
                .set_serving::<AdminServiceServer<AdminServiceImpl>>()
                .await;
            let server = AdminServiceServer::new(setup.service)
                .max_decoding_message_size(limits.max_request_bytes)
                .max_encoding_message_size(limits.max_response_bytes);
            Some(AdminGuard::new(server, setup.tokens, setup.audit))
        }
        None => None,
    };
    // Metered outermost: refusals by the readiness check, the guard and
    // admission are timed and counted too.
    let (params, params_plain, admin, admin_plain) = match &options.metrics {
        Some(metrics) => (
            Some(Metered::new(params, Arc::clone(metrics), PARAM_METHODS)),
            None,
            admin.map(|a| Metered::new(a, Arc::clone(metrics), ADMIN_METHODS)),
            None,
        ),
        None => (None, Some(params), None, admin),
    };
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = options.tls {
        builder = builder.tls_config(tls)?;
    }
    let (stopping, stopped) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = stopping.send(());
    };
    let serving = builder
        .concurrency_limit_per_connection(limits.max_concurrent_requests_per_connection)
        .load_shed(true)
        .max_concurrent_streams(
            u32::try_from(limits.max_streams_per_connection).unwrap_or(u32::MAX),
        )
        .timeout(Duration::from_millis(limits.request_timeout_ms))
        .add_service(health_service)
        .add_service(reflection)
        .add_optional_service(params)
        .add_optional_service(params_plain)
        .add_optional_service(admin)
        .add_optional_service(admin_plain)
        .serve_with_incoming_shutdown(incoming, shutdown);
    let grace_over = async move {
        if stopped.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    let served = tokio::select! {
        served = serving => served,
        () = grace_over => {
            tracing::warn!(
                grace_s = SHUTDOWN_GRACE.as_secs(),
                "connections still open after the shutdown grace; stopping regardless"
            );
            Ok(())
        }
    };
    let stats = admission.stats();
    tracing::info!(
        admitted = stats.admitted,
        admitted_after_wait = stats.admitted_after_wait,
        admitted_inline = stats.admitted_inline,
        shed = stats.shed(),
        refused_deadline = stats.refused_deadline,
        "ParamService admission totals"
    );
    Ok(served?)
}
