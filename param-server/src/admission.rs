//! Admission control: the server-wide bound on request work, and what is
//! shed when the bound is reached.
//!
//! `GetParams` and `SampleScores` do their work (table lookups, draws) in
//! one of `limits.work_slots` **work slots** (one per available core by
//! default), on the runtime's blocking pool — small requests, and those
//! whose measured cost predicts at most [`INLINE_MAX_WORK`], inline — so
//! the runtime's workers stay free to accept streams and decide at once:
//!
//! 1. A request whose deadline (its `grpc-timeout`, capped by
//!    `limits.request_timeout_ms`) is shorter than its own predicted work
//!    is refused with `DEADLINE_EXCEEDED`.
//! 2. A free slot runs it now.
//! 3. Otherwise it may wait in a bounded queue: not when
//!    `limits.max_queued_requests` requests or
//!    `limits.max_queued_request_bytes` bytes of requests already wait, and
//!    not when the work queued ahead, shared over the slots, would outlast
//!    what it may wait (`limits.max_queue_wait_ms`, and its deadline minus
//!    its own work). Those are shed at once with `RESOURCE_EXHAUSTED`.
//! 4. A waiting request that gets no slot within that time is shed with
//!    `RESOURCE_EXHAUSTED` too.
//!
//! Every refusal names the limit that caused it. Predictions use a moving
//! average of the measured work time per doc, per method. The waiting
//! queue is FIFO (tokio's fair semaphore). Without this, synchronous
//! handlers ran on the runtime's workers: the backlog waited unbounded and
//! unseen as unpolled tasks, and nothing was ever shed (BENCHMARKS.md,
//! "Overload").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::metadata::MetadataMap;

use crate::limits::Limits;

/// Requests of at most this many docs run inline on the runtime's worker
/// (once admitted): handing them to another thread would cost more than
/// their work (tens of µs).
pub const INLINE_DOCS: usize = 16;

/// Larger requests also run inline while their predicted work is at most
/// this long and the runtime is not saturated (see
/// `Admission::runs_inline`). The hand-off to the blocking pool and
/// back (two wake-ups across threads) cost the server ~60 µs of CPU per
/// call in BENCHMARKS.md "Larger requests inline while the runtime idles":
/// a third of a 100-doc `GetParams`, a few percent of a 1000-doc one.
pub const INLINE_MAX_WORK: Duration = Duration::from_micros(200);

/// ... and at most this many docs, whatever the prediction.
pub const INLINE_MAX_DOCS: usize = 1024;

/// Least time between two "shedding" warnings in the log.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Weight of a new sample in the moving average of work time per doc.
const COST_WEIGHT: f64 = 1.0 / 8.0;

/// What a request does, for its cost estimate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkKind {
    /// `GetParams`: lookups and wire conversion.
    GetParams,
    /// `SampleScores`: lookups and draws.
    SampleScores,
}

/// One request asking for a work slot.
#[derive(Debug, Clone, Copy)]
pub struct Ticket {
    /// What it does.
    pub kind: WorkKind,
    /// Docs it reads.
    pub docs: usize,
    /// Bytes it holds while it waits (its decoded request).
    pub bytes: usize,
    /// Time left before its deadline, from when it arrived.
    pub time_left: Duration,
}

impl Ticket {
    /// A ticket whose deadline is the request's `grpc-timeout`, capped by
    /// `limits.request_timeout_ms` (tonic ends the call at the shorter one).
    pub fn new(
        kind: WorkKind,
        docs: usize,
        bytes: usize,
        metadata: &MetadataMap,
        limits: &Limits,
    ) -> Self {
        let server = Duration::from_millis(limits.request_timeout_ms);
        let time_left = grpc_timeout(metadata).map_or(server, |client| client.min(server));
        Self {
            kind,
            docs,
            bytes,
            time_left,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Shed {
    /// Too many requests already wait for a slot.
    #[error(
        "overloaded: {waiting} requests already wait for a work slot (limits.max_queued_requests = {max})"
    )]
    QueueFull {
        /// Requests waiting.
        waiting: usize,
        /// The limit.
        max: usize,
    },
    /// The waiting requests already hold too many bytes.
    #[error(
        "overloaded: requests waiting for a work slot hold {bytes} bytes, this one {own} more (limits.max_queued_request_bytes = {max})"
    )]
    QueueBytes {
        /// Bytes held by the waiting requests.
        bytes: usize,
        /// Bytes of this request.
        own: usize,
        /// The limit.
        max: usize,
    },
    /// The work queued ahead would outlast what this request may wait.
    #[error(
        "overloaded: ~{ahead_ms} ms of queued work ahead for {slots} work slots (limits.work_slots), longer than this request may wait ({budget_ms} ms: limits.max_queue_wait_ms or its deadline)"
    )]
    Backlog {
        /// Predicted wait, ms.
        ahead_ms: u64,
        /// What it may wait, ms.
        budget_ms: u64,
        /// Work slots.
        slots: usize,
    },
    /// No slot freed while it waited.
    #[error(
        "overloaded: none of {slots} work slots (limits.work_slots) freed within {waited_ms} ms (limits.max_queue_wait_ms or the request's deadline)"
    )]
    Waited {
        /// How long it waited, ms.
        waited_ms: u64,
        /// Work slots.
        slots: usize,
    },
    /// The deadline is shorter than the request's own work.
    #[error("{left_ms} ms left before the request's deadline, its work alone takes ~{work_ms} ms")]
    Deadline {
        /// Time left, ms.
        left_ms: u64,
        /// Predicted work, ms.
        work_ms: u64,
    },
    /// The runtime is shutting down: the work was cancelled.
    #[error("the server is shutting down")]
    ShuttingDown,
}

/// Counts of what admission decided, since the server started.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AdmissionStats {
    /// Requests given a work slot.
    pub admitted: u64,
    /// Of those, requests that waited for it.
    pub admitted_after_wait: u64,
    /// Of those, requests whose work ran on the runtime's worker that
    /// received them, not on the blocking pool.
    pub admitted_inline: u64,
    /// Shed: [`Shed::QueueFull`] or [`Shed::QueueBytes`].
    pub shed_queue_full: u64,
    /// Shed: [`Shed::Backlog`].
    pub shed_backlog: u64,
    /// Shed: [`Shed::Waited`].
    pub shed_waited: u64,
    /// Refused: [`Shed::Deadline`].
    pub refused_deadline: u64,
}

impl AdmissionStats {
    /// Requests shed for overload (not those refused for their deadline).
    pub fn shed(&self) -> u64 {
        self.shed_queue_full + self.shed_backlog + self.shed_waited
    }
}

#[derive(Debug, Default)]
struct Counters {
    admitted: AtomicU64,
    admitted_after_wait: AtomicU64,
    admitted_inline: AtomicU64,
    shed_queue_full: AtomicU64,
    shed_backlog: AtomicU64,
    shed_waited: AtomicU64,
    refused_deadline: AtomicU64,
}

/// What waits for a slot right now.
#[derive(Debug, Default)]
struct Queue {
    requests: AtomicUsize,
    bytes: AtomicUsize,
    work_ns: AtomicU64,
}

/// A place in the queue, given back when dropped (admitted, shed or
/// cancelled alike).
struct Place<'a> {
    queue: &'a Queue,
    bytes: usize,
    work_ns: u64,
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.queue.requests.fetch_sub(1, Ordering::AcqRel);
        self.queue.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        self.queue.work_ns.fetch_sub(self.work_ns, Ordering::AcqRel);
    }
}

/// The server-wide admission control of `ParamService`'s work.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    slot_count: usize,
    max_queued_requests: usize,
    max_queued_request_bytes: usize,
    max_queue_wait: Duration,
    queue: Queue,
    /// Work time per doc, per [`WorkKind`]; shared with running work.
    costs: Arc<Costs>,
    counters: Counters,
    started: Instant,
    last_warning_ms: AtomicU64,
    /// The runtime's workers' park count at the last inline decision that
    /// looked at it.
    last_parks: AtomicU64,
}

impl Admission {
    /// Admission with `limits`' slots and queue bounds; `work_slots = 0`
    /// gives one slot per core available to the calling thread.
    pub fn new(limits: &Limits) -> Self {
        let slot_count = match limits.work_slots {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Self {
            slots: Arc::new(Semaphore::new(slot_count)),
            slot_count,
            max_queued_requests: limits.max_queued_requests,
            max_queued_request_bytes: limits.max_queued_request_bytes,
            max_queue_wait: Duration::from_millis(limits.max_queue_wait_ms),
            queue: Queue::default(),
            costs: Arc::new(Costs::default()),
            counters: Counters::default(),
            started: Instant::now(),
            last_warning_ms: AtomicU64::new(0),
            last_parks: AtomicU64::new(0),
        }
    }

    /// Work slots.
    pub fn slots(&self) -> usize {
        self.slot_count
    }

    /// What admission decided so far.
    pub fn stats(&self) -> AdmissionStats {
        let c = &self.counters;
        let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
        AdmissionStats {
            admitted: load(&c.admitted),
            admitted_after_wait: load(&c.admitted_after_wait),
            admitted_inline: load(&c.admitted_inline),
            shed_queue_full: load(&c.shed_queue_full),
            shed_backlog: load(&c.shed_backlog),
            shed_waited: load(&c.shed_waited),
            refused_deadline: load(&c.refused_deadline),
        }
    }

    /// Runs `work` in a work slot once `ticket` is admitted, or says why
    /// it was not. `work` runs to its end even if the caller stops
    /// waiting for it, and keeps its slot until then.
    pub async fn run<T: Send + 'static>(
        &self,
        ticket: Ticket,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, Shed> {
        let permit = self
            .admit(ticket)
            .await
            .inspect_err(|shed| self.count(shed))?;
        self.counters.admitted.fetch_add(1, Ordering::Relaxed);
        // Decided once admitted: a shed request uses up no park, and one
        // that waited for its slot sees the runtime as it is now.
        let inline = self.runs_inline(&ticket);
        let costs = Arc::clone(&self.costs);
        let timed = move || {
            let _slot: OwnedSemaphorePermit = permit;
            let started = Instant::now();
            let out = work();
            costs.record(ticket.kind, started.elapsed(), ticket.docs);
            out
        };
        if inline {
            self.counters
                .admitted_inline
                .fetch_add(1, Ordering::Relaxed);
            return Ok(timed());
        }
        match tokio::task::spawn_blocking(timed).await {
            Ok(out) => Ok(out),
            Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
            Err(_) => Err(Shed::ShuttingDown),
        }
    }

    /// Whether `ticket`'s work runs on the calling worker rather than the
    /// blocking pool: tiny requests always; larger ones when their kind's
    /// measured cost predicts little work *and* a worker of the runtime
    /// has parked (run out of tasks) since the last such decision. A
    /// saturated runtime never parks: its requests' work then goes to the
    /// pool, so the workers stay free to read the connections and shed
    /// what cannot be served. (Inline work on a saturated worker hid the
    /// backlog in unread HTTP/2 streams: at twice the capacity nothing was
    /// shed and the admitted p99 was 2 s instead of ~110 ms, BENCHMARKS.md.)
    fn runs_inline(&self, ticket: &Ticket) -> bool {
        if ticket.docs <= INLINE_DOCS {
            return true;
        }
        let cheap = ticket.docs <= INLINE_MAX_DOCS
            && self
                .costs
                .predict_measured(ticket.kind, ticket.docs)
                .is_some_and(|work| work <= INLINE_MAX_WORK);
        cheap && self.runtime_parked_since_last_look()
    }

    /// Whether the current runtime's workers have parked since the last
    /// call (false outside a runtime).
    fn runtime_parked_since_last_look(&self) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        let metrics = runtime.metrics();
        let parks = (0..metrics.num_workers())
            .map(|worker| metrics.worker_park_count(worker))
            .fold(0_u64, u64::wrapping_add);
        self.last_parks.swap(parks, Ordering::Relaxed) != parks
    }

    /// A slot for `ticket`, at once or after a bounded wait.
    async fn admit(&self, ticket: Ticket) -> Result<OwnedSemaphorePermit, Shed> {
        let work = self.costs.predict(ticket.kind, ticket.docs);
        if work >= ticket.time_left {
            return Err(Shed::Deadline {
                left_ms: millis(ticket.time_left),
                work_ms: millis(work),
            });
        }
        if let Ok(permit) = Arc::clone(&self.slots).try_acquire_owned() {
            return Ok(permit);
        }
        let budget = self.max_queue_wait.min(ticket.time_left - work);
        let place = self.enqueue(ticket, work, budget)?;
        let waiting = Instant::now();
        match tokio::time::timeout(budget, Arc::clone(&self.slots).acquire_owned()).await {
            Ok(Ok(permit)) => {
                drop(place);
                self.counters
                    .admitted_after_wait
                    .fetch_add(1, Ordering::Relaxed);
                Ok(permit)
            }
            // The semaphore is never closed.
            Ok(Err(_)) => Err(Shed::ShuttingDown),
            Err(_) => Err(Shed::Waited {
                waited_ms: millis(waiting.elapsed()),
                slots: self.slot_count,
            }),
        }
    }

    /// A place in the queue, unless the queue is full or the work ahead
    /// would outlast `budget`.
    fn enqueue(&self, ticket: Ticket, work: Duration, budget: Duration) -> Result<Place<'_>, Shed> {
        let q = &self.queue;
        let waiting = q.requests.fetch_add(1, Ordering::AcqRel);
        let bytes = q.bytes.fetch_add(ticket.bytes, Ordering::AcqRel);
        let work_ns = u64::try_from(work.as_nanos()).unwrap_or(u64::MAX);
        let ahead_ns = q.work_ns.fetch_add(work_ns, Ordering::AcqRel);
        // From here on, dropping the place undoes the three additions.
        let place = Place {
            queue: q,
            bytes: ticket.bytes,
            work_ns,
        };
        if waiting >= self.max_queued_requests {
            return Err(Shed::QueueFull {
                waiting,
                max: self.max_queued_requests,
            });
        }
        if bytes.saturating_add(ticket.bytes) > self.max_queued_request_bytes {
            return Err(Shed::QueueBytes {
                bytes,
                own: ticket.bytes,
                max: self.max_queued_request_bytes,
            });
        }
        let ahead = Duration::from_nanos(ahead_ns / self.slot_count as u64);
        if ahead > budget {
            return Err(Shed::Backlog {
                ahead_ms: millis(ahead),
                budget_ms: millis(budget),
                slots: self.slot_count,
            });
        }
        Ok(place)
    }

    /// Counts a refusal and warns, at most once per [`WARN_INTERVAL`].
    fn count(&self, shed: &Shed) {
        let c = &self.counters;
        let counter = match shed {
            Shed::QueueFull { .. } | Shed::QueueBytes { .. } => &c.shed_queue_full,
            Shed::Backlog { .. } => &c.shed_backlog,
            Shed::Waited { .. } => &c.shed_waited,
            Shed::Deadline { .. } => &c.refused_deadline,
            Shed::ShuttingDown => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let now_ms = millis(self.started.elapsed()).max(1);
        let last = self.last_warning_ms.load(Ordering::Relaxed);
        if (last == 0 || now_ms.saturating_sub(last) >= millis(WARN_INTERVAL))
            && self
                .last_warning_ms
                .compare_exchange(last, now_ms, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let stats = self.stats();
            tracing::warn!(
                latest = %shed,
                admitted = stats.admitted,
                shed_queue_full = stats.shed_queue_full,
                shed_backlog = stats.shed_backlog,
                shed_waited = stats.shed_waited,
                refused_deadline = stats.refused_deadline,
                "shedding requests (totals since start)"
            );
        }
    }
}

/// Moving averages of work time per doc, one per [`WorkKind`].
#[derive(Debug, Default)]
struct Costs([AtomicU64; 2]);

impl Costs {
    /// Predicted work of `docs` docs of `kind` (zero until measured).
    fn predict(&self, kind: WorkKind, docs: usize) -> Duration {
        let ns = f64::from_bits(self.0[kind as usize].load(Ordering::Relaxed));
        Duration::from_secs_f64(ns * docs.max(1) as f64 * 1e-9)
    }

    /// Predicted work, once `kind`'s cost has been measured.
    fn predict_measured(&self, kind: WorkKind, docs: usize) -> Option<Duration> {
        let measured = self.0[kind as usize].load(Ordering::Relaxed) != 0.0_f64.to_bits();
        measured.then(|| self.predict(kind, docs))
    }

    /// Folds one measured work time into the average. Concurrent updates
    /// may lose one another's sample: an estimate, not a count.
    fn record(&self, kind: WorkKind, took: Duration, docs: usize) {
        let cell = &self.0[kind as usize];
        let sample = took.as_nanos() as f64 / docs.max(1) as f64;
        let old = f64::from_bits(cell.load(Ordering::Relaxed));
        let new = if old == 0.0 {
            sample
        } else {
            old + (sample - old) * COST_WEIGHT
        };
        cell.store(new.to_bits(), Ordering::Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The request's `grpc-timeout`, when it has a valid one (tonic ignores an
/// invalid one too): at most 8 digits and a unit of `H M S m u n`.
pub fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let text = metadata.get("grpc-timeout")?.to_str().ok()?;
    if text.len() < 2 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(slots: usize, queued: usize, wait_ms: u64) -> Limits {
        Limits {
            work_slots: slots,
            max_queued_requests: queued,
            max_queue_wait_ms: wait_ms,
            ..Limits::default()
        }
    }

    fn ticket(docs: usize, time_left_ms: u64) -> Ticket {
        Ticket {
            kind: WorkKind::GetParams,
            docs,
            bytes: docs * 8,
            time_left: Duration::from_millis(time_left_ms),
        }
    }

    /// Holds the admission's only slot until the returned sender is used.
    async fn occupy(admission: &Arc<Admission>) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started, running) = tokio::sync::oneshot::channel();
        let a = Arc::clone(admission);
        tokio::spawn(async move {
            a.run(ticket(1000, 60_000), move || {
                let _ = started.send(());
                let _ = held.recv();
            })
            .await
        });
        running.await.unwrap();
        release
    }

    #[test]
    fn grpc_timeouts_parse_like_the_spec_says() {
        let parse = |text: &str| {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", text.parse().unwrap());
            grpc_timeout(&metadata)
        };
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(parse("123456789m"), None, "more than 8 digits");
        assert_eq!(parse("10x"), None);
        assert_eq!(parse("m"), None);
        assert_eq!(parse("-1m"), None);
        assert_eq!(grpc_timeout(&MetadataMap::new()), None);
    }

    #[test]
    fn the_deadline_is_the_shorter_of_client_and_server() {
        let mut metadata = MetadataMap::new();
        let limits = Limits::default();
        let t = Ticket::new(WorkKind::GetParams, 1, 8, &metadata, &limits);
        assert_eq!(
            t.time_left,
            Duration::from_millis(limits.request_timeout_ms)
        );
        metadata.insert("grpc-timeout", "20m".parse().unwrap());
        let t = Ticket::new(WorkKind::GetParams, 1, 8, &metadata, &limits);
        assert_eq!(t.time_left, Duration::from_millis(20));
        metadata.insert("grpc-timeout", "1H".parse().unwrap());
        let t = Ticket::new(WorkKind::GetParams, 1, 8, &metadata, &limits);
        assert_eq!(
            t.time_left,
            Duration::from_millis(limits.request_timeout_ms)
        );
    }

    #[tokio::test]
    async fn a_free_slot_runs_the_work_and_its_cost_is_learned() {
        let admission = Admission::new(&limits(2, 4, 50));
        assert_eq!(admission.slots(), 2);
        let out = admission
            .run(ticket(1000, 1000), || {
                std::thread::sleep(Duration::from_millis(2));
                7
            })
            .await;
        assert_eq!(out, Ok(7));
        let predicted = admission.costs.predict(WorkKind::GetParams, 1000);
        assert!(predicted >= Duration::from_millis(2), "{predicted:?}");
        assert_eq!(
            admission.costs.predict(WorkKind::SampleScores, 1000),
            Duration::ZERO
        );
        assert_eq!(admission.stats().admitted, 1);
    }

    #[tokio::test]
    async fn cheap_work_runs_on_the_calling_thread_and_dear_work_on_the_pool() {
        let admission = Admission::new(&limits(2, 4, 50));
        let here = std::thread::current().id();
        let thread_of = |kind, docs| {
            let t = Ticket {
                kind,
                ..ticket(docs, 60_000)
            };
            let a = &admission;
            async move { a.run(t, || std::thread::current().id()).await.unwrap() }
        };
        // Unmeasured: only tiny requests inline.
        assert_ne!(thread_of(WorkKind::GetParams, 100).await, here);
        assert_eq!(thread_of(WorkKind::GetParams, INLINE_DOCS).await, here);
        // Measured cheap (1 µs per doc): 100 docs inline, not past the cap.
        // (The 100-doc run above folded its own time in; this outweighs it.)
        let hundred_us = Duration::from_micros(100);
        for _ in 0..64 {
            admission.costs.record(WorkKind::GetParams, hundred_us, 100);
        }
        // The other kind: 10 µs per doc.
        admission
            .costs
            .record(WorkKind::SampleScores, hundred_us * 10, 100);
        // ... once the runtime has parked since the last look: not twice
        // in a row without parking (as when saturated).
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(thread_of(WorkKind::GetParams, 100).await, here);
        assert_ne!(thread_of(WorkKind::GetParams, 100).await, here);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(thread_of(WorkKind::GetParams, 100).await, here);
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_ne!(
            thread_of(WorkKind::GetParams, INLINE_MAX_DOCS + 1).await,
            here
        );
        // The other kind's 10 µs per doc predicts 1 ms: the pool.
        assert_ne!(thread_of(WorkKind::SampleScores, 100).await, here);
        assert_eq!(thread_of(WorkKind::SampleScores, 1).await, here);
        let stats = admission.stats();
        assert_eq!((stats.admitted, stats.admitted_inline), (8, 4));
    }

    #[tokio::test]
    async fn without_a_slot_the_queue_bound_sheds_at_once() {
        let admission = Arc::new(Admission::new(&limits(1, 0, 50)));
        let release = occupy(&admission).await;
        let shed = admission.run(ticket(1, 1000), || ()).await.unwrap_err();
        assert_eq!(shed, Shed::QueueFull { waiting: 0, max: 0 });
        assert!(shed.to_string().contains("limits.max_queued_requests"));
        release.send(()).unwrap();
        assert_eq!(admission.stats().shed_queue_full, 1);
    }

    #[tokio::test]
    async fn queued_bytes_are_bounded() {
        let admission = Arc::new(Admission::new(&Limits {
            max_queued_request_bytes: 100,
            ..limits(1, 8, 50)
        }));
        let release = occupy(&admission).await;
        let shed = admission.run(ticket(13, 1000), || ()).await.unwrap_err();
        assert!(
            matches!(
                shed,
                Shed::QueueBytes {
                    own: 104,
                    max: 100,
                    ..
                }
            ),
            "{shed:?}"
        );
        release.send(()).unwrap();
    }

    #[tokio::test]
    async fn a_waiter_is_shed_when_no_slot_frees_in_time_and_admitted_when_one_does() {
        let admission = Arc::new(Admission::new(&limits(1, 8, 30)));
        let release = occupy(&admission).await;
        let started = Instant::now();
        let shed = admission.run(ticket(1, 1000), || ()).await.unwrap_err();
        assert!(matches!(shed, Shed::Waited { slots: 1, .. }), "{shed:?}");
        assert!(started.elapsed() >= Duration::from_millis(30));
        // Its place was given back: the queue is empty again.
        assert_eq!(admission.queue.requests.load(Ordering::Relaxed), 0);
        assert_eq!(admission.queue.bytes.load(Ordering::Relaxed), 0);
        // A client deadline shorter than the wait shortens it.
        let shed = admission.run(ticket(1, 5), || ()).await.unwrap_err();
        assert!(matches!(shed, Shed::Waited { .. }), "{shed:?}");
        let a = Arc::clone(&admission);
        let waiter = tokio::spawn(async move { a.run(ticket(1, 60_000), || 3).await });
        tokio::time::sleep(Duration::from_millis(5)).await;
        release.send(()).unwrap();
        assert_eq!(waiter.await.unwrap(), Ok(3));
        let stats = admission.stats();
        assert_eq!((stats.shed_waited, stats.admitted_after_wait), (2, 1));
    }

    #[tokio::test]
    async fn work_that_cannot_finish_in_time_is_refused_at_once() {
        let admission = Arc::new(Admission::new(&limits(1, 8, 1000)));
        // Learn a cost of ~1 ms per doc.
        admission
            .costs
            .record(WorkKind::GetParams, Duration::from_millis(100), 100);
        let shed = admission.run(ticket(100, 50), || ()).await.unwrap_err();
        assert_eq!(
            shed,
            Shed::Deadline {
                left_ms: 50,
                work_ms: 100
            }
        );
        let code = crate::error::ServeError::from(shed).code();
        assert_eq!(code, tonic::Code::DeadlineExceeded);
        // Work queued ahead beyond what a request may wait: shed at once.
        let release = occupy(&admission).await;
        let a = Arc::clone(&admission);
        // 400 ms of work waits (within its 1000 ms budget) ...
        let ahead = tokio::spawn(async move { a.run(ticket(400, 60_000), || ()).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        // ... so one that may wait 300 ms (deadline 310 ms, 10 ms of work)
        // is shed without waiting.
        let started = Instant::now();
        let shed = admission.run(ticket(10, 310), || ()).await.unwrap_err();
        assert!(
            matches!(
                shed,
                Shed::Backlog {
                    ahead_ms: 400,
                    budget_ms: 300,
                    slots: 1
                }
            ),
            "{shed:?}"
        );
        assert!(started.elapsed() < Duration::from_millis(300));
        release.send(()).unwrap();
        assert_eq!(ahead.await.unwrap(), Ok(()));
        let stats = admission.stats();
        assert_eq!((stats.refused_deadline, stats.shed_backlog), (1, 1));
        assert_eq!(stats.shed(), 1);
    }
}
