//! The two contenders behind one call: the param-server over gRPC and
//! Redis with `MGET`. Each client owns one connection. Both sides do the
//! same client work: the Redis values are decoded into `Params`, as tonic
//! decodes the `GetParamsResponse`.

use anyhow::{Context, Result, ensure};
use posterior_client::transport::Connector;
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use prost::Message;
use redis::aio::MultiplexedConnection;
use tonic::transport::{Channel, Endpoint};

use posterior_param_server::encoded::Encoded;

use crate::data::{VERSION, redis_key};

/// Largest response a client accepts (a batch of 10 000 docs fits).
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Which server a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Side {
    /// The param-server, over gRPC.
    ParamServer,
    /// Redis, `MGET` of the serialized `Params`.
    Redis,
}

impl Side {
    /// The name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Side::ParamServer => "param-server",
            Side::Redis => "redis",
        }
    }
}

/// What one request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// `GetParams` (param-server) or `MGET` (Redis) of `batch` docs.
    Get,
    /// `SampleScores` of `batch` docs with one shared context.
    Sample,
}

impl Op {
    /// The name in the tables.
    pub fn name(self) -> &'static str {
        match self {
            Op::Get => "GetParams",
            Op::Sample => "SampleScores",
        }
    }
}

/// One client with its own connection.
#[derive(Clone)]
pub enum Client {
    /// A gRPC client on its own HTTP/2 connection.
    ParamServer(ParamServiceClient<Channel>),
    /// A Redis client on its own TCP connection.
    Redis(MultiplexedConnection),
}

/// A param-server client on a new connection.
pub async fn param_server(addr: &str) -> Result<ParamServiceClient<Channel>> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))?
        // As the client crate does: large responses in one DATA frame.
        .max_frame_size(posterior_client::MAX_FRAME_BYTES)
        .connect_with_connector(Connector)
        .await
        .with_context(|| format!("connect to the param-server at {addr}"))?;
    Ok(ParamServiceClient::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES))
}

/// A `GetParams`-only client on a new connection that does not decode
/// the response's params (the codec skips them): the overload run's client,
/// so that one client core can offer more than the server can serve.
#[derive(Debug, Clone)]
pub struct LightClient {
    grpc: tonic::client::Grpc<Channel>,
}

impl LightClient {
    /// Connects to the param-server at `addr`.
    pub async fn connect(addr: &str) -> Result<Self> {
        let channel = Endpoint::from_shared(format!("http://{addr}"))?
            .max_frame_size(posterior_client::MAX_FRAME_BYTES)
            .connect_with_connector(Connector)
            .await
            .with_context(|| format!("connect to the param-server at {addr}"))?;
        let grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_RESPONSE_BYTES);
        Ok(Self { grpc })
    }

    /// `GetParams`, its response read and dropped.
    pub async fn get_params(&mut self, request: v1::GetParamsRequest) -> Result<(), tonic::Status> {
        self.grpc
            .ready()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let codec = posterior_proto::codec::SliceCodec::<v1::GetParamsRequest, Encoded>::default();
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(
            "/posterior.v1.ParamService/GetParams",
        );
        let _skipped: tonic::Response<Encoded> = self
            .grpc
            .unary(tonic::Request::new(request), path, codec)
            .await?;
        Ok(())
    }
}

/// A Redis client on a new connection.
pub async fn redis(addr: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(format!("redis://{addr}/"))?;
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(std::time::Duration::from_secs(30)));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .with_context(|| format!("connect to redis at {addr}"))
}

impl Client {
    /// A new connection to `side`.
    pub async fn connect(side: Side, ps_addr: &str, redis_addr: Option<&str>) -> Result<Self> {
        Ok(match side {
            Side::ParamServer => Client::ParamServer(param_server(ps_addr).await?),
            Side::Redis => Client::Redis(redis(redis_addr.context("no redis address")?).await?),
        })
    }

    /// Sends one request of `op` for `doc_ids`; returns the docs answered.
    pub async fn call(&mut self, op: Op, doc_ids: Vec<u64>, context: &[f32]) -> Result<usize> {
        let want = doc_ids.len();
        let got = match (self, op) {
            (Client::ParamServer(client), Op::Get) => {
                let request = v1::GetParamsRequest {
                    version: VERSION.into(),
                    doc_ids,
                };
                let response = client.get_params(request).await?.into_inner();
                std::hint::black_box(&response);
                response.params.len()
            }
            (Client::ParamServer(client), Op::Sample) => {
                let request = v1::SampleScoresRequest {
                    version: VERSION.into(),
                    doc_ids,
                    context: context.to_vec(),
                    seed: None,
                };
                let response = client.sample_scores(request).await?.into_inner();
                std::hint::black_box(&response);
                response.sampled.len()
            }
            (Client::Redis(con), Op::Get) => mget(con, &doc_ids).await?,
            (Client::Redis(_), Op::Sample) => anyhow::bail!("redis does not sample"),
        };
        ensure!(got == want, "{got} docs answered of {want}");
        Ok(got)
    }
}

/// `MGET` of the docs' keys, each value decoded into `Params`.
async fn mget(con: &mut MultiplexedConnection, doc_ids: &[u64]) -> Result<usize> {
    let mut mget = redis::cmd("MGET");
    for &doc in doc_ids {
        mget.arg(&redis_key(doc)[..]);
    }
    let values: Vec<Option<Vec<u8>>> = mget.query_async(con).await?;
    for value in &values {
        let bytes = value.as_deref().context("a key is missing in redis")?;
        std::hint::black_box(v1::Params::decode(bytes)?);
    }
    Ok(values.len())
}
