//! The criterion run length shared by every bench: short, so that the
//! whole suite finishes in a few minutes on a 2-core machine. Criterion's
//! command-line flags (`--warm-up-time`, `--measurement-time`,
//! `--sample-size`) still override these.

use std::time::Duration;

/// Criterion warm-up per benchmark (also warms caches and the branch
/// predictor; the posterior's own warm-up is in [`crate::state`]).
pub const WARM_UP: Duration = Duration::from_secs(1);
/// Criterion measurement time per benchmark.
pub const MEASUREMENT: Duration = Duration::from_secs(3);
/// Criterion samples per benchmark (its minimum is 10).
pub const SAMPLE_SIZE: usize = 30;
