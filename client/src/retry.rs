//! The retry loop around one call, following a [`RetryPolicy`]: bounded
//! in attempts and in total time, sleeping a fully jittered exponential
//! backoff between attempts, and only for codes a retry can cure.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;
use tonic::{Code, Status};

use crate::config::RetryPolicy;
use crate::error::{ClientError, is_retryable};

/// Runs `call` until it succeeds, fails with a code that is not
/// retryable, or the policy allows no further attempt. `deadline` is the
/// per-attempt deadline the call sends; `idempotent` says whether a call
/// that timed out may be repeated.
pub(crate) async fn with_retries<T, F, Fut>(
    policy: &RetryPolicy,
    deadline: Duration,
    idempotent: bool,
    mut call: F,
) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let first = Instant::now();
    let mut attempt = 1;
    loop {
        let started = Instant::now();
        let status = match call().await {
            Ok(value) => return Ok(value),
            Err(status) => status,
        };
        let code = effective_code(&status, started.elapsed(), deadline);
        let delay = policy.backoff.delay(attempt, rand::rng().random::<f64>());
        if !is_retryable(code, idempotent) || !policy.allows_retry(attempt, first.elapsed(), delay)
        {
            return Err(ClientError::Status {
                code,
                message: status.message().to_owned(),
                attempts: attempt,
            });
        }
        tracing::debug!(
            attempt,
            ?code,
            message = status.message(),
            delay_ms = delay.as_millis() as u64,
            "call failed; retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

/// The code of a failed attempt. tonic reports an expired `grpc-timeout`
/// — its own on the channel, or the server's — as CANCELLED; an attempt
/// cancelled once its deadline has passed is a DEADLINE_EXCEEDED.
fn effective_code(status: &Status, elapsed: Duration, deadline: Duration) -> Code {
    match status.code() {
        Code::Cancelled if elapsed >= deadline => Code::DeadlineExceeded,
        code => code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Backoff;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(max_attempts: u32) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            max_elapsed_ms: 10_000,
            backoff: Backoff {
                initial_backoff_ms: 1,
                max_backoff_ms: 2,
                multiplier: 2.0,
            },
        }
    }

    async fn failing(calls: &AtomicU32, fail: u32, code: Code) -> Result<u32, Status> {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        if n <= fail {
            Err(Status::new(code, "no"))
        } else {
            Ok(n)
        }
    }

    #[tokio::test]
    async fn transient_failures_are_retried_up_to_the_bound() {
        let calls = AtomicU32::new(0);
        let got = with_retries(&fast(4), Duration::from_secs(1), true, || {
            failing(&calls, 3, Code::Unavailable)
        })
        .await;
        assert_eq!(got.unwrap(), 4);

        let calls = AtomicU32::new(0);
        let got = with_retries(&fast(3), Duration::from_secs(1), true, || {
            failing(&calls, 3, Code::ResourceExhausted)
        })
        .await;
        let err = got.unwrap_err();
        assert!(matches!(
            err,
            ClientError::Status {
                code: Code::ResourceExhausted,
                attempts: 3,
                ..
            }
        ));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn permanent_failures_and_unsafe_timeouts_are_not_retried() {
        for (code, idempotent) in [
            (Code::InvalidArgument, true),
            (Code::NotFound, true),
            (Code::DeadlineExceeded, false),
        ] {
            let calls = AtomicU32::new(0);
            let got = with_retries(&fast(5), Duration::from_secs(1), idempotent, || {
                failing(&calls, 1, code)
            })
            .await;
            assert_eq!(got.unwrap_err().code(), code);
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{code:?}");
        }
    }

    #[test]
    fn a_cancel_at_the_deadline_is_a_deadline_exceeded() {
        let cancelled = Status::cancelled("Timeout expired");
        let second = Duration::from_secs(1);
        assert_eq!(
            effective_code(&cancelled, second, second),
            Code::DeadlineExceeded
        );
        assert_eq!(
            effective_code(&cancelled, second / 2, second),
            Code::Cancelled
        );
    }
}
