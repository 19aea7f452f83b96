//! `posterior.v1.ParamService` over the store. Handlers are thin: check
//! and convert the request, call a plain function, convert the result;
//! errors become status codes in one place (`ServeError::code`).

use std::sync::Arc;

use posterior_proto::v1;
use posterior_proto::v1::param_service_server::ParamService;
use tonic::{Request, Response, Status};

use crate::error::ServeError;
use crate::limits::Limits;
use crate::request::{DocsRequest, SampleRequest, WatchRequest};
use crate::sampler::sample_scores;
use crate::store::{ParamStore, wire_params};
use crate::watch::{WatchStream, watch};

/// The read side for predictors.
#[derive(Debug, Clone)]
pub struct ParamServiceImpl {
    store: Arc<ParamStore>,
    limits: Limits,
}

impl ParamServiceImpl {
    /// A service over `store` with `limits`.
    pub fn new(store: Arc<ParamStore>, limits: Limits) -> Self {
        Self { store, limits }
    }

    /// `GetParams` without the transport.
    pub fn get_params(&self, request: DocsRequest) -> Result<v1::GetParamsResponse, ServeError> {
        let version = self.store.version(&request.version)?;
        let table = version.table();
        let params = request
            .doc_ids
            .iter()
            .map(|&doc| wire_params(&version, &table, doc))
            .collect();
        Ok(v1::GetParamsResponse { params })
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

#[tonic::async_trait]
impl ParamService for ParamServiceImpl {
    async fn get_params(
        &self,
        request: Request<v1::GetParamsRequest>,
    ) -> Result<Response<v1::GetParamsResponse>, Status> {
        let request = DocsRequest::checked(request.into_inner(), &self.limits)?;
        Ok(Response::new(ParamServiceImpl::get_params(self, request)?))
    }

    async fn sample_scores(
        &self,
        request: Request<v1::SampleScoresRequest>,
    ) -> Result<Response<v1::SampleScoresResponse>, Status> {
        let request = SampleRequest::checked(request.into_inner(), &self.limits)?;
        Ok(Response::new(ParamServiceImpl::sample_scores(
            self, request,
        )?))
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
