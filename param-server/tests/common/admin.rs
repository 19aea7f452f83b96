//! An admin-enabled server: two tokens (`alice`, admin; `dash`, read),
//! an in-process control plane whose commands the test reads, an audit
//! file, and a fixed clock.

use std::path::PathBuf;
use std::sync::Arc;

use posterior_param_server::admin::AdminServiceImpl;
use posterior_param_server::audit::{AuditLog, AuditRecord};
use posterior_param_server::auth::TokenSet;
use posterior_param_server::{
    AdminSetup, Handover, InProcessControlPlane, Limits, ParamStore, ServeOptions,
};
use posterior_proto::v1;
use posterior_proto::v1::admin_service_client::AdminServiceClient;
use tokio::sync::mpsc;
use tonic::transport::{Channel, ServerTlsConfig};

use super::TestServer;

pub const ADMIN_TOKEN: &str = "alice-0123456789abcdef0123456789";
pub const READ_TOKEN: &str = "dash-0123456789abcdef0123456789";
pub const NOW_MS: i64 = 1_700_000_000_000;
pub const LEAD_MS: i64 = 5_000;

pub struct AdminServer {
    pub server: TestServer,
    pub commands: mpsc::Receiver<Handover>,
    pub audit_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn fixed_clock() -> i64 {
    NOW_MS
}

impl AdminServer {
    /// A server whose control queue holds `queue` commands, over `tls`.
    pub async fn start(queue: usize, tls: Option<ServerTlsConfig>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let audit_path = dir.path().join("audit.jsonl");
        let (control, commands) = InProcessControlPlane::channel(queue);
        let tokens = TokenSet::parse(
            &format!("alice admin {ADMIN_TOKEN}\ndash read {READ_TOKEN}"),
            "test",
        )
        .unwrap();
        let audit = AuditLog::with_file(&audit_path, 1 << 20).unwrap();
        let server = TestServer::start_with(Limits::default(), 64, |store| ServeOptions {
            admin: Some(AdminSetup {
                service: AdminServiceImpl::new(Arc::clone(store), Arc::new(control), LEAD_MS)
                    .with_clock(fixed_clock),
                tokens: Arc::new(tokens),
                audit: Arc::new(audit),
            }),
            tls,
            ..ServeOptions::default()
        })
        .await;
        Self {
            server,
            commands,
            audit_path,
            _dir: dir,
        }
    }

    pub fn store(&self) -> &Arc<ParamStore> {
        &self.server.store
    }

    /// A plaintext admin client.
    pub async fn client(&self) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.server.channel().await)
    }

    /// Every audit record written so far.
    pub fn audit(&self) -> Vec<AuditRecord> {
        std::fs::read_to_string(&self.audit_path)
            .unwrap_or_default()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    /// Commands received by the control plane so far.
    pub fn drain_commands(&mut self) -> Vec<v1::ControlCommand> {
        let mut commands = Vec::new();
        while let Ok(handover) = self.commands.try_recv() {
            commands.push(handover.command);
        }
        commands
    }

    pub async fn stop(self) {
        self.server.stop().await;
    }
}

/// `message` with `authorization: Bearer <token>` when a token is given.
pub fn authed<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    request
}

/// What the store serves: (name, spec, retired, keys) of every version.
pub fn snapshot(store: &ParamStore) -> Vec<(String, v1::VersionSpec, bool, usize)> {
    store
        .versions()
        .iter()
        .map(|v| {
            (
                v.name().to_owned(),
                v1::VersionSpec::from(v.spec()),
                v.is_retired(),
                v.table().len(),
            )
        })
        .collect()
}
