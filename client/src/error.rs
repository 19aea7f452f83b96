//! The client's one error type, and the one place that says which gRPC
//! codes a retry can cure.

use tonic::Code;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint is not a valid URI (or needs TLS that is not built in).
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint {
        /// The endpoint as given.
        endpoint: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No connection could be made within the connect timeout.
    #[error("connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The transport's error.
        source: tonic::transport::Error,
    },
    /// The bearer token is empty or not visible ASCII.
    #[error("the admin token must be non-empty visible ASCII")]
    InvalidToken,
    /// The server (or the transport) answered with a status; `attempts`
    /// calls were made, the last one's status is kept.
    #[error("{code:?}: {message} (after {attempts} attempt(s))")]
    Status {
        /// The gRPC code of the last attempt.
        code: Code,
        /// Its message.
        message: String,
        /// Calls made, retries included.
        attempts: u32,
    },
    /// The server's response breaks the contract of `proto/` (missing
    /// model, wrong count, another version).
    #[error("invalid response: {0}")]
    InvalidResponse(String),
    /// A local argument is invalid before anything is sent.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The mirror stopped for good (a non-retryable error, or it was shut
    /// down); the message says why.
    #[error("mirror stopped: {0}")]
    MirrorStopped(String),
}

impl ClientError {
    /// The gRPC code that best describes the error, for exit codes and
    /// logs: the server's code for a status, UNAVAILABLE for a failed
    /// connection, INVALID_ARGUMENT for bad local input.
    pub fn code(&self) -> Code {
        match self {
            ClientError::Status { code, .. } => *code,
            ClientError::Connect { .. } => Code::Unavailable,
            ClientError::InvalidEndpoint { .. }
            | ClientError::InvalidToken
            | ClientError::InvalidArgument(_) => Code::InvalidArgument,
            ClientError::InvalidResponse(_) => Code::Internal,
            ClientError::MirrorStopped(_) => Code::Aborted,
        }
    }

    /// The status message without the attempt count.
    pub fn message(&self) -> String {
        match self {
            ClientError::Status { message, .. } => message.clone(),
            other => other.to_string(),
        }
    }
}

/// Whether a call that failed with `code` may succeed when repeated.
///
/// UNAVAILABLE (no connection, server restarting) and RESOURCE_EXHAUSTED
/// (load shed, too many watchers) are transient for every call.
/// DEADLINE_EXCEEDED is transient too, but the call may have taken effect
/// on the server, so it is retried only for `idempotent` calls (every
/// `ParamService` read). Every other code — INVALID_ARGUMENT, NOT_FOUND,
/// ALREADY_EXISTS, UNAUTHENTICATED, PERMISSION_DENIED, ... — describes the
/// request, and repeating it would get the same answer.
pub fn is_retryable(code: Code, idempotent: bool) -> bool {
    match code {
        Code::Unavailable | Code::ResourceExhausted => true,
        Code::DeadlineExceeded => idempotent,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_transient_codes_are_retried() {
        for idempotent in [true, false] {
            assert!(is_retryable(Code::Unavailable, idempotent));
            assert!(is_retryable(Code::ResourceExhausted, idempotent));
            for code in [
                Code::InvalidArgument,
                Code::NotFound,
                Code::AlreadyExists,
                Code::Unauthenticated,
                Code::PermissionDenied,
                Code::FailedPrecondition,
                Code::OutOfRange,
                Code::Internal,
                Code::Unimplemented,
            ] {
                assert!(!is_retryable(code, idempotent), "{code:?}");
            }
        }
        assert!(is_retryable(Code::DeadlineExceeded, true));
        assert!(!is_retryable(Code::DeadlineExceeded, false));
    }
}
