//! Encoding throughput of the sample log's records
//! (`codec::put_sample_record`: what the engine writes for every sample
//! that enters its reorder buffer), one core, against prost encoding the
//! same `JoinedSample` into the same kind of buffer.
//!
//! Timed, 1024 samples per iteration, appended to one buffer cleared
//! before each iteration (as the log's reused blobs are): Beta samples
//! (no context, one label, with and without a `sample_id`) and logistic
//! samples at d = 32, as bench 1's workload makes them. Throughput is
//! `Elements(1024)`, so criterion reports samples/s.
//!
//! Run: `cargo bench -p posterior-benches --bench sample_log`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use posterior_benches::workload::{LABEL, VERSION};
use posterior_benches::{MEASUREMENT, SAMPLE_SIZE, WARM_UP};
use posterior_learner::codec;
use posterior_learner::sample::{Sample, labels};
use posterior_proto::v1::JoinedSample;
use prost::Message;

const BATCH: usize = 1024;

fn samples(dim: usize, ids: bool) -> Vec<Sample> {
    (0..BATCH as u64)
        .map(|i| Sample {
            doc_id: i.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 1_000_000,
            version: VERSION.into(),
            event_time_ms: 1_763_790_000_000 + i as i64,
            context: (0..dim)
                .map(|j| (i as f32 * 0.37 + j as f32).sin())
                .collect(),
            labels: labels([(LABEL, f32::from(u8::from(i % 16 == 0)))]),
            weight: 1.0,
            sample_id: ids.then(|| format!("s{}", 10_000_000 + i).into()),
        })
        .collect()
}

fn sample_log(c: &mut Criterion) {
    let sets = [
        ("beta", samples(0, false)),
        ("beta+id", samples(0, true)),
        ("logistic-d32", samples(32, false)),
    ];
    let mut group = c.benchmark_group("sample_log");
    group
        .warm_up_time(WARM_UP)
        .measurement_time(MEASUREMENT)
        .sample_size(SAMPLE_SIZE)
        .throughput(Throughput::Elements(BATCH as u64));
    for (name, samples) in &sets {
        let mut out = Vec::with_capacity(1 << 20);
        group.bench_with_input(BenchmarkId::new("record", name), samples, |b, samples| {
            b.iter(|| {
                out.clear();
                for (offset, sample) in samples.iter().enumerate() {
                    codec::put_sample_record(&mut out, offset as u64, black_box(sample));
                }
                black_box(out.len())
            });
        });
        // The reference: prost's encoding of messages built beforehand
        // (the message's own strings and map are not timed).
        let messages: Vec<JoinedSample> = samples.iter().map(JoinedSample::from).collect();
        group.bench_with_input(BenchmarkId::new("prost", name), &messages, |b, messages| {
            b.iter(|| {
                out.clear();
                for message in messages {
                    black_box(message).encode(&mut out).expect("room");
                }
                black_box(out.len())
            });
        });
    }
    group.finish();
}

criterion_group!(benches, sample_log);
criterion_main!(benches);
