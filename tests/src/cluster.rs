//! A Posterior cluster on loopback, run end to end and checked: the
//! multi-process topology of the README, with every process real.
//!
//! - a Kafka-protocol broker (`nisshi`) with the `samples`, `params` and
//!   `control` topics;
//! - two learners, each assigned half of the `samples` partitions, both
//!   publishing to the `params` topic and reading the `control` topic;
//! - two standalone `param-server` replicas, each reading every partition
//!   of the `params` topic;
//! - predictors: concurrent gRPC clients calling `GetParams` and
//!   `SampleScores` on the replicas all along, checking that no key's
//!   sequence number ever goes backwards and that one sequence number
//!   always carries one value;
//! - a sample joiner: a generated log with defects (late, duplicate,
//!   undecodable, unknown version) produced over a stretch of wall time.
//!
//! Half way through, learner `a` is killed with SIGKILL and restarted; it
//! resumes from its last checkpoint. When the log is produced, the
//! learners are stopped (SIGTERM) and run once more with `--until-end`,
//! which ends the input: the watermark releases what it still held. Then
//! one learner alone runs over the whole log as the reference, and the run
//! checks that
//! - the two learners' states together are, bit for bit, the reference's
//!   state, with the same dead letters;
//! - both replicas serve exactly the reference's parameters.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use hdrhistogram::Histogram;
use posterior_learner::config::Config;
use posterior_proto::v1;
use posterior_proto::v1::param_service_client::ParamServiceClient;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;
use tonic::Code;

use crate::broker::{Broker, Storage};
use crate::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use crate::log::{LogSpec, generate_records};
use crate::oracle::{dump_store, first_difference, produce_samples, sorted_lines};
use crate::serving::{
    Process, Served, difference, fetch, learned, ready, replica_config, start_replica, with_priors,
};
use crate::{binary, finish_within, log_file};

/// The versions the generated log and the learners' configs share.
pub const VERSIONS: [&str; 2] = ["beta", "logistic"];

/// The logistic version's context dimension.
const DIM: usize = 4;

/// Batches the log is produced in, spread evenly over
/// [`Spec::produce_for`].
const CHUNKS: usize = 20;

/// The size of a cluster run.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Records in the generated log (about 4 % are defects).
    pub records: usize,
    /// Docs per version.
    pub docs: u64,
    /// Partitions of the `samples` and `params` topics (even: each learner
    /// takes half).
    pub partitions: u32,
    /// Wall time over which the log is produced.
    pub produce_for: Duration,
    /// Concurrent predictor clients (alternating between the replicas).
    pub predictors: usize,
    /// Docs per predictor request.
    pub batch: usize,
    /// Seed of the log and of the predictors' requests.
    pub seed: u64,
}

/// What a cluster run measured; every check passed when it exists.
#[derive(Debug, Clone)]
pub struct Report {
    /// Records produced to `samples`.
    pub records: usize,
    /// Keys the learners learned (= the reference's).
    pub learned_keys: usize,
    /// Dead letters of both learners (= the reference's).
    pub dead_letters: usize,
    /// Which learner was killed, and when (after the start of production).
    pub killed: String,
    /// Predictor requests answered, of each kind.
    pub get_params: u64,
    /// `SampleScores` requests answered.
    pub sample_scores: u64,
    /// `NOT_FOUND` answers before the predictor had seen its version (a
    /// replica knows a version once a learner announced it).
    pub not_found_before_announce: u64,
    /// (key, served value) observations checked for a sequence number that
    /// went backwards or changed value.
    pub observations: u64,
    /// Predictor latency percentiles (50, 99, max), µs.
    pub latency_us: [u64; 3],
    /// Wall time of each phase.
    pub phases: Vec<(&'static str, Duration)>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "cluster run: every check passed")?;
        writeln!(f, "  records produced          {}", self.records)?;
        writeln!(
            f,
            "  keys learned              {} (= one learner alone, bit for bit)",
            self.learned_keys
        )?;
        writeln!(
            f,
            "  dead letters              {} (= one learner alone)",
            self.dead_letters
        )?;
        writeln!(f, "  learner killed            {}", self.killed)?;
        writeln!(
            f,
            "  predictor requests        {} GetParams, {} SampleScores, {} NOT_FOUND before the version was announced",
            self.get_params, self.sample_scores, self.not_found_before_announce
        )?;
        writeln!(
            f,
            "  served values checked     {} (no seq went backwards; one value per seq)",
            self.observations
        )?;
        let [p50, p99, max] = self.latency_us;
        writeln!(
            f,
            "  predictor latency         p50 {p50} µs, p99 {p99} µs, max {max} µs"
        )?;
        for (phase, took) in &self.phases {
            writeln!(f, "  {phase:<25} {:.1} s", took.as_secs_f64())?;
        }
        Ok(())
    }
}

/// A learner process of the cluster and its files.
struct Learner {
    name: &'static str,
    path: PathBuf,
    config: Config,
    log: PathBuf,
    process: Option<Process>,
}

impl Learner {
    /// Writes `DIR/NAME.toml`: the `samples` topic (only `partitions`, or
    /// all), never idle (no wall clock in what it applies), publishing to
    /// the `params` topic and reading the `control` topic when `publish`.
    fn new(
        dir: &Path,
        name: &'static str,
        bootstrap: &str,
        partitions: Option<&[u32]>,
        publish: bool,
    ) -> anyhow::Result<Self> {
        let text = learner_toml(
            dir,
            name,
            Source::Kafka(bootstrap),
            5_000,
            publish.then_some(bootstrap),
        );
        let assigned = partitions.map_or_else(String::new, |p| format!("\npartitions = {p:?}"));
        let mut text = text.replace(
            "topic = \"samples\"",
            &format!("topic = \"samples\"{assigned}\nidle_timeout_ms = 0"),
        );
        if publish {
            text.push_str(&format!(
                "\n[control]\nbrokers = \"{bootstrap}\"\ntopic = \"control\"\n"
            ));
        }
        let path = dir.join(format!("{name}.toml"));
        std::fs::write(&path, &text).with_context(|| format!("write {}", path.display()))?;
        let config = Config::from_toml(&text).map_err(|e| anyhow!("{name}'s config: {e}"))?;
        Ok(Self {
            name,
            path,
            config,
            log: dir.join(format!("{name}.log")),
            process: None,
        })
    }

    fn command(&self, until_end: bool) -> Command {
        let mut command = Command::new(binary("learner"));
        command.arg("run");
        if until_end {
            command.arg("--until-end");
        }
        command
            .arg("--config")
            .arg(&self.path)
            .stdin(Stdio::null())
            .stdout(log_file(&self.log))
            .stderr(log_file(&self.log));
        command
    }

    /// Starts it consuming without end.
    fn start(&mut self) {
        self.process = Some(Process::spawn(&mut self.command(false)));
    }

    /// SIGKILL.
    fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }

    /// SIGTERM: a graceful stop (checkpoint, exit 0).
    fn stop(&mut self) {
        if let Some(process) = self.process.take() {
            process.terminate(&self.log);
        }
    }

    /// Runs it with `--until-end` and waits for a clean exit.
    fn run_to_end(&self, limit: Duration) -> anyhow::Result<()> {
        let mut child = self.command(true).spawn().context("start a learner")?;
        let status = finish_within(&mut child, limit, &self.log);
        ensure!(
            status.success(),
            "{} failed: {status}; see {}",
            self.name,
            self.log.display()
        );
        Ok(())
    }

    fn dead_letters(&self) -> anyhow::Result<String> {
        let path = self
            .config
            .dead_letter
            .path()
            .context("a dead-letter file")?;
        Ok(std::fs::read_to_string(path).unwrap_or_default())
    }
}

/// What the predictors saw.
#[derive(Debug)]
struct Seen {
    get_params: u64,
    sample_scores: u64,
    not_found_before_announce: u64,
    observations: u64,
    latency_us: Histogram<u64>,
}

/// One predictor: until `stop`, alternates `GetParams` and `SampleScores`
/// over random batches of docs of alternating versions on `endpoint`, and
/// checks every served key against what it saw before.
async fn predictor(
    endpoint: String,
    docs: u64,
    batch: usize,
    seed: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Seen> {
    let mut client = ParamServiceClient::connect(endpoint.clone())
        .await
        .with_context(|| format!("connect to {endpoint}"))?;
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut last: HashMap<(usize, u64), v1::Params> = HashMap::new();
    let mut announced = [false; VERSIONS.len()];
    let mut seen = Seen {
        get_params: 0,
        sample_scores: 0,
        not_found_before_announce: 0,
        observations: 0,
        latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).context("histogram")?,
    };
    let context: Vec<f32> = (0..DIM).map(|i| if i == 0 { 1.0 } else { 0.5 }).collect();
    let mut round = 0_u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let v = (round % VERSIONS.len() as u64) as usize;
        let version = VERSIONS[v].to_owned();
        let doc_ids: Vec<u64> = (0..batch).map(|_| rng.random_range(0..docs)).collect();
        let start = Instant::now();
        let outcome = if round % 4 < 2 {
            client
                .get_params(v1::GetParamsRequest { version, doc_ids })
                .await
                .map(|r| Some(r.into_inner().params))
        } else {
            let context = if VERSIONS[v] == "logistic" {
                context.clone()
            } else {
                Vec::new()
            };
            client
                .sample_scores(v1::SampleScoresRequest {
                    version,
                    doc_ids,
                    context,
                    seed: Some(round),
                })
                .await
                .map(|_| None)
        };
        let took = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
        let params = match outcome {
            Err(status) if status.code() == Code::NotFound && !announced[v] => {
                seen.not_found_before_announce += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            Err(status) => bail!("{endpoint}: {} refused: {status}", VERSIONS[v]),
            Ok(params) => params,
        };
        announced[v] = true;
        seen.latency_us.saturating_record(took);
        let Some(params) = params else {
            seen.sample_scores += 1;
            continue;
        };
        seen.get_params += 1;
        for p in params {
            seen.observations += 1;
            let key = (v, p.doc_id);
            if let Some(before) = last.get(&key) {
                ensure!(
                    p.seq >= before.seq,
                    "{endpoint}: {key:?} went back from seq {} to {}",
                    before.seq,
                    p.seq
                );
                ensure!(
                    p.seq != before.seq || p == *before,
                    "{endpoint}: {key:?} changed value under seq {}: {before:?} then {p:?}",
                    p.seq
                );
            }
            last.insert(key, p);
        }
    }
    Ok(seen)
}

/// Runs the cluster of `spec` with its files (configs, logs, state) under
/// `dir`; `progress` gets a line per step. Returns what it measured once
/// every check passed.
///
/// # Errors
/// The first check that failed, or a process that could not run.
///
/// # Panics
/// When the broker or a replica cannot start (see [`Broker::start`] and
/// [`start_replica`]).
pub fn run(spec: &Spec, dir: &Path, mut progress: impl FnMut(&str)) -> anyhow::Result<Report> {
    ensure!(
        spec.partitions >= 2 && spec.partitions.is_multiple_of(2),
        "partitions must be even and at least 2 (each learner takes half)"
    );
    ensure!(
        spec.predictors > 0 && spec.batch > 0,
        "predictors and batch must be positive"
    );
    let mut phases = Vec::new();
    let began = Instant::now();
    let broker = Broker::start(Storage::Memory);
    let bootstrap = broker.bootstrap();
    for (topic, partitions) in [
        ("samples", spec.partitions),
        ("params", spec.partitions),
        ("control", 1),
    ] {
        broker.create_topic(topic, partitions);
    }
    progress(&format!(
        "broker nisshi on {bootstrap}: samples and params with {} partitions, control",
        spec.partitions
    ));
    let (records, _) = generate_records(LogSpec {
        records: spec.records,
        docs: spec.docs,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: spec.seed,
    });

    // Two replicas, ready before any learner publishes.
    let replica_logs: Vec<PathBuf> = ["replica-a", "replica-b"]
        .iter()
        .map(|name| dir.join(format!("{name}.log")))
        .collect();
    let mut replicas = Vec::new();
    let mut endpoints = Vec::new();
    for (name, log) in ["replica-a", "replica-b"].iter().zip(&replica_logs) {
        let (process, endpoint) = start_replica(&replica_config(dir, name, &bootstrap), log);
        progress(&format!("param-server {name} on {endpoint}"));
        replicas.push(process);
        endpoints.push(endpoint);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")?;
    for endpoint in &endpoints {
        runtime.block_on(ready(endpoint));
    }

    // Two learners, half of the partitions each.
    let half = spec.partitions / 2;
    let (first, second): (Vec<u32>, Vec<u32>) = (0..spec.partitions).partition(|p| *p < half);
    let mut learners = [
        Learner::new(dir, "learner-a", &bootstrap, Some(&first), true)?,
        Learner::new(dir, "learner-b", &bootstrap, Some(&second), true)?,
    ];
    for (learner, assigned) in learners.iter_mut().zip([&first, &second]) {
        learner.start();
        progress(&format!("{} on partitions {assigned:?}", learner.name));
    }
    phases.push(("start-up", began.elapsed()));

    // Predictor traffic for the rest of the run.
    let stop = Arc::new(AtomicBool::new(false));
    let predictors: Vec<_> = (0..spec.predictors)
        .map(|i| {
            runtime.spawn(predictor(
                endpoints[i % endpoints.len()].clone(),
                spec.docs,
                spec.batch,
                spec.seed ^ (i as u64 + 1),
                Arc::clone(&stop),
            ))
        })
        .collect();
    progress(&format!(
        "{} predictors calling GetParams and SampleScores ({} docs each) on both replicas",
        spec.predictors, spec.batch
    ));

    // The joiner produces the log over `produce_for`; half way through,
    // learner a dies and comes back.
    let producing = Instant::now();
    let chunk = spec.records.div_ceil(CHUNKS).max(1);
    let mut killed = String::new();
    for (i, records) in records.chunks(chunk).enumerate() {
        produce_samples(&broker, records, spec.partitions);
        if i == CHUNKS / 2 {
            learners[0].kill();
            killed = format!(
                "learner-a, SIGKILL at {:.1} s, restarted 0.5 s later",
                producing.elapsed().as_secs_f64()
            );
            progress(&killed);
            std::thread::sleep(Duration::from_millis(500));
            learners[0].start();
        }
        let due = spec.produce_for.mul_f64((i + 1) as f64 / CHUNKS as f64);
        std::thread::sleep(due.saturating_sub(producing.elapsed()));
    }
    progress(&format!("{} records produced", records.len()));
    phases.push(("producing", producing.elapsed()));

    // End of the input: stop both, then drain what the watermark holds.
    let draining = Instant::now();
    for learner in &mut learners {
        learner.stop();
    }
    std::thread::scope(|scope| {
        let runs: Vec<_> = learners
            .iter()
            .map(|l| scope.spawn(|| l.run_to_end(Duration::from_secs(300))))
            .collect();
        runs.into_iter()
            .try_for_each(|r| r.join().map_err(|_| anyhow!("a learner thread panicked"))?)
    })?;
    progress("learners stopped (SIGTERM) and drained to the end of the log (--until-end)");
    phases.push(("draining", draining.elapsed()));

    // The reference: one learner over the whole log.
    let referencing = Instant::now();
    let single = Learner::new(dir, "single", &bootstrap, None, false)?;
    single.run_to_end(Duration::from_secs(600))?;
    let mut together = String::new();
    for learner in &learners {
        together.push_str(&dump_store(&learner.config));
    }
    let (together, alone) = (
        sorted_lines(&together),
        sorted_lines(&dump_store(&single.config)),
    );
    ensure!(
        together == alone,
        "the two learners' states differ from one learner's: {}",
        first_difference(&together, &alone)
    );
    let dead_together = sorted_lines(&format!(
        "{}{}",
        learners[0].dead_letters()?,
        learners[1].dead_letters()?
    ));
    let dead_alone = sorted_lines(&single.dead_letters()?);
    ensure!(
        dead_together == dead_alone,
        "dead letters differ from one learner's: {}",
        first_difference(&dead_together, &dead_alone)
    );
    let reference = learned(&single.config);
    progress(&format!(
        "learners a + b = one learner alone: {} keys bit for bit, {} dead letters",
        reference.len(),
        dead_alone.lines().count()
    ));
    phases.push(("reference run", referencing.elapsed()));

    // Both replicas converge to the reference.
    let converging = Instant::now();
    let deadline = converging + Duration::from_secs(60);
    for endpoint in &endpoints {
        loop {
            let outcome = runtime
                .block_on(fetch(endpoint, &VERSIONS, spec.docs))
                .map_err(|status| status.to_string())
                .and_then(|served: Served| {
                    difference(&served, &with_priors(&reference, &served)).map_or(Ok(()), Err)
                });
            match outcome {
                Ok(()) => break,
                Err(why) if Instant::now() > deadline => {
                    bail!("{endpoint} does not serve the reference's parameters: {why}")
                }
                Err(_) => std::thread::sleep(Duration::from_millis(200)),
            }
        }
    }
    progress("both replicas serve exactly the reference's parameters");
    phases.push(("replicas converged", converging.elapsed()));

    stop.store(true, Ordering::Relaxed);
    let mut seen: Option<Seen> = None;
    for task in predictors {
        let one = runtime
            .block_on(task)
            .map_err(|e| anyhow!("a predictor panicked: {e}"))??;
        match &mut seen {
            None => seen = Some(one),
            Some(all) => {
                all.get_params += one.get_params;
                all.sample_scores += one.sample_scores;
                all.not_found_before_announce += one.not_found_before_announce;
                all.observations += one.observations;
                all.latency_us
                    .add(&one.latency_us)
                    .context("merge histograms")?;
            }
        }
    }
    let seen = seen.context("no predictor ran")?;
    ensure!(seen.get_params > 0, "no GetParams answered");
    for (replica, log) in replicas.into_iter().zip(&replica_logs) {
        replica.terminate(log);
    }
    phases.push(("total", began.elapsed()));
    let latency = &seen.latency_us;
    Ok(Report {
        records: records.len(),
        learned_keys: reference.len(),
        dead_letters: dead_alone.lines().count(),
        killed,
        get_params: seen.get_params,
        sample_scores: seen.sample_scores,
        not_found_before_announce: seen.not_found_before_announce,
        observations: seen.observations,
        latency_us: [
            latency.value_at_quantile(0.5),
            latency.value_at_quantile(0.99),
            latency.max(),
        ],
        phases,
    })
}
