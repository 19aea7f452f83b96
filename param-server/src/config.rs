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
//! [[versions]]
//! name = "ctr-beta"
//! model = "beta"
//! reward_label = "click"
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;

use posterior_learner::VersionSpec;
use posterior_learner::config::VersionConfig;
use serde::Deserialize;

use crate::limits::Limits;
use crate::store::DEFAULT_WATCH_BUFFER;

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
    /// The versions served from the start, as in the learner's config.
    /// May be empty: the learner announces its versions (admin-created
    /// ones included) through the feed, and they are served from then on.
    #[serde(default)]
    pub versions: Vec<VersionConfig>,
}

/// Largest `limits.work_slots` (threads of the blocking pool at once).
pub const MAX_WORK_SLOTS: usize = 256;
/// Largest `limits.max_queued_requests`.
pub const MAX_QUEUED_REQUESTS: usize = 1 << 20;

/// Default `admin.command_lead_ms`.
pub const DEFAULT_COMMAND_LEAD_MS: u64 = 2_000;
/// Largest `admin.command_lead_ms` (one hour).
pub const MAX_COMMAND_LEAD_MS: u64 = 3_600_000;
/// Default `admin.control_queue`.
pub const DEFAULT_CONTROL_QUEUE: usize = 64;
/// Largest `admin.control_queue`.
pub const MAX_CONTROL_QUEUE: usize = 1 << 16;
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
        let config: Self = toml::from_str(text).map_err(|e| bad("config", e.message()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        if !(1..=MAX_WATCH_BUFFER).contains(&self.watch_buffer) {
            return Err(bad(
                "watch_buffer",
                format!("must be in 1..={MAX_WATCH_BUFFER}"),
            ));
        }
        self.validate_limits()?;
        self.validate_admin()?;
        self.validate_tls()?;
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
                "max_dogs",
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
