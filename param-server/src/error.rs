//! The errors of the store and of the gRPC services (params and admin), and the one place
//! where they become gRPC status codes.

use posterior_learner::PosteriorError;
use tonic::{Code, Status};

use crate::admission::Shed;
use crate::auth::AuthError;
use crate::control::ControlPlaneError;
use crate::version::ModelShape;

/// Why the store refused an update or a lookup.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// No version of that name is served.
    #[error("unknown version {0:?}")]
    UnknownVersion(String),
    /// A version of that name is already served.
    #[error("version {0:?} already exists")]
    VersionExists(String),
    /// A version announced again with a spec other than the served one.
    #[error("version {0:?} is already served with another spec")]
    SpecConflict(String),
    /// The update's state is of another model or dimension than its
    /// version.
    #[error("update of {version:?}/{doc_id} holds a {got} state, the version is {want}")]
    ModelMismatch {
        /// The version.
        version: String,
        /// The doc.
        doc_id: u64,
        /// What the update holds.
        got: ModelShape,
        /// What the version's spec wants.
        want: ModelShape,
    },
    /// A wire update that cannot be applied: missing fields, undecodable
    /// or inconsistent state.
    #[error("bad update of {version:?}/{doc_id}: {reason}")]
    BadUpdate {
        /// The version, as far as it could be read.
        version: String,
        /// The doc, as far as it could be read (0 when unknown).
        doc_id: u64,
        /// What is wrong.
        reason: String,
    },
}

impl StoreError {
    /// Whether applying the same update later can succeed: only an unknown
    /// version can become known.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StoreError::UnknownVersion(_))
    }
}

/// Why a `ParamService` request was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServeError {
    /// The store refused (unknown version, ...).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The request names no version.
    #[error("version must not be empty")]
    MissingVersion,
    /// More doc ids than one request may carry.
    #[error("{got} doc ids in one request, the limit is {max}")]
    TooManyDocs {
        /// Doc ids in the request.
        got: usize,
        /// The configured limit.
        max: usize,
    },
    /// A context value is NaN or infinite.
    #[error("context[{index}] is not finite ({value})")]
    NonFiniteContext {
        /// Position in the request's `context`.
        index: usize,
        /// The value.
        value: f32,
    },
    /// The context length fits neither one shared context nor one per doc.
    #[error(
        "context has {got} values; version {version:?} needs {dim} (one shared context) or {dim} x {docs} (one per doc)"
    )]
    WrongDimension {
        /// The version.
        version: String,
        /// Its dimension (0 for Beta: no context).
        dim: usize,
        /// Doc ids in the request.
        docs: usize,
        /// Context values given.
        got: usize,
    },
    /// The maths refused an input that passed the checks above (a bug
    /// in those checks, reported as the input error it is).
    #[error("rejected by the posterior: {0}")]
    Posterior(#[from] PosteriorError),
    /// Not admitted: the server is overloaded, or the request's deadline
    /// is too short for its work.
    #[error(transparent)]
    Shed(#[from] Shed),
    /// The response would be larger than the server sends in one message
    /// (known from the doc count before it is built).
    #[error(
        "the response for {docs} docs of version {version:?} would be at least {at_least} bytes, \
         above the limit of {max} bytes: ask for at most {max_docs} docs per request"
    )]
    ResponseTooLarge {
        /// The version.
        version: String,
        /// Doc ids in the request.
        docs: usize,
        /// A lower bound of the response's size.
        at_least: usize,
        /// The configured `max_response_bytes`.
        max: usize,
        /// The most docs of this version that can fit.
        max_docs: usize,
    },
    /// Too many watchers of one version at once.
    #[error("{max} watchers already follow version {version:?}")]
    TooManyWatchers {
        /// The version.
        version: String,
        /// The configured limit.
        max: usize,
    },
}

impl ServeError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            ServeError::Store(StoreError::UnknownVersion(_)) => Code::NotFound,
            ServeError::Store(StoreError::VersionExists(_) | StoreError::SpecConflict(_)) => {
                Code::AlreadyExists
            }
            ServeError::Store(StoreError::ModelMismatch { .. } | StoreError::BadUpdate { .. })
            | ServeError::MissingVersion
            | ServeError::TooManyDocs { .. }
            | ServeError::NonFiniteContext { .. }
            | ServeError::WrongDimension { .. }
            | ServeError::Posterior(_) => Code::InvalidArgument,
            ServeError::TooManyWatchers { .. } => Code::ResourceExhausted,
            ServeError::ResponseTooLarge { .. } => Code::OutOfRange,
            ServeError::Shed(Shed::Deadline { .. }) => Code::DeadlineExceeded,
            ServeError::Shed(Shed::ShuttingDown) => Code::Unavailable,
            ServeError::Shed(
                Shed::QueueFull { .. }
                | Shed::QueueBytes { .. }
                | Shed::Backlog { .. }
                | Shed::Waited { .. },
            ) => Code::ResourceExhausted,
        }
    }
}

impl From<ServeError> for Status {
    fn from(error: ServeError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

/// Why an `AdminService` call was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AdminError {
    /// No valid bearer token, or a role that does not allow the RPC.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// A required field is empty or missing.
    #[error("{0} must be set")]
    Missing(&'static str),
    /// The version spec cannot be converted (the learner's rules).
    #[error("spec: {0}")]
    InvalidSpec(#[from] PosteriorError),
    /// The command breaks the learner's control rules (e.g. a bad fork
    /// override).
    #[error("{0}")]
    InvalidCommand(String),
    /// A savepoint id that is not a plain id (never a path).
    #[error("savepoint_id {id:?} {reason}")]
    BadSavepointId {
        /// The id as given (at most its first 64 characters).
        id: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A savepoint label that is too long or holds control characters.
    #[error("label {0}")]
    BadLabel(&'static str),
    /// Unknown version, or a name already served.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The version is retired already.
    #[error("version {0:?} is already retired")]
    Retired(String),
    /// The command could not be handed to the learners.
    #[error(transparent)]
    Control(#[from] ControlPlaneError),
}

impl AdminError {
    /// The gRPC code of this error.
    pub fn code(&self) -> Code {
        match self {
            AdminError::Auth(AuthError::Forbidden { .. }) => Code::PermissionDenied,
            AdminError::Auth(AuthError::Missing | AuthError::Malformed | AuthError::Unknown) => {
                Code::Unauthenticated
            }
            AdminError::Missing(_)
            | AdminError::InvalidSpec(_)
            | AdminError::InvalidCommand(_)
            | AdminError::BadSavepointId { .. }
            | AdminError::BadLabel(_) => Code::InvalidArgument,
            AdminError::Store(StoreError::UnknownVersion(_)) => Code::NotFound,
            AdminError::Store(StoreError::VersionExists(_) | StoreError::SpecConflict(_)) => {
                Code::AlreadyExists
            }
            AdminError::Store(StoreError::ModelMismatch { .. } | StoreError::BadUpdate { .. }) => {
                Code::InvalidArgument
            }
            AdminError::Retired(_) => Code::FailedPrecondition,
            AdminError::Control(ControlPlaneError::Unconfirmed(_)) => Code::DeadlineExceeded,
            AdminError::Control(ControlPlaneError::Busy(_) | ControlPlaneError::Unavailable(_)) => {
                Code::Unavailable
            }
        }
    }
}

impl From<AdminError> for Status {
    fn from(error: AdminError) -> Self {
        Status::new(error.code(), error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command that did not go out may be sent again (UNAVAILABLE, which
    /// clients retry); one that may still arrive may not (DEADLINE_EXCEEDED,
    /// which clients retry only for idempotent calls, and no admin call
    /// that sends a command is).
    #[test]
    fn an_unconfirmed_command_is_not_reported_as_unavailable() {
        let code = |e: ControlPlaneError| AdminError::Control(e).code();
        assert_eq!(code(ControlPlaneError::Busy("q".into())), Code::Unavailable);
        assert_eq!(
            code(ControlPlaneError::Unavailable("down".into())),
            Code::Unavailable
        );
        assert_eq!(
            code(ControlPlaneError::Unconfirmed("no ack".into())),
            Code::DeadlineExceeded
        );
        let status = Status::from(AdminError::Control(ControlPlaneError::Unconfirmed(
            "no acknowledgement from topic \"control\" within 5000 ms".into(),
        )));
        assert!(
            status.message().contains("may still be applied"),
            "{status:?}"
        );
    }
}
