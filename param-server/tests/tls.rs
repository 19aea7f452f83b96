//! TLS and mutual TLS of the listener, with certificates generated here:
//! a TLS client gets through, a plaintext one does not; with mTLS a
//! client without a certificate from the configured CA is refused.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::path::Path;

use common::admin::*;
use posterior_param_server::config::TlsConfig;
use posterior_param_server::tls::server_tls;
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// A CA, a server certificate for `localhost` and a client certificate,
/// written as PEM files into `dir`.
struct Pki {
    ca_pem: String,
    client: Identity,
}

fn write_pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["predictor".to_owned()])
        .unwrap()
        .signed_by(&client_key, &issuer)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), server_cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        client: Identity::from_pem(client_cert.pem(), client_key.serialize_pem()),
    }
}

fn tls_config(dir: &Path, mutual: bool) -> TlsConfig {
    TlsConfig {
        cert_file: dir.join("server.pem"),
        key_file: dir.join("server.key"),
        client_ca_file: mutual.then(|| dir.join("ca.pem")),
    }
}

async fn connect(
    admin: &AdminServer,
    tls: Option<ClientTlsConfig>,
) -> Result<Channel, tonic::transport::Error> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint =
        Channel::from_shared(format!("{scheme}://127.0.0.1:{}", admin.server.addr.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await
}

/// Lists the versions with the read token over `channel`.
async fn list(channel: Channel) -> Result<usize, tonic::Status> {
    let mut client = AdminServiceClient::new(channel);
    let request = authed(v1::ListVersionsRequest {}, Some(READ_TOKEN));
    Ok(client
        .list_versions(request)
        .await?
        .into_inner()
        .versions
        .len())
}

/// Whether a ListVersions call over a new connection succeeds.
async fn can_list(admin: &AdminServer, tls: Option<ClientTlsConfig>) -> bool {
    match connect(admin, tls).await {
        Ok(channel) => list(channel).await.is_ok(),
        Err(_) => false,
    }
}

fn client_tls(pki: &Pki) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&pki.ca_pem))
        .domain_name("localhost")
}

#[tokio::test]
async fn with_tls_a_tls_client_gets_through_and_a_plaintext_one_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let pki = write_pki(dir.path());
    let tls = server_tls(&tls_config(dir.path(), false)).unwrap();
    let admin = AdminServer::start(16, Some(tls)).await;
    let channel = connect(&admin, Some(client_tls(&pki))).await.unwrap();
    assert_eq!(list(channel).await.unwrap(), 2);
    // The audit finds the peer behind TLS too.
    let audited = admin.audit();
    assert_eq!(audited.len(), 1);
    assert!(
        audited[0]
            .peer
            .as_deref()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(!can_list(&admin, None).await, "plaintext got through");
    // A client that does not trust the server's CA is refused too.
    let other = tempfile::tempdir().unwrap();
    let stranger = write_pki(other.path());
    assert!(!can_list(&admin, Some(client_tls(&stranger))).await);
    admin.stop().await;
}

#[tokio::test]
async fn with_mutual_tls_only_clients_with_a_certificate_from_the_ca_get_through() {
    let dir = tempfile::tempdir().unwrap();
    let pki = write_pki(dir.path());
    let tls = server_tls(&tls_config(dir.path(), true)).unwrap();
    let admin = AdminServer::start(16, Some(tls)).await;
    let with_cert = client_tls(&pki).identity(pki.client.clone());
    let channel = connect(&admin, Some(with_cert)).await.unwrap();
    assert_eq!(list(channel).await.unwrap(), 2);
    assert!(
        !can_list(&admin, Some(client_tls(&pki))).await,
        "no client cert got through"
    );
    let other = tempfile::tempdir().unwrap();
    let stranger = write_pki(other.path());
    let foreign_cert = client_tls(&pki).identity(stranger.client);
    assert!(
        !can_list(&admin, Some(foreign_cert)).await,
        "a foreign cert got through"
    );
    assert!(!can_list(&admin, None).await, "plaintext got through");
    admin.stop().await;
}
