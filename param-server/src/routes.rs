//! `posterior.v1.ParamService` as the server mounts it: `GetParams` is
//! routed to [`ParamServiceImpl::get_params_encoded`], whose response is
//! encoded in its work slot (same bytes on the wire); every other method
//! goes to the generated server.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use posterior_proto::codec::SliceCodec;
use posterior_proto::v1;
use posterior_proto::v1::param_service_server::ParamServiceServer;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use crate::encoded::Encoded;
use crate::limits::Limits;
use crate::service::ParamServiceImpl;

/// The path of `GetParams`.
pub const GET_PARAMS_PATH: &str = "/posterior.v1.ParamService/GetParams";

type RouteFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

/// `ParamService` with `GetParams` encoded in the work slot.
#[derive(Debug, Clone)]
pub struct ParamRoutes {
    service: ParamServiceImpl,
    generated: ParamServiceServer<ParamServiceImpl>,
    max_request_bytes: usize,
    max_response_bytes: usize,
}

impl ParamRoutes {
    /// Routes over `service`, with `limits`' message sizes.
    pub fn new(service: ParamServiceImpl, limits: &Limits) -> Self {
        let generated = ParamServiceServer::new(service.clone())
            .max_decoding_message_size(limits.max_request_bytes)
            .max_encoding_message_size(limits.max_response_bytes);
        Self {
            service,
            generated,
            max_request_bytes: limits.max_request_bytes,
            max_response_bytes: limits.max_response_bytes,
        }
    }
}

impl NamedService for ParamRoutes {
    const NAME: &'static str = <ParamServiceServer<ParamServiceImpl> as NamedService>::NAME;
}

/// The unary `GetParams` handler answering with [`Encoded`] bytes.
struct EncodedGetParams(ParamServiceImpl);

impl UnaryService<v1::GetParamsRequest> for EncodedGetParams {
    type Response = Encoded;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Encoded>, Status>> + Send>>;

    fn call(&mut self, request: Request<v1::GetParamsRequest>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move { service.get_params_encoded(request).await })
    }
}

impl tonic::codegen::Service<http::Request<Body>> for ParamRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path() != GET_PARAMS_PATH {
            return self.generated.call(request);
        }
        let method = EncodedGetParams(self.service.clone());
        let mut grpc = Grpc::new(SliceCodec::<Encoded, v1::GetParamsRequest>::default())
            .apply_max_message_size_config(
                Some(self.max_request_bytes),
                Some(self.max_response_bytes),
            );
        Box::pin(async move { Ok(grpc.unary(method, request).await) })
    }
}
