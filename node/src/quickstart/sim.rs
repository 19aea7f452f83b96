//! The simulated ranking system: a predictor that ranks each request's
//! candidates with the server's draws, users who click with the world's
//! hidden probabilities, and a joiner that hands each shown doc's labelled
//! sample to the learner once the request's label delay has passed (in
//! event time).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use tokio::task::JoinSet;

use posterior_client::{Client, ClientError, WatchEvent};
use posterior_learner::engine::Payload;
use posterior_learner::sample::{Sample, labels};
use posterior_learner::simulation::world::{Request, World};

use super::config::{Arm, Policy, QuickstartConfig};

/// The label the versions reward.
pub const LABEL: &str = "click";

/// Counts of one arm.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Requests ranked.
    pub requests: u64,
    /// Docs shown.
    pub impressions: u64,
    /// Clicks on them.
    pub clicks: u64,
    /// Sum of the shown docs' true click probabilities.
    pub expected: f64,
    /// Sum of the true click probabilities of the docs an oracle that
    /// knows them would have shown.
    pub oracle: f64,
    /// Requests the server did not answer (shown in drawn order instead).
    pub failed: u64,
}

impl Tally {
    /// True CTR of what was shown (expected clicks per impression).
    pub fn expected_ctr(&self) -> f64 {
        self.expected / self.impressions.max(1) as f64
    }

    /// The oracle's CTR on the same requests.
    pub fn oracle_ctr(&self) -> f64 {
        self.oracle / self.impressions.max(1) as f64
    }

    /// Clicks per impression.
    pub fn ctr(&self) -> f64 {
        self.clicks as f64 / self.impressions.max(1) as f64
    }

    /// Expected clicks lost to the oracle.
    pub fn regret(&self) -> f64 {
        self.oracle - self.expected
    }

    fn add(&mut self, other: &Tally) {
        self.requests += other.requests;
        self.impressions += other.impressions;
        self.clicks += other.clicks;
        self.expected += other.expected;
        self.oracle += other.oracle;
        self.failed += other.failed;
    }
}

/// One point of the CTR timeline: the true CTR of each arm over the
/// window of requests ending at `requests`.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Requests served so far (all arms).
    pub requests: u64,
    /// Per arm, the window's tally.
    pub arms: Vec<Tally>,
}

/// Everything the loop counts, shared with the progress printer.
#[derive(Debug, Clone)]
pub struct Stats {
    /// Per arm, since the start.
    pub total: Vec<Tally>,
    /// Per arm, the current timeline window.
    window: Vec<Tally>,
    /// Requests per timeline window.
    window_requests: u64,
    /// Finished windows.
    pub timeline: Vec<Point>,
    /// Samples handed to the learner.
    pub samples_sent: u64,
}

impl Stats {
    /// Empty stats of `arms` arms.
    pub fn new(arms: usize, window_requests: u64) -> Self {
        Self {
            total: vec![Tally::default(); arms],
            window: vec![Tally::default(); arms],
            window_requests,
            timeline: Vec::new(),
            samples_sent: 0,
        }
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.total.iter().map(|t| t.requests).sum()
    }

    /// Counts request `r`, ranked by `arm`, which showed candidates
    /// `shown` (indices into `r.docs`); `shown_count` is how many an
    /// oracle shows.
    pub fn record(
        &mut self,
        arm: usize,
        r: &Request,
        shown: &[usize],
        shown_count: usize,
        failed: bool,
    ) {
        let mut probs = r.probs.clone();
        probs.sort_by(|a, b| b.total_cmp(a));
        let tally = Tally {
            requests: 1,
            impressions: shown.len() as u64,
            clicks: shown.iter().filter(|&&k| r.clicks[k]).count() as u64,
            expected: shown.iter().map(|&k| r.probs[k]).sum(),
            oracle: probs[..shown_count].iter().sum(),
            failed: u64::from(failed),
        };
        self.total[arm].add(&tally);
        self.window[arm].add(&tally);
        let requests = self.requests();
        if requests.is_multiple_of(self.window_requests) {
            let arms =
                std::mem::replace(&mut self.window, vec![Tally::default(); self.total.len()]);
            self.timeline.push(Point { requests, arms });
        }
    }
}

/// Freshness: the time from a sample entering the learner to its key's
/// update arriving on a `WatchParams` stream.
#[derive(Debug)]
pub struct Freshness {
    /// Event time of each request's samples → when they were handed to
    /// the learner (one request per event time).
    sent: Mutex<BTreeMap<i64, Instant>>,
    /// Since the start, µs.
    pub total: Mutex<Histogram<u64>>,
    /// Since the last progress line, µs.
    pub recent: Mutex<Histogram<u64>>,
}

/// Sent times older than this (event time behind the newest) are
/// forgotten: an update that late is not measured.
const SENT_KEPT_MS: i64 = 600_000;

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("bounds are valid")
}

pub(super) fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Default for Freshness {
    fn default() -> Self {
        Self {
            sent: Mutex::new(BTreeMap::new()),
            total: Mutex::new(histogram()),
            recent: Mutex::new(histogram()),
        }
    }
}

impl Freshness {
    fn sent(&self, event_time_ms: i64, at: Instant) {
        let mut sent = locked(&self.sent);
        sent.entry(event_time_ms).or_insert(at);
        if sent.len() > 4 * 1024 * 1024 {
            let keep = sent.split_off(&(event_time_ms - SENT_KEPT_MS));
            *sent = keep;
        }
    }

    /// An update whose newest sample has `event_time_ms` arrived now.
    fn observe(&self, event_time_ms: i64) {
        let Some(at) = locked(&self.sent).get(&event_time_ms).copied() else {
            return;
        };
        let us = (at.elapsed().as_micros() as u64).max(1);
        let _ = locked(&self.total).record(us);
        let _ = locked(&self.recent).record(us);
    }
}

/// Follows `version`'s updates for [`Freshness`] until the task is
/// aborted; a resync or a broken stream subscribes again.
pub async fn watch(client: Client, version: String, freshness: Arc<Freshness>) {
    loop {
        let Ok(mut stream) = client.watch(&version, &[], 0).await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        while let Some(event) = stream.next().await {
            match event {
                Ok(WatchEvent::Update(params)) => freshness.observe(params.updated_event_time_ms),
                Ok(WatchEvent::Snapshot(_) | WatchEvent::SnapshotDone) => {}
                Ok(WatchEvent::Resync(_)) | Err(_) => break,
            }
        }
    }
}

/// A request's samples, due at the learner at `due_ms` (event time).
#[derive(Debug, PartialEq)]
struct Joined {
    due_ms: i64,
    t: u64,
    event_time_ms: i64,
    samples: Vec<Sample>,
}

impl Eq for Joined {}

impl PartialOrd for Joined {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Joined {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due_ms, self.t).cmp(&(other.due_ms, other.t))
    }
}

/// The simulated joiner: holds each request's samples until its labels
/// are in.
struct Joiner {
    pending: BinaryHeap<Reverse<Joined>>,
    records: SyncSender<Payload>,
    freshness: Arc<Freshness>,
}

impl Joiner {
    /// Hands the learner every request due at or before `now_ms`, in due
    /// order; waits while the learner's channel is full.
    fn release(&mut self, now_ms: i64, stats: &Mutex<Stats>) -> Result<()> {
        let mut sent = 0;
        while self.pending.peek().is_some_and(|j| j.0.due_ms <= now_ms) {
            let Some(Reverse(joined)) = self.pending.pop() else {
                break;
            };
            self.freshness.sent(joined.event_time_ms, Instant::now());
            for sample in joined.samples {
                // The unsent sample is not wanted back: only that the learner stopped.
                tokio::task::block_in_place(|| {
                    self.records.send(Payload::Sample(sample)).map_err(|_| ())
                })
                .map_err(|()| anyhow::anyhow!("the learner stopped"))?;
                sent += 1;
            }
        }
        locked(stats).samples_sent += sent;
        Ok(())
    }
}

/// What one request's ranking gave: the shown candidates, and whether the
/// server failed (then the drawn order stands in).
type Ranked = (Vec<usize>, bool);

/// Ranks request `r` for `arm`: the top `shown` candidates by the server's
/// scores, or the first `shown` in drawn order for the random arm.
async fn rank(client: Client, arm: Arm, r: Request, shown: usize, seed: u64) -> Ranked {
    let drawn: Vec<usize> = (0..shown).collect();
    let pick: fn(&posterior_client::Scores) -> &[f64] = match arm.policy {
        Policy::Random => return (drawn, false),
        Policy::Thompson => |s| &s.sampled,
        Policy::Greedy => |s| &s.mean,
    };
    let docs: Vec<u64> = r.docs.iter().map(|&d| u64::from(d)).collect();
    let context = arm.logistic.then_some(r.contexts.as_slice());
    let draw_seed = seed ^ r.t.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let scores: Result<_, ClientError> = client
        .sample_scores(&arm.version, &docs, context, Some(draw_seed))
        .await;
    match scores {
        Ok(scores) => {
            let scores = pick(&scores);
            let mut order: Vec<usize> = (0..docs.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
            order.truncate(shown);
            (order, false)
        }
        Err(_) => (drawn, true),
    }
}

/// Runs the closed loop for `q.requests` requests (or until `stop`), then
/// hands the learner every sample still held and drops its channel, which
/// ends the learner's input.
pub async fn drive(
    q: &QuickstartConfig,
    arms: &[Arm],
    client: &Client,
    records: SyncSender<Payload>,
    stats: &Mutex<Stats>,
    freshness: Arc<Freshness>,
    stop: &AtomicBool,
) -> Result<()> {
    let world = World::new(q.world(), q.seed).context("the simulated world")?;
    let start_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .context("clock before 1970")?
        .as_millis() as i64;
    let mut joiner = Joiner {
        pending: BinaryHeap::new(),
        records,
        freshness,
    };
    let mut t = 0;
    while t < q.requests && !stop.load(Ordering::Relaxed) {
        let wave: Vec<Request> = (t..q.requests.min(t + q.concurrency as u64))
            .map(|t| world.request(t))
            .collect();
        let mut ranking = JoinSet::new();
        for (i, r) in wave.iter().enumerate() {
            let arm = arms[(r.t % arms.len() as u64) as usize].clone();
            let ranked = rank(client.clone(), arm, r.clone(), q.shown, q.seed);
            ranking.spawn(async move { (i, ranked.await) });
        }
        let mut ranked: Vec<Option<Ranked>> = vec![None; wave.len()];
        while let Some(done) = ranking.join_next().await {
            let (i, r) = done.context("a ranking task panicked")?;
            ranked[i] = Some(r);
        }
        let mut locked_stats = locked(stats);
        for (r, ranked) in wave.iter().zip(ranked) {
            let (shown, failed) = ranked.context("a ranking went missing")?;
            let index = (r.t % arms.len() as u64) as usize;
            locked_stats.record(index, r, &shown, q.shown, failed);
            let event_time_ms = start_ms + r.event_time_ms;
            let samples = shown
                .iter()
                .map(|&k| Sample {
                    doc_id: u64::from(r.docs[k]),
                    version: arms[index].version.as_str().into(),
                    event_time_ms,
                    context: if arms[index].logistic {
                        r.context(k).to_vec()
                    } else {
                        Vec::new()
                    },
                    labels: labels([(LABEL, if r.clicks[k] { 1.0 } else { 0.0 })]),
                    weight: 1.0,
                    sample_id: None,
                })
                .collect();
            joiner.pending.push(Reverse(Joined {
                due_ms: event_time_ms + r.delay_ms.min(q.max_label_delay_ms),
                t: r.t,
                event_time_ms,
                samples,
            }));
        }
        drop(locked_stats);
        t += wave.len() as u64;
        let now_ms = start_ms + (t as i64 - 1) * q.step_ms;
        joiner.release(now_ms, stats)?;
    }
    joiner.release(i64::MAX, stats)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use super::*;

    fn request(probs: &[f64], clicks: &[bool]) -> Request {
        Request {
            t: 0,
            event_time_ms: 0,
            docs: (0..probs.len() as u32).collect(),
            contexts: vec![1.0; probs.len()],
            probs: probs.to_vec(),
            clicks: clicks.to_vec(),
            delay_ms: 0,
        }
    }

    #[test]
    fn a_request_counts_its_clicks_against_the_oracle() {
        let mut stats = Stats::new(2, 2);
        let r = request(&[0.1, 0.4, 0.2, 0.3], &[true, false, true, true]);
        stats.record(1, &r, &[0, 2], 2, false);
        let got = stats.total[1];
        assert_eq!((got.requests, got.impressions, got.clicks), (1, 2, 2));
        assert!((got.expected - 0.3).abs() < 1e-12, "{got:?}");
        assert!((got.oracle - 0.7).abs() < 1e-12, "{got:?}");
        assert!((got.regret() - 0.4).abs() < 1e-12);
        assert_eq!(stats.total[0], Tally::default());
        assert!(stats.timeline.is_empty());
        stats.record(0, &r, &[1, 3], 2, true);
        assert_eq!(stats.timeline.len(), 1, "a window of 2 requests closed");
        let point = &stats.timeline[0];
        assert_eq!(point.requests, 2);
        assert!((point.arms[0].expected_ctr() - 0.35).abs() < 1e-12);
        assert_eq!(point.arms[0].failed, 1);
    }

    #[test]
    fn the_joiner_releases_in_due_order_and_only_what_is_due() {
        let (tx, rx) = std::sync::mpsc::sync_channel(16);
        let stats = Mutex::new(Stats::new(1, 10));
        let mut joiner = Joiner {
            pending: BinaryHeap::new(),
            records: tx,
            freshness: Arc::new(Freshness::default()),
        };
        let sample = |doc_id| Sample {
            doc_id,
            version: "v".into(),
            event_time_ms: 0,
            context: Vec::new(),
            labels: labels([(LABEL, 0.0)]),
            weight: 1.0,
            sample_id: None,
        };
        for (t, due_ms) in [(0, 30), (1, 10), (2, 20)] {
            joiner.pending.push(Reverse(Joined {
                due_ms,
                t,
                event_time_ms: t as i64,
                samples: vec![sample(t)],
            }));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async { joiner.release(20, &stats).unwrap() });
        let docs: Vec<u64> = rx
            .try_iter()
            .map(|p| match p {
                Payload::Sample(s) => s.doc_id,
                Payload::Invalid { .. } => unreachable!(),
            })
            .collect();
        assert_eq!(docs, [1, 2]);
        assert_eq!(locked(&stats).samples_sent, 2);
        assert_eq!(joiner.pending.len(), 1);
    }
}
