//! `posterior.v1.AdminService`: operators create, fork, retire, savepoint
//! and roll back versions. Each mutating call is validated against the
//! store's versions, stamped as a `ControlCommand` (a random 128-bit id,
//! an effective event time = wall clock + a configured lead, so the
//! learners' watermark has not passed it yet, and the caller's token name)
//! and handed to the [`ControlPlane`]; the learners apply it at that event
//! time and announce its result, which the store then reflects.
//!
//! Served only behind [`AdminGuard`](crate::guard::AdminGuard), which
//! authenticates and audits every call; a handler reached without the
//! guard refuses. Savepoint paths are never taken from a request: a
//! rollback names a savepoint by a plain id that the learner resolves in
//! its own savepoint directory.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use posterior_learner::VersionSpec;
use posterior_learner::control::Scheduled;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_server::AdminService;
use posterior_proto::v1::control_command::Command as Wire;
use tonic::{Request, Response, Status};

use crate::control::ControlPlane;
use crate::error::AdminError;
use crate::guard::{CallNote, call_context};
use crate::store::ParamStore;

/// Longest savepoint id accepted, in bytes.
pub const MAX_SAVEPOINT_ID_BYTES: usize = 128;
/// Longest savepoint label accepted, in bytes.
pub const MAX_LABEL_BYTES: usize = 256;
/// Characters of a request field copied into an audit summary.
const SUMMARY_FIELD_CHARS: usize = 64;

/// Wall-clock milliseconds since the Unix epoch.
pub fn system_clock_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The admin side: validation against the store, stamping, delivery.
#[derive(Debug, Clone)]
pub struct AdminServiceImpl {
    store: Arc<ParamStore>,
    control: Arc<dyn ControlPlane>,
    command_lead_ms: i64,
    clock_ms: fn() -> i64,
}

impl AdminServiceImpl {
    /// A service over `store` sending commands to `control`, stamped
    /// `command_lead_ms` after the wall-clock time of the call.
    pub fn new(
        store: Arc<ParamStore>,
        control: Arc<dyn ControlPlane>,
        command_lead_ms: i64,
    ) -> Self {
        Self {
            store,
            control,
            command_lead_ms,
            clock_ms: system_clock_ms,
        }
    }

    /// The same service reading time from `clock_ms` (tests).
    pub fn with_clock(self, clock_ms: fn() -> i64) -> Self {
        Self { clock_ms, ..self }
    }

    /// `CreateVersion` without the transport.
    pub async fn create_version(
        &self,
        request: v1::CreateVersionRequest,
        issued_by: &str,
    ) -> Result<v1::AdminResponse, AdminError> {
        let spec = request.spec.clone().ok_or(AdminError::Missing("spec"))?;
        let spec = VersionSpec::try_from(spec)?;
        self.check_new_name(&spec.name)?;
        let what = format!("create version {:?}", spec.name);
        self.issue(Wire::CreateVersion(request), issued_by, what)
            .await
    }

    /// `ForkVersion` without the transport.
    pub async fn fork_version(
        &self,
        request: v1::ForkVersionRequest,
        issued_by: &str,
    ) -> Result<v1::AdminResponse, AdminError> {
        if request.from.is_empty() {
            return Err(AdminError::Missing("from"));
        }
        if request.to.is_empty() {
            return Err(AdminError::Missing("to"));
        }
        self.store.version(&request.from)?;
        self.check_new_name(&request.to)?;
        let what = format!("fork {:?} into {:?}", request.from, request.to);
        self.issue(Wire::ForkVersion(request), issued_by, what)
            .await
    }

    /// `RetireVersion` without the transport.
    pub async fn retire_version(
        &self,
        request: v1::RetireVersionRequest,
        issued_by: &str,
    ) -> Result<v1::AdminResponse, AdminError> {
        if request.name.is_empty() {
            return Err(AdminError::Missing("name"));
        }
        if self.store.version(&request.name)?.is_retired() {
            return Err(AdminError::Retired(request.name));
        }
        let what = format!("retire {:?}", request.name);
        self.issue(Wire::RetireVersion(request), issued_by, what)
            .await
    }

    /// `TriggerSavepoint` without the transport.
    pub async fn trigger_savepoint(
        &self,
        request: v1::TriggerSavepointRequest,
        issued_by: &str,
    ) -> Result<v1::AdminResponse, AdminError> {
        check_label(&request.label)?;
        let what = format!(
            "savepoint labelled {:?} (its id will be the command id)",
            request.label
        );
        self.issue(Wire::TriggerSavepoint(request), issued_by, what)
            .await
    }

    /// `RollbackVersion` without the transport.
    pub async fn rollback_version(
        &self,
        request: v1::RollbackVersionRequest,
        issued_by: &str,
    ) -> Result<v1::AdminResponse, AdminError> {
        if request.version.is_empty() {
            return Err(AdminError::Missing("version"));
        }
        self.store.version(&request.version)?;
        check_savepoint_id(&request.savepoint_id)?;
        let what = format!(
            "roll {:?} back to savepoint {:?}",
            request.version, request.savepoint_id
        );
        self.issue(Wire::RollbackVersion(request), issued_by, what)
            .await
    }

    /// `ListVersions` without the transport: every served version by id.
    pub fn list_versions(&self) -> v1::ListVersionsResponse {
        let versions = self
            .store
            .versions()
            .iter()
            .map(|version| v1::VersionInfo {
                spec: Some(v1::VersionSpec::from(version.spec())),
                retired: version.is_retired(),
                keys: version.table().len() as u64,
            })
            .collect();
        v1::ListVersionsResponse { versions }
    }

    fn check_new_name(&self, name: &str) -> Result<(), AdminError> {
        match self.store.version(name) {
            Ok(_) => Err(crate::StoreError::VersionExists(name.to_owned()).into()),
            Err(_) => Ok(()),
        }
    }

    /// Stamps `command`, checks it with the learner's own decoder where
    /// the learner has rules for it, and hands it to the control plane.
    async fn issue(
        &self,
        command: Wire,
        issued_by: &str,
        what: String,
    ) -> Result<v1::AdminResponse, AdminError> {
        let wire = v1::ControlCommand {
            command_id: format!("{:032x}", rand::random::<u128>()),
            effective_event_time_ms: (self.clock_ms)().saturating_add(self.command_lead_ms),
            issued_by: issued_by.to_owned(),
            command: Some(command),
        };
        if matches!(
            wire.command,
            Some(Wire::CreateVersion(_) | Wire::ForkVersion(_) | Wire::RetireVersion(_))
        ) {
            Scheduled::try_from(wire.clone())
                .map_err(|e| AdminError::InvalidCommand(e.to_string()))?;
        }
        let (command_id, at_ms) = (wire.command_id.clone(), wire.effective_event_time_ms);
        self.control.send(wire).await?;
        Ok(v1::AdminResponse {
            message: format!("{what}: scheduled as command {command_id} at event time {at_ms} ms"),
            command_id,
            effective_event_time_ms: at_ms,
        })
    }
}

/// Accepts a plain savepoint id: 1..=128 bytes of `A-Z a-z 0-9 . _ -`,
/// not starting with `.` and without `..` — never a path.
pub fn check_savepoint_id(id: &str) -> Result<(), AdminError> {
    let reason = if id.is_empty() {
        Some("must not be empty")
    } else if id.len() > MAX_SAVEPOINT_ID_BYTES {
        Some("is longer than 128 bytes")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Some("may only hold A-Z a-z 0-9 . _ - (it is an id, never a path)")
    } else if id.starts_with('.') || id.contains("..") {
        Some("must not start with '.' or contain '..'")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(AdminError::BadSavepointId {
            id: id.chars().take(SUMMARY_FIELD_CHARS).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

fn check_label(label: &str) -> Result<(), AdminError> {
    if label.len() > MAX_LABEL_BYTES {
        return Err(AdminError::BadLabel("is longer than 256 bytes"));
    }
    if label.chars().any(char::is_control) {
        return Err(AdminError::BadLabel("must not hold control characters"));
    }
    Ok(())
}

/// A request field for an audit summary: quoted, escaped, cut short.
fn field(text: &str) -> String {
    let short: String = text.chars().take(SUMMARY_FIELD_CHARS).collect();
    format!("{short:?}")
}

/// Records the outcome in the call's note and converts it to a response.
fn finish(
    note: &CallNote,
    result: Result<v1::AdminResponse, AdminError>,
) -> Result<Response<v1::AdminResponse>, Status> {
    if let Ok(response) = &result {
        note.command_id(&response.command_id);
    }
    note.outcome(&result, |r| r.message.clone());
    result.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl AdminService for AdminServiceImpl {
    async fn create_version(
        &self,
        request: Request<v1::CreateVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let (caller, note) = call_context(&request)?;
        let request = request.into_inner();
        let name = request.spec.as_ref().map_or("", |s| s.name.as_str());
        note.request(format!("name={}", field(name)));
        let result = AdminServiceImpl::create_version(self, request, &caller.name).await;
        finish(&note, result)
    }

    async fn fork_version(
        &self,
        request: Request<v1::ForkVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let (caller, note) = call_context(&request)?;
        let request = request.into_inner();
        note.request(format!(
            "from={} to={}",
            field(&request.from),
            field(&request.to)
        ));
        let result = AdminServiceImpl::fork_version(self, request, &caller.name).await;
        finish(&note, result)
    }

    async fn list_versions(
        &self,
        request: Request<v1::ListVersionsRequest>,
    ) -> Result<Response<v1::ListVersionsResponse>, Status> {
        let (_, note) = call_context(&request)?;
        let result: Result<_, AdminError> = Ok(self.list_versions());
        note.outcome(&result, |r| format!("{} version(s)", r.versions.len()));
        result.map(Response::new).map_err(Status::from)
    }

    async fn retire_version(
        &self,
        request: Request<v1::RetireVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let (caller, note) = call_context(&request)?;
        let request = request.into_inner();
        note.request(format!("name={}", field(&request.name)));
        let result = AdminServiceImpl::retire_version(self, request, &caller.name).await;
        finish(&note, result)
    }

    async fn trigger_savepoint(
        &self,
        request: Request<v1::TriggerSavepointRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let (caller, note) = call_context(&request)?;
        let request = request.into_inner();
        note.request(format!("label={}", field(&request.label)));
        let result = AdminServiceImpl::trigger_savepoint(self, request, &caller.name).await;
        finish(&note, result)
    }

    async fn rollback_version(
        &self,
        request: Request<v1::RollbackVersionRequest>,
    ) -> Result<Response<v1::AdminResponse>, Status> {
        let (caller, note) = call_context(&request)?;
        let request = request.into_inner();
        note.request(format!(
            "version={} savepoint_id={}",
            field(&request.version),
            field(&request.savepoint_id)
        ));
        let result = AdminServiceImpl::rollback_version(self, request, &caller.name).await;
        finish(&note, result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn savepoint_ids_are_plain_ids_never_paths() {
        for good in ["sp-0001700000000000", "sp-0001700000000000-2", "a.b_c-D9"] {
            assert!(check_savepoint_id(good).is_ok(), "{good}");
        }
        let long = "a".repeat(MAX_SAVEPOINT_ID_BYTES + 1);
        for bad in [
            "",
            "../etc",
            "a/b",
            "/abs",
            "a..b",
            "..",
            ".hidden",
            "sp 1",
            "sp\\1",
            "sp%2F1",
            "spé",
            long.as_str(),
        ] {
            let err = check_savepoint_id(bad).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bad}");
        }
        assert!(check_savepoint_id(&"a".repeat(MAX_SAVEPOINT_ID_BYTES)).is_ok());
    }

    #[test]
    fn labels_are_bounded_text() {
        assert!(check_label("").is_ok());
        assert!(check_label("before the holiday sale").is_ok());
        assert!(check_label("line\nbreak").is_err());
        assert!(check_label(&"x".repeat(MAX_LABEL_BYTES + 1)).is_err());
    }
}
