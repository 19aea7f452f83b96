//! `cluster`: runs Posterior's multi-process topology on loopback — a
//! Kafka-protocol broker, two learners splitting the `samples` partitions,
//! two `param-server` replicas fed by the `params` topic, predictor
//! traffic — kills and restarts a learner half way, and checks that both
//! replicas end up serving exactly what one learner alone computes from
//! the same log. `scripts/cluster.sh` builds and runs it; see
//! [`posterior_tests::cluster`].

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use posterior_tests::cluster::{Spec, run};

#[derive(Parser)]
#[command(about = "Run and check Posterior's multi-process topology on loopback")]
struct Args {
    /// Records in the generated sample log.
    #[arg(long, default_value_t = 200_000)]
    records: usize,
    /// Docs per version.
    #[arg(long, default_value_t = 2_000)]
    docs: u64,
    /// Partitions of the samples and params topics (even).
    #[arg(long, default_value_t = 4)]
    partitions: u32,
    /// Seconds over which the log is produced.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Concurrent predictor clients.
    #[arg(long, default_value_t = 4)]
    predictors: usize,
    /// Docs per predictor request.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    /// Seed of the log and of the predictors.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the configs, logs and state of every process go (emptied
    /// first).
    #[arg(long, default_value = "out/cluster")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let spec = Spec {
        records: args.records,
        docs: args.docs,
        partitions: args.partitions,
        produce_for: Duration::try_from_secs_f64(args.seconds).context("--seconds")?,
        predictors: args.predictors,
        batch: args.batch,
        seed: args.seed,
    };
    if args.out.exists() {
        std::fs::remove_dir_all(&args.out)
            .with_context(|| format!("empty {}", args.out.display()))?;
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    eprintln!(
        "cluster: configs, logs and state under {}",
        args.out.display()
    );
    let report = run(&spec, &args.out, |line| eprintln!("cluster: {line}"))?;
    print!("{report}");
    Ok(())
}
