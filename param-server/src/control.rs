//! The control path from the admin service to the learners: a
//! [`ControlPlane`] takes a fully stamped `ControlCommand` (id, event time,
//! issuer) and delivers it to every learner, which applies it when its
//! watermark reaches the command's event time.
//!
//! Two transports fit behind the trait: [`InProcessControlPlane`] (a
//! bounded channel the embedding binary forwards to the learner's
//! `CommandInbox`) and, for standalone deployments, a producer to the
//! Kafka `control` topic (one partition, read whole by every learner),
//! which implements the same trait. Delivery is at least once: the
//! learner applies each command id at most once, so a resend is harmless.

use std::fmt::Debug;

use posterior_proto::v1;
use tokio::sync::mpsc;

/// Why a command could not be handed to the learners. `Busy` and
/// `Unavailable` map to `UNAVAILABLE`: the command did not go out, and
/// the caller may retry the same admin call later. `Unconfirmed` maps to
/// `DEADLINE_EXCEEDED`: the command may still reach the learners, and a
/// retry would send it again under a new id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlPlaneError {
    /// The path is full (bounded queue, broker back-pressure): retry later.
    #[error("control path busy: {0}")]
    Busy(String),
    /// No learner is reachable: the path is closed or not configured.
    #[error("control path unavailable: {0}")]
    Unavailable(String),
    /// The command went out, but its delivery was not confirmed: it may
    /// still be applied.
    #[error("control path did not confirm the command, which may still be applied: {0}")]
    Unconfirmed(String),
}

/// Delivers admin commands to the learner(s). Implementations must not
/// change the command: it is stamped once, by the admin service.
#[tonic::async_trait]
pub trait ControlPlane: Send + Sync + Debug {
    /// Hands `command` to the learners; returns once it is accepted for
    /// delivery (queued in process, or acknowledged by the broker).
    async fn send(&self, command: v1::ControlCommand) -> Result<(), ControlPlaneError>;
}

/// The embedded control path: a bounded channel whose receiver the
/// embedding binary forwards to the learner's `CommandInbox`. A full
/// channel refuses at once (`Busy`) rather than blocking the admin call.
#[derive(Debug, Clone)]
pub struct InProcessControlPlane {
    commands: mpsc::Sender<v1::ControlCommand>,
}

impl InProcessControlPlane {
    /// A control plane holding at most `capacity` undelivered commands,
    /// and the receiver the learner side drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<v1::ControlCommand>) {
        let (commands, receiver) = mpsc::channel(capacity.max(1));
        (Self { commands }, receiver)
    }
}

#[tonic::async_trait]
impl ControlPlane for InProcessControlPlane {
    async fn send(&self, command: v1::ControlCommand) -> Result<(), ControlPlaneError> {
        self.commands.try_send(command).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => {
                ControlPlaneError::Busy("the learner's command queue is full".into())
            }
            mpsc::error::TrySendError::Closed(_) => {
                ControlPlaneError::Unavailable("the learner stopped reading commands".into())
            }
        })
    }
}

/// A param-server with no learner to reach (the standalone binary until
/// the `control` topic producer exists): every command is refused with
/// `Unavailable`, so no admin call reports a success that nothing applies.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoControlPlane;

#[tonic::async_trait]
impl ControlPlane for NoControlPlane {
    async fn send(&self, _command: v1::ControlCommand) -> Result<(), ControlPlaneError> {
        Err(ControlPlaneError::Unavailable(
            "no control path is configured for this param-server".into(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(id: &str) -> v1::ControlCommand {
        v1::ControlCommand {
            command_id: id.into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn in_process_commands_arrive_in_order_and_a_full_queue_refuses() {
        let (plane, mut rx) = InProcessControlPlane::channel(2);
        let plane: &dyn ControlPlane = &plane;
        plane.send(command("a")).await.unwrap();
        plane.send(command("b")).await.unwrap();
        assert!(matches!(
            plane.send(command("c")).await,
            Err(ControlPlaneError::Busy(_))
        ));
        assert_eq!(rx.recv().await.unwrap().command_id, "a");
        assert_eq!(rx.recv().await.unwrap().command_id, "b");
        drop(rx);
        assert!(matches!(
            plane.send(command("d")).await,
            Err(ControlPlaneError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn without_a_control_path_every_command_is_refused() {
        assert!(matches!(
            NoControlPlane.send(command("a")).await,
            Err(ControlPlaneError::Unavailable(_))
        ));
    }
}
