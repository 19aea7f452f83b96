//! What a predictor pays per lookup: a [`Mirror`] read (one lock-free
//! `get` per doc, in process) against a `GetParams` round trip over loopback gRPC
//! to an in-process param-server, for 1 and 100 docs of a Beta version
//! with 10 000 docs.
//!
//! Criterion measures each side; the machine is shared and noisy, so a
//! second, paired measurement times the two in alternation 2 000 times
//! and prints both medians and their ratio.
//!
//! Run: `CARGO_TARGET_DIR=… cargo bench -p posterior-client --bench mirror`

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_client::{Client, ClientConfig, Mirror, MirrorConfig};
use posterior_learner::posterior::{BetaPosterior, BetaPrior, ModelKind, ModelSpec};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
use posterior_param_server::{Limits, ParamStore, ServeOptions, serve};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tokio::runtime::Runtime;

const DOCS: u64 = 10_000;
const PAIRS: usize = 2_000;

struct Setup {
    client_runtime: Runtime,
    _server_runtime: Runtime,
    client: Client,
    mirror: Mirror,
}

fn setup() -> Setup {
    let store = Arc::new(ParamStore::new(1_024));
    let spec = VersionSpec {
        name: "ctr".into(),
        model: ModelSpec::new(ModelKind::Beta(
            BetaPrior::new(1.0, 1.0).expect("valid prior"),
        )),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    };
    store.register(spec).expect("new store");
    for doc in 0..DOCS {
        let s = (doc % 100) as f64;
        let state = KeyState {
            seq: 1 + doc % 7,
            sample_count: s,
            updated_event_time_ms: 1,
            posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + s, 2.0 + s).expect("valid")),
        };
        store.apply("ctr", doc, state).expect("registered version");
    }
    let server_runtime = runtime();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("loopback port");
    listener.set_nonblocking(true).expect("nonblocking");
    let endpoint = format!("http://{}", listener.local_addr().expect("bound"));
    server_runtime.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).expect("in a runtime");
        serve(
            listener,
            store,
            Limits::default(),
            ServeOptions::default(),
            std::future::pending(),
        )
        .await
        .expect("serve");
    });
    let client_runtime = runtime();
    let (client, mirror) = client_runtime.block_on(async {
        let client = Client::connect(endpoint, ClientConfig::default())
            .await
            .expect("connect");
        let mirror = Mirror::start(client.clone(), "ctr", MirrorConfig::default());
        mirror.caught_up().await.expect("caught up");
        (client, mirror)
    });
    assert_eq!(mirror.len() as u64, DOCS);
    Setup {
        client_runtime,
        _server_runtime: server_runtime,
        client,
        mirror,
    }
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn batches(size: usize) -> Vec<Vec<u64>> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(11);
    (0..256)
        .map(|_| (0..size).map(|_| rng.random_range(0..DOCS)).collect())
        .collect()
}

fn mirror_read(mirror: &Mirror, docs: &[u64]) -> f64 {
    docs.iter()
        .map(|&d| mirror.get(d).map_or(0.0, |p| p.sample_count))
        .sum()
}

fn remote_read(setup: &Setup, docs: &[u64]) -> f64 {
    let params = setup
        .client_runtime
        .block_on(setup.client.get_params("ctr", docs))
        .expect("get params");
    params.iter().map(|p| p.sample_count).sum()
}

fn lookups(c: &mut Criterion) {
    let setup = setup();
    let mut group = c.benchmark_group("lookup");
    for size in [1_usize, 100] {
        let batches = batches(size);
        group.throughput(Throughput::Elements(size as u64));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("mirror_get", size), &batches, |b, bs| {
            b.iter(|| {
                i = (i + 1) % bs.len();
                black_box(mirror_read(&setup.mirror, &bs[i]))
            })
        });
        group.bench_with_input(
            BenchmarkId::new("grpc_get_params", size),
            &batches,
            |b, bs| {
                b.iter(|| {
                    i = (i + 1) % bs.len();
                    black_box(remote_read(&setup, &bs[i]))
                })
            },
        );
    }
    group.finish();
    paired(&setup);
}

/// Times the two reads in alternation and prints medians and ratios.
fn paired(setup: &Setup) {
    for size in [1_usize, 100] {
        let batches = batches(size);
        let mut local = Vec::with_capacity(PAIRS);
        let mut remote = Vec::with_capacity(PAIRS);
        for n in 0..PAIRS {
            let docs = &batches[n % batches.len()];
            let start = Instant::now();
            black_box(mirror_read(&setup.mirror, docs));
            local.push(start.elapsed());
            let start = Instant::now();
            black_box(remote_read(setup, docs));
            remote.push(start.elapsed());
        }
        let (local, remote) = (median(local), median(remote));
        println!(
            "paired, {size} doc(s): mirror {local:?}, GetParams {remote:?}, GetParams/mirror = {:.0}",
            remote.as_secs_f64() / local.as_secs_f64()
        );
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

criterion_group!(benches, lookups);
criterion_main!(benches);
