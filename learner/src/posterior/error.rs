//! Errors of the posterior maths.

/// Why an update, a draw or a prior was rejected. A rejected update leaves
/// the state untouched.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PosteriorError {
    /// A number that must be finite was NaN or infinite.
    #[error("{field}[{index}] is not finite ({value})")]
    NonFinite {
        /// Which input: `context`, `weight`, `prior_mean`, ...
        field: &'static str,
        /// Position within the field (0 for scalars).
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// A vector had the wrong length for the version's dimension.
    #[error("{field} has dimension {got}, expected {expected}")]
    WrongDimension {
        /// Which input.
        field: &'static str,
        /// The version's dimension.
        expected: usize,
        /// What was given.
        got: usize,
    },
    /// A value was finite but outside its allowed range.
    #[error("{field} = {value} is out of range: {reason}")]
    OutOfRange {
        /// Which input.
        field: &'static str,
        /// The offending value.
        value: f64,
        /// The rule it broke.
        reason: &'static str,
    },
    /// The observation's model does not match the key's model.
    #[error("model mismatch: the key holds a {state} posterior but the spec is {spec}")]
    ModelMismatch {
        /// The model the state holds.
        state: &'static str,
        /// The model the spec names.
        spec: &'static str,
    },
    /// The update produced a non-finite or non-positive-definite state; it
    /// was discarded. Indicates inputs at the edge of floating point.
    #[error("update discarded: the new state would not be finite and positive definite")]
    Unstable,
}
