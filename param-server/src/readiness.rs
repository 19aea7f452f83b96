//! Whether a replica may serve: a standalone replica starts not ready
//! (its store is behind the `params` topic) and becomes ready once it has
//! caught up with the offsets the topic had when it started. Until then
//! the health service reports `NOT_SERVING` and `ParamService` calls are
//! refused with `UNAVAILABLE`, so a restarted replica never answers with
//! parameters older than those it served before it stopped.
//!
//! Ready is final: once caught up, a replica that falls behind again (a
//! slow broker) still serves what it has, which only moves forward.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tonic::{Request, Status};

/// A shared flag that turns ready once, and wakes whoever waits for it.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: AtomicBool,
    changed: Notify,
}

impl Readiness {
    /// A flag that is not ready yet.
    pub fn not_ready() -> Self {
        Self::default()
    }

    /// A flag that is ready from the start (a server with nothing to
    /// catch up with).
    pub fn ready() -> Self {
        let readiness = Self::default();
        readiness.set_ready();
        readiness
    }

    /// Marks it ready (idempotent) and wakes the waiters.
    pub fn set_ready(&self) {
        if !self.inner.ready.swap(true, Ordering::AcqRel) {
            self.inner.changed.notify_waiters();
        }
    }

    /// Whether it is ready now.
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(Ordering::Acquire)
    }

    /// Resolves once it is ready.
    pub async fn wait(&self) {
        loop {
            let changed = self.inner.changed.notified();
            if self.is_ready() {
                return;
            }
            changed.await;
        }
    }

    /// The interceptor of a service that must not answer before ready.
    #[allow(
        clippy::result_large_err,
        reason = "the signature tonic's interceptors have"
    )]
    pub fn check(&self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.is_ready() {
            Ok(request)
        } else {
            Err(Status::unavailable(
                "this replica is catching up with the params topic; try another replica or retry",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_once_ready_and_calls_pass_from_then_on() {
        let readiness = Readiness::not_ready();
        assert_eq!(
            readiness.check(Request::new(())).unwrap_err().code(),
            tonic::Code::Unavailable
        );
        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        readiness.set_ready();
        waiter.await.unwrap();
        assert!(readiness.check(Request::new(())).is_ok());
        readiness.set_ready();
        readiness.wait().await;
    }
}
