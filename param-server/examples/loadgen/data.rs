//! The served data: `keys` diagonal d-dimensional states in the
//! param-server's store, and the same keys in Redis, each holding the
//! protobuf `Params` bytes that `GetParams` returns for that doc — byte
//! for byte what a predictor gets from either side (checked on a sample).

use std::sync::Arc;

use anyhow::{Context, Result, ensure};
use posterior_learner::params::params_to_wire;
use posterior_learner::posterior::{
    CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
use posterior_param_server::ParamStore;
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use redis::aio::MultiplexedConnection;
use tonic::transport::Channel;

/// The served version's name.
pub const VERSION: &str = "dwell";

/// Keys written to Redis per `MSET`.
const REDIS_CHUNK: u64 = 1000;

/// The Redis key of a doc: the version, a colon, the id big-endian.
pub fn redis_key(doc_id: u64) -> [u8; 14] {
    let mut key = [0u8; 14];
    key[..6].copy_from_slice(b"dwell:");
    key[6..].copy_from_slice(&doc_id.to_be_bytes());
    key
}

/// The served version's spec: logistic, diagonal, dimension `dim`.
pub fn spec(dim: usize) -> Result<VersionSpec> {
    Ok(VersionSpec {
        name: VERSION.into(),
        model: ModelSpec::new(ModelKind::Logistic(LogisticPrior::isotropic(
            CovarianceForm::Diagonal,
            dim,
            1.0,
        )?)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    })
}

/// A state of `doc_id` at `seq`, with values drawn from a generator
/// seeded by both (so every run serves the same parameters).
pub fn state(doc_id: u64, seq: u64, dim: usize) -> KeyState {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(doc_id ^ seq.rotate_left(32));
    let mean = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let precision = (0..dim).map(|_| rng.random_range(1.0..50.0)).collect();
    KeyState {
        seq,
        sample_count: seq as f64,
        updated_event_time_ms: 1_700_000_000_000 + seq as i64,
        posterior: Posterior::Diagonal(
            DiagonalGaussian::from_parts(mean, precision).expect("finite, positive precisions"),
        ),
    }
}

/// A store serving `keys` docs of one version at seq 1.
pub fn fill_store(keys: u64, dim: usize) -> Result<Arc<ParamStore>> {
    let store = Arc::new(ParamStore::default());
    store.register(spec(dim)?)?;
    for doc in 0..keys {
        store.apply(VERSION, doc, state(doc, 1, dim))?;
    }
    Ok(store)
}

/// Writes every doc's wire `Params` bytes into Redis, `REDIS_CHUNK` keys
/// per `MSET`, after emptying the database.
pub async fn fill_redis(con: &mut MultiplexedConnection, keys: u64, dim: usize) -> Result<()> {
    redis::cmd("FLUSHALL")
        .query_async::<()>(con)
        .await
        .context("flush redis")?;
    for start in (0..keys).step_by(REDIS_CHUNK as usize) {
        let mut mset = redis::cmd("MSET");
        for doc in start..(start + REDIS_CHUNK).min(keys) {
            let bytes = params_to_wire(VERSION, doc, &state(doc, 1, dim)).encode_to_vec();
            mset.arg(&redis_key(doc)[..]).arg(bytes);
        }
        mset.query_async::<()>(con).await.context("redis MSET")?;
    }
    let size: u64 = redis::cmd("DBSIZE").query_async(con).await?;
    ensure!(size == keys, "redis holds {size} keys, wrote {keys}");
    Ok(())
}

/// Checks on `samples` random docs that Redis returns byte for byte the
/// `Params` that GetParams returns.
pub async fn check_same_bytes(
    ps: &mut ParamServiceClient<Channel>,
    con: &mut MultiplexedConnection,
    keys: u64,
    samples: usize,
) -> Result<()> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(99);
    let doc_ids: Vec<u64> = (0..samples).map(|_| rng.random_range(0..keys)).collect();
    let served = ps
        .get_params(v1::GetParamsRequest {
            version: VERSION.into(),
            doc_ids: doc_ids.clone(),
        })
        .await?
        .into_inner()
        .params;
    for (doc, params) in doc_ids.iter().zip(&served) {
        let stored: Vec<u8> = redis::cmd("GET")
            .arg(&redis_key(*doc)[..])
            .query_async(con)
            .await?;
        ensure!(
            stored == params.encode_to_vec(),
            "doc {doc}: redis and GetParams differ"
        );
    }
    Ok(())
}
