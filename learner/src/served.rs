//! A param-server as the source of served parameters for the restore of
//! last resort ([`crate::fallback`]): each version is read from a
//! `WatchParams` snapshot over gRPC — what the server serves, the last
//! values the learners published. With a token of its admin service, the
//! served versions are listed too (`ListVersions`, read role).

use std::time::Duration;

use anyhow::{Context as _, bail};
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use posterior_proto::v1::watch_params_event::Event;

use crate::fallback::ServedParams;
use crate::params::{AnnouncedVersion, params_from_wire};
use crate::posterior::KeyState;
use crate::version::VersionSpec;

/// Largest snapshot message accepted (one doc's `Params` each).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// A param-server's `ParamService`, read with a runtime of its own (the
/// learner's restore path is synchronous).
pub struct ParamServerSource {
    runtime: tokio::runtime::Runtime,
    endpoint: tonic::transport::Endpoint,
    timeout: Duration,
    /// A bearer token of the server's admin service, to list versions.
    token: Option<String>,
}

impl ParamServerSource {
    /// A source reading `endpoint` (e.g. `http://host:port`), each
    /// version's snapshot within `timeout`; with `token` (of the admin
    /// service's read role), it lists the served versions too. Connects
    /// lazily.
    pub fn new(endpoint: &str, timeout: Duration, token: Option<String>) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("start the fallback client's runtime")?;
        let endpoint = tonic::transport::Endpoint::from_shared(endpoint.to_owned())
            .with_context(|| format!("param-server endpoint {endpoint:?}"))?
            .connect_timeout(timeout);
        Ok(Self {
            runtime,
            endpoint,
            timeout,
            token,
        })
    }

    /// A connection to the server, and its address for messages.
    async fn connect(&self) -> anyhow::Result<(tonic::transport::Uri, tonic::transport::Channel)> {
        let uri = self.endpoint.uri().clone();
        let channel = self
            .endpoint
            .connect()
            .await
            .with_context(|| format!("connect to the param-server at {uri}"))?;
        Ok((uri, channel))
    }

    async fn list_versions(&self, token: &str) -> anyhow::Result<Vec<AnnouncedVersion>> {
        let (uri, channel) = self.connect().await?;
        let mut request = tonic::Request::new(v1::ListVersionsRequest {});
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}")
                .parse()
                .context("the admin token is not a valid header value")?,
        );
        let listed = AdminServiceClient::new(channel)
            .list_versions(request)
            .await
            .map_err(|status| anyhow::anyhow!("ListVersions at {uri}: {status}"))?
            .into_inner();
        listed
            .versions
            .into_iter()
            .map(|info| {
                let spec = info
                    .spec
                    .with_context(|| format!("a version listed by {uri} has no spec"))?;
                let name = spec.name.clone();
                Ok(AnnouncedVersion {
                    spec: VersionSpec::try_from(spec)
                        .map_err(|e| anyhow::anyhow!("version {name:?} listed by {uri}: {e}"))?,
                    retired: info.retired,
                })
            })
            .collect()
    }

    /// Runs `call` on the source's runtime within its timeout.
    fn block_on<T>(
        &self,
        what: &str,
        call: impl std::future::Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        self.runtime.block_on(async {
            tokio::time::timeout(self.timeout, call)
                .await
                .with_context(|| format!("{what} took longer than {:?}", self.timeout))?
        })
    }

    async fn snapshot(&self, version: &str) -> anyhow::Result<Vec<(u64, KeyState)>> {
        let (uri, channel) = self.connect().await?;
        let mut client =
            ParamServiceClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
        let request = v1::WatchParamsRequest {
            version: version.to_owned(),
            doc_ids: Vec::new(),
            // No live updates: only the snapshot is read.
            from_seq: u64::MAX,
        };
        let mut stream = match client.watch_params(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::NotFound => return Ok(Vec::new()),
            Err(status) => bail!("WatchParams({version:?}) at {uri}: {status}"),
        };
        let mut states: Vec<(u64, KeyState)> = Vec::new();
        loop {
            let event = stream
                .message()
                .await
                .with_context(|| format!("snapshot of {version:?} from {uri}"))?;
            match event.and_then(|e| e.event) {
                Some(Event::Snapshot(params)) if !params.is_prior => {
                    let state = params_from_wire(&params).map_err(|why| {
                        anyhow::anyhow!("doc {} of {version:?} from {uri}: {why}", params.doc_id)
                    })?;
                    states.push((params.doc_id, state));
                }
                Some(Event::SnapshotDone(_)) => break,
                Some(Event::Resync(why)) => {
                    bail!("the param-server at {uri} cut the snapshot of {version:?}: {why}")
                }
                Some(Event::Snapshot(_) | Event::Update(_)) => {}
                None => bail!("the snapshot of {version:?} from {uri} ended before it was done"),
            }
        }
        // One state per doc: the newest.
        states.sort_by_key(|(doc_id, state)| (*doc_id, std::cmp::Reverse(state.seq)));
        states.dedup_by_key(|(doc_id, _)| *doc_id);
        Ok(states)
    }
}

impl ServedParams for ParamServerSource {
    fn fetch(&mut self, version: &VersionSpec) -> anyhow::Result<Vec<(u64, KeyState)>> {
        let name = &version.name;
        self.block_on(&format!("the snapshot of {name:?}"), self.snapshot(name))
    }

    fn versions(&mut self) -> anyhow::Result<Vec<AnnouncedVersion>> {
        match &self.token {
            Some(token) => self.block_on("listing the versions", self.list_versions(token)),
            None => Ok(Vec::new()),
        }
    }
}
