//! RocksDB's memtable insert with a hint (`store::MEMTABLE_INSERT_HINT`)
//! against the plain insert, side by side in one process: two stores on
//! disk, the same sorted batches of (version, doc) keys written to both,
//! the order swapped every batch, WAL on but not synced (the synced part
//! of a checkpoint is the disk's, the same either way).
//!
//! `cargo run --release -p posterior-learner --example memtable_hint --
//! [KEYS] [DRAWS PER BATCH] [VALUE BYTES]` (defaults 1 000 000, 100 000,
//! 40: Beta-sized values; try 600 for d = 32). Prints the mean time per
//! batch of each and their ratio.

use std::time::{Duration, Instant};

use posterior_learner::store::MEMTABLE_INSERT_HINT;
use rocksdb::{DB, Options, WriteBatch, WriteOptions};

/// Batches written before timing starts (memtables fill up).
const WARMUP: usize = 10;
/// Batches timed.
const TIMED: usize = 50;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map_or(default, |s| s.parse().expect("a number"))
}

fn open(path: &std::path::Path, hinted: bool) -> DB {
    let mut options = if hinted {
        Options::default()
            .get_options_from_string(MEMTABLE_INSERT_HINT)
            .expect("the hint option parses")
    } else {
        Options::default()
    };
    options.create_if_missing(true);
    DB::open(&options, path).expect("open the store")
}

fn main() {
    let keys = arg(1, 1_000_000);
    let draws = arg(2, 100_000);
    let value = vec![7u8; usize::try_from(arg(3, 40)).expect("value bytes")];
    let dir = tempfile::tempdir().expect("a temporary directory");
    let stores = [
        open(&dir.path().join("plain"), false),
        open(&dir.path().join("hinted"), true),
    ];
    let mut unsynced = WriteOptions::default();
    unsynced.set_sync(false);
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut spent = [Duration::ZERO; 2];
    for batch in 0..WARMUP + TIMED {
        let mut docs: Vec<u64> = (0..draws)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state % keys
            })
            .collect();
        docs.sort_unstable();
        docs.dedup();
        for turn in 0..2 {
            let which = (batch + turn) % 2;
            let mut writes = WriteBatch::default();
            for doc in &docs {
                let mut key = [0u8; 12];
                key[..4].copy_from_slice(&1u32.to_be_bytes());
                key[4..].copy_from_slice(&doc.to_be_bytes());
                writes.put(key, &value);
            }
            let started = Instant::now();
            stores[which]
                .write_opt(writes, &unsynced)
                .expect("write a batch");
            if batch >= WARMUP {
                spent[which] += started.elapsed();
            }
        }
    }
    let per_batch = |d: Duration| d.as_secs_f64() * 1e3 / TIMED as f64;
    println!(
        "{keys} keys, {draws} draws per batch, {}-byte values: plain {:.1} ms per batch, \
         hinted {:.1} ms, hinted / plain {:.2}",
        value.len(),
        per_batch(spent[0]),
        per_batch(spent[1]),
        spent[1].as_secs_f64() / spent[0].as_secs_f64()
    );
}
