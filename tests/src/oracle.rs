//! The expected results of the end-to-end tests: a pure in-process engine
//! (the oracle) over the same records, and the comparisons with what a
//! learner process left in its store.

use posterior_learner::config::Config;
use std::collections::BTreeMap;

use posterior_learner::control::{Command, Scheduled};
use posterior_learner::engine::Engine;
use posterior_learner::file_source::decode_protobuf;
use posterior_learner::partitioning::partition_of;
use posterior_learner::posterior::KeyState;
use posterior_learner::runner::{fresh_engine, restore_engine};
use posterior_learner::store::RocksStore;
use posterior_proto::v1::ControlCommand;

use crate::broker::Broker;
use crate::log::LogRecord;

/// The oracle: the pure engine over the records of each of `partitions`
/// (partition `doc_id mod partitions`, Kafka offsets), ended like a
/// bounded input. Returns its dump and its dead letters as JSONL, in the
/// form the learner writes them.
///
/// # Panics
/// When the engine cannot be built from `config`.
pub fn oracle(config: &Config, records: &[LogRecord], partitions: u32) -> (String, String) {
    oracle_with_commands(config, records, partitions, &[])
}

/// [`oracle`] with admin `commands` scheduled before the first record
/// (each applies at its event time, wherever it arrives before that).
///
/// # Panics
/// When the engine cannot be built from `config` or a command is invalid.
pub fn oracle_with_commands(
    config: &Config,
    records: &[LogRecord],
    partitions: u32,
    commands: &[ControlCommand],
) -> (String, String) {
    let (dump, dead, _) = oracle_with_savepoints(config, records, partitions, commands);
    (dump, dead)
}

/// What the oracle's savepoint commands took: per command id, the dump
/// of the state at the command's event time.
pub type SavepointDumps = BTreeMap<String, String>;

/// [`oracle_with_commands`], also doing what a learner does at savepoint
/// and rollback commands (in memory: a savepoint is the state at its
/// cut, a rollback restores one version from it). Returns the dumps at
/// the savepoints' cuts too.
///
/// # Panics
/// As [`oracle_with_commands`], or when a rollback names a savepoint no
/// earlier command took.
pub fn oracle_with_savepoints(
    config: &Config,
    records: &[LogRecord],
    partitions: u32,
    commands: &[ControlCommand],
) -> (String, String, SavepointDumps) {
    let mut engine = fresh_engine(config, 0..partitions).expect("engine from config");
    for command in commands {
        engine.schedule(Scheduled::try_from(command.clone()).expect("a valid command"));
    }
    let mut saved = Saved::default();
    let mut next = vec![0_u64; partitions as usize];
    for record in records {
        let p = partition_of(record.doc_id, partitions);
        engine.ingest(p, next[p as usize], decode_protobuf(&record.protobuf));
        next[p as usize] += 1;
        saved.at_barriers(&mut engine);
    }
    while !engine.finish() {
        saved.at_barriers(&mut engine);
    }
    let mut dead = String::new();
    for letter in engine.take_dead_letters() {
        dead.push_str(&serde_json::to_string(&letter).expect("dead letter as JSON"));
        dead.push('\n');
    }
    (dump_engine(&engine), dead, saved.dumps)
}

/// The oracle's savepoints, in memory.
#[derive(Default)]
struct Saved {
    dumps: SavepointDumps,
    /// Per savepoint id and version name, every (doc, state).
    states: BTreeMap<String, BTreeMap<String, Vec<(u64, KeyState)>>>,
}

impl Saved {
    /// Does what the learner's runner does at each barrier the engine
    /// holds.
    fn at_barriers(&mut self, engine: &mut Engine) {
        while let Some(command) = engine.barrier().cloned() {
            let result = match &command.command {
                Command::Savepoint { .. } => {
                    self.dumps.insert(command.id.clone(), dump_engine(engine));
                    // Every registered version, with or without keys.
                    let mut by_version: BTreeMap<String, Vec<(u64, KeyState)>> = engine
                        .registry()
                        .entries()
                        .iter()
                        .map(|e| (e.spec.name.clone(), Vec::new()))
                        .collect();
                    for (key, state) in engine.params() {
                        let name = &engine
                            .registry()
                            .get(key.version)
                            .expect("registered")
                            .spec
                            .name;
                        by_version
                            .entry(name.clone())
                            .or_default()
                            .push((key.doc_id, state.clone()));
                    }
                    self.states.insert(command.id.clone(), by_version);
                    Ok("saved".to_owned())
                }
                Command::Rollback {
                    version,
                    savepoint_id,
                } => {
                    match self
                        .states
                        .get(savepoint_id)
                        .expect("rollback to a savepoint the oracle took")
                        .get(version)
                    {
                        Some(states) => engine.rollback_version(version, states.clone()),
                        None => Err(format!("the savepoint has no version {version:?}")),
                    }
                }
                other => unreachable!("{other:?} is not a barrier"),
            };
            engine.complete_barrier(result);
        }
    }
}

fn dump_engine(engine: &Engine) -> String {
    let mut dump = Vec::new();
    posterior_learner::dump::dump(engine, &mut dump).expect("dump to memory");
    String::from_utf8(dump).expect("dumps are UTF-8")
}

/// Produces `records` to the `samples` topic, keyed and partitioned by
/// doc; returns the record count of each partition.
pub fn produce_samples(broker: &Broker, records: &[LogRecord], partitions: u32) -> Vec<u64> {
    broker.produce(
        "samples",
        records.iter().map(|r| {
            (
                partition_of(r.doc_id, partitions),
                r.doc_id.to_be_bytes().to_vec(),
                r.protobuf.as_slice(),
            )
        }),
    );
    let mut counts = vec![0_u64; partitions as usize];
    for r in records {
        counts[partition_of(r.doc_id, partitions) as usize] += 1;
    }
    counts
}

/// The dump of the state a learner left in its store.
///
/// # Panics
/// When the store cannot be opened or holds no state.
pub fn dump_store(config: &Config) -> String {
    let store = RocksStore::open(&config.state.dir).expect("open store");
    let (engine, _) = restore_engine(config, &store)
        .expect("restore")
        .expect("the store holds a state");
    let mut out = Vec::new();
    posterior_learner::dump::dump(&engine, &mut out).expect("dump to memory");
    String::from_utf8(out).expect("dumps are UTF-8")
}

/// Asserts that the learner of `got` ended with the state and the
/// dead-letter file of the learner of `expected`, bit for bit; `context`
/// starts the failure message.
///
/// # Panics
/// When they differ, or a store or file cannot be read.
pub fn assert_same_end(got: &Config, expected: &Config, context: &str) {
    let (got_dump, expected_dump) = (dump_store(got), dump_store(expected));
    assert!(
        got_dump == expected_dump,
        "{context}: state differs: {}",
        first_difference(&got_dump, &expected_dump)
    );
    let read = |config: &Config| {
        std::fs::read(config.dead_letter.path().expect("a dead-letter file")).expect("dead letters")
    };
    assert!(
        read(got) == read(expected),
        "{context}: dead letters differ"
    );
}

/// Where two texts first differ, by line, for failure messages.
pub fn first_difference(got: &str, expected: &str) -> String {
    let (g, e): (Vec<&str>, Vec<&str>) = (got.lines().collect(), expected.lines().collect());
    let first = g.iter().zip(&e).position(|(a, b)| a != b);
    format!(
        "{} vs {} lines; first difference at {first:?}: {:?} vs {:?}",
        g.len(),
        e.len(),
        first.map(|i| g[i]),
        first.map(|i| e[i])
    )
}

/// The lines of `text` sorted: dead letters are written exactly once each,
/// but across partitions in the broker's interleaving.
pub fn sorted_lines(text: &str) -> String {
    let mut lines: Vec<&str> = text.lines().collect();
    lines.sort_unstable();
    lines.join("\n")
}
