//! The standalone server's control path: a [`ControlPlane`] that produces
//! each stamped `ControlCommand` (protobuf, keyed by its id) to partition
//! 0 of the learners' `control` topic — the partition every learner's
//! `ControlReader` reads whole — and returns once the broker acknowledged
//! it (`acks=all`), or fails within the configured delivery timeout.
//!
//! A full producer queue is `Busy` and a delivery that librdkafka reports
//! failed and not persisted is `Unavailable`: both map to `UNAVAILABLE`
//! with a message naming the topic, and the command did not go out. No
//! acknowledgement in time, a failure after which the record may have been
//! written, or a closed producer is `Unconfirmed` (`DEADLINE_EXCEEDED`):
//! the command may still arrive, so a client must not resend it blindly
//! (a resend gets a new command id). The learners apply each command id at
//! most once.

use std::time::Duration;

use posterior_proto::v1;
use prost::Message as _;
use rdkafka::ClientConfig;
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{DeliveryResult, Message};
use rdkafka::producer::{BaseRecord, ProducerContext, ThreadedProducer};
use tokio::sync::oneshot;

use crate::config::{DELIVERY_REPORT_MARGIN_MS, KafkaControlConfig};
use crate::control::{ControlPlane, ControlPlaneError};

/// Commands the producer holds unacknowledged before it refuses more.
const QUEUE_MESSAGES_MAX: &str = "1024";

/// A failed delivery: librdkafka's error, and whether the record may
/// have been written all the same (sent, but not acknowledged).
#[derive(Debug)]
struct Failed {
    error: String,
    maybe_written: bool,
}

/// Where a delivery report goes: the admin call waiting for it.
type Waiter = Box<oneshot::Sender<Result<i64, Failed>>>;

/// Hands each delivery report to the call that produced the record.
struct Reports;

impl ClientContext for Reports {}

impl ProducerContext for Reports {
    type DeliveryOpaque = Waiter;

    fn delivery(&self, result: &DeliveryResult<'_>, waiter: Waiter) {
        let outcome = match result {
            Ok(message) => Ok(message.offset()),
            Err((error, message)) => {
                // SAFETY: the message is librdkafka's, valid for the whole
                // callback; `rd_kafka_message_status` only reads it.
                #[allow(unsafe_code)]
                let status = unsafe { rdkafka::bindings::rd_kafka_message_status(message.ptr()) };
                Err(Failed {
                    error: error.to_string(),
                    maybe_written: status
                        != rdkafka::bindings::rd_kafka_msg_status_t::RD_KAFKA_MSG_STATUS_NOT_PERSISTED,
                })
            }
        };
        // The call may have timed out and gone: nobody to tell.
        let _ = waiter.send(outcome);
    }
}

/// Admin commands to the Kafka `control` topic.
pub struct KafkaControlPlane {
    producer: ThreadedProducer<Reports>,
    topic: String,
    delivery_timeout: Duration,
}

impl std::fmt::Debug for KafkaControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaControlPlane")
            .field("topic", &self.topic)
            .field("delivery_timeout", &self.delivery_timeout)
            .finish_non_exhaustive()
    }
}

impl KafkaControlPlane {
    /// A producer to `config`'s topic. Connecting is lazy: a broker that is
    /// down fails the admin calls (UNAVAILABLE), not the server's start.
    pub fn open(config: &KafkaControlConfig) -> Result<Self, KafkaError> {
        let delivery_timeout = Duration::from_millis(config.delivery_timeout_ms);
        let producer = ClientConfig::new()
            .set("bootstrap.servers", &config.brokers)
            .set("acks", "all")
            .set("linger.ms", "0")
            .set("message.timeout.ms", config.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", QUEUE_MESSAGES_MAX)
            .create_with_context(Reports)?;
        Ok(Self {
            producer,
            topic: config.topic.clone(),
            delivery_timeout,
        })
    }

    /// The topic commands go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

#[tonic::async_trait]
impl ControlPlane for KafkaControlPlane {
    async fn send(&self, command: v1::ControlCommand) -> Result<(), ControlPlaneError> {
        let topic = &self.topic;
        let bytes = command.encode_to_vec();
        let (tx, rx) = oneshot::channel();
        let record = BaseRecord::with_opaque_to(topic, Box::new(tx))
            .partition(0)
            .key(&command.command_id)
            .payload(&bytes);
        if let Err((error, _)) = self.producer.send(record) {
            return Err(match error {
                KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull) => {
                    ControlPlaneError::Busy(format!("the producer to topic {topic:?} is full"))
                }
                other => {
                    ControlPlaneError::Unavailable(format!("send to topic {topic:?}: {other}"))
                }
            });
        }
        // librdkafka fails the delivery itself after message.timeout.ms;
        // the margin covers its report arriving.
        let margin = Duration::from_millis(DELIVERY_REPORT_MARGIN_MS);
        let waited = tokio::time::timeout(self.delivery_timeout + margin, rx).await;
        match waited {
            Ok(Ok(Ok(offset))) => {
                tracing::info!(
                    command_id = %command.command_id,
                    %topic,
                    offset,
                    "admin command delivered to the control topic"
                );
                Ok(())
            }
            Ok(Ok(Err(Failed {
                error,
                maybe_written: false,
            }))) => Err(ControlPlaneError::Unavailable(format!(
                "topic {topic:?} did not take the command: {error}"
            ))),
            Ok(Ok(Err(Failed {
                error,
                maybe_written: true,
            }))) => Err(ControlPlaneError::Unconfirmed(format!(
                "topic {topic:?} may have written the command without acknowledging it: {error}"
            ))),
            Ok(Err(_)) => Err(ControlPlaneError::Unconfirmed(format!(
                "the producer to topic {topic:?} stopped before reporting the delivery"
            ))),
            Err(_) => Err(ControlPlaneError::Unconfirmed(format!(
                "no acknowledgement from topic {topic:?} within {} ms",
                self.delivery_timeout.as_millis()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_broker_fails_within_the_timeout_naming_the_topic() {
        let plane = KafkaControlPlane::open(&KafkaControlConfig {
            brokers: "127.0.0.1:1".into(),
            topic: "control-x".into(),
            delivery_timeout_ms: 300,
        })
        .unwrap();
        let start = std::time::Instant::now();
        let error = plane
            .send(v1::ControlCommand {
                command_id: "c1".into(),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
        // Never sent: librdkafka reports it not persisted (UNAVAILABLE, a
        // retry is safe), unless its report comes after the wait.
        match error {
            ControlPlaneError::Unavailable(message) | ControlPlaneError::Unconfirmed(message) => {
                assert!(message.contains("\"control-x\""), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }
}
