//! Thompson draws per second, one core.
//!
//! Timed, one draw per iteration from a posterior warmed up on 512 samples
//! (see `posterior_benches::state`): `beta` is `BetaPosterior::sample`;
//! `diagonal_score` / `full_score` are `sample_score` at d = 32 (one
//! normal of the logit for one context); `diagonal_weights` /
//! `full_weights` are `sample_weights` at d = 32 (a whole weight vector,
//! for scoring many contexts with one draw); `diagonal_mean_score` is the
//! deterministic `mean_score`, the floor a draw is compared with.
//! Contexts cycle through a seeded pool of 4096 built outside the timed
//! loop; the RNG is a seeded xoshiro256++ kept across iterations. Throughput
//! is `Elements(1)`, so criterion reports draws/s.
//!
//! Run: `cargo bench -p posterior-benches --bench thompson_draw`, or
//! `benches/run.sh` for the table.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_benches::{
    MEASUREMENT, ObservationPool, SAMPLE_SIZE, SEED, WARM_UP, warm_beta, warm_diagonal, warm_full,
};
use rand::SeedableRng;
use rand_xoshiro::Xoshiro256PlusPlus;

const DIM: usize = 32;

fn thompson_draw(c: &mut Criterion) {
    let mut group = c.benchmark_group("thompson_draw");
    group.throughput(Throughput::Elements(1));
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(SEED);

    let (_, beta) = warm_beta(&ObservationPool::standard(0));
    group.bench_function("beta", |b| b.iter(|| black_box(&beta).sample(&mut rng)));

    let pool = ObservationPool::standard(DIM);
    let (_, diagonal) = warm_diagonal(&pool);
    let (_, full) = warm_full(&pool);
    let mut next = 0;
    let mut context = || {
        next += 1;
        black_box(pool.context(next))
    };
    group.bench_function(BenchmarkId::new("diagonal_score", format!("d{DIM}")), |b| {
        b.iter(|| diagonal.sample_score(context(), &mut rng))
    });
    group.bench_function(BenchmarkId::new("full_score", format!("d{DIM}")), |b| {
        b.iter(|| full.sample_score(context(), &mut rng))
    });
    group.bench_function(
        BenchmarkId::new("diagonal_mean_score", format!("d{DIM}")),
        |b| b.iter(|| diagonal.mean_score(context())),
    );
    group.bench_function(
        BenchmarkId::new("diagonal_weights", format!("d{DIM}")),
        |b| b.iter(|| black_box(&diagonal).sample_weights(&mut rng)),
    );
    group.bench_function(BenchmarkId::new("full_weights", format!("d{DIM}")), |b| {
        b.iter(|| black_box(&full).sample_weights(&mut rng))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLE_SIZE);
    targets = thompson_draw
}
criterion_main!(benches);
