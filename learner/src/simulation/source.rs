//! The simulator source (`[source] kind = "simulator"`): joined samples
//! drawn from the [`World`], so a learner runs with no broker and no file.
//!
//! - **Traffic.** Request r of the world shows K candidate docs, drawn
//!   uniformly (the logging policy: this source is open loop, nobody ranks
//!   by the learnt parameters), and every candidate is exposed. Sample t is
//!   candidate `t mod K` of request `t / K`, labelled with the click the
//!   world draws from its hidden logistic model, `σ(w_doc · x)`. A Beta
//!   version's samples carry no context; a logistic version's carry the
//!   world's `dim`-dimensional context (coordinate 0 is the bias, 1).
//! - **Versions.** Request r belongs to `versions[r mod n]` (round robin),
//!   so every candidate of a request has the same version, as in an A/B
//!   split by request.
//! - **Event time.** The joiner emits request r's samples at
//!   `start_ms + r · step_ms`, once its labels are in; their event time is
//!   the exposure, one label delay earlier (the world's exponential delay of
//!   mean `mean_label_delay_ms`, capped at `max_label_delay_ms`). Event
//!   times thus advance one `step_ms` per request with disorder bounded by
//!   `max_label_delay_ms`: a learner whose `out_of_orderness_ms` is at least
//!   that finds no sample late.
//! - **Offsets.** One partition, 0, where sample t has offset t. Sample t is
//!   a pure function of (this config, t), so a learner restored from a
//!   checkpoint whose next offset is T resumes at sample T and the run is
//!   exactly once with no log to keep. (Several partitions, doc mod n, would
//!   need each partition's offset mapped back to a position of the one
//!   request stream, which is no longer a function of the offset alone.)
//! - **End.** After `samples` samples the input ends like a file's end;
//!   without `samples` it never ends (the learner stops on SIGTERM).

use serde::Deserialize;

use super::world::{CtrLevel, Request, World, WorldConfig};
use crate::config::ConfigError;
use crate::engine::Payload;
use crate::sample::{Name, Sample};
use crate::version::VersionSpec;

/// The partition of every simulated sample.
pub const PARTITION: u32 = 0;

/// `[source]` with `kind = "simulator"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Seed of the world and of every request.
    pub seed: u64,
    /// Samples before the input ends (like a file's end); absent = never
    /// (the learner runs until SIGTERM).
    pub samples: Option<u64>,
    /// `[[versions]]` names the requests are dealt to, round robin.
    pub versions: Vec<String>,
    /// Number of docs.
    #[serde(default = "default_docs")]
    pub docs: usize,
    /// Candidates per request, all exposed.
    #[serde(default = "default_candidates")]
    pub candidates: usize,
    /// Context dimension of the hidden model, bias included; the logistic
    /// versions must have this dimension.
    #[serde(default = "default_dim")]
    pub dim: usize,
    /// `low` (a random candidate's CTR ≈ 0.3–0.5 %) or `high` (≈ 7 %).
    #[serde(default = "default_ctr")]
    pub ctr: CtrLevel,
    /// Standard deviation of the docs' bias logits.
    #[serde(default = "default_bias_sd")]
    pub bias_sd: f64,
    /// Standard deviation of each hidden context weight.
    #[serde(default = "default_weight_sd")]
    pub weight_sd: f64,
    /// Emission time of request 0 (Unix ms).
    #[serde(default = "default_start_ms")]
    pub start_ms: i64,
    /// Event time between consecutive requests (ms).
    #[serde(default = "default_step_ms")]
    pub step_ms: i64,
    /// Mean label delay (exponential, event-time ms); 0 = none.
    #[serde(default)]
    pub mean_label_delay_ms: f64,
    /// Cap of the label delay, which bounds the disorder of event times.
    #[serde(default = "default_max_label_delay_ms")]
    pub max_label_delay_ms: i64,
    /// Request at which the docs' hidden models are permuted (drift).
    pub drift_at_request: Option<u64>,
    /// Name of the 0/1 click label; the versions must reward it.
    #[serde(default = "default_label")]
    pub label: String,
}

fn default_docs() -> usize {
    1_000
}
fn default_candidates() -> usize {
    10
}
fn default_dim() -> usize {
    1
}
fn default_ctr() -> CtrLevel {
    CtrLevel::Low
}
fn default_bias_sd() -> f64 {
    0.5
}
fn default_weight_sd() -> f64 {
    0.35
}
fn default_start_ms() -> i64 {
    1_700_000_000_000
}
fn default_step_ms() -> i64 {
    10
}
fn default_max_label_delay_ms() -> i64 {
    5_000
}
fn default_label() -> String {
    "click".into()
}

impl SimulatorConfig {
    /// The world this config describes.
    pub fn world(&self) -> WorldConfig {
        WorldConfig {
            docs: self.docs,
            dim: self.dim,
            candidates: self.candidates,
            ctr: self.ctr,
            bias_sd: self.bias_sd,
            weight_sd: self.weight_sd,
            step_ms: self.step_ms,
            drift_at: self.drift_at_request,
            mean_delay_ms: self.mean_label_delay_ms,
        }
    }

    /// Checks the values against the configured `versions`; the error
    /// names the key under `source.`.
    pub fn validate(&self, versions: &[VersionSpec]) -> Result<(), ConfigError> {
        let bad = |key: String, reason: String| ConfigError {
            key: format!("source.{key}"),
            reason,
        };
        self.world().validate().map_err(|e| {
            // The world's names, as this config spells them.
            let key = match e.key.as_str() {
                "mean_delay_ms" => "mean_label_delay_ms".to_owned(),
                "drift_at" => "drift_at_request".to_owned(),
                _ => e.key,
            };
            bad(key, e.reason)
        })?;
        if self.samples == Some(0) {
            return Err(bad("samples".into(), "must be >= 1, or absent".into()));
        }
        if self.max_label_delay_ms < 0 {
            return Err(bad("max_label_delay_ms".into(), "must be >= 0".into()));
        }
        if self.versions.is_empty() {
            return Err(bad("versions".into(), "must name a version".into()));
        }
        for (i, name) in self.versions.iter().enumerate() {
            let key = format!("versions[{i}]");
            let Some(spec) = versions.iter().find(|s| s.name == *name) else {
                return Err(bad(key, format!("{name:?} is not in [[versions]]")));
            };
            if spec.reward.label != self.label {
                return Err(bad(
                    key,
                    format!(
                        "{name:?} rewards label {:?}, the simulator emits {:?}",
                        spec.reward.label, self.label
                    ),
                ));
            }
            let dim = spec.model.kind.dim();
            if dim != 0 && dim != self.dim {
                return Err(bad(
                    key,
                    format!(
                        "{name:?} has dim {dim}, the simulator's dim is {}",
                        self.dim
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// A version requests are dealt to.
#[derive(Debug, Clone)]
struct Dealt {
    name: Name,
    /// Logistic: its samples carry the context.
    contextual: bool,
}

/// The generator: sample t on demand, or the records from an offset on.
#[derive(Debug, Clone)]
pub struct Simulator {
    world: World,
    versions: Vec<Dealt>,
    label: Name,
    start_ms: i64,
    max_label_delay_ms: i64,
    end: Option<u64>,
    next: u64,
    /// The last request drawn (its K samples are read in a row).
    request: Option<Request>,
}

impl Simulator {
    /// A simulator whose next record is sample `next_offset` (a
    /// checkpointed next offset, or 0).
    pub fn new(
        config: &SimulatorConfig,
        versions: &[VersionSpec],
        next_offset: u64,
    ) -> Result<Self, ConfigError> {
        config.validate(versions)?;
        let dealt = config
            .versions
            .iter()
            .map(|name| Dealt {
                name: name.as_str().into(),
                contextual: versions
                    .iter()
                    .find(|s| s.name == *name)
                    .is_some_and(|s| s.model.kind.dim() > 0),
            })
            .collect();
        Ok(Self {
            world: World::new(config.world(), config.seed)?,
            versions: dealt,
            label: config.label.as_str().into(),
            start_ms: config.start_ms,
            max_label_delay_ms: config.max_label_delay_ms,
            end: config.samples,
            next: next_offset,
            request: None,
        })
    }

    /// The world the samples are drawn from.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Sample `t`, a pure function of the config and `t` (the simulator
    /// only caches the last request).
    pub fn sample(&mut self, t: u64) -> Sample {
        let candidates = self.world.config().candidates as u64;
        let (r, k) = (t / candidates, (t % candidates) as usize);
        let request = match &mut self.request {
            Some(request) if request.t == r => request,
            cached => {
                let request = cached.get_or_insert_with(Request::default);
                self.world.request_into(r, request);
                request
            }
        };
        let dealt = &self.versions[(r % self.versions.len() as u64) as usize];
        let delay_ms = request.delay_ms.min(self.max_label_delay_ms);
        Sample {
            doc_id: u64::from(request.docs[k]),
            version: dealt.name.clone(),
            event_time_ms: self.start_ms + request.event_time_ms - delay_ms,
            context: if dealt.contextual {
                request.context(k).to_vec()
            } else {
                Vec::new()
            },
            labels: smallvec::smallvec![(
                self.label.clone(),
                f32::from(u8::from(request.clicks[k]))
            )],
            weight: 1.0,
            sample_id: None,
        }
    }

    /// The next record as (offset, payload), `None` after `samples`.
    pub fn next_record(&mut self) -> Option<(u64, Payload)> {
        if self.at_end() {
            return None;
        }
        let t = self.next;
        self.next += 1;
        Some((t, Payload::Sample(self.sample(t))))
    }

    /// True when the configured `samples` have all been read (never
    /// without `samples`).
    pub fn at_end(&self) -> bool {
        self.end.is_some_and(|end| self.next >= end)
    }

    /// Offset of the next record.
    pub fn next_offset(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::posterior::sigmoid;
    use crate::posterior::{BetaPrior, CovarianceForm, LogisticPrior, ModelKind, ModelSpec};
    use crate::version::RewardSpec;

    fn spec(name: &str, kind: ModelKind) -> VersionSpec {
        VersionSpec {
            name: name.into(),
            model: ModelSpec {
                kind,
                forgetting: None,
            },
            reward: RewardSpec::binary("click"),
            use_sample_weight: true,
        }
    }

    fn versions(dim: usize) -> Vec<VersionSpec> {
        vec![
            spec("beta", ModelKind::Beta(BetaPrior::new(1.0, 1.0).unwrap())),
            spec(
                "logistic",
                ModelKind::Logistic(
                    LogisticPrior::new(CovarianceForm::Diagonal, vec![0.0; dim], 1.0).unwrap(),
                ),
            ),
        ]
    }

    fn config(seed: u64) -> SimulatorConfig {
        toml::from_str(&format!(
            "seed = {seed}\nsamples = 50000\nversions = [\"beta\", \"logistic\"]\n\
             docs = 200\ndim = 4\ncandidates = 5\nmean_label_delay_ms = 300\n\
             max_label_delay_ms = 1000\n"
        ))
        .unwrap()
    }

    fn all(config: &SimulatorConfig, from: u64) -> Vec<(u64, Payload)> {
        let mut sim = Simulator::new(config, &versions(config.dim), from).unwrap();
        std::iter::from_fn(|| sim.next_record()).collect()
    }

    #[test]
    fn samples_are_pure_functions_of_seed_and_offset() {
        let a = all(&config(7), 0);
        assert_eq!(a.len(), 50_000);
        assert!(a.iter().enumerate().all(|(i, (t, _))| *t == i as u64));
        assert_eq!(a, all(&config(7), 0), "same seed, same samples");
        // A restart at a checkpointed offset continues the same sequence.
        assert_eq!(all(&config(7), 31_337), a[31_337..]);
        // Random access agrees with reading in order.
        let mut sim = Simulator::new(&config(7), &versions(4), 0).unwrap();
        for t in [49_999, 3, 12_345, 4] {
            assert_eq!(Payload::Sample(sim.sample(t)), a[t as usize].1);
        }
        let b = all(&config(8), 0);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same < 100, "different seeds share {same} samples");
    }

    #[test]
    fn requests_are_dealt_round_robin_with_bounded_disorder() {
        let c = config(3);
        let mut sim = Simulator::new(&c, &versions(4), 0).unwrap();
        let mut delayed = 0;
        for t in 0..10_000_u64 {
            let s = sim.sample(t);
            let r = t / 5;
            let emitted = c.start_ms + r as i64 * c.step_ms;
            assert!(
                (emitted - c.max_label_delay_ms..=emitted).contains(&s.event_time_ms),
                "sample {t}: {} vs emission {emitted}",
                s.event_time_ms
            );
            delayed += u64::from(s.event_time_ms < emitted);
            let (name, dim) = if r % 2 == 0 {
                ("beta", 0)
            } else {
                ("logistic", 4)
            };
            assert_eq!((s.version.as_str(), s.context.len()), (name, dim));
            assert!(s.doc_id < 200);
            if dim > 0 {
                assert_eq!(s.context[0], 1.0, "bias coordinate");
            }
        }
        assert!(delayed > 9_000, "labels are delayed: {delayed}");
    }

    #[test]
    fn click_rates_match_the_hidden_model() {
        // dim 1: a doc's click model is its bias alone, so its hidden CTR
        // is σ(bias) exactly.
        for (ctr, n) in [(CtrLevel::Low, 600_000_u64), (CtrLevel::High, 100_000)] {
            let c = SimulatorConfig {
                dim: 1,
                docs: 10,
                ctr,
                ..config(11)
            };
            let mut sim = Simulator::new(&c, &versions(1), 0).unwrap();
            let mut shown = [0_u64; 10];
            let mut clicks = [0_u64; 10];
            for t in 0..n {
                let s = sim.sample(t);
                shown[s.doc_id as usize] += 1;
                clicks[s.doc_id as usize] += u64::from(s.label("click") == Some(1.0));
            }
            for doc in 0..10 {
                let p = sigmoid(sim.world().weights(doc, 0)[0]);
                let n = shown[doc as usize] as f64;
                let (mean, sd) = (n * p, (n * p * (1.0 - p)).sqrt());
                let got = clicks[doc as usize] as f64;
                assert!(
                    (got - mean).abs() < 5.0 * sd + 1.0,
                    "{ctr:?} doc {doc}: {got} clicks in {n} exposures, hidden CTR {p}"
                );
            }
            let rate = clicks.iter().sum::<u64>() as f64 / n as f64;
            let (lo, hi) = match ctr {
                CtrLevel::Low => (0.001, 0.01),
                CtrLevel::High => (0.02, 0.15),
            };
            assert!((lo..hi).contains(&rate), "{ctr:?}: CTR {rate}");
        }
    }

    #[test]
    fn contextual_clicks_follow_the_logistic_probabilities() {
        let c = SimulatorConfig {
            ctr: CtrLevel::High,
            ..config(5)
        };
        let mut sim = Simulator::new(&c, &versions(4), 0).unwrap();
        let (mut expected, mut variance, mut clicks) = (0.0, 0.0, 0.0);
        let mut request = Request::default();
        for r in 0..20_000_u64 {
            sim.world().request_into(r, &mut request);
            for k in 0..5 {
                let p = request.probs[k];
                expected += p;
                variance += p * (1.0 - p);
                let s = sim.sample(r * 5 + k as u64);
                clicks += f64::from(s.label("click").unwrap());
            }
        }
        assert!(
            (clicks - expected).abs() < 5.0 * variance.sqrt(),
            "{clicks} clicks, {expected} expected"
        );
    }

    #[test]
    fn bad_configs_name_the_key() {
        let cases = [
            (
                SimulatorConfig {
                    versions: vec!["nobody".into()],
                    ..config(1)
                },
                "source.versions[0]",
            ),
            (
                SimulatorConfig {
                    dim: 3,
                    ..config(1)
                },
                "source.versions[1]",
            ),
            (
                SimulatorConfig {
                    label: "order".into(),
                    ..config(1)
                },
                "source.versions[0]",
            ),
            (
                SimulatorConfig {
                    candidates: 0,
                    ..config(1)
                },
                "source.candidates",
            ),
            (
                SimulatorConfig {
                    samples: Some(0),
                    ..config(1)
                },
                "source.samples",
            ),
        ];
        for (c, key) in cases {
            let err = c.validate(&versions(4)).unwrap_err();
            assert_eq!(err.key, key, "{err}");
        }
    }
}
