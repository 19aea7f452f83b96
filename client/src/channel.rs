//! One HTTP/2 channel to a server, shared by every call of a client and
//! re-established by tonic when the connection drops.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::transport::Connector;

/// Interval of HTTP/2 keep-alive pings: a watch stream over a connection
/// that silently died (no FIN, no RST) fails within interval + timeout
/// instead of hanging, and the mirror reconnects.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Time a keep-alive ping may go unanswered.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest HTTP/2 frame the client accepts (SETTINGS_MAX_FRAME_SIZE; the
/// protocol's default is 16 KiB). A `GetParams` of 1000 d = 32 docs is
/// ~300 KB: the server sends it in one DATA frame instead of ~19, and
/// spends ~20 % less CPU per such request (BENCHMARKS.md, "Larger HTTP/2
/// frames").
pub const MAX_FRAME_BYTES: u32 = 1 << 20;

/// Connects to `endpoint` (`http://host:port`, or `https://` with the
/// `tls` feature) within the config's connect timeout.
/// Plain `http://` endpoints connect through [`Connector`] (a request in
/// one TCP segment); TLS endpoints through tonic's own connector.
pub(crate) async fn connect(endpoint: &str, config: &ClientConfig) -> Result<Channel, ClientError> {
    let builder = builder(endpoint, config)?;
    let connected = if is_plain(endpoint) {
        builder.connect_with_connector(Connector).await
    } else {
        builder.connect().await
    };
    connected.map_err(|source| ClientError::Connect {
        endpoint: endpoint.to_owned(),
        source,
    })
}

/// A channel to `endpoint` that connects on its first call.
pub(crate) fn lazy(endpoint: &str, config: &ClientConfig) -> Result<Channel, ClientError> {
    let builder = builder(endpoint, config)?;
    Ok(if is_plain(endpoint) {
        builder.connect_with_connector_lazy(Connector)
    } else {
        builder.connect_lazy()
    })
}

fn is_plain(endpoint: &str) -> bool {
    endpoint.starts_with("http://")
}

fn builder(endpoint: &str, config: &ClientConfig) -> Result<Endpoint, ClientError> {
    let invalid = |reason: String| ClientError::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason,
    };
    let mut builder = Endpoint::from_shared(endpoint.to_owned())
        .map_err(|e| invalid(e.to_string()))?
        .connect_timeout(config.connect_timeout())
        .tcp_nodelay(true)
        .max_frame_size(MAX_FRAME_BYTES)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    if endpoint.starts_with("https://") {
        builder = tls(builder, config).map_err(invalid)?;
    }
    Ok(builder)
}

#[cfg(feature = "tls")]
fn tls(builder: Endpoint, config: &ClientConfig) -> Result<Endpoint, String> {
    use tonic::transport::{Certificate, ClientTlsConfig};
    let mut tls = ClientTlsConfig::new();
    match &config.tls.ca_cert_pem {
        Some(path) => {
            let pem = std::fs::read(path)
                .map_err(|e| format!("read CA certificate {}: {e}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        None => tls = tls.with_native_roots(),
    }
    if let Some(domain) = &config.tls.domain {
        tls = tls.domain_name(domain.clone());
    }
    builder.tls_config(tls).map_err(|e| e.to_string())
}

#[cfg(not(feature = "tls"))]
fn tls(_: Endpoint, _: &ClientConfig) -> Result<Endpoint, String> {
    Err("https needs posterior-client's `tls` feature".to_owned())
}
