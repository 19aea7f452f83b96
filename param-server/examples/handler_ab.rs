//! The GetParams / SampleScores handlers' own work, the store's previous
//! table against the current one, side by side in one run: 1 M diagonal
//! d = 32 keys, batches of 1000 random docs, each batch served by every
//! variant in turn (the order rotated every batch), response encoded as
//! tonic would. Prints median and p99 per variant and the ratio to the
//! first; asserts that every variant returns the same bytes.
//!
//! Variants:
//! - `papaya`: the table before the flat one — a `papaya` map of one
//!   immutable boxed value per key, one lookup per doc, `Params` built and
//!   encoded by prost;
//! - `flat, prost`: `ParamServiceImpl::get_params` (the flat table,
//!   prefetched batch reads) encoded by prost;
//! - `flat, direct`: `ParamServiceImpl::get_params_bytes`, what the server
//!   sends (encoded straight from the table).
//!
//! Then the WatchParams snapshot of every key, in the handler's chunks of
//! 256 docs: one read per doc (`wire_params`, the code before) against one
//! batched read per chunk (`wire_params_each`), alternating chunk by chunk;
//! asserts both give the same messages.
//!
//! Run: `cargo run --release -p posterior-param-server --example handler_ab [keys] [batches]`

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use posterior_learner::KeyState;
use posterior_learner::params::params_to_wire;
use posterior_learner::posterior::{
    CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{Posterior, RewardSpec, VersionSpec};
use posterior_param_server::request::{DocsRequest, SampleRequest};
use posterior_param_server::store::{wire_params, wire_params_each};
use posterior_param_server::table::DocHasher;
use posterior_param_server::{
    BodyView, Limits, ParamServiceImpl, ParamStore, ServedVersion, StateView,
};
use posterior_proto::v1;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

const DIM: usize = 32;
const BATCH: usize = 1000;

fn fill(keys: u64) -> Result<Arc<ParamStore>> {
    let store = Arc::new(ParamStore::default());
    store.register(VersionSpec {
        name: "dwell".into(),
        model: ModelSpec::new(ModelKind::Logistic(LogisticPrior::isotropic(
            CovarianceForm::Diagonal,
            DIM,
            1.0,
        )?)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    })?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(3);
    for doc in 0..keys {
        let mean = (0..DIM).map(|_| rng.random_range(-1.0..1.0)).collect();
        let precision = (0..DIM).map(|_| rng.random_range(1.0..50.0)).collect();
        let state = KeyState {
            seq: 1,
            sample_count: 1.0,
            updated_event_time_ms: 0,
            posterior: Posterior::Diagonal(DiagonalGaussian::from_parts(mean, precision)?),
        };
        store.apply("dwell", doc, state)?;
    }
    Ok(store)
}

/// The previous table: one immutable value per key in papaya, the
/// floats (means, then precisions) in one boxed slice.
#[derive(Debug, Clone)]
struct Boxed {
    seq: u64,
    sample_count: f64,
    updated_event_time_ms: i64,
    values: Box<[f64]>,
}

impl Boxed {
    fn view(&self) -> StateView<'_> {
        let (mean, precision) = self.values.split_at(self.values.len() / 2);
        StateView {
            seq: self.seq,
            sample_count: self.sample_count,
            updated_event_time_ms: self.updated_event_time_ms,
            body: BodyView::Diagonal { mean, precision },
        }
    }
}

type OldTable = papaya::HashMap<u64, Boxed, DocHasher>;

fn old_table(store: &ParamStore, keys: u64) -> Result<OldTable> {
    let version = store.version("dwell")?;
    let table = version.table();
    let old = OldTable::with_capacity_and_hasher(keys as usize, DocHasher::default());
    let pinned = old.pin();
    for doc in 0..keys {
        let state = table.get(doc).expect("filled");
        let Posterior::Diagonal(g) = &state.posterior else {
            unreachable!("diagonal")
        };
        let boxed = Boxed {
            seq: state.seq,
            sample_count: state.sample_count,
            updated_event_time_ms: state.updated_event_time_ms,
            values: g.mean().iter().chain(g.precision()).copied().collect(),
        };
        pinned.insert(doc, boxed);
    }
    drop(pinned);
    Ok(old)
}

/// GetParams on the previous table: one lookup per doc, prost encoding.
fn get_old(version: &ServedVersion, old: &OldTable, doc_ids: &[u64]) -> Vec<u8> {
    let pinned = old.pin();
    let params = doc_ids
        .iter()
        .map(|&doc| match pinned.get(&doc) {
            Some(s) => s.view().to_wire(version.name(), doc),
            None => params_to_wire(version.name(), doc, version.prior()),
        })
        .collect();
    v1::GetParamsResponse { params }.encode_to_vec()
}

/// SampleScores on the previous table: one lookup, then the draw, per doc.
fn sample_old(
    version: &ServedVersion,
    old: &OldTable,
    doc_ids: &[u64],
    context: &[f32],
    seed: u64,
) -> Vec<u8> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let pinned = old.pin();
    let (mut sampled, mut mean) = (Vec::new(), Vec::new());
    for &doc in doc_ids {
        let state: Cow<'_, KeyState> = match pinned.get(&doc) {
            Some(s) => Cow::Owned(s.view().to_key_state()),
            None => Cow::Borrowed(version.prior()),
        };
        sampled.push(
            state
                .sample_score(context, &mut rng)
                .expect("valid context"),
        );
        mean.push(state.mean_score(context).expect("valid context"));
    }
    v1::SampleScoresResponse { sampled, mean }.encode_to_vec()
}

fn summary(name: &str, mut times: Vec<Duration>, base: Option<Duration>) -> Duration {
    times.sort();
    let median = times[times.len() / 2];
    let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
    let ratio = base.map_or(String::new(), |b| {
        format!(
            "  vs papaya median {:.2}×",
            median.as_secs_f64() / b.as_secs_f64()
        )
    });
    println!("{name:<22} median {median:>9.1?}  p99 {p99:>9.1?}{ratio}");
    median
}

/// The WatchParams handler's snapshot chunk.
const WATCH_CHUNK: usize = 256;
/// Passes over every key of the snapshot comparison.
const WATCH_ROUNDS: usize = 3;

/// Total time of each variant of the snapshot read, per pass over every
/// key: `[per doc, batched]`.
fn snapshot_reads(version: &ServedVersion) -> [Vec<Duration>; 2] {
    let table = version.table();
    let doc_ids = table.doc_ids();
    let mut totals: [Vec<Duration>; 2] = Default::default();
    for round in 0..WATCH_ROUNDS {
        let mut took = [Duration::ZERO; 2];
        for (i, chunk) in doc_ids.chunks(WATCH_CHUNK).enumerate() {
            let mut outputs: [Vec<v1::Params>; 2] = Default::default();
            for k in 0..2 {
                let variant = (round + i + k) % 2;
                let started = Instant::now();
                outputs[variant] = if variant == 0 {
                    chunk
                        .iter()
                        .map(|&doc| wire_params(version, &table, doc))
                        .collect()
                } else {
                    wire_params_each(version, &table, chunk)
                };
                took[variant] += started.elapsed();
            }
            assert!(outputs[0] == outputs[1], "same snapshot");
        }
        for (total, t) in totals.iter_mut().zip(took) {
            total.push(t);
        }
    }
    totals
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let batches: usize = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let store = fill(keys)?;
    let version = store.version("dwell")?;
    let old = old_table(&store, keys)?;
    let service = ParamServiceImpl::new(Arc::clone(&store), Limits::default());
    let context: Vec<f32> = (0..DIM).map(|i| (i as f32 - 16.0) / 32.0).collect();
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut get: [Vec<Duration>; 3] = Default::default();
    let mut sample: [Vec<Duration>; 2] = Default::default();
    for round in 0..batches {
        let doc_ids: Vec<u64> = (0..BATCH).map(|_| rng.random_range(0..keys)).collect();
        let mut outputs: [Vec<u8>; 3] = Default::default();
        for k in 0..3 {
            let variant = (round + k) % 3;
            let started = Instant::now();
            let request = DocsRequest {
                version: "dwell".into(),
                doc_ids: doc_ids.clone(),
            };
            outputs[variant] = match variant {
                0 => get_old(&version, &old, &doc_ids),
                1 => service.get_params(request)?.encode_to_vec(),
                _ => service.get_params_bytes(request)?.as_bytes().to_vec(),
            };
            get[variant].push(started.elapsed());
        }
        assert!(
            outputs[0] == outputs[1] && outputs[1] == outputs[2],
            "same bytes"
        );
        let seed = round as u64;
        let mut outputs: [Vec<u8>; 2] = Default::default();
        for k in 0..2 {
            let variant = (round + k) % 2;
            let started = Instant::now();
            outputs[variant] = if variant == 0 {
                sample_old(&version, &old, &doc_ids, &context, seed)
            } else {
                let request = SampleRequest {
                    docs: DocsRequest {
                        version: "dwell".into(),
                        doc_ids: doc_ids.clone(),
                    },
                    context: context.clone(),
                    seed: Some(seed),
                };
                let scores = service.sample_scores(request)?;
                scores.encode_to_vec()
            };
            sample[variant].push(started.elapsed());
        }
        assert!(outputs[0] == outputs[1], "same scores");
    }
    println!("{keys} keys, d = {DIM}, {batches} batches of {BATCH} docs, handler + encoding");
    let [papaya, prost, direct] = get;
    let base = summary("GetParams papaya", papaya, None);
    summary("GetParams flat, prost", prost, Some(base));
    summary("GetParams flat, direct", direct, Some(base));
    let [papaya, flat] = sample;
    let base = summary("SampleScores papaya", papaya, None);
    summary("SampleScores flat", flat, Some(base));
    let [per_doc, batched] = snapshot_reads(&version);
    println!(
        "\nWatchParams snapshot of {keys} keys in chunks of {WATCH_CHUNK}, {WATCH_ROUNDS} passes (total per pass)"
    );
    for (name, times) in [("per doc", &per_doc), ("batched", &batched)] {
        let ms: Vec<String> = times
            .iter()
            .map(|t| format!("{:.0}", t.as_secs_f64() * 1e3))
            .collect();
        println!("{name:<8} {} ms", ms.join(" / "));
    }
    let ratios: Vec<String> = per_doc
        .iter()
        .zip(&batched)
        .map(|(a, b)| format!("{:.2}", a.as_secs_f64() / b.as_secs_f64()))
        .collect();
    println!("per doc / batched: {}×", ratios.join(" / "));
    Ok(())
}
