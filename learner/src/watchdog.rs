//! The liveness watchdog of a Kafka run (`[source] stall_timeout_ms`).
//!
//! The rule ([`StallClock`]): the learner is *stalled* when its next
//! offsets made no progress while some assigned partition has lag — a
//! high watermark above the learner's next offset. When that has lasted
//! `stall_timeout_ms`, the process logs an error naming the partitions,
//! their lag and the time, and exits with [`STALL_EXIT_CODE`] without a
//! checkpoint: the last checkpoint stays the restore point, so a restart
//! (by the supervisor) re-reads from there and exactly-once holds.
//!
//! Idle (lag 0 everywhere) is not a stall, nor is slow progress (any
//! progress restarts the clock). The clock starts when consumption starts
//! (after restore and seeding), and the timeout must exceed
//! `idle_timeout_ms`: a throttled learner waits that long for a quiet
//! partition to turn idle. It must also exceed the longest checkpoint or
//! savepoint, during which nothing is consumed.
//!
//! The check runs on its own thread ([`Watchdog`]), reading atomics the
//! run loop updates per record, so it also catches a loop that is itself
//! stuck (a blocked sink, a hung write). It reads the high watermarks with
//! its own client only when no progress was seen since its last check.
//! "The broker has data" is the last high watermarks the watchdog could
//! read: when the broker becomes unreachable those are kept, so records
//! the learner saw on the broker and can no longer fetch count as lag,
//! while a learner that was caught up when the broker went away is idle.

use std::time::Duration;

/// Exit code of a learner stopped by the watchdog (distinct from 1, an
/// error, and from signals' 128 + n).
pub const STALL_EXIT_CODE: i32 = 3;

/// What one check concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Progress since the last check, or nothing to consume.
    Live,
    /// No progress with records waiting, for less than the timeout.
    Waiting {
        /// Since the first check that saw the stall.
        stalled_for: Duration,
    },
    /// No progress with records waiting for at least the timeout.
    Stalled {
        /// Since the first check that saw the stall.
        stalled_for: Duration,
    },
}

/// The stall rule as a pure function of successive checks: whether the
/// next offsets moved since the previous check, the total lag, and the
/// time of the check (any monotonic origin).
#[derive(Debug, Clone)]
pub struct StallClock {
    timeout: Duration,
    since: Option<Duration>,
}

impl StallClock {
    /// A clock that reports [`Verdict::Stalled`] after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            since: None,
        }
    }

    /// One check at time `now`.
    pub fn check(&mut self, now: Duration, progressed: bool, lag_records: u64) -> Verdict {
        if progressed || lag_records == 0 {
            self.since = None;
            return Verdict::Live;
        }
        let since = *self.since.get_or_insert(now);
        let stalled_for = now.saturating_sub(since);
        if stalled_for >= self.timeout {
            Verdict::Stalled { stalled_for }
        } else {
            Verdict::Waiting { stalled_for }
        }
    }
}

/// How often the watchdog checks for a `timeout`: often enough that the
/// verdict comes within a tenth of it, at most every 5 s, at least every
/// 100 ms.
pub fn check_interval(timeout: Duration) -> Duration {
    (timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(5))
}

#[cfg(feature = "io")]
pub use thread::{Progress, Watchdog};

#[cfg(feature = "io")]
mod thread {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::consumer::{BaseConsumer, Consumer};

    use super::{STALL_EXIT_CODE, StallClock, Verdict, check_interval};
    use crate::config::KafkaConfig;
    use crate::metrics::LearnerMetrics;

    /// The learner's next offset of each assigned partition, written by
    /// the run loop after every record and read by the watchdog.
    #[derive(Debug)]
    pub struct Progress {
        partitions: Vec<u32>,
        next: Vec<AtomicU64>,
    }

    impl Progress {
        /// `next_offsets` at the start, for the assigned `partitions`.
        pub fn new(partitions: &[u32], next_offsets: &BTreeMap<u32, u64>) -> Self {
            let mut partitions = partitions.to_vec();
            partitions.sort_unstable();
            let next = partitions
                .iter()
                .map(|p| AtomicU64::new(next_offsets.get(p).copied().unwrap_or(0)))
                .collect();
            Self { partitions, next }
        }

        /// The learner's next offset of `partition` is now `next`.
        pub fn set(&self, partition: u32, next: u64) {
            if let Ok(i) = self.partitions.binary_search(&partition) {
                self.next[i].store(next, Ordering::Relaxed);
            }
        }

        fn snapshot(&self) -> Vec<u64> {
            self.next
                .iter()
                .map(|n| n.load(Ordering::Relaxed))
                .collect()
        }
    }

    /// The watchdog thread; dropping this stops it (it never fires after).
    #[derive(Debug)]
    pub struct Watchdog {
        stop: Option<mpsc::Sender<()>>,
    }

    impl Watchdog {
        /// Starts watching `progress` against the high watermarks of
        /// `config.topic`; `None` when `stall_timeout_ms` is 0. The first
        /// high watermarks are read before this returns.
        pub fn start(
            config: &KafkaConfig,
            progress: Arc<Progress>,
            metrics: Option<Arc<LearnerMetrics>>,
        ) -> anyhow::Result<Option<Self>> {
            if config.stall_timeout_ms == 0 {
                return Ok(None);
            }
            let mut client = ClientConfig::new();
            for (key, value) in &config.properties {
                client.set(key, value);
            }
            let client: BaseConsumer = client
                .set("bootstrap.servers", &config.brokers)
                .create()
                .map_err(|e| anyhow::anyhow!("watchdog: create the metadata client: {e}"))?;
            let timeout = Duration::from_millis(config.stall_timeout_ms);
            let interval = check_interval(timeout);
            let mut watch = Watch {
                client,
                topic: config.topic.clone(),
                // A query per partition, each bounded, so that a dead broker
                // delays a check by at most about one interval.
                request_timeout: Duration::from_millis(config.request_timeout_ms).min(interval),
                progress,
                high: BTreeMap::new(),
            };
            watch.refresh_high();
            let lag: u64 = watch.lagging(&watch.progress.snapshot()).values().sum();
            tracing::info!(
                partitions = ?watch.progress.partitions,
                lag_records = lag,
                stall_timeout_ms = config.stall_timeout_ms,
                "liveness watchdog started"
            );
            let (stop, stopped) = mpsc::channel();
            std::thread::Builder::new()
                .name("watchdog".into())
                .spawn(move || watch.run(timeout, interval, &stopped, metrics.as_deref()))
                .map_err(|e| anyhow::anyhow!("watchdog: spawn: {e}"))?;
            Ok(Some(Self { stop: Some(stop) }))
        }
    }

    impl Drop for Watchdog {
        fn drop(&mut self) {
            // The thread sees the channel closed at its next wait or before
            // exiting; it is not joined (a watermark query to a dead broker
            // must not delay a shutdown).
            drop(self.stop.take());
        }
    }

    struct Watch {
        client: BaseConsumer,
        topic: String,
        request_timeout: Duration,
        progress: Arc<Progress>,
        /// The last high watermarks read (kept when a query fails).
        high: BTreeMap<u32, u64>,
    }

    impl Watch {
        /// Reads the high watermarks; on the first failure keeps the
        /// last known ones (an unreachable broker answers none).
        fn refresh_high(&mut self) {
            for &p in &self.progress.partitions {
                match self
                    .client
                    .fetch_watermarks(&self.topic, p as i32, self.request_timeout)
                {
                    Ok((_, high)) => {
                        self.high.insert(p, high.max(0) as u64);
                    }
                    Err(err) => {
                        tracing::debug!(partition = p, %err, "watchdog: high watermark");
                        return;
                    }
                }
            }
        }

        /// The partitions whose last known high watermark is above `next`.
        fn lagging(&self, next: &[u64]) -> BTreeMap<u32, u64> {
            self.progress
                .partitions
                .iter()
                .zip(next)
                .filter_map(|(p, &at)| {
                    let lag = self.high.get(p)?.saturating_sub(at);
                    (lag > 0).then_some((*p, lag))
                })
                .collect()
        }

        fn run(
            mut self,
            timeout: Duration,
            interval: Duration,
            stopped: &mpsc::Receiver<()>,
            metrics: Option<&LearnerMetrics>,
        ) {
            let start = Instant::now();
            let mut clock = StallClock::new(timeout);
            let mut last = self.progress.snapshot();
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                let next = self.progress.snapshot();
                let progressed = next != last;
                last.clone_from(&next);
                if !progressed {
                    self.refresh_high();
                }
                let lagging = self.lagging(&next);
                let verdict = clock.check(start.elapsed(), progressed, lagging.values().sum());
                let stalled_for = match verdict {
                    Verdict::Live => Duration::ZERO,
                    Verdict::Waiting { stalled_for } | Verdict::Stalled { stalled_for } => {
                        stalled_for
                    }
                };
                if let Some(metrics) = metrics {
                    metrics.set_stall(stalled_for);
                }
                if let Verdict::Stalled { stalled_for } = verdict {
                    if !matches!(stopped.try_recv(), Err(mpsc::TryRecvError::Empty)) {
                        return;
                    }
                    tracing::error!(
                        lag_records = ?lagging,
                        stalled_ms = stalled_for.as_millis() as u64,
                        stall_timeout_ms = timeout.as_millis() as u64,
                        exit_code = STALL_EXIT_CODE,
                        "consumption stalled: no progress for {} ms while partitions {:?} have \
                         records to consume (lag by partition {lagging:?}); exiting without \
                         a checkpoint",
                        stalled_for.as_millis(),
                        lagging.keys().collect::<Vec<_>>(),
                    );
                    std::process::exit(STALL_EXIT_CODE);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(60);

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn no_progress_with_lag_for_the_timeout_is_a_stall() {
        let mut clock = StallClock::new(TIMEOUT);
        assert_eq!(clock.check(s(0), true, 100), Verdict::Live);
        assert_eq!(
            clock.check(s(10), false, 100),
            Verdict::Waiting { stalled_for: s(0) }
        );
        assert_eq!(
            clock.check(s(69), false, 100),
            Verdict::Waiting { stalled_for: s(59) }
        );
        assert_eq!(
            clock.check(s(70), false, 100),
            Verdict::Stalled { stalled_for: s(60) }
        );
    }

    #[test]
    fn an_idle_learner_is_never_stalled() {
        let mut clock = StallClock::new(TIMEOUT);
        for t in 0..1_000 {
            assert_eq!(clock.check(s(t), false, 0), Verdict::Live);
        }
    }

    #[test]
    fn slow_progress_restarts_the_clock() {
        let mut clock = StallClock::new(TIMEOUT);
        // One record every 50 s, with a large lag: never 60 s without
        // progress.
        for t in (0..1_000).step_by(10) {
            let verdict = clock.check(s(t), t % 50 == 0, 1_000_000);
            assert!(!matches!(verdict, Verdict::Stalled { .. }), "at {t} s");
        }
    }

    #[test]
    fn lag_that_clears_restarts_the_clock() {
        let mut clock = StallClock::new(TIMEOUT);
        clock.check(s(0), false, 5);
        assert!(matches!(
            clock.check(s(50), false, 5),
            Verdict::Waiting { .. }
        ));
        // No lag any more (the high watermark was read lower, e.g. the
        // topic was recreated): the clock restarts from the next stall.
        assert_eq!(clock.check(s(55), false, 0), Verdict::Live);
        assert_eq!(
            clock.check(s(100), false, 5),
            Verdict::Waiting { stalled_for: s(0) }
        );
        assert_eq!(
            clock.check(s(160), false, 5),
            Verdict::Stalled { stalled_for: s(60) }
        );
    }

    #[test]
    fn the_check_interval_is_a_tenth_of_the_timeout_within_bounds() {
        assert_eq!(check_interval(s(60)), s(5));
        assert_eq!(check_interval(s(3)), Duration::from_millis(300));
        assert_eq!(
            check_interval(Duration::from_millis(200)),
            Duration::from_millis(100)
        );
    }
}
