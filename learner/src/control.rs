//! The control path on the learner's side: admin commands (create, fork,
//! retire a version) that change the registry at run time, each at an
//! event time, so that every learner and every replay applies it at the
//! same point of the input.
//!
//! A command is *scheduled* when it arrives (from the Kafka `control`
//! topic or in process), waits in the engine's state — checkpointed with
//! everything else — and is *applied* when the released watermark reaches
//! its event time: after every sample below that time and before every
//! sample at or after it (see [`crate::engine::Engine::schedule`]). Each
//! command id is applied at most once.

use posterior_proto::v1;
use posterior_proto::v1::control_command::Command as Wire;

use crate::version::VersionSpec;

/// A decoded admin command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Register a new version with the prior of its spec.
    Create(VersionSpec),
    /// Register `to`, a copy of `from`'s spec with `overrides`, whose keys
    /// start from `from`'s current parameters (a warm start).
    Fork {
        /// Source version.
        from: String,
        /// New version.
        to: String,
        /// Spec fields to change.
        overrides: v1::VersionOverrides,
    },
    /// Stop a version: its samples go to the dead letters from now on; its
    /// parameters stay.
    Retire(String),
    /// Take a savepoint of the state at exactly the command's event time
    /// (every sample below it applied, none at or after it), named by the
    /// command id.
    Savepoint {
        /// Free text stored in the manifest.
        label: String,
    },
    /// Replace one version's parameters with those a savepoint holds.
    Rollback {
        /// The version.
        version: String,
        /// The savepoint's id: a directory name under the learner's
        /// savepoint root, never a path.
        savepoint_id: String,
    },
}

impl Command {
    /// Whether applying the command needs the runner's I/O (a savepoint
    /// to write or to read): the engine then stops releasing at the
    /// command's event time and hands it over (see
    /// [`crate::engine::Engine::barrier`]).
    pub fn is_barrier(&self) -> bool {
        matches!(self, Self::Savepoint { .. } | Self::Rollback { .. })
    }
}

/// Longest plain id (savepoint id, or a savepoint command's id), in bytes.
pub const MAX_PLAIN_ID_BYTES: usize = 128;

/// Checks a plain id — a savepoint's directory name: 1..=128 bytes of
/// `A-Z a-z 0-9 . _ -`, not starting with `.`, without `..`. Never a
/// path, so a command can only name a savepoint inside the learner's own
/// savepoint root.
pub fn check_plain_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("must not be empty")
    } else if id.len() > MAX_PLAIN_ID_BYTES {
        Err("is longer than 128 bytes")
    } else if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Err("may only hold A-Z a-z 0-9 . _ - (it is an id, never a path)")
    } else if id.starts_with('.') || id.contains("..") {
        Err("must not start with '.' or contain '..'")
    } else {
        Ok(())
    }
}

/// A command with its id and event time, as scheduled.
#[derive(Debug, Clone, PartialEq)]
pub struct Scheduled {
    /// Unique id.
    pub id: String,
    /// Event time it takes effect at.
    pub at_ms: i64,
    /// Who asked.
    pub issued_by: String,
    /// What to do.
    pub command: Command,
    /// The wire form, kept to store the command exactly as received.
    pub wire: v1::ControlCommand,
}

/// What became of a command, for the log and the admin API.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The command's id.
    pub id: String,
    /// Who asked.
    pub issued_by: String,
    /// The event time it was stamped with.
    pub at_ms: i64,
    /// Where it was applied: its own time, or the learner's watermark
    /// when it arrived late.
    pub applied_at_ms: i64,
    /// What it did, or why the registry refused it.
    pub result: Result<String, String>,
}

/// Why a control record was not scheduled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// The record is not a `ControlCommand`.
    #[error("undecodable control record: {0}")]
    Undecodable(String),
    /// A required field is missing or invalid.
    #[error("invalid control command {id:?}: {reason}")]
    Invalid {
        /// The command's id (may be empty).
        id: String,
        /// What is wrong.
        reason: String,
    },
}

impl TryFrom<v1::ControlCommand> for Scheduled {
    type Error = ControlError;

    fn try_from(wire: v1::ControlCommand) -> Result<Self, Self::Error> {
        let invalid = |reason: String| ControlError::Invalid {
            id: wire.command_id.clone(),
            reason,
        };
        if wire.command_id.is_empty() {
            return Err(invalid("command_id must not be empty".into()));
        }
        let command = match wire.command.clone() {
            Some(Wire::CreateVersion(req)) => {
                let spec = req
                    .spec
                    .ok_or_else(|| invalid("create_version.spec is missing".into()))?;
                Command::Create(
                    VersionSpec::try_from(spec)
                        .map_err(|e| invalid(format!("create_version.spec: {e}")))?,
                )
            }
            Some(Wire::ForkVersion(req)) => {
                if req.from.is_empty() || req.to.is_empty() {
                    return Err(invalid("fork_version needs from and to".into()));
                }
                if let Some(t) = req.overrides.as_ref().and_then(|o| o.reward_threshold)
                    && !t.is_finite()
                {
                    return Err(invalid(format!(
                        "fork_version.overrides.reward_threshold is {t}"
                    )));
                }
                if let Some(ms) = req
                    .overrides
                    .as_ref()
                    .and_then(|o| o.forgetting_half_life_ms)
                    && ms < 0
                {
                    return Err(invalid(format!(
                        "fork_version.overrides.forgetting_half_life_ms is {ms}; 0 turns forgetting off, > 0 sets the half-life"
                    )));
                }
                if req
                    .overrides
                    .as_ref()
                    .and_then(|o| o.reward_label.as_deref())
                    == Some("")
                {
                    return Err(invalid(
                        "fork_version.overrides.reward_label must not be empty".into(),
                    ));
                }
                Command::Fork {
                    from: req.from,
                    to: req.to,
                    overrides: req.overrides.unwrap_or_default(),
                }
            }
            Some(Wire::RetireVersion(req)) => {
                if req.name.is_empty() {
                    return Err(invalid("retire_version.name must not be empty".into()));
                }
                Command::Retire(req.name)
            }
            Some(Wire::TriggerSavepoint(req)) => {
                // The command id names the savepoint's directory.
                check_plain_id(&wire.command_id)
                    .map_err(|why| invalid(format!("a savepoint's command_id {why}")))?;
                if req.label.chars().any(char::is_control) {
                    return Err(invalid(
                        "trigger_savepoint.label must not hold control characters".into(),
                    ));
                }
                Command::Savepoint { label: req.label }
            }
            Some(Wire::RollbackVersion(req)) => {
                if req.version.is_empty() {
                    return Err(invalid("rollback_version.version must not be empty".into()));
                }
                check_plain_id(&req.savepoint_id)
                    .map_err(|why| invalid(format!("rollback_version.savepoint_id {why}")))?;
                Command::Rollback {
                    version: req.version,
                    savepoint_id: req.savepoint_id,
                }
            }
            None => return Err(invalid("no command set".into())),
        };
        Ok(Self {
            id: wire.command_id.clone(),
            at_ms: wire.effective_event_time_ms,
            issued_by: wire.issued_by.clone(),
            command,
            wire,
        })
    }
}

impl Scheduled {
    /// Decodes a control record (a protobuf `ControlCommand`).
    pub fn decode(bytes: &[u8]) -> Result<Self, ControlError> {
        let wire = <v1::ControlCommand as prost::Message>::decode(bytes)
            .map_err(|e| ControlError::Undecodable(e.to_string()))?;
        Self::try_from(wire)
    }
}

/// `from`'s spec with `overrides` applied and the name `to`.
pub fn forked_spec(from: &VersionSpec, to: &str, overrides: &v1::VersionOverrides) -> VersionSpec {
    let mut spec = from.clone();
    spec.name = to.to_owned();
    if let Some(label) = &overrides.reward_label {
        spec.reward.label.clone_from(label);
    }
    if let Some(threshold) = overrides.reward_threshold {
        spec.reward.threshold = threshold;
    }
    if let Some(ms) = overrides.forgetting_half_life_ms {
        spec.model.forgetting = match ms {
            0 => None,
            // Negative values are refused when the command is decoded.
            ms => crate::posterior::Forgetting::new(ms).ok(),
        };
    }
    if let Some(weighted) = overrides.use_sample_weight {
        spec.use_sample_weight = weighted;
    }
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retire(id: &str) -> v1::ControlCommand {
        v1::ControlCommand {
            command_id: id.into(),
            effective_event_time_ms: 7,
            issued_by: "ops".into(),
            command: Some(Wire::RetireVersion(v1::RetireVersionRequest {
                name: "beta".into(),
            })),
        }
    }

    #[test]
    fn decodes_a_command_and_names_what_is_wrong_with_a_bad_one() {
        let ok = Scheduled::decode(&prost::Message::encode_to_vec(&retire("c1"))).unwrap();
        assert_eq!(ok.command, Command::Retire("beta".into()));
        assert_eq!((ok.id.as_str(), ok.at_ms), ("c1", 7));

        let err = Scheduled::decode(b"\xff\xff").unwrap_err();
        assert!(matches!(err, ControlError::Undecodable(_)), "{err}");
        let err = Scheduled::try_from(retire("")).unwrap_err();
        assert!(err.to_string().contains("command_id"), "{err}");
        let mut none = retire("c2");
        none.command = None;
        assert!(
            Scheduled::try_from(none)
                .unwrap_err()
                .to_string()
                .contains("no command")
        );
        let mut bad_fork = retire("c3");
        bad_fork.command = Some(Wire::ForkVersion(v1::ForkVersionRequest {
            from: "beta".into(),
            to: "beta-b".into(),
            overrides: Some(v1::VersionOverrides {
                reward_threshold: Some(f64::NAN),
                ..Default::default()
            }),
        }));
        let err = Scheduled::try_from(bad_fork).unwrap_err();
        assert!(err.to_string().contains("reward_threshold"), "{err}");
    }

    #[test]
    fn savepoint_and_rollback_commands_name_savepoints_by_plain_ids_only() {
        let savepoint = |id: &str, label: &str| v1::ControlCommand {
            command_id: id.into(),
            effective_event_time_ms: 9,
            issued_by: "ops".into(),
            command: Some(Wire::TriggerSavepoint(v1::TriggerSavepointRequest {
                label: label.into(),
            })),
        };
        let ok = Scheduled::try_from(savepoint("0af3", "before launch")).unwrap();
        assert_eq!(
            ok.command,
            Command::Savepoint {
                label: "before launch".into()
            }
        );
        assert!(ok.command.is_barrier());
        for bad in ["../etc", "a/b", ".hidden", "x".repeat(129).as_str()] {
            let err = Scheduled::try_from(savepoint(bad, "")).unwrap_err();
            assert!(err.to_string().contains("command_id"), "{bad}: {err}");
        }
        let err = Scheduled::try_from(savepoint("ok", "two\nlines")).unwrap_err();
        assert!(err.to_string().contains("label"), "{err}");

        let rollback = |version: &str, savepoint_id: &str| v1::ControlCommand {
            command_id: "r1".into(),
            effective_event_time_ms: 9,
            issued_by: "ops".into(),
            command: Some(Wire::RollbackVersion(v1::RollbackVersionRequest {
                version: version.into(),
                savepoint_id: savepoint_id.into(),
            })),
        };
        let ok = Scheduled::try_from(rollback("beta", "sp-1700000000000")).unwrap();
        assert_eq!(
            ok.command,
            Command::Rollback {
                version: "beta".into(),
                savepoint_id: "sp-1700000000000".into()
            }
        );
        let err = Scheduled::try_from(rollback("beta", "/var/sp")).unwrap_err();
        assert!(err.to_string().contains("savepoint_id"), "{err}");
        let err = Scheduled::try_from(rollback("", "sp")).unwrap_err();
        assert!(err.to_string().contains("version"), "{err}");
        assert!(!Command::Retire("beta".into()).is_barrier());
    }

    #[test]
    fn a_fork_keeps_the_model_and_changes_only_the_overridden_fields() {
        let from = VersionSpec::try_from(v1::VersionSpec {
            name: "beta".into(),
            model: Some(v1::version_spec::Model::Beta(v1::BetaModel {
                alpha0: 1.0,
                beta0: 20.0,
            })),
            reward_label: "click".into(),
            reward_threshold: 0.5,
            forgetting_half_life_ms: 0,
            use_sample_weight: false,
        })
        .unwrap();
        let fork = forked_spec(
            &from,
            "beta-order",
            &v1::VersionOverrides {
                reward_label: Some("order".into()),
                forgetting_half_life_ms: Some(60_000),
                ..Default::default()
            },
        );
        assert_eq!(fork.name, "beta-order");
        assert_eq!(fork.model.kind, from.model.kind);
        assert_eq!(fork.reward.label, "order");
        assert_eq!(fork.reward.threshold, 0.5);
        assert_eq!(
            fork.model.forgetting.map(|f| f.half_life_ms()),
            Some(60_000)
        );
        assert!(!fork.use_sample_weight);
    }
}
