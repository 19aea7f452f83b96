//! How a client connects and retries: timeouts, message sizes, TLS and
//! the retry policy. Every field has a default fit for a predictor on the
//! same network as the param-server.

use std::path::PathBuf;
use std::time::Duration;

/// Connection and call settings of a [`crate::Client`] or
/// [`crate::AdminClient`]. Deserializes from a TOML table with these keys
/// (every one optional).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientConfig {
    /// Time allowed to establish the connection (TCP and, with TLS, the
    /// handshake).
    pub connect_timeout_ms: u64,
    /// Deadline of one attempt of a unary call, sent to the server as
    /// `grpc-timeout` and enforced locally; an attempt past it fails with
    /// DEADLINE_EXCEEDED. Watch streams have no deadline.
    pub request_timeout_ms: u64,
    /// Deadline of one attempt of an admin call that sends a command
    /// (create, fork, retire, savepoint, rollback): the server answers
    /// once the command is durable — acknowledged by the broker, or
    /// checkpointed by a learner that embeds the server — which takes
    /// longer than a read. Past it the call fails with DEADLINE_EXCEEDED
    /// and the command may still be applied.
    pub command_timeout_ms: u64,
    /// Largest response message accepted (bytes). The param-server sends
    /// up to 64 MiB by default.
    pub max_response_bytes: usize,
    /// Largest request message sent (bytes).
    pub max_request_bytes: usize,
    /// Retries of failed calls.
    pub retry: RetryPolicy,
    /// TLS settings, used when the endpoint is `https://` (needs the
    /// crate's `tls` feature).
    pub tls: TlsConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 2_000,
            request_timeout_ms: 1_000,
            command_timeout_ms: 10_000,
            max_response_bytes: 64 << 20,
            max_request_bytes: 4 << 20,
            retry: RetryPolicy::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// The longest deadline a call is sent with: a day.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

impl ClientConfig {
    /// `connect_timeout_ms` as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// `request_timeout_ms` as a duration, at most [`MAX_REQUEST_TIMEOUT`]
    /// (the `grpc-timeout` header cannot carry much more; tonic refuses
    /// ~11 000 years by panicking).
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms).min(MAX_REQUEST_TIMEOUT)
    }

    /// `command_timeout_ms` as a duration, at most [`MAX_REQUEST_TIMEOUT`].
    pub fn command_timeout(&self) -> Duration {
        Duration::from_millis(self.command_timeout_ms).min(MAX_REQUEST_TIMEOUT)
    }
}

/// TLS settings for `https://` endpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the server's certificate; `None`
    /// trusts the system's roots.
    pub ca_cert_pem: Option<PathBuf>,
    /// Name to verify the server's certificate against; `None` uses the
    /// endpoint's host.
    pub domain: Option<String>,
}

/// Exponential backoff with full jitter: the delay after failure `n`
/// (1-based) is drawn uniformly from `[0, min(max_backoff_ms,
/// initial_backoff_ms · multiplier^(n-1))]`. Full jitter spreads the
/// retries of many clients that failed together (a server restart) over
/// the whole window instead of sending them in synchronized waves.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Backoff {
    /// Upper bound of the first delay.
    pub initial_backoff_ms: u64,
    /// Cap of the delay's upper bound.
    pub max_backoff_ms: u64,
    /// Growth of the upper bound per failure (values below 1 count as 1).
    pub multiplier: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            initial_backoff_ms: 50,
            max_backoff_ms: 2_000,
            multiplier: 2.0,
        }
    }
}

impl Backoff {
    /// The upper bound of the delay after failure `failure` (1-based).
    pub fn ceiling(&self, failure: u32) -> Duration {
        let exponent = failure.saturating_sub(1).min(63) as i32;
        let ceiling_ms = self.initial_backoff_ms as f64 * self.multiplier.max(1.0).powi(exponent);
        Duration::from_millis(ceiling_ms.min(self.max_backoff_ms as f64) as u64)
    }

    /// The delay after failure `failure`, given `unit`, a uniform draw
    /// from `[0, 1)`.
    pub fn delay(&self, failure: u32, unit: f64) -> Duration {
        let ceiling_ns = self.ceiling(failure).as_nanos() as f64;
        Duration::from_nanos((ceiling_ns * unit.clamp(0.0, 1.0)) as u64)
    }
}

/// Which failed calls are repeated, and how often.
///
/// Attempt `n` that fails with a retryable code (see
/// [`crate::error::is_retryable`]: UNAVAILABLE, RESOURCE_EXHAUSTED, and
/// DEADLINE_EXCEEDED for idempotent calls) is followed by attempt `n + 1`
/// after `backoff`'s delay — unless `max_attempts` calls have been made or
/// the next attempt would start later than `max_elapsed_ms` after the
/// first one. Then the last error is returned with the number of attempts
/// made. Any other code is returned at once.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Most calls per request, the first one included; 1 turns retries off.
    pub max_attempts: u32,
    /// No attempt starts later than this after the first one.
    pub max_elapsed_ms: u64,
    /// Delays between attempts.
    pub backoff: Backoff,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_elapsed_ms: 10_000,
            backoff: Backoff::default(),
        }
    }
}

impl RetryPolicy {
    /// A policy that makes exactly one attempt.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Whether another attempt may follow attempt `attempt` after `delay`,
    /// `elapsed` after the first attempt started.
    pub fn allows_retry(&self, attempt: u32, elapsed: Duration, delay: Duration) -> bool {
        attempt < self.max_attempts && elapsed + delay <= Duration::from_millis(self.max_elapsed_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_jitter_spans_it() {
        let backoff = Backoff {
            initial_backoff_ms: 10,
            max_backoff_ms: 100,
            multiplier: 3.0,
        };
        let ceilings: Vec<u64> = (1..=5)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, [10, 30, 90, 100, 100]);
        assert_eq!(backoff.delay(3, 0.0), Duration::ZERO);
        assert_eq!(backoff.delay(3, 0.5), Duration::from_millis(45));
        assert_eq!(backoff.delay(300, 0.25), Duration::from_millis(25));
    }

    #[test]
    fn a_toml_table_sets_some_keys_and_names_unknown_ones() {
        let config: ClientConfig =
            toml::from_str("request_timeout_ms = 250\n[retry.backoff]\nmax_backoff_ms = 500\n")
                .unwrap();
        assert_eq!(config.request_timeout_ms, 250);
        let forever = ClientConfig {
            request_timeout_ms: u64::MAX,
            ..ClientConfig::default()
        };
        assert_eq!(forever.request_timeout(), MAX_REQUEST_TIMEOUT);
        assert_eq!(config.retry.backoff.max_backoff_ms, 500);
        assert_eq!(
            config.retry.max_attempts,
            RetryPolicy::default().max_attempts
        );
        let err = toml::from_str::<ClientConfig>("[retry]\nmax_atempts = 3\n").unwrap_err();
        assert!(err.to_string().contains("max_atempts"), "{err}");
    }

    #[test]
    fn attempts_and_elapsed_time_are_bounded() {
        let policy = RetryPolicy {
            max_attempts: 3,
            max_elapsed_ms: 1_000,
            ..RetryPolicy::default()
        };
        let ms = Duration::from_millis;
        assert!(policy.allows_retry(1, ms(0), ms(10)));
        assert!(policy.allows_retry(2, ms(900), ms(100)));
        assert!(!policy.allows_retry(2, ms(900), ms(101)));
        assert!(!policy.allows_retry(3, ms(0), ms(0)));
        assert!(!RetryPolicy::none().allows_retry(1, ms(0), ms(0)));
    }
}
