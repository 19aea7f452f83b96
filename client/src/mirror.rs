//! [`Mirror`]: a local copy of one version's parameters, kept current by
//! `WatchParams`, readable lock-free from any number of threads.
//!
//! A background task watches the version: it applies the snapshot, then
//! every update. When the stream ends — a `resync` because the mirror fell
//! behind the server's bounded buffer, a dropped connection, a server
//! restart — it watches again after a jittered backoff and merges the new
//! snapshot into the same map. Every write keeps, per doc, the state with
//! the highest seq, so a doc's seq never goes backwards, not across
//! reconnects either (a server restored from an older state cannot roll
//! a mirror back). The old values stay readable while it reconnects.
//!
//! Memory: the map holds one [`Params`] per doc seen; beyond it the task
//! holds one decoded event at a time (HTTP/2 flow control bounds what the
//! connection buffers). A rebuild writes into the live map, so a resync
//! never holds a second copy. Docs are never removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::Rng;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::client::{Client, WatchEvent};
use crate::config::Backoff;
use crate::error::{ClientError, is_retryable};
use crate::params::Params;

/// What a mirror follows and how it reconnects.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MirrorConfig {
    /// Docs to follow; empty follows the whole version.
    pub doc_ids: Vec<u64>,
    /// Delays between reconnects. The mirror reconnects after any failure
    /// of an open stream, and after a failure to open one with a
    /// retryable code (UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED),
    /// or with NOT_FOUND once the version had been served (a restarted
    /// server that does not know it yet). Opening with any other code
    /// stops it (e.g. NOT_FOUND for a version never served), as does a
    /// response that breaks the contract. The delays grow with each
    /// reconnect until a stream has followed for 5 s after its snapshot.
    /// Opening each stream is itself retried with the client's
    /// [`crate::RetryPolicy`].
    pub reconnect: Backoff,
}

/// Where the mirror's task is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MirrorStatus {
    /// True once the current stream's snapshot has been applied, until the
    /// stream ends; live updates after that are applied as they arrive.
    pub caught_up: bool,
    /// Streams opened so far (1 + reconnects).
    pub sessions: u64,
    /// `resync` events received.
    pub resyncs: u64,
    /// Why the mirror stopped for good, once it has.
    pub stopped: Option<String>,
}

/// A version's parameters, mirrored locally. Cheap to clone; the clones
/// share the map and the task, which stops when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Mirror {
    shared: Arc<Shared>,
    _task: Arc<AbortOnDrop>,
}

/// foldhash, seeded per mirror: doc ids are small integers that SipHash
/// would hash needlessly slowly on the read path.
type DocHasher = foldhash::fast::RandomState;

#[derive(Debug)]
struct Shared {
    version: String,
    docs: papaya::HashMap<u64, Arc<Params>, DocHasher>,
    last_seq: AtomicU64,
    status: watch::Sender<MirrorStatus>,
}

#[derive(Debug)]
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Mirror {
    /// Starts mirroring `version` through `client`; must be called within
    /// a tokio runtime. Await [`Mirror::caught_up`] before relying on it.
    pub fn start(client: Client, version: impl Into<String>, config: MirrorConfig) -> Self {
        let shared = Arc::new(Shared {
            version: version.into(),
            docs: papaya::HashMap::with_hasher(DocHasher::default()),
            last_seq: AtomicU64::new(0),
            status: watch::Sender::new(MirrorStatus::default()),
        });
        let task = tokio::spawn(run(client, Arc::clone(&shared), config));
        Self {
            shared,
            _task: Arc::new(AbortOnDrop(task)),
        }
    }

    /// The mirrored version.
    pub fn version(&self) -> &str {
        &self.shared.version
    }

    /// The newest parameters of `doc` seen, lock-free. `None` when no
    /// snapshot or update has named it (the version's prior applies;
    /// `GetParams` returns it).
    pub fn get(&self, doc_id: u64) -> Option<Arc<Params>> {
        self.shared.docs.pin().get(&doc_id).cloned()
    }

    /// The newest parameters of each of `doc_ids`, in order, under one
    /// pin of the map (cheaper than one [`Mirror::get`] per doc).
    pub fn get_many(&self, doc_ids: &[u64]) -> Vec<Option<Arc<Params>>> {
        let docs = self.shared.docs.pin();
        doc_ids.iter().map(|d| docs.get(d).cloned()).collect()
    }

    /// Docs held.
    pub fn len(&self) -> usize {
        self.shared.docs.len()
    }

    /// Whether no doc is held yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every doc held, in no particular order.
    pub fn to_vec(&self) -> Vec<Arc<Params>> {
        self.shared.docs.pin().values().cloned().collect()
    }

    /// The highest seq of any doc applied so far.
    pub fn last_seq(&self) -> u64 {
        self.shared.last_seq.load(Ordering::Acquire)
    }

    /// The task's current status.
    pub fn status(&self) -> MirrorStatus {
        self.shared.status.borrow().clone()
    }

    /// Waits until the status satisfies `ready` or the mirror stops, and
    /// returns that status.
    pub async fn wait_for(&self, mut ready: impl FnMut(&MirrorStatus) -> bool) -> MirrorStatus {
        let mut status = self.shared.status.subscribe();
        let seen = status
            .wait_for(|s| s.stopped.is_some() || ready(s))
            .await
            .expect("the sender lives in `shared`, which this mirror holds");
        seen.clone()
    }

    /// Waits until the current stream's snapshot is applied. Err when the
    /// mirror stopped for good (e.g. NOT_FOUND for an unknown version).
    pub async fn caught_up(&self) -> Result<(), ClientError> {
        match self.wait_for(|s| s.caught_up).await.stopped {
            Some(reason) => Err(ClientError::MirrorStopped(reason)),
            None => Ok(()),
        }
    }
}

impl Shared {
    /// Keeps `params` unless the doc already holds a seq at least as high.
    /// The mirror's task is the only writer, so the check and the insert
    /// cannot interleave with another write.
    fn apply(&self, params: Params) {
        let docs = self.docs.pin();
        if docs
            .get(&params.doc_id)
            .is_some_and(|old| old.seq >= params.seq)
        {
            return;
        }
        let seq = params.seq;
        docs.insert(params.doc_id, Arc::new(params));
        self.last_seq.fetch_max(seq, Ordering::AcqRel);
    }
}

/// How a stream ended.
enum SessionEnd {
    /// The server said resync.
    Resync(String),
    /// The server closed the stream.
    Closed,
    /// Opening the stream failed.
    OpenFailed(ClientError),
    /// The open stream failed: a dropped connection surfaces with
    /// whatever code the transport picked (UNKNOWN, INTERNAL, CANCELLED,
    /// UNAVAILABLE), so any code is worth a reconnect — except a message
    /// that breaks the contract, which a reconnect would only repeat.
    StreamFailed(ClientError),
}

async fn run(client: Client, shared: Arc<Shared>, config: MirrorConfig) {
    let mut failures = 0_u32;
    // Once the version was served, NOT_FOUND is a server that does not
    // know it yet (restarted, its learner not yet announced): wait for it,
    // as for an unavailable server. Before, it is a version that does not
    // exist: stop and say so.
    let mut caught_up_once = false;
    loop {
        let end = session(
            &client,
            &shared,
            &config,
            &mut failures,
            &mut caught_up_once,
        )
        .await;
        shared.status.send_modify(|s| s.caught_up = false);
        match end {
            SessionEnd::Resync(reason) => {
                tracing::info!(version = shared.version, reason, "mirror resyncing");
                shared.status.send_modify(|s| s.resyncs += 1);
            }
            SessionEnd::Closed => {
                tracing::info!(
                    version = shared.version,
                    "watch stream closed; reconnecting"
                );
            }
            SessionEnd::OpenFailed(error)
                if is_retryable(error.code(), true)
                    || (caught_up_once && error.code() == tonic::Code::NotFound) =>
            {
                tracing::warn!(version = shared.version, %error, "watch failed; reconnecting");
            }
            SessionEnd::StreamFailed(error)
                if !matches!(error, ClientError::InvalidResponse(_)) =>
            {
                tracing::warn!(version = shared.version, %error, "watch stream failed; reconnecting");
            }
            SessionEnd::OpenFailed(error) | SessionEnd::StreamFailed(error) => {
                tracing::error!(version = shared.version, %error, "mirror stopped");
                shared
                    .status
                    .send_modify(|s| s.stopped = Some(error.to_string()));
                return;
            }
        }
        failures = failures.saturating_add(1);
        let delay = config
            .reconnect
            .delay(failures, rand::rng().random::<f64>());
        tokio::time::sleep(delay).await;
    }
}

/// How long a session must follow after its snapshot to count as a
/// success, from which the next reconnect starts at the shortest delay.
/// One that ends sooner (a watcher that falls behind at once, every time)
/// keeps backing off instead of pulling a snapshot every few ms.
const STABLE_SESSION: std::time::Duration = std::time::Duration::from_secs(5);

/// One stream: snapshot, then updates, until it ends. Resets `failures`
/// when it followed for [`STABLE_SESSION`] after its snapshot; sets
/// `caught_up_once` at its snapshot's end.
async fn session(
    client: &Client,
    shared: &Shared,
    config: &MirrorConfig,
    failures: &mut u32,
    caught_up_once: &mut bool,
) -> SessionEnd {
    let mut stream = match client.watch(&shared.version, &config.doc_ids, 0).await {
        Ok(stream) => stream,
        Err(error) => return SessionEnd::OpenFailed(error),
    };
    shared.status.send_modify(|s| s.sessions += 1);
    let mut caught_up_at = None;
    let end = loop {
        let Some(event) = stream.next().await else {
            break SessionEnd::Closed;
        };
        match event {
            Ok(WatchEvent::Snapshot(params) | WatchEvent::Update(params)) => shared.apply(params),
            Ok(WatchEvent::SnapshotDone) => {
                caught_up_at = Some(std::time::Instant::now());
                *caught_up_once = true;
                shared.status.send_modify(|s| s.caught_up = true);
            }
            Ok(WatchEvent::Resync(reason)) => break SessionEnd::Resync(reason),
            Err(error) => break SessionEnd::StreamFailed(error),
        }
    };
    if caught_up_at.is_some_and(|t| t.elapsed() >= STABLE_SESSION) {
        *failures = 0;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::params::Model;

    fn params(doc_id: u64, seq: u64) -> Params {
        Params {
            doc_id,
            model: Model::Beta {
                alpha: 1.0 + seq as f64,
                beta: 1.0,
            },
            seq,
            sample_count: seq as f64,
            updated_event_time_ms: 0,
            is_prior: seq == 0,
        }
    }

    #[test]
    fn a_docs_seq_never_goes_backwards() {
        let shared = Shared {
            version: "ctr".into(),
            docs: papaya::HashMap::with_hasher(DocHasher::default()),
            last_seq: AtomicU64::new(0),
            status: watch::Sender::new(MirrorStatus::default()),
        };
        shared.apply(params(1, 5));
        shared.apply(params(1, 3));
        shared.apply(params(2, 0));
        shared.apply(params(2, 1));
        let docs = shared.docs.pin();
        assert_eq!(docs.get(&1).unwrap().seq, 5);
        assert_eq!(docs.get(&2).unwrap().seq, 1);
        assert_eq!(shared.last_seq.load(Ordering::Acquire), 5);
    }
}
