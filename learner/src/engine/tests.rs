//! The engine against an independent reference ("oracle") that applies the
//! documented rules to the whole log at once: per-partition lateness, a
//! global sort by (event_time, partition, offset), de-duplication, version
//! and observation checks, count / positive / age batch triggers. The
//! engine, fed the partitions in several random interleavings, must reach
//! the oracle's state bit for bit and the same dead-letter counts.

use std::collections::{BTreeMap, HashMap};

use posterior_proto::v1;
use prost::Message;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::*;
use crate::codec::Table;
use crate::posterior::{
    BetaPrior, CovarianceForm, LogisticPrior, ModelKind, ModelSpec, Observation,
};
use crate::version::{RewardSpec, VersionSpec};

const OUT_OF_ORDERNESS_MS: i64 = 50;
const DEDUP_WINDOW_MS: i64 = 2_000;
const DIM: usize = 4;

fn registry() -> Registry {
    let beta = VersionSpec {
        name: "beta".into(),
        model: ModelSpec::new(ModelKind::Beta(BetaPrior::UNIFORM)),
        reward: RewardSpec::binary("click"),
        use_sample_weight: true,
    };
    let logistic = VersionSpec {
        name: "logistic".into(),
        model: ModelSpec::new(ModelKind::Logistic(
            LogisticPrior::isotropic(CovarianceForm::Diagonal, DIM, 1.0).unwrap(),
        )),
        reward: RewardSpec::binary("click"),
        use_sample_weight: true,
    };
    Registry::with_versions([beta, logistic]).unwrap()
}

fn config() -> EngineConfig {
    EngineConfig {
        out_of_orderness_ms: OUT_OF_ORDERNESS_MS,
        reorder_capacity: 100_000,
        dedup: Some((DEDUP_WINDOW_MS, 1_000_000)),
        batch: BatchPolicy {
            max_samples: 8,
            max_positives: 2,
            max_age_ms: Some(300),
        },
    }
}

/// A pending observation of the oracle: (reward, weight, event time, context).
type Pending = (bool, f64, i64, Vec<f32>);

/// One partition's log: (offset, payload) in offset order.
type Log = Vec<Vec<Payload>>;

/// Bounded disorder, ~1% late, ~1% duplicates, ~1% poison, ~1% unknown
/// version, a few wrong dimensions and missing labels.
fn generate(seed: u64, partitions: usize, per_partition: usize) -> Log {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let mut logs: Log = vec![Vec::new(); partitions];
    let mut recent: Vec<Sample> = Vec::new();
    for (p, log) in logs.iter_mut().enumerate() {
        let mut clock = 1_000_000 + rng.random_range(0..200) as i64;
        let mut max_t = i64::MIN;
        for i in 0..per_partition {
            clock += rng.random_range(0..4);
            let roll: f64 = rng.random();
            let payload = if roll < 0.01 {
                Payload::Invalid {
                    reason: "undecodable",
                    detail: "poison".into(),
                }
            } else if roll < 0.02 && !recent.is_empty() {
                let mut dup = recent[rng.random_range(0..recent.len())].clone();
                dup.event_time_ms = dup.event_time_ms.max(clock - OUT_OF_ORDERNESS_MS);
                Payload::Sample(dup)
            } else {
                let mut t = clock - rng.random_range(0..OUT_OF_ORDERNESS_MS);
                if roll < 0.03 {
                    t = clock - OUT_OF_ORDERNESS_MS - 10 - rng.random_range(0..500);
                } else if roll < 0.04 && max_t > i64::MIN {
                    // Exactly on, or one below, the partition's watermark.
                    t = max_t - OUT_OF_ORDERNESS_MS - rng.random_range(0..2);
                }
                max_t = max_t.max(t);
                let version = match rng.random_range(0..100) {
                    0 => "unknown",
                    x if x < 50 => "beta",
                    _ => "logistic",
                };
                let dim = if version == "beta" {
                    0
                } else if rng.random_range(0..200) == 0 {
                    DIM + 1
                } else {
                    DIM
                };
                let mut labels =
                    crate::sample::labels([("click", f32::from(rng.random_bool(0.3)))]);
                if rng.random_range(0..300) == 0 {
                    labels.clear();
                }
                let sample = Sample {
                    doc_id: rng.random_range(0..60),
                    version: version.into(),
                    event_time_ms: t,
                    context: (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect(),
                    labels,
                    weight: [1.0, 0.5, 2.0][rng.random_range(0..3)],
                    sample_id: Some(format!("p{p}-{i}").into()),
                };
                recent.push(sample.clone());
                if recent.len() > 50 {
                    recent.remove(0);
                }
                Payload::Sample(sample)
            };
            log.push(payload);
        }
    }
    logs
}

/// Feeds the partitions to the engine in a random interleaving.
fn run_engine(logs: &Log, interleave_seed: u64) -> Engine {
    let engine = Engine::new(config(), registry(), 0..logs.len() as u32);
    run_engine_on(engine, logs, interleave_seed, |_| {})
}

/// [`run_engine`] on a given engine, calling `between` after every burst.
fn run_engine_on(
    mut engine: Engine,
    logs: &Log,
    interleave_seed: u64,
    mut between: impl FnMut(&mut Engine),
) -> Engine {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(interleave_seed);
    let mut cursor = vec![0_usize; logs.len()];
    loop {
        let open: Vec<usize> = (0..logs.len())
            .filter(|&p| cursor[p] < logs[p].len())
            .collect();
        let Some(&p) = open.get(rng.random_range(0..open.len().max(1))) else {
            break;
        };
        // Bursts of up to 64 records from one partition, like broker fetches.
        for _ in 0..rng.random_range(1..64) {
            if cursor[p] == logs[p].len() {
                break;
            }
            engine.ingest(p as u32, cursor[p] as u64, logs[p][cursor[p]].clone());
            cursor[p] += 1;
        }
        between(&mut engine);
    }
    engine.finish();
    engine
}

/// The documented rules applied to the whole log at once.
fn oracle(logs: &Log) -> (HashMap<ParamKey, KeyState>, BTreeMap<&'static str, u64>) {
    let registry = registry();
    let policy = config().batch;
    let mut dead: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut on_time = Vec::new();
    for (p, log) in logs.iter().enumerate() {
        let mut max_t: Option<i64> = None;
        for (o, payload) in log.iter().enumerate() {
            match payload {
                Payload::Invalid { reason, .. } => *dead.entry(reason).or_default() += 1,
                Payload::Sample(s) => {
                    if max_t.is_some_and(|m| s.event_time_ms < m - OUT_OF_ORDERNESS_MS) {
                        *dead.entry("late").or_default() += 1;
                    } else {
                        max_t = Some(max_t.map_or(s.event_time_ms, |m| m.max(s.event_time_ms)));
                        on_time.push((s.event_time_ms, p as u32, o as u64, s.clone()));
                    }
                }
            }
        }
    }
    on_time.sort_by_key(|(t, p, o, _)| (*t, *p, *o));

    let mut params: HashMap<ParamKey, KeyState> = HashMap::new();
    let mut pending: BTreeMap<ParamKey, Vec<Pending>> = BTreeMap::new();
    let mut last_accepted: HashMap<String, i64> = HashMap::new();
    let apply = |params: &mut HashMap<ParamKey, KeyState>, key: ParamKey, batch: Vec<Pending>| {
        let spec = &registry.get(key.version).unwrap().spec;
        let obs: Vec<Observation<'_>> = batch
            .iter()
            .map(|(y, w, t, x)| Observation {
                context: x,
                reward: *y,
                weight: *w,
                event_time_ms: *t,
            })
            .collect();
        params
            .entry(key)
            .or_insert_with(|| KeyState::prior(&spec.model))
            .update(&spec.model, &obs)
            .unwrap();
    };
    for (t, _, _, s) in on_time {
        let mut due: Vec<(i64, ParamKey)> = pending
            .iter()
            .filter(|(_, b)| t - b[0].2 >= policy.max_age_ms.unwrap())
            .map(|(k, b)| (b[0].2, *k))
            .collect();
        // The engine takes due batches in the release order of their
        // first samples; each key's state does not depend on the order.
        due.sort();
        for (_, key) in due {
            let batch = pending.remove(&key).unwrap();
            apply(&mut params, key, batch);
        }
        let Some(entry) = registry.live(&s.version) else {
            *dead.entry("unknown_version").or_default() += 1;
            continue;
        };
        let dim = entry.spec.model.kind.dim();
        let Some(click) = s.label("click") else {
            if s.context.len() != dim {
                *dead.entry("wrong_dimension").or_default() += 1;
            } else {
                *dead.entry("missing_label").or_default() += 1;
            }
            continue;
        };
        if s.context.len() != dim {
            *dead.entry("wrong_dimension").or_default() += 1;
            continue;
        }
        // Only samples that are applied hold their ids.
        let id = s.sample_id.as_deref().unwrap().to_owned();
        if last_accepted
            .get(&id)
            .is_some_and(|&prev| prev >= t - DEDUP_WINDOW_MS)
        {
            *dead.entry("duplicate").or_default() += 1;
            continue;
        }
        last_accepted.insert(id, t);
        let key = ParamKey {
            version: entry.id,
            doc_id: s.doc_id,
        };
        let batch = pending.entry(key).or_default();
        batch.push((click >= 0.5, f64::from(s.weight), t, s.context.clone()));
        let positives = batch.iter().filter(|b| b.0).count();
        if batch.len() >= policy.max_samples || positives >= policy.max_positives {
            let batch = pending.remove(&key).unwrap();
            apply(&mut params, key, batch);
        }
    }
    for (key, batch) in std::mem::take(&mut pending) {
        apply(&mut params, key, batch);
    }
    (params, dead)
}

#[test]
fn any_interleaving_reaches_the_oracle_state_bit_for_bit() {
    let logs = generate(7, 3, 4_000);
    let (expected, expected_dead) = oracle(&logs);
    for (name, count) in [
        ("late", 50),
        ("duplicate", 50),
        ("undecodable", 50),
        ("unknown_version", 50),
    ] {
        assert!(
            expected_dead.get(name).copied().unwrap_or(0) >= count / 2,
            "{name}: {expected_dead:?}"
        );
    }
    assert!(
        expected_dead.contains_key("wrong_dimension")
            && expected_dead.contains_key("missing_label")
    );
    for interleave_seed in [1, 2, 3] {
        let engine = run_engine(&logs, interleave_seed);
        assert_eq!(
            engine.counters().dead,
            expected_dead,
            "interleaving {interleave_seed}"
        );
        assert_eq!(engine.params().len(), expected.len());
        for (key, state) in engine.params() {
            assert_eq!(
                state.encode(),
                expected[key].encode(),
                "key {key:?}, interleaving {interleave_seed}"
            );
        }
        let total: u64 = logs.iter().map(|l| l.len() as u64).sum();
        let dead: u64 = engine.counters().dead.values().sum();
        assert_eq!(
            engine.counters().applied + dead,
            total,
            "every record is applied or dead-lettered"
        );
    }
}

#[test]
fn offsets_advance_past_every_record_and_dead_letters_say_where() {
    let logs = generate(8, 2, 500);
    let mut engine = run_engine(&logs, 9);
    assert_eq!(engine.next_offsets(), &BTreeMap::from([(0, 500), (1, 500)]));
    let letters = engine.take_dead_letters();
    assert_eq!(
        letters.len() as u64,
        engine.counters().dead.values().sum::<u64>()
    );
    let late = letters
        .iter()
        .find(|d| d.reason == "late")
        .expect("some late sample");
    match &logs[late.partition as usize][late.offset as usize] {
        Payload::Sample(s) => assert_eq!(Some(s.event_time_ms), late.event_time_ms),
        Payload::Invalid { .. } => panic!("a late letter points at a sample"),
    }
    assert!(engine.take_dead_letters().is_empty());
}

#[test]
fn an_idle_partition_lets_the_others_proceed_and_its_old_events_are_late() {
    let mut engine = Engine::new(
        EngineConfig {
            batch: BatchPolicy::default(),
            ..config()
        },
        registry(),
        [0, 1],
    );
    let sample = |t| {
        Payload::Sample(Sample {
            doc_id: 1,
            version: "beta".into(),
            event_time_ms: t,
            context: vec![],
            labels: crate::sample::labels([("click", 1.0)]),
            weight: 1.0,
            sample_id: None,
        })
    };
    engine.ingest(0, 0, sample(1_000));
    engine.ingest(0, 1, sample(2_000));
    assert!(
        engine.take_changed().is_empty(),
        "partition 1 holds the watermark back"
    );
    engine.set_idle(1, true);
    let changed = engine.take_changed();
    assert_eq!(changed.len(), 1);
    assert_eq!(
        changed[0].1.seq, 1,
        "only the sample below 2000 - 50 was released"
    );
    engine.ingest(1, 0, sample(1_500));
    assert_eq!(
        engine.counters().dead.get("late"),
        Some(&1),
        "behind what was already released"
    );
}

/// Like `run_engine`, but checkpoints into a store at random moments and
/// "crashes" at others: the engine is dropped, rebuilt from the store, and
/// each partition re-read from its checkpointed next offset.
fn run_engine_with_crashes(logs: &Log, seed: u64, crashes: usize) -> (Engine, usize) {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let total: usize = logs.iter().map(Vec::len).sum();
    let mut crash_at: Vec<usize> = (0..crashes).map(|_| rng.random_range(0..total)).collect();
    crash_at.sort_unstable();
    let mut store = MemoryStore::default();
    let mut engine = Engine::new(config(), registry(), 0..logs.len() as u32);
    let mut cursor = vec![0_usize; logs.len()];
    let (mut steps, mut restarts) = (0_usize, 0_usize);
    loop {
        let open: Vec<usize> = (0..logs.len())
            .filter(|&p| cursor[p] < logs[p].len())
            .collect();
        let Some(&p) = open.get(rng.random_range(0..open.len().max(1))) else {
            break;
        };
        engine.ingest(p as u32, cursor[p] as u64, logs[p][cursor[p]].clone());
        cursor[p] += 1;
        steps += 1;
        if rng.random_range(0..500) == 0 {
            store.apply(engine.checkpoint_delta());
        }
        if crash_at.first().is_some_and(|&c| c <= steps) {
            crash_at.remove(0);
            restarts += 1;
            engine = Engine::restore(config(), |t| store.entries(t))
                .unwrap()
                .unwrap_or_else(|| Engine::new(config(), registry(), 0..logs.len() as u32));
            for (p, c) in cursor.iter_mut().enumerate() {
                *c = engine.next_offsets().get(&(p as u32)).copied().unwrap_or(0) as usize;
            }
        }
    }
    engine.finish();
    (engine, restarts)
}

#[test]
fn crashes_and_restores_from_checkpoints_change_nothing() {
    let logs = generate(17, 3, 3_000);
    let (expected, expected_dead) = oracle(&logs);
    for seed in [1, 2] {
        let (engine, restarts) = run_engine_with_crashes(&logs, seed, 12);
        assert!(restarts >= 10, "{restarts}");
        assert_eq!(engine.counters().dead, expected_dead, "seed {seed}");
        assert_eq!(engine.params().len(), expected.len());
        for (key, state) in engine.params() {
            assert_eq!(
                state.encode(),
                expected[key].encode(),
                "key {key:?}, seed {seed}"
            );
        }
    }
}

#[test]
fn a_restored_store_equals_a_full_rewrite() {
    // Incremental deltas must leave the store exactly as a fresh full
    // checkpoint of the same engine would.
    let logs = generate(23, 2, 1_500);
    let mut engine = Engine::new(config(), registry(), [0, 1]);
    let mut incremental = MemoryStore::default();
    for (i, (a, b)) in logs[0].iter().zip(&logs[1]).enumerate() {
        engine.ingest(0, i as u64, a.clone());
        engine.ingest(1, i as u64, b.clone());
        if i % 97 == 0 {
            incremental.apply(engine.checkpoint_delta());
        }
    }
    incremental.apply(engine.checkpoint_delta());
    let mut restored = Engine::restore(config(), |t| incremental.entries(t))
        .unwrap()
        .unwrap();
    let mut fresh = MemoryStore::default();
    // Mark everything dirty by restoring into a new engine and writing all.
    fresh.apply(restored.full_checkpoint());
    for table in Table::ALL {
        if table == Table::Reorder {
            // The sample log is not canonical (blobs cut at different
            // points may still hold released samples): what counts is the
            // buffer each restores to.
            continue;
        }
        assert_eq!(
            incremental.entries(table),
            fresh.entries(table),
            "{table:?}"
        );
    }
    let buffer_of = |store: &MemoryStore| {
        Engine::restore(config(), |t| store.entries(t))
            .unwrap()
            .unwrap()
            .buffer
    };
    assert!(restored.buffered() > 0, "the test needs buffered samples");
    assert_eq!(buffer_of(&incremental), restored.buffer);
    assert_eq!(buffer_of(&fresh), restored.buffer);
}

/// A store of state format 1 (one reorder entry per buffered sample)
/// restores, and goes on equal to the engine that wrote it: its first
/// checkpoint rewrites the samples as sample-log blobs, deletes the old
/// entries and stamps the current format.
#[test]
fn a_format_1_store_restores_and_migrates_at_its_next_checkpoint() {
    an_old_store_restores_and_goes_on(1, |buffer, writes| {
        buffer.for_each(|key, sample| {
            writes.push(Write::Put(
                Table::Reorder,
                crate::codec::order_key(key),
                v1::JoinedSample::from(sample).encode_to_vec(),
            ));
        });
    });
}

/// A store of state format 2 (sample log blobs of `JoinedSample` records,
/// 12-byte keys) restores and goes on equal to the engine that wrote it;
/// its blobs go once released, as any blob.
#[test]
fn a_format_2_store_restores_and_its_blobs_go_once_released() {
    an_old_store_restores_and_goes_on(2, |buffer, writes| {
        let mut blobs: BTreeMap<u32, Vec<u8>> = BTreeMap::new();
        buffer.for_each(|key, sample| {
            let body = v1::JoinedSample::from(sample).encode_to_vec();
            let blob = blobs.entry(key.partition).or_default();
            blob.extend_from_slice(&key.offset.to_le_bytes());
            blob.extend_from_slice(&(body.len() as u32).to_le_bytes());
            blob.extend_from_slice(&body);
        });
        for (partition, blob) in blobs {
            let key = crate::codec::log_key(partition, u64::from(partition))[..12].to_vec();
            writes.push(Write::Put(Table::Reorder, key, blob));
        }
    });
}

/// Runs an engine, writes its checkpoint as state format `format` did
/// (`reorder` writes the buffered samples), restores that store, and
/// checks that the restored engine goes on equal to the live one, that
/// its checkpoints leave only current blobs once the old samples are
/// released, and that they stamp the current format.
fn an_old_store_restores_and_goes_on(
    format: u16,
    reorder: impl FnOnce(&ReorderBuffer, &mut Vec<Write>),
) {
    let logs = generate(29, 2, 1_500);
    let mut engine = Engine::new(config(), registry(), [0, 1]);
    let mut store = MemoryStore::default();
    let (head, tail) = (1_000, 1_500);
    for (i, (a, b)) in logs[0].iter().zip(&logs[1]).enumerate().take(head) {
        engine.ingest(0, i as u64, a.clone());
        engine.ingest(1, i as u64, b.clone());
    }
    store.apply(engine.checkpoint_delta());
    assert!(engine.buffered() > 0, "the test needs buffered samples");
    // The same checkpoint as the old format wrote it.
    let mut old = MemoryStore::default();
    let mut writes = Vec::new();
    for table in Table::ALL {
        for (k, v) in store.entries(table) {
            match table {
                Table::Reorder => {}
                Table::Meta if k == crate::meta::FORMAT => {
                    writes.push(Write::Put(table, k, format.to_le_bytes().to_vec()));
                }
                _ => writes.push(Write::Put(table, k, v)),
            }
        }
    }
    reorder(&engine.buffer, &mut writes);
    old.apply(writes);
    let mut restored = Engine::restore(config(), |t| old.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(restored.buffer, engine.buffer);
    for (i, (a, b)) in logs[0]
        .iter()
        .zip(&logs[1])
        .enumerate()
        .take(tail)
        .skip(head)
    {
        for e in [&mut engine, &mut restored] {
            e.ingest(0, i as u64, a.clone());
            e.ingest(1, i as u64, b.clone());
        }
    }
    old.apply(restored.checkpoint_delta());
    assert!(
        old.entries(Table::Reorder)
            .iter()
            .all(|(k, _)| k.len() == 13),
        "only current blobs left"
    );
    assert_eq!(
        old.entries(Table::Meta)
            .into_iter()
            .find(|(k, _)| k == crate::meta::FORMAT)
            .map(|(_, v)| v),
        Some(crate::meta::format_bytes())
    );
    let again = Engine::restore(config(), |t| old.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(again.buffer, engine.buffer);
    let states = |e: &Engine| {
        let mut all: Vec<(ParamKey, Vec<u8>)> = e.params().map(|(k, s)| (*k, s.encode())).collect();
        all.sort_unstable_by_key(|(k, _)| *k);
        all
    };
    assert!(states(&again) == states(&engine));
}

/// After every checkpoint, an engine restored from the store holds exactly
/// the live engine's state, table by table (a missed dirty mark shows here
/// first, long before it skews a final result). The deltas are taken as
/// the checkpointer takes them: into the list the previous write emptied,
/// parameter puts first.
#[test]
fn every_checkpoint_restores_the_live_state_exactly() {
    let logs = generate(17, 3, 3_000);
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(1);
    let mut store = MemoryStore::default();
    let mut writes = Vec::new();
    let mut engine = Engine::new(config(), registry(), 0..3);
    let mut cursor = [0_usize; 3];
    let mut steps = 0;
    loop {
        let open: Vec<usize> = (0..3).filter(|&p| cursor[p] < logs[p].len()).collect();
        let Some(&p) = open.get(rng.random_range(0..open.len().max(1))) else {
            break;
        };
        engine.ingest(p as u32, cursor[p] as u64, logs[p][cursor[p]].clone());
        cursor[p] += 1;
        steps += 1;
        if steps % 211 == 0 {
            let delta = engine.checkpoint_delta_into(&mut writes);
            let params = delta.params;
            let puts = |w: &[Write]| {
                w.iter()
                    .filter(|w| matches!(w, Write::PutParams(..)))
                    .count()
            };
            assert_eq!(puts(&writes[..params]), params, "puts first at {steps}");
            assert_eq!(puts(&writes), params, "no put after them at {steps}");
            let deletes = &writes[params..params + delta.deletes];
            assert!(
                deletes.iter().all(|w| matches!(w, Write::DeletePending(_))),
                "the pending batches' deletes next at {steps}"
            );
            let pending_end = params + delta.deletes + delta.pending;
            let pending = &writes[params + delta.deletes..pending_end];
            assert!(
                pending.iter().all(|w| matches!(w, Write::PutPending(..))),
                "the pending batches' puts next at {steps}"
            );
            // The writer's sort orders the three runs by key and keeps
            // them in order: the store gets the sorted list.
            let mut sorted = writes.clone();
            sort_puts(&mut sorted, delta);
            let keys: Vec<Vec<u8>> = sorted[..pending_end]
                .iter()
                .cloned()
                .map(|w| w.into_bytes().1)
                .collect();
            assert!(
                keys[..params].is_sorted()
                    && keys[params..params + delta.deletes].is_sorted()
                    && keys[params + delta.deletes..].is_sorted(),
                "sorted puts at {steps}"
            );
            // Cleared, not taken: the next delta fills the same capacity.
            store.apply(sorted);
            writes.clear();
            let restored = Engine::restore(config(), |t| store.entries(t))
                .unwrap()
                .unwrap();
            assert_eq!(restored.buffer, engine.buffer, "buffer at {steps}");
            let mut a: Vec<_> = engine
                .batcher
                .iter()
                .map(|(k, b)| (*k, b.observations.clone()))
                .collect();
            let mut b: Vec<_> = restored
                .batcher
                .iter()
                .map(|(k, b)| (*k, b.observations.clone()))
                .collect();
            a.sort_by_key(|x| x.0);
            b.sort_by_key(|x| x.0);
            assert_eq!(a.len(), b.len(), "pending at {steps}");
            assert!(a == b, "pending at {steps}");
            let states = |e: &Engine| {
                let mut all: Vec<(ParamKey, KeyState)> =
                    e.params().map(|(k, s)| (*k, s.clone())).collect();
                all.sort_unstable_by_key(|(k, _)| *k);
                all
            };
            assert!(states(&restored) == states(&engine), "params at {steps}");
            assert_eq!(
                restored.dedup,
                engine.dedup.as_ref().map(|d| {
                    let mut d = d.clone();
                    d.take_changes(|_| {});
                    d
                }),
                "dedup at {steps}"
            );
            assert_eq!(restored.released_below_ms, engine.released_below_ms);
            assert_eq!(restored.watermarks, engine.watermarks);
        }
    }
}

// ---- The control path: admin commands at event times ----

fn wire(id: &str, at_ms: i64, command: posterior_proto::v1::control_command::Command) -> Scheduled {
    Scheduled::try_from(posterior_proto::v1::ControlCommand {
        command_id: id.into(),
        effective_event_time_ms: at_ms,
        issued_by: "test".into(),
        command: Some(command),
    })
    .unwrap()
}

fn fork(id: &str, at_ms: i64, from: &str, to: &str) -> Scheduled {
    use posterior_proto::v1::{ForkVersionRequest, control_command::Command};
    wire(
        id,
        at_ms,
        Command::ForkVersion(ForkVersionRequest {
            from: from.into(),
            to: to.into(),
            overrides: None,
        }),
    )
}

fn retire(id: &str, at_ms: i64, name: &str) -> Scheduled {
    use posterior_proto::v1::{RetireVersionRequest, control_command::Command};
    wire(
        id,
        at_ms,
        Command::RetireVersion(RetireVersionRequest { name: name.into() }),
    )
}

fn create(id: &str, at_ms: i64, name: &str) -> Scheduled {
    use posterior_proto::v1::{CreateVersionRequest, control_command::Command};
    // The log's `unknown` samples carry a logistic context.
    let mut spec = registry().live("logistic").unwrap().spec.clone();
    spec.name = name.into();
    wire(
        id,
        at_ms,
        Command::CreateVersion(CreateVersionRequest {
            spec: Some((&spec).into()),
        }),
    )
}

fn one_at_a_time() -> EngineConfig {
    EngineConfig {
        batch: BatchPolicy::default(),
        ..config()
    }
}

fn click(doc_id: u64, version: &str, t: i64) -> Payload {
    let dim = if version == "gamma" { DIM } else { 0 };
    Payload::Sample(Sample {
        doc_id,
        version: version.into(),
        event_time_ms: t,
        context: vec![0.5; dim],
        labels: crate::sample::labels([("click", 1.0)]),
        weight: 1.0,
        sample_id: None,
    })
}

#[test]
fn a_command_splits_the_input_at_its_event_time() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0, 1]);
    engine.schedule(fork("f", 25, "beta", "beta-b"));
    engine.schedule(retire("r", 35, "beta"));
    engine.schedule(create("c", 35, "gamma"));
    // Partition 1 holds the watermark back, so everything waits in the
    // buffer and the commands meet the samples in release order.
    for (offset, t) in [10, 20, 25, 30, 40].into_iter().enumerate() {
        engine.ingest(0, offset as u64, click(1, "beta", t));
    }
    engine.ingest(1, 0, click(2, "gamma", 36));
    engine.ingest(1, 1, click(2, "gamma", 34));
    engine.finish();

    let state = |version: &str, doc_id| {
        let id = engine
            .registry()
            .entries()
            .iter()
            .find(|e| e.spec.name == version)
            .unwrap()
            .id;
        engine
            .param(&ParamKey {
                version: id,
                doc_id,
            })
            .map(|s| s.sample_count)
    };
    // The fork took doc 1's state after t = 10 and 20, before 25.
    assert_eq!(state("beta-b", 1), Some(2.0));
    // beta took 10, 20, 25, 30; 40 came after it was retired.
    assert_eq!(state("beta", 1), Some(4.0));
    // gamma exists from 35: its sample at 36 counts, the one at 34 not.
    assert_eq!(state("gamma", 2), Some(1.0));
    assert_eq!(engine.counters().dead.get("unknown_version"), Some(&2));
    let outcomes = engine.take_control_outcomes();
    let ids: Vec<&str> = outcomes.iter().map(|o| o.id.as_str()).collect();
    assert_eq!(ids, ["f", "r", "c"], "in (time, arrival) order");
    assert!(
        outcomes
            .iter()
            .all(|o| o.result.is_ok() && o.applied_at_ms == o.at_ms)
    );
}

#[test]
fn refused_late_and_repeated_commands_are_reported_not_fatal() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.ingest(0, 0, click(1, "beta", 1_000));
    engine.ingest(0, 1, click(1, "beta", 1_200));
    // Released below 1 200 - 50: a command at 100 is late.
    assert_eq!(
        engine.schedule(fork("late", 100, "beta", "b2")),
        ScheduleResult::AppliedLate
    );
    assert_eq!(
        engine.schedule(fork("late", 100, "beta", "b2")),
        ScheduleResult::Duplicate
    );
    assert_eq!(
        engine.schedule(fork("x", 5_000, "nope", "b3")),
        ScheduleResult::Scheduled
    );
    assert_eq!(
        engine.schedule(fork("x", 5_000, "nope", "b3")),
        ScheduleResult::Duplicate
    );
    assert_eq!(
        engine.schedule(retire("y", 5_000, "beta")),
        ScheduleResult::Scheduled
    );
    assert_eq!(
        engine.schedule(retire("z", 5_001, "beta")),
        ScheduleResult::Scheduled
    );
    engine.finish();
    let outcomes = engine.take_control_outcomes();
    assert_eq!(outcomes.len(), 4);
    assert_eq!((outcomes[0].at_ms, outcomes[0].applied_at_ms), (100, 1_150));
    assert!(outcomes[0].result.is_ok());
    assert!(
        outcomes[1]
            .result
            .as_ref()
            .unwrap_err()
            .contains("\"nope\" not found")
    );
    assert!(outcomes[2].result.is_ok());
    // Retiring twice is allowed and changes nothing.
    assert!(outcomes[3].result.is_ok());
    assert_eq!(engine.scheduled_commands().count(), 0);
}

/// Every interleaving of the partitions, with crashes and restores from
/// checkpoints, applies the commands at the same points: the same state
/// bit for bit, and `unknown` samples count only after `unknown` exists.
#[test]
fn commands_survive_crashes_and_give_one_result_for_every_interleaving() {
    let logs = generate(31, 3, 3_000);
    let commands = || {
        [
            create("c1", 1_001_500, "unknown"),
            fork("c2", 1_002_000, "logistic", "logistic-b"),
            retire("c3", 1_003_000, "beta"),
        ]
    };
    let run = |seed: u64, crashes: bool| {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let mut store = MemoryStore::default();
        let mut engine = Engine::new(config(), registry(), 0..3);
        let mut cursor = [0_usize; 3];
        let mut pending: Vec<Scheduled> = commands().into();
        let mut restarts = 0;
        loop {
            // Commands arrive at random moments, always before the
            // released watermark reaches them.
            if !pending.is_empty() && rng.random_range(0..300) == 0 {
                let c = pending.remove(0);
                assert_ne!(engine.schedule(c), ScheduleResult::AppliedLate);
            }
            let open: Vec<usize> = (0..3).filter(|&p| cursor[p] < logs[p].len()).collect();
            let Some(&p) = open.get(rng.random_range(0..open.len().max(1))) else {
                break;
            };
            if !pending.is_empty() && engine.instance_watermark() >= 1_001_000 {
                for c in pending.drain(..) {
                    engine.schedule(c);
                }
            }
            engine.ingest(p as u32, cursor[p] as u64, logs[p][cursor[p]].clone());
            cursor[p] += 1;
            if rng.random_range(0..400) == 0 {
                store.apply(engine.checkpoint_delta());
            }
            if crashes && rng.random_range(0..700) == 0 {
                restarts += 1;
                engine = Engine::restore(config(), |t| store.entries(t))
                    .unwrap()
                    .unwrap_or_else(|| Engine::new(config(), registry(), 0..3));
                for (p, c) in cursor.iter_mut().enumerate() {
                    *c = engine.next_offsets().get(&(p as u32)).copied().unwrap_or(0) as usize;
                }
                // The source of commands replays them too (a topic read
                // from the checkpointed offset): duplicates are ignored.
                pending = commands().into();
            }
        }
        for c in pending {
            engine.schedule(c);
        }
        engine.finish();
        (engine, restarts)
    };
    let (reference, _) = run(1, false);
    let names: Vec<&str> = reference
        .registry()
        .entries()
        .iter()
        .map(|e| e.spec.name.as_str())
        .collect();
    assert_eq!(names, ["beta", "logistic", "unknown", "logistic-b"]);
    let unknown = reference.registry().live("unknown").unwrap().id;
    assert!(reference.params().any(|(k, _)| k.version == unknown));
    let forked = reference.registry().live("logistic-b").unwrap().id;
    let keys = |v| reference.params().filter(|(k, _)| k.version == v).count();
    assert!(keys(forked) > 0, "the fork starts from logistic's keys");
    assert!(keys(forked) <= keys(reference.registry().live("logistic").unwrap().id));
    assert!(
        reference.counters().dead["unknown_version"] > 0,
        "before c1 and beta after c3"
    );
    let encoded = |e: &Engine| {
        let mut all: Vec<_> = e.params().map(|(k, s)| (*k, s.encode())).collect();
        all.sort_unstable_by_key(|(k, _)| *k);
        all
    };
    for seed in [2, 3, 4] {
        let (engine, restarts) = run(seed, true);
        assert!(restarts >= 5, "seed {seed}: {restarts} restarts");
        assert_eq!(engine.registry(), reference.registry(), "seed {seed}");
        assert_eq!(
            engine.counters().dead,
            reference.counters().dead,
            "seed {seed}"
        );
        assert!(encoded(&engine) == encoded(&reference), "seed {seed}");
    }
}

#[test]
fn a_state_written_before_the_control_path_restores_with_no_commands() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.schedule(retire("r", 5_000, "beta"));
    engine.ingest(0, 0, click(1, "beta", 1_000));
    let mut store = MemoryStore::default();
    store.apply(engine.checkpoint_delta());
    let restored = Engine::restore(one_at_a_time(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(
        restored.scheduled_commands().count(),
        1,
        "the backlog is checkpointed"
    );
    store.apply(vec![Write::Delete(
        Table::Meta,
        crate::meta::CONTROL.to_vec(),
    )]);
    let old = Engine::restore(one_at_a_time(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(old.scheduled_commands().count(), 0);
    assert_eq!(old.control_offset(), None);
}

#[test]
fn served_parameters_seed_only_an_empty_version_of_the_same_model() {
    use crate::fallback::SeedError;
    let mut source = Engine::new(one_at_a_time(), registry(), [0]);
    for (offset, t) in [10, 20, 30].into_iter().enumerate() {
        source.ingest(0, offset as u64, click(offset as u64, "beta", t));
    }
    source.finish();
    let served: Vec<(u64, KeyState)> = source
        .params()
        .map(|(k, s)| (k.doc_id, s.clone()))
        .collect();
    assert_eq!(served.len(), 3);

    let mut fresh = Engine::new(one_at_a_time(), registry(), [0]);
    let err = fresh.seed_version("logistic", served.clone()).unwrap_err();
    assert!(matches!(err, SeedError::WrongModel { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("served beta, the version runs logistic-diagonal/4"),
        "{err}"
    );
    assert_eq!(fresh.param_count(), 0, "a refused seed changes nothing");
    assert_eq!(fresh.seed_version("beta", served.clone()), Ok(3));
    let mut seeded: Vec<_> = fresh
        .take_changed()
        .into_iter()
        .map(|(k, s)| (k, s.encode()))
        .collect();
    let mut expected: Vec<_> = source.params().map(|(k, s)| (*k, s.encode())).collect();
    seeded.sort_unstable_by_key(|(k, _)| *k);
    expected.sort_unstable_by_key(|(k, _)| *k);
    assert!(
        seeded == expected,
        "seeded keys are published and equal to the served ones"
    );
    assert_eq!(
        fresh.seed_version("beta", served.clone()),
        Err(SeedError::HasState("beta".into()))
    );
    assert_eq!(
        fresh.seed_version("nope", served),
        Err(SeedError::UnknownVersion("nope".into()))
    );
}

#[test]
fn published_and_checkpointed_states_never_change_after_they_are_taken() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.ingest(0, 0, click(1, "beta", 10));
    engine.ingest(0, 1, click(2, "beta", 20));
    // Releases the two above (the watermark is 200 - 50).
    engine.ingest(0, 2, click(3, "beta", 200));
    let published = engine.take_changed();
    let delta = engine.checkpoint_delta();
    let stored: Vec<(ParamKey, SharedState)> = delta
        .iter()
        .filter_map(|w| match w {
            Write::PutParams(key, state) => Some((*key, state.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 2);
    assert_eq!(stored.len(), 2, "both keys are in the delta");
    let before: Vec<Vec<u8>> = published.iter().map(|(_, s)| s.encode()).collect();

    // More updates of doc 1: the engine copies, the taken states stay.
    engine.ingest(0, 3, click(1, "beta", 300));
    engine.ingest(0, 4, click(1, "beta", 400));
    engine.ingest(0, 5, click(4, "beta", 1_000));
    let after: Vec<Vec<u8>> = published.iter().map(|(_, s)| s.encode()).collect();
    assert_eq!(before, after, "a published state changed after the publish");
    for (key, state) in &stored {
        assert_eq!(state.seq, 1, "{key:?}: a checkpointed state changed");
    }
    let doc1 = published[0].0;
    assert_eq!(engine.param(&doc1).map(|s| s.seq), Some(3));
    // Each key is published once per publish, however often it changed,
    // in the order the keys first changed (doc 3 at 200, doc 1 at 300).
    let again: Vec<(u64, u64)> = engine
        .take_changed()
        .iter()
        .map(|(k, s)| (k.doc_id, s.seq))
        .collect();
    assert_eq!(again, [(3, 1), (1, 3)]);
    assert!(engine.take_changed().is_empty());
}

#[test]
fn a_key_whose_first_batch_is_refused_does_not_enter_the_table() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    let heavy = |doc_id, t| {
        Payload::Sample(Sample {
            doc_id,
            version: "beta".into(),
            event_time_ms: t,
            context: vec![],
            labels: crate::sample::labels([("click", 1.0)]),
            weight: 2.0 * crate::posterior::MAX_WEIGHT as f32,
            sample_id: None,
        })
    };
    engine.ingest(0, 0, heavy(5, 10));
    engine.ingest(0, 1, click(6, "beta", 20));
    engine.finish();
    assert_eq!(engine.counters().dead.get("rejected_update"), Some(&1));
    assert_eq!(engine.param_count(), 1, "only doc 6 has a state");
    let changed: Vec<u64> = engine
        .take_changed()
        .iter()
        .map(|(k, _)| k.doc_id)
        .collect();
    assert_eq!(changed, [6]);
    // A restore sees the same table.
    let mut store = MemoryStore::default();
    store.apply(engine.full_checkpoint());
    let restored = Engine::restore(one_at_a_time(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(restored.param_count(), 1);
}

// ---- Barrier commands: savepoints and rollbacks at event times ----

fn savepoint_at(id: &str, at_ms: i64) -> Scheduled {
    use posterior_proto::v1::{TriggerSavepointRequest, control_command::Command};
    wire(
        id,
        at_ms,
        Command::TriggerSavepoint(TriggerSavepointRequest {
            label: "before the launch".into(),
        }),
    )
}

fn rollback_at(id: &str, at_ms: i64, version: &str, savepoint_id: &str) -> Scheduled {
    use posterior_proto::v1::{RollbackVersionRequest, control_command::Command};
    wire(
        id,
        at_ms,
        Command::RollbackVersion(RollbackVersionRequest {
            version: version.into(),
            savepoint_id: savepoint_id.into(),
        }),
    )
}

fn count_of(engine: &Engine, version: &str, doc_id: u64) -> Option<f64> {
    let id = engine.registry().live(version).unwrap().id;
    engine
        .param(&ParamKey {
            version: id,
            doc_id,
        })
        .map(|s| s.sample_count)
}

#[test]
fn a_savepoint_command_holds_the_release_at_its_time_across_a_restore() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.schedule(create("c", 25, "gamma"));
    engine.schedule(savepoint_at("sp1", 25));
    engine.schedule(fork("f", 25, "beta", "beta-b"));
    for (offset, t) in [10, 20, 25, 30, 40, 500].into_iter().enumerate() {
        engine.ingest(0, offset as u64, click(1, "beta", t));
    }
    // The watermark (450) is past 25, but the release stopped there: the
    // samples at 10 and 20 are applied, the command before the savepoint
    // at the same time too, the one after it not.
    let held = engine.barrier().expect("held at the savepoint");
    assert_eq!((held.id.as_str(), held.at_ms), ("sp1", 25));
    assert_eq!(count_of(&engine, "beta", 1), Some(2.0));
    assert!(engine.registry().live("gamma").is_some());
    assert!(engine.registry().live("beta-b").is_none());
    // Records keep arriving and wait; late ones are still judged.
    engine.ingest(0, 6, click(2, "beta", 600));
    engine.ingest(0, 7, click(2, "beta", 24));
    assert_eq!(count_of(&engine, "beta", 2), None);
    assert_eq!(engine.counters().dead.get("late"), Some(&1));
    assert!(!engine.finish(), "finish stops at the barrier too");

    // A checkpoint taken while held restores to the same held point.
    let mut store = MemoryStore::default();
    store.apply(engine.full_checkpoint());
    let mut restored = Engine::restore(one_at_a_time(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(restored.barrier().map(|c| c.id.as_str()), Some("sp1"));
    assert_eq!(count_of(&restored, "beta", 1), Some(2.0));

    for engine in [&mut engine, &mut restored] {
        engine.complete_barrier(Ok("written".into()));
        assert!(engine.barrier().is_none());
        // Released up to the watermark again (550): 25, 30, 40, 500.
        assert_eq!(count_of(engine, "beta", 1), Some(6.0));
        assert_eq!(count_of(engine, "beta-b", 1), Some(2.0), "forked at 25");
        let outcomes = engine.take_control_outcomes();
        let sp = outcomes.iter().find(|o| o.id == "sp1").unwrap();
        assert_eq!(
            (sp.applied_at_ms, sp.result.clone()),
            (25, Ok("written".into()))
        );
        assert!(engine.finish());
        assert_eq!(count_of(engine, "beta", 2), Some(1.0));
        // Applied once: sending it again changes nothing.
        assert_eq!(
            engine.schedule(savepoint_at("sp1", 25)),
            ScheduleResult::Duplicate
        );
    }
    assert_eq!(
        engine
            .params()
            .map(|(k, s)| (*k, s.encode()))
            .collect::<BTreeMap<_, _>>(),
        restored
            .params()
            .map(|(k, s)| (*k, s.encode()))
            .collect::<BTreeMap<_, _>>(),
    );
}

#[test]
fn a_late_savepoint_command_is_held_at_the_current_point() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.ingest(0, 0, click(1, "beta", 10));
    engine.ingest(0, 1, click(1, "beta", 1_000));
    assert_eq!(
        engine.schedule(savepoint_at("late", 5)),
        ScheduleResult::AppliedLate
    );
    assert_eq!(engine.barrier().map(|c| c.at_ms), Some(5));
    engine.complete_barrier(Err("disk full".into()));
    let outcome = &engine.take_control_outcomes()[0];
    assert_eq!(outcome.applied_at_ms, 950, "at the released watermark");
    assert_eq!(outcome.result, Err("disk full".into()));
}

/// A late barrier held behind another one goes back behind it after a
/// restore, at the same point, not ahead of it at its own older time.
#[test]
fn a_late_barrier_held_behind_another_keeps_its_place_across_a_restore() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.schedule(savepoint_at("first", 500));
    for (offset, t) in [10, 600, 1_000].into_iter().enumerate() {
        engine.ingest(0, offset as u64, click(1, "beta", t));
    }
    assert_eq!(engine.barrier().map(|c| c.id.as_str()), Some("first"));
    assert_eq!(
        engine.schedule(savepoint_at("late", 5)),
        ScheduleResult::AppliedLate
    );
    let mut store = MemoryStore::default();
    store.apply(engine.full_checkpoint());
    let mut restored = Engine::restore(one_at_a_time(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    let mut runs = Vec::new();
    for engine in [&mut engine, &mut restored] {
        let mut order = Vec::new();
        while let Some(held) = engine.barrier().map(|c| c.id.clone()) {
            engine.complete_barrier(Ok(format!("{held} written")));
            order.push(held);
        }
        let outcomes: Vec<_> = engine
            .take_control_outcomes()
            .into_iter()
            .map(|o| (o.id, o.applied_at_ms))
            .collect();
        runs.push((order, outcomes, count_of(engine, "beta", 1)));
    }
    assert_eq!(
        runs[0].0,
        vec!["first".to_owned(), "late".to_owned()],
        "live: the late one waits behind"
    );
    assert_eq!(
        runs[0].1,
        vec![("first".to_owned(), 500), ("late".to_owned(), 500)]
    );
    assert_eq!(runs[1], runs[0], "restored as live");
}

#[test]
fn a_rollback_restores_one_version_with_newer_sequence_numbers() {
    let config = EngineConfig {
        batch: BatchPolicy {
            max_samples: 3,
            max_positives: 0,
            max_age_ms: None,
        },
        ..one_at_a_time()
    };
    let mut engine = Engine::new(config, registry(), [0]);
    let mut offset = 0_u64;
    let mut feed = |engine: &mut Engine, doc_id, version: &str, t| {
        engine.ingest(0, offset, click(doc_id, version, t));
        offset += 1;
    };
    for t in [10, 20, 30] {
        feed(&mut engine, 1, "beta", t);
        feed(&mut engine, 4, "logistic", t);
    }
    feed(&mut engine, 9, "beta", 100);
    // Doc 1 has one batch of 3 applied; "the savepoint" holds that.
    let beta = engine.registry().live("beta").unwrap().id;
    let doc = |doc_id| ParamKey {
        version: beta,
        doc_id,
    };
    let saved = engine.param(&doc(1)).unwrap().clone();
    assert_eq!(saved.sample_count, 3.0);
    // Then doc 1 learns more, doc 2 appears, doc 3 gets a pending batch.
    for t in [110, 120, 130, 140, 150, 160] {
        feed(&mut engine, 1, "beta", t);
    }
    for t in [170, 180, 190] {
        feed(&mut engine, 2, "beta", t);
    }
    feed(&mut engine, 3, "beta", 195);
    engine.schedule(rollback_at("rb", 200, "beta", "sp-x"));
    let logistic_before: Vec<_> = engine
        .params()
        .filter(|(k, _)| k.version != beta)
        .map(|(k, s)| (*k, s.encode()))
        .collect();
    feed(&mut engine, 1, "beta", 210);
    feed(&mut engine, 1, "beta", 1_000);
    let held = engine.barrier().expect("held at the rollback").clone();
    assert_eq!(held.id, "rb");
    let current_seq = engine.param(&doc(1)).unwrap().seq;
    assert_eq!(current_seq, 3);
    engine.take_changed();

    // A savepoint of another model is refused, changing nothing.
    let wrong = KeyState::prior(&registry().live("logistic").unwrap().spec.model);
    let err = engine
        .rollback_version("beta", vec![(1, wrong)])
        .unwrap_err();
    assert!(err.contains("logistic-diagonal"), "{err}");
    assert!(engine.rollback_version("nope", vec![]).is_err());
    assert!(engine.take_changed().is_empty());

    let mut doc5 = saved.clone();
    doc5.seq = 7;
    let message = engine
        .rollback_version("beta", vec![(1, saved.clone()), (5, doc5.clone())])
        .unwrap();
    assert!(
        message.contains("2 pending micro-batches dropped"),
        "docs 3 and 9: {message}"
    );
    let got = engine.param(&doc(1)).unwrap();
    assert_eq!(got.posterior, saved.posterior);
    assert_eq!(got.seq, current_seq + 1, "newer than what predictors saw");
    // Doc 2 was not in the savepoint: back to the prior, seq still rising.
    let doc2 = engine.param(&doc(2)).unwrap();
    assert_eq!(doc2.sample_count, 0.0);
    assert_eq!(doc2.seq, 2);
    assert_eq!(engine.param(&doc(5)).unwrap().seq, 8);
    assert!(engine.param(&doc(3)).is_none(), "its pending batch is gone");
    assert!(engine.param(&doc(9)).is_none(), "its pending batch is gone");
    let changed: Vec<u64> = engine
        .take_changed()
        .iter()
        .filter(|(k, _)| k.version == beta)
        .map(|(k, _)| k.doc_id)
        .collect();
    assert_eq!(changed, [1, 2, 5]);
    let logistic_after: Vec<_> = engine
        .params()
        .filter(|(k, _)| k.version != beta)
        .map(|(k, s)| (*k, s.encode()))
        .collect();
    assert_eq!(logistic_before, logistic_after, "other versions untouched");

    engine.complete_barrier(Ok(message));
    assert!(engine.finish());
    // The samples at 210 and 1 000 came after the rollback and count on
    // top of it.
    assert_eq!(
        engine.param(&doc(1)).unwrap().sample_count,
        saved.sample_count + 2.0
    );
}

/// States taken ahead of a checkpoint (`store_ahead`) leave the store as
/// the plain deltas of the same input do, table for table, although keys
/// taken ahead change again before their checkpoint (their later put must
/// win over the one taken ahead).
#[test]
fn keys_stored_ahead_leave_the_store_as_plain_deltas_do() {
    let logs = generate(31, 2, 1_500);
    let mut plain = Engine::new(config(), registry(), [0, 1]);
    let mut ahead = Engine::new(config(), registry(), [0, 1]);
    let (mut plain_store, mut ahead_store) = (MemoryStore::default(), MemoryStore::default());
    let (mut taken, mut superseded) = (0, 0);
    let relisted = |engine: &Engine| {
        let ahead: std::collections::HashSet<ParamKey> = engine
            .dirty
            .ahead
            .iter()
            .flatten()
            .filter_map(|w| match w {
                Write::PutParams(key, _) => Some(*key),
                _ => None,
            })
            .collect();
        engine
            .dirty
            .params
            .iter()
            .filter(|k| ahead.contains(k))
            .count()
    };
    let same = |a: &MemoryStore, b: &MemoryStore, at: usize| {
        for table in Table::ALL {
            let (x, y) = (a.entries(table), b.entries(table));
            let first = x.iter().zip(&y).position(|(p, q)| p != q);
            assert!(
                x.len() == y.len() && first.is_none(),
                "{table:?} after record {at}: {} and {} entries, first difference at {first:?}",
                x.len(),
                y.len()
            );
        }
    };
    for (i, (a, b)) in logs[0].iter().zip(&logs[1]).enumerate() {
        for engine in [&mut plain, &mut ahead] {
            engine.ingest(0, i as u64, a.clone());
            engine.ingest(1, i as u64, b.clone());
        }
        // Keys taken ahead and listed again since: put twice.
        superseded += relisted(&ahead);
        if i % 2 == 0 {
            taken += ahead.store_ahead(4);
        }
        if i % 97 == 96 {
            plain_store.apply(plain.checkpoint_delta());
            ahead_store.apply(ahead.checkpoint_delta());
            same(&plain_store, &ahead_store, i);
            assert!(ahead.dirty.ahead.is_empty(), "the delta takes them all");
        }
    }
    plain_store.apply(plain.checkpoint_delta());
    ahead_store.apply(ahead.checkpoint_delta());
    same(&plain_store, &ahead_store, usize::MAX);
    assert!(taken > 100, "keys were taken ahead: {taken}");
    assert!(
        superseded > 10,
        "keys taken ahead changed again: {superseded}"
    );
}

/// A parameter put listed twice in a delta keeps the later state, and the
/// puts are sorted by key.
#[test]
fn sort_puts_keeps_the_later_put_of_a_key() {
    let key = |doc_id| ParamKey {
        version: VersionId(0),
        doc_id,
    };
    let state = |alpha: f64| {
        let prior = BetaPrior::new(alpha, 1.0).unwrap();
        SharedState::new(KeyState::prior(&ModelSpec::new(ModelKind::Beta(prior))))
    };
    let mut writes = vec![
        Write::PutParams(key(5), state(1.0)),
        Write::PutParams(key(2), state(2.0)),
        Write::PutParams(key(5), state(3.0)),
        Write::PutParams(key(9), state(4.0)),
        Write::PutParams(key(2), state(5.0)),
        Write::PutParams(key(5), state(6.0)),
        Write::Delete(Table::Pending, vec![1]),
    ];
    sort_puts(
        &mut writes,
        DeltaPuts {
            params: 6,
            deletes: 0,
            pending: 0,
        },
    );
    let got: Vec<(u64, Option<KeyState>)> = writes
        .iter()
        .map(|w| match w {
            Write::PutParams(k, s) => (k.doc_id, Some((**s).clone())),
            _ => (u64::MAX, None),
        })
        .collect();
    let want = vec![
        (2, Some((*state(5.0)).clone())),
        (5, Some((*state(6.0)).clone())),
        (9, Some((*state(4.0)).clone())),
        (u64::MAX, None),
    ];
    assert_eq!(got, want);
}

#[test]
fn a_pending_batch_of_an_unregistered_version_is_refused_at_restore() {
    // A click waits in its batch (config(): up to 2 positives), released by
    // a later sample past the out-of-orderness.
    let mut engine = Engine::new(config(), registry(), [0]);
    engine.ingest(0, 0, click(1, "beta", 1_000));
    engine.ingest(0, 1, click(2, "beta", 1_000 + OUT_OF_ORDERNESS_MS + 100));
    let mut store = MemoryStore::default();
    store.apply(engine.checkpoint_delta());
    let pending = store.entries(Table::Pending);
    let (key, value) = pending.first().expect("the first click waits in its batch");
    assert!(Engine::restore(config(), |t| store.entries(t)).is_ok());
    // The same batch under a version id the registry never gave.
    let stray = ParamKey {
        version: VersionId(99),
        doc_id: crate::codec::param_key_from(Table::Pending, key)
            .unwrap()
            .doc_id,
    };
    store.apply(vec![Write::Put(
        Table::Pending,
        crate::codec::param_key(stray),
        value.clone(),
    )]);
    let error = Engine::restore(config(), |t| store.entries(t)).unwrap_err();
    assert!(
        error.to_string().contains("unregistered version id"),
        "{error}"
    );
}

/// A bounded run's end leaves the state resumable: a later run on it (more
/// input, after a restore) applies its new samples instead of finding all
/// of them late, and still refuses what is older than what was applied.
#[test]
fn a_finished_state_takes_newer_samples_after_a_restore() {
    let mut engine = Engine::new(one_at_a_time(), registry(), [0]);
    engine.ingest(0, 0, click(1, "beta", 1_000));
    engine.ingest(0, 1, click(1, "beta", 2_000));
    assert!(engine.finish());
    assert_eq!(count_of(&engine, "beta", 1), Some(2.0));
    let mut store = MemoryStore::default();
    store.apply(engine.full_checkpoint());
    let mut resumed = Engine::restore(one_at_a_time(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    resumed.ingest(0, 2, click(1, "beta", 3_000));
    resumed.ingest(0, 3, click(1, "beta", 1_500));
    assert!(resumed.finish());
    assert_eq!(
        count_of(&resumed, "beta", 1),
        Some(3.0),
        "the newer one applied"
    );
    assert_eq!(
        resumed.counters().dead.get("late"),
        Some(&1),
        "the one older than what was applied is late"
    );
}

/// Micro-batches of up to 8 samples or 8 positives, without an age.
fn engine_config_micro() -> EngineConfig {
    EngineConfig {
        batch: BatchPolicy {
            max_samples: 8,
            max_positives: 8,
            max_age_ms: None,
        },
        ..one_at_a_time()
    }
}

/// Retiring a version closes its open micro-batches at that point: what it
/// took before is applied then, not at the input's end, and nothing
/// changes its parameters after it.
#[test]
fn a_retirement_applies_the_versions_open_batches() {
    let mut engine = Engine::new(engine_config_micro(), registry(), [0]);
    let beta = engine.registry().live("beta").unwrap().id;
    let count = |engine: &Engine, doc_id| {
        engine
            .param(&ParamKey {
                version: beta,
                doc_id,
            })
            .map(|s| s.sample_count)
    };
    engine.schedule(retire("r", 100, "beta"));
    engine.ingest(0, 0, click(1, "beta", 10));
    engine.ingest(0, 1, click(1, "beta", 20));
    engine.ingest(0, 2, click(2, "beta", 30));
    engine.ingest(0, 3, click(2, "beta", 60));
    assert_eq!(count(&engine, 1), None, "waiting in its batch");
    // Past the retirement (and the out-of-orderness): both batches are
    // applied there.
    engine.ingest(0, 4, click(3, "beta", 1_000));
    assert!(engine.registry().live("beta").is_none());
    assert_eq!(count(&engine, 1), Some(2.0));
    assert_eq!(count(&engine, 2), Some(2.0));
    assert_eq!(engine.batcher.iter().count(), 0);
    // A checkpoint says so: a restore has no batch of it either.
    let mut store = MemoryStore::default();
    store.apply(engine.full_checkpoint());
    let restored = Engine::restore(engine_config_micro(), |t| store.entries(t))
        .unwrap()
        .unwrap();
    assert_eq!(restored.batcher.iter().count(), 0);
}

/// Only an applied sample holds its id: one refused for its content
/// (here a missing label) and sent again corrected is applied, and a
/// repeat of that one is the duplicate.
#[test]
fn a_refused_sample_sent_again_corrected_is_not_a_duplicate() {
    let mut engine = Engine::new(
        EngineConfig {
            batch: BatchPolicy::default(),
            ..config()
        },
        registry(),
        [0],
    );
    let sample = |t, labelled: bool| {
        Payload::Sample(Sample {
            doc_id: 1,
            version: "beta".into(),
            event_time_ms: t,
            context: vec![],
            labels: if labelled {
                crate::sample::labels([("click", 1.0)])
            } else {
                crate::sample::labels([])
            },
            weight: 1.0,
            sample_id: Some("s-1".into()),
        })
    };
    engine.ingest(0, 0, sample(1_000, false));
    engine.ingest(0, 1, sample(1_001, true));
    engine.ingest(0, 2, sample(1_002, true));
    engine.finish();
    let dead = &engine.counters().dead;
    assert_eq!(dead.get("missing_label"), Some(&1), "{dead:?}");
    assert_eq!(dead.get("duplicate"), Some(&1), "{dead:?}");
    assert_eq!(engine.counters().applied, 1);
}

/// An engine that hands the contexts of applied samples back to a reader
/// ([`Engine::return_contexts_to`]) gives back emptied vectors — from
/// single samples applied at once and from micro-batches — and ends in
/// the state of one that frees them.
#[test]
fn contexts_handed_back_come_back_empty_and_change_no_state() {
    let logs = generate(17, 3, 4_000);
    for config in [config(), one_at_a_time()] {
        let plain = run_engine_on(Engine::new(config, registry(), 0..3), &logs, 5, |_| {});
        let (back, mut supply) = crate::contexts::channel();
        let mut engine = Engine::new(config, registry(), 0..3);
        engine.return_contexts_to(back);
        let mut came_back = 0;
        let recycling = run_engine_on(engine, &logs, 5, |_| {
            while let Some(context) = supply.take() {
                assert!(context.is_empty() && context.capacity() >= DIM);
                came_back += 1;
            }
        });
        let logistic = recycling.registry().live("logistic").unwrap().id;
        let logistic_updates = recycling.stats().applied_by_version[logistic.0 as usize];
        assert!(
            came_back >= 1_000 && came_back as u64 <= logistic_updates,
            "{came_back} of {logistic_updates} contexts came back ({:?})",
            config.batch
        );
        assert_eq!(recycling.param_count(), plain.param_count());
        for (key, state) in plain.params() {
            assert_eq!(recycling.param(key), Some(state), "{key:?}");
        }
        assert_eq!(recycling.counters(), plain.counters());
    }
}

/// An update whose MAP solve stops at the iteration cap is counted by
/// version (the metric and the warning read the count), and is still
/// applied, from its last iterate. No input found reaches the real cap, so
/// the test lowers it to one iteration on its thread.
#[test]
fn updates_at_the_iteration_cap_are_counted_by_version() {
    let logs = generate(23, 2, 2_000);
    let run = |cap: Option<u32>| {
        let engine = || run_engine_on(Engine::new(config(), registry(), 0..2), &logs, 3, |_| {});
        match cap {
            Some(cap) => crate::posterior::newton::with_iteration_cap(cap, engine),
            None => engine(),
        }
    };
    let (converged, capped) = (run(None), run(Some(1)));
    let id = |engine: &Engine, name: &str| engine.registry().live(name).unwrap().id.0 as usize;
    let unconverged = |engine: &Engine, name: &str| {
        engine
            .stats()
            .unconverged_by_version
            .get(id(engine, name))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(unconverged(&converged, "logistic"), 0);
    assert_eq!(unconverged(&converged, "beta"), 0);
    let logistic_updates = capped.counters().updates;
    let stopped = unconverged(&capped, "logistic");
    assert!(
        stopped > 10 && stopped < logistic_updates,
        "{stopped} of {logistic_updates} updates at a cap of one iteration"
    );
    assert_eq!(
        unconverged(&capped, "beta"),
        0,
        "Beta updates have no solve"
    );
    // Applied all the same: the same samples and updates, other values.
    assert_eq!(capped.counters(), converged.counters());
    assert!(
        converged
            .params()
            .any(|(key, state)| capped.param(key) != Some(state)),
        "one iteration lands elsewhere than the converged solve"
    );
}
