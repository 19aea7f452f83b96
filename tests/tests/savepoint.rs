//! Savepoints: taken from a live store, copied elsewhere, split between
//! two instances by partition, never listed when partial or damaged, and
//! the way back when the live state is corrupt.

#![allow(clippy::unwrap_used, reason = "a panic is the test's failure report")]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use posterior_learner::config::Config;
use posterior_learner::control::Scheduled;
use posterior_learner::engine::{Counters, Engine};
use posterior_learner::file_source::decode_protobuf;
use posterior_learner::partitioning::partition_of;
use posterior_learner::runner::{
    SavepointChoice, fresh_engine, restore_engine, restore_savepoint, run_bounded,
};
use posterior_learner::savepoint::{self, Savepoint, SavepointError};
use posterior_learner::store::RocksStore;
use posterior_proto::v1::{self, ControlCommand, control_command};
use posterior_tests::binary;
use posterior_tests::config::{OUT_OF_ORDERNESS_MS, Source, learner_toml};
use posterior_tests::log::{LogRecord, LogSpec, generate, generate_records};
use posterior_tests::oracle::{dump_store, first_difference, oracle, sorted_lines};

const PARTITIONS: u32 = 4;

/// Breaks a copied savepoint in place.
type Damage = fn(&Path);

fn kafka_config(dir: &Path, name: &str) -> Config {
    restoring_config(dir, name, None, None)
}

/// [`kafka_config`] owning only `partitions` (a TOML list) when given,
/// with `[savepoints]` under `root` when given.
fn restoring_config(
    dir: &Path,
    name: &str,
    partitions: Option<&str>,
    root: Option<&Path>,
) -> Config {
    // The source is never contacted: these engines are fed in process.
    let mut text = learner_toml(dir, name, Source::Kafka("127.0.0.1:9"), 10_000, None);
    if let Some(list) = partitions {
        text = text.replace(
            "topic = \"samples\"",
            &format!("topic = \"samples\"\npartitions = {list}"),
        );
    }
    if let Some(root) = root {
        text += &format!("\n[savepoints]\ndir = \"{}\"\n", root.display());
    }
    Config::from_toml(&text).unwrap()
}

/// Each record with its partition and Kafka offset.
fn placed(records: &[LogRecord]) -> Vec<(u32, u64, &LogRecord)> {
    let mut next = [0_u64; PARTITIONS as usize];
    records
        .iter()
        .map(|r| {
            let p = partition_of(r.doc_id, PARTITIONS);
            next[p as usize] += 1;
            (p, next[p as usize] - 1, r)
        })
        .collect()
}

fn feed(engine: &mut Engine, records: &[(u32, u64, &LogRecord)], keep: impl Fn(u32) -> bool) {
    for &(p, offset, r) in records {
        if keep(p) {
            engine.ingest(p, offset, decode_protobuf(&r.protobuf));
        }
    }
}

/// Completes the savepoint commands `engine` holds at, as a runner does
/// once it has written them (or found them written).
fn pass_barriers(engine: &mut Engine) {
    while engine.barrier().is_some() {
        engine.complete_barrier(Ok("saved".into()));
    }
}

/// [`feed`] and then the end of the input, passing every barrier.
fn feed_to_end(
    engine: &mut Engine,
    records: &[(u32, u64, &LogRecord)],
    keep: impl Fn(u32) -> bool,
) {
    for &(p, offset, r) in records {
        if keep(p) {
            engine.ingest(p, offset, decode_protobuf(&r.protobuf));
            pass_barriers(engine);
        }
    }
    while !engine.finish() {
        pass_barriers(engine);
    }
}

fn dump(engine: &Engine) -> String {
    let mut out = Vec::new();
    posterior_learner::dump::dump(engine, &mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A learner `name` reading a generated JSONL log of (records, docs,
/// seed), checkpointing every quarter of it, with `[savepoints]` under
/// `dir/savepoints` taken at every shutdown, plus `extra` keys of that
/// table; returns its config file, the savepoint root and its config.
fn saving_file_learner(
    dir: &Path,
    name: &str,
    (records, docs, seed): (usize, u64, u64),
    extra: &str,
) -> (PathBuf, PathBuf, Config) {
    let log = dir.join("samples.jsonl");
    let (text, _) = generate(LogSpec {
        records,
        docs,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed,
    });
    std::fs::write(&log, text).unwrap();
    let root = dir.join("savepoints");
    let toml = format!(
        "{}\n[savepoints]\ndir = \"{}\"\non_shutdown = true\n{extra}",
        learner_toml(dir, name, Source::File(&log), records as u64 / 4, None),
        root.display()
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, &toml).unwrap();
    (path, root, Config::from_toml(&toml).unwrap())
}

/// Restores `savepoint` (all partitions or `only`) into a new store under
/// `dir` and rebuilds its engine.
fn restored(dir: &Path, name: &str, savepoint: &Savepoint, only: Option<&[u32]>) -> Engine {
    merged(dir, name, std::slice::from_ref(savepoint), only)
}

/// Restores `only` (or every partition) from `shares` into a new store
/// under `dir` and rebuilds its engine.
fn merged(dir: &Path, name: &str, shares: &[Savepoint], only: Option<&[u32]>) -> Engine {
    let config = kafka_config(dir, name);
    let store = RocksStore::open(&config.state.dir).unwrap();
    let only: Option<BTreeSet<u32>> = only.map(|p| p.iter().copied().collect());
    savepoint::restore_shares_into(shares, only.as_ref(), &store).unwrap();
    restore_engine(&config, &store).unwrap().unwrap().0
}

/// The records of a generated log of (records, docs, seed).
fn generated((records, docs, seed): (usize, u64, u64)) -> Vec<LogRecord> {
    generate_records(LogSpec {
        records,
        docs,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed,
    })
    .0
}

/// A generated log of `records` over 2 000 docs (seed `seed`) and the
/// oracle's dump of it, for a learner `origin` under `dir`.
fn log_and_oracle(dir: &Path, records: usize, seed: u64) -> (Vec<LogRecord>, String) {
    let records = generated((records, 2_000, seed));
    let (expected, _) = oracle(&kafka_config(dir, "origin"), &records, PARTITIONS);
    (records, expected)
}

#[test]
fn a_savepoint_moves_and_splits_between_instances_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (records, expected) = log_and_oracle(dir.path(), 60_000, 31);
    let config = kafka_config(dir.path(), "origin");
    let placed = placed(&records);
    let (first, rest) = placed.split_at(placed.len() / 2);

    let mut origin = fresh_engine(&config, 0..PARTITIONS).unwrap();
    feed(&mut origin, first, |_| true);
    let store = RocksStore::open(&config.state.dir).unwrap();
    store.write(origin.full_checkpoint()).unwrap();
    let taken = savepoint::write(&dir.path().join("savepoints"), &store, PARTITIONS).unwrap();
    assert_eq!(taken.manifest.partitions, vec![0, 1, 2, 3]);
    assert_eq!(&taken.manifest.next_offsets, origin.next_offsets());

    // Another machine: a copy at another path.
    let elsewhere = dir.path().join("elsewhere/sp");
    copy_dir(&taken.dir, &elsewhere);
    let moved = savepoint::verify(&elsewhere).unwrap();

    let mut whole = restored(dir.path(), "whole", &moved, None);
    assert_eq!(dump(&whole), dump(&origin), "restored as it was saved");
    feed(&mut whole, rest, |_| true);
    whole.finish();
    let got = dump(&whole);
    assert!(got == expected, "{}", first_difference(&got, &expected));

    let mut halves = String::new();
    for (name, only) in [("low", [0, 1]), ("high", [2, 3])] {
        let mut half = restored(dir.path(), name, &moved, Some(&only));
        assert_eq!(
            half.next_offsets().keys().copied().collect::<Vec<_>>(),
            only.to_vec()
        );
        feed(&mut half, rest, |p| only.contains(&p));
        half.finish();
        halves.push_str(&dump(&half));
    }
    assert!(
        sorted_lines(&halves) == sorted_lines(&expected),
        "two instances splitting the partitions differ from one"
    );
}

/// The live store of a learner (`origin` under `dir`) that took
/// `(records, docs, seed)` of a generated log on every partition and
/// checkpointed all of it.
fn checkpointed_store(dir: &Path, (records, docs, seed): (usize, u64, u64)) -> RocksStore {
    let config = kafka_config(dir, "origin");
    let records = generated((records, docs, seed));
    let mut engine = fresh_engine(&config, 0..PARTITIONS).unwrap();
    feed(&mut engine, &placed(&records), |_| true);
    let store = RocksStore::open(&config.state.dir).unwrap();
    store.write(engine.full_checkpoint()).unwrap();
    store
}

/// Rewrites `dir`'s manifest through `edit`, and its checksum to match
/// when `checksummed`.
fn edit_manifest(dir: &Path, checksummed: bool, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = dir.join("MANIFEST.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut manifest);
    let text = serde_json::to_vec(&manifest).unwrap();
    std::fs::write(path, &text).unwrap();
    if checksummed {
        let crc = format!("{:08x}\n", crc32fast::hash(&text));
        std::fs::write(dir.join("MANIFEST.crc32"), crc).unwrap();
    }
}

/// The live store of a learner `name` (under `dir`) of `partitions` only,
/// that took their share of `(records, docs, seed)` and checkpointed it.
fn share_store(
    dir: &Path,
    name: &str,
    partitions: [u32; 2],
    (records, docs, seed): (usize, u64, u64),
) -> RocksStore {
    let config = kafka_config(dir, name);
    let records = generated((records, docs, seed));
    let mut engine = fresh_engine(&config, partitions).unwrap();
    feed(&mut engine, &placed(&records), |p| partitions.contains(&p));
    let store = RocksStore::open(&config.state.dir).unwrap();
    store.write(engine.full_checkpoint()).unwrap();
    store
}

#[test]
fn partial_and_damaged_savepoints_are_never_listed_or_restored() {
    let dir = tempfile::tempdir().unwrap();
    let store = checkpointed_store(dir.path(), (5_000, 200, 4));
    let root = dir.path().join("savepoints");
    let good = savepoint::write(&root, &store, PARTITIONS).unwrap();

    // A crash mid-write leaves a temporary directory.
    copy_dir(&good.dir, &root.join(".tmp-sp-9999999999999"));
    // Damaged copies: a flipped byte, a truncated file, no manifest, two
    // impossible manifests, a manifest changed and one whose checksum is
    // gone.
    let damage: [(&str, Damage); 7] = [
        ("sp-9000000000001", |d| {
            let path = d.join("params.tbl");
            let mut bytes = std::fs::read(&path).unwrap();
            bytes[10] ^= 0x40;
            std::fs::write(path, bytes).unwrap();
        }),
        ("sp-9000000000002", |d| {
            let path = d.join("reorder.tbl");
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(path, &bytes[..bytes.len() / 2]).unwrap();
        }),
        ("sp-9000000000003", |d| {
            std::fs::remove_file(d.join("MANIFEST.json")).unwrap();
        }),
        // A manifest edited into impossible partitioning, checksum and
        // all: keys cannot be placed by a count of 0, nor into a
        // partition beyond the count.
        ("sp-9000000000004", |d| {
            edit_manifest(d, true, |m| m["partition_count"] = 0.into());
        }),
        ("sp-9000000000005", |d| {
            edit_manifest(d, true, |m| {
                m["partitions"] = serde_json::json!([0, 1, 2, 7])
            });
        }),
        // Possible, but not what was written: keys would be misplaced.
        ("sp-9000000000006", |d| {
            edit_manifest(d, false, |m| m["partition_count"] = 8.into());
        }),
        ("sp-9000000000007", |d| {
            std::fs::remove_file(d.join("MANIFEST.crc32")).unwrap();
        }),
    ];
    for (name, break_it) in damage {
        copy_dir(&good.dir, &root.join(name));
        break_it(&root.join(name));
    }
    // A savepoint of format 1 had no manifest checksum: still read.
    let old = root.join("sp-9000000000008");
    copy_dir(&good.dir, &old);
    std::fs::remove_file(old.join("MANIFEST.crc32")).unwrap();
    edit_manifest(&old, false, |m| m["format_version"] = 1.into());
    let (valid, invalid) = savepoint::list(&root).unwrap();
    assert_eq!(
        valid.iter().map(|s| s.dir.clone()).collect::<Vec<_>>(),
        vec![good.dir.clone(), old]
    );
    let reasons: Vec<String> = invalid.iter().map(ToString::to_string).collect();
    assert_eq!(reasons.len(), 7, "{reasons:?}");
    assert!(reasons[0].contains("params.tbl") && reasons[0].contains("checksum"));
    assert!(reasons[1].contains("reorder.tbl") && reasons[1].contains("bytes"));
    assert!(reasons[2].contains("MANIFEST.json"));
    assert!(reasons[3].contains("MANIFEST.json") && reasons[3].contains("partition_count is 0"));
    assert!(reasons[4].contains("MANIFEST.json") && reasons[4].contains("partition 7"));
    assert!(reasons[5].contains("MANIFEST.json") && reasons[5].contains("checksum mismatch"));
    assert!(reasons[6].contains("MANIFEST.crc32"), "{}", reasons[6]);
    assert!(matches!(
        savepoint::verify(&root.join("sp-9000000000001")),
        Err(SavepointError::Invalid { .. })
    ));

    // A file changed after its savepoint was verified is refused when the
    // restore reads it.
    let later = root.join("sp-9000000000010");
    copy_dir(&good.dir, &later);
    let verified = savepoint::verify(&later).unwrap();
    let path = later.join("params.tbl");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 0x40;
    std::fs::write(path, bytes).unwrap();
    let fresh = RocksStore::open(&dir.path().join("fresh-state")).unwrap();
    let err = savepoint::restore_into(&verified, None, &fresh).unwrap_err();
    assert!(
        err.to_string().contains("changed since it was verified"),
        "{err}"
    );
    assert!(fresh.is_empty().unwrap(), "nothing restored");

    // Restoring over a live state is refused.
    let err = savepoint::restore_into(&good, None, &store).unwrap_err();
    assert!(err.to_string().contains("already holds a state"), "{err}");
}

#[test]
fn a_corrupt_live_state_is_refused_and_a_savepoint_brings_the_learner_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("samples.jsonl");
    let (text, _) = generate(LogSpec {
        records: 100_000,
        docs: 3_000,
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        seed: 77,
    });
    std::fs::write(&log, text).unwrap();
    let toml = |name: &str| {
        format!(
            "{}\n[savepoints]\ndir = \"{}\"\n",
            learner_toml(dir.path(), name, Source::File(&log), 5_000, None),
            dir.path().join("savepoints").display()
        )
    };
    let reference = Config::from_toml(&toml("reference")).unwrap();
    run_bounded(&reference).unwrap();
    let expected = dump_store(&reference);

    let path = dir.path().join("victim.toml");
    std::fs::write(&path, toml("victim")).unwrap();
    let victim = Config::from_toml(&toml("victim")).unwrap();
    let learner = binary("learner");
    let learner_cmd = |args: &[&str]| {
        let mut cmd = Command::new(&learner);
        cmd.args(args).arg("--config").arg(&path);
        cmd
    };
    let crashed = learner_cmd(&["run"])
        .env("POSTERIOR_FAILPOINT", "after_checkpoint:50000")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the fail point aborts the run");
    let created = learner_cmd(&["savepoint", "create"]).output().unwrap();
    assert!(created.status.success(), "{created:?}");
    let sp_dir = String::from_utf8(created.stdout).unwrap().trim().to_owned();
    let verified = Command::new(&learner)
        .args(["savepoint", "verify", &sp_dir])
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
    let saved = Command::new(&learner)
        .args(["dump", "--savepoint", &sp_dir])
        .output()
        .unwrap();
    assert!(saved.status.success(), "{saved:?}");
    assert_eq!(
        String::from_utf8(saved.stdout).unwrap(),
        dump_store(&victim)
    );

    // Damage the live store.
    for entry in std::fs::read_dir(&victim.state.dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "sst" || e == "log") {
            let mut bytes = std::fs::read(&path).unwrap();
            for b in bytes.iter_mut().skip(32).step_by(97) {
                *b ^= 0xff;
            }
            std::fs::write(&path, bytes).unwrap();
        }
    }
    let refused = learner_cmd(&["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr).to_lowercase();
    assert!(!refused.status.success());
    assert!(
        stderr.contains("corrupt") || stderr.contains("checksum"),
        "unclear error: {stderr}"
    );
    let over_live = learner_cmd(&["run", "--from-savepoint", "latest"])
        .output()
        .unwrap();
    assert!(
        !over_live.status.success(),
        "a savepoint never silently replaces the live state"
    );

    // The operator moves the damaged state away; with no live state the
    // learner restores the newest savepoint by itself.
    std::fs::rename(&victim.state.dir, dir.path().join("damaged-state")).unwrap();
    let back = learner_cmd(&["run"]).output().unwrap();
    let stderr = String::from_utf8_lossy(&back.stderr);
    assert!(back.status.success(), "{stderr}");
    assert!(
        stderr.contains("no live state: restored the newest savepoint"),
        "{stderr}"
    );
    assert!(stderr.contains("resumed from checkpoint"), "{stderr}");
    let got = dump_store(&victim);
    assert!(got == expected, "{}", first_difference(&got, &expected));
}

#[test]
fn a_savepoint_interrupted_mid_write_is_never_listed_and_the_next_one_completes() {
    let dir = tempfile::tempdir().unwrap();
    let (path, root, config) = saving_file_learner(dir.path(), "victim", (20_000, 500, 12), "");
    let run = |failpoint: Option<&str>| {
        let mut cmd = Command::new(binary("learner"));
        cmd.args(["run", "--config"]).arg(&path);
        if let Some(fp) = failpoint {
            cmd.env("POSTERIOR_FAILPOINT", fp);
        }
        cmd.output().unwrap()
    };

    let crashed = run(Some("mid_savepoint:0"));
    assert!(
        !crashed.status.success(),
        "the fail point aborts the savepoint"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert_eq!(leftovers.len(), 1, "the interrupted temp directory is left");
    let (valid, invalid) = savepoint::list(&root).unwrap();
    assert!(
        valid.is_empty() && invalid.is_empty(),
        "{valid:?} {invalid:?}"
    );
    let complete = dump_store(&config);

    let done = run(None);
    assert!(done.status.success(), "{done:?}");
    let (valid, _) = savepoint::list(&root).unwrap();
    assert_eq!(valid.len(), 1);
    assert_eq!(
        Command::new(binary("learner"))
            .args(["dump", "--savepoint"])
            .arg(&valid[0].dir)
            .output()
            .unwrap()
            .stdout,
        complete.as_bytes(),
        "the savepoint holds the state the interrupted run had checkpointed"
    );
}

/// A savepoint whose writing fails (here its manifest cannot be created)
/// leaves nothing behind: no listed savepoint and no partial files holding
/// the space; the next one completes.
#[test]
fn a_failed_savepoint_removes_its_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = checkpointed_store(dir.path(), (2_000, 100, 7));
    let root = dir.path().join("savepoints");
    let err = savepoint::write_with(&root, &store, PARTITIONS, || {
        // The table files are written; a directory where the manifest goes
        // makes its write fail.
        let tmp = std::fs::read_dir(&root)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with(".tmp-")
            })
            .expect("the temporary directory");
        assert!(tmp.join("params.tbl").exists());
        std::fs::create_dir(tmp.join("MANIFEST.json")).unwrap();
    })
    .unwrap_err();
    assert!(err.to_string().contains("MANIFEST.json"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&root).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let good = savepoint::write(&root, &store, PARTITIONS).unwrap();
    let (valid, invalid) = savepoint::list(&root).unwrap();
    assert_eq!(valid.len(), 1);
    assert!(invalid.is_empty());
    assert_eq!(valid[0].dir, good.dir);
}

/// SIGUSR1 (the `savepoint` control) takes a savepoint in a file run too,
/// besides the one at shutdown.
#[test]
fn a_file_run_takes_a_savepoint_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let (_, root, config) = saving_file_learner(dir.path(), "asked", (2_000, 100, 9), "");
    let controls = posterior_learner::runner::Controls::default();
    controls
        .savepoint
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let summary = posterior_learner::runner::run_local(
        &config,
        &controls,
        posterior_learner::runner::open_sink(&config).unwrap(),
    )
    .unwrap();
    assert_eq!(summary.records, 2_000);
    assert!(
        !controls
            .savepoint
            .load(std::sync::atomic::Ordering::Relaxed)
    );
    let (valid, invalid) = savepoint::list(&root).unwrap();
    assert!(invalid.is_empty(), "{invalid:?}");
    assert_eq!(valid.len(), 2, "the one asked for and the shutdown's");
}

/// `savepoint::prune` deletes the oldest of a learner's own savepoints
/// beyond `keep`, and nothing else: not the savepoints admin commands
/// asked for, not another learner's (other partitions), not a directory
/// it cannot read; a deletion a crash interrupted is finished; a damaged
/// savepoint does not count toward `keep`.
#[test]
fn pruning_keeps_the_newest_own_savepoints_and_every_other() {
    let dir = tempfile::tempdir().unwrap();
    let records = generated((3_000, 100, 8));
    let placed = placed(&records);
    let checkpointed = |name: &str, partitions: std::ops::Range<u32>| {
        let config = kafka_config(dir.path(), name);
        let mut engine = fresh_engine(&config, partitions.clone()).unwrap();
        feed(&mut engine, &placed, |p| partitions.contains(&p));
        let store = RocksStore::open(&config.state.dir).unwrap();
        store.write(engine.full_checkpoint()).unwrap();
        store
    };
    let (all, half) = (
        checkpointed("all", 0..PARTITIONS),
        checkpointed("half", 0..2),
    );
    let root = dir.path().join("savepoints");
    let ours: Vec<Savepoint> = (0..4)
        .map(|_| savepoint::write(&root, &all, PARTITIONS).unwrap())
        .collect();
    let asked = savepoint::Requested {
        command_id: "before-launch",
        label: "kept for a rollback",
    };
    let (named, _) = savepoint::write_requested(&root, &all, PARTITIONS, asked, || {}).unwrap();
    let other = savepoint::write(&root, &half, PARTITIONS).unwrap();
    // Not a savepoint (no manifest), and a deletion cut short by a crash.
    std::fs::create_dir_all(root.join("notes")).unwrap();
    copy_dir(&ours[0].dir, &root.join(".tmp-pruned-sp-0000000000001"));

    let newest = &ours[3];
    let deleted = savepoint::prune(&root, newest, 2).unwrap();
    assert_eq!(deleted, vec![ours[0].dir.clone(), ours[1].dir.clone()]);
    let mut left: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    left.sort();
    let mut want = vec![
        ours[2].dir.clone(),
        ours[3].dir.clone(),
        named.dir.clone(),
        other.dir.clone(),
        root.join("notes"),
    ];
    want.sort();
    assert_eq!(left, want);
    let (valid, invalid) = savepoint::list(&root).unwrap();
    assert_eq!(valid.len(), 4, "{invalid:?}");

    // Within the bound nothing goes; a bound below 1 keeps the one taken.
    assert!(savepoint::prune(&root, newest, 2).unwrap().is_empty());
    assert_eq!(
        savepoint::prune(&root, newest, 0).unwrap(),
        vec![ours[2].dir.clone()]
    );
    assert!(newest.dir.exists() && named.dir.exists() && other.dir.exists());

    // A damaged savepoint whose manifest still reads does not count toward
    // `keep`: the good one before it is kept instead, and it stays.
    let more: Vec<Savepoint> = (0..3)
        .map(|_| savepoint::write(&root, &all, PARTITIONS).unwrap())
        .collect();
    std::fs::write(more[1].dir.join("params.tbl"), b"damaged").unwrap();
    assert_eq!(
        savepoint::prune(&root, &more[2], 2).unwrap(),
        vec![newest.dir.clone()]
    );
    assert!(more.iter().all(|s| s.dir.exists()));
}

/// With `[savepoints] keep`, a learner taking a savepoint at every
/// shutdown keeps only the newest ones.
#[test]
fn a_learner_keeps_as_many_savepoints_as_it_is_told() {
    let dir = tempfile::tempdir().unwrap();
    let (path, root, _) = saving_file_learner(dir.path(), "kept", (2_000, 100, 13), "keep = 2\n");
    let mut taken = Vec::new();
    for _ in 0..4 {
        let run = Command::new(binary("learner"))
            .args(["run", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(run.status.success(), "{run:?}");
        let (valid, _) = savepoint::list(&root).unwrap();
        taken.push(valid.last().unwrap().dir.clone());
        assert!(valid.len() <= 2, "{valid:?}");
    }
    let (valid, invalid) = savepoint::list(&root).unwrap();
    assert!(invalid.is_empty(), "{invalid:?}");
    assert_eq!(
        valid.into_iter().map(|s| s.dir).collect::<Vec<_>>(),
        taken[2..].to_vec(),
        "the two newest of {taken:?}"
    );
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 2);
}

/// Learners sharing a savepoint root each save their own partitions. A
/// restore of the latest savepoint takes the newest one that holds the
/// restoring instance's partitions, not the newest of any instance.
#[test]
fn the_latest_savepoint_is_the_newest_that_holds_the_partitions_wanted() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("savepoints");
    // Older: one instance held every partition.
    let whole = checkpointed_store(dir.path(), (2_000, 100, 8));
    let all = savepoint::write(&root, &whole, PARTITIONS).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(5));
    // Newer: an instance of partitions 0 and 1.
    let left_store = share_store(dir.path(), "left", [0, 1], (2_000, 100, 8));
    let left = savepoint::write(&root, &left_store, PARTITIONS).unwrap();
    assert_eq!(left.manifest.partitions, vec![0, 1]);

    let restoring = |name: &str, partitions: Option<&str>| {
        let config = restoring_config(dir.path(), name, partitions, Some(&root));
        restore_savepoint(&config, &SavepointChoice::Latest)
            .unwrap()
            .into_iter()
            .map(|s| s.dir)
            .collect::<Vec<_>>()
    };
    assert_eq!(restoring("right", Some("[2, 3]")), vec![all.dir.clone()]);
    assert_eq!(restoring("again-left", Some("[0, 1]")), vec![left.dir]);
    assert_eq!(restoring("whole", None), vec![all.dir]);
}

/// Two learners of one topic, partitions {0, 1} and {2, 3}, sharing a
/// savepoint root, both take the savepoint one admin command asked for:
/// each writes its own share under its own name (before, the second found
/// the first's and reported it as its own), a replay of the command finds
/// its own share written, and a rollback's lookup finds each learner's,
/// or both shares for a learner that holds partitions of each.
#[test]
fn learners_sharing_a_root_each_write_their_share_of_a_commands_savepoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("savepoints");
    let share = |name: &str, partitions: [u32; 2]| {
        share_store(dir.path(), name, partitions, (2_000, 100, 9))
    };
    let (left, right) = (share("left", [0, 1]), share("right", [2, 3]));
    let asked = savepoint::Requested {
        command_id: "snap",
        label: "before the test",
    };
    let write = |store: &RocksStore| {
        savepoint::write_requested(&root, store, PARTITIONS, asked, || {}).unwrap()
    };
    let (left_saved, written) = write(&left);
    assert!(written);
    assert_eq!(left_saved.dir, root.join("snap.p0-1"));
    let (right_saved, written) = write(&right);
    assert!(written, "the right learner's share is its own");
    assert_eq!(right_saved.dir, root.join("snap.p2-3"));
    assert_eq!(right_saved.manifest.partitions, vec![2, 3]);
    // The command replayed after a crash: each finds its own share.
    let (again, written) = write(&right);
    assert!(!written);
    assert_eq!(again.dir, right_saved.dir);

    let find = |wanted: &[u32]| {
        let wanted: BTreeSet<u32> = wanted.iter().copied().collect();
        savepoint::find_requested(&root, "snap", &wanted)
            .ok()
            .map(|found| found.into_iter().map(|s| s.dir).collect::<Vec<_>>())
    };
    assert_eq!(find(&[2, 3]), Some(vec![right_saved.dir.clone()]));
    assert_eq!(find(&[0]), Some(vec![left_saved.dir.clone()]));
    assert_eq!(
        find(&[1, 2]),
        Some(vec![left_saved.dir.clone(), right_saved.dir.clone()]),
        "each share supplies its partition"
    );
    // Another command's savepoint whose id starts like a share's name.
    let other = savepoint::Requested {
        command_id: "snap.p9",
        label: "",
    };
    savepoint::write_requested(&root, &left, PARTITIONS, other, || {}).unwrap();
    assert_eq!(find(&[0]), Some(vec![left_saved.dir.clone()]));
    // A learner of every partition names it by the id alone.
    let whole = checkpointed_store(dir.path(), (2_000, 100, 9));
    let (saved, _) =
        savepoint::write_requested(&root.join("whole"), &whole, PARTITIONS, asked, || {}).unwrap();
    assert_eq!(saved.dir, root.join("whole").join("snap"));
}

/// An admin command `id` to take a savepoint at `at_ms` past the
/// generated log's first event time.
fn savepoint_command(id: &str, at_ms: i64) -> Scheduled {
    Scheduled::try_from(ControlCommand {
        command_id: id.into(),
        effective_event_time_ms: 1_700_000_000_000 + at_ms,
        issued_by: "savepoint-test".into(),
        command: Some(control_command::Command::TriggerSavepoint(
            v1::TriggerSavepointRequest { label: id.into() },
        )),
    })
    .unwrap()
}

/// Two learners, of partitions {0, 1} and {2, 3} (named `<id>-low` and
/// `<id>-high`), read `records` with a savepoint command `id` at
/// `at_ms` past the log's first event time, and the `extra` commands of
/// each (by `low` or `high`), passing the barriers of those; each holds
/// at `id` and writes its share under `root`. Returns the shares and the
/// learners' counters summed.
fn command_shares(
    dir: &Path,
    root: &Path,
    records: &[(u32, u64, &LogRecord)],
    (id, at_ms): (&str, i64),
    extra: &[(&str, Scheduled)],
) -> (Vec<Savepoint>, Counters) {
    let command = savepoint_command(id, at_ms);
    let mut shares = Vec::new();
    let mut counters = Counters::default();
    for (half, partitions) in [("low", [0, 1]), ("high", [2, 3])] {
        let config = kafka_config(dir, &format!("{id}-{half}"));
        let mut engine = fresh_engine(&config, partitions).unwrap();
        engine.schedule(command.clone());
        for (_, other) in extra.iter().filter(|(who, _)| *who == half) {
            engine.schedule(other.clone());
        }
        for &(p, offset, r) in records {
            if partitions.contains(&p) {
                engine.ingest(p, offset, decode_protobuf(&r.protobuf));
                while engine.barrier().is_some_and(|b| b.id != id) {
                    engine.complete_barrier(Ok("saved".into()));
                }
            }
        }
        assert!(engine.barrier().is_some(), "{half} holds at the command");
        counters.add(engine.counters());
        let store = RocksStore::open(&config.state.dir).unwrap();
        store.write(engine.full_checkpoint()).unwrap();
        shares.push(write_share(root, &store, id));
    }
    (shares, counters)
}

/// Writes the savepoint command `id` asked for of `store` under `root`.
fn write_share(root: &Path, store: &RocksStore, id: &str) -> Savepoint {
    let asked = savepoint::Requested {
        command_id: id,
        label: id,
    };
    savepoint::write_requested(root, store, PARTITIONS, asked, || {})
        .unwrap()
        .0
}

/// Two learners, of partitions {0, 1} and {2, 3}, take their shares of
/// one admin command's savepoint at its event time. The shares merge into
/// one learner of every partition (also through `learner dump
/// --savepoint A B`), or regroup into three ({0}, {1, 2}, {3}); fed the
/// rest of the log, each ends equal to the oracle, bit for bit.
#[test]
fn the_shares_of_one_savepoint_merge_and_regroup_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (records, expected) = log_and_oracle(dir.path(), 30_000, 37);
    let placed = placed(&records);
    let (first, rest) = placed.split_at(placed.len() / 2);
    let root = dir.path().join("savepoints");
    // About a third into the log: the first half's watermark is past it.
    let (shares, counters) = command_shares(dir.path(), &root, first, ("snap", 10_000), &[]);
    assert!(counters.applied > 0);

    let mut whole = merged(dir.path(), "whole", &shares, None);
    assert_eq!(whole.counters(), &counters, "the shares' counters summed");
    let dumped = Command::new(binary("learner"))
        .args(["dump", "--savepoint"])
        .args(shares.iter().map(|s| &s.dir))
        .output()
        .unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    assert_eq!(String::from_utf8(dumped.stdout).unwrap(), dump(&whole));
    // One share alone dumps its own partitions.
    let dumped = Command::new(binary("learner"))
        .args(["dump", "--savepoint"])
        .arg(&shares[1].dir)
        .output()
        .unwrap();
    assert!(
        dumped.status.success(),
        "{}",
        String::from_utf8_lossy(&dumped.stderr)
    );
    let high = merged(dir.path(), "high-only", &shares, Some(&[2, 3]));
    assert_eq!(String::from_utf8(dumped.stdout).unwrap(), dump(&high));
    feed_to_end(&mut whole, rest, |_| true);
    let got = dump(&whole);
    assert!(got == expected, "{}", first_difference(&got, &expected));

    let mut regrouped = String::new();
    for (name, only) in [("p0", &[0][..]), ("p12", &[1, 2]), ("p3", &[3])] {
        let config = kafka_config(dir.path(), name);
        let store = RocksStore::open(&config.state.dir).unwrap();
        let wanted: BTreeSet<u32> = only.iter().copied().collect();
        savepoint::restore_shares_into(&shares, Some(&wanted), &store).unwrap();
        let mut part = restore_engine(&config, &store).unwrap().unwrap().0;
        assert_eq!(
            part.next_offsets().keys().copied().collect::<Vec<_>>(),
            only.to_vec()
        );
        assert_eq!(
            part.counters(),
            &Counters::default(),
            "a split's start from 0"
        );
        // Restored at the command, the learner writes its own share of it
        // when it holds there again: shares of one command now overlap.
        write_share(&root, &store, "snap");
        feed_to_end(&mut part, rest, |p| only.contains(&p));
        regrouped.push_str(&dump(&part));
    }
    assert!(
        sorted_lines(&regrouped) == sorted_lines(&expected),
        "three instances regrouping the shares differ from one"
    );
    // The runner's restore of given directories (`--from-savepoint A B`)
    // takes the configured partitions from them.
    let config = restoring_config(dir.path(), "runner", Some("[1, 2]"), None);
    let dirs = shares.iter().map(|s| s.dir.clone()).collect();
    restore_savepoint(&config, &SavepointChoice::Dirs(dirs)).unwrap();
    let store = RocksStore::open(&config.state.dir).unwrap();
    let (engine, _) = restore_engine(&config, &store).unwrap().unwrap();
    assert_eq!(
        engine.next_offsets().keys().copied().collect::<Vec<_>>(),
        [1, 2]
    );
    // Overlapping shares: the fewest that hold the partitions wanted once
    // each are picked.
    let find = |wanted: &[u32]| -> Vec<String> {
        let wanted: BTreeSet<u32> = wanted.iter().copied().collect();
        savepoint::find_requested(&root, "snap", &wanted)
            .unwrap()
            .iter()
            .map(|s| s.dir.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(find(&[0, 1, 2, 3]), ["snap.p0-1", "snap.p2-3"]);
    assert_eq!(find(&[1, 2]), ["snap.p1-2"]);
    assert_eq!(find(&[0, 3]), ["snap.p0", "snap.p3"]);

    // A rollback's states for a learner of partitions {1, 2}: those a
    // learner of every partition saved at the same command.
    let config = kafka_config(dir.path(), "all");
    let mut all = fresh_engine(&config, 0..PARTITIONS).unwrap();
    all.schedule(savepoint_command("snap", 10_000));
    feed(&mut all, first, |_| true);
    assert!(all.barrier().is_some());
    let store = RocksStore::open(&config.state.dir).unwrap();
    store.write(all.full_checkpoint()).unwrap();
    let saved = savepoint::write(&dir.path().join("all"), &store, PARTITIONS).unwrap();
    let wanted = BTreeSet::from([1, 2]);
    for version in ["beta", "logistic"] {
        let (spec, mut states) = savepoint::version_states(&saved, version).unwrap().unwrap();
        states.retain(|(doc, _)| wanted.contains(&partition_of(*doc, PARTITIONS)));
        assert!(!states.is_empty());
        let from_shares = savepoint::shares_version_states(&shares, version, &wanted)
            .unwrap()
            .unwrap();
        assert!(from_shares == (spec, states), "{version} differs");
    }
    assert!(
        savepoint::shares_version_states(&shares, "nobody", &wanted)
            .unwrap()
            .is_none()
    );
}

/// Shares that do not make one state are refused, naming why, and leave
/// the live store empty: shares of different points of the event-time
/// order, two holders of one partition, a partition in none.
#[test]
fn shares_that_do_not_make_one_state_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("savepoints");
    // The learners read different lengths of the log: their release
    // frontiers differ.
    let left = share_store(dir.path(), "left", [0, 1], (2_000, 100, 10));
    let right = share_store(dir.path(), "right", [2, 3], (4_000, 100, 10));
    let left = savepoint::write(&root, &left, PARTITIONS).unwrap();
    let right = savepoint::write(&root, &right, PARTITIONS).unwrap();
    let whole = checkpointed_store(dir.path(), (2_000, 100, 10));
    let whole = savepoint::write(&root, &whole, PARTITIONS).unwrap();

    let config = kafka_config(dir.path(), "target");
    let store = RocksStore::open(&config.state.dir).unwrap();
    let refusal = |shares: &[Savepoint], only: Option<&[u32]>| {
        let only: Option<BTreeSet<u32>> = only.map(|p| p.iter().copied().collect());
        let err = savepoint::restore_shares_into(shares, only.as_ref(), &store).unwrap_err();
        assert!(matches!(err, SavepointError::Refused(_)), "{err}");
        assert!(store.is_empty().unwrap(), "nothing restored");
        err.to_string()
    };
    let apart = refusal(&[left.clone(), right.clone()], None);
    assert!(apart.contains("release frontiers"), "{apart}");
    // Nor does a rollback read a version from them.
    let all = BTreeSet::from_iter(0..PARTITIONS);
    let err =
        savepoint::shares_version_states(&[left.clone(), right.clone()], "beta", &all).unwrap_err();
    assert!(err.to_string().contains("release frontiers"), "{err}");
    let twice = refusal(&[whole.clone(), left.clone()], None);
    assert!(twice.contains("partition 0 is in both"), "{twice}");
    let missing = refusal(std::slice::from_ref(&left), None);
    assert!(
        missing.contains("no savepoint holds partition 2"),
        "{missing}"
    );
    let none = refusal(&[], None);
    assert!(none.contains("no savepoint given"), "{none}");
    let (path, _, _) = saving_file_learner(dir.path(), "cli", (100, 10, 10), "");
    let run = Command::new(binary("learner"))
        .args(["run", "--config"])
        .arg(&path)
        .args(["--from-savepoint", "latest"])
        .arg(&left.dir)
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("latest takes no directories"), "{stderr}");

    // Each share alone restores its own partitions; a share that supplies
    // none of them is passed over.
    savepoint::restore_shares_into(
        &[left.clone(), right],
        Some(&BTreeSet::from([0, 1])),
        &store,
    )
    .unwrap();
    let (engine, _) = restore_engine(&config, &store).unwrap().unwrap();
    assert_eq!(
        engine.next_offsets().keys().copied().collect::<Vec<_>>(),
        vec![0, 1]
    );
}

/// A whole learner restoring the latest savepoint takes the newest
/// shares of one command together, over an older savepoint of its own;
/// shares that do not merge are passed over.
#[test]
fn the_latest_savepoint_may_be_the_shares_of_one_command() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("savepoints");
    let whole = checkpointed_store(dir.path(), (2_000, 100, 11));
    let older = savepoint::write(&root, &whole, PARTITIONS).unwrap();
    let config = restoring_config(dir.path(), "merged", None, Some(&root));
    let latest = || -> Vec<PathBuf> {
        let chosen = restore_savepoint(&config, &SavepointChoice::Latest).unwrap();
        std::fs::remove_dir_all(&config.state.dir).unwrap();
        chosen.into_iter().map(|s| s.dir).collect()
    };
    // Newer, but written by learners at different release frontiers
    // (each at its own end of the log), as if a command had asked.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let asked = savepoint::Requested {
        command_id: "apart",
        label: "",
    };
    for (name, partitions) in [("left", [0, 1]), ("right", [2, 3])] {
        let store = share_store(dir.path(), name, partitions, (2_000, 100, 11));
        savepoint::write_requested(&root, &store, PARTITIONS, asked, || {}).unwrap();
    }
    assert_eq!(latest(), vec![older.dir.clone()], "the shares do not merge");
    // Newer still: one command's shares, at its event time.
    std::thread::sleep(std::time::Duration::from_millis(5));
    let records = generated((4_000, 100, 11));
    let (shares, _) = command_shares(
        dir.path(),
        &root,
        &placed(&records),
        ("regroup", 2_000),
        &[],
    );
    let newer: Vec<PathBuf> = shares.into_iter().map(|s| s.dir).collect();
    assert_eq!(latest(), newer, "not the older {}", older.dir.display());
}

/// The admin-command backlogs of one command's shares may differ in the
/// commands a learner read ahead: the merged state waits for those of the
/// share that read furthest. Shares whose learners applied different
/// commands are refused.
#[test]
fn shares_merge_the_commands_read_ahead_and_refuse_different_applied_ones() {
    let dir = tempfile::tempdir().unwrap();
    let records = generated((4_000, 100, 12));
    let placed = placed(&records);
    let root = dir.path().join("savepoints");
    // Read ahead by the high learner only: a savepoint far in the future.
    let ahead = savepoint_command("tomorrow", 86_400_000);
    let (shares, _) = command_shares(
        dir.path(),
        &root,
        &placed,
        ("snap", 2_000),
        &[("high", ahead)],
    );
    let whole = merged(dir.path(), "whole", &shares, None);
    let waiting: Vec<&str> = whole.scheduled_commands().map(|c| c.id.as_str()).collect();
    assert_eq!(waiting, ["snap", "tomorrow"]);

    // Applied by the low learner only: a savepoint before the command's.
    let earlier = savepoint_command("earlier", 1_000);
    let (shares, _) = command_shares(
        dir.path(),
        &root.join("apart"),
        &placed,
        ("snap", 2_000),
        &[("low", earlier)],
    );
    let config = kafka_config(dir.path(), "refused");
    let store = RocksStore::open(&config.state.dir).unwrap();
    let err = savepoint::restore_shares_into(&shares, None, &store).unwrap_err();
    assert!(
        err.to_string().contains("applied different admin commands"),
        "{err}"
    );
    assert!(store.is_empty().unwrap());
}

/// A learner of some partitions restoring the latest savepoint ranks a
/// command's shares by the share it would take, not by another learner's
/// newer share of that command.
#[test]
fn the_latest_savepoint_ranks_a_commands_shares_by_the_one_taken() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("savepoints");
    let pause = || std::thread::sleep(std::time::Duration::from_millis(5));
    let left = share_store(dir.path(), "left", [0, 1], (2_000, 100, 14));
    let right = share_store(dir.path(), "right", [2, 3], (2_000, 100, 14));
    let old_left = write_share(&root, &left, "old");
    pause();
    let own = savepoint::write(&root, &left, PARTITIONS).unwrap();
    pause();
    // The right learner reached the command later.
    write_share(&root, &right, "old");
    let config = restoring_config(dir.path(), "again", Some("[0, 1]"), Some(&root));
    let chosen: Vec<PathBuf> = restore_savepoint(&config, &SavepointChoice::Latest)
        .unwrap()
        .into_iter()
        .map(|s| s.dir)
        .collect();
    assert_eq!(chosen, vec![own.dir], "not {}", old_left.dir.display());
}
