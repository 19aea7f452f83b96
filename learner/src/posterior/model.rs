//! What a version's keys run: the model, its prior, and forgetting.

use super::{BetaPrior, Forgetting, LogisticPrior};

/// The model kind of a version, with its prior.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelKind {
    /// Beta–Bernoulli.
    Beta(BetaPrior),
    /// Logistic regression with a Gaussian posterior (diagonal or full).
    Logistic(LogisticPrior),
}

impl ModelKind {
    /// Short name, for errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            ModelKind::Beta(_) => "beta",
            ModelKind::Logistic(p) => match p.form() {
                super::CovarianceForm::Diagonal => "logistic-diagonal",
                super::CovarianceForm::Full => "logistic-full",
            },
        }
    }

    /// Whether a state of this model keeps heap parts that an update
    /// reads and `KeyState::prefetch_parts` asks for (a diagonal
    /// posterior's vectors); a Beta state is all inline.
    pub fn has_prefetched_parts(&self) -> bool {
        matches!(self, ModelKind::Logistic(p) if p.form() == super::CovarianceForm::Diagonal)
    }

    /// Context dimension: 0 for Beta, d for logistic.
    pub fn dim(&self) -> usize {
        match self {
            ModelKind::Beta(_) => 0,
            ModelKind::Logistic(p) => p.dim(),
        }
    }
}

/// Everything the maths needs to know about a version.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Model and prior.
    pub kind: ModelKind,
    /// Optional exponential forgetting toward the prior.
    pub forgetting: Option<Forgetting>,
}

impl ModelSpec {
    /// A spec without forgetting.
    pub fn new(kind: ModelKind) -> Self {
        Self {
            kind,
            forgetting: None,
        }
    }
}
