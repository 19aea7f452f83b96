//! Which concurrent map holds the per-key parameters: `papaya::HashMap`
//! against `scc::HashIndex` (both read without locks), on our value sizes.
//!
//! Measured: one batch of 1000 lookups of random keys among 1 M, reading
//! each value's seq and first parameter, while a writer thread replaces
//! random keys' values as fast as it can (the feed's pattern: a new
//! immutable value per update). Values are the store's `StoredState`: a
//! Beta state (two floats) and a diagonal Gaussian of d = 32 (64 floats).
//! Both maps use the store's hasher (foldhash).
//!
//! The machine is shared and noisy, so a second, paired measurement
//! builds both maps, feeds both from one writer thread (the same updates
//! at the same rate) and times a batch on each in alternation, 2000 times;
//! it prints both medians and their ratio.
//!
//! Run: `CARGO_TARGET_DIR=… cargo bench -p posterior-param-server --bench store`
//! (results and the choice: param-server/NOTES.md).

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_learner::posterior::{BetaPosterior, DiagonalGaussian};
use posterior_learner::{KeyState, Posterior};
use posterior_param_server::StoredState;
use posterior_param_server::table::DocHasher;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const KEYS: u64 = 1_000_000;
const BATCH: usize = 1_000;
const DIM: usize = 32;

/// The two maps behind one interface.
trait Map: Send + Sync + 'static {
    fn name() -> &'static str;
    fn build(values: impl Fn(u64) -> StoredState) -> Self;
    fn put(&self, key: u64, value: StoredState);
    /// seq + first parameter of `key`'s value, 0 when absent.
    fn read(&self, keys: &[u64]) -> f64;
}

struct Papaya(papaya::HashMap<u64, StoredState, DocHasher>);

impl Map for Papaya {
    fn name() -> &'static str {
        "papaya"
    }
    fn build(values: impl Fn(u64) -> StoredState) -> Self {
        let map = papaya::HashMap::with_capacity_and_hasher(KEYS as usize, DocHasher::default());
        let pinned = map.pin();
        for key in 0..KEYS {
            pinned.insert(key, values(key));
        }
        drop(pinned);
        Self(map)
    }
    fn put(&self, key: u64, value: StoredState) {
        self.0.pin().insert(key, value);
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
    fn build(values: impl Fn(u64) -> StoredState) -> Self {
        let map = scc::HashIndex::with_capacity_and_hasher(KEYS as usize, DocHasher::default());
        for key in 0..KEYS {
            let _ = map.insert_sync(key, values(key));
        }
        Self(map)
    }
    fn put(&self, key: u64, value: StoredState) {
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
    state.seq() as f64
}

fn beta(seq: u64) -> StoredState {
    let s = seq as f64;
    StoredState::from(KeyState {
        seq,
        sample_count: s,
        updated_event_time_ms: 0,
        posterior: Posterior::Beta(BetaPosterior::from_parts(1.0 + s, 1.0).expect("valid")),
    })
}

fn diagonal(seq: u64) -> StoredState {
    let s = seq as f64;
    let g = DiagonalGaussian::from_parts(vec![s; DIM], vec![1.0 + s; DIM]).expect("valid");
    StoredState::from(KeyState {
        seq,
        sample_count: s,
        updated_event_time_ms: 0,
        posterior: Posterior::Diagonal(g),
    })
}

/// A thread replacing random keys' values until `stop`; counts its writes.
fn writer<M: Map>(
    map: Arc<M>,
    values: fn(u64) -> StoredState,
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

fn bench_map<M: Map>(c: &mut Criterion, value: &str, values: fn(u64) -> StoredState) {
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

/// Both maps, one writer, batches timed in alternation; prints the ratio.
fn paired(value: &str, values: fn(u64) -> StoredState) {
    let papaya = Arc::new(Papaya::build(values));
    let scc = Arc::new(Scc::build(values));
    let stop = Arc::new(AtomicBool::new(false));
    let handle = {
        let (papaya, scc, stop) = (Arc::clone(&papaya), Arc::clone(&scc), Arc::clone(&stop));
        std::thread::spawn(move || {
            let mut rng = Xoshiro256PlusPlus::seed_from_u64(2);
            let mut seq = 1;
            while !stop.load(Ordering::Relaxed) {
                seq += 1;
                let key = rng.random_range(0..KEYS);
                papaya.put(key, values(seq));
                scc.put(key, values(seq));
            }
        })
    };
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    let (mut on_papaya, mut on_scc) = (Vec::new(), Vec::new());
    for round in 0..2_000 {
        let batch: Vec<u64> = (0..BATCH).map(|_| rng.random_range(0..KEYS)).collect();
        let time = |read: &dyn Fn(&[u64]) -> f64| {
            let started = std::time::Instant::now();
            black_box(read(black_box(&batch)));
            started.elapsed().as_secs_f64() * 1e6
        };
        let papaya_read = |keys: &[u64]| papaya.read(keys);
        let scc_read = |keys: &[u64]| scc.read(keys);
        if round % 2 == 0 {
            on_papaya.push(time(&papaya_read));
            on_scc.push(time(&scc_read));
        } else {
            on_scc.push(time(&scc_read));
            on_papaya.push(time(&papaya_read));
        }
    }
    stop.store(true, Ordering::Relaxed);
    handle.join().expect("writer thread");
    let (p, s) = (median(on_papaya), median(on_scc));
    println!(
        "paired/{value}: median µs per 1000 lookups: papaya {p:.0}, scc_hashindex {s:.0}; papaya / scc = {:.2}",
        p / s
    );
}

fn paired_maps(_: &mut Criterion) {
    paired("beta", beta);
    paired("diagonal_d32", diagonal);
}

fn maps(c: &mut Criterion) {
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
