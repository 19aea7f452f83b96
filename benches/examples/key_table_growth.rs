//! The longest single insert while a parameter table grows to 4 M keys,
//! one `HashMap` (what the engine had) against the sharded `FlatKeyMap` (what
//! it has), side by side in one run, plus the cost of sharding on inserts
//! and lookups. A table doubles when it fills, moving every entry in the
//! insert that crosses the line: that insert is an ingestion stall.
//!
//! Run: `cargo run --release -p posterior-benches --example key_table_growth`

use std::collections::HashMap;
use std::time::{Duration, Instant};

use posterior_learner::keymap::FlatKeyMap;
use posterior_learner::registry::{KeyHasher, ParamKey, VersionId};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const KEYS: usize = 4_000_000;
const ROUNDS: usize = 3;

/// A value the size of the engine's slot (a pointer and two flags).
type Value = [u64; 2];

/// The two tables behind one interface.
trait Table: Default {
    fn put(&mut self, key: ParamKey, value: Value);
    fn touch(&mut self, key: &ParamKey) -> Option<&mut Value>;
}

impl Table for HashMap<ParamKey, Value, KeyHasher> {
    fn put(&mut self, key: ParamKey, value: Value) {
        self.insert(key, value);
    }
    fn touch(&mut self, key: &ParamKey) -> Option<&mut Value> {
        self.get_mut(key)
    }
}

impl Table for FlatKeyMap<Value> {
    fn put(&mut self, key: ParamKey, value: Value) {
        self.insert(key, value);
    }
    fn touch(&mut self, key: &ParamKey) -> Option<&mut Value> {
        self.get_mut(key)
    }
}

struct Run {
    longest_insert: Duration,
    inserts: Duration,
    lookups: Duration,
}

fn run<T: Table>(keys: &[ParamKey], probes: &[ParamKey]) -> Run {
    let mut table = T::default();
    let mut longest_insert = Duration::ZERO;
    let start = Instant::now();
    for (i, key) in keys.iter().enumerate() {
        let t = Instant::now();
        table.put(*key, [i as u64, 0]);
        longest_insert = longest_insert.max(t.elapsed());
    }
    let inserts = start.elapsed();
    let start = Instant::now();
    let mut sum = 0_u64;
    for key in probes {
        let value = table.touch(key).expect("every probe was inserted");
        value[1] += 1;
        sum = sum.wrapping_add(value[0]);
    }
    let lookups = start.elapsed();
    std::hint::black_box(sum);
    Run {
        longest_insert,
        inserts,
        lookups,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let keys: Vec<ParamKey> = (0..KEYS)
        .map(|_| ParamKey {
            version: VersionId(rng.random_range(0..4)),
            doc_id: rng.random(),
        })
        .collect();
    let mut probes = keys.clone();
    probes.shuffle(&mut rng);
    println!(
        "{KEYS} keys inserted one by one (each insert timed), then {KEYS} lookups in another order\n"
    );
    println!(
        "| round | table | longest insert ms | all inserts ms | all lookups ms | longest insert: HashMap / FlatKeyMap | inserts: FlatKeyMap / HashMap | lookups: FlatKeyMap / HashMap |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|");
    for round in 1..=ROUNDS {
        let one = run::<HashMap<ParamKey, Value, KeyHasher>>(&keys, &probes);
        let sharded = run::<FlatKeyMap<Value>>(&keys, &probes);
        for (name, r) in [("HashMap", &one), ("FlatKeyMap", &sharded)] {
            println!(
                "| {round} | {name} | {:.2} | {:.0} | {:.0} | | | |",
                ms(r.longest_insert),
                ms(r.inserts),
                ms(r.lookups)
            );
        }
        println!(
            "| {round} | ratio | | | | {:.0}x | {:.2}x | {:.2}x |",
            one.longest_insert.as_secs_f64() / sharded.longest_insert.as_secs_f64(),
            sharded.inserts.as_secs_f64() / one.inserts.as_secs_f64(),
            sharded.lookups.as_secs_f64() / one.lookups.as_secs_f64(),
        );
    }
}
