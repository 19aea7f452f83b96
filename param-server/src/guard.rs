//! The gate in front of `AdminService`: every call is authenticated and
//! authorised here, before its handler runs, and audited here exactly
//! once, whatever its outcome.
//!
//! The guard wraps the whole generated server (a tower `Service` on HTTP
//! requests), so it sees every method, including one added to the proto
//! later: [`Role::required_for`](crate::auth::Role::required_for) demands
//! the `admin` role of any method it does not list as read-only. A refused
//! call gets its status at once, its body unread. An accepted call carries
//! its [`Caller`] and a [`CallNote`] in the request's extensions; the
//! handler writes the request summary, command id and outcome into the
//! note, and the guard writes the audit record when the response is ready
//! (or `CANCELLED` if the call is dropped first, e.g. by a timeout).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::{Code, Status};

use crate::audit::{ANONYMOUS, AuditLog, AuditRecord, code_name};
use crate::auth::{AuthError, Caller, TokenSet};
use crate::error::AdminError;

/// What a handler tells the audit log about its call.
#[derive(Debug, Clone, Default)]
pub struct CallNote(Arc<Mutex<Note>>);

#[derive(Debug, Default)]
struct Note {
    request: String,
    command_id: Option<String>,
    outcome: Option<(Code, String)>,
}

impl CallNote {
    fn lock(&self) -> std::sync::MutexGuard<'_, Note> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A short summary of the request (no secrets, bounded by the caller).
    pub fn request(&self, summary: String) {
        self.lock().request = summary;
    }

    /// The command id sent to the learners.
    pub fn command_id(&self, id: &str) {
        self.lock().command_id = Some(id.to_owned());
    }

    /// The call's outcome: `OK` with a message, or the error's code.
    pub fn outcome<T>(
        &self,
        result: &Result<T, AdminError>,
        ok_message: impl FnOnce(&T) -> String,
    ) {
        self.lock().outcome = Some(match result {
            Ok(value) => (Code::Ok, ok_message(value)),
            Err(error) => (error.code(), error.to_string()),
        });
    }
}

/// The caller and note of an admin call, as the guard left them; a call
/// that did not pass the guard (a service mounted without it) is refused.
pub fn call_context<T>(request: &tonic::Request<T>) -> Result<(Caller, CallNote), Status> {
    let caller = request.extensions().get::<Caller>().cloned();
    let note = request.extensions().get::<CallNote>().cloned();
    match (caller, note) {
        (Some(caller), Some(note)) => Ok((caller, note)),
        _ => Err(AdminError::Auth(AuthError::Missing).into()),
    }
}

/// `AdminService` (or any gRPC service) behind token auth and the audit.
#[derive(Debug, Clone)]
pub struct AdminGuard<S> {
    inner: S,
    tokens: Arc<TokenSet>,
    audit: Arc<AuditLog>,
}

impl<S> AdminGuard<S> {
    /// Guards `inner` with `tokens`, auditing to `audit`.
    pub fn new(inner: S, tokens: Arc<TokenSet>, audit: Arc<AuditLog>) -> Self {
        Self {
            inner,
            tokens,
            audit,
        }
    }
}

impl<S: NamedService> NamedService for AdminGuard<S> {
    const NAME: &'static str = S::NAME;
}

/// The method name of a gRPC path `/package.Service/Method`.
fn method_of(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or_default()
}

fn peer_of(request: &http::Request<Body>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        })
}

type GuardFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, Infallible>> + Send>>;

impl<S> tonic::codegen::Service<http::Request<Body>> for AdminGuard<S>
where
    S: tonic::codegen::Service<
            http::Request<Body>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = GuardFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        let rpc = method_of(request.uri().path()).to_owned();
        let peer = peer_of(&request);
        let authorization = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        let caller = match self.tokens.authorize(authorization, &rpc) {
            Ok(caller) => caller,
            Err(error) => {
                let who = match &error {
                    AuthError::Forbidden { caller, .. } => caller.clone(),
                    _ => ANONYMOUS.to_owned(),
                };
                let error = AdminError::from(error);
                let mut record = AuditRecord::now(&who, peer, &rpc);
                record.code = code_name(error.code()).to_owned();
                record.message = error.to_string();
                self.audit.record(&record);
                let response = Status::from(error).into_http();
                return Box::pin(std::future::ready(Ok(response)));
            }
        };
        let note = CallNote::default();
        let pending = PendingAudit {
            audit: Arc::clone(&self.audit),
            record: Some(AuditRecord::now(&caller.name, peer, &rpc)),
            note: note.clone(),
        };
        request.extensions_mut().insert(caller);
        request.extensions_mut().insert(note);
        // The inner service was made ready by `poll_ready`; a fresh clone
        // stays behind for the next call (the tower idiom).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Box::pin(async move {
            let response = inner.call(request).await?;
            pending.finish(Status::from_header_map(response.headers()));
            Ok(response)
        })
    }
}

/// The audit record of an accepted call; written once, when the call
/// finishes or is dropped.
struct PendingAudit {
    audit: Arc<AuditLog>,
    record: Option<AuditRecord>,
    note: CallNote,
}

impl PendingAudit {
    /// Writes the record; `header_status` is the status the response's
    /// headers carry (an error the handler did not note, e.g. a request
    /// that could not be decoded).
    fn finish(mut self, header_status: Option<Status>) {
        let outcome = self.note.lock().outcome.take();
        let (code, message) = match (outcome, header_status) {
            (Some(outcome), _) => outcome,
            (None, Some(status)) => (status.code(), status.message().to_owned()),
            (None, None) => (Code::Ok, String::new()),
        };
        self.write(code, message);
    }

    fn write(&mut self, code: Code, message: String) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        let mut note = self.note.lock();
        record.request = std::mem::take(&mut note.request);
        record.command_id = note.command_id.take();
        drop(note);
        record.code = code_name(code).to_owned();
        record.message = message;
        self.audit.record(&record);
    }
}

impl Drop for PendingAudit {
    fn drop(&mut self) {
        self.write(
            Code::Cancelled,
            "the call was dropped before it finished".into(),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_dropped_before_it_finished_is_audited_as_cancelled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::with_file(&path, 1 << 20).unwrap());
        let note = CallNote::default();
        note.request("name=\"x\"".into());
        note.command_id("c1");
        drop(PendingAudit {
            audit,
            record: Some(AuditRecord::now("alice", None, "CreateVersion")),
            note,
        });
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<AuditRecord> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].code, "CANCELLED");
        assert_eq!(records[0].command_id.as_deref(), Some("c1"));
        assert_eq!(records[0].request, "name=\"x\"");
    }

    #[test]
    fn a_finished_call_is_audited_once_with_the_noted_outcome() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = Arc::new(AuditLog::with_file(&path, 1 << 20).unwrap());
        let note = CallNote::default();
        note.outcome::<()>(&Err(AdminError::Retired("ctr".into())), |_| String::new());
        let pending = PendingAudit {
            audit,
            record: Some(AuditRecord::now("alice", None, "RetireVersion")),
            note,
        };
        // A status in the headers does not override what the handler noted.
        pending.finish(Some(Status::internal("ignored")));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert!(text.contains("FAILED_PRECONDITION"), "{text}");
    }

    #[test]
    fn the_method_is_the_last_path_segment() {
        assert_eq!(
            method_of("/posterior.v1.AdminService/ListVersions"),
            "ListVersions"
        );
        assert_eq!(method_of(""), "");
    }
}
