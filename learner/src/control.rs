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
            Some(Wire::TriggerSavepoint(_)) | Some(Wire::RollbackVersion(_)) => {
                return Err(invalid(
                    "savepoint and rollback commands are not applied by this learner yet".into(),
                ));
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
