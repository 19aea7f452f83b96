//! Closed-loop measurement windows: `clients` tasks, each sending one
//! request after another on its own connection (uniformly random keys per
//! request) for a fixed time after a short warm-up; latencies go into an
//! HDR histogram (µs), and the CPU time of the contender's server and of
//! the load generator is read around the measured part.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::contender::{Client, Op, Side};
use crate::procfs;

/// Name prefix of the param-server's runtime threads (for CPU accounting).
pub const SERVER_THREAD: &str = "ps-server";

/// Latency histogram in µs, 1 µs to 100 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// What the load generator measures against.
#[derive(Debug, Clone)]
pub struct Target {
    /// Keys served (docs are drawn uniformly from `0..keys`).
    pub keys: u64,
    /// The shared context of `SampleScores`.
    pub context: Arc<[f32]>,
    /// Redis's process, for its CPU time.
    pub redis_pid: Option<u32>,
}

/// CPU time used so far: (contender's server, load generator).
fn cpu(side: Side, target: &Target) -> Result<(Duration, Duration)> {
    let (server_threads, process) = procfs::own_cpu(SERVER_THREAD)?;
    let loadgen = process.saturating_sub(server_threads);
    let server = match (side, target.redis_pid) {
        (Side::ParamServer, _) => server_threads,
        (Side::Redis, Some(pid)) => procfs::process_cpu(pid)?,
        (Side::Redis, None) => Duration::ZERO,
    };
    Ok((server, loadgen))
}

/// One measured window, or several of the same row added up.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Latency of successful requests, µs.
    pub latency_us: Histogram<u64>,
    /// Successful requests.
    pub requests: u64,
    /// Docs answered.
    pub docs: u64,
    /// Failed requests.
    pub errors: u64,
    /// The first error seen.
    pub first_error: Option<String>,
    /// Measured time.
    pub wall: Duration,
    /// CPU time of the contender's server.
    pub server_cpu: Duration,
    /// CPU time of the load generator.
    pub loadgen_cpu: Duration,
    /// Highest 1-minute load average seen at the end of a window.
    pub load_avg: f64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            latency_us: histogram(),
            requests: 0,
            docs: 0,
            errors: 0,
            first_error: None,
            wall: Duration::ZERO,
            server_cpu: Duration::ZERO,
            loadgen_cpu: Duration::ZERO,
            load_avg: 0.0,
        }
    }
}

impl Tally {
    /// Adds another tally of the same row.
    pub fn add(&mut self, other: &Tally) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of equal bounds");
        self.requests += other.requests;
        self.docs += other.docs;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.wall += other.wall;
        self.server_cpu += other.server_cpu;
        self.loadgen_cpu += other.loadgen_cpu;
        self.load_avg = self.load_avg.max(other.load_avg);
    }

    /// Docs answered per second.
    pub fn docs_per_s(&self) -> f64 {
        self.docs as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Requests answered per second.
    pub fn requests_per_s(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Latency quantile in ms.
    pub fn quantile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    /// CPU cores used by the contender's server over the measured time.
    pub fn server_cores(&self) -> f64 {
        self.server_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Docs answered per second of the contender's server CPU time.
    pub fn docs_per_server_cpu_s(&self) -> f64 {
        self.docs as f64 / self.server_cpu.as_secs_f64().max(1e-9)
    }

    /// Server CPU time per request, µs.
    pub fn server_cpu_us_per_request(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / (self.requests as f64).max(1.0)
    }

    /// CPU cores used by the load generator over the measured time.
    pub fn loadgen_cores(&self) -> f64 {
        self.loadgen_cpu.as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }

    /// Load generator CPU time per request, µs: what the client side
    /// (request, transport, response decoding) costs per call.
    pub fn loadgen_cpu_us_per_request(&self) -> f64 {
        self.loadgen_cpu.as_secs_f64() * 1e6 / (self.requests as f64).max(1.0)
    }
}

/// The shape of one window.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Which server.
    pub side: Side,
    /// Which request.
    pub op: Op,
    /// Docs per request.
    pub batch: usize,
    /// Concurrent clients.
    pub clients: usize,
}

/// Runs `shape.clients` clients (the first of `pool`) for `warmup`, then
/// measures them for `measure`.
pub async fn window(
    target: &Target,
    pool: &[Client],
    shape: Shape,
    warmup: Duration,
    measure: Duration,
    seed: u64,
) -> Result<Tally> {
    let from = Instant::now() + warmup;
    let until = from + measure;
    let mut tasks = JoinSet::new();
    for (i, client) in pool[..shape.clients].iter().cloned().enumerate() {
        let context = Arc::clone(&target.context);
        let seed = seed.wrapping_mul(1_000_003).wrapping_add(i as u64);
        tasks.spawn(client_loop(
            client,
            shape,
            target.keys,
            context,
            seed,
            from,
            until,
        ));
    }
    tokio::time::sleep_until(from).await;
    let (server0, loadgen0) = cpu(shape.side, target)?;
    tokio::time::sleep_until(until).await;
    let (server1, loadgen1) = cpu(shape.side, target)?;
    let mut tally = Tally {
        wall: measure,
        server_cpu: server1.saturating_sub(server0),
        loadgen_cpu: loadgen1.saturating_sub(loadgen0),
        load_avg: procfs::load_average()?,
        ..Tally::default()
    };
    while let Some(client) = tasks.join_next().await {
        let client = client?;
        tally.latency_us.add(&client.latency_us)?;
        tally.requests += client.requests;
        tally.docs += client.docs;
        tally.errors += client.errors;
        if tally.first_error.is_none() {
            tally.first_error = client.first_error;
        }
    }
    Ok(tally)
}

/// One client: requests back to back until `until`; those started from
/// `from` on are counted.
async fn client_loop(
    mut client: Client,
    shape: Shape,
    keys: u64,
    context: Arc<[f32]>,
    seed: u64,
    from: Instant,
    until: Instant,
) -> Tally {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut tally = Tally::default();
    loop {
        let doc_ids: Vec<u64> = (0..shape.batch)
            .map(|_| rng.random_range(0..keys))
            .collect();
        let started = Instant::now();
        if started >= until {
            return tally;
        }
        let result = client.call(shape.op, doc_ids, &context).await;
        if started < from {
            continue;
        }
        match result {
            Ok(docs) => {
                let micros = started.elapsed().as_micros();
                tally
                    .latency_us
                    .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
                tally.requests += 1;
                tally.docs += docs as u64;
            }
            Err(error) => {
                tally.errors += 1;
                tally
                    .first_error
                    .get_or_insert_with(|| format!("{error:#}"));
            }
        }
    }
}
