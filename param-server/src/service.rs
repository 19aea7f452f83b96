//! `posterior.v1.ParamService` over the store. Handlers are thin: check
//! and convert the request, call a plain function, convert the result;
//! errors become status codes in one place (`ServeError::code`).
//! `GetParams` and `SampleScores` do their work in a server-wide work
//! slot ([`crate::admission`]) or are shed.

use std::sync::Arc;

use posterior_learner::params::params_to_wire;
use posterior_proto::v1;
use posterior_proto::v1::param_service_server::ParamService;
use tonic::{Request, Response, Status};

use crate::admission::{Admission, Ticket, WorkKind};
use crate::encoded::Encoded;
use crate::error::ServeError;
use crate::limits::Limits;
use crate::request::{DocsRequest, SampleRequest, WatchRequest};
use crate::sampler::sample_scores;
use crate::store::{ParamStore, encode_get_params};
use crate::version::ServedVersion;
use crate::watch::{WatchStream, watch};

/// The read side for predictors.
#[derive(Debug, Clone)]
pub struct ParamServiceImpl {
    store: Arc<ParamStore>,
    limits: Limits,
    admission: Arc<Admission>,
}

impl ParamServiceImpl {
    /// A service over `store` with `limits`, admitting work through its
    /// own [`Admission`] built from them.
    pub fn new(store: Arc<ParamStore>, limits: Limits) -> Self {
        let admission = Arc::new(Admission::new(&limits));
        Self::with_admission(store, limits, admission)
    }

    /// A service whose work goes through `admission` (shared, e.g. to read
    /// its [`stats`](Admission::stats)).
    pub fn with_admission(
        store: Arc<ParamStore>,
        limits: Limits,
        admission: Arc<Admission>,
    ) -> Self {
        Self {
            store,
            limits,
            admission,
        }
    }

    /// The admission control of this service's work.
    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    /// `GetParams` without the transport.
    pub fn get_params(&self, request: DocsRequest) -> Result<v1::GetParamsResponse, ServeError> {
        let version = self.store.version(&request.version)?;
        check_response_size(&version, request.doc_ids.len(), &self.limits)?;
        let table = version.table();
        let mut params = Vec::with_capacity(request.doc_ids.len());
        table.read_each(&request.doc_ids, |doc_id, stored| {
            params.push(match stored {
                Some(stored) => stored.to_wire(version.name(), doc_id),
                None => params_to_wire(version.name(), doc_id, version.prior()),
            });
        });
        Ok(v1::GetParamsResponse { params })
    }

    /// `GetParams`' response encoded without the transport: the bytes of
    /// [`ParamServiceImpl::get_params`]' response, written straight from
    /// the table.
    pub fn get_params_bytes(&self, request: DocsRequest) -> Result<Encoded, ServeError> {
        let version = self.store.version(&request.version)?;
        check_response_size(&version, request.doc_ids.len(), &self.limits)?;
        let bytes = encode_get_params(&version, &version.table(), &request.doc_ids);
        Ok(Encoded::from_encoding(bytes))
    }

    /// `SampleScores` without the transport.
    pub fn sample_scores(
        &self,
        request: SampleRequest,
    ) -> Result<v1::SampleScoresResponse, ServeError> {
        let version = self.store.version(&request.docs.version)?;
        let scores = sample_scores(&version, &request)?;
        Ok(v1::SampleScoresResponse {
            sampled: scores.sampled,
            mean: scores.mean,
        })
    }
}

/// Refuses a `GetParams` of `docs` docs of `version` whose response would
/// be over `limits.max_response_bytes` before it is built: with large
/// states (full covariance, high dimensions) the limit would otherwise be
/// checked only after hundreds of MB were encoded.
fn check_response_size(
    version: &ServedVersion,
    docs: usize,
    limits: &Limits,
) -> Result<(), ServeError> {
    let per_doc = version.min_doc_response_bytes().max(1);
    let at_least = docs.saturating_mul(per_doc);
    if at_least > limits.max_response_bytes {
        return Err(ServeError::ResponseTooLarge {
            version: version.name().to_owned(),
            docs,
            at_least,
            max: limits.max_response_bytes,
            max_docs: limits.max_response_bytes / per_doc,
        });
    }
    Ok(())
}

impl ParamServiceImpl {
    /// `GetParams` in a work slot: checks the request, waits for
    /// admission, and runs `finish` on the response in the slot too.
    async fn admitted_get_params<T: Send + 'static>(
        &self,
        request: Request<v1::GetParamsRequest>,
        work: fn(&ParamServiceImpl, DocsRequest) -> Result<T, ServeError>,
    ) -> Result<Response<T>, Status> {
        let (metadata, _, request) = request.into_parts();
        let request = DocsRequest::checked(request, &self.limits)?;
        let docs = request.doc_ids.len();
        let bytes = request.version.len() + docs * size_of::<u64>();
        let ticket = Ticket::new(WorkKind::GetParams, docs, bytes, &metadata, &self.limits);
        let this = self.clone();
        let response = self
            .admission
            .run(ticket, move || work(&this, request))
            .await
            .map_err(ServeError::from)??;
        Ok(Response::new(response))
    }

    /// `GetParams` whose response is encoded in the work slot, so the
    /// slot bounds that CPU too and the runtime's worker only copies
    /// bytes ([`crate::routes`] serves it).
    pub async fn get_params_encoded(
        &self,
        request: Request<v1::GetParamsRequest>,
    ) -> Result<Response<Encoded>, Status> {
        self.admitted_get_params(request, ParamServiceImpl::get_params_bytes)
            .await
    }
}

#[tonic::async_trait]
impl ParamService for ParamServiceImpl {
    async fn get_params(
        &self,
        request: Request<v1::GetParamsRequest>,
    ) -> Result<Response<v1::GetParamsResponse>, Status> {
        self.admitted_get_params(request, ParamServiceImpl::get_params)
            .await
    }

    async fn sample_scores(
        &self,
        request: Request<v1::SampleScoresRequest>,
    ) -> Result<Response<v1::SampleScoresResponse>, Status> {
        let (metadata, _, request) = request.into_parts();
        let request = SampleRequest::checked(request, &self.limits)?;
        let docs = request.docs.doc_ids.len();
        let bytes = request.docs.version.len()
            + docs * size_of::<u64>()
            + request.context.len() * size_of::<f32>();
        let ticket = Ticket::new(WorkKind::SampleScores, docs, bytes, &metadata, &self.limits);
        let this = self.clone();
        let response = self
            .admission
            .run(ticket, move || {
                ParamServiceImpl::sample_scores(&this, request)
            })
            .await
            .map_err(ServeError::from)??;
        Ok(Response::new(response))
    }

    type WatchParamsStream = WatchStream;

    async fn watch_params(
        &self,
        request: Request<v1::WatchParamsRequest>,
    ) -> Result<Response<Self::WatchParamsStream>, Status> {
        let request = WatchRequest::checked(request.into_inner(), &self.limits)?;
        let version = self
            .store
            .version(&request.version)
            .map_err(ServeError::from)?;
        Ok(Response::new(watch(version, request, &self.limits)?))
    }
}
