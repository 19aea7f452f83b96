//! Bearer tokens of the admin service: who may call it, and with which
//! role. A token is presented as `authorization: Bearer <token>` and
//! compared in constant time: both sides are hashed (SHA-256) and every
//! configured digest is compared with `subtle`, so neither the token's
//! length nor which configured token matched shows in the timing.
//!
//! Tokens come from a file or an environment variable (never from the
//! main TOML), one `name role token` per entry:
//!
//! ```text
//! # name      role   token
//! alice       admin  3f1c0a8e1b5d4c7a9e2f6b8d0c4a1e7f
//! dashboards  read   9b7e5d3c1a0f8e6d4c2b0a9f7e5d3c1a
//! ```

use std::fmt;
use std::path::Path;

use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};

/// Shortest accepted token, in bytes: shorter ones are guessable.
pub const MIN_TOKEN_BYTES: usize = 16;
/// Longest accepted token name (the identity in the audit log).
pub const MAX_NAME_BYTES: usize = 64;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Read-only RPCs (`ListVersions`).
    Read,
    /// Every RPC.
    Admin,
}

impl Role {
    /// The role an admin RPC needs, by method name. Only the read-only
    /// RPCs are listed; any other method — including one added to the
    /// proto later — needs `Admin`.
    pub fn required_for(method: &str) -> Role {
        match method {
            "ListVersions" => Role::Read,
            _ => Role::Admin,
        }
    }

    fn parse(text: &str) -> Option<Role> {
        match text {
            "read" => Some(Role::Read),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Read => "read",
            Role::Admin => "admin",
        })
    }
}

/// An authenticated caller: its token's name and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name: the identity in the audit log and in
    /// `ControlCommand.issued_by`.
    pub name: String,
    /// What it may do.
    pub role: Role,
}

/// Why a call was refused before reaching its handler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No `authorization` metadata.
    #[error("missing bearer token (send `authorization: Bearer <token>`)")]
    Missing,
    /// The metadata is not `Bearer <token>`.
    #[error("malformed authorization metadata (expected `Bearer <token>`)")]
    Malformed,
    /// The token is not configured.
    #[error("unknown bearer token")]
    Unknown,
    /// The token's role does not allow the RPC.
    #[error("{caller:?} has the {role} role; {rpc} needs {needs}")]
    Forbidden {
        /// The caller's token name.
        caller: String,
        /// Its role.
        role: Role,
        /// The RPC.
        rpc: String,
        /// The role the RPC needs.
        needs: Role,
    },
}

/// A line of a token source that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: entry {entry}: {reason}")]
pub struct TokenError {
    /// The file path or environment variable.
    pub source_name: String,
    /// 1-based entry (line) number.
    pub entry: usize,
    /// What is wrong (never the token itself).
    pub reason: String,
}

struct Token {
    name: String,
    role: Role,
    digest: [u8; 32],
}

/// The configured tokens. Only their SHA-256 digests are kept.
#[derive(Default)]
pub struct TokenSet {
    tokens: Vec<Token>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.tokens.iter().map(|t| (&t.name, t.role)).collect();
        f.debug_struct("TokenSet").field("tokens", &names).finish()
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

impl TokenSet {
    /// Parses entries `name role token`, one per line or separated by `;`
    /// (for environment variables); blank entries and `#` comments are
    /// skipped. `source_name` names the source in errors.
    pub fn parse(text: &str, source_name: &str) -> Result<Self, TokenError> {
        let mut set = TokenSet::default();
        set.add_entries(text, source_name)?;
        Ok(set)
    }

    /// Reads a tokens file. On Unix, a file that group or others may read
    /// is refused: the tokens are secrets.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let source_name = path.display().to_string();
        let fail = |reason: String| TokenError {
            source_name: source_name.clone(),
            entry: 0,
            reason,
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|e| fail(format!("cannot read: {e}")))?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(fail(format!(
                    "group or others may access it (mode {:o}); chmod 600",
                    mode & 0o777
                )));
            }
        }
        let text = std::fs::read_to_string(path).map_err(|e| fail(format!("cannot read: {e}")))?;
        Self::parse(&text, &source_name)
    }

    /// Adds the entries of another source; a name or token used twice
    /// across sources is refused.
    pub fn add_entries(&mut self, text: &str, source_name: &str) -> Result<(), TokenError> {
        let entries = text.split(['\n', ';']).map(str::trim);
        for (i, entry) in entries.enumerate() {
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let token = parse_entry(entry).map_err(|reason| TokenError {
                source_name: source_name.to_owned(),
                entry: i + 1,
                reason,
            })?;
            let duplicate = self
                .tokens
                .iter()
                .find(|t| t.name == token.name || t.digest == token.digest);
            if let Some(other) = duplicate {
                return Err(TokenError {
                    source_name: source_name.to_owned(),
                    entry: i + 1,
                    reason: format!("name or token already used by {:?}", other.name),
                });
            }
            self.tokens.push(token);
        }
        Ok(())
    }

    /// Whether no token is configured (then the admin service is off).
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Number of configured tokens.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The caller presenting `authorization` (the raw metadata value),
    /// allowed to call `rpc`.
    pub fn authorize(&self, authorization: Option<&[u8]>, rpc: &str) -> Result<Caller, AuthError> {
        let caller = self.authenticate(authorization)?;
        let needs = Role::required_for(rpc);
        if caller.role >= needs {
            Ok(caller)
        } else {
            Err(AuthError::Forbidden {
                caller: caller.name,
                role: caller.role,
                rpc: rpc.to_owned(),
                needs,
            })
        }
    }

    /// The caller whose token is in `authorization`; every configured
    /// token is compared, in constant time.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Caller, AuthError> {
        let value = authorization.ok_or(AuthError::Missing)?;
        let token = bearer_token(value).ok_or(AuthError::Malformed)?;
        let presented = digest(token);
        // 0 = no match; i + 1 = token i. No branch depends on a secret.
        let mut matched = 0_u32;
        for (i, token) in self.tokens.iter().enumerate() {
            let index = u32::try_from(i + 1).expect("fewer than 2^32 tokens");
            let equal = presented.ct_eq(&token.digest);
            matched = u32::conditional_select(&matched, &index, equal);
        }
        let index = usize::try_from(matched).expect("u32 fits usize");
        match index.checked_sub(1).and_then(|i| self.tokens.get(i)) {
            Some(token) => Ok(Caller {
                name: token.name.clone(),
                role: token.role,
            }),
            None => Err(AuthError::Unknown),
        }
    }
}

/// The token of `Bearer <token>` (scheme case-insensitive, RFC 6750).
fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn parse_entry(entry: &str) -> Result<Token, String> {
    let fields: Vec<&str> = entry.split_whitespace().collect();
    let [name, role, token] = fields[..] else {
        return Err(format!(
            "expected `name role token`, found {} field(s)",
            fields.len()
        ));
    };
    let name_ok = name.len() <= MAX_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !name_ok {
        return Err(format!(
            "the name must be at most {MAX_NAME_BYTES} of A-Z a-z 0-9 . _ @ -"
        ));
    }
    // No field is echoed in errors: a line with its fields in the wrong
    // order would show its token in the log.
    let role = Role::parse(role).ok_or("the role is neither read nor admin")?;
    if token.len() < MIN_TOKEN_BYTES {
        return Err(format!("the token is shorter than {MIN_TOKEN_BYTES} bytes"));
    }
    Ok(Token {
        name: name.to_owned(),
        role,
        digest: digest(token.as_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKENS: &str = "
# operators
alice admin aaaaaaaaaaaaaaaaaaaa
dash  read  bbbbbbbbbbbbbbbbbbbb
";

    #[test]
    fn tokens_authenticate_their_name_and_role() {
        let set = TokenSet::parse(TOKENS, "test").unwrap();
        assert_eq!(set.len(), 2);
        let alice = set
            .authenticate(Some(b"Bearer aaaaaaaaaaaaaaaaaaaa"))
            .unwrap();
        assert_eq!((alice.name.as_str(), alice.role), ("alice", Role::Admin));
        let dash = set
            .authenticate(Some(b"bearer  bbbbbbbbbbbbbbbbbbbb "))
            .unwrap();
        assert_eq!((dash.name.as_str(), dash.role), ("dash", Role::Read));
    }

    #[test]
    fn missing_malformed_and_unknown_tokens_are_told_apart() {
        let set = TokenSet::parse(TOKENS, "test").unwrap();
        assert_eq!(set.authenticate(None), Err(AuthError::Missing));
        for bad in [
            &b"aaaaaaaaaaaaaaaaaaaa"[..],
            b"Basic aaaa",
            b"Bearer ",
            b"Bear",
        ] {
            assert_eq!(set.authenticate(Some(bad)), Err(AuthError::Malformed));
        }
        for unknown in [
            &b"Bearer aaaaaaaaaaaaaaaaaaa"[..],
            b"Bearer aaaaaaaaaaaaaaaaaaaaa",
        ] {
            assert_eq!(set.authenticate(Some(unknown)), Err(AuthError::Unknown));
        }
        assert_eq!(
            TokenSet::default().authenticate(Some(b"Bearer aaaaaaaaaaaaaaaaaaaa")),
            Err(AuthError::Unknown)
        );
    }

    #[test]
    fn read_tokens_may_only_list() {
        let set = TokenSet::parse(TOKENS, "test").unwrap();
        let read = Some(&b"Bearer bbbbbbbbbbbbbbbbbbbb"[..]);
        assert!(set.authorize(read, "ListVersions").is_ok());
        for rpc in ["CreateVersion", "RollbackVersion", "SomeFutureRpc"] {
            assert!(matches!(
                set.authorize(read, rpc),
                Err(AuthError::Forbidden {
                    needs: Role::Admin,
                    ..
                })
            ));
        }
        let admin = Some(&b"Bearer aaaaaaaaaaaaaaaaaaaa"[..]);
        assert!(set.authorize(admin, "SomeFutureRpc").is_ok());
    }

    #[test]
    fn bad_entries_are_named_without_showing_the_token() {
        let cases = [
            ("alice admin", "found 2"),
            ("alice cccccccccccccccccccc admin", "neither read nor admin"),
            ("alice admin short", "shorter than 16"),
            ("al/ice admin cccccccccccccccccccc", "must be at most"),
            (
                "alice admin cccccccccccccccccccc; alice read dddddddddddddddddddd",
                "already used",
            ),
            (
                "alice admin cccccccccccccccccccc; bob read cccccccccccccccccccc",
                "already used",
            ),
        ];
        for (text, reason) in cases {
            let err = TokenSet::parse(text, "ENV").unwrap_err();
            assert!(err.to_string().contains(reason), "{err}");
            assert!(err.to_string().starts_with("ENV: entry"), "{err}");
            assert!(!err.to_string().contains("cccc"), "{err} shows a token");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_tokens_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, TOKENS).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = TokenSet::from_file(&path).unwrap_err();
        assert!(err.reason.contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(TokenSet::from_file(&path).unwrap().len(), 2);
    }
}
