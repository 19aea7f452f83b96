//! Latency of `GetParams` (batches of 1, 100, 1000 docs) and
//! `SampleScores` (1000 docs) at d = 32 over gRPC on loopback, one client
//! sending requests one after another, against an in-process server
//! holding `keys` diagonal keys. Prints p50 / p99 and docs/s.
//!
//! Run: `cargo run --release -p posterior-param-server --example latency [keys] [requests]`
//! (figures in BENCHMARKS.md, "Latency over gRPC"). Not the load generator: one
//! client, no concurrency, no Redis side by side.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use posterior_learner::posterior::{
    CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
use posterior_param_server::request::DocsRequest;
use posterior_param_server::{Limits, ParamServiceImpl, ParamStore, serve};
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::net::TcpListener;

const DIM: usize = 32;

fn fill(keys: u64) -> Result<Arc<ParamStore>> {
    let store = Arc::new(ParamStore::default());
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, DIM, 1.0)?;
    store.register(VersionSpec {
        name: "dwell".into(),
        model: ModelSpec::new(ModelKind::Logistic(prior)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    })?;
    for doc in 0..keys {
        let x = (doc % 1000) as f64 / 1000.0;
        let g = DiagonalGaussian::from_parts(vec![x; DIM], vec![1.0 + x; DIM])?;
        let state = KeyState {
            seq: 1,
            sample_count: 1.0,
            updated_event_time_ms: 0,
            posterior: Posterior::Diagonal(g),
        };
        store.apply("dwell", doc, state)?;
    }
    Ok(store)
}

fn report(name: &str, batch: usize, mut times: Vec<Duration>) {
    times.sort();
    let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
    let total: Duration = times.iter().sum();
    let docs_per_s = (batch * times.len()) as f64 / total.as_secs_f64();
    println!(
        "{name:<13} batch {batch:>4}: p50 {:>8.1?}  p99 {:>8.1?}  {docs_per_s:>10.0} docs/s (one client)",
        pct(0.50),
        pct(0.99)
    );
}

/// CPU time of this thread so far (user + system), from /proc, in 10 ms ticks.
fn thread_cpu() -> Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").context("read stat")?;
    // Fields after the command name, which ends with the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("stat has a command name")?
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    Ok(Duration::from_millis(ticks * 10))
}

/// The same requests without gRPC: the handlers' own work.
fn in_process(store: &Arc<ParamStore>, keys: u64, requests: usize) -> Result<()> {
    let cpu_before = thread_cpu()?;
    let service = ParamServiceImpl::new(Arc::clone(store), Limits::default());
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let request = DocsRequest {
            version: "dwell".into(),
            doc_ids: (0..1000).map(|_| rng.random_range(0..keys)).collect(),
        };
        let started = Instant::now();
        let response = service.get_params(request)?;
        let bytes = prost::Message::encoded_len(&response);
        std::hint::black_box(bytes);
        times.push(started.elapsed());
    }
    let cpu = (thread_cpu()? - cpu_before) / requests as u32;
    report("GetParams*", 1000, times);
    println!("  (* in process, no gRPC: handler + sizing the response; {cpu:.1?} CPU per request)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let requests: usize = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let store = fill(keys)?;
    in_process(&store, keys, requests)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(
        listener,
        store,
        Limits::default(),
        Default::default(),
        async {
            let _ = stopped.await;
        },
    ));
    let mut client = ParamServiceClient::connect(format!("http://{addr}"))
        .await
        .context("connect")?
        .max_decoding_message_size(64 << 20);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    println!("{keys} keys, d = {DIM}, {requests} requests per line");
    for batch in [1, 100, 1000] {
        let mut times = Vec::with_capacity(requests);
        for _ in 0..requests {
            let doc_ids = (0..batch).map(|_| rng.random_range(0..keys)).collect();
            let request = v1::GetParamsRequest {
                version: "dwell".into(),
                doc_ids,
            };
            let started = Instant::now();
            client.get_params(request).await?;
            times.push(started.elapsed());
        }
        report("GetParams", batch, times);
    }
    let context: Vec<f32> = (0..DIM).map(|i| (i as f32 - 16.0) / 32.0).collect();
    let mut times = Vec::with_capacity(requests);
    for seed in 0..requests as u64 {
        let request = v1::SampleScoresRequest {
            version: "dwell".into(),
            doc_ids: (0..1000).map(|_| rng.random_range(0..keys)).collect(),
            context: context.clone(),
            seed: Some(seed),
        };
        let started = Instant::now();
        client.sample_scores(request).await?;
        times.push(started.elapsed());
    }
    report("SampleScores", 1000, times);
    drop(client);
    let _ = stop.send(());
    server.await??;
    Ok(())
}
