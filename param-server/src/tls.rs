//! TLS and mutual TLS for the gRPC listener (rustls with the ring
//! provider, through tonic): a PEM certificate chain and key, and
//! optionally a client CA, in which case every client must present a
//! certificate it signed. TLS covers the whole listener (ParamService,
//! AdminService, health, reflection). The files are read and checked
//! before any socket is bound; errors name the config key and the path.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

use crate::config::TlsConfig;

/// Why the TLS settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{key} ({path}): {source}")]
    Read {
        /// The config key, e.g. `tls.cert_file`.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A file holds no PEM block.
    #[error("{key} ({path}): not a PEM file (no -----BEGIN line)")]
    NotPem {
        /// The config key.
        key: &'static str,
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the certificate, key or CA (unparsable, key not
    /// matching the certificate, ...).
    #[error("tls: {0}")]
    Rejected(String),
}

fn read_pem(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Read {
        key,
        path: path.to_owned(),
        source,
    })?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(TlsError::NotPem {
            key,
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// The server's TLS configuration from `config`, checked by building the
/// rustls acceptor once (so a bad key fails here, not at the first
/// handshake).
pub fn server_tls(config: &TlsConfig) -> Result<ServerTlsConfig, TlsError> {
    let cert = read_pem("tls.cert_file", &config.cert_file)?;
    let key = read_pem("tls.key_file", &config.key_file)?;
    let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
    if let Some(ca) = &config.client_ca_file {
        let ca = read_pem("tls.client_ca_file", ca)?;
        tls = tls.client_ca_root(Certificate::from_pem(ca));
    }
    tonic::transport::Server::builder()
        .tls_config(tls.clone())
        .map_err(|e| TlsError::Rejected(source_chain(&e)))?;
    Ok(tls)
}

/// An error and its sources, joined: tonic's transport error alone says
/// only "transport error".
fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path) -> TlsConfig {
        TlsConfig {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            client_ca_file: None,
        }
    }

    #[test]
    fn missing_and_non_pem_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = server_tls(&config(dir.path())).unwrap_err();
        assert!(err.to_string().starts_with("tls.cert_file"), "{err}");
        std::fs::write(dir.path().join("cert.pem"), "not pem").unwrap();
        let err = server_tls(&config(dir.path())).unwrap_err();
        assert!(
            matches!(
                err,
                TlsError::NotPem {
                    key: "tls.cert_file",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_generated_certificate_loads_and_a_garbled_key_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        server_tls(&config(dir.path())).unwrap();
        std::fs::write(
            dir.path().join("key.pem"),
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            server_tls(&config(dir.path())),
            Err(TlsError::Rejected(_))
        ));
    }
}
