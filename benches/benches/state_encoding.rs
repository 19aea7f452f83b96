//! Encode and decode throughput of one key's state (`KeyState::encode` /
//! `KeyState::decode`, the checkpoint and wire format), one core.
//!
//! Timed, one state per iteration: a Beta state, and diagonal and full
//! logistic states at d = 32 (548 and 4 516 bytes), each warmed up on 512
//! samples (see `posterior_benches::state`) so the floats are not round
//! prior values. `encode` includes the output allocation; `decode` includes
//! all validation (for the full form, a Cholesky factorisation). The bytes
//! to decode are encoded outside the timed loop. Throughput is
//! `Elements(1)`, so criterion reports states/s.
//!
//! Run: `cargo bench -p posterior-benches --bench state_encoding`, or
//! `benches/run.sh` for the table.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_benches::{
    MEASUREMENT, ObservationPool, SAMPLE_SIZE, WARM_UP, WARM_UP_BATCH, WARM_UP_SAMPLES, warm_beta,
    warm_diagonal, warm_full,
};
use posterior_learner::posterior::{KeyState, Posterior};

const DIM: usize = 32;

/// A key state as the learner would hold it after the warm-up.
fn key_state(posterior: Posterior) -> KeyState {
    KeyState {
        seq: (WARM_UP_SAMPLES / WARM_UP_BATCH) as u64,
        sample_count: WARM_UP_SAMPLES as f64,
        updated_event_time_ms: 1_763_790_000_000,
        posterior,
    }
}

fn state_encoding(c: &mut Criterion) {
    let pool = ObservationPool::standard(DIM);
    let states = [
        (
            "beta".to_owned(),
            key_state(Posterior::Beta(warm_beta(&ObservationPool::standard(0)).1)),
        ),
        (
            format!("diagonal_d{DIM}"),
            key_state(Posterior::Diagonal(warm_diagonal(&pool).1)),
        ),
        (
            format!("full_d{DIM}"),
            key_state(Posterior::Full(Box::new(warm_full(&pool).1))),
        ),
    ];
    let mut group = c.benchmark_group("state_encoding");
    group.throughput(Throughput::Elements(1));
    for (name, state) in &states {
        group.bench_function(BenchmarkId::new("encode", name), |b| {
            b.iter(|| black_box(state).encode())
        });
        let bytes = state.encode();
        assert_eq!(
            &KeyState::decode(&bytes).expect("a fresh encoding decodes"),
            state
        );
        group.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| KeyState::decode(black_box(&bytes)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLE_SIZE);
    targets = state_encoding
}
criterion_main!(benches);
