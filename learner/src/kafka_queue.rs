//! A partition's own librdkafka queue, read many records per call.
//!
//! rdkafka's `PartitionQueue::poll` hands out one message per call, and
//! per message it reads the clock (in Rust and in librdkafka), serves
//! the queue through librdkafka's event layer and allocates a reference
//! count for the event. In bench 3 of issue 3 the Kafka reader thread
//! spent 20–28 % of its time in clock reads and up to 17 % in the queue's
//! lock. [`LaneQueue::take`] calls `rd_kafka_consume_batch_queue`
//! instead: up to `max` records per call, no clock read at a zero
//! timeout, no allocation per record. librdkafka serves the queue the
//! same way for both calls — outdated records after a pause or a seek are
//! dropped, control records skipped, and the partition's consumed
//! position advanced past what it returns — with one difference: this
//! call advances that position past the events it returns too (a
//! partition's end at E moves it to E + 1), which a pause then keeps as
//! where to go on. The reader therefore seeks a partition to its own
//! position before resuming it (`read_ahead::Reader::apply_pauses`).
//!
//! The only module of the crate that calls librdkafka directly (also for
//! [`cached_high_watermark`]); each call states what keeps it sound.

#![allow(unsafe_code)]

use std::ffi::{CString, c_void};
use std::ptr::NonNull;
use std::sync::Arc;

use rdkafka::bindings as rdsys;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;

/// One entry of a partition queue: a record, or an event of the partition.
#[derive(Debug)]
pub(crate) enum Entry<'a> {
    /// A record.
    Record(RawRecord<'a>),
    /// The partition's end: every record below `next_offset` has been
    /// delivered, and nothing is at or past it yet. With transactions the
    /// last record can be below `next_offset - 1` (a commit marker, or
    /// aborted records, skipped by librdkafka), so the end is the only
    /// place that offset is known.
    End {
        /// Partition.
        partition: u32,
        /// The offset the next record will have.
        next_offset: u64,
    },
    /// An error, as rdkafka's own poll would report it.
    Error(KafkaError),
}

/// A record as librdkafka holds it, borrowed for the duration of a
/// [`LaneQueue::take`] callback.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawRecord<'a> {
    /// Partition.
    pub partition: u32,
    /// Offset.
    pub offset: u64,
    /// The value; `None` for a record without one.
    pub payload: Option<&'a [u8]>,
}

/// The callback a queue calls when it turns non-empty (a double box: the
/// trait object's fat pointer cannot travel through a C `void *`).
type Wake = Box<Box<dyn Fn() + Send + Sync>>;

/// The queue of one partition, split off the consumer's common queue.
pub(crate) struct LaneQueue {
    queue: NonNull<rdsys::rd_kafka_queue_t>,
    partition: u32,
    /// Scratch for the messages of one [`LaneQueue::take`].
    taken: Vec<*mut rdsys::rd_kafka_message_t>,
    wake: Option<Wake>,
    /// Keeps the client alive until the queue is destroyed (in `drop`,
    /// which runs before the fields are dropped).
    _consumer: Arc<BaseConsumer>,
}

/// The high watermark of `partition` of `topic` that the consumer last
/// learnt from a fetch response, without asking the broker
/// (`rd_kafka_get_watermark_offsets`): never blocks, so a status pass on
/// the ingesting thread cannot wait on an unreachable broker. `None`
/// before the first fetch response of the partition or on an error.
pub(crate) fn cached_high_watermark(
    consumer: &BaseConsumer,
    topic: &str,
    partition: u32,
) -> Option<u64> {
    let topic = CString::new(topic).ok()?;
    let index = i32::try_from(partition).ok()?;
    let (mut low, mut high) = (-1_i64, -1_i64);
    // SAFETY: the client pointer is valid while `consumer` lives; `topic`
    // outlives the call; librdkafka writes the two offsets and keeps no
    // pointer to them.
    let err = unsafe {
        rdsys::rd_kafka_get_watermark_offsets(
            consumer.client().native_ptr(),
            topic.as_ptr(),
            index,
            &raw mut low,
            &raw mut high,
        )
    };
    (err == rdsys::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && high >= 0)
        .then_some(high as u64)
}

// SAFETY: librdkafka's queues may be used from any thread (they lock
// internally); the raw message pointers in `taken` never outlive one
// `take`, which needs `&mut self`.
unsafe impl Send for LaneQueue {}

impl LaneQueue {
    /// Gives `partition` of `topic` a queue of its own: librdkafka no
    /// longer forwards its records to the consumer's common queue. Call
    /// before the partition is assigned. `None` when the name has a NUL
    /// byte or librdkafka has no such partition.
    pub(crate) fn split(consumer: &Arc<BaseConsumer>, topic: &str, partition: u32) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        let index = i32::try_from(partition).ok()?;
        // SAFETY: the client pointer is valid while `consumer` lives (kept
        // in the result); `topic` outlives the call, which copies it.
        let queue = unsafe {
            rdsys::rd_kafka_queue_get_partition(
                consumer.client().native_ptr(),
                topic.as_ptr(),
                index,
            )
        };
        let queue = NonNull::new(queue)?;
        // SAFETY: `queue` is a live handle; a null destination stops the
        // forwarding.
        unsafe { rdsys::rd_kafka_queue_forward(queue.as_ptr(), std::ptr::null_mut()) };
        Some(Self {
            queue,
            partition,
            taken: Vec::new(),
            wake: None,
            _consumer: Arc::clone(consumer),
        })
    }

    /// The partition this queue holds.
    pub(crate) fn partition(&self) -> u32 {
        self.partition
    }

    /// Calls `wake` (from one of librdkafka's threads) whenever the queue
    /// turns non-empty, replacing an earlier callback.
    pub(crate) fn on_nonempty(&mut self, wake: impl Fn() + Send + Sync + 'static) {
        unsafe extern "C" fn call(_: *mut rdsys::rd_kafka_t, opaque: *mut c_void) {
            // SAFETY: `opaque` is the `Box<dyn Fn>` kept in `wake` for as
            // long as this callback is enabled (see `on_nonempty`, `drop`).
            let wake = unsafe { &*(opaque as *const Box<dyn Fn() + Send + Sync>) };
            wake();
        }
        let wake: Wake = Box::new(Box::new(wake));
        let opaque = &*wake as *const Box<dyn Fn() + Send + Sync> as *mut c_void;
        // SAFETY: the queue is live; `opaque` stays valid until the
        // callback is replaced (here, after which the old box is dropped)
        // or disabled (in `drop`). librdkafka calls the callback with the
        // queue's lock held (`rd_kafka_q_io_event`) and swaps it under the
        // same lock (`rd_kafka_q_cb_event_enable`, librdkafka 2.12), so
        // once this call returns no thread is still running the old one.
        unsafe { rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), Some(call), opaque) };
        self.wake = Some(wake);
    }

    /// Takes up to `max` entries waiting in the queue, without waiting,
    /// and calls `each` with each in queue order; returns how many.
    pub(crate) fn take(&mut self, max: usize, mut each: impl FnMut(Entry<'_>)) -> usize {
        self.taken.clear();
        self.taken.reserve(max);
        // SAFETY: the queue is live, and `taken` has room for `max`
        // pointers, which is all librdkafka writes.
        let n = unsafe {
            rdsys::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                0,
                self.taken.as_mut_ptr(),
                max,
            )
        };
        // −1 when the queue cannot be served: nothing taken.
        let n = usize::try_from(n).unwrap_or(0).min(max);
        // SAFETY: librdkafka initialised the first `n` pointers.
        unsafe { self.taken.set_len(n) };
        // Destroys the messages even if `each` panics.
        let taken = Taken(&mut self.taken);
        for &message in taken.0.iter() {
            // SAFETY: each pointer is a message librdkafka handed over,
            // alive until `Taken` destroys it; the borrow of its payload
            // ends with the callback.
            let message = unsafe { &*message };
            each(entry(message));
        }
        n
    }
}

/// The messages of one `take`, destroyed when it ends.
struct Taken<'a>(&'a mut Vec<*mut rdsys::rd_kafka_message_t>);

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        for message in self.0.drain(..) {
            // SAFETY: each was handed over by `rd_kafka_consume_batch_queue`
            // and is destroyed once.
            unsafe { rdsys::rd_kafka_message_destroy(message) };
        }
    }
}

/// A message as a record, the partition's end, or the error rdkafka's
/// own poll would report.
fn entry(message: &rdsys::rd_kafka_message_t) -> Entry<'_> {
    let partition = message.partition;
    let offset = u64::try_from(message.offset).unwrap_or(0);
    match message.err {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR => {
            let payload = (!message.payload.is_null()).then(|| {
                // SAFETY: librdkafka's message holds `len` bytes at
                // `payload`, alive as long as the message.
                unsafe { std::slice::from_raw_parts(message.payload as *const u8, message.len) }
            });
            Entry::Record(RawRecord {
                partition: u32::try_from(partition).unwrap_or(u32::MAX),
                offset,
                payload,
            })
        }
        // librdkafka reports the end at its fetch position, once that
        // equals the high watermark (the last stable offset when reading
        // committed records): `rd_kafka_fetch_reply_handle_partition`,
        // librdkafka 2.12.
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF => Entry::End {
            partition: u32::try_from(partition).unwrap_or(u32::MAX),
            next_offset: offset,
        },
        code => Entry::Error(KafkaError::MessageConsumption(code.into())),
    }
}

impl Drop for LaneQueue {
    fn drop(&mut self) {
        // SAFETY: the queue is live until destroyed here; the callback is
        // disabled before its box (`wake`) is dropped with the fields.
        unsafe {
            rdsys::rd_kafka_queue_cb_event_enable(self.queue.as_ptr(), None, std::ptr::null_mut());
            rdsys::rd_kafka_queue_destroy(self.queue.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message as librdkafka hands it over, without payload or key.
    fn message(err: RDKafkaRespErr, partition: i32, offset: i64) -> rdsys::rd_kafka_message_t {
        // SAFETY: every field is an integer, an enum whose zero is
        // `NO_ERROR`, or a raw pointer, for which all zero bits are valid.
        let mut message: rdsys::rd_kafka_message_t = unsafe { std::mem::zeroed() };
        message.err = err;
        message.partition = partition;
        message.offset = offset;
        message
    }

    /// The end of a partition keeps the offset librdkafka reports it at:
    /// past a transaction's commit marker it is above the last record's
    /// offset + 1, and the only place that offset is known.
    #[test]
    fn a_partitions_end_keeps_its_offset() {
        let end = message(RDKafkaRespErr::RD_KAFKA_RESP_ERR__PARTITION_EOF, 2, 203);
        assert!(matches!(
            entry(&end),
            Entry::End {
                partition: 2,
                next_offset: 203
            }
        ));
        let record = message(RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR, 2, 201);
        assert!(matches!(
            entry(&record),
            Entry::Record(RawRecord {
                partition: 2,
                offset: 201,
                payload: None
            })
        ));
        let error = message(RDKafkaRespErr::RD_KAFKA_RESP_ERR__TRANSPORT, 2, 0);
        assert!(matches!(entry(&error), Entry::Error(_)));
    }
}
