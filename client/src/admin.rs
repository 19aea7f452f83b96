//! [`AdminClient`]: the operator's `AdminService` calls, authenticated
//! with a bearer token in the `authorization` metadata.
//!
//! Retries: `ListVersions` is a read and is retried like one. The
//! commands (create, fork, retire, savepoint, rollback) are retried only
//! on UNAVAILABLE and RESOURCE_EXHAUSTED, never after a DEADLINE_EXCEEDED,
//! since the command may have been accepted; a create or fork repeated
//! after it took effect fails with ALREADY_EXISTS, which is reported.

use std::sync::Arc;
use std::time::Duration;

use posterior_learner::VersionSpec;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use crate::channel;
use crate::config::ClientConfig;
use crate::error::ClientError;
use crate::retry::with_retries;

/// An operator's handle on the admin service. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AdminClient {
    inner: AdminServiceClient<Channel>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
    config: Arc<ClientConfig>,
}

/// A served version, as listed by the admin service.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionInfo {
    /// Its spec.
    pub spec: VersionSpec,
    /// Whether it was retired (its samples are no longer learned from).
    pub retired: bool,
    /// Docs with parameters.
    pub keys: u64,
}

/// The spec fields a fork may change; `None` keeps the source's value.
/// The model (kind, dimension, prior) is always the source's.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ForkOverrides {
    /// The reward label.
    pub reward_label: Option<String>,
    /// The reward threshold.
    pub reward_threshold: Option<f64>,
    /// Forgetting half-life (event-time ms); 0 turns forgetting off.
    pub forgetting_half_life_ms: Option<i64>,
    /// Whether samples' weights count.
    pub use_sample_weight: Option<bool>,
}

/// The admin service's answer to a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminReceipt {
    /// Human-readable result, e.g. the savepoint id that was written.
    pub message: String,
    /// Id of the control command sent to the learners (empty for reads).
    pub command_id: String,
    /// Event time the learners apply the command at (Unix ms; 0 for reads).
    pub effective_event_time_ms: i64,
}

impl From<ForkOverrides> for v1::VersionOverrides {
    fn from(o: ForkOverrides) -> Self {
        Self {
            reward_label: o.reward_label,
            reward_threshold: o.reward_threshold,
            forgetting_half_life_ms: o.forgetting_half_life_ms,
            use_sample_weight: o.use_sample_weight,
        }
    }
}

impl TryFrom<v1::VersionInfo> for VersionInfo {
    type Error = ClientError;

    fn try_from(info: v1::VersionInfo) -> Result<Self, Self::Error> {
        let spec = info
            .spec
            .ok_or_else(|| ClientError::InvalidResponse("version without a spec".into()))?;
        let name = spec.name.clone();
        let spec = VersionSpec::try_from(spec)
            .map_err(|e| ClientError::InvalidResponse(format!("spec of {name:?}: {e}")))?;
        Ok(Self {
            spec,
            retired: info.retired,
            keys: info.keys,
        })
    }
}

impl From<v1::AdminResponse> for AdminReceipt {
    fn from(response: v1::AdminResponse) -> Self {
        Self {
            message: response.message,
            command_id: response.command_id,
            effective_event_time_ms: response.effective_event_time_ms,
        }
    }
}

impl AdminClient {
    /// Connects to the admin service at `endpoint`, sending `token` as
    /// `authorization: Bearer <token>` with every call.
    pub async fn connect(
        endpoint: impl Into<String>,
        token: &str,
        config: ClientConfig,
    ) -> Result<Self, ClientError> {
        let token = token.trim();
        // RFC 6750 tokens are visible ASCII; anything else would go out as
        // opaque bytes that no server compares equal.
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ClientError::InvalidToken);
        }
        let authorization = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidToken)?;
        let channel = channel::connect(&endpoint.into(), &config).await?;
        let inner = AdminServiceClient::new(channel)
            .max_decoding_message_size(config.max_response_bytes)
            .max_encoding_message_size(config.max_request_bytes);
        Ok(Self {
            inner,
            authorization,
            config: Arc::new(config),
        })
    }

    fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        request
    }

    /// Runs one admin call with retries; `idempotent` as in
    /// [`crate::error::is_retryable`]. A call that is not (one that sends
    /// a command) has the command deadline: the server answers it once the
    /// command is durable.
    async fn call<M, R, F, Fut>(
        &self,
        message: M,
        idempotent: bool,
        rpc: F,
    ) -> Result<R, ClientError>
    where
        M: Clone,
        F: Fn(AdminServiceClient<Channel>, Request<M>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let timeout = if idempotent {
            self.config.request_timeout()
        } else {
            self.config.command_timeout()
        };
        let response = with_retries(&self.config.retry, timeout, idempotent, || {
            rpc(self.inner.clone(), self.request(message.clone(), timeout))
        })
        .await?;
        Ok(response.into_inner())
    }

    /// Registers a new version with the prior of `spec`.
    pub async fn create_version(&self, spec: &VersionSpec) -> Result<AdminReceipt, ClientError> {
        let message = v1::CreateVersionRequest {
            spec: Some(spec.into()),
        };
        let response = self
            .call(message, false, |mut c, r| async move {
                c.create_version(r).await
            })
            .await?;
        Ok(response.into())
    }

    /// Registers `to`, an A/B arm warm-started from `from`'s current
    /// parameters, with `overrides` applied to `from`'s spec.
    pub async fn fork_version(
        &self,
        from: &str,
        to: &str,
        overrides: ForkOverrides,
    ) -> Result<AdminReceipt, ClientError> {
        let message = v1::ForkVersionRequest {
            from: from.to_owned(),
            to: to.to_owned(),
            overrides: Some(overrides.into()),
        };
        let response = self
            .call(
                message,
                false,
                |mut c, r| async move { c.fork_version(r).await },
            )
            .await?;
        Ok(response.into())
    }

    /// Every version the service knows, retired ones included.
    pub async fn list_versions(&self) -> Result<Vec<VersionInfo>, ClientError> {
        let response = self
            .call(v1::ListVersionsRequest {}, true, |mut c, r| async move {
                c.list_versions(r).await
            })
            .await?;
        response
            .versions
            .into_iter()
            .map(VersionInfo::try_from)
            .collect()
    }

    /// Retires `name`: its samples stop being learned from; its
    /// parameters stay served.
    pub async fn retire_version(&self, name: &str) -> Result<AdminReceipt, ClientError> {
        let message = v1::RetireVersionRequest {
            name: name.to_owned(),
        };
        let response = self
            .call(message, false, |mut c, r| async move {
                c.retire_version(r).await
            })
            .await?;
        Ok(response.into())
    }

    /// Asks every learner for a savepoint at the same cut of the input;
    /// `label` is free text stored in its manifest.
    pub async fn trigger_savepoint(&self, label: &str) -> Result<AdminReceipt, ClientError> {
        let message = v1::TriggerSavepointRequest {
            label: label.to_owned(),
        };
        let response = self
            .call(message, false, |mut c, r| async move {
                c.trigger_savepoint(r).await
            })
            .await?;
        Ok(response.into())
    }

    /// Restores `version`'s parameters from savepoint `savepoint_id`,
    /// leaving the other versions; seqs keep increasing, so predictors
    /// see the rollback as newer values.
    pub async fn rollback_version(
        &self,
        version: &str,
        savepoint_id: &str,
    ) -> Result<AdminReceipt, ClientError> {
        let message = v1::RollbackVersionRequest {
            version: version.to_owned(),
            savepoint_id: savepoint_id.to_owned(),
        };
        let response = self
            .call(message, false, |mut c, r| async move {
                c.rollback_version(r).await
            })
            .await?;
        Ok(response.into())
    }
}
