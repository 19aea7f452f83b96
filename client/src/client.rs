//! [`Client`]: typed `ParamService` calls with deadlines and retries.

use std::sync::Arc;

use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use posterior_proto::v1::watch_params_event::Event;
use tonic::Request;
use tonic::transport::Channel;

use crate::channel;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::params::{Params, Scores};
use crate::retry::with_retries;

/// A predictor's handle on a param-server: cheap to clone, one shared
/// connection, safe to use from many tasks at once.
///
/// Every call is a read, so every call is retried on UNAVAILABLE,
/// RESOURCE_EXHAUSTED and DEADLINE_EXCEEDED following the config's
/// [`crate::RetryPolicy`]; each attempt carries the config's request
/// deadline.
#[derive(Debug, Clone)]
pub struct Client {
    inner: ParamServiceClient<Channel>,
    config: Arc<ClientConfig>,
}

/// One event of a `WatchParams` stream.
#[derive(Debug, Clone, PartialEq)]
pub enum WatchEvent {
    /// Part of the initial snapshot.
    Snapshot(Params),
    /// The snapshot is complete.
    SnapshotDone,
    /// A live update. It may repeat or precede (lower seq) what the
    /// snapshot sent for the doc: keep the highest seq per doc.
    Update(Params),
    /// The watcher fell behind the server's buffer; the stream ends after
    /// this event. Watch again and rebuild.
    Resync(String),
}

/// A `WatchParams` stream of typed events.
#[derive(Debug)]
pub struct WatchStream {
    inner: tonic::Streaming<v1::WatchParamsEvent>,
}

impl WatchStream {
    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Option<Result<WatchEvent, ClientError>> {
        let event = match self.inner.message().await {
            Ok(Some(event)) => event,
            Ok(None) => return None,
            Err(status) => {
                return Some(Err(ClientError::Status {
                    code: status.code(),
                    message: status.message().to_owned(),
                    attempts: 1,
                }));
            }
        };
        Some(typed_event(event))
    }
}

fn typed_event(event: v1::WatchParamsEvent) -> Result<WatchEvent, ClientError> {
    let params = |p: v1::Params| Params::try_from(p).map_err(ClientError::InvalidResponse);
    match event.event {
        Some(Event::Snapshot(p)) => Ok(WatchEvent::Snapshot(params(p)?)),
        Some(Event::SnapshotDone(_)) => Ok(WatchEvent::SnapshotDone),
        Some(Event::Update(p)) => Ok(WatchEvent::Update(params(p)?)),
        Some(Event::Resync(reason)) => Ok(WatchEvent::Resync(reason)),
        None => Err(ClientError::InvalidResponse("empty watch event".into())),
    }
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`; `https://` with the
    /// `tls` feature). Later connection losses are repaired by the next
    /// call, so a client outlives server restarts.
    pub async fn connect(
        endpoint: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let channel = channel::connect(&endpoint.into(), &config).await?;
        Ok(Self::over(channel, config))
    }

    /// A client that connects on its first call, for a predictor that may
    /// start before the server: a refused connection is an UNAVAILABLE
    /// attempt, retried by the policy like any other. Fails only on an
    /// invalid endpoint.
    pub fn connect_lazy(
        endpoint: impl Into<String>,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let channel = channel::lazy(&endpoint.into(), &config)?;
        Ok(Self::over(channel, config))
    }

    fn over(channel: Channel, config: ClientConfig) -> Self {
        let inner = ParamServiceClient::new(channel)
            .max_decoding_message_size(config.max_response_bytes)
            .max_encoding_message_size(config.max_request_bytes);
        Self {
            inner,
            config: Arc::new(config),
        }
    }

    /// The client's settings.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(self.config.request_timeout());
        request
    }

    /// The current parameters of `doc_ids` in `version`, in request order
    /// (repeats allowed). Docs the version has never updated get its prior
    /// with `is_prior` set. NOT_FOUND for an unknown version.
    pub async fn get_params(
        &self,
        version: &str,
        doc_ids: &[u64],
    ) -> Result<Vec<Params>, ClientError> {
        let message = v1::GetParamsRequest {
            version: version.to_owned(),
            doc_ids: doc_ids.to_vec(),
        };
        let response = with_retries(
            &self.config.retry,
            self.config.request_timeout(),
            true,
            || {
                let mut inner = self.inner.clone();
                let request = self.request(message.clone());
                async move { inner.get_params(request).await }
            },
        )
        .await?
        .into_inner();
        checked_params(version, doc_ids, response.params)
    }

    /// Server-side Thompson draws and mean scores of `doc_ids`. For a
    /// logistic version, `context` is either one vector of the version's
    /// dimension shared by every doc or one per doc, concatenated in
    /// request order; Beta versions take none. `seed` makes the draws
    /// reproducible.
    pub async fn sample_scores(
        &self,
        version: &str,
        doc_ids: &[u64],
        context: Option<&[f32]>,
        seed: Option<u64>,
    ) -> Result<Scores, ClientError> {
        if let Some(index) = context.and_then(|c| c.iter().position(|x| !x.is_finite())) {
            return Err(ClientError::InvalidArgument(format!(
                "context[{index}] is not finite"
            )));
        }
        let message = v1::SampleScoresRequest {
            version: version.to_owned(),
            doc_ids: doc_ids.to_vec(),
            context: context.map(<[f32]>::to_vec).unwrap_or_default(),
            seed,
        };
        let response = with_retries(
            &self.config.retry,
            self.config.request_timeout(),
            true,
            || {
                let mut inner = self.inner.clone();
                let request = self.request(message.clone());
                async move { inner.sample_scores(request).await }
            },
        )
        .await?
        .into_inner();
        if response.sampled.len() != doc_ids.len() || response.mean.len() != doc_ids.len() {
            return Err(ClientError::InvalidResponse(format!(
                "{} draws and {} means for {} docs",
                response.sampled.len(),
                response.mean.len(),
                doc_ids.len()
            )));
        }
        Ok(Scores {
            sampled: response.sampled,
            mean: response.mean,
        })
    }

    /// Opens a `WatchParams` stream: a snapshot of `doc_ids` (empty = the
    /// whole version), then every update. After the snapshot, updates with
    /// a seq at or below `from_seq` are not sent. Opening is retried like
    /// a read; the stream itself has no deadline. [`crate::Mirror`] builds
    /// a local copy on top of this.
    pub async fn watch(
        &self,
        version: &str,
        doc_ids: &[u64],
        from_seq: u64,
    ) -> Result<WatchStream, ClientError> {
        let message = v1::WatchParamsRequest {
            version: version.to_owned(),
            doc_ids: doc_ids.to_vec(),
            from_seq,
        };
        let inner = with_retries(
            &self.config.retry,
            self.config.request_timeout(),
            true,
            || {
                let mut inner = self.inner.clone();
                let message = message.clone();
                async move { inner.watch_params(message).await }
            },
        )
        .await?
        .into_inner();
        Ok(WatchStream { inner })
    }
}

/// Converts a `GetParams` answer, checking it is one entry per requested
/// doc, in order, of the requested version.
fn checked_params(
    version: &str,
    doc_ids: &[u64],
    wire: Vec<v1::Params>,
) -> Result<Vec<Params>, ClientError> {
    if wire.len() != doc_ids.len() {
        return Err(ClientError::InvalidResponse(format!(
            "{} params for {} docs",
            wire.len(),
            doc_ids.len()
        )));
    }
    wire.into_iter()
        .zip(doc_ids)
        .map(|(p, &doc)| {
            if p.doc_id != doc || p.version != version {
                return Err(ClientError::InvalidResponse(format!(
                    "asked for {version}/{doc}, got {}/{}",
                    p.version, p.doc_id
                )));
            }
            Params::try_from(p).map_err(ClientError::InvalidResponse)
        })
        .collect()
}
