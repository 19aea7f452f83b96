//! The control path from the admin service to the learners: a
//! [`ControlPlane`] takes a fully stamped `ControlCommand` (id, event time,
//! issuer) and delivers it to every learner, which applies it when its
//! watermark reaches the command's event time.
//!
//! Two transports fit behind the trait: [`InProcessControlPlane`] (a
//! bounded channel the embedding binary forwards to the learner's
//! `CommandInbox`, which confirms each command once a checkpoint holds
//! it) and, for standalone deployments, a producer to the
//! Kafka `control` topic (one partition, read whole by every learner),
//! which implements the same trait. Delivery is at least once: the
//! learner applies each command id at most once, so a resend is harmless.

use std::fmt::Debug;
use std::time::Duration;

use posterior_proto::v1;
use tokio::sync::{mpsc, oneshot};

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
///
/// Made with [`InProcessControlPlane::durable`], a send returns only once
/// the learner confirms the command durable (checkpointed with its state),
/// as the Kafka path returns once the broker has the command: an accepted
/// admin call then survives a crash of the learner. Made with
/// [`InProcessControlPlane::channel`], a send returns once queued (for
/// tests and embeddings without durable state).
#[derive(Debug, Clone)]
pub struct InProcessControlPlane {
    commands: mpsc::Sender<Handover>,
    /// How long a send waits for the learner's confirmation; `None`: it
    /// does not wait.
    confirm_within: Option<Duration>,
}

/// A command on its way to the learner, with the confirmation the sender
/// waits for (when it does).
#[derive(Debug)]
pub struct Handover {
    /// The command, as the admin service stamped it.
    pub command: v1::ControlCommand,
    durable: Durable,
}

impl Handover {
    /// The command and its confirmation, to hand on separately.
    pub fn into_parts(self) -> (v1::ControlCommand, Durable) {
        (self.command, self.durable)
    }
}

/// The confirmation a sender may be waiting for: call
/// [`Durable::confirm`] once the command is durable. Dropping it
/// unconfirmed (the learner stopped or failed first) reports the command
/// to the sender as unconfirmed.
#[derive(Debug)]
pub struct Durable(Option<oneshot::Sender<()>>);

impl Durable {
    /// Tells the sender the command is durable.
    pub fn confirm(self) {
        if let Some(waiting) = self.0 {
            // A sender that stopped waiting (its timeout, a cancelled
            // call) has nothing left to tell.
            let _ = waiting.send(());
        }
    }
}

impl InProcessControlPlane {
    /// A control plane holding at most `capacity` undelivered commands,
    /// whose sends return once the command is queued, and the receiver
    /// the learner side drains.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Handover>) {
        Self::with_confirmation(capacity, None)
    }

    /// [`InProcessControlPlane::channel`] whose sends wait up to
    /// `confirm_within` for the learner to confirm each command durable
    /// ([`Durable::confirm`]); without that confirmation a send fails
    /// `Unconfirmed`.
    pub fn durable(capacity: usize, confirm_within: Duration) -> (Self, mpsc::Receiver<Handover>) {
        Self::with_confirmation(capacity, Some(confirm_within))
    }

    fn with_confirmation(
        capacity: usize,
        confirm_within: Option<Duration>,
    ) -> (Self, mpsc::Receiver<Handover>) {
        let (commands, receiver) = mpsc::channel(capacity.max(1));
        let plane = Self {
            commands,
            confirm_within,
        };
        (plane, receiver)
    }
}

#[tonic::async_trait]
impl ControlPlane for InProcessControlPlane {
    async fn send(&self, command: v1::ControlCommand) -> Result<(), ControlPlaneError> {
        let (durable, confirmed) = match self.confirm_within {
            Some(within) => {
                let (tx, rx) = oneshot::channel();
                (Durable(Some(tx)), Some((within, rx)))
            }
            None => (Durable(None), None),
        };
        let id = command.command_id.clone();
        self.commands
            .try_send(Handover { command, durable })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    ControlPlaneError::Busy("the learner's command queue is full".into())
                }
                mpsc::error::TrySendError::Closed(_) => {
                    ControlPlaneError::Unavailable("the learner stopped reading commands".into())
                }
            })?;
        let Some((within, confirmed)) = confirmed else {
            return Ok(());
        };
        match tokio::time::timeout(within, confirmed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ControlPlaneError::Unconfirmed(format!(
                "the learner stopped before command {id:?} was checkpointed"
            ))),
            Err(_) => Err(ControlPlaneError::Unconfirmed(format!(
                "the learner did not confirm command {id:?} checkpointed within {} ms",
                within.as_millis()
            ))),
        }
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
        assert_eq!(rx.recv().await.unwrap().command.command_id, "a");
        assert_eq!(rx.recv().await.unwrap().command.command_id, "b");
        drop(rx);
        assert!(matches!(
            plane.send(command("d")).await,
            Err(ControlPlaneError::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn a_durable_send_returns_only_once_the_learner_confirms() {
        let (plane, mut rx) = InProcessControlPlane::durable(2, Duration::from_secs(30));
        let sending = tokio::spawn(async move { plane.send(command("a")).await });
        let (command, durable) = rx.recv().await.unwrap().into_parts();
        assert_eq!(command.command_id, "a");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sending.is_finished(), "returned before the confirmation");
        durable.confirm();
        sending.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_durable_send_the_learner_drops_or_leaves_unconfirmed_is_unconfirmed() {
        let (plane, mut rx) = InProcessControlPlane::durable(2, Duration::from_millis(100));
        let plane = std::sync::Arc::new(plane);
        let dropping = {
            let plane = std::sync::Arc::clone(&plane);
            tokio::spawn(async move { plane.send(command("dropped")).await })
        };
        // Taken, then dropped without a confirmation (a learner that
        // stopped before its checkpoint).
        drop(rx.recv().await.unwrap());
        match dropping.await.unwrap() {
            Err(ControlPlaneError::Unconfirmed(message)) => {
                assert!(message.contains("\"dropped\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
        // Taken and held past the wait.
        let held = tokio::spawn(async move { plane.send(command("held")).await });
        let _kept = rx.recv().await.unwrap();
        match held.await.unwrap() {
            Err(ControlPlaneError::Unconfirmed(message)) => {
                assert!(
                    message.contains("\"held\"") && message.contains("100 ms"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn without_a_control_path_every_command_is_refused() {
        assert!(matches!(
            NoControlPlane.send(command("a")).await,
            Err(ControlPlaneError::Unavailable(_))
        ));
    }
}
