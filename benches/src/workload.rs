//! The synthetic sample stream of the pipeline benches: one version
//! (`ctr`, Beta or logistic), `keys` docs, a few partitions, event times
//! with bounded disorder, from a fixed seed.
//!
//! The stream has two phases. The first `keys` samples touch every doc
//! once, in doc order (phase 1: the key table fills up). After that docs
//! are skewed: doc = ⌊keys · u^skew⌋ with u uniform in [0, 1), so skew 1 is
//! uniform and skew 2 gives the top 1 % of docs 10 % of the samples and
//! the top 10 % a third (phase 2: steady state over a full table).
//!
//! Event times: sample i happens at `START_MS + i / samples_per_ms`, minus
//! a uniform delay in [0, disorder_ms). With the disorder below the
//! learner's allowed out-of-orderness nothing is late, and the reorder
//! buffer holds about `samples_per_ms × out_of_orderness_ms` samples.
//! Partition = `partitioning::partition_of(doc, partitions)`, as producers
//! do; offsets are dense per partition. Logistic contexts are
//! `[1, u₁ … u_{d−1}]`, uᵢ uniform in [−1, 1], labels from a fixed
//! logistic model with bias −3 (about 6 % clicks); Beta labels are clicks
//! at 5 %.

use std::collections::HashMap;

use posterior_learner::Sample;
use posterior_learner::partitioning::partition_of;
use posterior_proto::v1::JoinedSample;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// The version every generated sample carries.
pub const VERSION: &str = "ctr";
/// The reward label.
pub const LABEL: &str = "click";
/// Event time of the first sample (Unix ms).
pub const START_MS: i64 = 1_700_000_000_000;
/// Click rate of Beta samples.
const BETA_CTR: f64 = 0.05;
/// Logit of the true logistic model's bias feature.
const TRUE_BIAS_LOGIT: f64 = -3.0;

/// The model of the version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    /// Beta–Bernoulli, no context.
    Beta,
    /// Logistic, diagonal covariance, context dimension `dim`.
    Logistic {
        /// Context dimension.
        dim: usize,
    },
}

impl Model {
    /// Context dimension (0 for Beta).
    pub fn dim(self) -> usize {
        match self {
            Model::Beta => 0,
            Model::Logistic { dim } => dim,
        }
    }

    /// Short name for tables: `beta`, `logistic-d32`.
    pub fn name(self) -> String {
        match self {
            Model::Beta => "beta".into(),
            Model::Logistic { dim } => format!("logistic-d{dim}"),
        }
    }
}

/// Knobs of a generated stream.
#[derive(Debug, Clone, Copy)]
pub struct WorkloadSpec {
    /// The version's model.
    pub model: Model,
    /// Docs (= keys, one version).
    pub keys: u64,
    /// Partitions of the topic (a file is one).
    pub partitions: u32,
    /// Event-time density: samples per ms of event time.
    pub samples_per_ms: u64,
    /// Bounded disorder: delay of an event time behind the clock.
    pub disorder_ms: i64,
    /// Doc skew of phase 2 (1 = uniform).
    pub skew: f64,
    /// Give every sample a `sample_id` (for de-duplication).
    pub sample_ids: bool,
    /// Seed.
    pub seed: u64,
}

impl WorkloadSpec {
    /// The default stream: 1 M keys, 4 partitions, 100 samples per
    /// event-time ms, disorder up to 1 s, skew 2, no sample ids.
    pub fn new(model: Model) -> Self {
        Self {
            model,
            keys: 1_000_000,
            partitions: 4,
            samples_per_ms: 100,
            disorder_ms: 1_000,
            skew: 2.0,
            sample_ids: false,
            seed: 0x5EED_B3AC,
        }
    }
}

/// One generated record, decoded as a source would hand it to the engine.
#[derive(Debug, Clone)]
pub struct Record {
    /// Partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
    /// The validated sample.
    pub sample: Sample,
}

/// The stream itself: an iterator-like generator.
#[derive(Debug, Clone)]
pub struct Workload {
    spec: WorkloadSpec,
    rng: Xoshiro256PlusPlus,
    truth: Vec<f64>,
    next: u64,
    offsets: Vec<u64>,
}

impl Workload {
    /// The stream of `spec`, from its first sample.
    pub fn new(spec: WorkloadSpec) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed);
        let dim = spec.model.dim();
        let scale = 3.0 / (dim.max(1) as f64).sqrt();
        let truth = (1..dim).map(|_| rng.random_range(-scale..scale)).collect();
        Self {
            spec,
            rng,
            truth,
            next: 0,
            offsets: vec![0; spec.partitions as usize],
        }
    }

    /// The spec.
    pub fn spec(&self) -> &WorkloadSpec {
        &self.spec
    }

    /// Samples generated so far.
    pub fn generated(&self) -> u64 {
        self.next
    }

    /// The next sample in wire form, with its partition.
    pub fn next_wire(&mut self) -> (u32, JoinedSample) {
        let i = self.next;
        self.next += 1;
        let spec = self.spec;
        let doc = if i < spec.keys {
            i
        } else {
            let u: f64 = self.rng.random();
            ((u.powf(spec.skew) * spec.keys as f64) as u64).min(spec.keys - 1)
        };
        let delay = self.rng.random_range(0..spec.disorder_ms.max(1));
        let event_time_ms = START_MS + (i / spec.samples_per_ms.max(1)) as i64 - delay;
        let mut context = Vec::with_capacity(spec.model.dim());
        let click = match spec.model {
            Model::Beta => self.rng.random_bool(BETA_CTR),
            Model::Logistic { .. } => {
                context.push(1.0_f32);
                let mut logit = TRUE_BIAS_LOGIT;
                for w in &self.truth {
                    let x: f32 = self.rng.random_range(-1.0..1.0);
                    logit += w * f64::from(x);
                    context.push(x);
                }
                self.rng.random_bool(1.0 / (1.0 + (-logit).exp()))
            }
        };
        let wire = JoinedSample {
            doc_id: doc,
            version: VERSION.into(),
            event_time_ms,
            context,
            labels: HashMap::from([(LABEL.to_owned(), f32::from(u8::from(click)))]),
            weight: 1.0,
            sample_id: if spec.sample_ids {
                format!("s{i}")
            } else {
                String::new()
            },
        };
        (partition_of(doc, spec.partitions), wire)
    }

    /// The next `n` records, decoded and validated (as `Sample`s) and
    /// numbered with dense per-partition offsets.
    pub fn records(&mut self, n: usize) -> Vec<Record> {
        (0..n)
            .map(|_| {
                let (partition, wire) = self.next_wire();
                let offset = self.next_offset(partition);
                let sample = Sample::try_from(wire).expect("generated samples are valid");
                Record {
                    partition,
                    offset,
                    sample,
                }
            })
            .collect()
    }

    /// Takes the next dense offset of `partition`.
    pub fn next_offset(&mut self, partition: u32) -> u64 {
        let slot = &mut self.offsets[partition as usize];
        let offset = *slot;
        *slot += 1;
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(model: Model) -> WorkloadSpec {
        WorkloadSpec {
            keys: 100,
            ..WorkloadSpec::new(model)
        }
    }

    #[test]
    fn phase_one_touches_every_key_then_docs_stay_in_range() {
        let mut w = Workload::new(small(Model::Beta));
        let records = w.records(1_000);
        let first: Vec<u64> = records[..100].iter().map(|r| r.sample.doc_id).collect();
        assert_eq!(first, (0..100).collect::<Vec<_>>());
        assert!(records.iter().all(|r| r.sample.doc_id < 100));
        assert!(
            records
                .iter()
                .all(|r| r.partition == partition_of(r.sample.doc_id, 4))
        );
    }

    #[test]
    fn streams_are_seeded_and_contexts_have_the_dimension() {
        let spec = small(Model::Logistic { dim: 32 });
        let a = Workload::new(spec).records(50);
        let b = Workload::new(spec).records(50);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.sample, y.sample);
            assert_eq!(x.sample.context.len(), 32);
        }
    }

    #[test]
    fn disorder_is_bounded_and_offsets_are_dense() {
        let mut w = Workload::new(small(Model::Beta));
        let records = w.records(10_000);
        for (i, r) in records.iter().enumerate() {
            let clock = START_MS + (i as i64) / 100;
            assert!((clock - 1_000..=clock).contains(&r.sample.event_time_ms));
        }
        for p in 0..4 {
            let offsets: Vec<u64> = records
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| r.offset)
                .collect();
            assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>());
        }
    }
}
