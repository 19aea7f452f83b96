//! The audit log of the admin service: one record per admin call,
//! accepted or refused — who (token name, or `anonymous`), from where,
//! which RPC, a short summary of the request, the resulting gRPC code and
//! the command id — as a `tracing` event on target `posterior::audit`
//! and, when configured, as one JSON line appended to a file.
//!
//! The file is bounded by rotation: before a line would take it past
//! `max_bytes`, it is renamed to `<path>.1` (replacing the previous one)
//! and a new file is started, so at most about 2 × `max_bytes` stay on
//! disk. Each line is written with one `write` call on an unbuffered
//! file (flushed to the OS per line); the file is created with mode 600.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;
use tonic::Code;

/// Target of the audit events, for log filters.
pub const AUDIT_TARGET: &str = "posterior::audit";

/// Identity of a caller without a valid token.
pub const ANONYMOUS: &str = "anonymous";

/// One admin call, as audited.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Wall-clock time of the record, Unix milliseconds.
    pub time_ms: i64,
    /// Token name, or [`ANONYMOUS`].
    pub who: String,
    /// The peer's address, when known.
    pub peer: Option<String>,
    /// The RPC's method name, e.g. `CreateVersion`.
    pub rpc: String,
    /// A short summary of the request (empty when refused before it was
    /// read).
    pub request: String,
    /// The resulting gRPC code, e.g. `OK`, `PERMISSION_DENIED`.
    pub code: String,
    /// The command id sent to the learners, if any.
    pub command_id: Option<String>,
    /// The status message or result.
    pub message: String,
}

/// Characters of a method name an audit record keeps. The name comes from
/// the request's path, which an anonymous caller chooses: a long one must
/// not make each refused call a large line that rotates the real records
/// away sooner.
const MAX_RPC_CHARS: usize = 64;

impl AuditRecord {
    /// A record stamped now (`rpc` cut to its first 64 characters, with
    /// `…` where it was cut).
    pub fn now(who: &str, peer: Option<SocketAddr>, rpc: &str) -> Self {
        let rpc = match rpc.char_indices().nth(MAX_RPC_CHARS) {
            Some((cut, _)) => format!("{}…", &rpc[..cut]),
            None => rpc.to_owned(),
        };
        Self {
            time_ms: crate::admin::system_clock_ms(),
            who: who.to_owned(),
            peer: peer.map(|p| p.to_string()),
            rpc,
            request: String::new(),
            code: code_name(Code::Ok).to_owned(),
            command_id: None,
            message: String::new(),
        }
    }
}

/// The canonical upper-case name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why the audit file could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("audit file {path}: {source}")]
pub struct AuditFileError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    pub source: std::io::Error,
}

/// Where audit records go: always the `posterior::audit` tracing target,
/// and a rotated JSON-lines file when configured.
#[derive(Debug, Default)]
pub struct AuditLog {
    file: Option<Mutex<AuditFile>>,
}

#[derive(Debug)]
struct AuditFile {
    path: PathBuf,
    file: File,
    written_bytes: u64,
    max_bytes: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)
}

impl AuditLog {
    /// Records to the tracing target only.
    pub fn tracing_only() -> Self {
        Self::default()
    }

    /// Also appends to `path`, rotating it at `max_bytes`.
    pub fn with_file(path: &Path, max_bytes: u64) -> Result<Self, AuditFileError> {
        let fail = |source| AuditFileError {
            path: path.to_owned(),
            source,
        };
        let file = open_append(path).map_err(fail)?;
        let written_bytes = file.metadata().map_err(fail)?.len();
        Ok(Self {
            file: Some(Mutex::new(AuditFile {
                path: path.to_owned(),
                file,
                written_bytes,
                max_bytes,
            })),
        })
    }

    /// Records one admin call.
    pub fn record(&self, record: &AuditRecord) {
        tracing::info!(
            target: AUDIT_TARGET,
            who = %record.who,
            peer = record.peer.as_deref().unwrap_or("-"),
            rpc = %record.rpc,
            request = %record.request,
            code = %record.code,
            command_id = record.command_id.as_deref().unwrap_or("-"),
            message = %record.message,
            "admin call"
        );
        if let Some(file) = &self.file {
            let mut file = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Err(error) = file.append(record) {
                tracing::error!(target: AUDIT_TARGET, path = %file.path.display(), %error, "audit line not written");
            }
        }
    }
}

impl AuditFile {
    fn append(&mut self, record: &AuditRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record)?;
        line.push(b'\n');
        let len = line.len() as u64;
        if self.written_bytes > 0 && self.written_bytes + len > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.written_bytes += len;
        Ok(())
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        let mut old = self.path.clone().into_os_string();
        old.push(".1");
        std::fs::rename(&self.path, &old)?;
        self.file = open_append(&self.path)?;
        self.written_bytes = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_method_name_is_cut_in_the_record() {
        let long = "X".repeat(10_000);
        let record = AuditRecord::now("anonymous", None, &long);
        assert_eq!(record.rpc, format!("{}…", "X".repeat(64)));
        let record = AuditRecord::now("anonymous", None, "CreateVersion");
        assert_eq!(record.rpc, "CreateVersion");
        let exact = "é".repeat(64);
        assert_eq!(AuditRecord::now("a", None, &exact).rpc, exact);
    }

    fn lines(path: &Path) -> Vec<AuditRecord> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn records_are_json_lines_and_the_file_rotates_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut record = AuditRecord::now("alice", Some(([127, 0, 0, 1], 9).into()), "Create");
        record.command_id = Some("abc".into());
        record.request = "call 0".into();
        let line_bytes = serde_json::to_vec(&record).unwrap().len() as u64 + 1;
        let log = AuditLog::with_file(&path, 3 * line_bytes).unwrap();
        for i in 0..3 {
            record.request = format!("call {i}");
            log.record(&record);
        }
        assert_eq!(lines(&path).len(), 3);
        record.request = "call 3".into();
        log.record(&record);
        let rotated = PathBuf::from(format!("{}.1", path.display()));
        let old = lines(&rotated);
        let new = lines(&path);
        assert_eq!(old.len(), 3);
        assert_eq!(new, [record.clone()]);
        assert_eq!(old[2].request, "call 2");
        assert_eq!(new[0].peer.as_deref(), Some("127.0.0.1:9"));
    }

    #[test]
    fn a_reopened_log_counts_what_the_file_already_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let record = AuditRecord::now("bob", None, "ListVersions");
        let line_bytes = serde_json::to_vec(&record).unwrap().len() as u64 + 1;
        AuditLog::with_file(&path, 2 * line_bytes)
            .unwrap()
            .record(&record);
        let log = AuditLog::with_file(&path, 2 * line_bytes).unwrap();
        log.record(&record);
        log.record(&record);
        assert_eq!(lines(&path).len(), 1);
        assert_eq!(
            lines(&PathBuf::from(format!("{}.1", path.display()))).len(),
            2
        );
    }
}
