//! The wire contract end to end: a `JoinedSample` encoded as the upstream
//! joiner would, decoded and validated, applied to a key under a version
//! spec from the admin API, and published as a `ParamUpdate` from which the
//! exact state is rebuilt.

use posterior_learner::params::update_to_wire;
use posterior_learner::{KeyState, Sample, VersionSpec};
use posterior_proto::v1;
use prost::Message;

fn logistic_version() -> v1::VersionSpec {
    v1::VersionSpec {
        name: "ctr-ts".into(),
        model: Some(v1::version_spec::Model::Logistic(v1::LogisticModel {
            dim: 3,
            form: v1::CovarianceForm::Full as i32,
            prior_mean: vec![-5.0, 0.0, 0.0],
            prior_precision: 1.0,
        })),
        reward_label: "click".into(),
        reward_threshold: 0.5,
        forgetting_half_life_ms: 0,
        use_sample_weight: true,
    }
}

fn joined(doc_id: u64, t: i64, click: f32, context: Vec<f32>) -> Vec<u8> {
    v1::JoinedSample {
        doc_id,
        version: "ctr-ts".into(),
        event_time_ms: t,
        context,
        labels: [("click".to_owned(), click)].into(),
        weight: 1.0,
        sample_id: format!("s-{t}"),
    }
    .encode_to_vec()
}

#[test]
fn sample_bytes_to_published_state_and_back() {
    let spec = VersionSpec::try_from(logistic_version()).unwrap();
    let mut state = KeyState::prior(&spec.model);
    let records = [
        joined(7, 1_000, 1.0, vec![1.0, 0.2, -0.1]),
        joined(7, 1_010, 0.0, vec![1.0, -0.4, 0.3]),
    ];
    let samples: Vec<Sample> = records
        .iter()
        .map(|bytes| Sample::try_from(v1::JoinedSample::decode(bytes.as_slice()).unwrap()).unwrap())
        .collect();
    let batch: Vec<_> = samples
        .iter()
        .map(|s| spec.observation(s).unwrap())
        .collect();
    state.update(&spec.model, &batch).unwrap();

    let published = update_to_wire(&spec.name, 7, &state).encode_to_vec();
    let received = v1::ParamUpdate::decode(published.as_slice()).unwrap();
    let params = received.params.unwrap();
    assert_eq!(
        (params.version.as_str(), params.doc_id, params.seq),
        ("ctr-ts", 7, 1)
    );
    assert_eq!(params.updated_event_time_ms, 1_010);
    assert!(!params.is_prior);
    let Some(v1::params::Model::Gaussian(g)) = params.model else {
        panic!("logistic version publishes Gaussian params")
    };
    assert_eq!(
        g.precision.len(),
        6,
        "packed lower triangle of a 3 x 3 precision"
    );
    assert!(
        g.variance.iter().all(|v| *v > 0.0 && *v < 1.0),
        "{:?}",
        g.variance
    );
    // The clicked context pulled the mean up along its direction.
    assert!(g.mean[0] > -5.0 - 1.0 && g.mean.iter().all(|m| m.is_finite()));
    assert_eq!(KeyState::decode(&received.state).unwrap(), state);
}

#[test]
fn undecodable_and_invalid_records_are_errors_not_panics() {
    assert!(v1::JoinedSample::decode(&b"\xff\xff\xff"[..]).is_err());
    let nan =
        v1::JoinedSample::decode(joined(1, 0, 1.0, vec![f32::NAN, 0.0, 0.0]).as_slice()).unwrap();
    assert_eq!(Sample::try_from(nan).unwrap_err().reason(), "non_finite");
}

#[test]
fn descriptor_set_describes_both_services() {
    let fds = posterior_proto::FILE_DESCRIPTOR_SET;
    let text = String::from_utf8_lossy(fds);
    for name in [
        "ParamService",
        "AdminService",
        "JoinedSample",
        "ParamUpdate",
    ] {
        assert!(text.contains(name), "descriptor set lacks {name}");
    }
}
