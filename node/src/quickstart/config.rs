//! The `[quickstart]` table: the simulated ranking system around the
//! learner. Checked against the learner's own config before anything is
//! opened; every error names its key.

use std::path::PathBuf;

use anyhow::{Context, Result};
use serde::Deserialize;

use posterior_learner::config::{Config, ConfigError, ModelName, SourceConfig};
use posterior_learner::simulation::world::{CtrLevel, WorldConfig};

/// Key of the quickstart's table in its config file.
pub const CONFIG_KEY: &str = "quickstart";

/// `[quickstart]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuickstartConfig {
    /// Seed of the simulated world and of every Thompson draw.
    pub seed: u64,
    /// Requests the simulated predictor serves.
    pub requests: u64,
    /// Docs in the corpus.
    pub docs: usize,
    /// Candidates per request (drawn uniformly from the corpus).
    pub candidates: usize,
    /// Docs shown per request: the top of the ranking.
    pub shown: usize,
    /// Context dimension of the hidden click model, bias included; the
    /// logistic versions must have it.
    pub dim: usize,
    /// `low` (a random candidate's CTR ≈ 0.5 %) or `high` (≈ 7 %).
    pub ctr: CtrLevel,
    /// Standard deviation of the docs' bias logits.
    pub bias_sd: f64,
    /// Standard deviation of each hidden context weight.
    pub weight_sd: f64,
    /// Event time between consecutive requests (ms).
    pub step_ms: i64,
    /// Mean delay from exposure to joined sample (exponential, event-time
    /// ms).
    pub mean_label_delay_ms: f64,
    /// Cap of that delay; must stay below the learner's
    /// `[order] out_of_orderness_ms`, or labels would arrive late.
    pub max_label_delay_ms: i64,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Interval of the progress lines (wall-clock ms).
    pub progress_every_ms: u64,
    /// Requests per point of the CTR timeline.
    pub window_requests: u64,
    /// Where `timeline.csv` and `ctr.png` go.
    pub out: PathBuf,
    /// The A/B arms: requests are dealt to them round robin.
    pub arms: Vec<ArmConfig>,
}

/// `[[quickstart.arms]]`: one A/B arm of the simulated predictor.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArmConfig {
    /// The learner's version this arm ranks with and feeds.
    pub version: String,
    /// How it ranks.
    pub policy: Policy,
}

/// How an arm ranks a request's candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// By the server's Thompson draws (`SampleScores.sampled`).
    Thompson,
    /// By the posterior mean (`SampleScores.mean`): no exploration.
    Greedy,
    /// In the order the candidates were drawn, i.e. at random, without
    /// asking the server: the control arm.
    Random,
}

impl Policy {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Thompson => "thompson",
            Self::Greedy => "greedy",
            Self::Random => "random",
        }
    }
}

/// One arm as the loop runs it.
#[derive(Debug, Clone)]
pub struct Arm {
    /// The version.
    pub version: String,
    /// How it ranks.
    pub policy: Policy,
    /// Whether its version is logistic (its samples and draws carry
    /// contexts).
    pub logistic: bool,
}

/// Splits a quickstart file into its `[quickstart]` table and the rest
/// (the learner's config and its `[param_server]` table).
pub fn split(text: &str) -> Result<(QuickstartConfig, String)> {
    let mut table: toml::Table = text.parse().context("not valid TOML")?;
    let value = table
        .remove(CONFIG_KEY)
        .with_context(|| format!("the config has no [{CONFIG_KEY}] table"))?;
    let quickstart = QuickstartConfig::deserialize(value)
        .map_err(|e| anyhow::anyhow!("{CONFIG_KEY}: {}", e.message()))?;
    let rest = toml::to_string(&table).context("re-encode the learner's config")?;
    Ok((quickstart, rest))
}

impl QuickstartConfig {
    /// The simulated world.
    pub fn world(&self) -> WorldConfig {
        WorldConfig {
            docs: self.docs,
            dim: self.dim,
            candidates: self.candidates,
            ctr: self.ctr,
            bias_sd: self.bias_sd,
            weight_sd: self.weight_sd,
            step_ms: self.step_ms,
            drift_at: None,
            mean_delay_ms: self.mean_label_delay_ms,
        }
    }

    /// Checks the table against itself and the learner's `config`, and
    /// returns the arms.
    pub fn validate(&self, config: &Config) -> Result<Vec<Arm>, ConfigError> {
        let error = |key: &str, reason: String| ConfigError {
            key: format!("{CONFIG_KEY}.{key}"),
            reason,
        };
        self.world()
            .validate()
            .map_err(|e| error(&e.key, e.reason))?;
        if !matches!(config.source, SourceConfig::Channel) {
            return Err(ConfigError {
                key: "source.kind".into(),
                reason: "the quickstart pushes its samples: it must be \"channel\"".into(),
            });
        }
        if self.requests == 0 {
            return Err(error("requests", "must be > 0".into()));
        }
        if !(1..=self.candidates).contains(&self.shown) {
            return Err(error("shown", "must be in 1..=candidates".into()));
        }
        if !(1..=256).contains(&self.concurrency) {
            return Err(error("concurrency", "must be in 1..=256".into()));
        }
        if self.progress_every_ms == 0 || self.window_requests == 0 {
            let key = if self.progress_every_ms == 0 {
                "progress_every_ms"
            } else {
                "window_requests"
            };
            return Err(error(key, "must be > 0".into()));
        }
        // A wave of `concurrency` requests is joined at its last event
        // time, so a label can trail the newest sample by the cap plus a
        // wave.
        let disorder_ms = self.max_label_delay_ms + self.step_ms * self.concurrency as i64;
        if self.max_label_delay_ms < 0 || disorder_ms >= config.order.out_of_orderness_ms {
            return Err(error(
                "max_label_delay_ms",
                format!(
                    "must be >= 0 and, plus step_ms × concurrency ({disorder_ms} ms in all), \
                     below [order] out_of_orderness_ms ({}), or delayed labels arrive late",
                    config.order.out_of_orderness_ms
                ),
            ));
        }
        if self.arms.is_empty() {
            return Err(error("arms", "needs at least one arm".into()));
        }
        let mut arms: Vec<Arm> = Vec::with_capacity(self.arms.len());
        for (i, arm) in self.arms.iter().enumerate() {
            let key = format!("arms[{i}].version");
            let version = config
                .versions
                .iter()
                .find(|v| v.name == arm.version)
                .ok_or_else(|| error(&key, format!("{:?} is not in [[versions]]", arm.version)))?;
            if arms.iter().any(|a| a.version == arm.version) {
                return Err(error(&key, format!("{:?} has two arms", arm.version)));
            }
            let logistic = version.model == ModelName::Logistic;
            if logistic && version.dim != self.dim {
                return Err(error(
                    &key,
                    format!(
                        "{:?} has dim {}, the world's is {}",
                        arm.version, version.dim, self.dim
                    ),
                ));
            }
            arms.push(Arm {
                version: arm.version.clone(),
                policy: arm.policy,
                logistic,
            });
        }
        Ok(arms)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

    use super::*;

    const LEARNER: &str = r#"
[state]
dir = "/tmp/unused"
[source]
kind = "channel"
[order]
out_of_orderness_ms = 3000
reorder_capacity = 1000
[dead_letter]
path = "/tmp/unused.jsonl"
[[versions]]
name = "b"
model = "beta"
reward_label = "click"
[[versions]]
name = "l"
model = "logistic"
dim = 4
reward_label = "click"
"#;

    const QUICKSTART: &str = r#"
[quickstart]
seed = 1
requests = 10
docs = 50
candidates = 10
shown = 2
dim = 4
ctr = "high"
bias_sd = 0.5
weight_sd = 0.35
step_ms = 1
mean_label_delay_ms = 100
max_label_delay_ms = 1000
concurrency = 4
progress_every_ms = 1000
window_requests = 5
out = "/tmp/unused-out"
arms = [{ version = "b", policy = "thompson" }, { version = "l", policy = "greedy" }]
"#;

    fn checked(quickstart: &str) -> Result<Vec<Arm>, ConfigError> {
        let (q, rest) = split(&format!("{LEARNER}\n{quickstart}")).unwrap();
        let config = Config::from_toml(&rest).unwrap();
        q.validate(&config)
    }

    #[test]
    fn a_valid_table_gives_its_arms() {
        let arms = checked(QUICKSTART).unwrap();
        let got: Vec<_> = arms
            .iter()
            .map(|a| (a.version.as_str(), a.policy, a.logistic))
            .collect();
        assert_eq!(
            got,
            [("b", Policy::Thompson, false), ("l", Policy::Greedy, true)]
        );
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("shown = 2", "shown = 11", "quickstart.shown"),
            ("dim = 4", "dim = 5", "quickstart.arms[1].version"),
            (
                "max_label_delay_ms = 1000",
                "max_label_delay_ms = 2997",
                "quickstart.max_label_delay_ms",
            ),
            (
                "{ version = \"b\", policy = \"thompson\" }",
                "{ version = \"x\", policy = \"thompson\" }",
                "quickstart.arms[0].version",
            ),
            ("docs = 50", "docs = 1", "quickstart.docs"),
        ];
        for (from, to, key) in cases {
            let err = checked(&QUICKSTART.replace(from, to)).unwrap_err();
            assert_eq!(err.key, key, "{from} → {to}: {err}");
        }
    }

    #[test]
    fn unknown_keys_and_a_missing_table_are_refused() {
        let unknown = format!(
            "{LEARNER}\n{}",
            QUICKSTART.replace("seed = 1", "seed = 1\nsede = 2")
        );
        let err = split(&unknown).unwrap_err().to_string();
        assert!(err.contains("sede"), "{err}");
        assert!(split(LEARNER).is_err());
    }
}
