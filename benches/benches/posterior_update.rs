//! Per-sample update throughput of the posterior maths, one core, state in
//! hand.
//!
//! Timed: one `update` call on a micro-batch of 1, 2, 16 or 64 observations,
//! for Beta (`beta_update`, plus the bare per-sample `observe` in
//! `beta_observe`), diagonal logistic at d = 16, 32, 64, 128
//! (`diagonal_update`) and full logistic at d = 16, 32 (`full_update`).
//! Observations come cyclically from a seeded pool of 4096 (see
//! `posterior_benches::pool`), built outside the timed loop; throughput is
//! `Elements(batch)`, so criterion reports samples/s.
//!
//! State in hand: each posterior is first warmed up on 512 samples (see
//! `posterior_benches::state`), then that one state is updated in place for
//! the whole run, as a hot key is. By the end of a measurement it has
//! absorbed millions of samples, and a well-determined posterior needs
//! fewer Newton iterations than a young one, so these figures flatter a
//! young key. `diagonal_update_fresh` (d = 32) bounds that effect: every
//! timed update starts from a clone of the 512-sample state (cloned
//! outside the timing). The `newton_iterations` example measures the drift.
//!
//! Run: `cargo bench -p posterior-benches --bench posterior_update`, or
//! `benches/run.sh` for the table of samples/s against the goals.

use std::hint::black_box;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_benches::{
    BatchCycle, MEASUREMENT, ObservationPool, SAMPLE_SIZE, WARM_UP, warm_beta, warm_diagonal,
    warm_full,
};

const BATCH_SIZES: [usize; 4] = [1, 2, 16, 64];
const DIAGONAL_DIMS: [usize; 4] = [16, 32, 64, 128];
const FULL_DIMS: [usize; 2] = [16, 32];
const FRESH_DIM: usize = 32;

fn beta_update(c: &mut Criterion) {
    let pool = ObservationPool::standard(0);
    let observations = pool.observations();
    let mut group = c.benchmark_group("beta_update");
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));
        let (prior, mut post) = warm_beta(&pool);
        let mut cycle = BatchCycle::new(observations.len(), batch);
        group.bench_function(BenchmarkId::from_parameter(format!("batch{batch}")), |b| {
            b.iter(|| {
                let range = cycle.next_range();
                let result = post.update(&prior, None, 0, black_box(&observations[range]));
                black_box(&post);
                result
            });
        });
    }
    group.finish();
}

fn beta_observe(c: &mut Criterion) {
    let pool = ObservationPool::standard(0);
    let observations = pool.observations();
    let batch = 64;
    let mut group = c.benchmark_group("beta_observe");
    group.throughput(Throughput::Elements(batch as u64));
    let (_, mut post) = warm_beta(&pool);
    let mut cycle = BatchCycle::new(observations.len(), batch);
    group.bench_function(BenchmarkId::from_parameter(format!("batch{batch}")), |b| {
        b.iter(|| {
            for obs in black_box(&observations[cycle.next_range()]) {
                post.observe(obs.reward, obs.weight);
            }
            black_box(&post);
        });
    });
    group.finish();
}

fn diagonal_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("diagonal_update");
    for dim in DIAGONAL_DIMS {
        let pool = ObservationPool::standard(dim);
        let observations = pool.observations();
        for batch in BATCH_SIZES {
            group.throughput(Throughput::Elements(batch as u64));
            let (prior, mut post) = warm_diagonal(&pool);
            let mut cycle = BatchCycle::new(observations.len(), batch);
            let id = BenchmarkId::new(format!("d{dim}"), format!("batch{batch}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let range = cycle.next_range();
                    let stats = post.update(&prior, None, 0, black_box(&observations[range]));
                    black_box(&post);
                    stats
                });
            });
        }
    }
    group.finish();
}

fn diagonal_update_fresh(c: &mut Criterion) {
    let pool = ObservationPool::standard(FRESH_DIM);
    let observations = pool.observations();
    let (prior, warm) = warm_diagonal(&pool);
    let mut group = c.benchmark_group("diagonal_update_fresh");
    for batch in BATCH_SIZES {
        group.throughput(Throughput::Elements(batch as u64));
        let mut cycle = BatchCycle::new(observations.len(), batch);
        let id = BenchmarkId::new(format!("d{FRESH_DIM}"), format!("batch{batch}"));
        group.bench_function(id, |b| {
            b.iter_batched_ref(
                || warm.clone(),
                |post| {
                    let range = cycle.next_range();
                    let stats = post.update(&prior, None, 0, black_box(&observations[range]));
                    black_box(&*post);
                    stats
                },
                BatchSize::SmallInput,
            );
        });
    }
    group.finish();
}

fn full_update(c: &mut Criterion) {
    let mut group = c.benchmark_group("full_update");
    for dim in FULL_DIMS {
        let pool = ObservationPool::standard(dim);
        let observations = pool.observations();
        for batch in BATCH_SIZES {
            group.throughput(Throughput::Elements(batch as u64));
            let (prior, mut post) = warm_full(&pool);
            let mut cycle = BatchCycle::new(observations.len(), batch);
            let id = BenchmarkId::new(format!("d{dim}"), format!("batch{batch}"));
            group.bench_function(id, |b| {
                b.iter(|| {
                    let range = cycle.next_range();
                    let stats = post.update(&prior, None, 0, black_box(&observations[range]));
                    black_box(&post);
                    stats
                });
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLE_SIZE);
    targets = beta_update, beta_observe, diagonal_update, diagonal_update_fresh, full_update
}
criterion_main!(benches);
