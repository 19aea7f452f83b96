//! The client's TCP connections: a unary call's request in one segment.
//!
//! tonic's own connector hands hyper a plain `TcpStream`, over which
//! hyper's HTTP/2 client writes a request's HEADERS and its DATA in two
//! writes, a scheduler turn apart, and the server's kernel acknowledges the
//! pair with a segment of its own (see [`posterior_proto::conn`]). A
//! [`Connector`] wraps each socket in [`Coalesced::deferring`], which
//! sends both frames in one write. On loopback, with 8 clients of 1-doc
//! `GetParams` against one server core, this took the segments per call
//! from 4 to 2 and the server's CPU per call down (BENCHMARKS.md, "One
//! segment per request").
//!
//! Plain `http://` endpoints only: with TLS, tonic's connector (and its
//! TLS session) is used unchanged.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use posterior_proto::conn::Coalesced;
use tokio::net::TcpStream;
use tonic::codegen::http::Uri;

/// A connection made by [`Connector`].
pub type Connection = TokioIo<Coalesced<TcpStream>>;

/// Connects to an `http://host:port` URI with `TCP_NODELAY` set and the
/// socket wrapped in [`Coalesced::deferring`]; for
/// `Endpoint::connect_with_connector` (tonic applies the endpoint's
/// connect timeout around it). Each resolved address is tried in turn.
#[derive(Debug, Clone, Copy, Default)]
pub struct Connector;

impl tonic::codegen::Service<Uri> for Connector {
    type Response = Connection;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Connection>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        Box::pin(async move {
            let (host, port) = host_port(&uri)?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(Coalesced::deferring(tcp)))
        })
    }
}

/// The host (IPv6 brackets removed) and port (80 when absent) of an
/// `http://` URI.
fn host_port(uri: &Uri) -> io::Result<(String, u16)> {
    if uri.scheme_str() != Some("http") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the plain TCP connector takes http:// URIs only, not {uri}"),
        ));
    }
    let host = uri
        .host()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Ok((host.to_owned(), uri.port_u16().unwrap_or(80)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_ports_are_read_from_the_uri() {
        let parse = |s: &str| host_port(&s.parse::<Uri>().unwrap());
        assert_eq!(
            parse("http://127.0.0.1:7070").unwrap(),
            ("127.0.0.1".into(), 7070)
        );
        assert_eq!(parse("http://[::1]:7070").unwrap(), ("::1".into(), 7070));
        assert_eq!(
            parse("http://params.internal").unwrap(),
            ("params.internal".into(), 80)
        );
        let https = parse("https://params.internal:443").unwrap_err();
        assert!(https.to_string().contains("http:// URIs only"), "{https}");
    }

    #[tokio::test]
    async fn connects_with_nodelay_to_a_listener() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let uri: Uri = format!("http://{addr}").parse().unwrap();
        let accept = tokio::spawn(async move { listener.accept().await.unwrap() });
        let conn = tonic::codegen::Service::call(&mut Connector, uri)
            .await
            .unwrap();
        let (server, _) = accept.await.unwrap();
        assert!(conn.inner().get_ref().nodelay().unwrap());
        assert_eq!(
            server.peer_addr().unwrap(),
            conn.inner().get_ref().local_addr().unwrap()
        );
    }
}
