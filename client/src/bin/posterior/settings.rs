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
    /// Read as a table first, so that the CLI's own defaults fill only
    /// the keys it leaves out.
    client: Option<toml::Table>,
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
        // The CLI's defaults where the file's `[client]` table (if any)
        // does not say: one holding only `[client.tls]` keeps them.
        let mut table = file.client.unwrap_or_default();
        table
            .entry("request_timeout_ms")
            .or_insert(toml::Value::Integer(DEFAULT_TIMEOUT_MS as i64));
        if let Some(retry) = table
            .entry("retry")
            .or_insert(toml::Value::Table(toml::Table::new()))
            .as_table_mut()
        {
            retry
                .entry("max_attempts")
                .or_insert(toml::Value::Integer(i64::from(DEFAULT_ATTEMPTS)));
        }
        let mut client: ClientConfig = table
            .try_into()
            .context("parse config: its [client] table")?;
        if let Some(ms) = cli.timeout_ms {
            client.request_timeout_ms = ms;
            client.command_timeout_ms = ms;
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn resolved(config: &str) -> ClientConfig {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("posterior.toml");
        std::fs::write(&path, config).unwrap();
        let cli = Cli::try_parse_from([
            "posterior",
            "--config",
            path.to_str().unwrap(),
            "get",
            "ctr",
            "1",
        ])
        .unwrap();
        Settings::resolve(&cli).unwrap().client
    }

    /// The CLI's defaults (5 s, 3 attempts) hold wherever the file's
    /// `[client]` table does not set them.
    #[test]
    fn a_client_table_overrides_only_what_it_sets() {
        let none = resolved("");
        assert_eq!(
            (none.request_timeout_ms, none.retry.max_attempts),
            (5_000, 3)
        );
        let partial =
            resolved("[client]\nconnect_timeout_ms = 700\n[client.tls]\ndomain = \"x\"\n");
        assert_eq!(
            (
                partial.request_timeout_ms,
                partial.retry.max_attempts,
                partial.connect_timeout_ms
            ),
            (5_000, 3, 700)
        );
        assert_eq!(partial.tls.domain.as_deref(), Some("x"));
        let set =
            resolved("[client]\nrequest_timeout_ms = 250\n[client.retry]\nmax_attempts = 7\n");
        assert_eq!((set.request_timeout_ms, set.retry.max_attempts), (250, 7));
        // An admin command's own deadline, from the library's default.
        assert_eq!(
            (none.command_timeout_ms, set.command_timeout_ms),
            (10_000, 10_000)
        );
    }

    /// `--timeout-ms` bounds every call, admin commands included.
    #[test]
    fn the_timeout_flag_sets_both_deadlines() {
        let cli =
            Cli::try_parse_from(["posterior", "--timeout-ms", "1234", "get", "ctr", "1"]).unwrap();
        let client = Settings::resolve(&cli).unwrap().client;
        assert_eq!(
            (client.request_timeout_ms, client.command_timeout_ms),
            (1_234, 1_234)
        );
    }
}
