//! The command line: global connection flags (each with a `POSTERIOR_*`
//! environment variable) and one subcommand per operation.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Command-line arguments.
#[derive(Debug, Parser)]
#[command(
    version,
    about = "Reads Posterior's parameters and administers its versions",
    after_help = "Exit codes: 0 success; 1 a local failure (file, spec); 2 usage; \
                  10 + the gRPC code for a server error (13 INVALID_ARGUMENT, 15 NOT_FOUND, \
                  16 ALREADY_EXISTS, 17 PERMISSION_DENIED, 18 RESOURCE_EXHAUSTED, \
                  24 UNAVAILABLE, 26 UNAUTHENTICATED, ...)."
)]
pub struct Cli {
    /// TOML file with `endpoint`, `token_file` and a `[client]` table
    /// (timeouts, retry, TLS); flags and environment variables override it.
    #[arg(long, global = true, env = "POSTERIOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// The param-server (and admin service) address
    /// [default: http://127.0.0.1:50051].
    #[arg(long, global = true, env = "POSTERIOR_ENDPOINT")]
    pub endpoint: Option<String>,
    /// Admin bearer token.
    #[arg(long, global = true, env = "POSTERIOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the admin bearer token (surrounding whitespace ignored).
    #[arg(
        long,
        global = true,
        env = "POSTERIOR_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long, global = true, env = "POSTERIOR_JSON")]
    pub json: bool,
    /// Deadline of each attempt of a call (ms) [default: 5000; 10000 for
    /// an admin command, which the server answers once it is durable].
    #[arg(long, global = true, env = "POSTERIOR_TIMEOUT_MS")]
    pub timeout_ms: Option<u64>,
    /// Most attempts per call (retries on UNAVAILABLE and
    /// RESOURCE_EXHAUSTED) [default: 3].
    #[arg(long, global = true, env = "POSTERIOR_ATTEMPTS")]
    pub attempts: Option<u32>,
    /// PEM file of the CA of an `https://` endpoint (system roots if absent).
    #[arg(long, global = true, env = "POSTERIOR_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Name to verify an `https://` endpoint's certificate against.
    #[arg(long, global = true, env = "POSTERIOR_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The operations.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Current parameters of docs (GetParams).
    Get {
        /// The version.
        version: String,
        /// The docs.
        #[arg(required = true)]
        doc_ids: Vec<u64>,
    },
    /// Server-side Thompson draws and mean scores (SampleScores).
    Sample {
        /// The version.
        version: String,
        /// The docs.
        #[arg(required = true)]
        doc_ids: Vec<u64>,
        /// Context for logistic versions: comma-separated floats, one
        /// vector shared by every doc or one per doc, concatenated.
        #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
        context: Vec<f32>,
        /// Seed for reproducible draws.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Prints a version's snapshot and then its updates as JSON lines
    /// (WatchParams), until the stream ends.
    Watch {
        /// The version.
        version: String,
        /// Docs to follow; none follows the whole version.
        doc_ids: Vec<u64>,
        /// After the snapshot, skip updates with a seq at or below this.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Stop after this many events.
        #[arg(long)]
        max_events: Option<u64>,
    },
    /// Version administration (admin token required).
    #[command(subcommand)]
    Versions(VersionsCommand),
    /// Asks every learner for a savepoint (admin token required).
    Savepoint {
        /// Free-text label stored in the savepoint's manifest.
        #[arg(long, default_value = "")]
        label: String,
    },
    /// Restores one version's parameters from a savepoint (admin token
    /// required).
    Rollback {
        /// The version.
        version: String,
        /// The savepoint id, as listed by the learner.
        savepoint_id: String,
    },
}

/// `versions` subcommands.
#[derive(Debug, Subcommand)]
pub enum VersionsCommand {
    /// Creates a version from a TOML spec: the fields of a learner
    /// `[[versions]]` table (name, model, alpha0, beta0, dim, covariance,
    /// prior_mean, prior_precision, reward_label, reward_threshold,
    /// forgetting_half_life_ms, use_sample_weight).
    Create {
        /// The spec file.
        #[arg(long)]
        spec: PathBuf,
    },
    /// Creates an A/B arm warm-started from another version's parameters.
    Fork {
        /// The source version.
        from: String,
        /// The new version.
        to: String,
        /// Overrides.
        #[command(flatten)]
        overrides: ForkArgs,
    },
    /// Lists the versions.
    List,
    /// Retires a version.
    Retire {
        /// The version.
        name: String,
    },
}

/// Spec fields a fork may change.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The reward label.
    #[arg(long)]
    pub reward_label: Option<String>,
    /// The reward threshold.
    #[arg(long, allow_hyphen_values = true)]
    pub reward_threshold: Option<f64>,
    /// Forgetting half-life (event-time ms); 0 turns forgetting off.
    #[arg(long)]
    pub forgetting_half_life_ms: Option<i64>,
    /// Whether samples' weights count.
    #[arg(long)]
    pub use_sample_weight: Option<bool>,
}
