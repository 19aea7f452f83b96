//! Runs a param-server from a validated [`Config`]: the store with the
//! configured versions, the admin service and TLS, an optional feed, and
//! the gRPC server, until a shutdown future resolves. The binary and an
//! embedding learner both start here. Everything that reads files
//! (tokens, audit file, certificates) happens in [`prepare`], before the
//! caller binds its listener.

use std::future::Future;
use std::sync::Arc;

use posterior_learner::params::Publication;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::admin::AdminServiceImpl;
use crate::audit::{AuditFileError, AuditLog};
use crate::auth::TokenSet;
use crate::config::{AdminConfig, Config, ConfigError};
use crate::control::ControlPlane;
use crate::error::StoreError;
use crate::feed::feed_metered;
use crate::server::{AdminSetup, ServeOptions, ServerError, serve};
use crate::store::ParamStore;
use crate::tls::{TlsError, server_tls};

/// Why a param-server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// A configured version could not be registered.
    #[error("register versions: {0}")]
    Store(#[from] StoreError),
    /// The audit file could not be opened.
    #[error("admin.audit_file: {0}")]
    Audit(#[from] AuditFileError),
    /// The TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The gRPC server failed.
    #[error(transparent)]
    Server(#[from] ServerError),
}

/// A store serving `config`'s versions, every doc at its prior.
pub fn build_store(config: &Config) -> Result<Arc<ParamStore>, RunError> {
    config.validate()?;
    let store = Arc::new(ParamStore::new(config.watch_buffer));
    for spec in config.version_specs()? {
        store.register(spec)?;
    }
    Ok(store)
}

/// The admin tokens of every configured source (file, then environment).
pub fn load_tokens(admin: &AdminConfig) -> Result<TokenSet, ConfigError> {
    let mut tokens = TokenSet::default();
    let named = |key: &str, e: crate::auth::TokenError| ConfigError {
        key: key.to_owned(),
        reason: e.to_string(),
    };
    if let Some(path) = &admin.tokens_file {
        tokens = TokenSet::from_file(path).map_err(|e| named("admin.tokens_file", e))?;
    }
    if let Some(var) = &admin.tokens_env {
        let text = std::env::var(var).map_err(|e| ConfigError {
            key: "admin.tokens_env".into(),
            reason: format!("${var}: {e}"),
        })?;
        tokens
            .add_entries(&text, &format!("${var}"))
            .map_err(|e| named("admin.tokens_env", e))?;
    }
    Ok(tokens)
}

/// Everything `serve` needs beyond the store: the admin service over
/// `control` (when tokens are configured) and TLS (when configured).
pub fn prepare(
    config: &Config,
    store: &Arc<ParamStore>,
    control: Arc<dyn ControlPlane>,
) -> Result<ServeOptions, RunError> {
    config.validate()?;
    let admin = &config.admin;
    let tokens = load_tokens(admin)?;
    let admin = if tokens.is_empty() {
        tracing::info!(
            "admin service disabled: no admin tokens configured ([admin] tokens_file / tokens_env)"
        );
        None
    } else {
        let audit = match &admin.audit_file {
            Some(path) => AuditLog::with_file(path, admin.audit_max_bytes)?,
            None => AuditLog::tracing_only(),
        };
        let lead_ms = i64::try_from(admin.command_lead_ms).expect("validated <= one hour");
        tracing::info!(tokens = tokens.len(), audit_file = ?admin.audit_file, "admin service enabled");
        Some(AdminSetup {
            service: AdminServiceImpl::new(Arc::clone(store), control, lead_ms),
            tokens: Arc::new(tokens),
            audit: Arc::new(audit),
        })
    };
    let tls = config.tls.as_ref().map(server_tls).transpose()?;
    if let Some(tls) = &config.tls {
        tracing::info!(mutual = tls.client_ca_file.is_some(), "TLS enabled");
    }
    Ok(ServeOptions {
        admin,
        tls,
        readiness: None,
        metrics: None,
    })
}

/// Serves `store` on `listener` with `config`'s limits and `options`,
/// applying the batches of `updates` (when given) as they arrive, until
/// `shutdown`.
pub async fn run(
    config: &Config,
    store: Arc<ParamStore>,
    listener: TcpListener,
    updates: Option<mpsc::Receiver<Publication>>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let metrics = options.metrics.clone();
    let readiness = options.readiness.clone();
    let feeding =
        updates.map(|rx| tokio::spawn(feed_metered(Arc::clone(&store), rx, metrics, readiness)));
    let served = serve(listener, store, config.limits.clone(), options, shutdown).await;
    if let Some(task) = feeding {
        // The feed ends when its sender closes; at shutdown it is dropped.
        task.abort();
    }
    Ok(served?)
}
