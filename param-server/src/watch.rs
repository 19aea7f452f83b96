//! `WatchParams`: a snapshot of a version (or of some of its docs), then
//! every update applied after it, so that a predictor keeps a local mirror.
//!
//! Memory per watcher is bounded twice: the version's update buffer (a
//! `broadcast` channel of `watch_buffer` updates shared by its watchers)
//! and the watcher's outgoing stream (`watch_stream_events` events). A
//! watcher that reads too slowly falls more than `watch_buffer` updates
//! behind; it then gets one `resync` event and its stream ends. It never
//! makes the server buffer more. A stream counts against
//! `max_watchers_per_version` until it is dropped, not only while it
//! follows: one told to resync whose client reads nothing still holds its
//! outgoing events, so the limit bounds those too.
//!
//! Ordering: the watcher subscribes before it reads the snapshot, so no
//! update is missed; a live update may therefore repeat (same seq) or
//! precede (lower seq) what the snapshot already sent for a doc. A mirror
//! keeps, per doc, the state with the highest seq — the store's own rule.
//!
//! The snapshot reads doc ids first, then states in chunks, so it holds
//! no read guard across an await (a guard held for long would keep every
//! replaced value alive).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use posterior_learner::params::params_to_wire;
use posterior_proto::v1;
use posterior_proto::v1::watch_params_event::Event;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::error::ServeError;
use crate::limits::Limits;
use crate::request::WatchRequest;
use crate::store::wire_params_each;
use crate::version::{AppliedUpdate, ServedVersion, WatchSlot};

/// Docs whose states are read under one guard, between two sends.
const SNAPSHOT_CHUNK: usize = 256;

/// The event stream of one watcher. It holds the watcher's slot of its
/// version until it is dropped (the client went away or read the end).
#[derive(Debug)]
pub struct WatchStream {
    events: ReceiverStream<Result<v1::WatchParamsEvent, Status>>,
    _slot: WatchSlot,
}

impl Stream for WatchStream {
    type Item = Result<v1::WatchParamsEvent, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        Pin::new(&mut self.events).poll_next(cx)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.events.size_hint()
    }
}

/// Starts a watcher of `version` and returns its stream; the work runs in
/// a task that ends when the client goes away, falls behind or the
/// version's update channel closes.
pub fn watch(
    version: Arc<ServedVersion>,
    request: WatchRequest,
    limits: &Limits,
) -> Result<WatchStream, ServeError> {
    let Some(slot) = version.reserve_watch(limits.max_watchers_per_version) else {
        return Err(ServeError::TooManyWatchers {
            version: version.name().to_owned(),
            max: limits.max_watchers_per_version,
        });
    };
    let (tx, rx) = mpsc::channel(limits.watch_stream_events.max(1));
    let updates = version.subscribe();
    tokio::spawn(run(version, request, updates, tx));
    Ok(WatchStream {
        events: ReceiverStream::new(rx),
        _slot: slot,
    })
}

type Sender = mpsc::Sender<Result<v1::WatchParamsEvent, Status>>;

fn event(event: Event) -> Result<v1::WatchParamsEvent, Status> {
    Ok(v1::WatchParamsEvent { event: Some(event) })
}

async fn run(
    version: Arc<ServedVersion>,
    request: WatchRequest,
    updates: broadcast::Receiver<AppliedUpdate>,
    tx: Sender,
) {
    if send_snapshot(&version, request.doc_ids.as_deref(), &tx)
        .await
        .is_err()
    {
        return;
    }
    let filter: Option<HashSet<u64>> = request.doc_ids.map(|d| d.into_iter().collect());
    follow(&version, filter, request.from_seq, updates, &tx).await;
}

/// Sends the snapshot and `snapshot_done`; `Err` when the client left.
async fn send_snapshot(
    version: &ServedVersion,
    doc_ids: Option<&[u64]>,
    tx: &Sender,
) -> Result<(), ()> {
    let all;
    let doc_ids = match doc_ids {
        Some(ids) => ids,
        None => {
            all = version.table().doc_ids();
            &all[..]
        }
    };
    for chunk in doc_ids.chunks(SNAPSHOT_CHUNK) {
        let params = wire_params_each(version, &version.table(), chunk);
        for p in params {
            tx.send(event(Event::Snapshot(p))).await.map_err(drop)?;
        }
    }
    tx.send(event(Event::SnapshotDone(true)))
        .await
        .map_err(drop)
}

/// Forwards live updates until the client leaves or falls behind.
async fn follow(
    version: &ServedVersion,
    filter: Option<HashSet<u64>>,
    from_seq: u64,
    mut updates: broadcast::Receiver<AppliedUpdate>,
    tx: &Sender,
) {
    loop {
        let received = tokio::select! {
            received = updates.recv() => received,
            () = tx.closed() => return,
        };
        let update = match received {
            Ok(update) => update,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                let reason = format!(
                    "fell {missed} updates behind the server's buffer of {}: drop the mirror and watch again",
                    version.watch_buffer()
                );
                tracing::info!(version = version.name(), missed, "watcher told to resync");
                // Leave the update channel now (the stream keeps its slot
                // until the client reads the resync or goes away).
                drop(updates);
                let _ = tx.send(event(Event::Resync(reason))).await;
                return;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let wanted = filter.as_ref().is_none_or(|f| f.contains(&update.doc_id));
        if wanted && update.state.seq > from_seq {
            let params = params_to_wire(version.name(), update.doc_id, &update.state);
            if tx.send(event(Event::Update(params))).await.is_err() {
                return;
            }
        }
    }
}
