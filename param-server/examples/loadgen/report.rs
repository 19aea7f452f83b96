//! The Markdown report: setting, closed-loop table with ratios, the
//! issue's goals, freshness and overload.

use crate::Results;
use crate::contender::{Op, Side};
use crate::drive::Tally;

/// How the run was set up.
#[derive(Debug)]
pub struct Setting {
    /// Keys served.
    pub keys: u64,
    /// Dimension.
    pub dim: usize,
    /// Cores the process may use.
    pub cores: usize,
    /// Server runtime workers.
    pub server_threads: usize,
    /// Load generator runtime workers.
    pub client_threads: usize,
    /// Pinning, in words.
    pub pinning: String,
    /// 1-minute load average at start and end.
    pub load: (f64, f64),
    /// The param-server's resident growth from filling its store.
    pub ps_rss_delta_bytes: u64,
    /// Measured seconds per window.
    pub seconds: f64,
    /// Rounds.
    pub rounds: usize,
}

const MIB: f64 = (1 << 20) as f64;

/// Prints the whole report on stdout.
pub fn print(setting: &Setting, results: &Results) {
    print_setting(setting, results);
    print_table(results);
    print_goals(results, setting.client_threads);
    print_freshness(results);
    print_overload(results);
}

fn print_setting(s: &Setting, results: &Results) {
    println!("### Param-server vs Redis (load generator)\n");
    println!(
        "- {} keys, diagonal d = {}; Redis holds each doc's `Params` bytes, \
         byte for byte what `GetParams` returns (checked on 1000 docs)",
        s.keys, s.dim
    );
    let redis = results.redis_used_bytes.map_or("not run".to_owned(), |b| {
        format!("{:.0} MiB", b as f64 / MIB)
    });
    println!(
        "- memory for the keys: param-server RSS +{:.0} MiB, Redis used_memory {redis}",
        s.ps_rss_delta_bytes as f64 / MIB
    );
    println!(
        "- **{} cores shared** by server and load generator (and by whatever else runs): \
         server runtime {} worker(s), load generator {} worker(s), Redis one thread; {}",
        s.cores, s.server_threads, s.client_threads, s.pinning
    );
    println!(
        "- load average (1 min) {:.2} at start, {:.2} at end",
        s.load.0, s.load.1
    );
    println!(
        "- closed loop: each client sends one request after another on its own connection, \
         keys uniformly random per request; {} round(s) of {:.1} s per row, contenders \
         alternating (order swapped every round)\n",
        s.rounds, s.seconds
    );
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 {
        format!("{:.2}×", a / b)
    } else {
        "—".to_owned()
    }
}

fn print_table(results: &Results) {
    println!(
        "| request | docs | clients | contender | docs/s | req/s | p50 ms | p99 ms | p99.9 ms \
         | docs/s vs Redis | p99 vs Redis | server cores | server CPU µs/req | docs per server CPU-s \
         | … vs Redis | loadgen cores | loadgen CPU µs/req | errors | load |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for ((op, batch, clients, side), t) in &results.rows {
        let redis = results.rows.get(&(*op, *batch, *clients, Side::Redis));
        let (vs_docs, vs_p99, vs_cpu) = match (side, redis) {
            (Side::ParamServer, Some(r)) => (
                ratio(t.docs_per_s(), r.docs_per_s()),
                ratio(t.quantile_ms(0.99), r.quantile_ms(0.99)),
                ratio(t.docs_per_server_cpu_s(), r.docs_per_server_cpu_s()),
            ),
            _ => ("—".to_owned(), "—".to_owned(), "—".to_owned()),
        };
        println!(
            "| {} | {batch} | {clients} | {} | {:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {vs_docs} \
             | {vs_p99} | {:.2} | {:.0} | {:.0} | {vs_cpu} | {:.2} | {:.1} | {} | {:.1} |",
            op.name(),
            side.name(),
            t.docs_per_s(),
            t.requests_per_s(),
            t.quantile_ms(0.5),
            t.quantile_ms(0.99),
            t.quantile_ms(0.999),
            t.server_cores(),
            t.server_cpu_us_per_request(),
            t.docs_per_server_cpu_s(),
            t.loadgen_cores(),
            t.loadgen_cpu_us_per_request(),
            errors(t),
            t.load_avg
        );
    }
    println!();
}

fn errors(t: &Tally) -> String {
    match &t.first_error {
        Some(e) => format!("{} ({e})", t.errors),
        None => t.errors.to_string(),
    }
}

fn met(ok: bool) -> &'static str {
    if ok { "met" } else { "**missed**" }
}

fn print_goals(results: &Results, client_threads: usize) {
    println!("Against the issue's goals:\n");
    for ((op, batch, clients, side), t) in &results.rows {
        if *side != Side::ParamServer {
            continue;
        }
        if *op == Op::Get
            && let Some(r) = results.rows.get(&(*op, *batch, *clients, Side::Redis))
        {
            let x = t.docs_per_s() / r.docs_per_s().max(1e-9);
            let per_cpu = t.docs_per_server_cpu_s() / r.docs_per_server_cpu_s().max(1e-9);
            println!(
                "- GetParams {batch} docs, {clients} client(s): {x:.2}× Redis's docs/s (goal ≥ 1.0×: {}); \
                 {per_cpu:.2}× its docs per server CPU-second",
                met(x >= 1.0)
            );
            if let Some(line) = client_ceiling(t, r, client_threads) {
                println!("{line}");
            }
            if *clients == 1 {
                println!("{}", one_client_budget(t, r));
            }
        }
        if *batch == 1000 {
            let p99 = t.quantile_ms(0.99);
            println!(
                "- {} 1000 docs, {clients} client(s): p99 {p99:.2} ms (goal < 5 ms: {})",
                op.name(),
                met(p99 < 5.0)
            );
        }
    }
    println!();
}

/// Share of a worker thread's core above which it counts as full.
const FULL_CORE: f64 = 0.95;

/// When the load generator's workers were full in the param-server's
/// window, the rate its client side alone allows, as a multiple of Redis's
/// measured rate: its workers' cores over the client's CPU per call. No
/// server, however fast, gets past it with the same client and cores.
fn client_ceiling(t: &Tally, redis: &Tally, client_threads: usize) -> Option<String> {
    let workers = client_threads.max(1) as f64;
    if t.loadgen_cores() < FULL_CORE * workers {
        return None;
    }
    let per_call_us = t.loadgen_cpu_us_per_request();
    let ceiling = workers * 1e6 / per_call_us.max(1e-9);
    Some(format!(
        "  - the load generator was full ({:.2} cores): {per_call_us:.1} µs of its CPU \
         per gRPC call ({:.1} per `MGET`), so its client side alone allows at most {ceiling:.0} \
         requests/s, {:.2}× Redis's measured rate, whatever the server costs",
        t.loadgen_cores(),
        redis.loadgen_cpu_us_per_request(),
        ceiling / redis.requests_per_s().max(1e-9),
    ))
}

/// With one closed-loop client, the client's work, the server's and the
/// wake-ups follow each other in every round trip: how much of Redis's
/// round trip the gRPC client's CPU alone takes.
fn one_client_budget(t: &Tally, redis: &Tally) -> String {
    let client_us = t.loadgen_cpu_us_per_request();
    let redis_round_trip_us = 1e6 / redis.requests_per_s().max(1e-9);
    format!(
        "  - one client: {client_us:.1} µs of the load generator's CPU in each gRPC round trip; \
         Redis's whole round trip took {redis_round_trip_us:.1} µs (its server {:.1} µs of CPU), \
         which leaves {:.1} µs for the server and both ends' wake-ups to match it",
        redis.server_cpu_us_per_request(),
        redis_round_trip_us - client_us,
    )
}

fn ms(h: &hdrhistogram::Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn print_freshness(results: &Results) {
    if results.freshness.is_empty() {
        return;
    }
    println!("Freshness (update handed to the feed's channel → seen by the client), ms:\n");
    println!("| load | updates | watcher p50 | p99 | max | GetParams visible p50 | p99 | max |");
    println!("|---|---|---|---|---|---|---|---|");
    for (label, f) in &results.freshness {
        println!(
            "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            f.sent,
            ms(&f.watch_us, 0.5),
            ms(&f.watch_us, 0.99),
            f.watch_us.max() as f64 / 1000.0,
            ms(&f.visible_us, 0.5),
            ms(&f.visible_us, 0.99),
            f.visible_us.max() as f64 / 1000.0,
        );
    }
    println!();
}

fn print_overload(results: &Results) {
    let Some((plan, o)) = &results.overload else {
        return;
    };
    let limits = &results.limits;
    println!(
        "Overload: GetParams of {} docs offered open-loop at {:.0} requests/s ({:.1} s, {} \
         connections; limits: {} requests in flight and {} streams per connection, work slots \
         {}, at most {} ms waiting for one):\n",
        plan.batch,
        o.offered_per_s,
        plan.duration.as_secs_f64(),
        plan.connections,
        limits.max_concurrent_requests_per_connection,
        limits.max_streams_per_connection,
        match limits.work_slots {
            0 => "one per core".to_owned(),
            n => n.to_string(),
        },
        limits.max_queue_wait_ms,
    );
    let sent = o.sent.max(1) as f64;
    let refused: Vec<String> = o
        .refused
        .iter()
        .map(|(code, n)| format!("{code} {n} ({:.0} %)", 100.0 * *n as f64 / sent))
        .collect();
    println!("| | |\n|---|---|");
    println!(
        "| sent | {} (not sent, client bound: {}) |",
        o.sent, o.not_sent
    );
    println!(
        "| answered | {} ({:.0} %), {:.0} docs/s |",
        o.ok,
        100.0 * o.ok as f64 / sent,
        o.docs_per_s
    );
    println!("| refused | {} |", refused.join(", "));
    for (code, message) in &o.first_message {
        println!("| first {code} | {} |", message.replace('|', "/"));
    }
    println!(
        "| admitted latency p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        ms(&o.ok_us, 0.5),
        ms(&o.ok_us, 0.99),
        o.ok_us.max() as f64 / 1000.0
    );
    println!(
        "| refusal latency p50 / p99 | {:.2} / {:.2} ms |",
        ms(&o.refused_us, 0.5),
        ms(&o.refused_us, 0.99)
    );
    println!("| server cores | {:.2} |", o.server_cores);
    println!(
        "| process RSS before / peak / 1 s after | {:.0} / {:.0} / {:.0} MiB |",
        o.rss.0 as f64 / MIB,
        o.rss.1 as f64 / MIB,
        o.rss.2 as f64 / MIB
    );
    println!();
}
