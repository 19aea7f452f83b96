//! TLS to a param-server whose certificate a test CA signed (built with
//! `--features tls`; the certificates come from the `openssl` command).

#![cfg(feature = "tls")]
#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use posterior_client::{Client, ClientConfig, TlsConfig};
use posterior_param_server::{Limits, ParamServiceImpl};
use posterior_proto::v1::param_service_server::ParamServiceServer;
use tonic::Code;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, ServerTlsConfig};

fn openssl(dir: &Path, args: &[&str]) {
    let status = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(status.status.success(), "openssl {args:?}: {status:?}");
}

/// A CA (`ca.pem`) and a certificate for `localhost` it signed
/// (`server.pem`, `server.key`).
fn certificates(dir: &Path) {
    let subject = |cn: &str| format!("/CN={cn}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            &subject("posterior test CA"),
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            &subject("localhost"),
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[tokio::test]
async fn a_client_trusting_the_ca_reads_over_tls() {
    let dir = tempfile::tempdir().unwrap();
    certificates(dir.path());
    let identity = Identity::from_pem(
        std::fs::read(dir.path().join("server.pem")).unwrap(),
        std::fs::read(dir.path().join("server.key")).unwrap(),
    );
    let store = ParamServer::store(16);
    store.apply("ctr", 1, beta_state(2)).unwrap();
    let service = ParamServiceImpl::new(Arc::clone(&store), Limits::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .tls_config(ServerTlsConfig::new().identity(identity))
            .unwrap()
            .add_service(ParamServiceServer::new(service))
            .serve_with_incoming(TcpIncoming::from(listener)),
    );

    let config = ClientConfig {
        tls: TlsConfig {
            ca_cert_pem: Some(dir.path().join("ca.pem")),
            domain: Some("localhost".into()),
        },
        ..fast_config()
    };
    let client = Client::connect(&endpoint, config).await.unwrap();
    let params = client.get_params("ctr", &[1]).await.unwrap();
    assert_eq!(params[0].seq, 2);

    // The system roots do not know the test CA.
    let config = ClientConfig {
        tls: TlsConfig {
            ca_cert_pem: None,
            domain: Some("localhost".into()),
        },
        ..fast_config()
    };
    let err = Client::connect(&endpoint, config).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err}");
}
