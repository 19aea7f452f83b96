//! The reorder buffer's samples as the store keeps them: a log per
//! partition, cut into blobs.
//!
//! Every sample that enters the reorder buffer is encoded once, as it
//! arrives (its fields are still in the caches), and appended to its
//! partition's open blob ([`codec::put_sample_record`]: a fixed layout,
//! not protobuf; blobs of state format 2 held `JoinedSample` records, and
//! their 12-byte keys tell them apart). A checkpoint cuts the open blobs
//! and writes each blob not yet stored as one entry ([`codec::log_key`]:
//! partition, blob number), and deletes the stored blobs whose samples
//! have all been released. A stored blob may hold samples released since it was written;
//! a restore keeps the samples at or above the release frontier
//! (`released_below_ms`), which are exactly the buffered ones: the engine
//! releases every buffered sample below the frontier, and sends a sample
//! arriving below it to the dead letters instead of the buffer.
//!
//! Per checkpoint that is a few large entries instead of one put per
//! sample buffered since the last checkpoint and one delete per sample
//! released (two thirds of the entries of a checkpoint in which each
//! changed parameter had one sample), and the ingesting thread no longer
//! reads every buffered sample back, cold, to encode it at the checkpoint.
//!
//! Memory: a blob is cut once it holds [`CUT_BYTES`]; cut blobs not yet
//! written are dropped as soon as their samples have all been released,
//! so without checkpoints the log holds about what the buffer holds.

use crate::codec::{self, CorruptState, Table};
use crate::reorder::{OrderKey, ReorderBuffer};
use crate::sample::Sample;

/// Size at which a blob is cut.
pub const CUT_BYTES: usize = 1 << 20;

/// Room past [`CUT_BYTES`] for the record that crosses it (a larger
/// record grows its blob).
const CUT_SLACK: usize = 16 << 10;

/// Emptied blob buffers kept for reuse: appending to a fresh megabyte
/// costs page faults, and growing one by doubling copies it.
const SPARE_BLOBS: usize = 4;

/// How far past a blob's end [`SampleLog::append`] asks for room (bytes):
/// a few records (~60 bytes for a Beta sample, ~190 at d = 32).
const WRITE_AHEAD: usize = 512;

/// A partition's records since its last cut.
#[derive(Debug, Clone)]
struct Blob {
    partition: u32,
    bytes: Vec<u8>,
    /// Highest event time among the records: once the release frontier
    /// passes it, every record of the blob has been released.
    max_event_ms: i64,
}

/// A blob the store holds.
#[derive(Debug, Clone)]
struct StoredBlob {
    key: Vec<u8>,
    max_event_ms: i64,
}

/// A checkpoint's writes to the reorder table.
#[derive(Debug, Default)]
pub struct LogChanges {
    /// New blobs: key and records.
    pub puts: Vec<(Vec<u8>, Vec<u8>)>,
    /// Keys to delete: blobs whose samples have all been released, and
    /// format-1 entries (one sample each) rewritten as blobs.
    pub deletes: Vec<Vec<u8>>,
}

/// The log of the samples that entered the reorder buffer (see the module
/// documentation).
#[derive(Debug, Clone, Default)]
pub struct SampleLog {
    /// Open blobs, one per partition that has records since its last cut.
    open: Vec<Blob>,
    /// Blobs cut by size and not written yet, with their numbers.
    cut: Vec<(u64, Blob)>,
    /// Blobs in the store.
    stored: Vec<StoredBlob>,
    /// Number of the next blob cut; above every stored one.
    next_blob: u64,
    /// Format-1 entries in the store, to delete at the next checkpoint
    /// (their samples are in the open blobs).
    legacy: Vec<Vec<u8>>,
    /// Buffers of blobs dropped unwritten, for new blobs.
    spare: Vec<Vec<u8>>,
}

impl SampleLog {
    /// Appends a sample that enters the reorder buffer under `key`.
    /// `released_below_ms` is the engine's release frontier (cut blobs
    /// entirely below it are dropped).
    pub fn append(&mut self, key: OrderKey, sample: &Sample, released_below_ms: i64) {
        let i = match self.open.iter().position(|b| b.partition == key.partition) {
            Some(i) => i,
            None => {
                let bytes = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(CUT_BYTES + CUT_SLACK));
                self.open.push(Blob {
                    partition: key.partition,
                    bytes,
                    max_event_ms: i64::MIN,
                });
                self.open.len() - 1
            }
        };
        let blob = &mut self.open[i];
        codec::put_sample_record(&mut blob.bytes, key.offset, sample);
        // The blob's buffer was last written a reorder window ago and is
        // out of the caches: ask for the room a few records ahead, so that
        // the records' writes do not each wait for their line.
        crate::prefetch::prefetch(
            blob.bytes
                .as_ptr()
                .wrapping_add(blob.bytes.len() + WRITE_AHEAD),
        );
        blob.max_event_ms = blob.max_event_ms.max(key.event_time_ms);
        if blob.bytes.len() >= CUT_BYTES {
            let blob = self.open.swap_remove(i);
            let spare = &mut self.spare;
            self.cut.retain_mut(|(_, b)| {
                let keep = b.max_event_ms >= released_below_ms;
                if !keep && spare.len() < SPARE_BLOBS {
                    let mut bytes = std::mem::take(&mut b.bytes);
                    bytes.clear();
                    spare.push(bytes);
                }
                keep
            });
            self.cut.push((self.next_blob, blob));
            self.next_blob += 1;
        }
    }

    /// Bytes of records held in memory, not yet written.
    pub fn unwritten_bytes(&self) -> usize {
        self.open
            .iter()
            .chain(self.cut.iter().map(|(_, b)| b))
            .map(|b| b.bytes.len())
            .sum()
    }

    /// The writes that bring the store's reorder table up to date, given
    /// the release frontier: every blob with a sample at or above it, and
    /// deletes of the stored blobs below it. From here on the written
    /// blobs count as stored.
    pub fn take_changes(&mut self, released_below_ms: i64) -> LogChanges {
        let mut open = std::mem::take(&mut self.open);
        open.sort_unstable_by_key(|b| b.partition);
        for blob in open {
            self.cut.push((self.next_blob, blob));
            self.next_blob += 1;
        }
        let mut changes = LogChanges {
            puts: Vec::with_capacity(self.cut.len()),
            deletes: std::mem::take(&mut self.legacy),
        };
        self.stored.retain(|b| {
            let keep = b.max_event_ms >= released_below_ms;
            if !keep {
                changes.deletes.push(b.key.clone());
            }
            keep
        });
        for (number, blob) in self.cut.drain(..) {
            if blob.max_event_ms < released_below_ms {
                continue; // released before it was ever written
            }
            let key = codec::log_key(blob.partition, number);
            self.stored.push(StoredBlob {
                key: key.clone(),
                max_event_ms: blob.max_event_ms,
            });
            changes.puts.push((key, blob.bytes));
        }
        changes
    }

    /// Forgets what the store holds and logs every buffered sample again,
    /// so the next [`Self::take_changes`] writes them all (for a complete
    /// checkpoint into an empty store).
    pub fn rewrite(&mut self, buffer: &ReorderBuffer, released_below_ms: i64) {
        *self = SampleLog {
            next_blob: self.next_blob,
            spare: std::mem::take(&mut self.spare),
            ..SampleLog::default()
        };
        buffer.for_each(|key, sample| self.append(key, sample, released_below_ms));
    }

    /// Rebuilds the log and the reorder buffer from the reorder table's
    /// entries (in key order) and the stored release frontier. Entries of
    /// format 1 are buffered, logged again and listed for deletion.
    pub fn restore(
        entries: impl IntoIterator<Item = (Vec<u8>, Vec<u8>)>,
        released_below_ms: i64,
        buffer: &mut ReorderBuffer,
    ) -> Result<SampleLog, CorruptState> {
        let mut log = SampleLog::default();
        for (k, v) in entries {
            if k.len() == 20 {
                let key = codec::order_key_from(&k)?;
                let sample = codec::sample_from(&k, &v)?;
                log.append(key, &sample, released_below_ms);
                buffer.insert(key, sample);
                log.legacy.push(k);
                continue;
            }
            let (partition, number, layout) = codec::log_key_from(&k)?;
            let mut max_event_ms = i64::MIN;
            for (offset, sample) in codec::sample_records_from(&k, &v, layout)? {
                let key = OrderKey {
                    event_time_ms: sample.event_time_ms,
                    partition,
                    offset,
                };
                max_event_ms = max_event_ms.max(key.event_time_ms);
                if key.event_time_ms >= released_below_ms {
                    buffer.insert(key, sample);
                }
            }
            if max_event_ms == i64::MIN {
                return Err(CorruptState::new(Table::Reorder, &k, "empty blob"));
            }
            log.next_blob = log.next_blob.max(number + 1);
            log.stored.push(StoredBlob {
                key: k,
                max_event_ms,
            });
        }
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use prost::Message;

    use super::*;

    fn sample(t: i64, doc_id: u64) -> Sample {
        Sample {
            doc_id,
            version: "v".into(),
            event_time_ms: t,
            context: vec![0.5; (doc_id % 3) as usize],
            labels: crate::sample::labels([("click", (doc_id % 2) as f32)]),
            weight: 1.0,
            sample_id: None,
        }
    }

    /// A reorder table: the store's view.
    #[derive(Default)]
    struct Table(BTreeMap<Vec<u8>, Vec<u8>>);

    impl Table {
        fn apply(&mut self, changes: LogChanges) {
            for k in changes.deletes {
                assert!(self.0.remove(&k).is_some(), "delete of an absent key");
            }
            for (k, v) in changes.puts {
                assert!(self.0.insert(k, v).is_none(), "put over a stored key");
            }
        }

        fn restore(&self, released_below_ms: i64) -> (SampleLog, ReorderBuffer) {
            let mut buffer = ReorderBuffer::new(usize::MAX);
            let entries = self.0.iter().map(|(k, v)| (k.clone(), v.clone()));
            let log = SampleLog::restore(entries, released_below_ms, &mut buffer).unwrap();
            (log, buffer)
        }
    }

    /// An engine's use of the log: insert (dead below the frontier), release,
    /// checkpoint.
    struct Driver {
        buffer: ReorderBuffer,
        log: SampleLog,
        released_below_ms: i64,
        offsets: [u64; 3],
    }

    impl Driver {
        fn new() -> Self {
            Self {
                buffer: ReorderBuffer::new(usize::MAX),
                log: SampleLog::default(),
                released_below_ms: i64::MIN,
                offsets: [0; 3],
            }
        }

        fn insert(&mut self, partition: u32, t: i64, doc_id: u64) {
            let offset = self.offsets[partition as usize];
            self.offsets[partition as usize] += 1;
            if t < self.released_below_ms {
                return; // late: a dead letter
            }
            let key = OrderKey {
                event_time_ms: t,
                partition,
                offset,
            };
            let sample = sample(t, doc_id);
            self.log.append(key, &sample, self.released_below_ms);
            self.buffer.insert(key, sample);
        }

        fn release(&mut self, below: i64) {
            if below > self.released_below_ms {
                self.buffer.release_below(below);
                self.released_below_ms = below;
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { partition: u32, t: i64, doc_id: u64 },
        Release { below: i64 },
        Checkpoint,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => (0_u32..3, 0_i64..200, 0_u64..1_000_000).prop_map(|(partition, t, doc_id)| {
                Op::Insert { partition, t, doc_id }
            }),
            2 => (0_i64..220).prop_map(|below| Op::Release { below }),
            1 => Just(Op::Checkpoint),
        ]
    }

    proptest! {
        /// After any sequence of inserts, releases and checkpoints, the
        /// store restores exactly the buffered samples, writes never touch
        /// an absent or present key wrongly, and the store holds no blob
        /// whose samples have all been released.
        #[test]
        fn a_restore_holds_exactly_the_buffered_samples(ops in prop::collection::vec(op(), 1..300)) {
            let mut driver = Driver::new();
            let mut table = Table::default();
            for op in ops {
                match op {
                    Op::Insert { partition, t, doc_id } => driver.insert(partition, t, doc_id),
                    Op::Release { below } => driver.release(below),
                    Op::Checkpoint => {
                        table.apply(driver.log.take_changes(driver.released_below_ms));
                        let stored: Vec<&Vec<u8>> = driver.log.stored.iter().map(|b| &b.key).collect();
                        let mut keys: Vec<&Vec<u8>> = table.0.keys().collect();
                        keys.sort_unstable_by_key(|k| stored.iter().position(|s| s == k));
                        prop_assert_eq!(stored, keys);
                        let (log, buffer) = table.restore(driver.released_below_ms);
                        prop_assert_eq!(&buffer, &driver.buffer);
                        prop_assert!(log.stored.iter().all(|b| b.max_event_ms >= driver.released_below_ms));
                        // Go on as a restarted engine would.
                        driver.log = log;
                        driver.buffer = buffer;
                    }
                }
            }
        }
    }

    #[test]
    fn restored_logs_continue_where_they_stopped() {
        let mut driver = Driver::new();
        let mut table = Table::default();
        for i in 0..100 {
            driver.insert(i % 3, i64::from(i), u64::from(i));
        }
        driver.release(50);
        table.apply(driver.log.take_changes(50));
        // A restarted engine: restored log, new samples, more releases.
        let (log, buffer) = table.restore(50);
        assert_eq!(buffer, driver.buffer);
        driver.log = log;
        for i in 100..200 {
            driver.insert(i % 3, i64::from(i), u64::from(i));
        }
        driver.release(150);
        table.apply(driver.log.take_changes(150));
        assert_eq!(table.restore(150).1, driver.buffer);
        driver.release(1_000);
        table.apply(driver.log.take_changes(1_000));
        assert!(table.0.is_empty(), "everything released, nothing stored");
    }

    #[test]
    fn blobs_are_cut_by_size_and_dropped_once_released_without_a_checkpoint() {
        let mut driver = Driver::new();
        let mut t = 0;
        // Far more than fits under the cut, released as it goes: memory
        // stays near what the buffer holds, with no checkpoint at all.
        for round in 0..40 {
            for _ in 0..10_000 {
                driver.insert((t % 2) as u32, t, 7);
                t += 1;
            }
            driver.release(t - 1_000);
            assert!(
                driver.log.unwritten_bytes() < 4 * CUT_BYTES,
                "round {round}: {} bytes",
                driver.log.unwritten_bytes()
            );
        }
        let mut table = Table::default();
        table.apply(driver.log.take_changes(driver.released_below_ms));
        assert_eq!(table.restore(driver.released_below_ms).1, driver.buffer);
        assert_eq!(driver.buffer.len(), 1_000);
    }

    #[test]
    fn format_1_entries_restore_and_are_replaced_by_blobs() {
        let mut table = Table::default();
        let mut expected = ReorderBuffer::new(usize::MAX);
        for (t, partition, offset) in [(5, 0, 1), (5, 1, 0), (9, 0, 2)] {
            let key = OrderKey {
                event_time_ms: t,
                partition,
                offset,
            };
            let sample = sample(t, offset);
            table.0.insert(
                codec::order_key(key),
                posterior_proto::v1::JoinedSample::from(&sample).encode_to_vec(),
            );
            expected.insert(key, sample);
        }
        let (mut log, buffer) = table.restore(0);
        assert_eq!(buffer, expected);
        table.apply(log.take_changes(0));
        assert!(table.0.keys().all(|k| k.len() == 13), "only blobs left");
        assert_eq!(table.0.len(), 2, "one blob per partition");
        assert_eq!(table.restore(0).1, expected);
    }

    /// Blobs as state format 2 wrote them (12-byte keys, `JoinedSample`
    /// records) restore beside new ones, and go once their samples have all
    /// been released, as any blob.
    #[test]
    fn format_2_blobs_restore_and_go_once_released() {
        let mut table = Table::default();
        let mut expected = ReorderBuffer::new(usize::MAX);
        for (partition, number, times) in [(0_u32, 0_u64, [5_i64, 6, 7]), (1, 1, [6, 8, 30])] {
            let mut records = Vec::new();
            for (offset, t) in times.into_iter().enumerate() {
                let sample = sample(t, offset as u64 + 10);
                let body = posterior_proto::v1::JoinedSample::from(&sample).encode_to_vec();
                records.extend_from_slice(&(offset as u64).to_le_bytes());
                records.extend_from_slice(&(body.len() as u32).to_le_bytes());
                records.extend_from_slice(&body);
                let key = OrderKey {
                    event_time_ms: t,
                    partition,
                    offset: offset as u64,
                };
                if t >= 6 {
                    expected.insert(key, sample);
                }
            }
            table
                .0
                .insert(codec::log_key(partition, number)[..12].to_vec(), records);
        }
        let (mut log, mut buffer) = table.restore(6);
        assert_eq!(buffer, expected, "the samples at or above the frontier");
        // New samples go to new blobs, numbered after the old ones.
        let key = OrderKey {
            event_time_ms: 20,
            partition: 0,
            offset: 3,
        };
        log.append(key, &sample(20, 1), 6);
        buffer.insert(key, sample(20, 1));
        table.apply(log.take_changes(6));
        assert_eq!(table.0.len(), 3);
        assert!(table.0.contains_key(&codec::log_key(0, 2)));
        assert_eq!(table.restore(6).1, buffer);
        // Partition 0's old blob is released first, partition 1's last.
        buffer.release_below(10);
        table.apply(log.take_changes(10));
        assert!(!table.0.keys().any(|k| k.len() == 12 && k[..4] == [0; 4]));
        assert!(table.0.keys().any(|k| k.len() == 12));
        buffer.release_below(100);
        table.apply(log.take_changes(100));
        assert!(table.0.is_empty(), "every blob released and deleted");
    }

    #[test]
    fn damaged_blobs_are_refused() {
        let mut driver = Driver::new();
        driver.insert(0, 3, 1);
        driver.insert(0, 4, 2);
        let mut table = Table::default();
        table.apply(driver.log.take_changes(0));
        let (key, bytes) = table
            .0
            .iter()
            .next()
            .map(|(k, v)| (k.clone(), v.clone()))
            .unwrap();
        let mut buffer = ReorderBuffer::new(10);
        let truncated = vec![(key.clone(), bytes[..bytes.len() - 1].to_vec())];
        let err = SampleLog::restore(truncated, 0, &mut buffer).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");
        let empty = vec![(key.clone(), Vec::new())];
        assert!(SampleLog::restore(empty, 0, &mut buffer).is_err());
        let odd_key = vec![(vec![1, 2, 3], bytes)];
        assert!(SampleLog::restore(odd_key, 0, &mut buffer).is_err());
    }
}
