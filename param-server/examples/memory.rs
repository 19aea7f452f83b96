//! Memory per key of the store at d = 32 (diagonal) with 1 M keys: the
//! process's resident set before and after filling one version through
//! `ParamStore::apply`, against the raw parameter bytes; then again after
//! every key was updated twice (replaced values must be freed).
//!
//! Run: `cargo run --release -p posterior-param-server --example memory [keys] [dim]`
//! (figures in BENCHMARKS.md, "Memory per key"). The workspace forbids `unsafe`, so
//! no counting allocator: the RSS delta counts what the allocator really
//! took from the system, fragmentation and map slack included.

use anyhow::{Context, Result};
use posterior_learner::posterior::{
    CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{KeyState, Posterior, RewardSpec, VersionSpec};
use posterior_param_server::ParamStore;

fn rss_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").context("read /proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .context("statm has a resident field")?
        .parse()
        .context("parse resident pages")?;
    Ok(pages * 4096)
}

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let keys: u64 = args.next().map_or(Ok(1_000_000), |a| a.parse())?;
    let dim: usize = args.next().map_or(Ok(32), |a| a.parse())?;
    let store = ParamStore::default();
    let prior = LogisticPrior::isotropic(CovarianceForm::Diagonal, dim, 1.0)?;
    store.register(VersionSpec {
        name: "dwell".into(),
        model: ModelSpec::new(ModelKind::Logistic(prior)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    })?;
    // States are built one at a time, so only the store's copies stay.
    let before = rss_bytes()?;
    for doc in 0..keys {
        let x = doc as f64;
        let g = DiagonalGaussian::from_parts(vec![x; dim], vec![1.0 + x; dim])?;
        let state = KeyState {
            seq: 1,
            sample_count: 1.0,
            updated_event_time_ms: 0,
            posterior: Posterior::Diagonal(g),
        };
        store.apply("dwell", doc, state)?;
    }
    let after = rss_bytes()?;
    // Then every key updated twice more (new seqs): replaced values must be
    // freed, so the resident set should not grow with the updates.
    for seq in 2..=3 {
        for doc in 0..keys {
            let x = doc as f64 + seq as f64;
            let g = DiagonalGaussian::from_parts(vec![x; dim], vec![1.0 + x; dim])?;
            let state = KeyState {
                seq,
                sample_count: seq as f64,
                updated_event_time_ms: 0,
                posterior: Posterior::Diagonal(g),
            };
            store.apply("dwell", doc, state)?;
        }
    }
    let churned = rss_bytes()?;
    let per_key = (after - before) as f64 / keys as f64;
    let params = 16.0 * dim as f64;
    let with_bookkeeping = params + 24.0 + 8.0;
    println!("keys {keys}, d = {dim}, diagonal");
    println!("rss delta {} MiB", (after - before) >> 20);
    println!("bytes per key {per_key:.0}");
    println!(
        "raw mean+precision {params:.0} B: ratio {:.2}; raw incl. seq/count/time/doc id {with_bookkeeping:.0} B: ratio {:.2}",
        per_key / params,
        per_key / with_bookkeeping
    );
    println!(
        "after updating every key twice more: rss {} MiB above the start ({:+.0} B per key)",
        (churned - before) >> 20,
        (churned as f64 - after as f64) / keys as f64
    );
    Ok(())
}
