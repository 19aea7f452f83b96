//! A test double of `AdminService`: checks the bearer token, records
//! every request it accepts and answers from a fixed list of versions.

use std::sync::{Arc, Mutex};

use posterior_learner::VersionSpec;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_server::AdminService;
use tonic::{Request, Response, Status};

/// The token the double accepts.
pub const TOKEN: &str = "s3cret-token";

/// A request the double accepted.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    Create(v1::CreateVersionRequest),
    Fork(v1::ForkVersionRequest),
    List,
    Retire(v1::RetireVersionRequest),
    Savepoint(v1::TriggerSavepointRequest),
    Rollback(v1::RollbackVersionRequest),
}

/// The double; clones share what it received.
#[derive(Debug, Clone)]
pub struct AdminDouble {
    pub versions: Vec<VersionSpec>,
    pub received: Arc<Mutex<Vec<Received>>>,
    /// Calls refused for a missing or wrong token.
    pub refused: Arc<Mutex<u32>>,
    /// The `grpc-timeout` header of each accepted request, in order.
    pub deadlines: Arc<Mutex<Vec<Option<String>>>>,
}

impl AdminDouble {
    /// A double listing `versions`.
    pub fn new(versions: Vec<VersionSpec>) -> Self {
        Self {
            versions,
            received: Arc::default(),
            refused: Arc::default(),
            deadlines: Arc::default(),
        }
    }

    /// What it accepted so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    fn accept<T>(&self, request: Request<T>, record: fn(T) -> Received) -> Result<(), Status> {
        let expected = format!("Bearer {TOKEN}");
        let authorized = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            == Some(expected.as_str());
        if !authorized {
            *self.refused.lock().unwrap() += 1;
            return Err(Status::unauthenticated("missing or wrong bearer token"));
        }
        let deadline = request
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        self.deadlines.lock().unwrap().push(deadline);
        self.received
            .lock()
            .unwrap()
            .push(record(request.into_inner()));
        Ok(())
    }

    fn known(&self, name: &str) -> Result<(), Status> {
        if self.versions.iter().any(|v| v.name == name) {
            Ok(())
        } else {
            Err(Status::not_found(format!("unknown version {name:?}")))
        }
    }
}

fn answer(message: String) -> Result<Response<v1::AdminResponse>, Status> {
    Ok(Response::new(v1::AdminResponse {
        message,
        ..v1::AdminResponse::default()
    }))
}

#[tonic::async_trait]
impl AdminService for AdminDouble {
    async fn create_version(
        &self,
        request: Request<v1::CreateVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let name = request
            .get_ref()
            .spec
            .as_ref()
            .map(|s| s.name.clone())
            .unwrap_or_default();
        self.accept(request, Received::Create)?;
        answer(format!("created {name}"))
    }

    async fn fork_version(
        &self,
        request: Request<v1::ForkVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let (from, to) = (request.get_ref().from.clone(), request.get_ref().to.clone());
        self.accept(request, Received::Fork)?;
        self.known(&from)?;
        answer(format!("forked {from} into {to}"))
    }

    async fn list_versions(
        &self,
        request: Request<v1::ListVersionsRequest>,
    ) -> Result<Response<v1::ListVersionsResponse>, Status> {
        self.accept(request, |_| Received::List)?;
        let versions = self
            .versions
            .iter()
            .enumerate()
            .map(|(i, spec)| v1::VersionInfo {
                spec: Some(spec.into()),
                retired: i == 1,
                keys: 10 * i as u64,
            })
            .collect();
        Ok(Response::new(v1::ListVersionsResponse { versions }))
    }

    async fn retire_version(
        &self,
        request: Request<v1::RetireVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let name = request.get_ref().name.clone();
        self.accept(request, Received::Retire)?;
        self.known(&name)?;
        answer(format!("retired {name}"))
    }

    async fn trigger_savepoint(
        &self,
        request: Request<v1::TriggerSavepointRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let label = request.get_ref().label.clone();
        self.accept(request, Received::Savepoint)?;
        answer(format!("savepoint sp-0001 ({label})"))
    }

    async fn rollback_version(
        &self,
        request: Request<v1::RollbackVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let r = request.get_ref().clone();
        self.accept(request, Received::Rollback)?;
        self.known(&r.version)?;
        answer(format!("rolled {} back to {}", r.version, r.savepoint_id))
    }
}
