//! A generated JSONL sample log with bounded disorder and injected defects
//! (late samples, duplicates, poison lines, unknown versions), written to a
//! file, for the crash and restore tests.

use std::fmt::Write as _;

use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Knobs of a generated log.
#[derive(Debug, Clone, Copy)]
pub struct LogSpec {
    /// Records in the log.
    pub records: usize,
    /// Docs per version (keys = 2 × docs).
    pub docs: u64,
    /// Allowed out-of-orderness the learner is configured with.
    pub out_of_orderness_ms: i64,
    /// Seed.
    pub seed: u64,
}

/// How many defects of each kind were injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Injected {
    /// Lines that are not JSON samples.
    pub poison: u64,
    /// Samples far behind the watermark.
    pub late: u64,
    /// Repeats of a recent sample id.
    pub duplicates: u64,
    /// Samples of a version nobody registered.
    pub unknown_version: u64,
}

/// Generates the log as JSONL text; versions `beta` (no context) and
/// `logistic` (4-dimensional context), reward label `click`.
pub fn generate(spec: LogSpec) -> (String, Injected) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed);
    let mut out = String::with_capacity(spec.records * 140);
    let mut injected = Injected::default();
    let mut clock: i64 = 1_700_000_000_000;
    let mut recent: Vec<String> = Vec::new();
    for i in 0..spec.records {
        clock += rng.random_range(0..3);
        let roll: f64 = rng.random();
        if roll < 0.01 {
            injected.poison += 1;
            out.push_str("{\"doc_id\": \"poison\"\n");
            continue;
        }
        if roll < 0.02 && !recent.is_empty() {
            // A duplicate: the same line again, shortly after.
            injected.duplicates += 1;
            let line = recent[rng.random_range(0..recent.len())].clone();
            out.push_str(&line);
            continue;
        }
        let t = if roll < 0.03 {
            injected.late += 1;
            clock - spec.out_of_orderness_ms - 1_000 - rng.random_range(0..10_000)
        } else {
            clock - rng.random_range(0..spec.out_of_orderness_ms.max(1))
        };
        let version = if (0.03..0.04).contains(&roll) {
            injected.unknown_version += 1;
            "nobody"
        } else if rng.random_bool(0.5) {
            "beta"
        } else {
            "logistic"
        };
        let doc = rng.random_range(0..spec.docs);
        let click = u8::from(rng.random_bool(0.05));
        let mut line =
            format!("{{\"doc_id\": {doc}, \"version\": \"{version}\", \"event_time_ms\": {t}, ");
        if version != "beta" {
            let x: Vec<String> = (0..4)
                .map(|_| format!("{:.4}", rng.random_range(-1.0..1.0_f32)))
                .collect();
            let _ = write!(line, "\"context\": [{}], ", x.join(", "));
        }
        let _ = writeln!(
            line,
            "\"labels\": {{\"click\": {click}}}, \"sample_id\": \"s{i}\"}}"
        );
        out.push_str(&line);
        recent.push(line);
        if recent.len() > 32 {
            recent.remove(0);
        }
    }
    (out, injected)
}
