//! The param-server's load generator, side by side with Redis.
//!
//! Loads `keys` diagonal d = 32 states into an in-process param-server and
//! the same serialized `Params` (byte for byte what `GetParams` returns)
//! into a `redis-server` on loopback, then, alternating the contenders
//! window by window (the order swapped every round), drives N concurrent
//! clients for a fixed time per (contender, request, batch, clients) and
//! prints a Markdown table: docs/s, p50 / p99 / p99.9, the param-server /
//! Redis ratios, the CPU cores each side used and the load average. Then:
//! freshness (feed → `WatchParams` subscriber, feed → visible to
//! `GetParams`) and an overload run (offered load above capacity).
//!
//! Threads: the server runtime gets `--server-threads` workers (1 by
//! default: Redis serves from one thread too) and the clients
//! `--client-threads` (1); with one of each and two cores, the server
//! threads are pinned to the first core, the clients to the second, and
//! the bench script pins `redis-server` to the first core as well.
//!
//! Run: `scripts/bench-param-server.sh` (installs and starts Redis), or
//! `cargo run --release -p posterior-param-server --example loadgen --
//! --redis 127.0.0.1:PORT --redis-pid PID` against a running Redis
//! (without `--redis`, the param-server rows only).

mod contender;
mod data;
mod drive;
mod freshness;
mod overload;
mod procfs;
mod report;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use posterior_learner::params::Publication;
use posterior_param_server::{Limits, ParamStore, ServeOptions, feed, serve};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::contender::{Client, Op, Side};
use crate::drive::{SERVER_THREAD, Shape, Tally, Target};

/// Command line.
#[derive(Debug, Parser)]
#[command(about = "GetParams / SampleScores load, side by side with Redis MGET")]
pub struct Args {
    /// Keys served (uniformly random per request).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Dimension of the diagonal Gaussian states.
    #[arg(long, default_value_t = 32)]
    dim: usize,
    /// Redis on loopback, host:port (without it: param-server rows only).
    #[arg(long)]
    redis: Option<String>,
    /// Redis's process id, for its CPU time.
    #[arg(long)]
    redis_pid: Option<u32>,
    /// Docs per request.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    batches: Vec<usize>,
    /// Concurrent clients (each on its own connection).
    #[arg(long, value_delimiter = ',', default_value = "1,8")]
    clients: Vec<usize>,
    /// Measured seconds per window.
    #[arg(long, default_value_t = 3.0)]
    seconds: f64,
    /// Warm-up seconds before each window.
    #[arg(long, default_value_t = 0.5)]
    warmup_seconds: f64,
    /// Rounds; each runs every window once, contenders alternating.
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Worker threads of the param-server's runtime.
    #[arg(long, default_value_t = 1)]
    server_threads: usize,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Do not pin threads to cores.
    #[arg(long)]
    no_pin: bool,
    /// Updates per second in the freshness run (0 skips it).
    #[arg(long, default_value_t = 1000)]
    update_rate: u64,
    /// Overload: offered rate as a multiple of the measured capacity
    /// (0 skips it).
    #[arg(long, default_value_t = 2.0)]
    overload_factor: f64,
    /// Overload: docs per request.
    #[arg(long, default_value_t = 100)]
    overload_batch: usize,
    /// Overload: seconds offered.
    #[arg(long, default_value_t = 5.0)]
    overload_seconds: f64,
    /// Overload: connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    overload_connections: usize,
    /// The server's `limits.max_concurrent_requests_per_connection`
    /// (default: the server's default).
    #[arg(long)]
    requests_per_connection: Option<usize>,
    /// The server's `limits.max_streams_per_connection` (default: the
    /// server's default).
    #[arg(long)]
    streams_per_connection: Option<usize>,
}

impl Args {
    /// The server's limits: its defaults, with what the flags set.
    pub fn limits(&self) -> Limits {
        let defaults = Limits::default();
        Limits {
            max_concurrent_requests_per_connection: self
                .requests_per_connection
                .unwrap_or(defaults.max_concurrent_requests_per_connection),
            max_streams_per_connection: self
                .streams_per_connection
                .unwrap_or(defaults.max_streams_per_connection),
            ..defaults
        }
    }
}

/// Where the threads run.
#[derive(Debug, Clone, Copy)]
struct Pinning {
    server: Option<core_affinity::CoreId>,
    clients: Option<core_affinity::CoreId>,
}

impl Pinning {
    fn choose(args: &Args) -> Self {
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let one_each = args.server_threads == 1 && args.client_threads == 1;
        if args.no_pin || !one_each || cores.len() < 2 {
            return Self {
                server: None,
                clients: None,
            };
        }
        Self {
            server: Some(cores[0]),
            clients: Some(cores[1]),
        }
    }

    fn describe(&self) -> String {
        match (self.server, self.clients) {
            (Some(s), Some(c)) => format!(
                "server threads pinned to cpu {}, load generator to cpu {}",
                s.id, c.id
            ),
            _ => "no pinning".to_owned(),
        }
    }
}

fn runtime(
    name: &str,
    threads: usize,
    core: Option<core_affinity::CoreId>,
) -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        // Blocking-pool threads live as long as the run: CPU time is read
        // per thread (`procfs::own_cpu`), and a thread that ended after
        // tokio's default 10 s idle took its whole CPU time out of its
        // side's sum (and put it in the load generator's).
        .thread_keep_alive(std::time::Duration::from_secs(24 * 3600))
        .on_thread_start(move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
        })
        .enable_all()
        .build()
        .with_context(|| format!("build the {name} runtime"))
}

/// The server side: store, feed channel, gRPC server on its own runtime.
struct Server {
    runtime: tokio::runtime::Runtime,
    addr: String,
    feed: mpsc::Sender<Publication>,
    stop: tokio::sync::oneshot::Sender<()>,
    rss_delta_bytes: u64,
    fill: Duration,
}

fn start_server(args: &Args, pinning: Pinning) -> Result<Server> {
    let runtime = runtime(SERVER_THREAD, args.server_threads, pinning.server)?;
    let rss_before = procfs::rss_bytes()?;
    let filling = Instant::now();
    let store: Arc<ParamStore> = data::fill_store(args.keys, args.dim)?;
    let fill = filling.elapsed();
    let rss_delta_bytes = procfs::rss_bytes()?.saturating_sub(rss_before);
    let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?.to_string();
    let (feed_tx, feed_rx) = mpsc::channel(64);
    runtime.spawn(feed::feed(Arc::clone(&store), feed_rx));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    runtime.spawn(serve(
        listener,
        store,
        args.limits(),
        ServeOptions::default(),
        async {
            let _ = stopped.await;
        },
    ));
    Ok(Server {
        runtime,
        addr,
        feed: feed_tx,
        stop,
        rss_delta_bytes,
        fill,
    })
}

fn main() -> Result<()> {
    // The server's warnings (admission shedding, with its reasons) and its
    // admission totals at shutdown; `RUST_LOG` overrides.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("warn,posterior_param_server::server=info")
            }),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let pinning = Pinning::choose(&args);
    let load_start = procfs::load_average()?;
    eprintln!("filling {} keys, d = {} ...", args.keys, args.dim);
    let server = start_server(&args, pinning)?;
    eprintln!(
        "param-server on {} ({:.1?} to fill)",
        server.addr, server.fill
    );
    let clients = runtime("lg-client", args.client_threads, pinning.clients)?;
    let results = clients.block_on(measure_all(&args, &server))?;
    let load_end = procfs::load_average()?;
    let setting = report::Setting {
        keys: args.keys,
        dim: args.dim,
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        server_threads: args.server_threads,
        client_threads: args.client_threads,
        pinning: pinning.describe(),
        load: (load_start, load_end),
        ps_rss_delta_bytes: server.rss_delta_bytes,
        seconds: args.seconds,
        rounds: args.rounds,
    };
    report::print(&setting, &results);
    let _ = server.stop.send(());
    server.runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// Everything measured, for the report.
#[derive(Debug, Default)]
pub struct Results {
    /// Closed-loop rows.
    pub rows: BTreeMap<(Op, usize, usize, Side), Tally>,
    /// Redis's memory for the keys (`used_memory` after the fill).
    pub redis_used_bytes: Option<u64>,
    /// Freshness idle and under load, each with a label naming its load.
    pub freshness: Vec<(String, freshness::Freshness)>,
    /// The overload run, with its plan.
    pub overload: Option<(overload::Plan, overload::Overload)>,
    /// The server's limits.
    pub limits: Limits,
}

async fn measure_all(args: &Args, server: &Server) -> Result<Results> {
    let mut results = Results {
        limits: args.limits(),
        ..Results::default()
    };
    let mut sides = vec![Side::ParamServer];
    let mut redis_pid = None;
    if let Some(addr) = &args.redis {
        let mut con = contender::redis(addr).await?;
        eprintln!("filling redis at {addr} ...");
        data::fill_redis(&mut con, args.keys, args.dim).await?;
        let mut ps = contender::param_server(&server.addr).await?;
        data::check_same_bytes(&mut ps, &mut con, args.keys, 1000).await?;
        eprintln!("checked: redis holds the bytes GetParams returns");
        results.redis_used_bytes = redis_used_memory(&mut con).await.ok();
        sides.push(Side::Redis);
        redis_pid = args.redis_pid;
    }
    let target = Target {
        keys: args.keys,
        context: (0..args.dim).map(|i| (i as f32 - 16.0) / 32.0).collect(),
        redis_pid,
    };
    let max_clients = args.clients.iter().copied().max().unwrap_or(1);
    let mut pools = BTreeMap::new();
    for &side in &sides {
        let mut pool = Vec::with_capacity(max_clients);
        for _ in 0..max_clients {
            pool.push(Client::connect(side, &server.addr, args.redis.as_deref()).await?);
        }
        pools.insert(side, pool);
    }
    let mut shapes = Vec::new();
    for &clients in &args.clients {
        for &batch in &args.batches {
            for &side in &sides {
                shapes.push(Shape {
                    side,
                    op: Op::Get,
                    batch,
                    clients,
                });
            }
        }
        shapes.push(Shape {
            side: Side::ParamServer,
            op: Op::Sample,
            batch: 1000,
            clients,
        });
    }
    let warmup = Duration::from_secs_f64(args.warmup_seconds);
    let measure = Duration::from_secs_f64(args.seconds);
    for round in 0..args.rounds {
        for (i, pair) in shapes
            .chunk_by(|a, b| (a.op, a.batch, a.clients) == (b.op, b.batch, b.clients))
            .enumerate()
        {
            let mut pair = pair.to_vec();
            if round % 2 == 1 {
                pair.reverse();
            }
            for shape in pair {
                let seed = (round * 1000 + i) as u64;
                let tally =
                    drive::window(&target, &pools[&shape.side], shape, warmup, measure, seed)
                        .await?;
                eprintln!(
                    "round {round} {:<12} {:<12} batch {:>4} clients {:>2}: {:>9.0} docs/s p99 {:>7.2} ms",
                    shape.side.name(),
                    shape.op.name(),
                    shape.batch,
                    shape.clients,
                    tally.docs_per_s(),
                    tally.quantile_ms(0.99)
                );
                results
                    .rows
                    .entry((shape.op, shape.batch, shape.clients, shape.side))
                    .or_default()
                    .add(&tally);
            }
        }
    }
    drop(pools);
    if args.update_rate > 0 {
        measure_freshness(args, server, &target, &mut results).await?;
    }
    if args.overload_factor > 0.0 {
        let capacity = results
            .rows
            .iter()
            .filter(|((op, batch, _, side), _)| {
                *op == Op::Get && *batch == args.overload_batch && *side == Side::ParamServer
            })
            .map(|(_, t)| t.requests_per_s())
            .fold(0.0, f64::max);
        let plan = overload::Plan {
            rate: capacity.max(100.0) * args.overload_factor,
            batch: args.overload_batch,
            duration: Duration::from_secs_f64(args.overload_seconds),
            connections: args.overload_connections,
            max_in_flight: 8192,
            keys: args.keys,
        };
        eprintln!(
            "overload: offering {:.0} requests/s of {} docs",
            plan.rate, plan.batch
        );
        results.overload = Some((plan, overload::run(&server.addr, plan).await?));
    }
    Ok(results)
}

async fn measure_freshness(
    args: &Args,
    server: &Server,
    target: &Target,
    results: &mut Results,
) -> Result<()> {
    let mut plan = freshness::Plan {
        rate: args.update_rate,
        duration: Duration::from_secs(5),
        watched: 1000.min(args.keys),
        keys: args.keys,
        dim: args.dim,
        first_seq: 10,
    };
    eprintln!("freshness, idle ...");
    let idle = freshness::measure(&server.addr, &server.feed, plan).await?;
    results.freshness.push(("idle".to_owned(), idle));
    plan.first_seq += plan.rate * plan.duration.as_secs() + 10;
    // Under load: closed-loop GetParams of 100 docs from 4 clients.
    let shape = Shape {
        side: Side::ParamServer,
        op: Op::Get,
        batch: 100,
        clients: 4,
    };
    let mut pool = Vec::new();
    for _ in 0..shape.clients {
        pool.push(Client::connect(Side::ParamServer, &server.addr, None).await?);
    }
    eprintln!("freshness, under load ...");
    let (loaded, background) = tokio::join!(
        freshness::measure(&server.addr, &server.feed, plan),
        drive::window(target, &pool, shape, Duration::ZERO, plan.duration, 5)
    );
    let background = background?;
    let label = format!(
        "under load: {} clients × GetParams 100 docs, {:.0} docs/s, p99 {:.2} ms",
        shape.clients,
        background.docs_per_s(),
        background.quantile_ms(0.99)
    );
    results.freshness.push((label, loaded?));
    Ok(())
}

async fn redis_used_memory(con: &mut redis::aio::MultiplexedConnection) -> Result<u64> {
    let info: String = redis::cmd("INFO").arg("memory").query_async(con).await?;
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .context("INFO has used_memory")?
        .trim()
        .parse()
        .context("parse used_memory")
}
