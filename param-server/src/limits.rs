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
    /// Requests of one connection handled at once; a request beyond it is
    /// shed at once with `RESOURCE_EXHAUSTED`, never queued.
    pub max_concurrent_requests_per_connection: usize,
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
            request_timeout_ms: 5_000,
        }
    }
}
