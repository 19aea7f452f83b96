//! Runs a param-server from a validated [`Config`]: the store with the
//! configured versions, an optional feed, and the gRPC server, until a
//! shutdown future resolves. The binary and an embedding learner both
//! start here.

use std::future::Future;
use std::sync::Arc;

use posterior_learner::params::Publication;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::config::{Config, ConfigError};
use crate::error::StoreError;
use crate::feed::feed;
use crate::server::{ServerError, serve};
use crate::store::ParamStore;

/// Why a param-server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The configuration is invalid.
    #[error("config: {0}")]
    Config(#[from] ConfigError),
    /// A configured version could not be registered.
    #[error("register versions: {0}")]
    Store(#[from] StoreError),
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

/// Serves `store` on `listener` with `config`'s limits, applying the
/// batches of `updates` (when given) as they arrive, until `shutdown`.
pub async fn run(
    config: &Config,
    store: Arc<ParamStore>,
    listener: TcpListener,
    updates: Option<mpsc::Receiver<Publication>>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let feeding = updates.map(|rx| tokio::spawn(feed(Arc::clone(&store), rx)));
    let served = serve(listener, store, config.limits.clone(), shutdown).await;
    if let Some(task) = feeding {
        // The feed ends when its sender closes; at shutdown it is dropped.
        task.abort();
    }
    Ok(served?)
}
