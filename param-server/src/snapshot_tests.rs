//! Unit tests of the snapshot file: round trip, corruption, mismatches.

use posterior_learner::posterior::{
    BetaPrior, CovarianceForm, DiagonalGaussian, LogisticPrior, ModelKind, ModelSpec,
};
use posterior_learner::{Observation, Posterior, RewardSpec};

use super::*;

fn spec(name: &str, kind: ModelKind) -> VersionSpec {
    VersionSpec {
        name: name.to_owned(),
        model: ModelSpec::new(kind),
        reward: RewardSpec::binary("click"),
        use_sample_weight: false,
    }
}

fn beta(name: &str) -> VersionSpec {
    spec(name, ModelKind::Beta(BetaPrior::new(2.0, 3.0).unwrap()))
}

fn logistic(name: &str, form: CovarianceForm, dim: usize) -> VersionSpec {
    spec(
        name,
        ModelKind::Logistic(LogisticPrior::isotropic(form, dim, 1.5).unwrap()),
    )
}

/// A state of `spec`'s model after `seq` one-sample updates.
fn learned(spec: &VersionSpec, seq: u64) -> KeyState {
    let mut state = KeyState::prior(&spec.model);
    let dim = spec.model.kind.dim();
    for i in 0..seq {
        let context: Vec<f32> = (0..dim)
            .map(|j| 0.1 * (i + j as u64) as f32 - 0.3)
            .collect();
        state
            .update(&spec.model, &[Observation::new(&context, i % 3 == 0)])
            .unwrap();
    }
    state
}

/// A store with a Beta, a diagonal (retired) and a full version, keys in
/// each.
fn filled() -> ParamStore {
    let store = ParamStore::default();
    let specs = [
        beta("ctr"),
        logistic("diag", CovarianceForm::Diagonal, 8),
        logistic("full", CovarianceForm::Full, 3),
    ];
    for spec in &specs {
        store.register(spec.clone()).unwrap();
        for doc in 0..20_u64 {
            store
                .apply(&spec.name, doc * 7, learned(spec, 1 + doc % 4))
                .unwrap();
        }
    }
    store.retire("diag").unwrap();
    store
}

fn offsets() -> BTreeMap<u32, u64> {
    [(0, 17), (1, 0), (3, 123_456_789)].into()
}

#[test]
fn a_snapshot_round_trips_every_version_key_and_offset_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let store = filled();
    let stats = write(dir.path(), "params", &offsets(), &store).unwrap();
    assert_eq!((stats.versions, stats.keys), (3, 60));
    assert!(
        !dir.path().join(TEMP_NAME).exists(),
        "the temp file is renamed"
    );

    let snapshot = load(dir.path(), "params").unwrap().unwrap();
    assert_eq!(snapshot.next_offsets, offsets());
    assert_eq!(snapshot.keys(), 60);
    // The config serves "ctr" already: the snapshot fills it.
    let restored = ParamStore::default();
    restored.register(beta("ctr")).unwrap();
    snapshot.install(&restored).unwrap();
    assert_eq!(content(&restored), content(&store));
    assert!(restored.version("diag").unwrap().is_retired());
    assert!(!restored.version("ctr").unwrap().is_retired());
}

#[test]
fn no_snapshot_is_none_and_a_second_write_replaces_the_first() {
    let dir = tempfile::tempdir().unwrap();
    assert!(load(dir.path(), "params").unwrap().is_none());
    let store = filled();
    write(dir.path(), "params", &offsets(), &store).unwrap();
    store.apply("ctr", 7, learned(&beta("ctr"), 9)).unwrap();
    write(dir.path(), "params", &[(0, 99)].into(), &store).unwrap();
    let snapshot = load(dir.path(), "params").unwrap().unwrap();
    assert_eq!(snapshot.next_offsets, [(0, 99)].into());
    let restored = ParamStore::default();
    snapshot.install(&restored).unwrap();
    assert_eq!(restored.params("ctr", 7).unwrap().seq, 9);
}

#[test]
fn every_damaged_byte_or_truncation_is_reported_as_corrupt() {
    let dir = tempfile::tempdir().unwrap();
    let store = ParamStore::default();
    store.register(beta("ctr")).unwrap();
    for doc in 0..3 {
        store.apply("ctr", doc, learned(&beta("ctr"), 2)).unwrap();
    }
    write(dir.path(), "params", &offsets(), &store).unwrap();
    let path = path_in(dir.path());
    let good = std::fs::read(&path).unwrap();
    // Flip one bit of every byte in turn (the format version's and the
    // topic's bytes read as a mismatch, every other one as corruption).
    for i in 0..good.len() {
        let mut bad = good.clone();
        bad[i] ^= 0x10;
        std::fs::write(&path, &bad).unwrap();
        match load(dir.path(), "params") {
            Err(SnapshotError::Corrupt { .. }) => {}
            Err(SnapshotError::Mismatch { .. }) if (4..16).contains(&i) => {}
            other => panic!("byte {i} flipped: {other:?}"),
        }
    }
    for len in [0, 3, 10, good.len() / 2, good.len() - 1] {
        std::fs::write(&path, &good[..len]).unwrap();
        assert!(
            matches!(
                load(dir.path(), "params"),
                Err(SnapshotError::Corrupt { .. })
            ),
            "truncated to {len}"
        );
    }
    let mut longer = good.clone();
    longer.push(0);
    std::fs::write(&path, &longer).unwrap();
    assert!(matches!(
        load(dir.path(), "params"),
        Err(SnapshotError::Corrupt { .. })
    ));
    std::fs::write(&path, &good).unwrap();
    assert!(load(dir.path(), "params").unwrap().is_some());
}

#[test]
fn a_snapshot_of_another_topic_or_spec_is_a_mismatch_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "params", &offsets(), &filled()).unwrap();
    assert!(matches!(
        load(dir.path(), "params-b"),
        Err(SnapshotError::Mismatch { .. })
    ));
    let snapshot = load(dir.path(), "params").unwrap().unwrap();
    let store = ParamStore::default();
    let mut other = logistic("full", CovarianceForm::Full, 3);
    other.reward = RewardSpec::binary("order");
    store.register(other).unwrap();
    assert!(matches!(
        snapshot.install(&store),
        Err(SnapshotError::Mismatch { .. })
    ));
    assert_eq!(store.versions().len(), 1, "nothing was registered");
    assert!(store.version("full").unwrap().table().is_empty());
}

#[test]
fn a_state_of_the_wrong_model_is_corrupt() {
    // A hand-made file whose Beta version holds a diagonal state, with a
    // valid checksum: the content check catches it.
    let dir = tempfile::tempdir().unwrap();
    let mut body = Checksummed::new(Vec::new());
    body.put(MAGIC).unwrap();
    body.put(&FORMAT_VERSION.to_le_bytes()).unwrap();
    body.put_bytes(b"params").unwrap();
    body.put(&0_u64.to_le_bytes()).unwrap();
    body.put(&0_u32.to_le_bytes()).unwrap();
    body.put(&1_u32.to_le_bytes()).unwrap();
    body.put_bytes(&v1::VersionSpec::from(&beta("ctr")).encode_to_vec())
        .unwrap();
    body.put(&[0]).unwrap();
    body.put(&1_u64.to_le_bytes()).unwrap();
    body.put(&5_u64.to_le_bytes()).unwrap();
    let g = DiagonalGaussian::from_parts(vec![0.0; 2], vec![1.0; 2]).unwrap();
    let state = KeyState {
        seq: 1,
        sample_count: 1.0,
        updated_event_time_ms: 0,
        posterior: Posterior::Diagonal(g),
    };
    body.put_bytes(&state.encode()).unwrap();
    let crc = body.crc.clone().finalize();
    let mut bytes = body.inner;
    bytes.extend_from_slice(&crc.to_le_bytes());
    std::fs::write(path_in(dir.path()), bytes).unwrap();
    let err = load(dir.path(), "params").unwrap_err();
    assert!(
        err.to_string().contains("ctr/5 holds a logistic-diagonal"),
        "{err}"
    );
}
