//! The `delayed` scenario: labels arrive after an exponential delay (event
//! time) and are applied per doc in micro-batches triggered by count, as
//! joined samples are in production; compared with immediate updates.

use posterior_learner::posterior::CovarianceForm;

use crate::contextual::Entry;
use crate::policy::PolicySpec;
use posterior_learner::simulation::world::WorldConfig;

/// The delaying world and the lineup: immediate updates, then delayed
/// updates at each batch size, for logistic TS; Beta TS immediate and
/// delayed at the largest batch size; uniform and oracle.
pub fn setup(
    world: &WorldConfig,
    mean_delay_ms: f64,
    batch_sizes: &[usize],
) -> (WorldConfig, Vec<Entry>) {
    let world = WorldConfig {
        mean_delay_ms,
        ..world.clone()
    };
    let logistic = PolicySpec::LogisticTs {
        form: CovarianceForm::Diagonal,
        half_life_ms: None,
    };
    let beta = PolicySpec::BetaTs { half_life_ms: None };
    let mut entries = vec![Entry::immediate(logistic.clone())];
    for &batch_size in batch_sizes {
        entries.push(Entry {
            spec: logistic.clone(),
            delayed: true,
            batch_size,
        });
    }
    entries.push(Entry::immediate(beta.clone()));
    if let Some(&largest) = batch_sizes.iter().max() {
        entries.push(Entry {
            spec: beta,
            delayed: true,
            batch_size: largest,
        });
    }
    entries.push(Entry::immediate(PolicySpec::Uniform));
    entries.push(Entry::immediate(PolicySpec::Oracle));
    (world, entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::simulation::world::CtrLevel;

    #[test]
    fn lineup_has_every_batch_size() {
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
        let (world, entries) = setup(&base, 60_000.0, &[1, 16, 64]);
        assert_eq!(world.mean_delay_ms, 60_000.0);
        let labels: Vec<String> = entries.iter().map(Entry::label).collect();
        assert_eq!(labels[0], "ts-logistic-diag");
        assert_eq!(labels[3], "ts-logistic-diag delayed batch=64");
        assert_eq!(labels[5], "ts-beta delayed batch=64");
        assert_eq!(entries.len(), 8);
    }
}
