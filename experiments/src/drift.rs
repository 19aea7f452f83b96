//! The `drift` scenario: at T/2 the docs' hidden weights are permuted, so
//! yesterday's best docs are suddenly average. Thompson sampling with and
//! without forgetting (an event-time half-life), Beta and logistic.

use posterior_learner::posterior::CovarianceForm;

use crate::contextual::Entry;
use crate::policy::PolicySpec;
use posterior_learner::simulation::world::WorldConfig;

/// Default half-life: a twentieth of the run's event-time span.
pub fn default_half_life_ms(horizon: u64, step_ms: i64) -> i64 {
    (horizon as i64 * step_ms / 20).max(1)
}

/// The drifting world and the lineup.
pub fn setup(
    world: &WorldConfig,
    horizon: u64,
    half_life_ms: Option<i64>,
) -> (WorldConfig, Vec<Entry>) {
    let half_life_ms = half_life_ms.unwrap_or_else(|| default_half_life_ms(horizon, world.step_ms));
    let world = WorldConfig {
        drift_at: Some(horizon / 2),
        ..world.clone()
    };
    let diag = |half_life_ms| PolicySpec::LogisticTs {
        form: CovarianceForm::Diagonal,
        half_life_ms,
    };
    let entries = [
        diag(None),
        diag(Some(half_life_ms)),
        PolicySpec::BetaTs { half_life_ms: None },
        PolicySpec::BetaTs {
            half_life_ms: Some(half_life_ms),
        },
        PolicySpec::Uniform,
        PolicySpec::Oracle,
    ]
    .into_iter()
    .map(Entry::immediate)
    .collect();
    (world, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contextual::{self, ContextualConfig};
    use crate::parallel::Runner;
    use crate::policy::PriorConfig;
    use posterior_learner::simulation::world::CtrLevel;

    /// After a drift, forgetting must help the Beta policy (fixed seed,
    /// wide margin, short horizon, high CTR).
    #[test]
    fn forgetting_helps_after_the_drift() {
        let base = WorldConfig {
            docs: 10,
            dim: 2,
            candidates: 5,
            ctr: CtrLevel::High,
            bias_sd: 1.0,
            weight_sd: 0.1,
            step_ms: 10,
            drift_at: None,
            mean_delay_ms: 0.0,
        };
        let horizon = 40_000;
        let (world, mut entries) = setup(&base, horizon, Some(20_000));
        entries.retain(|e| matches!(e.spec, PolicySpec::BetaTs { .. }));
        let config = ContextualConfig {
            name: "drift-test".into(),
            world,
            horizon,
            seeds: 1,
            seed: 5,
            prior: PriorConfig {
                bias_mean: CtrLevel::High.base_logit(),
                precision: 4.0,
                beta: CtrLevel::High.beta_prior(),
            },
            entries,
            per_decade: 5,
        };
        let r = contextual::run(&config, &Runner::quiet(2)).unwrap();
        let (plain, forget) = (r.policies[0].band.last().0, r.policies[1].band.last().0);
        assert!(forget < plain, "forgetting {forget} vs none {plain}");
    }
}
