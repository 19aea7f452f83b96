//! Learner configs of the pipeline benches, written as the TOML a user
//! would write, so the engine runs with exactly the defaults of
//! `learner/src/config.rs` except where a bench says otherwise.

use std::path::Path;

use posterior_learner::config::Config;

use crate::workload::{LABEL, Model, VERSION};

/// Micro-batch policy of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batching {
    /// The config default: every sample is its own update
    /// (`max_samples = 1`).
    Single,
    /// The end-to-end tests' policy: up to 8 samples, or 1 positive, or
    /// 2 s of event-time age.
    Micro,
}

impl Batching {
    /// Short name for tables.
    pub fn name(self) -> &'static str {
        match self {
            Batching::Single => "batch 1",
            Batching::Micro => "micro (8 / 1 pos / 2 s)",
        }
    }

    fn toml(self) -> &'static str {
        match self {
            Batching::Single => "",
            Batching::Micro => "[batch]\nmax_samples = 8\nmax_positives = 1\nmax_age_ms = 2000\n",
        }
    }
}

/// What `[source]` says (the benches drive the engine themselves for
/// files; the Kafka runner reads it).
#[derive(Debug, Clone)]
pub enum SourceToml<'a> {
    /// A protobuf file.
    File(&'a Path),
    /// The `samples` topic of a broker.
    Kafka(&'a str),
}

/// Everything a bench config varies.
#[derive(Debug, Clone)]
pub struct BenchConfig<'a> {
    /// The version's model.
    pub model: Model,
    /// Micro-batch policy.
    pub batching: Batching,
    /// Where the state and dead-letter file live.
    pub dir: &'a Path,
    /// The source.
    pub source: SourceToml<'a>,
    /// `[state] checkpoint_every_records` (the learner's default is
    /// [`posterior_learner::config::DEFAULT_CHECKPOINT_EVERY_RECORDS`]).
    pub checkpoint_every_records: u64,
    /// De-duplication by sample id (window 60 s, 1 M ids) or off.
    pub dedup: bool,
}

impl BenchConfig<'_> {
    /// The validated learner config.
    ///
    /// # Panics
    /// When the generated TOML does not validate (a bug of the bench).
    pub fn build(&self) -> Config {
        let source = match &self.source {
            SourceToml::File(path) => format!(
                "kind = \"file\"\npath = \"{}\"\nformat = \"protobuf\"",
                path.display()
            ),
            SourceToml::Kafka(brokers) => {
                format!("kind = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"samples\"")
            }
        };
        let model = match self.model {
            Model::Beta => "model = \"beta\"".to_owned(),
            Model::Logistic { dim } => format!("model = \"logistic\"\ndim = {dim}"),
        };
        let dedup = if self.dedup {
            "[dedup]\nwindow_ms = 60000\nmax_ids = 1000000\n"
        } else {
            ""
        };
        let text = format!(
            r#"
[state]
dir = "{state}"
checkpoint_every_records = {every}

[source]
{source}

{batch}
{dedup}
[dead_letter]
path = "{dead}"

[[versions]]
name = "{VERSION}"
{model}
reward_label = "{LABEL}"
"#,
            state = self.dir.join("state").display(),
            every = self.checkpoint_every_records,
            batch = self.batching.toml(),
            dead = self.dir.join("dead-letters.jsonl").display(),
        );
        Config::from_toml(&text).unwrap_or_else(|e| panic!("bench config: {e}\n{text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configs_validate_with_the_learner_defaults() {
        let dir = Path::new("/tmp/x");
        let config = BenchConfig {
            model: Model::Logistic { dim: 32 },
            batching: Batching::Single,
            dir,
            source: SourceToml::File(Path::new("/tmp/x/samples.pb")),
            checkpoint_every_records: 100_000,
            dedup: false,
        }
        .build();
        let engine = config.engine();
        assert_eq!(engine.batch.max_samples, 1);
        assert_eq!(engine.out_of_orderness_ms, 5_000, "the config default");
        assert_eq!(
            config.publish_interval_ms(),
            posterior_learner::config::DEFAULT_PUBLISH_INTERVAL_MS,
            "the config default"
        );
        let micro = BenchConfig {
            model: Model::Beta,
            batching: Batching::Micro,
            source: SourceToml::Kafka("127.0.0.1:9092"),
            dedup: true,
            ..BenchConfig {
                model: Model::Beta,
                batching: Batching::Single,
                dir,
                source: SourceToml::File(dir),
                checkpoint_every_records: 10,
                dedup: false,
            }
        }
        .build()
        .engine();
        assert_eq!(micro.batch.max_samples, 8);
        assert!(micro.dedup.is_some());
    }
}
