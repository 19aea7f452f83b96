//! How many writes a response costs on the socket: a 1-doc `GetParams`
//! answer (d = 32, ~830 bytes) leaves in one write with the server's
//! coalesced connections, where a plain socket takes two (h2 flushes the
//! DATA frame before it encodes the trailers).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

use common::{diagonal_spec, diagonal_state, get};
use posterior_param_server::{Coalesced, Limits, ParamStore, ServeOptions, serve_connections};
use posterior_proto::v1::param_service_client::ParamServiceClient;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::server::Connected;

/// A socket that counts the writes that reached it (one system call each).
struct Counted {
    io: TcpStream,
    writes: Arc<AtomicU64>,
}

impl Counted {
    fn count(&self, written: &Poll<io::Result<usize>>) {
        if matches!(written, Poll::Ready(Ok(n)) if *n > 0) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write(cx, data);
        this.count(&written);
        written
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.count(&written);
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

impl Connected for Counted {
    type ConnectInfo = <TcpStream as Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

const DIM: usize = 32;
const REQUESTS: u64 = 200;

/// Serves a store of one d = 32 doc over counted sockets (as `wrap`
/// makes them), sends `REQUESTS` 1-doc `GetParams` one after the other on
/// one connection, and returns the server's writes during them.
async fn writes_for_requests<IO>(wrap: fn(Counted) -> IO) -> u64
where
    IO: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let store = Arc::new(ParamStore::new(16));
    store.register(diagonal_spec("dwell", DIM)).unwrap();
    store.apply("dwell", 1, diagonal_state(7, DIM)).unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let writes = Arc::new(AtomicU64::new(0));
    let counter = Arc::clone(&writes);
    let accepted = TcpListenerStream::new(listener).map(move |accepted| {
        accepted.map(|io| {
            io.set_nodelay(true).unwrap();
            wrap(Counted {
                io,
                writes: Arc::clone(&counter),
            })
        })
    });
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve_connections(
        accepted,
        Arc::clone(&store),
        Limits::default(),
        ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = ParamServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // Settle the connection (SETTINGS, window updates) before counting.
    let first = client.get_params(get("dwell", vec![1])).await.unwrap();
    assert_eq!(first.into_inner().params[0].seq, 7);
    let before = writes.load(Ordering::Relaxed);
    for _ in 0..REQUESTS {
        let response = client.get_params(get("dwell", vec![1])).await.unwrap();
        let params = &response.into_inner().params[0];
        assert_eq!(params.seq, 7);
        assert!(!params.is_prior);
    }
    let during = writes.load(Ordering::Relaxed) - before;
    drop(client);
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    during
}

#[tokio::test]
async fn a_small_response_leaves_in_one_write() {
    let plain = writes_for_requests(|socket| socket).await;
    let coalesced = writes_for_requests(Coalesced::new).await;
    eprintln!("server writes for {REQUESTS} responses: plain {plain}, coalesced {coalesced}");
    // A few extra writes (window updates, pings) are allowed either way.
    assert!(
        coalesced <= REQUESTS + REQUESTS / 10,
        "coalesced: {coalesced} writes for {REQUESTS} responses"
    );
    // Why the wrapper exists; if this fails, h2 no longer splits a small
    // response and `Coalesced` may be unnecessary.
    assert!(
        plain >= 2 * REQUESTS - REQUESTS / 10,
        "plain socket: {plain} writes for {REQUESTS} responses"
    );
}
