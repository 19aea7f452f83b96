//! The learner's TOML configuration. Every struct denies unknown keys and
//! [`Config::validate`] checks values, so a bad file stops the process
//! before it opens any state, with a message naming the key.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use crate::batcher::BatchPolicy;
use crate::engine::EngineConfig;
use crate::file_source::Format;
use crate::posterior::{
    BetaPrior, CovarianceForm, Forgetting, LogisticPrior, MAX_DIM_DIAGONAL, MAX_DIM_FULL,
    ModelKind, ModelSpec, PosteriorError,
};
use crate::simulation::source::SimulatorConfig;
use crate::version::{RewardSpec, VersionSpec};

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where state lives.
    pub state: StateConfig,
    /// Where samples come from.
    pub source: SourceConfig,
    /// Event-time ordering.
    #[serde(default)]
    pub order: OrderConfig,
    /// Micro-batch triggers.
    #[serde(default)]
    pub batch: BatchConfig,
    /// De-duplication by `sample_id`; absent = off.
    pub dedup: Option<DedupConfig>,
    /// Where dead letters go.
    pub dead_letter: DeadLetterConfig,
    /// Where parameter updates are published; absent = nowhere (an
    /// embedded param-server attaches its channel in code).
    pub publish: Option<PublishConfig>,
    /// Savepoints; absent = none on shutdown, and `learner savepoint`
    /// needs a directory.
    pub savepoints: Option<SavepointConfig>,
    /// The versions present at start.
    #[serde(default)]
    pub versions: Vec<VersionConfig>,
    /// Where admin commands come from besides the in-process inbox;
    /// absent = the inbox only.
    pub control: Option<ControlConfig>,
    /// The restore of last resort (see `fallback`); absent = none.
    pub fallback: Option<FallbackConfig>,
    /// `GET /metrics` (Prometheus); absent = no endpoint.
    pub metrics: Option<crate::metrics::MetricsConfig>,
    /// The process's log lines on stderr.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[log]`: how the process writes its log lines (stderr, one event a
/// line, filtered by `RUST_LOG`, default `info`). Shared with the
/// param-server's config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    #[serde(default)]
    pub format: LogFormat,
}

/// `log.format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines: time, level, target, message, `key=value`
    /// fields.
    #[default]
    Text,
    /// One JSON object a line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields as top-level keys.
    Json,
}

/// `[fallback]`: where served parameters come from for a version with
/// neither live state nor savepoint.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackConfig {
    /// `[fallback.kafka]`: the `params` topic the param-servers are fed
    /// by, read to its end at start.
    pub kafka: Option<FallbackKafkaConfig>,
    /// `[fallback.param_server]`: a param-server's gRPC endpoint; each
    /// stateless version is read from a `WatchParams` snapshot. At most
    /// one of the two.
    pub param_server: Option<FallbackParamServerConfig>,
}

/// `[fallback.param_server]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackParamServerConfig {
    /// The server's URL, e.g. `http://10.0.0.7:50051` (plaintext; its
    /// `ParamService` needs no token).
    pub endpoint: String,
    /// How long connecting and reading one version's snapshot may take.
    #[serde(default = "default_fallback_timeout")]
    pub request_timeout_ms: u64,
    /// A file holding a token of the server's admin service (read role is
    /// enough): with it, a learner without any state also seeds the
    /// versions created at run time, which `ListVersions` names; without
    /// it, only the config's.
    pub token_file: Option<PathBuf>,
}

/// `[fallback.kafka]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FallbackKafkaConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// The params topic.
    #[serde(default = "default_params_topic")]
    pub topic: String,
    /// How long reading the topic to its end may take.
    #[serde(default = "default_fallback_timeout")]
    pub request_timeout_ms: u64,
}

fn default_fallback_timeout() -> u64 {
    120_000
}

/// Largest request timeout of the learner's Kafka and param-server
/// clients, ms (ten minutes, as the param-server's).
pub const MAX_REQUEST_TIMEOUT_MS: u64 = 600_000;

/// `[control]`: the Kafka `control` topic every learner reads whole.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Bootstrap servers.
    pub brokers: String,
    /// Topic of `posterior.v1.ControlCommand` records; partition 0 is read.
    #[serde(default = "default_control_topic")]
    pub topic: String,
    /// Metadata and fetch timeout.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
}

fn default_control_topic() -> String {
    "control".into()
}

/// `[savepoints]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavepointConfig {
    /// Directory holding one sub-directory per savepoint.
    pub dir: PathBuf,
    /// Take one when a run ends (end of a file, `--until-end`, SIGTERM).
    #[serde(default)]
    pub on_shutdown: bool,
    /// When the live state is missing at start, restore the newest
    /// verified savepoint (default on).
    #[serde(default = "yes")]
    pub restore_when_missing: bool,
    /// Keep at most this many of this learner's own savepoints (those
    /// taken on shutdown, by signal or by `learner savepoint`, of its
    /// partitions): after each one, older ones beyond it are deleted.
    /// Savepoints asked for by an admin command (named by its id, what
    /// `RollbackVersion` refers to) and other learners' are never
    /// deleted. Absent: keep every savepoint.
    pub keep: Option<usize>,
}

/// `[publish]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishConfig {
    /// Coalescing window: changed keys are published at most this often
    /// (wall clock), and at every checkpoint. Unset:
    /// [`DEFAULT_PUBLISH_INTERVAL_MS`], or
    /// [`DEFAULT_KAFKA_PUBLISH_INTERVAL_MS`] with `kafka` (see
    /// [`Config::publish_interval_ms`]).
    pub interval_ms: Option<u64>,
    /// The Kafka `params` topic.
    pub kafka: Option<KafkaSinkConfig>,
}

/// The publish interval in process (an embedded param-server, or no
/// sink): a publish there is a send on a channel, and freshness is what
/// the interval costs — from a sample entering the learner to its update
/// on `WatchParams`, p99 14–32 ms at 10 ms and 106–123 ms at 100 ms in a
/// live stream (BENCHMARKS.md, "Freshness from a sample to
/// `WatchParams`"). A short interval is also cheaper for the learner: a
/// publish reads each changed key's slot and state again, and after 2 ms
/// they are still in the caches, after 10 ms mostly not (bench 1, Beta,
/// +2.5 to +6.3 % at 2 ms against 10; 1 ms gains nothing more; BENCHMARKS.md,
/// "Publishing every 2 ms").
pub const DEFAULT_PUBLISH_INTERVAL_MS: u64 = 2;

/// The publish interval to the `params` topic, where every publish of a
/// key is a record that every replica reads: a key updated often is
/// coalesced into at most ten records a second.
pub const DEFAULT_KAFKA_PUBLISH_INTERVAL_MS: u64 = 100;

/// A topic the learner produces to: `[publish.kafka]`, and
/// `[dead_letter]` with `kind = "kafka"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSinkConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic (`params` for `[publish.kafka]`).
    #[serde(default = "default_params_topic")]
    pub topic: String,
    /// A checkpoint waits at most this long for deliveries, then fails.
    #[serde(default = "default_flush_timeout")]
    pub flush_timeout_ms: u64,
}

fn default_params_topic() -> String {
    "params".into()
}
fn default_flush_timeout() -> u64 {
    30_000
}

/// `[state]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// RocksDB directory of the live state.
    pub dir: PathBuf,
    /// Checkpoint after this many records (≥ 1; default
    /// [`DEFAULT_CHECKPOINT_EVERY_RECORDS`]). A checkpoint that falls due
    /// while the previous one's write runs is put off until the write
    /// completes (it then covers more records). It bounds what a restart
    /// reads again; each checkpoint costs the ingesting thread a pass over
    /// the keys changed since the last.
    #[serde(default = "default_checkpoint_records")]
    pub checkpoint_every_records: u64,
    /// … or after this many ms of wall clock with records since the last
    /// one (0 = off; file, stdin and simulator runs checkpoint by records
    /// only).
    #[serde(default = "default_checkpoint_ms")]
    pub checkpoint_every_ms: u64,
    /// While a due checkpoint is put off (the previous write still runs),
    /// changed keys beyond this many have their states taken ahead of it,
    /// a share at a time, so the delta that blocks ingestion stays near
    /// this size however long the write takes (see
    /// [`crate::runner::Checkpointer::store_ahead`]). A key changed again before the
    /// checkpoint is then encoded twice. Default
    /// [`DEFAULT_STORE_AHEAD_ABOVE`].
    #[serde(default = "default_store_ahead_above")]
    pub store_ahead_above: usize,
}

/// Default of `[state] store_ahead_above`: a delta of ~32 k keys at
/// d = 32 takes the ingesting thread ~10 ms on this project's machine.
pub const DEFAULT_STORE_AHEAD_ABOVE: usize = 32_768;

fn default_store_ahead_above() -> usize {
    DEFAULT_STORE_AHEAD_ABOVE
}

/// Default of `[state] checkpoint_every_records`: about a second of input
/// at full speed on one core. At 100 000 (the default before) the Kafka
/// runner of bench 3 read 0.66–0.85× the records per second it reads at
/// 1 000 000 (BENCHMARKS.md); the 10 s wall-clock trigger still bounds a
/// slow stream's replay.
pub const DEFAULT_CHECKPOINT_EVERY_RECORDS: u64 = 1_000_000;

fn default_checkpoint_records() -> u64 {
    DEFAULT_CHECKPOINT_EVERY_RECORDS
}
fn default_checkpoint_ms() -> u64 {
    10_000
}

/// `[source]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum SourceConfig {
    /// A file read to its end (a bounded input).
    File {
        /// Path of the file.
        path: PathBuf,
        /// `jsonl` or `protobuf` (length-delimited).
        format: Format,
    },
    /// Standard input, to its end.
    Stdin {
        /// `jsonl` or `protobuf`.
        format: Format,
    },
    /// Kafka partitions of the samples topic (protobuf records).
    Kafka(KafkaConfig),
    /// Samples drawn from a seeded simulated world, sample t at offset t
    /// of partition 0 (see `simulation::source`): bounded by `samples`,
    /// or until SIGTERM.
    Simulator(SimulatorConfig),
    /// Samples pushed by the process hosting the learner, e.g. the
    /// simulated sample joiner of `learner quickstart`; record i of a run
    /// has offset `restored next offset + i` of partition 0. A plain
    /// `learner run` refuses it: nothing would push.
    Channel,
}

/// `[order]`; a key left out keeps its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrderConfig {
    /// Allowed out-of-orderness within a partition.
    pub out_of_orderness_ms: i64,
    /// Soft bound of the reorder buffer, in samples.
    pub reorder_capacity: usize,
}

impl Default for OrderConfig {
    fn default() -> Self {
        Self {
            out_of_orderness_ms: 5_000,
            reorder_capacity: 1_000_000,
        }
    }
}

/// `[batch]`; a key left out keeps its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Apply a key's batch at this many samples.
    pub max_samples: usize,
    /// … or at this many positives (0 = off).
    pub max_positives: usize,
    /// … or when its oldest sample is this much older than the newest
    /// released (0 = off).
    pub max_age_ms: i64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_samples: 1,
            max_positives: 0,
            max_age_ms: 0,
        }
    }
}

/// `[dedup]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DedupConfig {
    /// Window in event-time ms.
    pub window_ms: i64,
    /// Most ids held.
    pub max_ids: usize,
}

/// `[dead_letter]`: `kind = "file"` (the default, so a table with only
/// `path` is a file) or `kind = "kafka"` with `brokers`, `topic` (default
/// `dead-letters`) and `flush_timeout_ms`. See `deadletter_sink` for the
/// delivery guarantee of each.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DeadLetterTable")]
pub enum DeadLetterConfig {
    /// A JSONL file, exactly once.
    File {
        /// The file dead letters are appended to.
        path: PathBuf,
    },
    /// A Kafka topic, at least once, keyed `partition/offset`.
    Kafka(KafkaSinkConfig),
}

impl DeadLetterConfig {
    /// The file of the `file` kind.
    pub fn path(&self) -> Option<&std::path::Path> {
        match self {
            Self::File { path } => Some(path),
            Self::Kafka(_) => None,
        }
    }
}

/// Which sink `[dead_letter]` names.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
enum DeadLetterKind {
    #[default]
    File,
    Kafka,
}

/// `[dead_letter]` as written; [`DeadLetterConfig`] is what it means.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeadLetterTable {
    #[serde(default)]
    kind: DeadLetterKind,
    path: Option<PathBuf>,
    brokers: Option<String>,
    topic: Option<String>,
    flush_timeout_ms: Option<u64>,
}

impl TryFrom<DeadLetterTable> for DeadLetterConfig {
    type Error = String;

    fn try_from(t: DeadLetterTable) -> Result<Self, String> {
        match t.kind {
            DeadLetterKind::File => {
                if t.brokers.is_some() || t.topic.is_some() || t.flush_timeout_ms.is_some() {
                    return Err("dead_letter: brokers, topic and flush_timeout_ms are for \
                                kind = \"kafka\""
                        .into());
                }
                let path = t
                    .path
                    .ok_or("dead_letter.path: required for kind = \"file\"")?;
                Ok(Self::File { path })
            }
            DeadLetterKind::Kafka => {
                if t.path.is_some() {
                    return Err("dead_letter.path: is for kind = \"file\"".into());
                }
                Ok(Self::Kafka(KafkaSinkConfig {
                    brokers: t
                        .brokers
                        .ok_or("dead_letter.brokers: required for kind = \"kafka\"")?,
                    topic: t.topic.unwrap_or_else(|| "dead-letters".into()),
                    flush_timeout_ms: t.flush_timeout_ms.unwrap_or_else(default_flush_timeout),
                }))
            }
        }
    }
}

/// A `[[versions]]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionConfig {
    /// Unique name.
    pub name: String,
    /// `beta`, `logistic`.
    pub model: ModelName,
    /// Beta prior α₀ (beta).
    #[serde(default = "one")]
    pub alpha0: f64,
    /// Beta prior β₀ (beta).
    #[serde(default = "one")]
    pub beta0: f64,
    /// Context dimension (logistic).
    #[serde(default)]
    pub dim: usize,
    /// `diagonal` or `full` (logistic).
    #[serde(default = "diagonal")]
    pub covariance: CovarianceForm,
    /// Prior mean, `dim` entries; absent = zeros (logistic).
    #[serde(default)]
    pub prior_mean: Vec<f64>,
    /// Prior precision of every coordinate (logistic).
    #[serde(default = "one")]
    pub prior_precision: f64,
    /// The reward label.
    pub reward_label: String,
    /// Positive when the label is ≥ this.
    #[serde(default = "half")]
    pub reward_threshold: f64,
    /// Forgetting half-life (event-time ms); absent = off.
    pub forgetting_half_life_ms: Option<i64>,
    /// Use the samples' weights.
    #[serde(default = "yes")]
    pub use_sample_weight: bool,
}

/// Model names in version tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelName {
    /// Beta–Bernoulli.
    Beta,
    /// Logistic Thompson sampling.
    Logistic,
}

fn one() -> f64 {
    1.0
}
fn half() -> f64 {
    0.5
}
fn yes() -> bool {
    true
}
fn diagonal() -> CovarianceForm {
    CovarianceForm::Diagonal
}

/// A config value that is out of range, named by its key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Dotted key, e.g. `versions[1].prior_precision`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

impl ConfigError {
    /// The error of a TOML parse of `text`, named by the dotted key at its
    /// position (`config` for the document's own, e.g. a missing table).
    pub fn parse(text: &str, error: &toml::de::Error) -> Self {
        Self {
            key: error
                .span()
                .and_then(|span| crate::overrides::key_at(text, span))
                .unwrap_or_else(|| "config".to_owned()),
            reason: error.message().trim_end().to_owned(),
        }
    }
}

impl Config {
    /// Parses and validates a TOML document.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::parse(text, &e))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // Broker and server request timeouts: librdkafka takes them as a
        // 32-bit count of milliseconds (a larger one wraps to nothing), and
        // ten minutes is longer than any metadata or fetch should wait.
        let check_timeout = |key: &str, ms: u64| {
            if (1..=MAX_REQUEST_TIMEOUT_MS).contains(&ms) {
                Ok(())
            } else {
                Err(ConfigError {
                    key: key.to_owned(),
                    reason: format!("must be in 1..={MAX_REQUEST_TIMEOUT_MS}"),
                })
            }
        };
        let bad = |key: &str, reason: &str| {
            Err(ConfigError {
                key: key.to_owned(),
                reason: reason.to_owned(),
            })
        };
        if self.state.checkpoint_every_records == 0 {
            return bad("state.checkpoint_every_records", "must be >= 1");
        }
        if let Some(Err(reason)) = self.metrics.as_ref().map(|m| m.listen_addr()) {
            return bad("metrics.listen", &reason);
        }
        if let SourceConfig::Kafka(kafka) = &self.source {
            if kafka.brokers.trim().is_empty() {
                return bad("source.brokers", "must name at least one broker");
            }
            if kafka.topic.is_empty() {
                return bad("source.topic", "must not be empty");
            }
            if kafka.partitions.as_ref().is_some_and(Vec::is_empty) {
                return bad(
                    "source.partitions",
                    "must list a partition, or be left out for all",
                );
            }
            check_timeout("source.request_timeout_ms", kafka.request_timeout_ms)?;
            // A caught-up partition holds the watermark back until it is
            // idle, so a throttled learner may consume nothing for that
            // long without being stuck.
            if kafka.stall_timeout_ms > 0
                && kafka.idle_timeout_ms > 0
                && kafka.stall_timeout_ms <= kafka.idle_timeout_ms
            {
                return bad(
                    "source.stall_timeout_ms",
                    &format!(
                        "must exceed source.idle_timeout_ms ({}), or be 0 (off)",
                        kafka.idle_timeout_ms
                    ),
                );
            }
            if let Some(key) = kafka
                .properties
                .keys()
                .find(|k| RESERVED_PROPERTIES.contains(&k.as_str()))
            {
                return bad(
                    &format!("source.properties.{key:?}"),
                    "is set by the learner (its delivery guarantee depends on it)",
                );
            }
        }
        if let Some(kafka) = self.publish.as_ref().and_then(|p| p.kafka.as_ref()) {
            kafka.validate("publish.kafka")?;
        }
        if let DeadLetterConfig::Kafka(kafka) = &self.dead_letter {
            kafka.validate("dead_letter")?;
        }
        if let Some(fallback) = &self.fallback {
            if fallback.kafka.is_some() && fallback.param_server.is_some() {
                return bad(
                    "fallback",
                    "give one of [fallback.kafka] and [fallback.param_server], not both",
                );
            }
            if let Some(server) = &fallback.param_server {
                if !(server.endpoint.starts_with("http://")
                    || server.endpoint.starts_with("https://"))
                {
                    return bad(
                        "fallback.param_server.endpoint",
                        "must be a URL such as http://host:port",
                    );
                }
                check_timeout(
                    "fallback.param_server.request_timeout_ms",
                    server.request_timeout_ms,
                )?;
            }
            if let Some(kafka) = &fallback.kafka {
                check_timeout(
                    "fallback.kafka.request_timeout_ms",
                    kafka.request_timeout_ms,
                )?;
            }
        }
        if let Some(control) = &self.control {
            check_timeout("control.request_timeout_ms", control.request_timeout_ms)?;
        }
        if self.savepoints.as_ref().and_then(|s| s.keep) == Some(0) {
            return bad(
                "savepoints.keep",
                "must be >= 1 (leave it out to keep every savepoint)",
            );
        }
        if self.order.out_of_orderness_ms < 0 {
            return bad("order.out_of_orderness_ms", "must be >= 0");
        }
        if self.order.reorder_capacity == 0 {
            return bad("order.reorder_capacity", "must be >= 1");
        }
        if self.batch.max_samples == 0 {
            return bad("batch.max_samples", "must be >= 1");
        }
        if self.batch.max_age_ms < 0 {
            return bad("batch.max_age_ms", "must be >= 0");
        }
        if let Some(d) = &self.dedup {
            if d.window_ms <= 0 {
                return bad("dedup.window_ms", "must be > 0");
            }
            if d.max_ids == 0 {
                return bad("dedup.max_ids", "must be > 0");
            }
        }
        let mut names = std::collections::HashSet::new();
        for (i, v) in self.versions.iter().enumerate() {
            if !names.insert(v.name.as_str()) {
                return bad(&format!("versions[{i}].name"), "duplicate version name");
            }
            v.spec().map_err(|e| ConfigError {
                key: format!("versions[{i}]"),
                reason: e.to_string(),
            })?;
        }
        if let SourceConfig::Simulator(simulator) = &self.source {
            simulator.validate(&self.version_specs())?;
        }
        Ok(())
    }

    /// The publishing coalescing window in ms: `[publish] interval_ms`,
    /// by default [`DEFAULT_KAFKA_PUBLISH_INTERVAL_MS`] when the learner
    /// publishes to a topic and [`DEFAULT_PUBLISH_INTERVAL_MS`] when only
    /// in process.
    pub fn publish_interval_ms(&self) -> u64 {
        let publish = self.publish.as_ref();
        publish.and_then(|p| p.interval_ms).unwrap_or_else(|| {
            if publish.is_some_and(|p| p.kafka.is_some()) {
                DEFAULT_KAFKA_PUBLISH_INTERVAL_MS
            } else {
                DEFAULT_PUBLISH_INTERVAL_MS
            }
        })
    }

    /// The engine's tuning.
    pub fn engine(&self) -> EngineConfig {
        EngineConfig {
            out_of_orderness_ms: self.order.out_of_orderness_ms,
            reorder_capacity: self.order.reorder_capacity,
            dedup: self.dedup.as_ref().map(|d| (d.window_ms, d.max_ids)),
            batch: BatchPolicy {
                max_samples: self.batch.max_samples,
                max_positives: self.batch.max_positives,
                max_age_ms: (self.batch.max_age_ms > 0).then_some(self.batch.max_age_ms),
            },
        }
    }

    /// The versions' specs.
    pub fn version_specs(&self) -> Vec<VersionSpec> {
        self.versions
            .iter()
            .map(|v| v.spec().expect("validated at load"))
            .collect()
    }
}

impl KafkaSinkConfig {
    /// Checks the values; errors name the key under `table`.
    fn validate(&self, table: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: &str| ConfigError {
            key: format!("{table}.{key}"),
            reason: reason.to_owned(),
        };
        if self.brokers.trim().is_empty() {
            return Err(bad("brokers", "must name at least one broker"));
        }
        if self.topic.is_empty() {
            return Err(bad("topic", "must not be empty"));
        }
        if self.flush_timeout_ms == 0 {
            return Err(bad("flush_timeout_ms", "must be >= 1"));
        }
        Ok(())
    }
}

impl VersionConfig {
    /// The version's spec; errors name the field.
    pub fn spec(&self) -> Result<VersionSpec, PosteriorError> {
        let kind = match self.model {
            ModelName::Beta => ModelKind::Beta(BetaPrior::new(self.alpha0, self.beta0)?),
            ModelName::Logistic => {
                // Checked before the prior mean is made (a `dim` of 2⁶²
                // must be an error, not an allocation).
                let max_dim = match self.covariance {
                    CovarianceForm::Diagonal => MAX_DIM_DIAGONAL,
                    CovarianceForm::Full => MAX_DIM_FULL,
                };
                if self.dim > max_dim {
                    return Err(PosteriorError::OutOfRange {
                        field: "dim",
                        value: self.dim as f64,
                        reason: "must be in 1..=4096 (diagonal) or 1..=64 (full)",
                    });
                }
                let mean = if self.prior_mean.is_empty() {
                    vec![0.0; self.dim]
                } else if self.prior_mean.len() == self.dim {
                    self.prior_mean.clone()
                } else {
                    return Err(PosteriorError::WrongDimension {
                        field: "prior_mean",
                        expected: self.dim,
                        got: self.prior_mean.len(),
                    });
                };
                ModelKind::Logistic(LogisticPrior::new(
                    self.covariance,
                    mean,
                    self.prior_precision,
                )?)
            }
        };
        let spec = VersionSpec {
            name: self.name.clone(),
            model: ModelSpec {
                kind,
                forgetting: self
                    .forgetting_half_life_ms
                    .map(Forgetting::new)
                    .transpose()?,
            },
            reward: RewardSpec {
                label: self.reward_label.clone(),
                threshold: self.reward_threshold,
            },
            use_sample_weight: self.use_sample_weight,
        };
        // The checkpoint stores the registry in its wire form and a restore
        // reads it back with the admin API's checks (an empty name or
        // label, a NaN threshold): what they refuse must be refused here,
        // before a first run writes a state that cannot be restored.
        VersionSpec::try_from(posterior_proto::v1::VersionSpec::from(&spec))?;
        Ok(spec)
    }
}

/// Where a partition without a checkpointed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartPosition {
    /// The oldest record the broker holds.
    #[default]
    Earliest,
    /// Records produced after the learner starts.
    Latest,
}

/// `[source]` with `kind = "kafka"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The samples topic.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Partitions this instance owns; absent = all of the topic's.
    pub partitions: Option<Vec<u32>>,
    /// Consumer group for the informational offset commits.
    #[serde(default = "default_group")]
    pub group_id: String,
    /// Start of partitions the checkpoint has no offset for.
    #[serde(default)]
    pub start: StartPosition,
    /// A partition that is caught up and delivers nothing for this long
    /// (wall clock) is marked idle and stops holding the watermark back
    /// (see `watermark`). 0 = never.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_ms: u64,
    /// Broker metadata and watermark queries time out after this long.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// Liveness watchdog: when the learner's next offsets make no progress
    /// for this long (wall clock) while some partition has records the
    /// learner has not consumed (lag > 0 against the last high watermarks
    /// read from the broker), the process logs an error and exits with
    /// [`crate::watchdog::STALL_EXIT_CODE`], without a checkpoint. 0 = off.
    /// Must exceed `idle_timeout_ms` (see `watchdog`).
    #[serde(default = "default_stall_timeout")]
    pub stall_timeout_ms: u64,
    /// Extra librdkafka properties (e.g. `fetch.max.bytes`). The ones that
    /// carry the delivery guarantee are refused.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_topic() -> String {
    "samples".into()
}
fn default_group() -> String {
    "posterior-learner".into()
}
fn default_idle_timeout() -> u64 {
    30_000
}
fn default_request_timeout() -> u64 {
    10_000
}
fn default_stall_timeout() -> u64 {
    60_000
}

/// librdkafka properties every Posterior consumer starts from (the
/// learner's samples source, control and fallback readers, the
/// param-server's replicas); configured properties override them.
///
/// - `fetch.queue.backoff.ms`: how long librdkafka postpones a partition's
///   next fetch once its local queue is over `queued.min.messages` or
///   `queued.max.messages.kbytes`. Its default, 1000 ms, starves a
///   consumer that drains the queue faster than that: the learner applies
///   a full 64 MB queue of d = 32 samples in about half a second, then
///   waited with nothing to read (bench 3 in BENCHMARKS.md: 113 k
///   records/s with the process 58 % idle). 10 ms costs at most a hundred
///   queue checks per partition and second while the queue is full.
/// - `fetch.wait.max.ms`: longest a fetch waits on the broker for new
///   records (default 500 ms); a resumed partition (backpressure) or a
///   fresh record is delivered within this. On the tests' broker a live
///   stream's records reach the consumer about this late, not as soon as
///   they arrive: from a sample produced to its update on a replica's
///   `WatchParams`, p50 was 103–106 ms at 100 ms and 34–47 ms at 10 ms
///   (BENCHMARKS.md, "Freshness from a sample to `WatchParams`"). At 10 ms
///   an idle topic costs a hundred small fetches per second and broker; a
///   catch-up, whose fetches find records waiting, does not notice.
pub const CONSUMER_DEFAULTS: [(&str, &str); 2] = [
    ("fetch.queue.backoff.ms", "10"),
    ("fetch.wait.max.ms", "10"),
];

/// librdkafka properties of the learner's producers (the `params` topic,
/// dead letters, control commands): every replica acknowledges a record
/// before it counts as delivered; a batch waits at most 5 ms for more
/// records (freshness through Kafka pays it once per publish); and the
/// producer is idempotent, so a retried request never lands after a later
/// one (a compacted `params` topic keeps a key's last record by offset,
/// which must be its newest sequence number).
pub const PRODUCER_SETTINGS: [(&str, &str); 3] = [
    ("acks", "all"),
    ("linger.ms", "5"),
    ("enable.idempotence", "true"),
];

/// librdkafka properties the source sets itself because the delivery
/// guarantee depends on them (`isolation.level`: an aborted transaction's
/// samples are never applied).
pub const RESERVED_PROPERTIES: [&str; 6] = [
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "enable.partition.eof",
    "isolation.level",
    "bootstrap.servers",
];

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[state]
dir = "/tmp/state"

[source]
kind = "file"
path = "samples.jsonl"
format = "jsonl"

[dead_letter]
path = "dead.jsonl"

[[versions]]
name = "ctr-beta"
model = "beta"
reward_label = "click"

[[versions]]
name = "ctr-logistic"
model = "logistic"
dim = 3
reward_label = "click"
forgetting_half_life_ms = 3600000
"#;

    #[test]
    fn a_good_file_loads() {
        let config = Config::from_toml(GOOD).unwrap();
        let specs = config.version_specs();
        assert_eq!(specs.len(), 2);
        assert_eq!(specs[1].model.kind.dim(), 3);
        assert_eq!(config.engine().batch.max_samples, 1);
    }

    #[test]
    fn the_publish_interval_defaults_by_sink() {
        let interval = |publish: &str| {
            Config::from_toml(&format!("{GOOD}\n{publish}"))
                .unwrap()
                .publish_interval_ms()
        };
        assert_eq!(interval(""), DEFAULT_PUBLISH_INTERVAL_MS);
        assert_eq!(interval("[publish]\n"), DEFAULT_PUBLISH_INTERVAL_MS);
        let topic = "[publish.kafka]\nbrokers = \"127.0.0.1:9\"\n";
        assert_eq!(
            interval(&format!("[publish]\n{topic}")),
            DEFAULT_KAFKA_PUBLISH_INTERVAL_MS
        );
        assert_eq!(
            interval(&format!("[publish]\ninterval_ms = 25\n{topic}")),
            25
        );
        assert_eq!(interval("[publish]\ninterval_ms = 250\n"), 250);
    }

    #[test]
    fn bad_files_name_the_key() {
        let cases = [
            (
                GOOD.replace("[dead_letter]", "[dead_letter]\ncolour = 1"),
                "colour",
            ),
            (
                GOOD.replace("dim = 3", "dim = 3\nprior_precision = -1"),
                "versions[1]",
            ),
            (GOOD.replace("dim = 3", "dim = 0"), "dim"),
            // Refused before a prior mean of that size is made.
            (GOOD.replace("dim = 3", "dim = 4611686018427387904"), "dim"),
            // What a restore would refuse in the stored registry is refused
            // here, before a first run stores it.
            (
                GOOD.replace("dim = 3", "dim = 3\nreward_threshold = nan"),
                "reward_threshold",
            ),
            (
                GOOD.replace("name = \"ctr-beta\"", "name = \"\""),
                "versions[0]",
            ),
            (
                format!("{GOOD}\n[savepoints]\ndir = \"sp\"\nkeep = 0\n"),
                "savepoints.keep",
            ),
            (
                GOOD.replace("name = \"ctr-logistic\"", "name = \"ctr-beta\""),
                "versions[1].name",
            ),
            (
                format!("{GOOD}\n[batch]\nmax_samples = 0\nmax_positives = 0\nmax_age_ms = 0\n"),
                "batch.max_samples",
            ),
            (
                GOOD.replace("path = \"dead.jsonl\"", "kind = \"kafka\""),
                "dead_letter.brokers",
            ),
            (
                GOOD.replace("path = \"dead.jsonl\"", "kind = \"kafka\"\nbrokers = \" \""),
                "dead_letter.brokers",
            ),
            (
                GOOD.replace("path = \"dead.jsonl\"", "topic = \"dead\""),
                "kind = \"kafka\"",
            ),
            (
                GOOD.replace(SOURCE, &simulator("[\"ctr-beta\", \"other\"]", 3)),
                "source.versions[1]",
            ),
            (
                GOOD.replace(SOURCE, &simulator("[\"ctr-logistic\"]", 4)),
                "source.versions[0]",
            ),
            (
                GOOD.replace(SOURCE, &simulator("[\"ctr-beta\"]", 0)),
                "source.dim",
            ),
            (
                GOOD.replace("[dead_letter]", "[dead_letter]\ncolour = 1"),
                "dead_letter.colour: unknown field",
            ),
            (
                GOOD.replace(
                    "dir = \"/tmp/state\"",
                    "dir = \"/tmp/state\"\ncheckpoint_every_records = \"x\"",
                ),
                "state.checkpoint_every_records: invalid type",
            ),
            (
                GOOD.replace("dim = 3", "dim = 3.5"),
                "versions[1].dim: invalid type",
            ),
            (
                GOOD.replace(
                    "reward_label = \"click\"\n\n",
                    "reward_label = \"click\"\nmodle = 1\n\n",
                ),
                "versions[0].modle: unknown field",
            ),
            (
                format!("{GOOD}\n[dedup]\nwindow_ms = 1\nmax_ids = 0\n"),
                "dedup.max_ids",
            ),
            // librdkafka would wrap this to 0 ms.
            (
                GOOD.replace(
                    SOURCE,
                    "kind = \"kafka\"\nbrokers = \"b:9092\"\nrequest_timeout_ms = 4294967296",
                ),
                "source.request_timeout_ms: must be in 1..=600000",
            ),
            (
                format!("{GOOD}\n[control]\nbrokers = \"b:9092\"\nrequest_timeout_ms = 0\n"),
                "control.request_timeout_ms",
            ),
            // The key as this config spells it (the world calls it
            // `mean_delay_ms`).
            (
                GOOD.replace(
                    SOURCE,
                    &format!(
                        "{}\nmean_label_delay_ms = -1.0",
                        simulator("[\"ctr-beta\"]", 3)
                    ),
                ),
                "source.mean_label_delay_ms",
            ),
            (
                GOOD.replace("[state]\ndir = \"/tmp/state\"\n", ""),
                "config: missing field `state`",
            ),
        ];
        for (text, needle) in cases {
            let err = Config::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(needle), "{err} lacks {needle}");
        }
    }

    const SOURCE: &str = "kind = \"file\"\npath = \"samples.jsonl\"\nformat = \"jsonl\"";

    fn simulator(versions: &str, dim: usize) -> String {
        format!("kind = \"simulator\"\nseed = 7\nversions = {versions}\ndim = {dim}")
    }

    #[test]
    fn the_log_format_is_text_json_or_an_error_naming_the_key() {
        assert_eq!(Config::from_toml(GOOD).unwrap().log.format, LogFormat::Text);
        let json = Config::from_toml(&format!("{GOOD}\n[log]\nformat = \"json\"\n")).unwrap();
        assert_eq!(json.log.format, LogFormat::Json);
        let err = Config::from_toml(&format!("{GOOD}\n[log]\nformat = \"xml\"\n")).unwrap_err();
        assert_eq!(err.key, "log.format", "{err}");
        assert!(err.reason.contains("expected `text` or `json`"), "{err}");
        let err = Config::from_toml(&format!("{GOOD}\n[log]\nlevel = \"info\"\n")).unwrap_err();
        assert!(
            err.to_string().contains("log.level: unknown field"),
            "{err}"
        );
    }

    fn kafka(extra: &str) -> String {
        GOOD.replace(
            SOURCE,
            &format!("kind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\n{extra}"),
        )
    }

    #[test]
    fn the_stall_timeout_defaults_to_a_minute_and_must_exceed_the_idle_timeout() {
        let timeouts = |text: &str| match Config::from_toml(text).map(|c| c.source) {
            Ok(SourceConfig::Kafka(k)) => Ok((k.stall_timeout_ms, k.idle_timeout_ms)),
            Ok(other) => panic!("{other:?}"),
            Err(err) => Err(err),
        };
        assert_eq!(timeouts(&kafka("")).unwrap(), (60_000, 30_000));
        assert_eq!(
            timeouts(&kafka("stall_timeout_ms = 0")).unwrap(),
            (0, 30_000)
        );
        assert_eq!(
            timeouts(&kafka("stall_timeout_ms = 2000\nidle_timeout_ms = 0")).unwrap(),
            (2_000, 0)
        );
        let err = timeouts(&kafka("stall_timeout_ms = 30000")).unwrap_err();
        assert_eq!(err.key, "source.stall_timeout_ms", "{err}");
        assert!(err.reason.contains("idle_timeout_ms (30000)"), "{err}");
    }

    #[test]
    fn a_partial_order_or_batch_table_keeps_the_other_defaults() {
        let text = format!("{GOOD}\n[batch]\nmax_samples = 8\n[order]\nreorder_capacity = 10\n");
        let config = Config::from_toml(&text).unwrap();
        assert_eq!((config.batch.max_samples, config.batch.max_age_ms), (8, 0));
        assert_eq!(
            (
                config.order.reorder_capacity,
                config.order.out_of_orderness_ms
            ),
            (10, 5_000)
        );
    }

    #[test]
    fn a_simulator_source_loads() {
        let text = GOOD.replace(SOURCE, &simulator("[\"ctr-beta\", \"ctr-logistic\"]", 3));
        let config = Config::from_toml(&text).unwrap();
        let SourceConfig::Simulator(simulator) = &config.source else {
            panic!("{:?}", config.source);
        };
        assert_eq!((simulator.seed, simulator.samples), (7, None));
        assert_eq!(
            (simulator.label.as_str(), simulator.candidates),
            ("click", 10)
        );
    }

    #[test]
    fn dead_letters_go_to_a_file_or_a_topic() {
        let text = GOOD.replace(
            "path = \"dead.jsonl\"",
            "kind = \"kafka\"\nbrokers = \"127.0.0.1:9092\"",
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.dead_letter,
            DeadLetterConfig::Kafka(KafkaSinkConfig {
                brokers: "127.0.0.1:9092".into(),
                topic: "dead-letters".into(),
                flush_timeout_ms: 30_000,
            })
        );
        assert_eq!(config.dead_letter.path(), None);
        // A table with only `path` is the file kind, as before kinds.
        let file = Config::from_toml(GOOD).unwrap().dead_letter;
        assert_eq!(file.path(), Some(std::path::Path::new("dead.jsonl")));
    }
}
