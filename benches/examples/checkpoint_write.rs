//! The checkpoint writer's work for 100 k changed diagonal d = 32 states
//! that are out of the caches, as a checkpoint finds them, in the two ways
//! a checkpoint has been written, alternated in one run: `logged`, a
//! synced write to the log and the memtables
//! ([`RocksStore::write_from`]) followed by a waited flush, as before
//! 3c0a748 (which started the flush and did not wait); and `flushed`, the
//! memtables without the log and then the waited flush
//! ([`RocksStore::write_flushed_from`], every checkpoint since). Each
//! timed as one whole: write and flush. The store lives on `/dev/shm`, so
//! that the disk does not time it (this measures CPU and copies, not
//! syncs). The states are allocated among other blocks, as a long-running
//! engine's are scattered, and 256 MB are walked before each write to push
//! them out of the caches. Prints min / median / max of `--writes` writes
//! of each, and the ratio of the medians.
//!
//! Run: `cargo run --release -p posterior-benches --example checkpoint_write`

use std::time::Instant;

use clap::Parser;
use posterior_learner::codec::Table;
use posterior_learner::engine::Write;
use posterior_learner::posterior::{DiagonalGaussian, KeyState, Posterior, SharedState};
use posterior_learner::registry::{ParamKey, VersionId};
use posterior_learner::store::RocksStore;

const DIM: usize = 32;

#[derive(Debug, Parser)]
struct Args {
    /// Changed keys per checkpoint.
    #[arg(long, default_value_t = 100_000)]
    keys: usize,
    /// Checkpoints written (and timed).
    #[arg(long, default_value_t = 12)]
    writes: usize,
    /// Where the store lives (a tmpfs keeps the disk out of the timing).
    #[arg(long, default_value = "/dev/shm")]
    dir: std::path::PathBuf,
}

/// Key `i`'s state: distinct, finite, valid values.
fn state(i: usize) -> KeyState {
    let mean = (0..DIM).map(|j| (i * 31 + j) as f64 * 1e-3).collect();
    let precision = (0..DIM).map(|j| 1.0 + (i + j) as f64 * 1e-4).collect();
    KeyState {
        seq: i as u64 + 1,
        sample_count: 3.0,
        updated_event_time_ms: 1_700_000_000_000,
        posterior: Posterior::Diagonal(
            DiagonalGaussian::from_parts(mean, precision).expect("a valid state"),
        ),
    }
}

fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir_in(&args.dir).expect("a directory for the store");
    let store = RocksStore::open(dir.path()).expect("open the store");
    // Each state between blocks of other sizes, kept alive, so that
    // consecutive keys' states are not neighbours in memory.
    let mut others = Vec::with_capacity(args.keys);
    let states: Vec<SharedState> = (0..args.keys)
        .map(|i| {
            others.push(vec![0_u8; 700 + (i * 7_919) % 900]);
            SharedState::new(state(i))
        })
        .collect();
    let mut evict = vec![0_u8; 256 << 20];
    let (mut logged, mut flushed) = (Vec::new(), Vec::new());
    for round in 0..2 * args.writes {
        let mut writes: Vec<Write> = states
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let key = ParamKey {
                    version: VersionId(1),
                    doc_id: i as u64,
                };
                Write::PutParams(key, s.clone())
            })
            .collect();
        writes.push(Write::Put(
            Table::Meta,
            b"round".to_vec(),
            round.to_le_bytes().to_vec(),
        ));
        for line in evict.iter_mut().step_by(64) {
            *line = line.wrapping_add(1);
        }
        let start = Instant::now();
        if round % 2 == 0 {
            store.write_from(&mut writes).expect("write the checkpoint");
            store.flush(true).expect("flush");
            logged.push(start.elapsed().as_secs_f64() * 1e3);
        } else {
            store
                .write_flushed_from(&mut writes, || {})
                .expect("write the checkpoint");
            flushed.push(start.elapsed().as_secs_f64() * 1e3);
        }
    }
    let median = |millis: &mut Vec<f64>, what: &str| {
        millis.sort_by(f64::total_cmp);
        println!(
            "{what}: {} cold d = {DIM} states ({} other blocks among them), {} writes, \
             write + flush min {:.1} ms, median {:.1} ms, max {:.1} ms",
            args.keys,
            others.len(),
            millis.len(),
            millis[0],
            millis[millis.len() / 2],
            millis[millis.len() - 1],
        );
        millis[millis.len() / 2]
    };
    let (a, b) = (
        median(&mut logged, "logged"),
        median(&mut flushed, "flushed"),
    );
    println!("flushed / logged, medians: {:.2}", b / a);
}
