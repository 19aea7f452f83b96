//! `learner quickstart`: a ranking system's closed loop in one process,
//! to see Posterior learn.
//!
//! - The learner reads a `[source] kind = "channel"` and hosts the
//!   param-server (`[param_server]`), as `learner run` would.
//! - A simulated predictor serves the requests of a simulated world
//!   ([`posterior_learner::simulation::world`]): each request's candidates
//!   are ranked by its A/B arm — by the server's Thompson draws
//!   (`SampleScores` over real gRPC), by its posterior means, or at random
//!   (the control) — and the top `shown` are shown.
//! - Simulated users click each shown doc with its hidden probability, and
//!   a simulated joiner hands the learner each shown doc's labelled sample
//!   once the request's label delay has passed.
//!
//! It prints progress while it runs (samples/s, each arm's CTR against the
//! oracle's, freshness of the served parameters), then a summary table,
//! and writes `timeline.csv` and `ctr.png` under `[quickstart] out`.

mod config;
mod report;
mod sim;

#[cfg(test)]
pub use config::split as split_config;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use posterior_client::{Client, ClientConfig};
use posterior_learner::config::Config;
use posterior_learner::runner::{Controls, run_local_with};

use crate::{embedded, load};
use sim::{Freshness, Stats};

/// Samples the channel to the learner holds before the joiner waits.
const CHANNEL_SAMPLES: usize = 65_536;

/// A file marking a state directory as the quickstart's own, which a
/// later quickstart may delete.
const MARKER: &str = "POSTERIOR_QUICKSTART";

/// Command-line overrides of the `[quickstart]` table.
#[derive(Debug, Default, clap::Args)]
pub struct Overrides {
    /// Requests to serve (`[quickstart] requests`).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Seed of the world and the draws (`[quickstart] seed`).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Output directory of the timeline and the plot (`[quickstart] out`).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the quickstart described by the file at `path`.
pub fn run(path: &Path, overrides: &Overrides) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let invalid = || format!("invalid config {}", path.display());
    let (mut q, rest) = config::split(&text).with_context(invalid)?;
    q.requests = overrides.requests.unwrap_or(q.requests);
    q.seed = overrides.seed.unwrap_or(q.seed);
    q.out = overrides.out.clone().unwrap_or(q.out);
    let env = posterior_learner::overrides::from_env(load::ENV_PREFIX)?;
    let (config, server) = load::parse(&rest, &env).with_context(invalid)?;
    let server = server
        .context("the quickstart serves its versions: the config needs a [param_server] table")
        .with_context(invalid)?;
    let arms = q.validate(&config).with_context(invalid)?;

    fresh_state(&config)?;
    std::fs::create_dir_all(&q.out).with_context(|| format!("create {}", q.out.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("install signal handler")?;
    }
    let controls = Controls::default();
    let (sink, serving) = embedded::serve(&config, server, &controls, None)?;
    let endpoint = format!("http://{}", serving.addr());
    let (records, pushed) = std::sync::mpsc::sync_channel(CHANNEL_SAMPLES);
    let learner = {
        let config = config.clone();
        std::thread::Builder::new()
            .name("learner".into())
            .spawn(move || run_local_with(&config, &controls, Box::new(sink), Some(pushed)))
            .context("spawn the learner thread")?
    };

    report::header(&q, &arms, &endpoint);
    let stats = Arc::new(Mutex::new(Stats::new(arms.len(), q.window_requests)));
    let freshness = Arc::new(Freshness::default());
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("quickstart")
        .enable_all()
        .build()
        .context("start the quickstart's runtime")?;
    let driven: Result<()> = runtime.block_on(async {
        let client = Client::connect(endpoint.clone(), ClientConfig::default())
            .await
            .with_context(|| format!("connect to {endpoint}"))?;
        let mut background = tokio::task::JoinSet::new();
        for arm in &arms {
            background.spawn(sim::watch(
                client.clone(),
                arm.version.clone(),
                Arc::clone(&freshness),
            ));
        }
        background.spawn(report::progress(
            Arc::clone(&stats),
            Arc::clone(&freshness),
            arms.clone(),
            Duration::from_millis(q.progress_every_ms),
        ));
        let driven = sim::drive(
            &q,
            &arms,
            &client,
            records,
            &stats,
            Arc::clone(&freshness),
            &stop,
        )
        .await;
        background.abort_all();
        driven
    });
    // The driver dropped the channel: the learner applies what it holds,
    // checkpoints and returns.
    let summary = learner
        .join()
        .map_err(|_| anyhow::anyhow!("the learner thread panicked"))?;
    serving.stop()?;
    driven?;
    let summary = summary.context("the learner")?;
    let stats = sim::locked(&stats).clone();
    report::summary(&arms, &stats, &freshness, &summary, started.elapsed());
    report::write(&q, &arms, &stats)
}

/// Starts from empty state: removes `[state] dir` if it is empty or a
/// previous quickstart's, refuses any other state.
fn fresh_state(config: &Config) -> Result<()> {
    let dir = &config.state.dir;
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .with_context(|| format!("read {}", dir.display()))?
            .next()
            .is_none();
        anyhow::ensure!(
            empty || dir.join(MARKER).exists(),
            "{} holds state that is not a quickstart's: the quickstart starts from empty state; \
             remove it or choose another [state] dir",
            dir.display()
        );
        std::fs::remove_dir_all(dir).with_context(|| format!("remove {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(
        dir.join(MARKER),
        "state of `learner quickstart`, deleted by the next one\n",
    )
    .with_context(|| format!("mark {}", dir.display()))
}
