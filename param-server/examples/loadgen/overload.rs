//! Overload: an open-loop client offering `GetParams` at a fixed rate
//! above the measured capacity, over a few connections. Counts what the
//! server admits and what it sheds (`RESOURCE_EXHAUSTED`, from admission
//! or the per-connection concurrency limit), the latency of admitted requests,
//! and the process's resident memory before, at its peak and after. The
//! client keeps each response's bytes without decoding its params, so
//! that its one core can offer more than the server's can serve.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use hdrhistogram::Histogram;
use posterior_proto::v1;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::sync::Semaphore;
use tokio::time::{Instant, MissedTickBehavior};

use crate::contender::LightClient;
use crate::data::VERSION;
use crate::drive::{SERVER_THREAD, histogram};
use crate::procfs;

/// What to offer.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Requests per second offered.
    pub rate: f64,
    /// Docs per request.
    pub batch: usize,
    /// For how long.
    pub duration: Duration,
    /// Connections the requests are spread over.
    pub connections: usize,
    /// Requests the client keeps in flight at most (beyond: not sent).
    pub max_in_flight: usize,
    /// Keys served.
    pub keys: u64,
}

/// What happened.
#[derive(Debug)]
pub struct Overload {
    /// Requests per second actually offered (sent or not).
    pub offered_per_s: f64,
    /// Requests sent.
    pub sent: u64,
    /// Requests not sent: the client's own in-flight bound was reached.
    pub not_sent: u64,
    /// Answered with parameters.
    pub ok: u64,
    /// Refused with each other status code.
    pub refused: BTreeMap<String, u64>,
    /// The first message of each refusal code.
    pub first_message: BTreeMap<String, String>,
    /// Latency of the answered ones, µs.
    pub ok_us: Histogram<u64>,
    /// Latency of the refused ones, µs.
    pub refused_us: Histogram<u64>,
    /// Resident memory just before, its peak during, and after (bytes).
    pub rss: (u64, u64, u64),
    /// CPU cores the server used.
    pub server_cores: f64,
    /// Docs answered per second.
    pub docs_per_s: f64,
}

struct Outcomes {
    ok: u64,
    refused: BTreeMap<String, u64>,
    first_message: BTreeMap<String, String>,
    ok_us: Histogram<u64>,
    refused_us: Histogram<u64>,
}

/// Offers `plan` to the server at `addr`.
pub async fn run(addr: &str, plan: Plan) -> Result<Overload> {
    let mut clients = Vec::with_capacity(plan.connections);
    for _ in 0..plan.connections {
        clients.push(LightClient::connect(addr).await?);
    }
    let outcomes = Arc::new(Mutex::new(Outcomes {
        ok: 0,
        refused: BTreeMap::new(),
        first_message: BTreeMap::new(),
        ok_us: histogram(),
        refused_us: histogram(),
    }));
    let in_flight = Arc::new(Semaphore::new(plan.max_in_flight));
    let rss_before = procfs::rss_bytes()?;
    let (peak, sampling) = sample_rss();
    let cpu_before = procfs::own_cpu(SERVER_THREAD)?.0;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(17);
    let (mut sent, mut not_sent) = (0u64, 0u64);
    let started = Instant::now();
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    while started.elapsed() < plan.duration {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * plan.rate) as u64;
        while sent + not_sent < due {
            let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
                not_sent += 1;
                continue;
            };
            let mut client = clients[sent as usize % clients.len()].clone();
            let doc_ids = (0..plan.batch)
                .map(|_| rng.random_range(0..plan.keys))
                .collect();
            let outcomes = Arc::clone(&outcomes);
            sent += 1;
            tokio::spawn(async move {
                let begun = Instant::now();
                let request = v1::GetParamsRequest {
                    version: VERSION.into(),
                    doc_ids,
                };
                let result = client.get_params(request).await;
                let micros = begun.elapsed().as_micros() as u64;
                let mut outcomes = outcomes.lock().expect("not poisoned");
                match result {
                    Ok(_) => {
                        outcomes.ok += 1;
                        outcomes.ok_us.saturating_record(micros);
                    }
                    Err(status) => {
                        let code = format!("{:?}", status.code());
                        outcomes
                            .first_message
                            .entry(code.clone())
                            .or_insert_with(|| match std::error::Error::source(&status) {
                                Some(source) => format!("{} ({source:?})", status.message()),
                                None => status.message().to_owned(),
                            });
                        *outcomes.refused.entry(code).or_default() += 1;
                        outcomes.refused_us.saturating_record(micros);
                    }
                }
                drop(permit);
            });
        }
    }
    let offered_for = started.elapsed();
    // Wait for the requests in flight (bounded by the server's timeout).
    let _all = in_flight.acquire_many(plan.max_in_flight as u32).await?;
    let wall = started.elapsed();
    let server_cores =
        (procfs::own_cpu(SERVER_THREAD)?.0 - cpu_before).as_secs_f64() / wall.as_secs_f64();
    tokio::time::sleep(Duration::from_secs(1)).await;
    sampling.store(false, Ordering::Relaxed);
    let rss_after = procfs::rss_bytes()?;
    let outcomes = outcomes.lock().expect("not poisoned");
    Ok(Overload {
        offered_per_s: (sent + not_sent) as f64 / offered_for.as_secs_f64(),
        sent,
        not_sent,
        ok: outcomes.ok,
        refused: outcomes.refused.clone(),
        first_message: outcomes.first_message.clone(),
        ok_us: outcomes.ok_us.clone(),
        refused_us: outcomes.refused_us.clone(),
        rss: (rss_before, peak.load(Ordering::Relaxed), rss_after),
        server_cores,
        docs_per_s: (outcomes.ok * plan.batch as u64) as f64 / wall.as_secs_f64(),
    })
}

/// Samples the resident set every 50 ms into a running maximum until the
/// returned flag is cleared.
fn sample_rss() -> (Arc<AtomicU64>, Arc<AtomicBool>) {
    let peak = Arc::new(AtomicU64::new(0));
    let running = Arc::new(AtomicBool::new(true));
    let (p, r) = (Arc::clone(&peak), Arc::clone(&running));
    tokio::spawn(async move {
        while r.load(Ordering::Relaxed) {
            if let Ok(rss) = procfs::rss_bytes() {
                p.fetch_max(rss, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    (peak, running)
}
