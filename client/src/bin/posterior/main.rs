//! `posterior`: the command line of predictors and operators.
//!
//! `posterior [--endpoint URL] [--json] get <VERSION> <DOC>...`, `sample`,
//! `watch`, `versions create|fork|list|retire`, `savepoint`, `rollback`
//! (`posterior --help` lists the flags; each has a `POSTERIOR_*`
//! environment variable, and `--config` names an optional TOML file that
//! both override — see `settings`). Errors go to stderr with their gRPC code; the
//! exit code is 10 + the gRPC code for a server error, 1 for a local
//! failure and 2 for bad usage.

mod args;
mod output;
mod settings;

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use posterior_client::{AdminClient, Client, ClientError, ForkOverrides};
use posterior_learner::config::VersionConfig;
use serde_json::json;

use args::{Cli, Command, VersionsCommand};
use settings::{Settings, TokenSource};

/// Why the command failed, and so its exit code.
enum Failure {
    /// A call failed: exit 10 + its gRPC code.
    Client(ClientError),
    /// A local failure (file, spec, output): exit 1.
    Local(anyhow::Error),
    /// Bad usage clap cannot see (a missing token): exit 2.
    Usage(String),
}

impl From<ClientError> for Failure {
    /// What the client refused before sending anything (an endpoint that
    /// is no URI, a token or an argument it cannot send) is bad usage,
    /// exit 2; anything the server or the transport said is 10 + its code.
    fn from(error: ClientError) -> Self {
        match error {
            ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidToken
            | ClientError::InvalidArgument(_) => Failure::Usage(error.to_string()),
            other => Failure::Client(other),
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Self {
        Failure::Local(error)
    }
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Local(anyhow::Error::new(error).context("write output"))
    }
}

/// `NotFound` → `NOT_FOUND`, the name the gRPC specification uses.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

impl Failure {
    fn report(&self, json: bool) -> ExitCode {
        let (code, kind, message) = match self {
            Failure::Client(e) => (
                10 + e.code() as u8,
                code_name(e.code()),
                e.message().to_string(),
            ),
            Failure::Local(e) => (1, "LOCAL".to_owned(), format!("{e:#}")),
            Failure::Usage(m) => (2, "USAGE".to_owned(), m.clone()),
        };
        if json {
            let error = json!({"error": {"code": kind, "message": message, "exit_code": code}});
            eprintln!("{error}");
        } else {
            eprintln!("error: {kind}: {message}");
        }
        ExitCode::from(code)
    }
}

fn token(settings: &Settings) -> Result<String, Failure> {
    let token = match &settings.token {
        TokenSource::Value(token) => token.clone(),
        TokenSource::File(path) => std::fs::read_to_string(path)
            .with_context(|| format!("read token file {}", path.display()))?,
        TokenSource::Missing => {
            return Err(Failure::Usage(
                "admin commands need --token or --token-file (POSTERIOR_TOKEN, POSTERIOR_TOKEN_FILE, or token_file in the config)"
                    .into(),
            ));
        }
    };
    let token = token.trim().to_owned();
    if token.is_empty() {
        return Err(Failure::Usage("the admin token is empty".into()));
    }
    Ok(token)
}

fn print(
    cli: &Cli,
    json: serde_json::Value,
    table: impl FnOnce() -> String,
) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    if cli.json {
        writeln!(out, "{json}")?;
    } else {
        writeln!(out, "{}", table())?;
    }
    Ok(())
}

async fn run(cli: &Cli) -> Result<(), Failure> {
    let settings = Settings::resolve(cli)?;
    let connect = || Client::connect(&settings.endpoint, settings.client.clone());
    match &cli.command {
        Command::Get { version, doc_ids } => {
            let client = connect().await?;
            let params = client.get_params(version, doc_ids).await?;
            print(cli, json!(params), || {
                output::params_table(&params).render()
            })
        }
        Command::Sample {
            version,
            doc_ids,
            context,
            seed,
        } => {
            let client = connect().await?;
            let context = (!context.is_empty()).then_some(&context[..]);
            let scores = client
                .sample_scores(version, doc_ids, context, *seed)
                .await?;
            print(cli, output::scores_json(doc_ids, &scores), || {
                output::scores_table(doc_ids, &scores).render()
            })
        }
        Command::Watch {
            version,
            doc_ids,
            from_seq,
            max_events,
        } => {
            let client = connect().await?;
            let mut stream = client.watch(version, doc_ids, *from_seq).await?;
            let mut printed = 0;
            while max_events.is_none_or(|max| printed < max) {
                let Some(event) = stream.next().await else {
                    break;
                };
                let line = output::event_json(&event?);
                let mut out = std::io::stdout().lock();
                writeln!(out, "{line}")?;
                out.flush()?;
                printed += 1;
            }
            Ok(())
        }
        Command::Versions(command) => versions(cli, &settings, command).await,
        Command::Savepoint { label } => {
            let admin = admin(&settings).await?;
            let receipt = admin.trigger_savepoint(label).await?;
            print(cli, receipt_json(&receipt), || receipt.message)
        }
        Command::Rollback {
            version,
            savepoint_id,
        } => {
            let admin = admin(&settings).await?;
            let receipt = admin.rollback_version(version, savepoint_id).await?;
            print(cli, receipt_json(&receipt), || receipt.message)
        }
    }
}

async fn admin(settings: &Settings) -> Result<AdminClient, Failure> {
    let token = token(settings)?;
    Ok(AdminClient::connect(&settings.endpoint, &token, settings.client.clone()).await?)
}

async fn versions(
    cli: &Cli,
    settings: &Settings,
    command: &VersionsCommand,
) -> Result<(), Failure> {
    let receipt = match command {
        VersionsCommand::List => {
            let admin = admin(settings).await?;
            let versions = admin.list_versions().await?;
            let json = versions.iter().map(output::version_json).collect();
            return print(cli, json, || output::versions_table(&versions).render());
        }
        VersionsCommand::Create { spec } => {
            let text = std::fs::read_to_string(spec)
                .with_context(|| format!("read spec {}", spec.display()))?;
            let table: VersionConfig =
                toml::from_str(&text).with_context(|| format!("parse spec {}", spec.display()))?;
            let spec = table
                .spec()
                .with_context(|| format!("invalid spec {}", spec.display()))?;
            admin(settings).await?.create_version(&spec).await?
        }
        VersionsCommand::Fork {
            from,
            to,
            overrides,
        } => {
            let overrides = ForkOverrides {
                reward_label: overrides.reward_label.clone(),
                reward_threshold: overrides.reward_threshold,
                forgetting_half_life_ms: overrides.forgetting_half_life_ms,
                use_sample_weight: overrides.use_sample_weight,
            };
            admin(settings)
                .await?
                .fork_version(from, to, overrides)
                .await?
        }
        VersionsCommand::Retire { name } => admin(settings).await?.retire_version(name).await?,
    };
    print(cli, receipt_json(&receipt), || receipt.message)
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error
        .downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("POSTERIOR_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(&cli).await {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`posterior watch … | head`): not an error.
        Err(Failure::Local(e)) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(failure) => failure.report(cli.json),
    }
}

/// An admin receipt as `--json` prints it.
fn receipt_json(receipt: &posterior_client::AdminReceipt) -> serde_json::Value {
    json!({
        "message": receipt.message,
        "command_id": receipt.command_id,
        "effective_event_time_ms": receipt.effective_event_time_ms,
    })
}
