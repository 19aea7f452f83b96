//! The Vowpal Wabbit peer: the pre-drawn environment file it reads, and the
//! Python driver (`python/vw_peer.py`) run as a subprocess per variant.
//!
//! File format (little-endian): the 8 bytes `PSTRENV1`, a `u32` header
//! length, a JSON [`EnvHeader`], then per request `candidates × u32` doc
//! ids, `candidates × dim × f32` contexts, `candidates × f64` true click
//! probabilities and `candidates × u8` would-be clicks (0/1).

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::{Deserialize, Serialize};

use crate::curve::{Band, Checkpoints, Curve};
use crate::parallel::Runner;
use crate::report::PolicyResult;
use posterior_learner::simulation::seed::replicate_seed;
use posterior_learner::simulation::world::{Request, World};

/// The file's magic bytes.
pub const MAGIC: &[u8; 8] = b"PSTRENV1";
/// Largest accepted JSON header.
pub const HEADER_BYTES_MAX: u32 = 1 << 24;
/// The driver, embedded so the binary runs from any directory.
pub const DRIVER_SOURCE: &str = include_str!("../python/vw_peer.py");

/// The JSON header of an environment file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvHeader {
    /// Format version (1).
    pub version: u32,
    /// Number of requests.
    pub requests: u64,
    /// Candidates per request.
    pub candidates: usize,
    /// Context dimension.
    pub dim: usize,
    /// Replicate seed of the world.
    pub seed: u64,
    /// Steps (1-based) at which the driver reports cumulative regret.
    pub checkpoints: Vec<u64>,
}

/// Writes requests `0..header.requests` of `world` to `path`.
pub fn write_env(path: &Path, world: &World, header: &EnvHeader) -> Result<()> {
    let file = File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let json = serde_json::to_vec(header).context("encode env header")?;
    let len = u32::try_from(json.len()).context("env header length")?;
    out.write_all(MAGIC)?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&json)?;
    let mut request = Request::default();
    for t in 0..header.requests {
        world.request_into(t, &mut request);
        write_request(&mut out, &request)?;
    }
    out.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(())
}

fn write_request(out: &mut impl Write, r: &Request) -> Result<()> {
    for d in &r.docs {
        out.write_all(&d.to_le_bytes())?;
    }
    for x in &r.contexts {
        out.write_all(&x.to_le_bytes())?;
    }
    for p in &r.probs {
        out.write_all(&p.to_le_bytes())?;
    }
    for &c in &r.clicks {
        out.write_all(&[u8::from(c)])?;
    }
    Ok(())
}

/// Reads a whole environment file back (tests and checks; the driver
/// memory-maps it instead). Event times and delays are not stored.
pub fn read_env(path: &Path) -> Result<(EnvHeader, Vec<Request>)> {
    let file = File::open(path).with_context(|| format!("open {}", path.display()))?;
    let mut input = BufReader::new(file);
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).context("read magic")?;
    ensure!(&magic == MAGIC, "not an environment file (magic {magic:?})");
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    ensure!(
        len <= HEADER_BYTES_MAX,
        "header of {len} bytes is too large"
    );
    let mut json = vec![0u8; len as usize];
    input.read_exact(&mut json)?;
    let header: EnvHeader = serde_json::from_slice(&json).context("decode env header")?;
    ensure!(
        header.version == 1,
        "unknown env format version {}",
        header.version
    );
    let (k, d) = (header.candidates, header.dim);
    let mut requests = Vec::new();
    let mut buf = vec![0u8; k * (4 + 4 * d + 8 + 1)];
    for t in 0..header.requests {
        input
            .read_exact(&mut buf)
            .with_context(|| format!("read request {t}"))?;
        let (docs, rest) = buf.split_at(4 * k);
        let (contexts, rest) = rest.split_at(4 * k * d);
        let (probs, clicks) = rest.split_at(8 * k);
        requests.push(Request {
            t,
            docs: docs
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            contexts: contexts
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes")))
                .collect(),
            probs: probs
                .chunks_exact(8)
                .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect(),
            clicks: clicks.iter().map(|&c| c != 0).collect(),
            ..Request::default()
        });
    }
    Ok((header, requests))
}

/// One VW configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Variant {
    /// Row label.
    pub name: String,
    /// Arguments after `--cb_explore_adf` (before `-q dx`).
    pub args: String,
}

impl Variant {
    /// Parses `name=args`, or bare args named after themselves.
    pub fn parse(s: &str) -> Self {
        match s.split_once('=') {
            Some((name, args)) if !name.contains(' ') && !name.starts_with('-') => Self {
                name: format!("vw {name}"),
                args: args.trim().to_string(),
            },
            _ => Self {
                name: format!("vw {}", s.trim()),
                args: s.trim().to_string(),
            },
        }
    }
}

/// The default variants: squarecb, bagging and ε-greedy, a few settings
/// each, so the peer is tuned fairly.
pub fn default_variants() -> Vec<Variant> {
    [
        "squarecb-g10=--squarecb --gamma_scale 10",
        "squarecb-g100=--squarecb --gamma_scale 100",
        "squarecb-g1000=--squarecb --gamma_scale 1000",
        "bag5=--bag 5",
        "bag10=--bag 10",
        "egreedy0.05=--epsilon 0.05",
        "egreedy0.01=--epsilon 0.01",
    ]
    .iter()
    .map(|s| Variant::parse(s))
    .collect()
}

/// Where the peer's Python lives.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The venv's Python interpreter.
    pub python: PathBuf,
    /// Variants to run.
    pub variants: Vec<Variant>,
    /// Scratch directory for env files and results.
    pub work_dir: PathBuf,
    /// Keep the (large) environment files afterwards.
    pub keep_env: bool,
}

/// The default venv interpreter: `$POSTERIOR_VENV/bin/python` or
/// `$HOME/.cache/posterior/venv/bin/python`.
pub fn default_python() -> PathBuf {
    let venv = std::env::var_os("POSTERIOR_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home = std::env::var_os("HOME")
                .map(PathBuf::from)
                .unwrap_or_default();
            home.join(".cache/posterior/venv")
        });
    venv.join("bin/python")
}

/// Whether the interpreter exists and imports `vowpalwabbit`.
pub fn available(python: &Path) -> bool {
    python.exists()
        && Command::new(python)
            .args(["-c", "import vowpalwabbit, numpy"])
            .output()
            .is_ok_and(|o| o.status.success())
}

/// The note printed when the peer cannot run.
pub const SKIPPED_NOTE: &str = "vw: skipped (run scripts/setup-vw.sh)";

#[derive(Debug, Deserialize)]
struct DriverOutput {
    vw_args: String,
    regret: Vec<f64>,
    clicks: Vec<f64>,
    examples_per_s: f64,
}

/// Runs every variant on the worlds of `seeds` replicates of `seed` and
/// returns one row per variant. Worlds are rebuilt from `world`.
pub fn run_peer(
    peer: &PeerConfig,
    world: &posterior_learner::simulation::world::WorldConfig,
    seed: u64,
    seeds: usize,
    checkpoints: &Checkpoints,
    runner: &Runner,
) -> Result<Vec<PolicyResult>> {
    fs::create_dir_all(&peer.work_dir)
        .with_context(|| format!("create {}", peer.work_dir.display()))?;
    let driver = peer.work_dir.join("vw_peer.py");
    fs::write(&driver, DRIVER_SOURCE).context("write vw driver")?;
    let mut envs = Vec::with_capacity(seeds);
    for i in 0..seeds {
        let replicate = replicate_seed(seed, i);
        let w = World::new(world.clone(), replicate)?;
        let path = peer.work_dir.join(format!("env-{replicate}.bin"));
        let header = EnvHeader {
            version: 1,
            requests: checkpoints.horizon(),
            candidates: world.candidates,
            dim: world.dim,
            seed: replicate,
            checkpoints: checkpoints.steps().to_vec(),
        };
        write_env(&path, &w, &header).context("write vw environment")?;
        envs.push((replicate, path));
    }
    let jobs: Vec<(usize, usize)> = (0..peer.variants.len())
        .flat_map(|v| (0..seeds).map(move |i| (v, i)))
        .collect();
    let bar = runner.bar("vw", jobs.len() as u64);
    let outputs = runner.map(&jobs, |&(v, i)| {
        let out = run_driver(
            &peer.python,
            &driver,
            &peer.variants[v],
            &envs[i],
            &peer.work_dir,
        );
        bar.inc(1);
        out
    });
    bar.finish_and_clear();
    if !peer.keep_env {
        for (_, path) in &envs {
            let _ = fs::remove_file(path);
        }
    }
    let outputs = outputs?;
    Ok(peer
        .variants
        .iter()
        .enumerate()
        .map(|(v, variant)| {
            let runs: Vec<&DriverOutput> = jobs
                .iter()
                .zip(&outputs)
                .filter(|((jv, _), _)| *jv == v)
                .map(|(_, o)| o)
                .collect();
            let curves: Vec<Curve> = runs
                .iter()
                .map(|o| Curve {
                    regret: o.regret.clone(),
                    clicks: o.clicks.clone(),
                })
                .collect();
            PolicyResult {
                name: variant.name.clone(),
                band: Band::from_curves(&curves),
                examples_per_s: runs.iter().map(|o| o.examples_per_s).sum::<f64>()
                    / runs.len() as f64,
                note: runs.first().map(|o| o.vw_args.clone()).unwrap_or_default(),
            }
        })
        .collect())
}

fn run_driver(
    python: &Path,
    driver: &Path,
    variant: &Variant,
    env: &(u64, PathBuf),
    dir: &Path,
) -> Result<DriverOutput> {
    let (seed, env_path) = env;
    let slug: String = variant
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    let out_path = dir.join(format!("result-{slug}-{seed}.json"));
    let output = Command::new(python)
        .arg(driver)
        .arg("--env")
        .arg(env_path)
        .args([
            "--name",
            &variant.name,
            "--args",
            &variant.args,
            "--seed",
            &seed.to_string(),
            "--out",
        ])
        .arg(&out_path)
        .output()
        .with_context(|| format!("run {}", python.display()))?;
    if !output.status.success() {
        bail!(
            "vw driver failed for {} ({}): {}",
            variant.name,
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    let json = fs::read(&out_path).with_context(|| format!("read {}", out_path.display()))?;
    let parsed: DriverOutput = serde_json::from_slice(&json).context("decode vw driver output")?;
    ensure!(
        parsed.regret.iter().all(|r| r.is_finite()),
        "vw regret is not finite"
    );
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::simulation::world::{CtrLevel, WorldConfig};

    fn world_config() -> WorldConfig {
        WorldConfig {
            docs: 10,
            dim: 3,
            candidates: 4,
            ctr: CtrLevel::High,
            bias_sd: 0.5,
            weight_sd: 0.5,
            step_ms: 10,
            drift_at: None,
            mean_delay_ms: 0.0,
        }
    }

    #[test]
    fn env_file_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env.bin");
        let world = World::new(world_config(), 4).unwrap();
        let header = EnvHeader {
            version: 1,
            requests: 25,
            candidates: 4,
            dim: 3,
            seed: 4,
            checkpoints: vec![1, 10, 25],
        };
        write_env(&path, &world, &header).unwrap();
        let (read_header, requests) = read_env(&path).unwrap();
        assert_eq!(read_header, header);
        assert_eq!(requests.len(), 25);
        for r in &requests {
            let expected = world.request(r.t);
            assert_eq!(r.docs, expected.docs);
            assert_eq!(r.contexts, expected.contexts);
            assert_eq!(r.probs, expected.probs);
            assert_eq!(r.clicks, expected.clicks);
        }
        let size = fs::metadata(&path).unwrap().len();
        let json_len = serde_json::to_vec(&header).unwrap().len() as u64;
        assert_eq!(size, 12 + json_len + 25 * 4 * (4 + 12 + 8 + 1));
    }

    #[test]
    fn bad_magic_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.bin");
        fs::write(&path, b"NOTANENV\0\0\0\0").unwrap();
        assert!(read_env(&path).unwrap_err().to_string().contains("magic"));
    }

    #[test]
    fn variants_parse() {
        let v = Variant::parse("sq=--squarecb --gamma_scale 10");
        assert_eq!(
            (v.name.as_str(), v.args.as_str()),
            ("vw sq", "--squarecb --gamma_scale 10")
        );
        let v = Variant::parse("--epsilon 0.1");
        assert_eq!(v.args, "--epsilon 0.1");
    }

    /// Runs the real driver on a tiny world when the venv exists.
    #[test]
    fn driver_runs_on_a_tiny_world() {
        let python = default_python();
        if !available(&python) {
            println!("{SKIPPED_NOTE}: {} not usable", python.display());
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let peer = PeerConfig {
            python,
            variants: vec![Variant::parse("sq=--squarecb --gamma_scale 10")],
            work_dir: dir.path().to_path_buf(),
            keep_env: false,
        };
        let checkpoints = Checkpoints::log_spaced(300, 5);
        let rows = run_peer(
            &peer,
            &world_config(),
            3,
            1,
            &checkpoints,
            &Runner::quiet(1),
        )
        .unwrap();
        assert_eq!(rows.len(), 1);
        let band = &rows[0].band;
        assert_eq!(band.mean.len(), checkpoints.steps().len());
        assert!(band.mean.iter().all(|r| r.is_finite() && *r >= 0.0));
        assert!(rows[0].examples_per_s > 0.0);
    }
}
