//! The contract of `AdminService` over real gRPC on loopback: stamped
//! commands reach the control plane, errors carry precise codes, every
//! method is guarded, every call is audited.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::collections::HashSet;

use common::admin::*;
use common::*;
use posterior_learner::VersionSpec;
use posterior_param_server::Limits;
use posterior_proto::v1;
use posterior_proto::v1::control_command::Command as Wire;
use prost::Message;
use tonic::Code;
use tonic::codegen::http::uri::PathAndQuery;

fn beta_wire(name: &str) -> v1::VersionSpec {
    v1::VersionSpec::from(&beta_spec(name))
}

fn assert_stamped(response: &v1::AdminResponse, command: &v1::ControlCommand) {
    assert_eq!(response.command_id, command.command_id);
    assert_eq!(response.command_id.len(), 32);
    assert!(response.command_id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(response.effective_event_time_ms, NOW_MS + LEAD_MS);
    assert_eq!(command.effective_event_time_ms, NOW_MS + LEAD_MS);
    assert_eq!(command.issued_by, "alice");
    assert!(response.message.contains(&response.command_id));
    assert!(response.message.contains(&(NOW_MS + LEAD_MS).to_string()));
}

#[tokio::test]
async fn every_mutating_rpc_hands_a_stamped_command_to_the_control_plane() {
    let mut admin = AdminServer::start(16, None).await;
    let mut client = admin.client().await;
    let token = Some(ADMIN_TOKEN);
    let overrides = v1::VersionOverrides {
        reward_label: Some("order".into()),
        forgetting_half_life_ms: Some(60_000),
        ..Default::default()
    };
    let create = v1::CreateVersionRequest {
        spec: Some(beta_wire("ctr-new")),
    };
    let fork = v1::ForkVersionRequest {
        from: "ctr".into(),
        to: "ctr-order".into(),
        overrides: Some(overrides),
    };
    let retire = v1::RetireVersionRequest { name: "ctr".into() };
    let savepoint = v1::TriggerSavepointRequest {
        label: "before the sale".into(),
    };
    let rollback = v1::RollbackVersionRequest {
        version: "dwell".into(),
        savepoint_id: "sp-0001700000000000-2".into(),
    };
    let responses = [
        client.create_version(authed(create.clone(), token)).await,
        client.fork_version(authed(fork.clone(), token)).await,
        client.retire_version(authed(retire.clone(), token)).await,
        client
            .trigger_savepoint(authed(savepoint.clone(), token))
            .await,
        client
            .rollback_version(authed(rollback.clone(), token))
            .await,
    ]
    .map(|r| r.unwrap().into_inner());
    let commands = admin.drain_commands();
    let expected = [
        Wire::CreateVersion(create),
        Wire::ForkVersion(fork),
        Wire::RetireVersion(retire),
        Wire::TriggerSavepoint(savepoint),
        Wire::RollbackVersion(rollback),
    ];
    assert_eq!(commands.len(), expected.len());
    for ((response, command), expected) in responses.iter().zip(&commands).zip(expected) {
        assert_stamped(response, command);
        assert_eq!(command.command.as_ref(), Some(&expected));
    }
    let ids: HashSet<_> = commands.iter().map(|c| &c.command_id).collect();
    assert_eq!(ids.len(), commands.len(), "command ids repeat");
    // The store changes when the learners announce, not before.
    assert_eq!(admin.store().versions().len(), 2);
    assert!(!admin.store().version("ctr").unwrap().is_retired());
    admin.stop().await;
}

#[tokio::test]
async fn list_versions_answers_from_the_store_for_a_read_token() {
    let admin = AdminServer::start(16, None).await;
    let store = admin.store();
    store.apply("ctr", 1, beta_state(2)).unwrap();
    store.apply("ctr", 2, beta_state(1)).unwrap();
    store.register_announced(beta_spec("ctr-b")).unwrap();
    store.retire("dwell").unwrap();
    let mut client = admin.client().await;
    let listed = client
        .list_versions(authed(v1::ListVersionsRequest {}, Some(READ_TOKEN)))
        .await
        .unwrap()
        .into_inner()
        .versions;
    let got: Vec<_> = listed
        .iter()
        .map(|v| {
            let spec = VersionSpec::try_from(v.spec.clone().unwrap()).unwrap();
            (spec, v.retired, v.keys)
        })
        .collect();
    assert_eq!(
        got,
        [
            (beta_spec("ctr"), false, 2),
            (diagonal_spec("dwell", 4), true, 0),
            (beta_spec("ctr-b"), false, 0),
        ]
    );
    admin.stop().await;
}

#[tokio::test]
async fn refused_requests_name_the_problem_and_send_nothing() {
    let mut admin = AdminServer::start(16, None).await;
    admin.store().retire("dwell").unwrap();
    let before = snapshot(admin.store());
    let mut client = admin.client().await;
    let t = Some(ADMIN_TOKEN);
    let mut bad_spec = beta_wire("fresh");
    bad_spec.model = Some(v1::version_spec::Model::Beta(v1::BetaModel {
        alpha0: -1.0,
        beta0: 1.0,
    }));
    let create = |spec| v1::CreateVersionRequest { spec };
    let fork = |from: &str, to: &str, overrides| v1::ForkVersionRequest {
        from: from.into(),
        to: to.into(),
        overrides,
    };
    let negative_half_life = Some(v1::VersionOverrides {
        forgetting_half_life_ms: Some(-5),
        ..Default::default()
    });
    let rollback = |version: &str, id: &str| v1::RollbackVersionRequest {
        version: version.into(),
        savepoint_id: id.into(),
    };
    let retire = |name: &str| v1::RetireVersionRequest { name: name.into() };
    let c = &mut client;
    let mut got = vec![
        (
            c.create_version(authed(create(None), t)).await,
            Code::InvalidArgument,
        ),
        (
            c.create_version(authed(create(Some(bad_spec)), t)).await,
            Code::InvalidArgument,
        ),
        (
            c.create_version(authed(create(Some(beta_wire("ctr"))), t))
                .await,
            Code::AlreadyExists,
        ),
        (
            c.create_version(authed(create(Some(beta_wire("dwell"))), t))
                .await,
            Code::AlreadyExists,
        ),
        (
            c.fork_version(authed(fork("nope", "x", None), t)).await,
            Code::NotFound,
        ),
        (
            c.fork_version(authed(fork("ctr", "dwell", None), t)).await,
            Code::AlreadyExists,
        ),
        (
            c.fork_version(authed(fork("ctr", "", None), t)).await,
            Code::InvalidArgument,
        ),
        (
            c.fork_version(authed(fork("ctr", "x", negative_half_life), t))
                .await,
            Code::InvalidArgument,
        ),
        (
            c.retire_version(authed(retire("nope"), t)).await,
            Code::NotFound,
        ),
        (
            c.retire_version(authed(retire("dwell"), t)).await,
            Code::FailedPrecondition,
        ),
        (
            c.rollback_version(authed(rollback("nope", "sp-1"), t))
                .await,
            Code::NotFound,
        ),
    ];
    let long_id = "a".repeat(129);
    for id in [
        "",
        "../sp-1",
        "sp/1",
        "/tmp/sp",
        "a..b",
        ".sp",
        "sp 1",
        long_id.as_str(),
    ] {
        let result = c.rollback_version(authed(rollback("ctr", id), t)).await;
        got.push((result, Code::InvalidArgument));
    }
    let label = v1::TriggerSavepointRequest {
        label: "two\nlines".into(),
    };
    got.push((
        c.trigger_savepoint(authed(label, t)).await,
        Code::InvalidArgument,
    ));
    for (i, (result, code)) in got.into_iter().enumerate() {
        let status = result.unwrap_err();
        assert_eq!(status.code(), code, "case {i}: {}", status.message());
    }
    assert!(admin.drain_commands().is_empty());
    assert_eq!(snapshot(admin.store()), before);
    admin.stop().await;
}

#[tokio::test]
async fn a_full_control_queue_is_unavailable_and_the_next_call_goes_through() {
    let mut admin = AdminServer::start(1, None).await;
    let mut client = admin.client().await;
    let savepoint = || authed(v1::TriggerSavepointRequest::default(), Some(ADMIN_TOKEN));
    client.trigger_savepoint(savepoint()).await.unwrap();
    let status = client.trigger_savepoint(savepoint()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{}", status.message());
    assert_eq!(admin.drain_commands().len(), 1);
    client.trigger_savepoint(savepoint()).await.unwrap();
    assert_eq!(admin.drain_commands().len(), 1);
    admin.stop().await;
}

/// The methods of `posterior.v1.AdminService`, read from the descriptors
/// the server is built from.
fn admin_methods() -> Vec<String> {
    let set = prost_types::FileDescriptorSet::decode(posterior_proto::FILE_DESCRIPTOR_SET).unwrap();
    let services: Vec<_> = set
        .file
        .iter()
        .filter(|f| f.package() == "posterior.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "AdminService")
        .collect();
    assert_eq!(services.len(), 1, "one posterior.v1.AdminService");
    services[0]
        .method
        .iter()
        .map(|m| m.name().to_owned())
        .collect()
}

/// Calls `/posterior.v1.AdminService/<method>` with an empty message and
/// `authorization` metadata as given; the response is read as `()` (google.protobuf.Empty).
async fn call_raw(
    channel: tonic::transport::Channel,
    method: &str,
    authorization: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let mut request = tonic::Request::new(());
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.parse().unwrap());
    }
    let path = PathAndQuery::try_from(format!("/posterior.v1.AdminService/{method}")).unwrap();
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    grpc.unary(request, path, codec).await.map(drop)
}

#[tokio::test]
async fn every_admin_method_refuses_callers_without_the_right_token() {
    let mut admin = AdminServer::start(16, None).await;
    let methods = admin_methods();
    for known in [
        "CreateVersion",
        "ForkVersion",
        "ListVersions",
        "RetireVersion",
        "TriggerSavepoint",
        "RollbackVersion",
    ] {
        assert!(methods.iter().any(|m| m == known), "{known} not enumerated");
    }
    let before = snapshot(admin.store());
    let channel = admin.server.channel().await;
    let wrong = format!("Bearer {ADMIN_TOKEN}x");
    let read = format!("Bearer {READ_TOKEN}");
    let mut refused = 0;
    for method in &methods {
        for authorization in [None, Some(wrong.as_str()), Some("Basic YWxpY2U6cHc=")] {
            let status = call_raw(channel.clone(), method, authorization)
                .await
                .unwrap_err();
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} {authorization:?}"
            );
            refused += 1;
        }
        let with_read = call_raw(channel.clone(), method, Some(&read)).await;
        if method == "ListVersions" {
            with_read.unwrap();
        } else {
            assert_eq!(
                with_read.unwrap_err().code(),
                Code::PermissionDenied,
                "{method}"
            );
            refused += 1;
        }
    }
    assert!(
        admin.drain_commands().is_empty(),
        "a refused call sent a command"
    );
    assert_eq!(snapshot(admin.store()), before);

    // Each refusal is audited once, with who and what.
    let audit = admin.audit();
    let refusals: Vec<_> = audit.iter().filter(|r| r.code != "OK").collect();
    assert_eq!(refusals.len(), refused);
    for record in &refusals {
        assert!(methods.contains(&record.rpc));
        assert!(record.command_id.is_none());
        assert!(record.peer.as_deref().unwrap().starts_with("127.0.0.1:"));
        let expected = match record.code.as_str() {
            "UNAUTHENTICATED" => "anonymous",
            "PERMISSION_DENIED" => "dash",
            other => panic!("unexpected code {other}"),
        };
        assert_eq!(record.who, expected);
    }
    // With the admin token, every method reaches its handler.
    for method in &methods {
        let result = call_raw(
            channel.clone(),
            method,
            Some(&format!("Bearer {ADMIN_TOKEN}")),
        )
        .await;
        if let Err(status) = result {
            let code = status.code();
            assert!(
                ![
                    Code::Unauthenticated,
                    Code::PermissionDenied,
                    Code::Unimplemented
                ]
                .contains(&code),
                "{method}: {code:?}"
            );
        }
    }
    admin.stop().await;
}

#[tokio::test]
async fn accepted_failed_and_refused_calls_are_each_audited_once() {
    let admin = AdminServer::start(16, None).await;
    let mut client = admin.client().await;
    let create = v1::CreateVersionRequest {
        spec: Some(beta_wire("ctr-new")),
    };
    let accepted = client
        .create_version(authed(create.clone(), Some(ADMIN_TOKEN)))
        .await
        .unwrap()
        .into_inner();
    let retire = v1::RetireVersionRequest {
        name: "missing".into(),
    };
    client
        .retire_version(authed(retire, Some(ADMIN_TOKEN)))
        .await
        .unwrap_err();
    client
        .create_version(authed(create, None))
        .await
        .unwrap_err();
    let audit = admin.audit();
    let summary: Vec<_> = audit
        .iter()
        .map(|r| {
            (
                r.who.as_str(),
                r.rpc.as_str(),
                r.code.as_str(),
                r.request.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("alice", "CreateVersion", "OK", "name=\"ctr-new\""),
            ("alice", "RetireVersion", "NOT_FOUND", "name=\"missing\""),
            ("anonymous", "CreateVersion", "UNAUTHENTICATED", ""),
        ]
    );
    assert_eq!(
        audit[0].command_id.as_deref(),
        Some(accepted.command_id.as_str())
    );
    assert!(audit[1].message.contains("missing"));
    assert!(audit.iter().all(|r| r.time_ms > 0 && r.peer.is_some()));
    admin.stop().await;
}

#[tokio::test]
async fn without_tokens_the_admin_service_is_not_served() {
    let server = TestServer::start(Limits::default(), 64).await;
    let status = call_raw(server.channel().await, "ListVersions", None)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented);
    let mut params = server.client().await;
    params.get_params(get("ctr", vec![1])).await.unwrap();
    server.stop().await;
}
