//! The CLI's settings: an optional TOML file, overridden by `POSTERIOR_*`
//! environment variables, overridden by flags (clap reads both of those).
//!
//! ```toml
//! endpoint = "http://param-server:50051"
//! token_file = "/etc/posterior/admin.token"
//!
//! [client]                 # posterior_client::ClientConfig
//! request_timeout_ms = 2000
//! [client.retry]
//! max_attempts = 4
//! [client.tls]
//! ca_cert_pem = "/etc/posterior/ca.pem"
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use posterior_client::ClientConfig;

use crate::args::Cli;

/// Where the CLI connects when nothing says otherwise.
const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:50051";
/// The CLI's request deadline: longer than a predictor's, since a person
/// waits.
const DEFAULT_TIMEOUT_MS: u64 = 5_000;
/// The CLI's attempts per call.
const DEFAULT_ATTEMPTS: u32 = 3;

/// The config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    endpoint: Option<String>,
    token_file: Option<PathBuf>,
    client: Option<ClientConfig>,
}

/// Where the admin token comes from.
#[derive(Debug)]
pub enum TokenSource {
    /// Given on the command line or in `POSTERIOR_TOKEN`.
    Value(String),
    /// A file named by flag, variable or config file.
    File(PathBuf),
    /// Nowhere.
    Missing,
}

/// Everything a command needs to connect.
#[derive(Debug)]
pub struct Settings {
    /// The server.
    pub endpoint: String,
    /// The admin token's source.
    pub token: TokenSource,
    /// Timeouts, retries, TLS.
    pub client: ClientConfig,
}

fn read(path: &Path) -> anyhow::Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("read config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parse config {}", path.display()))
}

impl Settings {
    /// Merges the config file (if any) under the flags and variables.
    pub fn resolve(cli: &Cli) -> anyhow::Result<Self> {
        let file = match &cli.config {
            Some(path) => read(path)?,
            None => FileConfig::default(),
        };
        let from_file = file.client.is_some();
        let mut client = file.client.unwrap_or_default();
        if !from_file {
            client.request_timeout_ms = DEFAULT_TIMEOUT_MS;
            client.retry.max_attempts = DEFAULT_ATTEMPTS;
        }
        if let Some(ms) = cli.timeout_ms {
            client.request_timeout_ms = ms;
        }
        if let Some(attempts) = cli.attempts {
            client.retry.max_attempts = attempts.max(1);
        }
        if let Some(ca) = &cli.ca_cert {
            client.tls.ca_cert_pem = Some(ca.clone());
        }
        if let Some(domain) = &cli.tls_domain {
            client.tls.domain = Some(domain.clone());
        }
        let token = match (&cli.token, &cli.token_file, file.token_file) {
            (Some(token), _, _) => TokenSource::Value(token.clone()),
            (None, Some(path), _) => TokenSource::File(path.clone()),
            (None, None, Some(path)) => TokenSource::File(path),
            (None, None, None) => TokenSource::Missing,
        };
        Ok(Self {
            endpoint: cli
                .endpoint
                .clone()
                .or(file.endpoint)
                .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned()),
            token,
            client,
        })
    }
}
