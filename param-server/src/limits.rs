//! The bounds of the gRPC service: every request, response, buffer and
//! subscriber count has one.

/// Limits of `ParamService`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request message (bytes); larger ones get `OUT_OF_RANGE`
    /// from tonic before any handler runs.
    pub max_request_bytes: usize,
    /// Largest response message (bytes).
    pub max_response_bytes: usize,
    /// Most doc ids in one request; more get `INVALID_ARGUMENT`.
    pub max_docs_per_request: usize,
    /// Most concurrent `WatchParams` streams per version; more get
    /// `RESOURCE_EXHAUSTED`.
    pub max_watchers_per_version: usize,
    /// Events a watcher's outgoing stream buffers before the server stops
    /// producing for it (and its update buffer starts to fill).
    pub watch_stream_events: usize,
    /// Requests of one connection handled at once (waiting for a work
    /// slot included); a request beyond it is shed at once with
    /// `RESOURCE_EXHAUSTED`, never queued.
    pub max_concurrent_requests_per_connection: usize,
    /// HTTP/2 streams one connection may have open (advertised as
    /// `SETTINGS_MAX_CONCURRENT_STREAMS`; a stream stays open until its
    /// response is sent); beyond it the client waits. At least
    /// `max_concurrent_requests_per_connection`, so that limit sheds
    /// first. Bounds a connection's responses held for a slow reader.
    pub max_streams_per_connection: usize,
    /// Requests whose work (lookups, draws) runs at once, server-wide;
    /// 0: one per core available to the server. See [`crate::admission`].
    pub work_slots: usize,
    /// Requests that may wait for a work slot, server-wide; more are shed
    /// at once with `RESOURCE_EXHAUSTED`. 0: none wait.
    pub max_queued_requests: usize,
    /// Bytes of decoded requests that may wait for a work slot,
    /// server-wide; a request that would exceed it is shed at once.
    pub max_queued_request_bytes: usize,
    /// Longest wait for a work slot (ms); a request waits less when its
    /// deadline requires, and is shed at once when the work queued ahead
    /// would outlast its wait, with `RESOURCE_EXHAUSTED` either way.
    pub max_queue_wait_ms: u64,
    /// Time a request may take to produce its response (a watch stream's
    /// events are not counted); past it the request ends with `CANCELLED`
    /// (tonic's code for a server timeout).
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_request_bytes: 4 << 20,
            max_response_bytes: 64 << 20,
            max_docs_per_request: 10_000,
            max_watchers_per_version: 64,
            watch_stream_events: 256,
            max_concurrent_requests_per_connection: 256,
            max_streams_per_connection: 512,
            work_slots: 0,
            max_queued_requests: 1024,
            max_queued_request_bytes: 64 << 20,
            max_queue_wait_ms: 100,
            request_timeout_ms: 5_000,
        }
    }
}
