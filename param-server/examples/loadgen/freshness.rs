//! Freshness: the time from handing an update to the server's feed (the
//! learner's in-process channel) to (a) its arrival at a `WatchParams`
//! subscriber and (b) its visibility to `GetParams`.
//!
//! Updates go at a fixed rate, in batches every 10 ms, to random docs of
//! a watched set, with seqs above every stored one. A watcher follows the
//! set; a poller takes the last update of each batch and sends
//! `GetParams` for its doc until that seq shows (or a newer one).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hdrhistogram::Histogram;
use posterior_learner::params::{ParamChange, Publication};
use posterior_proto::v1;
use posterior_proto::v1::watch_params_event::Event;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::contender::param_server;
use crate::data::{VERSION, state};
use crate::drive::histogram;

/// Batches of updates per second.
const BATCHES_PER_S: u64 = 100;

/// What to send.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Updates per second.
    pub rate: u64,
    /// For how long.
    pub duration: Duration,
    /// Docs watched (and updated), spread over `0..keys`.
    pub watched: u64,
    /// Keys served.
    pub keys: u64,
    /// Dimension.
    pub dim: usize,
    /// Seq of the first update (above every stored seq).
    pub first_seq: u64,
}

/// Freshness figures.
#[derive(Debug)]
pub struct Freshness {
    /// Feed → watcher, µs.
    pub watch_us: Histogram<u64>,
    /// Feed → visible to GetParams, µs.
    pub visible_us: Histogram<u64>,
    /// Updates sent.
    pub sent: u64,
}

type SentAt = Arc<Mutex<Vec<Option<Instant>>>>;

/// Sends `plan`'s updates into `feed` and measures both delays.
pub async fn measure(
    addr: &str,
    feed: &mpsc::Sender<Publication>,
    plan: Plan,
) -> Result<Freshness> {
    let total = plan.rate * plan.duration.as_secs();
    let sent_at: SentAt = Arc::new(Mutex::new(vec![None; total as usize]));
    let stride = (plan.keys / plan.watched).max(1);
    let watched: Vec<u64> = (0..plan.watched).map(|i| i * stride).collect();
    let (ready, is_ready) = oneshot::channel();
    let watcher = tokio::spawn(watcher(
        addr.to_owned(),
        watched.clone(),
        plan.first_seq,
        total,
        Arc::clone(&sent_at),
        ready,
    ));
    is_ready
        .await
        .context("the watcher ended before its snapshot")?;
    let (last, last_rx) = watch::channel(None);
    let poller = tokio::spawn(poller(addr.to_owned(), last_rx));
    send_updates(feed, &plan, &watched, &sent_at, last).await?;
    let watch_us = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .context("the watcher missed updates")???;
    let visible_us = poller.await??;
    Ok(Freshness {
        watch_us,
        visible_us,
        sent: total,
    })
}

/// Sends the plan's batches at their times; records when each was sent.
async fn send_updates(
    feed: &mpsc::Sender<Publication>,
    plan: &Plan,
    watched: &[u64],
    sent_at: &SentAt,
    last: watch::Sender<Option<(u64, u64, Instant)>>,
) -> Result<()> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(plan.first_seq);
    let per_batch = (plan.rate / BATCHES_PER_S).max(1);
    let total = sent_at.lock().expect("not poisoned").len() as u64;
    let version: Arc<str> = Arc::from(VERSION);
    let mut ticks = tokio::time::interval(Duration::from_millis(1000 / BATCHES_PER_S));
    let mut i = 0;
    while i < total {
        ticks.tick().await;
        let end = (i + per_batch).min(total);
        let batch: Vec<ParamChange> = (i..end)
            .map(|k| {
                let doc_id = watched[rng.random_range(0..watched.len())];
                ParamChange {
                    version: Arc::clone(&version),
                    doc_id,
                    state: state(doc_id, plan.first_seq + k, plan.dim).into(),
                }
            })
            .collect();
        let newest = batch.last().map(|c| (c.doc_id, c.state.seq));
        let now = Instant::now();
        sent_at.lock().expect("not poisoned")[i as usize..end as usize].fill(Some(now));
        feed.send(Publication::Params(batch))
            .await
            .context("the feed stopped")?;
        if let Some((doc, seq)) = newest {
            let _ = last.send(Some((doc, seq, now)));
        }
        i = end;
    }
    Ok(())
}

/// Follows the watched docs until every update arrived.
async fn watcher(
    addr: String,
    doc_ids: Vec<u64>,
    first_seq: u64,
    total: u64,
    sent_at: SentAt,
    ready: oneshot::Sender<()>,
) -> Result<Histogram<u64>> {
    let mut client = param_server(&addr).await?;
    let request = v1::WatchParamsRequest {
        version: VERSION.into(),
        doc_ids,
        from_seq: first_seq - 1,
    };
    let mut stream = client.watch_params(request).await?.into_inner();
    let mut ready = Some(ready);
    let mut latency = histogram();
    while latency.len() < total {
        let Some(event) = stream.message().await? else {
            bail!("the watch stream ended");
        };
        match event.event {
            Some(Event::SnapshotDone(_)) => {
                if let Some(ready) = ready.take() {
                    let _ = ready.send(());
                }
            }
            Some(Event::Update(params)) => {
                let arrived = Instant::now();
                let index = (params.seq - first_seq) as usize;
                let sent = sent_at.lock().expect("not poisoned")[index];
                let sent = sent.context("an update arrived before it was sent")?;
                latency.saturating_record((arrived - sent).as_micros() as u64);
            }
            Some(Event::Resync(reason)) => bail!("watcher told to resync: {reason}"),
            Some(Event::Snapshot(_)) | None => {}
        }
    }
    Ok(latency)
}

/// For each newest update, polls GetParams until it shows.
async fn poller(
    addr: String,
    mut last: watch::Receiver<Option<(u64, u64, Instant)>>,
) -> Result<Histogram<u64>> {
    let mut client = param_server(&addr).await?;
    let mut latency = histogram();
    while last.changed().await.is_ok() {
        let Some((doc, seq, sent)) = *last.borrow_and_update() else {
            continue;
        };
        loop {
            let request = v1::GetParamsRequest {
                version: VERSION.into(),
                doc_ids: vec![doc],
            };
            let params = client.get_params(request).await?.into_inner().params;
            if params.first().is_some_and(|p| p.seq >= seq) {
                latency.saturating_record(sent.elapsed().as_micros() as u64);
                break;
            }
        }
    }
    Ok(latency)
}
