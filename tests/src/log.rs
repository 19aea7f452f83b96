//! A generated sample log with bounded disorder and injected defects
//! (late samples, duplicates, poison records, unknown versions), as JSONL
//! for files and as protobuf records for the broker, for the crash and
//! restore tests.

use std::fmt::Write as _;

use posterior_proto::v1::JoinedSample;
use prost::Message as _;

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
    /// Repeats of a recent sample id (not counting repeats of samples of
    /// an unknown version, which are dead letters of that reason again).
    pub duplicates: u64,
    /// Samples of a version nobody registered, repeats included.
    pub unknown_version: u64,
}

/// One record of a generated log, in both encodings.
#[derive(Debug, Clone)]
pub struct LogRecord {
    /// The doc it is about (a poison record gets one too, for its
    /// partition).
    pub doc_id: u64,
    /// The JSONL line, with its newline.
    pub jsonl: String,
    /// The protobuf `JoinedSample` bytes (garbage for a poison record).
    pub protobuf: Vec<u8>,
}

/// Generates the log as JSONL text; versions `beta` (no context) and
/// `logistic` (4-dimensional context), reward label `click`.
pub fn generate(spec: LogSpec) -> (String, Injected) {
    let (records, injected) = generate_records(spec);
    (records.into_iter().map(|r| r.jsonl).collect(), injected)
}

/// Generates the log as records in both encodings (see [`generate`]).
pub fn generate_records(spec: LogSpec) -> (Vec<LogRecord>, Injected) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(spec.seed);
    let mut out = Vec::with_capacity(spec.records);
    let mut injected = Injected::default();
    let mut clock: i64 = 1_700_000_000_000;
    // Recent records, with whether their version is unknown.
    let mut recent: Vec<(LogRecord, bool)> = Vec::new();
    for i in 0..spec.records {
        clock += rng.random_range(0..3);
        let roll: f64 = rng.random();
        if roll < 0.01 {
            injected.poison += 1;
            out.push(LogRecord {
                doc_id: rng.random_range(0..spec.docs),
                jsonl: "{\"doc_id\": \"poison\"\n".into(),
                protobuf: vec![0xff; 9],
            });
            continue;
        }
        if roll < 0.02 && !recent.is_empty() {
            // A duplicate: the same record again, shortly after.
            let (record, unknown) = recent[rng.random_range(0..recent.len())].clone();
            if unknown {
                injected.unknown_version += 1;
            } else {
                injected.duplicates += 1;
            }
            out.push(record);
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
        let mut context = Vec::new();
        if version != "beta" {
            let text: Vec<String> = (0..4)
                .map(|_| format!("{:.4}", rng.random_range(-1.0..1.0_f32)))
                .collect();
            context = text
                .iter()
                .map(|x| x.parse().expect("printed f32"))
                .collect();
            let _ = write!(line, "\"context\": [{}], ", text.join(", "));
        }
        let sample_id = format!("s{i}");
        let _ = writeln!(
            line,
            "\"labels\": {{\"click\": {click}}}, \"sample_id\": \"{sample_id}\"}}"
        );
        let wire = JoinedSample {
            doc_id: doc,
            version: version.into(),
            event_time_ms: t,
            context,
            labels: [("click".to_owned(), f32::from(click))].into(),
            weight: 1.0,
            sample_id,
        };
        let record = LogRecord {
            doc_id: doc,
            jsonl: line,
            protobuf: wire.encode_to_vec(),
        };
        out.push(record.clone());
        recent.push((record, version == "nobody"));
        if recent.len() > 32 {
            recent.remove(0);
        }
    }
    (out, injected)
}

/// A clicked sample of version `beta` for `doc_id` at `event_time_ms`,
/// outside any generated log (its `sample_id` cannot collide with one):
/// what a test produces to move a watermark or to teach one doc more.
pub fn clicked_beta(doc_id: u64, event_time_ms: i64) -> LogRecord {
    let sample = JoinedSample {
        doc_id,
        version: "beta".into(),
        event_time_ms,
        labels: [("click".to_owned(), 1.0)].into(),
        weight: 1.0,
        sample_id: format!("clicked-{doc_id}-{event_time_ms}"),
        ..JoinedSample::default()
    };
    LogRecord {
        doc_id,
        jsonl: String::new(),
        protobuf: sample.encode_to_vec(),
    }
}
