//! The Kafka source's reader thread: it polls the consumer and decodes
//! records ahead of the engine.
//!
//! On the Kafka path the engine's thread spent about 40 % of its time in
//! librdkafka's per-message poll (a queue pop under a mutex, clock reads)
//! and in decoding. The reader does both on a second thread and hands the
//! engine batches of decoded records through a bounded channel, so reading
//! and applying overlap.
//!
//! Order and exactly-once are unchanged. The reader is the only thread
//! that polls, and it also applies pauses and resumes, between two polls,
//! so librdkafka sees the same sequence of calls as from a single thread.
//! (A pause from another thread while a poll is returning a record could
//! take the partition's resume position before that record counts as
//! consumed, and the record would come again after the resume.) Records
//! of a partition travel in offset order and batches in send order;
//! offsets are still taken from the records the engine ingests, so what
//! sits in the channel when the process dies is read again from the
//! checkpoint. The channel holds at most [`BATCHES`] × [`BATCH`] records,
//! and each lane of an aligned read up to [`LANE_TAKE`] more: the
//! read-ahead that a pause cannot take back, by which the reorder
//! buffer's soft bound can be passed.
//!
//! **Aligned reads.** With an alignment, each partition has its own
//! librdkafka queue (split off before the partitions are assigned, so no
//! record of theirs reaches the consumer's common queue), and the reader
//! takes records from the partition whose event-time clock (the highest
//! event time read from it) is lowest, and from no partition more than
//! `align_ms` ahead of the slowest one that still has records to give. A
//! partition at its end or paused holds nobody back; one that has
//! delivered no sample yet holds everyone back until it does (or reports
//! its end). A
//! broker may hand a whole partition over before the next one (nisshi
//! does); read as delivered, the engine buffers all of it behind a
//! watermark that the other partitions hold back, up to the reorder
//! buffer's bound, and then pauses partitions, which makes librdkafka drop
//! what it had fetched for them. Aligned, the buffer holds about the
//! out-of-orderness plus `align_ms` of event time. The order across
//! partitions never changes a result (the engine releases in
//! (event time, partition, offset) order), only memory and speed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::thread::{JoinHandle, Thread};
use std::time::Duration;

use std::collections::BTreeMap;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::contexts::ContextSupply;
use crate::engine::Payload;
use crate::file_source::decode_protobuf_with;
use crate::hand_on::hand_on;
use crate::kafka::{KafkaSourceError, Polled};
use crate::kafka_queue::{Entry, LaneQueue};
use crate::prefetch::{RECORDS_AHEAD, prefetch_slice};

/// Most records in one batch handed to the engine.
pub(crate) const BATCH: usize = 256;

/// Most records taken from a lane's queue at once.
const LANE_TAKE: usize = 64;
/// Longest the reader waits for librdkafka to take a seek (a local
/// operation on the partition, no request to the broker).
const SEEK_TIMEOUT: Duration = Duration::from_secs(10);
/// Most batches in flight between the reader and the engine.
pub(crate) const BATCHES: usize = 8;
/// Longest the reader waits for a record before it looks again at its
/// stop flag and the consumer's own queue (a lane that fills, a pause and
/// a stop also wake it at once).
const POLL: Duration = Duration::from_millis(10);

type Item = Result<Polled, KafkaSourceError>;
type Batch = VecDeque<Item>;

/// What the engine's thread and the reader share besides the channels.
struct Shared {
    stop: AtomicBool,
    /// The partitions to keep paused, until the reader takes it.
    wanted_paused: Mutex<Option<Vec<u32>>>,
    /// Set with `wanted_paused`, so the reader need not lock per poll.
    pause_changed: AtomicBool,
}

/// One queue per partition, for aligned reads: see [`Lanes::split`].
pub(crate) struct Lanes {
    lanes: Vec<Lane>,
    align_ms: i64,
    /// The reader's thread, for the queues' callbacks to wake it.
    reader: Arc<OnceLock<Thread>>,
}

impl Lanes {
    /// Gives every partition of `partitions` its own queue. Call before
    /// assigning them: librdkafka then never forwards their records to the
    /// consumer's common queue (an application's forwarding survives the
    /// fetch start that an assignment performs).
    pub(crate) fn split(
        consumer: &Arc<BaseConsumer>,
        topic: &str,
        partitions: &[u32],
        align_ms: i64,
    ) -> Result<Self, KafkaSourceError> {
        let reader: Arc<OnceLock<Thread>> = Arc::new(OnceLock::new());
        let mut lanes = Vec::with_capacity(partitions.len());
        for &p in partitions {
            let Some(mut queue) = LaneQueue::split(consumer, topic, p) else {
                return Err(KafkaSourceError::Topic {
                    topic: topic.into(),
                    reason: format!("no queue for partition {p}"),
                });
            };
            let wake = Arc::clone(&reader);
            queue.on_nonempty(move || {
                if let Some(thread) = wake.get() {
                    thread.unpark();
                }
            });
            lanes.push(Lane {
                queue,
                held: VecDeque::with_capacity(LANE_TAKE),
                clock: None,
                at_end: false,
            });
        }
        Ok(Self {
            lanes,
            align_ms,
            reader,
        })
    }
}

/// The engine's end of the reader thread.
pub(crate) struct ReadAhead {
    batches: Option<Receiver<Batch>>,
    /// Emptied batches go back to the reader for reuse.
    spare: SyncSender<Batch>,
    current: Batch,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ReadAhead {
    /// Starts the reader on `consumer`, whose partitions are assigned at
    /// `assigned` (partition → offset): aligned over `lanes` when given,
    /// otherwise from the consumer's queue as librdkafka delivers.
    pub(crate) fn start(
        consumer: Arc<BaseConsumer>,
        topic: String,
        lanes: Option<Lanes>,
        assigned: BTreeMap<u32, u64>,
        contexts: ContextSupply,
    ) -> Result<Self, KafkaSourceError> {
        let (batches_tx, batches) = sync_channel(BATCHES);
        let (spare, spare_rx) = sync_channel(BATCHES + 2);
        let shared = Arc::new(Shared {
            stop: AtomicBool::new(false),
            wanted_paused: Mutex::new(None),
            pause_changed: AtomicBool::new(false),
        });
        let reader = Reader {
            consumer,
            topic,
            shared: Arc::clone(&shared),
            batches: batches_tx,
            spare: spare_rx,
            paused: Vec::new(),
            taken: assigned,
            contexts,
        };
        let thread = std::thread::Builder::new()
            .name("kafka-reader".into())
            .spawn(move || reader.run(lanes))
            .map_err(KafkaSourceError::ReaderSpawn)?;
        Ok(Self {
            batches: Some(batches),
            spare,
            current: VecDeque::new(),
            shared,
            thread: Some(thread),
        })
    }

    /// True when [`ReadAhead::next`] has an item at hand (no wait).
    pub(crate) fn has_buffered(&self) -> bool {
        !self.current.is_empty()
    }

    /// The next record or event, waiting up to `timeout` for one.
    pub(crate) fn next(&mut self, timeout: Duration) -> Item {
        if let Some(item) = self.current.pop_front() {
            self.prefetch_ahead();
            return item;
        }
        let Some(batches) = &self.batches else {
            return Err(KafkaSourceError::ReaderStopped);
        };
        match batches.recv_timeout(timeout) {
            Ok(batch) => {
                let spent = std::mem::replace(&mut self.current, batch);
                // A full return channel only means the reader has spares.
                let _ = self.spare.try_send(spent);
                for ahead in 0..RECORDS_AHEAD {
                    self.prefetch(ahead);
                }
                self.current
                    .pop_front()
                    .unwrap_or(Ok(Polled::Nothing(None)))
            }
            Err(RecvTimeoutError::Timeout) => Ok(Polled::Nothing(None)),
            Err(RecvTimeoutError::Disconnected) => Err(KafkaSourceError::ReaderStopped),
        }
    }

    /// Asks for the context of the record [`RECORDS_AHEAD`] places after
    /// the one being handed on (see [`RECORDS_AHEAD`]).
    fn prefetch_ahead(&self) {
        self.prefetch(RECORDS_AHEAD - 1);
    }

    /// Asks for the `i`-th item of the current batch and its sample's
    /// context.
    fn prefetch(&self, i: usize) {
        let Some(item) = self.current.get(i) else {
            return;
        };
        prefetch_slice(std::slice::from_ref(item));
        if let Ok(Polled::Record {
            payload: Payload::Sample(sample),
            ..
        }) = item
        {
            prefetch_slice(&sample.context);
        }
    }

    /// Keeps exactly `partitions` paused from the reader's next poll on
    /// (records of theirs already read ahead still arrive).
    pub(crate) fn set_paused(&self, partitions: &[u32]) {
        let mut wanted = self
            .shared
            .wanted_paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *wanted = Some(partitions.to_vec());
        self.shared.pause_changed.store(true, Ordering::Release);
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // A reader blocked on a full channel wakes with an error.
        drop(self.batches.take());
        if let Some(thread) = self.thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

/// The reader thread's state.
struct Reader {
    consumer: Arc<BaseConsumer>,
    topic: String,
    shared: Arc<Shared>,
    batches: SyncSender<Batch>,
    spare: Receiver<Batch>,
    /// What the reader last paused, ascending.
    paused: Vec<u32>,
    /// Each partition's offset after the last record taken from
    /// librdkafka, or of its end when reported later (its assigned offset
    /// before any): where a resumed partition goes on (see
    /// [`Reader::apply_pauses`]).
    taken: BTreeMap<u32, u64>,
    /// Vectors for the records' contexts, handed back by the engine.
    contexts: ContextSupply,
}

/// One partition's queue and what the reader knows of it.
struct Lane {
    queue: LaneQueue,
    /// Taken from the queue (up to [`LANE_TAKE`] at a time) and decoded,
    /// not yet handed on: the alignment is checked per record, as it is
    /// handed on.
    held: VecDeque<Item>,
    /// Highest event time handed on from the partition (none before its
    /// first sample).
    clock: Option<i64>,
    /// The partition reported its end and has delivered nothing since.
    at_end: bool,
}

impl Lane {
    /// The lane's next item: a held one, else the first of a new take
    /// (noting the records taken in `taken`); `None` when its queue is
    /// empty.
    fn next(
        &mut self,
        taken: &mut BTreeMap<u32, u64>,
        contexts: &mut ContextSupply,
    ) -> Option<Item> {
        if self.held.is_empty() {
            let partition = self.queue.partition();
            let held = &mut self.held;
            self.queue.take(LANE_TAKE, |entry| {
                match &entry {
                    Entry::Record(record) => {
                        note_taken(taken, record.partition, record.offset + 1);
                    }
                    &Entry::End {
                        partition,
                        next_offset,
                    } => note_taken(taken, partition, next_offset),
                    Entry::Error(_) => {}
                }
                held.push_back(convert_entry(entry, partition, contexts));
            });
        }
        self.held.pop_front()
    }

    /// Takes note of an item handed on.
    fn observe(&mut self, item: &Item) {
        match item {
            Ok(Polled::Record { payload, .. }) => {
                self.at_end = false;
                if let Payload::Sample(sample) = payload {
                    let t = sample.event_time_ms;
                    self.clock = Some(self.clock.map_or(t, |c| c.max(t)));
                }
            }
            Ok(Polled::CaughtUp { .. }) => self.at_end = true,
            Ok(Polled::Nothing(_)) | Err(_) => {}
        }
    }
}

impl Reader {
    fn run(mut self, mut lanes: Option<Lanes>) {
        if let Some(lanes) = &lanes {
            let _ = lanes.reader.set(std::thread::current());
        }
        let mut order: Vec<usize> = (0..lanes.as_ref().map_or(0, |l| l.lanes.len())).collect();
        let mut batch = self.fresh_batch();
        while !self.shared.stop.load(Ordering::Relaxed) {
            if self.shared.pause_changed.swap(false, Ordering::Acquire)
                && let Err(err) = self.apply_pauses()
            {
                batch.push_back(Err(err));
            }
            let took = match &mut lanes {
                Some(lanes) => {
                    // The consumer's own queue: client errors; polling it
                    // also serves librdkafka's callbacks.
                    if let Some(result) = self.consumer.poll(Duration::ZERO) {
                        batch.push_back(convert(result, &mut self.contexts));
                    }
                    take_aligned(
                        lanes,
                        &self.paused,
                        &mut order,
                        &mut batch,
                        &mut self.taken,
                        &mut self.contexts,
                    )
                }
                None => self.take_delivered(&mut batch),
            };
            if batch.len() >= BATCH || (took == 0 && !batch.is_empty()) {
                let stop = &self.shared.stop;
                if !hand_on(&self.batches, batch, || stop.load(Ordering::Relaxed)) {
                    return; // the engine's end is gone, or it stops
                }
                batch = self.fresh_batch();
            } else if took == 0 && lanes.is_some() {
                // Every lane is empty or too far ahead: wait for one to
                // fill (its callback unparks this thread) or for a pause.
                std::thread::park_timeout(POLL);
            }
        }
    }

    /// Moves records into `batch` in the order librdkafka delivers them,
    /// until it is full or nothing is waiting (waiting up to [`POLL`] for
    /// the first). Returns how many.
    fn take_delivered(&mut self, batch: &mut Batch) -> usize {
        let mut took = 0;
        while batch.len() < BATCH {
            let timeout = if batch.is_empty() {
                POLL
            } else {
                Duration::ZERO
            };
            let Some(result) = self.consumer.poll(timeout) else {
                break;
            };
            if let Ok(message) = &result {
                note_taken(
                    &mut self.taken,
                    message.partition() as u32,
                    message.offset() as u64 + 1,
                );
            }
            batch.push_back(convert(result, &mut self.contexts));
            took += 1;
        }
        took
    }

    fn fresh_batch(&self) -> Batch {
        self.spare
            .try_recv()
            .unwrap_or_else(|_| VecDeque::with_capacity(BATCH))
    }

    /// Pauses and resumes so that exactly the wanted partitions are paused.
    ///
    /// A resumed partition is first sought to the offset after its last
    /// record taken (or to its end's, past a commit marker). A pause keeps librdkafka's own position of the
    /// partition as where to go on, and that position counts the events
    /// taken too: a partition's end, reported at offset E (the next
    /// record's), moves it to E + 1 (`rd_kafka_q_serve_rkmessages`,
    /// librdkafka 2.12), so a partition paused after its end would skip
    /// the record produced at E meanwhile — or, with none, ask for an
    /// offset past the end and fail as lost.
    fn apply_pauses(&mut self) -> Result<(), KafkaSourceError> {
        let wanted = self
            .shared
            .wanted_paused
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let Some(mut wanted) = wanted else {
            return Ok(());
        };
        wanted.sort_unstable();
        wanted.dedup();
        let resume: Vec<u32> = self
            .paused
            .iter()
            .copied()
            .filter(|p| wanted.binary_search(p).is_err())
            .collect();
        let pause: Vec<u32> = wanted
            .iter()
            .copied()
            .filter(|p| self.paused.binary_search(p).is_err())
            .collect();
        for &p in &resume {
            let Some(&next) = self.taken.get(&p) else {
                continue;
            };
            self.consumer
                .seek(
                    &self.topic,
                    p as i32,
                    Offset::Offset(next as i64),
                    SEEK_TIMEOUT,
                )
                .map_err(|source| KafkaSourceError::Client {
                    what: format!("seek partition {p} to offset {next} to resume it"),
                    source,
                })?;
        }
        if !resume.is_empty() {
            self.consumer
                .resume(&self.list(&resume))
                .map_err(|source| KafkaSourceError::Client {
                    what: "resume partitions".into(),
                    source,
                })?;
        }
        if !pause.is_empty() {
            self.consumer
                .pause(&self.list(&pause))
                .map_err(|source| KafkaSourceError::Client {
                    what: "pause partitions".into(),
                    source,
                })?;
        }
        self.paused = wanted;
        Ok(())
    }

    fn list(&self, partitions: &[u32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for &p in partitions {
            list.add_partition(&self.topic, p as i32);
        }
        list
    }
}

/// The limit of aligned reads: the slowest clock among lanes with records
/// to give (neither at their end nor in `paused`, ascending; a lane
/// without a sample yet counts as the slowest of all) plus `align_ms`; no
/// limit when no lane has records to give.
fn alignment_limit(lanes: &[Lane], paused: &[u32], align_ms: i64) -> i64 {
    limit_of(
        lanes
            .iter()
            .map(|lane| (lane.queue.partition(), lane.clock, lane.at_end)),
        paused,
        align_ms,
    )
}

/// [`alignment_limit`] of lanes given as (partition, clock, at end).
fn limit_of(
    lanes: impl Iterator<Item = (u32, Option<i64>, bool)>,
    paused: &[u32],
    align_ms: i64,
) -> i64 {
    lanes
        .filter(|&(partition, _, at_end)| !at_end && paused.binary_search(&partition).is_err())
        .map(|(_, clock, _)| clock.unwrap_or(i64::MIN))
        .min()
        .map_or(i64::MAX, |slowest| slowest.saturating_add(align_ms))
}

/// Moves records into `batch` (until it is full) from the lanes, slowest
/// clock first, none from a lane whose clock is beyond the alignment
/// limit. Returns how many.
fn take_aligned(
    lanes: &mut Lanes,
    paused: &[u32],
    order: &mut [usize],
    batch: &mut Batch,
    taken: &mut BTreeMap<u32, u64>,
    contexts: &mut ContextSupply,
) -> usize {
    let limit = alignment_limit(&lanes.lanes, paused, lanes.align_ms);
    let lanes = &mut lanes.lanes;
    let beyond = |clock: Option<i64>| clock.is_some_and(|c| c > limit);
    // Lanes without a sample first: they are the slowest.
    order.sort_by_key(|&i| lanes[i].clock);
    let mut took = 0;
    for &i in order.iter() {
        let lane = &mut lanes[i];
        if beyond(lane.clock) {
            break; // so is every later lane
        }
        while batch.len() < BATCH && !beyond(lane.clock) {
            let Some(item) = lane.next(taken, contexts) else {
                break;
            };
            lane.observe(&item);
            batch.push_back(item);
            took += 1;
        }
        if batch.len() >= BATCH {
            break;
        }
    }
    took
}

/// Notes that librdkafka handed over everything of `partition` below
/// `next_offset` (a record just below it, or the partition's end there).
fn note_taken(taken: &mut BTreeMap<u32, u64>, partition: u32, next_offset: u64) {
    let next = taken.entry(partition).or_insert(0);
    *next = (*next).max(next_offset);
}

/// One poll's result as the engine takes it: records decoded, end of
/// partition, a lost offset as an error, other client errors as transient.
fn convert(result: Result<BorrowedMessage<'_>, KafkaError>, contexts: &mut ContextSupply) -> Item {
    match result {
        Ok(message) => Ok(record(
            message.partition() as u32,
            message.offset() as u64,
            message.payload(),
            contexts,
        )),
        Err(err) => client_error(err, None),
    }
}

/// [`convert`] for an entry of `partition`'s own queue.
fn convert_entry(entry: Entry<'_>, partition: u32, contexts: &mut ContextSupply) -> Item {
    match entry {
        Entry::Record(r) => Ok(record(r.partition, r.offset, r.payload, contexts)),
        Entry::End {
            partition,
            next_offset,
        } => Ok(Polled::CaughtUp {
            partition,
            next_offset: Some(next_offset),
        }),
        Entry::Error(err) => client_error(err, Some(partition)),
    }
}

/// A record, decoded.
fn record(
    partition: u32,
    offset: u64,
    payload: Option<&[u8]>,
    contexts: &mut ContextSupply,
) -> Polled {
    let payload = match payload {
        Some(bytes) => decode_protobuf_with(bytes, contexts.fresh()),
        None => Payload::Invalid {
            reason: "undecodable",
            detail: "record without a value".into(),
        },
    };
    Polled::Record {
        partition,
        offset,
        payload,
    }
}

/// A client error: the end of a partition, a lost offset (of `partition`
/// when the error came from its queue), or a transient error.
fn client_error(err: KafkaError, partition: Option<u32>) -> Item {
    match err {
        // rdkafka's own poll drops the end's offset.
        KafkaError::PartitionEOF(p) => Ok(Polled::CaughtUp {
            partition: p as u32,
            next_offset: None,
        }),
        err if crate::kafka::is_offset_lost(&err) => {
            let named = crate::kafka::lost_partition(&err);
            Err(KafkaSourceError::OffsetLost {
                partition: if named == u32::MAX {
                    partition.unwrap_or(named)
                } else {
                    named
                },
                source: err,
            })
        }
        err => Ok(Polled::Nothing(Some(err))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(lanes: &[(u32, Option<i64>, bool)], paused: &[u32]) -> i64 {
        limit_of(lanes.iter().copied(), paused, 1_000)
    }

    #[test]
    fn the_slowest_lane_with_records_to_give_sets_the_limit() {
        let lanes = [
            (0, Some(5_000), false),
            (1, Some(2_000), false),
            (2, Some(9_000), false),
        ];
        assert_eq!(limit(&lanes, &[]), 3_000);
        // At its end, or paused, a lane holds nobody back.
        let lanes = [
            (0, Some(5_000), false),
            (1, Some(2_000), true),
            (2, Some(9_000), false),
        ];
        assert_eq!(limit(&lanes, &[]), 6_000);
        let lanes = [
            (0, Some(5_000), false),
            (1, Some(2_000), false),
            (2, Some(9_000), false),
        ];
        assert_eq!(limit(&lanes, &[1]), 6_000);
        assert_eq!(limit(&lanes, &[0, 1]), 10_000);
    }

    #[test]
    fn a_lane_without_a_sample_holds_everyone_back_and_no_lane_means_no_limit() {
        let lanes = [(0, Some(5_000), false), (1, None, false)];
        assert_eq!(limit(&lanes, &[]), i64::MIN + 1_000);
        // Unless it is at its end (an empty partition) or paused.
        assert_eq!(
            limit(&[(0, Some(5_000), false), (1, None, true)], &[]),
            6_000
        );
        assert_eq!(limit(&lanes, &[1]), 6_000);
        assert_eq!(
            limit(&[(0, Some(5_000), true), (1, None, true)], &[]),
            i64::MAX
        );
        assert_eq!(limit(&[], &[]), i64::MAX);
        // The limit saturates instead of overflowing.
        assert_eq!(limit(&[(0, Some(i64::MAX - 10), false)], &[]), i64::MAX);
    }
}
