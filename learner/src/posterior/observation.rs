//! One labelled sample as the maths sees it.

use super::PosteriorError;

/// Largest accepted sample weight: far above any importance weight in
/// practice, small enough that a batch of them cannot overflow a precision.
pub const MAX_WEIGHT: f64 = 1.0e6;

/// One labelled exposure, already reduced to the version's reward.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation<'a> {
    /// Context vector (empty for Beta models).
    pub context: &'a [f32],
    /// Whether the version's reward label counts as positive.
    pub reward: bool,
    /// Sample weight, `0 ≤ weight ≤ MAX_WEIGHT`.
    pub weight: f64,
    /// Event time (Unix ms); drives forgetting, never the wall clock.
    pub event_time_ms: i64,
}

impl<'a> Observation<'a> {
    /// An unweighted observation at event time 0 (for tests and simulations).
    pub fn new(context: &'a [f32], reward: bool) -> Self {
        Self {
            context,
            reward,
            weight: 1.0,
            event_time_ms: 0,
        }
    }

    /// Checks the weight and, when `dim` is given, the context's length and
    /// finiteness. Errors name the field.
    pub fn validate(&self, dim: Option<usize>) -> Result<(), PosteriorError> {
        if !self.weight.is_finite() {
            return Err(PosteriorError::NonFinite {
                field: "weight",
                index: 0,
                value: self.weight,
            });
        }
        if !(0.0..=MAX_WEIGHT).contains(&self.weight) {
            return Err(PosteriorError::OutOfRange {
                field: "weight",
                value: self.weight,
                reason: "must be in [0, 1e6]",
            });
        }
        if let Some(dim) = dim {
            validate_context(self.context, dim)?;
        }
        Ok(())
    }
}

/// Checks a context vector's length and finiteness.
pub(crate) fn validate_context(context: &[f32], dim: usize) -> Result<(), PosteriorError> {
    if context.len() != dim {
        return Err(PosteriorError::WrongDimension {
            field: "context",
            expected: dim,
            got: context.len(),
        });
    }
    // Without a branch per element (which `position` takes): the
    // finite case, every update's, is one pass the compiler vectorises.
    let exponent = 0x7f80_0000_u32;
    if context.iter().fold(true, |finite, x| {
        finite & (x.to_bits() & exponent != exponent)
    }) {
        return Ok(());
    }
    match context.iter().position(|x| !x.is_finite()) {
        Some(index) => Err(PosteriorError::NonFinite {
            field: "context",
            index,
            value: f64::from(context[index]),
        }),
        None => Ok(()),
    }
}
