//! The multi-process topology on loopback, as `scripts/cluster.sh` runs
//! it but smaller: a broker, two learners splitting four partitions (one
//! killed with SIGKILL and restarted half way), two replicas fed by the
//! `params` topic, predictors on both replicas all along. The run checks
//! (see `posterior_tests::cluster`) that the learners together equal one
//! learner alone bit for bit, dead letters included, that both replicas
//! serve exactly the reference's parameters, and that no predictor saw a
//! sequence number go backwards or change value.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::time::Duration;

use posterior_tests::cluster::{Spec, run};

#[test]
fn two_learners_and_two_replicas_serve_what_one_learner_computes() {
    let dir = tempfile::tempdir().unwrap();
    let spec = Spec {
        records: 30_000,
        docs: 400,
        partitions: 4,
        produce_for: Duration::from_secs(8),
        predictors: 2,
        batch: 50,
        seed: 7,
    };
    let report = run(&spec, dir.path(), |line| eprintln!("cluster: {line}"))
        .unwrap_or_else(|err| panic!("{err:#}; files under {}", dir.keep().display()));
    eprint!("{report}");
    assert_eq!(report.records, spec.records);
    // Most keys of both versions saw samples; the defects became dead
    // letters.
    assert!(report.learned_keys > 700, "{report}");
    assert!(report.dead_letters > 100, "{report}");
    // The predictors ran through the whole run and checked values.
    assert!(report.get_params > 50, "{report}");
    assert!(report.sample_scores > 50, "{report}");
    assert!(report.observations > 2_500, "{report}");
}
