//! Which structure holds the per-key parameters: the store's
//! [`ParamTable`] (flat slots under a sequence lock, prefetched batch
//! reads) against `papaya::HashMap` and `scc::HashIndex` (both read
//! without locks) holding each key as one immutable boxed value — the
//! store's form before the flat table.
//!
//! Measured: one batch of 1000 lookups of random keys among 1 M, reading
//! each value's seq and every parameter (as a response does), while a writer thread replaces
//! random keys' values as fast as it can (the feed's pattern). Values: a
//! Beta state (two floats) and a diagonal Gaussian of d = 32 (64 floats).
//! All use the store's hasher (foldhash).
//!
//! The machine is shared and noisy, so a second, paired measurement
//! builds all three, feeds them from one writer thread (the same updates
//! at the same rate) and times a batch on each in rotation, 2000 times;
//! it prints the medians and their ratios to the flat table.
//!
//! Run: `CARGO_TARGET_DIR=… cargo bench -p posterior-param-server --bench store`
//! (results and the choice: BENCHMARKS.md, "Which concurrent map").

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_learner::posterior::{
    BetaPosterior, BetaPrior, CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind,
};
use posterior_learner::{KeyState, Posterior};
use posterior_param_server::table::DocHasher;
use posterior_param_server::{BodyView, ParamTable};
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const KEYS: u64 = 1_000_000;
const BATCH: usize = 1_000;
const DIM: usize = 32;

/// The contenders behind one interface.
trait Map: Send + Sync + 'static {
    fn name() -> &'static str;
    fn build(values: impl Fn(u64) -> KeyState) -> Self;
    fn put(&self, key: u64, value: KeyState);
    /// Sum over `keys` of seq + every parameter (a response reads the
    /// whole state), 0 when absent.
    fn read(&self, keys: &[u64]) -> f64;
}

/// A key's state as one immutable heap value (the store's form before
/// the flat table): the floats in one boxed slice.
#[derive(Debug, Clone)]
struct StoredState {
    seq: u64,
    values: Box<[f64]>,
}

impl From<KeyState> for StoredState {
    fn from(state: KeyState) -> Self {
        let values = match &state.posterior {
            Posterior::Beta(b) => vec![b.alpha(), b.beta()].into(),
            Posterior::Diagonal(g) => g.mean().iter().chain(g.precision()).copied().collect(),
            Posterior::Full(_) => unreachable!("not benchmarked"),
        };
        Self {
            seq: state.seq,
            values,
        }
    }
}

struct Flat(ParamTable);

impl Map for Flat {
    fn name() -> &'static str {
        "flat"
    }
    fn build(values: impl Fn(u64) -> KeyState) -> Self {
        let first = values(0);
        let kind = match &first.posterior {
            Posterior::Beta(_) => ModelKind::Beta(BetaPrior::new(1.0, 1.0).expect("valid")),
            Posterior::Diagonal(g) => ModelKind::Logistic(
                LogisticPrior::isotropic(CovarianceForm::Diagonal, g.dim(), 1.0).expect("valid"),
            ),
            Posterior::Full(_) => unreachable!("not benchmarked"),
        };
        let table = ParamTable::new(&kind, KEYS as usize);
        for key in 0..KEYS {
            table.apply(key, &values(key)).expect("the table's shape");
        }
        Self(table)
    }
    fn put(&self, key: u64, value: KeyState) {
        self.0.apply(key, &value).expect("the table's shape");
    }
    fn read(&self, keys: &[u64]) -> f64 {
        let mut sum = 0.0;
        self.0.read_each(keys, |_, state| {
            if let Some(state) = state {
                sum += state.seq as f64
                    + match state.body {
                        BodyView::Beta { alpha, beta } => alpha + beta,
                        BodyView::Diagonal { mean, precision } => {
                            mean.iter().sum::<f64>() + precision.iter().sum::<f64>()
                        }
                        BodyView::Full(_) => 0.0,
                    };
            }
        });
        sum
    }
}

struct Papaya(papaya::HashMap<u64, StoredState, DocHasher>);

impl Map for Papaya {
    fn name() -> &'static str {
        "papaya"
    }
    fn build(values: impl Fn(u64) -> KeyState) -> Self {
        let map = papaya::HashMap::with_capacity_and_hasher(KEYS as usize, DocHasher::default());
        let pinned = map.pin();
        for key in 0..KEYS {
            pinned.insert(key, values(key).into());
        }
        drop(pinned);
        Self(map)
    }
    fn put(&self, key: u64, value: KeyState) {
        self.0.pin().insert(key, value.into());
    }
    fn read(&self, keys: &[u64]) -> f64 {
        let pinned = self.0.pin();
        keys.iter()
            .map(|k| pinned.get(k).map_or(0.0, summary))
            .sum()
    }
}

struct Scc(scc::HashIndex<u64, StoredState, DocHasher>);

impl Map for Scc {
    fn name() -> &'static str {
        "scc_hashindex"
    }
    fn build(values: impl Fn(u64) -> KeyState) -> Self {
        let map = scc::HashIndex::with_capacity_and_hasher(KEYS as usize, DocHasher::default());
        for key in 0..KEYS {
            let _ = map.insert_sync(key, values(key).into());
        }
        Self(map)
    }
    fn put(&self, key: u64, value: KeyState) {
        let value = StoredState::from(value);
        match self.0.entry_sync(key) {
            scc::hash_index::Entry::Occupied(mut entry) => entry.update(value),
            scc::hash_index::Entry::Vacant(entry) => {
                entry.insert_entry(value);
            }
        }
    }
    fn read(&self, keys: &[u64]) -> f64 {
        let guard = scc::Guard::new();
        keys.iter()
            .map(|k| self.0.peek(k, &guard).map_or(0.0, summary))
            .sum()
    }
}

fn summary(state: &StoredState) -> f64 {
    state.seq as f64 + state.values.iter().sum::<f64>()
}

fn beta(seq: u64) -> KeyState {
    let s = seq as f64;
    KeyState {
        seq,
        sample_count: s,
        updated_event_time_ms: 0,
        posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + s, 1.0).expect("valid")),
    }
}

fn diagonal(seq: u64) -> KeyState {
    let s = seq as f64;
    let g = DiagonalGaussian::from_parts(vec![s; DIM], vec![1.0 + s; DIM]).expect("valid");
    KeyState {
        seq,
        sample_count: s,
        updated_event_time_ms: 0,
        posterior: Posterior::Diagonal(g),
    }
}

/// A thread replacing random keys' values until `stop`; counts its writes.
fn writer<M: Map>(
    map: Arc<M>,
    values: fn(u64) -> KeyState,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
        let mut seq = 1;
        while !stop.load(Ordering::Relaxed) {
            seq += 1;
            map.put(rng.random_range(0..KEYS), values(seq));
            writes.fetch_add(1, Ordering::Relaxed);
        }
    })
}

fn bench_map<M: Map>(c: &mut Criterion, value: &str, values: fn(u64) -> KeyState) {
    let map = Arc::new(M::build(values));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let batches: Vec<Vec<u64>> = (0..64)
        .map(|_| (0..BATCH).map(|_| rng.random_range(0..KEYS)).collect())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let handle = writer(
        Arc::clone(&map),
        values,
        Arc::clone(&stop),
        Arc::clone(&writes),
    );
    let mut group = c.benchmark_group(format!("lookup_1000_of_1m_with_writer/{value}"));
    group.throughput(Throughput::Elements(BATCH as u64));
    let started = std::time::Instant::now();
    group.bench_function(BenchmarkId::from_parameter(M::name()), |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % batches.len();
            black_box(map.read(black_box(&batches[i])))
        })
    });
    group.finish();
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("writer thread");
    let rate = writes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    println!("{}/{value}: writer kept {rate:.0} updates/s", M::name());
}

fn median(mut times: Vec<f64>) -> f64 {
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

/// A contender's batch read.
type Reader<'a> = &'a dyn Fn(&[u64]) -> f64;

/// All three, one writer, batches timed in rotation; prints the ratios.
fn paired(value: &str, values: fn(u64) -> KeyState) {
    let flat = Arc::new(Flat::build(values));
    let papaya = Arc::new(Papaya::build(values));
    let scc = Arc::new(Scc::build(values));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (flat, papaya, scc, stop) = (
            Arc::clone(&flat),
            Arc::clone(&papaya),
            Arc::clone(&scc),
            Arc::clone(&stop),
        );
        std::thread::spawn(move || {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = rng.random_range(0..KEYS);
                flat.put(key, values(seq));
                papaya.put(key, values(seq));
                scc.put(key, values(seq));
            }
        })
    };
    let readers: [Reader<'_>; 3] = [
        &|keys| flat.read(keys),
        &|keys| papaya.read(keys),
        &|keys| scc.read(keys),
    ];
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let mut times: [Vec<f64>; 3] = Default::default();
    for round in 0..2_000 {
        let batch: Vec<u64> = (0..BATCH).map(|_| rng.random_range(0..KEYS)).collect();
        for k in 0..3 {
            let contender = (round + k) % 3;
            let started = std::time::Instant::now();
            black_box(readers[contender](black_box(&batch)));
            times[contender].push(started.elapsed().as_secs_f64() * 1e6);
        }
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("writer thread");
    let [f, p, s] = times.map(median);
    println!(
        "paired/{value}: median µs per 1000 lookups: flat {f:.0}, papaya {p:.0}, scc_hashindex {s:.0}; papaya / flat = {:.2}, scc / flat = {:.2}",
        p / f,
        s / f
    );
}

fn paired_maps(_: &mut Criterion) {
    paired("beta", beta);
    paired("diagonal_d32", diagonal);
}

fn maps(c: &mut Criterion) {
    bench_map::<Flat>(c, "beta", beta);
    bench_map::<Flat>(c, "diagonal_d32", diagonal);
    bench_map::<Papaya>(c, "beta", beta);
    bench_map::<Scc>(c, "beta", beta);
    bench_map::<Papaya>(c, "diagonal_d32", diagonal);
    bench_map::<Scc>(c, "diagonal_d32", diagonal);
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = maps, paired_maps
}
criterion_main!(benches);
