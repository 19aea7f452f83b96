//! Connections that coalesce small writes, so a small gRPC message leaves
//! in one TCP segment instead of two. Used by both ends: the param-server
//! wraps every accepted socket in [`Coalesced::new`], the Rust client its
//! socket in [`Coalesced::deferring`].
//!
//! **Server side.** h2 (0.4) copies a DATA payload into its frame buffer
//! only up to a threshold — 256 bytes when the connection reports vectored
//! writes, 1024 when it does not — and chains a larger one as a second
//! buffer; it then flushes that chained frame before it encodes the next
//! one. Over a plain `TcpStream` (vectored) a response of one doc's
//! parameters (~830 bytes at d = 32) therefore costs a `writev` of
//! HEADERS and DATA and a second `write` of the 10-byte trailers frame
//! (`grpc-status`), where a Redis reply costs one. On loopback each write
//! also runs the receiver's TCP path; it was the largest single cost of
//! 1-doc requests. [`Coalesced`] reports no vectored writes, so h2 copies
//! payloads of up to 1024 bytes and a small response is one buffer,
//! written once. For the larger, chained payloads h2 then writes the frame
//! buffer and the payload in two calls; `Coalesced` keeps the first
//! (small) call in its own buffer and sends both with one `writev` when the
//! payload arrives (uncopied), so those frames still cost one system call
//! each.
//!
//! **Client side.** hyper's HTTP/2 client queues a request's HEADERS when
//! it opens the stream, but its DATA only once h2 has given the new stream
//! send capacity — which h2 does while the connection task writes those
//! HEADERS, and that task then flushes them alone. The DATA follows in a
//! second write, one scheduler turn later: two small TCP segments per
//! unary call, and the server's kernel acknowledged the pair at once with
//! a segment of its own (`ss -ti` on the server's sockets: per call two
//! data segments in, the response and one pure ACK out), so a call cost
//! four segments on loopback where a Redis `MGET` costs two.
//! [`Coalesced::deferring`] makes the first flush of held bytes wait one
//! turn of the scheduler (`tokio::task::yield_now`, which tokio wakes only
//! once the worker has run its other ready tasks): the body task, woken
//! by the capacity grant, runs first and queues the DATA, and the flush
//! then sends HEADERS and DATA in one write. If nothing comes meanwhile
//! (a PING acknowledgement, a window update), the flush sends what is
//! held one turn later — never after a timer. On a current-thread runtime
//! the order is fixed; on a multi-threaded one another worker may take the
//! connection task while the body task runs, so there most requests, not
//! all, leave in one write (`param-server/tests/writes.rs`).
//!
//! Bytes reach the socket in the order they were written, and nothing
//! stays buffered past a completed flush.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// The most bytes held at a time.
pub const HOLD_BYTES: usize = 16 * 1024;

/// The largest single write that is held; a larger one (a chained DATA
/// payload) is never copied: it goes out at once, after what is held, in
/// the same vectored write.
pub const HOLD_WRITE: usize = 4 * 1024;

/// An I/O stream whose small writes are held until a flush or a larger
/// write, which then sends everything held with one vectored write.
#[derive(Debug)]
pub struct Coalesced<T> {
    io: T,
    /// Held bytes; `held[sent..]` are not yet written to `io`.
    held: Vec<u8>,
    sent: usize,
    /// Whether a flush of held bytes first yields one scheduler turn.
    defers: bool,
    /// A flush has yielded for the bytes held now.
    deferred: bool,
    /// The turn a deferred flush waits for.
    turn: Option<Turn>,
}

impl<T> Coalesced<T> {
    /// Wraps `io` (the server's mode): a flush writes what is held at once.
    /// Nothing is allocated until the first write.
    pub fn new(io: T) -> Self {
        Self {
            io,
            held: Vec::new(),
            sent: 0,
            defers: false,
            deferred: false,
            turn: None,
        }
    }

    /// Wraps `io` (the client's mode): the first flush of held bytes
    /// yields one scheduler turn, so the frames another task is about to
    /// queue (a request's DATA after its HEADERS) leave in the same write.
    pub fn deferring(io: T) -> Self {
        Self {
            defers: true,
            ..Self::new(io)
        }
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &T {
        &self.io
    }

    /// Bytes accepted but not yet written to the wrapped stream.
    pub fn held(&self) -> usize {
        self.held.len() - self.sent
    }

    /// Keeps `bufs` (all of them) if they fit the hold; returns how many
    /// bytes were kept, or `None` if they did not fit.
    fn hold(&mut self, bufs: &[IoSlice<'_>]) -> Option<usize> {
        let total = bufs.iter().map(|b| b.len()).sum::<usize>();
        if total > HOLD_WRITE || self.held() + total > HOLD_BYTES {
            return None;
        }
        if self.held.capacity() == 0 {
            self.held.reserve_exact(HOLD_BYTES);
        }
        if self.sent == self.held.len() {
            self.held.clear();
            self.sent = 0;
            self.deferred = false;
        }
        for buf in bufs {
            self.held.extend_from_slice(buf);
        }
        Some(total)
    }
}

impl<T: AsyncWrite + Unpin> Coalesced<T> {
    /// Writes what is held, and `data` after it in the same call, until
    /// part of `data` is written (returns its length) or `io` would block.
    fn poll_write_through(&mut self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            if self.held() == 0 {
                return Pin::new(&mut self.io).poll_write(cx, data);
            }
            let held = &self.held[self.sent..];
            let n = ready!(
                Pin::new(&mut self.io)
                    .poll_write_vectored(cx, &[IoSlice::new(held), IoSlice::new(data)])
            )?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            let of_held = n.min(held.len());
            self.sent += of_held;
            if n > of_held {
                return Poll::Ready(Ok(n - of_held));
            }
        }
    }

    /// Writes everything held.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.held() > 0 {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.held[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.held.clear();
        self.sent = 0;
        self.deferred = false;
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Coalesced<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Coalesced<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        match this.hold(&[IoSlice::new(data)]) {
            Some(n) => Poll::Ready(Ok(n)),
            None => this.poll_write_through(cx, data),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match this.hold(bufs) {
            Some(n) => Poll::Ready(Ok(n)),
            None => {
                let first = bufs
                    .iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &**b);
                this.poll_write_through(cx, first)
            }
        }
    }

    /// `false`, deliberately: h2 then copies payloads of up to 1024 bytes
    /// into its frame buffer instead of chaining them (see the module).
    fn is_write_vectored(&self) -> bool {
        false
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.defers && !this.deferred && this.held() > 0 {
            let turn = this
                .turn
                .get_or_insert_with(|| Turn(Box::pin(tokio::task::yield_now())));
            ready!(turn.0.as_mut().poll(cx));
            this.turn = None;
            this.deferred = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for Coalesced<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// `tokio::task::yield_now()`, boxed: tokio wakes it only once the worker
/// has run every other ready task (and polled its I/O driver), so the body
/// task runs before the flush resumes.
struct Turn(Pin<Box<dyn Future<Output = ()> + Send + Sync>>);

impl std::fmt::Debug for Turn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Turn")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::task::Waker;

    /// A sink that records each write call and, per the script, accepts at
    /// most so many bytes of it or is not ready (and wakes at once).
    #[derive(Debug, Default)]
    struct Recorder {
        out: Vec<u8>,
        /// Per call: `None` = not ready this time, `Some(k)` = accept ≤ k.
        script: Vec<Option<usize>>,
        calls: usize,
        writes: Vec<usize>,
        flushes: usize,
    }

    impl Recorder {
        fn next_limit(&mut self) -> Option<usize> {
            let step = self
                .script
                .get(self.calls)
                .copied()
                .unwrap_or(Some(usize::MAX));
            self.calls += 1;
            step
        }

        fn accept(
            &mut self,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let Some(limit) = self.next_limit() else {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            let mut n = 0;
            for buf in bufs {
                let take = buf.len().min(limit - n);
                self.out.extend_from_slice(&buf[..take]);
                n += take;
                if n == limit {
                    break;
                }
            }
            self.writes.push(n);
            Poll::Ready(Ok(n))
        }
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().accept(cx, &[IoSlice::new(data)])
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().accept(cx, bufs)
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.get_mut().flushes += 1;
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Polls until ready (the recorder wakes at once when not ready).
    fn block<R>(mut poll: impl FnMut(&mut Context<'_>) -> Poll<R>) -> R {
        let mut cx = Context::from_waker(Waker::noop());
        for _ in 0..10_000 {
            if let Poll::Ready(r) = poll(&mut cx) {
                return r;
            }
        }
        panic!("never ready");
    }

    fn write_all(conn: &mut Coalesced<Recorder>, mut data: &[u8]) {
        while !data.is_empty() {
            let n = block(|cx| Pin::new(&mut *conn).poll_write(cx, data)).unwrap();
            assert!(n > 0 && n <= data.len());
            data = &data[n..];
        }
    }

    fn flush(conn: &mut Coalesced<Recorder>) {
        block(|cx| Pin::new(&mut *conn).poll_flush(cx)).unwrap();
    }

    #[test]
    fn small_writes_leave_in_one_write_at_the_flush() {
        let mut conn = Coalesced::new(Recorder::default());
        write_all(&mut conn, b"HEADERS+DATA");
        write_all(&mut conn, b"TRAILERS");
        assert!(
            conn.get_ref().writes.is_empty(),
            "nothing written before the flush"
        );
        assert_eq!(conn.held(), 20);
        flush(&mut conn);
        assert_eq!(conn.get_ref().writes, vec![20]);
        assert_eq!(conn.get_ref().out, b"HEADERS+DATATRAILERS");
        assert_eq!(conn.get_ref().flushes, 1);
        assert_eq!(conn.held(), 0);
    }

    #[test]
    fn a_large_write_takes_what_is_held_in_the_same_call() {
        let mut conn = Coalesced::new(Recorder::default());
        let head = [9u8; 9];
        let payload = vec![7u8; HOLD_BYTES];
        write_all(&mut conn, &head);
        write_all(&mut conn, &payload);
        assert_eq!(
            conn.get_ref().writes,
            vec![9 + HOLD_BYTES],
            "one vectored write"
        );
        flush(&mut conn);
        assert_eq!(conn.get_ref().writes.len(), 1, "the flush had nothing left");
        let mut expected = head.to_vec();
        expected.extend_from_slice(&payload);
        assert_eq!(conn.get_ref().out, expected);
    }

    #[test]
    fn a_write_over_the_single_write_hold_goes_out_at_once() {
        let mut conn = Coalesced::new(Recorder::default());
        let payload = vec![3u8; HOLD_WRITE + 1];
        write_all(&mut conn, &payload);
        assert_eq!(conn.get_ref().writes, vec![HOLD_WRITE + 1], "not held");
        write_all(&mut conn, &payload[..HOLD_WRITE]);
        assert_eq!(
            conn.held(),
            HOLD_WRITE,
            "a write of HOLD_WRITE bytes is held"
        );
    }

    #[test]
    fn a_flush_with_nothing_held_only_flushes() {
        let mut conn = Coalesced::new(Recorder::default());
        flush(&mut conn);
        assert!(conn.get_ref().writes.is_empty());
        assert_eq!(conn.get_ref().flushes, 1);
    }

    #[test]
    fn vectored_writes_are_held_whole_or_written_through() {
        let mut conn = Coalesced::new(Recorder::default());
        let n = block(|cx| {
            Pin::new(&mut conn).poll_write_vectored(cx, &[IoSlice::new(b"ab"), IoSlice::new(b"cd")])
        })
        .unwrap();
        assert_eq!(n, 4);
        assert!(!conn.is_write_vectored());
        let big = vec![1u8; HOLD_BYTES];
        let n = block(|cx| {
            Pin::new(&mut conn).poll_write_vectored(cx, &[IoSlice::new(&[]), IoSlice::new(&big)])
        })
        .unwrap();
        assert_eq!(n, HOLD_BYTES);
        assert_eq!(conn.get_ref().writes, vec![4 + HOLD_BYTES]);
        assert_eq!(&conn.get_ref().out[..4], b"abcd");
    }

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Wakes(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Wakes {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }

        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[test]
    fn a_deferring_flush_yields_once_then_sends_what_came_meanwhile() {
        let wakes = std::sync::Arc::new(Wakes::default());
        let waker = Waker::from(std::sync::Arc::clone(&wakes));
        let mut cx = Context::from_waker(&waker);
        let mut conn = Coalesced::deferring(Recorder::default());
        write_all(&mut conn, b"HEADERS");
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert_eq!(
            wakes.0.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "woke itself"
        );
        assert!(conn.get_ref().writes.is_empty() && conn.get_ref().flushes == 0);
        write_all(&mut conn, b"DATA");
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert_eq!(conn.get_ref().writes, vec![11], "one write of both frames");
        assert_eq!(conn.get_ref().out, b"HEADERSDATA");
        assert_eq!(conn.get_ref().flushes, 1);

        // The next held bytes are deferred again; a flush with nothing held
        // is not.
        write_all(&mut conn, b"PING");
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert_eq!(conn.get_ref().writes, vec![11, 4]);
        assert_eq!(conn.get_ref().flushes, 3);
        assert_eq!(wakes.0.load(std::sync::atomic::Ordering::Relaxed), 2);
    }

    #[test]
    fn a_server_flush_never_defers() {
        let mut conn = Coalesced::new(Recorder::default());
        write_all(&mut conn, b"HEADERS+DATA");
        let mut cx = Context::from_waker(Waker::noop());
        assert!(Pin::new(&mut conn).poll_flush(&mut cx).is_ready());
        assert_eq!(conn.get_ref().writes, vec![12]);
    }

    proptest! {
        /// Whatever the writes, flushes and the socket's partial writes and
        /// stalls, in either mode, the bytes arrive complete and in order,
        /// nothing is held after a completed flush, and a flush or a large
        /// write is the only thing that writes.
        #[test]
        fn bytes_arrive_in_order(
            ops in prop::collection::vec(
                prop_oneof![
                    3 => (1usize..=HOLD_WRITE).prop_map(Some),
                    1 => (1usize..3 * HOLD_BYTES).prop_map(Some),
                    1 => Just(None),
                ],
                1..40,
            ),
            script in prop::collection::vec(
                prop_oneof![Just(None), (1usize..40_000).prop_map(Some)],
                0..200,
            ),
            defers in any::<bool>(),
        ) {
            let recorder = Recorder { script, ..Recorder::default() };
            let mut conn = if defers {
                Coalesced::deferring(recorder)
            } else {
                Coalesced::new(recorder)
            };
            let mut sent = Vec::new();
            for (i, op) in ops.iter().enumerate() {
                match *op {
                    Some(len) => {
                        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
                        write_all(&mut conn, &data);
                        sent.extend_from_slice(&data);
                        prop_assert!(conn.held() <= HOLD_BYTES);
                    }
                    None => {
                        flush(&mut conn);
                        prop_assert_eq!(conn.held(), 0);
                        prop_assert_eq!(&conn.get_ref().out, &sent);
                    }
                }
            }
            flush(&mut conn);
            prop_assert_eq!(&conn.get_ref().out, &sent);
        }
    }
}
