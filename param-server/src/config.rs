//! The param-server's TOML configuration, validated before any socket is
//! bound. Versions use the learner's `[[versions]]` tables, field for
//! field, so one file can describe both.
//!
//! ```toml
//! listen = "127.0.0.1:50051"
//! # Updates a watcher may fall behind by before it must resync.
//! watch_buffer = 4096
//!
//! [limits]
//! max_request_bytes = 4194304
//! max_response_bytes = 67108864
//! max_docs_per_request = 10000
//! max_watchers_per_version = 64
//! watch_stream_events = 256
//! max_concurrent_requests_per_connection = 256
//! max_streams_per_connection = 512
//! request_timeout_ms = 5000
//! # Admission (overload): 0 work slots = one per core.
//! work_slots = 0
//! max_queued_requests = 1024
//! max_queued_request_bytes = 67108864
//! max_queue_wait_ms = 100
//!
//! [admin]
//! tokens_file = "/etc/posterior/admin-tokens"
//! audit_file = "/var/log/posterior/admin-audit.jsonl"
//!
//! [tls]
//! cert_file = "/etc/posterior/tls/server.pem"
//! key_file = "/etc/posterior/tls/server.key"
//!
//! # A standalone replica: follow the learner's `params` topic, keep a
//! # local snapshot, send admin commands to the `control` topic.
//! [feed.kafka]
//! brokers = "127.0.0.1:9092"
//! topic = "params"
//! request_timeout_ms = 10000
//!
//! [feed.snapshot]
//! dir = "/var/lib/posterior/replica"
//! every_ms = 60000
//!
//! [control.kafka]
//! brokers = "127.0.0.1:9092"
//! topic = "control"
//! delivery_timeout_ms = 3000
//!
//! # GET /metrics (Prometheus text format); absent = no endpoint.
//! [metrics]
//! listen = "127.0.0.1:9101"
//!
//! [[versions]]
//! name = "ctr-beta"
//! model = "beta"
//! reward_label = "click"
//! ```
//!
//! The `[feed.kafka]` and `[control.kafka]` tables need the crate's
//! `kafka` feature (on by default); a build without it refuses them by
//! name rather than ignoring them.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use posterior_learner::VersionSpec;
use posterior_learner::config::VersionConfig;
use posterior_learner::overrides::{self, LoadError, Override};
use serde::Deserialize;

use crate::limits::Limits;
use crate::store::DEFAULT_WATCH_BUFFER;

/// Prefix of the environment variables that override keys of the file:
/// `POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS=4` sets `limits.work_slots`
/// (syntax: [`posterior_learner::overrides`]).
pub const ENV_PREFIX: &str = "POSTERIOR_PARAM_SERVER__";

/// The `[metrics]` table, shared with the learner's config.
pub use posterior_learner::metrics::MetricsConfig;

/// The `[log]` table, shared with the learner's config.
pub use posterior_learner::config::{LogConfig, LogFormat};

/// Largest `watch_buffer`: one version's buffer holds this many updates.
pub const MAX_WATCH_BUFFER: usize = 1 << 20;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC listener, e.g. `127.0.0.1:50051`.
    pub listen: String,
    /// Updates a watcher may fall behind by before it must resync.
    #[serde(default = "default_watch_buffer")]
    pub watch_buffer: usize,
    /// Bounds of requests, responses and watchers.
    #[serde(default)]
    pub limits: Limits,
    /// The admin service: tokens, command stamping, audit file.
    #[serde(default)]
    pub admin: AdminConfig,
    /// TLS (and mTLS) of the listener; plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Where updates come from besides an embedding learner: the Kafka
    /// `params` topic and the local snapshot (`[feed.kafka]`,
    /// `[feed.snapshot]`).
    #[serde(default)]
    pub feed: FeedConfig,
    /// Where admin commands go in a standalone server: the Kafka
    /// `control` topic (`[control.kafka]`).
    #[serde(default)]
    pub control: ControlConfig,
    /// The versions served from the start, as in the learner's config.
    /// May be empty: the learner announces its versions (admin-created
    /// ones included) through the feed, and they are served from then on.
    #[serde(default)]
    pub versions: Vec<VersionConfig>,
    /// `GET /metrics` (Prometheus); absent = no endpoint.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    /// The process's log lines on stderr (`[log] format = "text" | "json"`).
    #[serde(default)]
    pub log: LogConfig,
}

/// Largest `limits.work_slots` (threads of the blocking pool at once).
pub const MAX_WORK_SLOTS: usize = 256;
/// Largest `limits.max_queued_requests`.
pub const MAX_QUEUED_REQUESTS: usize = 1 << 20;
/// Largest `limits.watch_stream_events`: each stream's queue is allocated
/// for up to this many events (and tokio refuses far larger channels).
pub const MAX_WATCH_STREAM_EVENTS: usize = 1 << 20;

/// Default `admin.command_lead_ms`.
pub const DEFAULT_COMMAND_LEAD_MS: u64 = 2_000;
/// Largest `admin.command_lead_ms` (one hour).
pub const MAX_COMMAND_LEAD_MS: u64 = 3_600_000;
/// Default `admin.control_queue`.
pub const DEFAULT_CONTROL_QUEUE: usize = 64;
/// Largest `admin.control_queue`.
pub const MAX_CONTROL_QUEUE: usize = 1 << 16;
/// Default `admin.confirm_timeout_ms`.
pub const DEFAULT_CONFIRM_TIMEOUT_MS: u64 = 4_000;
/// Largest `admin.confirm_timeout_ms` (ten minutes).
pub const MAX_CONFIRM_TIMEOUT_MS: u64 = 600_000;
/// Default `admin.audit_max_bytes` (64 MiB).
pub const DEFAULT_AUDIT_MAX_BYTES: u64 = 64 << 20;
/// Smallest `admin.audit_max_bytes`.
pub const MIN_AUDIT_MAX_BYTES: u64 = 4 << 10;

/// The `[admin]` table. Tokens never appear here: only where to read
/// them. Without any token source the admin service is not served.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// File of `name role token` lines (mode 600 on Unix).
    #[serde(default)]
    pub tokens_file: Option<PathBuf>,
    /// Environment variable holding `name role token` entries separated
    /// by newlines or `;`.
    #[serde(default)]
    pub tokens_env: Option<String>,
    /// How far after the wall-clock time of an admin call its command
    /// takes effect (event time), so the learners' watermark has not
    /// passed it yet.
    #[serde(default = "default_command_lead_ms")]
    pub command_lead_ms: u64,
    /// Commands waiting for an embedded learner to take them; more are
    /// refused with UNAVAILABLE.
    #[serde(default = "default_control_queue")]
    pub control_queue: usize,
    /// How long an admin call waits for an embedding learner to confirm
    /// its command checkpointed; past it the call fails
    /// `DEADLINE_EXCEEDED` (the command may still be applied). The call is
    /// also bounded by the caller's deadline; the embedding node refuses a
    /// value not below `limits.request_timeout_ms`, whose bare
    /// `CANCELLED` would otherwise end a slow call first.
    #[serde(default = "default_confirm_timeout_ms")]
    pub confirm_timeout_ms: u64,
    /// JSON-lines audit file; the `posterior::audit` log target only when
    /// absent.
    #[serde(default)]
    pub audit_file: Option<PathBuf>,
    /// Size at which the audit file is rotated to `<audit_file>.1`.
    #[serde(default = "default_audit_max_bytes")]
    pub audit_max_bytes: u64,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            tokens_file: None,
            tokens_env: None,
            command_lead_ms: DEFAULT_COMMAND_LEAD_MS,
            control_queue: DEFAULT_CONTROL_QUEUE,
            confirm_timeout_ms: DEFAULT_CONFIRM_TIMEOUT_MS,
            audit_file: None,
            audit_max_bytes: DEFAULT_AUDIT_MAX_BYTES,
        }
    }
}

fn default_command_lead_ms() -> u64 {
    DEFAULT_COMMAND_LEAD_MS
}

fn default_control_queue() -> usize {
    DEFAULT_CONTROL_QUEUE
}

fn default_confirm_timeout_ms() -> u64 {
    DEFAULT_CONFIRM_TIMEOUT_MS
}

fn default_audit_max_bytes() -> u64 {
    DEFAULT_AUDIT_MAX_BYTES
}

/// The `[tls]` table: PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert_file: PathBuf,
    /// The server's private key.
    pub key_file: PathBuf,
    /// CA whose certificates clients must present (mutual TLS); any
    /// client may connect when absent.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
}

/// The `[feed]` table: how a standalone replica is fed.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FeedConfig {
    /// Follow the learner's `params` topic (every partition, forever).
    #[serde(default)]
    pub kafka: Option<KafkaFeedConfig>,
    /// Keep a local snapshot of the served state and the topic offsets,
    /// so a restart resumes instead of reading the topic from its start.
    #[serde(default)]
    pub snapshot: Option<SnapshotConfig>,
}

/// Default `feed.kafka.topic`.
pub const DEFAULT_PARAMS_TOPIC: &str = "params";
/// Default `feed.kafka.request_timeout_ms` and `control.kafka.request_timeout_ms`.
pub const DEFAULT_KAFKA_REQUEST_TIMEOUT_MS: u64 = 10_000;
/// Largest `*.request_timeout_ms` and `control.kafka.delivery_timeout_ms` (10 minutes).
pub const MAX_KAFKA_TIMEOUT_MS: u64 = 600_000;
/// Largest `feed.kafka.max_held_updates` (each held update is kept
/// whole: a few hundred bytes at d = 32).
pub const MAX_HELD_UPDATES: usize = 1 << 24;
/// Default `feed.snapshot.every_ms` (one minute).
pub const DEFAULT_SNAPSHOT_EVERY_MS: u64 = 60_000;
/// Smallest `feed.snapshot.every_ms`.
pub const MIN_SNAPSHOT_EVERY_MS: u64 = 100;
/// Largest `feed.snapshot.every_ms` (one day).
pub const MAX_SNAPSHOT_EVERY_MS: u64 = 86_400_000;
/// Default `control.kafka.topic`.
pub const DEFAULT_CONTROL_TOPIC: &str = "control";
/// Default `control.kafka.delivery_timeout_ms`: with
/// [`DELIVERY_REPORT_MARGIN_MS`], below the default
/// `limits.request_timeout_ms`.
pub const DEFAULT_DELIVERY_TIMEOUT_MS: u64 = 3_000;
/// How long past `control.kafka.delivery_timeout_ms` an admin call still
/// waits for librdkafka's delivery report (it fails expired messages on a
/// timer that runs about once a second).
pub const DELIVERY_REPORT_MARGIN_MS: u64 = 1_000;

/// The `[feed.kafka]` table: the learner's `params` topic. The replica
/// assigns itself every partition (no consumer group: each replica reads
/// the whole topic) and follows it until shutdown.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaFeedConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The topic the learner's `[publish.kafka]` writes to.
    #[serde(default = "default_params_topic")]
    pub topic: String,
    /// How long the metadata and watermark requests at start may take.
    #[serde(default = "default_kafka_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Updates held, while the replica catches up, for versions whose
    /// announcement it has not read yet (a compacted topic can put a
    /// version's updates before its only announcement left). Updates
    /// beyond are read again once the replica has caught up, before it
    /// serves.
    #[serde(default = "default_max_held_updates")]
    pub max_held_updates: usize,
    /// Extra librdkafka consumer properties (security settings, fetch
    /// sizes); `bootstrap.servers`, `group.id` and the offset settings are
    /// the replica's own.
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// The `[feed.snapshot]` table.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SnapshotConfig {
    /// Directory of the snapshot file (created when missing).
    pub dir: PathBuf,
    /// Time between two snapshots; one is also written at shutdown.
    #[serde(default = "default_snapshot_every_ms")]
    pub every_ms: u64,
}

/// The `[control]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ControlConfig {
    /// Send admin commands to the learners' `control` topic.
    #[serde(default)]
    pub kafka: Option<KafkaControlConfig>,
}

/// The `[control.kafka]` table: the topic whose partition 0 every
/// learner reads (the learner's `[control]`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct KafkaControlConfig {
    /// `bootstrap.servers`.
    pub brokers: String,
    /// The control topic.
    #[serde(default = "default_control_topic")]
    pub topic: String,
    /// How long the broker has to acknowledge a command
    /// (`message.timeout.ms`); the admin call waits for the report up to
    /// [`DELIVERY_REPORT_MARGIN_MS`] longer, which must end before
    /// `limits.request_timeout_ms` (checked), so that a command the broker
    /// did not take is answered with its own status rather than the
    /// server's generic timeout.
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
}

fn default_params_topic() -> String {
    DEFAULT_PARAMS_TOPIC.to_owned()
}

fn default_control_topic() -> String {
    DEFAULT_CONTROL_TOPIC.to_owned()
}

fn default_kafka_request_timeout_ms() -> u64 {
    DEFAULT_KAFKA_REQUEST_TIMEOUT_MS
}

fn default_max_held_updates() -> usize {
    crate::follower::MAX_HELD
}

fn default_snapshot_every_ms() -> u64 {
    DEFAULT_SNAPSHOT_EVERY_MS
}

fn default_delivery_timeout_ms() -> u64 {
    DEFAULT_DELIVERY_TIMEOUT_MS
}

fn default_watch_buffer() -> usize {
    DEFAULT_WATCH_BUFFER
}

/// A config value that is wrong, named by its key.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// Dotted key, e.g. `limits.max_docs_per_request` or `versions[1].dim`.
    pub key: String,
    /// What is wrong.
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        reason: reason.into(),
    }
}

impl Config {
    /// Parses and validates a TOML file's text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let key = e.span().and_then(|span| overrides::key_at(text, span));
            bad(key.as_deref().unwrap_or("config"), e.message().trim_end())
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses and validates a config file's `text` with `overrides`
    /// (the [`ENV_PREFIX`] variables, then flags) applied; an error of an
    /// override names its variable or flag.
    pub fn load(text: &str, overrides: &[Override]) -> Result<Self, LoadError> {
        let file = overrides::parse_document(text)?;
        overrides::load(&file, overrides, |table| {
            let text = toml::to_string(&table).map_err(|e| bad("config", e.to_string()))?;
            Self::from_toml(&text)
        })
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if let Some(metrics) = &self.metrics {
            metrics
                .listen_addr()
                .map_err(|reason| bad("metrics.listen", reason))?;
        }
        if !(1..=MAX_WATCH_BUFFER).contains(&self.watch_buffer) {
            return Err(bad(
                "watch_buffer",
                format!("must be in 1..={MAX_WATCH_BUFFER}"),
            ));
        }
        self.validate_limits()?;
        self.validate_admin()?;
        self.validate_tls()?;
        self.validate_feed()?;
        self.validate_control()?;
        let mut names = HashSet::new();
        for (i, version) in self.versions.iter().enumerate() {
            if !names.insert(version.name.as_str()) {
                return Err(bad(format!("versions[{i}].name"), "used twice"));
            }
            version
                .spec()
                .map_err(|e| bad(format!("versions[{i}]"), e.to_string()))?;
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        let checks = [
            ("max_request_bytes", l.max_request_bytes, 1 << 10),
            ("max_response_bytes", l.max_response_bytes, 1 << 10),
            ("max_docs_per_request", l.max_docs_per_request, 1),
            ("max_watchers_per_version", l.max_watchers_per_version, 1),
            ("watch_stream_events", l.watch_stream_events, 1),
            (
                "max_concurrent_requests_per_connection",
                l.max_concurrent_requests_per_connection,
                1,
            ),
            ("request_timeout_ms", l.request_timeout_ms as usize, 1),
            (
                "max_streams_per_connection",
                l.max_streams_per_connection,
                l.max_concurrent_requests_per_connection,
            ),
            (
                "max_queued_request_bytes",
                l.max_queued_request_bytes,
                l.max_request_bytes,
            ),
        ];
        for (key, value, min) in checks {
            if value < min {
                return Err(bad(format!("limits.{key}"), format!("must be >= {min}")));
            }
        }
        let maxima = [
            (
                "max_streams_per_connection",
                l.max_streams_per_connection,
                u32::MAX as usize,
            ),
            ("work_slots", l.work_slots, MAX_WORK_SLOTS),
            (
                "watch_stream_events",
                l.watch_stream_events,
                MAX_WATCH_STREAM_EVENTS,
            ),
            (
                "max_queued_requests",
                l.max_queued_requests,
                MAX_QUEUED_REQUESTS,
            ),
            (
                "max_queue_wait_ms",
                l.max_queue_wait_ms as usize,
                l.request_timeout_ms as usize,
            ),
        ];
        for (key, value, max) in maxima {
            if value > max {
                return Err(bad(format!("limits.{key}"), format!("must be <= {max}")));
            }
        }
        Ok(())
    }

    fn validate_admin(&self) -> Result<(), ConfigError> {
        let a = &self.admin;
        if a.command_lead_ms > MAX_COMMAND_LEAD_MS {
            return Err(bad(
                "admin.command_lead_ms",
                format!("must be <= {MAX_COMMAND_LEAD_MS}"),
            ));
        }
        if !(1..=MAX_CONTROL_QUEUE).contains(&a.control_queue) {
            return Err(bad(
                "admin.control_queue",
                format!("must be in 1..={MAX_CONTROL_QUEUE}"),
            ));
        }
        if !(1..=MAX_CONFIRM_TIMEOUT_MS).contains(&a.confirm_timeout_ms) {
            return Err(bad(
                "admin.confirm_timeout_ms",
                format!("must be in 1..={MAX_CONFIRM_TIMEOUT_MS}"),
            ));
        }
        if a.audit_max_bytes < MIN_AUDIT_MAX_BYTES {
            return Err(bad(
                "admin.audit_max_bytes",
                format!("must be >= {MIN_AUDIT_MAX_BYTES}"),
            ));
        }
        if let Some(name) = &a.tokens_env
            && (name.is_empty() || name.contains(['=', '\0']))
        {
            return Err(bad(
                "admin.tokens_env",
                "must be an environment variable name",
            ));
        }
        if let Some(path) = &a.tokens_file {
            existing_file("admin.tokens_file", path)?;
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        existing_file("tls.cert_file", &tls.cert_file)?;
        existing_file("tls.key_file", &tls.key_file)?;
        if let Some(ca) = &tls.client_ca_file {
            existing_file("tls.client_ca_file", ca)?;
        }
        Ok(())
    }

    fn validate_feed(&self) -> Result<(), ConfigError> {
        if let Some(kafka) = &self.feed.kafka {
            kafka_available("feed.kafka")?;
            kafka_endpoint("feed.kafka", &kafka.brokers, &kafka.topic)?;
            timeout_ms("feed.kafka.request_timeout_ms", kafka.request_timeout_ms)?;
            if !(1..=MAX_HELD_UPDATES).contains(&kafka.max_held_updates) {
                return Err(bad(
                    "feed.kafka.max_held_updates",
                    format!("must be in 1..={MAX_HELD_UPDATES}"),
                ));
            }
        }
        if let Some(snapshot) = &self.feed.snapshot {
            if self.feed.kafka.is_none() {
                return Err(bad(
                    "feed.snapshot",
                    "needs [feed.kafka]: the snapshot stores the topic's offsets",
                ));
            }
            if snapshot.dir.as_os_str().is_empty() {
                return Err(bad("feed.snapshot.dir", "must not be empty"));
            }
            if !(MIN_SNAPSHOT_EVERY_MS..=MAX_SNAPSHOT_EVERY_MS).contains(&snapshot.every_ms) {
                return Err(bad(
                    "feed.snapshot.every_ms",
                    format!("must be in {MIN_SNAPSHOT_EVERY_MS}..={MAX_SNAPSHOT_EVERY_MS}"),
                ));
            }
        }
        Ok(())
    }

    fn validate_control(&self) -> Result<(), ConfigError> {
        if let Some(kafka) = &self.control.kafka {
            kafka_available("control.kafka")?;
            kafka_endpoint("control.kafka", &kafka.brokers, &kafka.topic)?;
            timeout_ms(
                "control.kafka.delivery_timeout_ms",
                kafka.delivery_timeout_ms,
            )?;
            // Past the server's own timeout the call would end as a bare
            // CANCELLED ("Timeout expired"), saying nothing of whether the
            // broker has the command.
            let waited = kafka.delivery_timeout_ms + DELIVERY_REPORT_MARGIN_MS;
            if waited >= self.limits.request_timeout_ms {
                return Err(bad(
                    "control.kafka.delivery_timeout_ms",
                    format!(
                        "{} ms plus {DELIVERY_REPORT_MARGIN_MS} ms for the delivery report must \
                         stay below limits.request_timeout_ms ({} ms): lower it or raise that",
                        kafka.delivery_timeout_ms, self.limits.request_timeout_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The listen address.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listen.parse().map_err(|e| {
            bad(
                "listen",
                format!("{e} (expected host:port, e.g. 127.0.0.1:50051)"),
            )
        })
    }

    /// The served versions' specs (valid once `validate` passed).
    pub fn version_specs(&self) -> Result<Vec<VersionSpec>, ConfigError> {
        self.versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.spec()
                    .map_err(|e| bad(format!("versions[{i}]"), e.to_string()))
            })
            .collect()
    }
}

/// Refuses a Kafka table in a build without the `kafka` feature.
fn kafka_available(key: &str) -> Result<(), ConfigError> {
    if cfg!(feature = "kafka") {
        Ok(())
    } else {
        Err(bad(
            key,
            "this param-server was built without Kafka support (cargo feature `kafka`)",
        ))
    }
}

fn kafka_endpoint(table: &str, brokers: &str, topic: &str) -> Result<(), ConfigError> {
    if brokers.trim().is_empty() {
        return Err(bad(format!("{table}.brokers"), "must not be empty"));
    }
    let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) {
        return Err(bad(
            format!("{table}.topic"),
            "must be 1 to 249 characters of [a-zA-Z0-9._-]",
        ));
    }
    Ok(())
}

fn timeout_ms(key: &str, value: u64) -> Result<(), ConfigError> {
    if (1..=MAX_KAFKA_TIMEOUT_MS).contains(&value) {
        Ok(())
    } else {
        Err(bad(key, format!("must be in 1..={MAX_KAFKA_TIMEOUT_MS}")))
    }
}

fn existing_file(key: &str, path: &std::path::Path) -> Result<(), ConfigError> {
    if path.is_file() {
        Ok(())
    } else {
        Err(bad(
            key,
            format!("{} is not a readable file", path.display()),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
listen = "127.0.0.1:0"

[limits]
max_docs_per_request = 500

[[versions]]
name = "ctr-beta"
model = "beta"
reward_label = "click"

[[versions]]
name = "ctr-logistic"
model = "logistic"
dim = 8
reward_label = "click"
"#;

    #[test]
    fn a_good_file_loads_with_defaults() {
        let config = Config::from_toml(GOOD).unwrap();
        assert_eq!(config.limits.max_docs_per_request, 500);
        assert_eq!(config.limits.watch_stream_events, 256);
        assert_eq!(config.watch_buffer, DEFAULT_WATCH_BUFFER);
        let specs = config.version_specs().unwrap();
        assert_eq!(specs[1].model.kind.dim(), 8);
    }

    #[test]
    fn the_example_file_loads() {
        let config = Config::from_toml(include_str!("../param-server.example.toml")).unwrap();
        assert_eq!(config.limits, Limits::default());
        assert_eq!(config.admin, AdminConfig::default());
        assert_eq!(config.tls, None);
        assert_eq!(config.versions.len(), 2);
    }

    const REPLICA: &str = r#"
listen = "127.0.0.1:0"

[feed.kafka]
brokers = "127.0.0.1:9092"

[feed.snapshot]
dir = "/tmp/replica"

[control.kafka]
brokers = "127.0.0.1:9092"
"#;

    #[cfg(feature = "kafka")]
    #[test]
    fn a_replica_config_loads_with_defaults() {
        let config = Config::from_toml(REPLICA).unwrap();
        let kafka = config.feed.kafka.unwrap();
        assert_eq!(kafka.topic, DEFAULT_PARAMS_TOPIC);
        assert_eq!(kafka.request_timeout_ms, DEFAULT_KAFKA_REQUEST_TIMEOUT_MS);
        assert_eq!(kafka.max_held_updates, crate::follower::MAX_HELD);
        assert_eq!(
            config.feed.snapshot.unwrap().every_ms,
            DEFAULT_SNAPSHOT_EVERY_MS
        );
        let control = config.control.kafka.unwrap();
        assert_eq!(control.topic, DEFAULT_CONTROL_TOPIC);
        assert_eq!(control.delivery_timeout_ms, DEFAULT_DELIVERY_TIMEOUT_MS);
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn a_delivery_wait_past_the_request_timeout_is_refused() {
        // The default request timeout is 5 s: a 4 s delivery timeout plus
        // the report's margin reaches it.
        let err = Config::from_toml(&format!("{REPLICA}delivery_timeout_ms = 4000\n")).unwrap_err();
        assert_eq!(err.key, "control.kafka.delivery_timeout_ms");
        assert!(
            err.reason.contains("4000 ms plus 1000 ms")
                && err.reason.contains("limits.request_timeout_ms (5000 ms)"),
            "{err}"
        );
        let fits = Config::from_toml(&format!(
            "{REPLICA}delivery_timeout_ms = 5000\n[limits]\nrequest_timeout_ms = 6001\n"
        ))
        .unwrap();
        assert_eq!(fits.control.kafka.unwrap().delivery_timeout_ms, 5000);
        let err = Config::from_toml(&format!(
            "{REPLICA}delivery_timeout_ms = 5000\n[limits]\nrequest_timeout_ms = 6000\n"
        ))
        .unwrap_err();
        assert_eq!(err.key, "control.kafka.delivery_timeout_ms");
    }

    #[cfg(not(feature = "kafka"))]
    #[test]
    fn without_the_kafka_feature_kafka_tables_are_refused_by_name() {
        let err = Config::from_toml(REPLICA).unwrap_err();
        assert_eq!(err.key, "feed.kafka");
    }

    #[cfg(feature = "kafka")]
    #[test]
    fn bad_replica_values_name_their_key() {
        let cases = [
            (
                REPLICA.replacen("brokers = \"127.0.0.1:9092\"", "brokers = \" \"", 1),
                "feed.kafka.brokers",
            ),
            (
                REPLICA.replace("[feed.kafka]\n", "[feed.kafka]\ntopic = \"a/b\"\n"),
                "feed.kafka.topic",
            ),
            (
                REPLICA.replace("[feed.kafka]\n", "[feed.kafka]\nrequest_timeout_ms = 0\n"),
                "feed.kafka.request_timeout_ms",
            ),
            (
                REPLICA.replace("[feed.kafka]\n", "[feed.kafka]\nmax_held_updates = 0\n"),
                "feed.kafka.max_held_updates",
            ),
            (
                REPLICA.replace("[feed.kafka]\n", "[feed.kafka]\ngroup_id = \"g\"\n"),
                "unknown field `group_id`",
            ),
            (
                REPLICA.replace("dir = \"/tmp/replica\"", "dir = \"/tmp/r\"\nevery_ms = 5"),
                "feed.snapshot.every_ms",
            ),
            (
                REPLICA.replace("dir = \"/tmp/replica\"", "dir = \"\""),
                "feed.snapshot.dir",
            ),
            (
                REPLICA.replace("[feed.kafka]\nbrokers = \"127.0.0.1:9092\"\n", ""),
                "feed.snapshot: needs [feed.kafka]",
            ),
            (format!("{REPLICA}topic = \"\"\n"), "control.kafka.topic"),
            (
                format!("{REPLICA}delivery_timeout_ms = 600001\n"),
                "control.kafka.delivery_timeout_ms",
            ),
            (format!("{REPLICA}[feed.nats]\n"), "unknown field `nats`"),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(key), "{err} lacks {key}");
        }
    }

    #[test]
    fn overrides_set_nested_keys_and_their_errors_name_them() {
        let vars = [
            ("POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS", "4"),
            ("POSTERIOR_PARAM_SERVER__VERSIONS__1__DIM", "3"),
            ("POSTERIOR_TOKEN", "not an override"),
        ];
        let env = |vars: &[(&str, &str)]| {
            let vars = vars.iter().map(|(k, v)| ((*k).into(), (*v).into()));
            overrides::from_vars(ENV_PREFIX, vars).unwrap()
        };
        let mut given = env(&vars);
        given.push(Override::flag("--listen", "listen", "127.0.0.1:9".into()));
        let config = Config::load(GOOD, &given).unwrap();
        assert_eq!(config.limits.work_slots, 4);
        assert_eq!(config.version_specs().unwrap()[1].model.kind.dim(), 3);
        assert_eq!(config.listen, "127.0.0.1:9");
        let cases = [
            (
                "POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS",
                "257",
                "limits.work_slots: must be <= 256",
            ),
            // tokio would refuse (panic on) a channel that large.
            (
                "POSTERIOR_PARAM_SERVER__LIMITS__WATCH_STREAM_EVENTS",
                "2305843009213693952",
                "limits.watch_stream_events: must be <= 1048576",
            ),
            (
                "POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS",
                "many",
                "limits.work_slots: invalid type",
            ),
            (
                "POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOT",
                "1",
                "limits.work_slot: unknown field",
            ),
            (
                "POSTERIOR_PARAM_SERVER__WATCH_BUFFER",
                "0",
                "watch_buffer: must be in",
            ),
        ];
        for (var, value, needle) in cases {
            let err = Config::load(GOOD, &env(&[(var, value)]))
                .unwrap_err()
                .to_string();
            assert!(
                err.starts_with(&format!("{var}: {needle}")),
                "{err} lacks {needle}"
            );
        }
        let fine = env(&[("POSTERIOR_PARAM_SERVER__LIMITS__WORK_SLOTS", "4")]);
        let err = Config::load(&GOOD.replace("dim = 8", "dim = 0"), &fine).unwrap_err();
        assert!(matches!(err, LoadError::Config(_)), "{err:?}");
    }

    #[test]
    fn versions_may_come_from_the_learner_alone() {
        let config = Config::from_toml("listen = \"127.0.0.1:0\"\n").unwrap();
        assert!(config.versions.is_empty());
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            (GOOD.replace("127.0.0.1:0", "localhost"), "listen"),
            (format!("watch_buffer = 0\n{GOOD}"), "watch_buffer"),
            (
                GOOD.replace("max_docs_per_request = 500", "max_docs_per_request = 0"),
                "limits.max_docs_per_request",
            ),
            (GOOD.replace("dim = 8", "dim = 0"), "versions[1]"),
            (GOOD.replace("ctr-logistic", "ctr-beta"), "versions[1].name"),
            (
                GOOD.replace("[limits]", "[limits]\nmax_dogs = 3"),
                "limits.max_dogs: unknown field",
            ),
            (
                GOOD.replace(
                    "max_docs_per_request = 500",
                    "max_docs_per_request = \"500\"",
                ),
                "limits.max_docs_per_request: invalid type",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nmax_streams_per_connection = 255"),
                "limits.max_streams_per_connection",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nmax_queue_wait_ms = 5001"),
                "limits.max_queue_wait_ms",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nwork_slots = 257"),
                "limits.work_slots",
            ),
            (
                GOOD.replace("[limits]", "[limits]\nmax_queued_request_bytes = 1024"),
                "limits.max_queued_request_bytes",
            ),
            (
                format!("{GOOD}\n[admin]\ncontrol_queue = 0\n"),
                "admin.control_queue",
            ),
            (
                format!("{GOOD}\n[admin]\ncommand_lead_ms = 3600001\n"),
                "admin.command_lead_ms",
            ),
            (
                format!("{GOOD}\n[admin]\nconfirm_timeout_ms = 0\n"),
                "admin.confirm_timeout_ms",
            ),
            (
                format!("{GOOD}\n[admin]\naudit_max_bytes = 10\n"),
                "admin.audit_max_bytes",
            ),
            (
                format!("{GOOD}\n[admin]\ntokens_file = \"/nonexistent/tokens\"\n"),
                "admin.tokens_file",
            ),
            (
                format!("{GOOD}\n[admin]\ntoken = \"plaintext\"\n"),
                "unknown field `token`",
            ),
            (
                format!(
                    "{GOOD}\n[tls]\ncert_file = \"/nonexistent/c\"\nkey_file = \"/nonexistent/k\"\n"
                ),
                "tls.cert_file",
            ),
            (
                format!("{GOOD}\n[tls]\ncert_file = \"/etc/hostname\"\n"),
                "key_file",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(&text).unwrap_err();
            assert!(err.to_string().contains(key), "{err} lacks {key}");
        }
    }
}
