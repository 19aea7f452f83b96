//! `AdminClient` against a test double of `AdminService`: the bearer
//! token arrives, every request carries the right fields, and refusals
//! come back with their codes, unretried.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use common::admin_double::{AdminDouble, Received, TOKEN};
use common::*;
use posterior_client::{AdminClient, ForkOverrides};
use posterior_proto::v1;
use tonic::Code;

fn double() -> AdminDouble {
    AdminDouble::new(vec![beta_spec("ctr"), diagonal_spec("dwell", 4)])
}

/// A `grpc-timeout` header's value as a duration (gRPC's units).
fn grpc_timeout(header: &str) -> std::time::Duration {
    let (value, unit) = header.split_at(header.len() - 1);
    let value: u64 = value.parse().unwrap();
    let nanos = match unit {
        "H" => value * 3_600_000_000_000,
        "M" => value * 60_000_000_000,
        "S" => value * 1_000_000_000,
        "m" => value * 1_000_000,
        "u" => value * 1_000,
        "n" => value,
        other => panic!("unit {other:?}"),
    };
    std::time::Duration::from_nanos(nanos)
}

#[tokio::test]
async fn a_call_that_sends_a_command_has_the_command_deadline_a_read_the_request_one() {
    let admin = double();
    let server = ParamServer::with_admin(ParamServer::store(16), admin.clone());
    let config = posterior_client::ClientConfig {
        request_timeout_ms: 700,
        command_timeout_ms: 9_000,
        ..fast_config()
    };
    let client = AdminClient::connect(server.endpoint(), TOKEN, config)
        .await
        .unwrap();
    client.list_versions().await.unwrap();
    client.retire_version("dwell").await.unwrap();
    client
        .fork_version("ctr", "ctr-b", ForkOverrides::default())
        .await
        .unwrap();
    let deadlines: Vec<std::time::Duration> = admin
        .deadlines
        .lock()
        .unwrap()
        .iter()
        .map(|h| grpc_timeout(h.as_deref().expect("every call has a deadline")))
        .collect();
    assert_eq!(deadlines.len(), 3);
    // Sent as what is left of the deadline: a little below it.
    let near = |got: std::time::Duration, ms: u64| {
        got <= std::time::Duration::from_millis(ms)
            && got > std::time::Duration::from_millis(ms * 9 / 10)
    };
    assert!(near(deadlines[0], 700), "list: {:?}", deadlines[0]);
    assert!(near(deadlines[1], 9_000), "retire: {:?}", deadlines[1]);
    assert!(near(deadlines[2], 9_000), "fork: {:?}", deadlines[2]);
}

#[tokio::test]
async fn every_command_sends_its_fields_with_the_token() {
    let admin = double();
    let server = ParamServer::with_admin(ParamServer::store(16), admin.clone());
    let client = AdminClient::connect(server.endpoint(), TOKEN, fast_config())
        .await
        .unwrap();

    let spec = diagonal_spec("dwell-b", 3);
    let receipt = client.create_version(&spec).await.unwrap();
    assert_eq!(receipt.message, "created dwell-b");
    let overrides = ForkOverrides {
        reward_label: Some("order".into()),
        forgetting_half_life_ms: Some(3_600_000),
        ..ForkOverrides::default()
    };
    let receipt = client
        .fork_version("ctr", "ctr-b", overrides)
        .await
        .unwrap();
    assert_eq!(receipt.message, "forked ctr into ctr-b");
    let versions = client.list_versions().await.unwrap();
    client.retire_version("dwell").await.unwrap();
    let receipt = client.trigger_savepoint("before launch").await.unwrap();
    assert_eq!(receipt.message, "savepoint sp-0001 (before launch)");
    client.rollback_version("ctr", "sp-0001").await.unwrap();

    let names: Vec<_> = versions.iter().map(|v| v.spec.name.as_str()).collect();
    assert_eq!(names, ["ctr", "dwell"]);
    assert_eq!(versions[1].spec, diagonal_spec("dwell", 4));
    assert_eq!((versions[1].retired, versions[1].keys), (true, 10));
    assert_eq!(
        admin.received(),
        [
            Received::Create(v1::CreateVersionRequest {
                spec: Some((&spec).into())
            }),
            Received::Fork(v1::ForkVersionRequest {
                from: "ctr".into(),
                to: "ctr-b".into(),
                overrides: Some(v1::VersionOverrides {
                    reward_label: Some("order".into()),
                    reward_threshold: None,
                    forgetting_half_life_ms: Some(3_600_000),
                    use_sample_weight: None,
                }),
            }),
            Received::List,
            Received::Retire(v1::RetireVersionRequest {
                name: "dwell".into()
            }),
            Received::Savepoint(v1::TriggerSavepointRequest {
                label: "before launch".into()
            }),
            Received::Rollback(v1::RollbackVersionRequest {
                version: "ctr".into(),
                savepoint_id: "sp-0001".into(),
            }),
        ]
    );
    assert_eq!(*admin.refused.lock().unwrap(), 0);
}

#[tokio::test]
async fn a_wrong_token_is_unauthenticated_and_not_retried() {
    let admin = double();
    let server = ParamServer::with_admin(ParamServer::store(16), admin.clone());
    let client = AdminClient::connect(server.endpoint(), "wrong", fast_config())
        .await
        .unwrap();
    let err = client.list_versions().await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err}");
    assert_eq!(*admin.refused.lock().unwrap(), 1);
    assert!(admin.received().is_empty());

    let client = AdminClient::connect(server.endpoint(), TOKEN, fast_config())
        .await
        .unwrap();
    let err = client.retire_version("nope").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err}");
    assert_eq!(admin.received().len(), 1, "one attempt");
}

#[tokio::test]
async fn a_token_that_is_not_ascii_is_refused_locally() {
    let server = ParamServer::with_admin(ParamServer::store(16), double());
    let err = AdminClient::connect(server.endpoint(), "tök\u{e9}n", fast_config())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
}
