//! The GetParams / SampleScores handlers' own work, old code against new,
//! side by side in one run: 1 M diagonal d = 32 keys, batches of 1000
//! random docs, each batch served by every variant in turn (the order
//! rotated every batch), response encoded as tonic would (prost into one
//! buffer). Prints median and p99 per variant and the ratio to the first.
//!
//! Variants: `old` rebuilds each doc's `KeyState` and converts it with
//! `params_to_wire` (the code before the load generator's profile);
//! `to_wire` converts from the stored form (`StoredState::to_wire`);
//! `service` is what `ParamServiceImpl::get_params` does now. A variant
//! that did all of a batch's lookups first, then the conversions (to let
//! the CPU overlap the lookups' cache misses) measured 1.00–1.07× of
//! `old` and was dropped.
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
use posterior_param_server::store::wire_params;
use posterior_param_server::{Limits, ParamServiceImpl, ParamStore, ServedVersion};
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

/// GetParams before this change: one lookup and a `KeyState` per doc.
fn get_old(version: &ServedVersion, doc_ids: &[u64]) -> Vec<u8> {
    let table = version.table();
    let params = doc_ids
        .iter()
        .map(|&doc| {
            table.with(doc, |stored| match stored {
                Some(s) => params_to_wire(version.name(), doc, &s.to_key_state()),
                None => params_to_wire(version.name(), doc, version.prior()),
            })
        })
        .collect();
    v1::GetParamsResponse { params }.encode_to_vec()
}

/// GetParams from the stored form, one lookup at a time.
fn get_to_wire(version: &ServedVersion, doc_ids: &[u64]) -> Vec<u8> {
    let table = version.table();
    let params = doc_ids
        .iter()
        .map(|&doc| wire_params(version, &table, doc))
        .collect();
    v1::GetParamsResponse { params }.encode_to_vec()
}

/// SampleScores before this change: one lookup, then the draw, per doc.
fn sample_old(version: &ServedVersion, doc_ids: &[u64], context: &[f32], seed: u64) -> Vec<u8> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let table = version.table();
    let (mut sampled, mut mean) = (Vec::new(), Vec::new());
    for &doc in doc_ids {
        let state: Cow<'_, KeyState> = table.with(doc, |stored| match stored {
            Some(s) => Cow::Owned(s.to_key_state()),
            None => Cow::Borrowed(version.prior()),
        });
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
            "  new/old median {:.2}×",
            median.as_secs_f64() / b.as_secs_f64()
        )
    });
    println!("{name:<22} median {median:>9.1?}  p99 {p99:>9.1?}{ratio}");
    median
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let batches: usize = args.next().map_or(Ok(2_000), |a| a.parse())?;
    let store = fill(keys)?;
    let version = store.version("dwell")?;
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
            outputs[variant] = match variant {
                0 => get_old(&version, &doc_ids),
                1 => get_to_wire(&version, &doc_ids),
                _ => {
                    let request = DocsRequest {
                        version: "dwell".into(),
                        doc_ids: doc_ids.clone(),
                    };
                    service.get_params(request)?.encode_to_vec()
                }
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
                sample_old(&version, &doc_ids, &context, seed)
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
    let [old, to_wire, new] = get;
    let base = summary("GetParams old", old, None);
    summary("GetParams to_wire", to_wire, Some(base));
    summary("GetParams service", new, Some(base));
    let [old, new] = sample;
    let base = summary("SampleScores old", old, None);
    summary("SampleScores service", new, Some(base));
    Ok(())
}
