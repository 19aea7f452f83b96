//! The reorder buffer: samples wait here until the instance watermark
//! passes their event time, then leave in (event_time, partition, offset)
//! order — a total order fixed by the log.
//!
//! Samples are kept in one bucket per event-time millisecond, in arrival
//! order, and a bucket is sorted by (partition, offset) when it is
//! released. A sorted map of every sample would cost O(log n) with cache
//! misses per insert and per release in a buffer of ~10⁶ samples; a
//! bucket costs one lookup in a map of a few thousand milliseconds and a
//! push.
//!
//! The buffer also knows which of its samples the store holds, so a
//! checkpoint writes only the change ([`ReorderBuffer::take_changes`]):
//! samples buffered since the last checkpoint, and samples released that
//! an earlier checkpoint had stored.

use std::collections::BTreeMap;

use crate::sample::Sample;

/// Emptied bucket vectors kept for reuse (their capacity is the point).
const SPARE_BUCKETS: usize = 64;

/// (partition, offset, index in the bucket): what sorting a bucket sorts.
type Slot = (u32, u64, usize);

/// Position of a sample in the release order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OrderKey {
    /// Event time (Unix ms).
    pub event_time_ms: i64,
    /// Source partition.
    pub partition: u32,
    /// Offset within the partition.
    pub offset: u64,
}

/// A buffered sample.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    partition: u32,
    offset: u64,
    /// Whether the last checkpoint holds this sample.
    stored: bool,
    sample: Sample,
}

/// The samples of one event-time millisecond.
#[derive(Debug, Clone, PartialEq, Default)]
struct Bucket {
    /// In arrival order.
    entries: Vec<Entry>,
    /// Listed in `unstored_buckets` since the last checkpoint delta.
    listed: bool,
}

/// Samples waiting for the watermark. The bound is soft: inserts always
/// succeed (dropping or refusing would lose a sample or stall a partition),
/// and [`ReorderBuffer::is_full`] tells the driver to pause the partitions
/// that are ahead until the watermark catches up.
///
/// Two buffers are equal when they hold the same samples under the same
/// keys and have the same bound (arrival order and bookkeeping aside).
#[derive(Debug, Clone, Default)]
pub struct ReorderBuffer {
    buckets: BTreeMap<i64, Bucket>,
    len: usize,
    capacity: usize,
    /// Highest offset buffered per partition: an insert at or below it may
    /// replace a buffered sample with the same key.
    newest_offsets: BTreeMap<u32, u64>,
    /// Event times of buckets holding samples the store does not hold.
    unstored_buckets: Vec<i64>,
    /// Released samples that the store holds, in release order.
    released_stored: Vec<OrderKey>,
    spare: Vec<Vec<Entry>>,
}

impl PartialEq for ReorderBuffer {
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity && self.len == other.len && self.sorted() == other.sorted()
    }
}

impl ReorderBuffer {
    /// Every buffered sample with its key, in release order.
    fn sorted(&self) -> Vec<(OrderKey, &Sample)> {
        let mut all: Vec<(OrderKey, &Sample)> = self
            .buckets
            .iter()
            .flat_map(|(&event_time_ms, bucket)| {
                bucket.entries.iter().map(move |e| {
                    let key = OrderKey {
                        event_time_ms,
                        partition: e.partition,
                        offset: e.offset,
                    };
                    (key, &e.sample)
                })
            })
            .collect();
        all.sort_unstable_by_key(|(k, _)| *k);
        all
    }

    /// An empty buffer holding at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            ..Self::default()
        }
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// True at or beyond the bound.
    pub fn is_full(&self) -> bool {
        self.len >= self.capacity
    }

    /// True when the buffer holds at most half its bound: backpressure
    /// lifts here, not at the bound, so partitions are not paused and
    /// resumed on every sample.
    pub fn is_half_empty(&self) -> bool {
        self.len <= self.capacity / 2
    }

    /// Buffers a sample that the store does not hold; a sample buffered
    /// under the same key is replaced.
    pub fn insert(&mut self, key: OrderKey, sample: Sample) {
        self.put(key, sample, false);
    }

    /// Buffers a sample read back from the store (a restore).
    pub fn insert_stored(&mut self, key: OrderKey, sample: Sample) {
        self.put(key, sample, true);
    }

    fn put(&mut self, key: OrderKey, sample: Sample, stored: bool) {
        let maybe_present = match self.newest_offsets.get_mut(&key.partition) {
            Some(newest) if key.offset <= *newest => true,
            Some(newest) => {
                *newest = key.offset;
                false
            }
            None => {
                self.newest_offsets.insert(key.partition, key.offset);
                false
            }
        };
        let spare = &mut self.spare;
        let bucket = self
            .buckets
            .entry(key.event_time_ms)
            .or_insert_with(|| Bucket {
                entries: spare.pop().unwrap_or_default(),
                listed: false,
            });
        if !stored && !bucket.listed {
            bucket.listed = true;
            self.unstored_buckets.push(key.event_time_ms);
        }
        let entry = Entry {
            partition: key.partition,
            offset: key.offset,
            stored,
            sample,
        };
        if maybe_present
            && let Some(old) = bucket
                .entries
                .iter_mut()
                .find(|e| e.partition == key.partition && e.offset == key.offset)
        {
            *old = entry;
            return;
        }
        bucket.entries.push(entry);
        self.len += 1;
    }

    /// Removes and returns, in release order, every sample with event time
    /// strictly below `watermark_ms`.
    pub fn release_below(&mut self, watermark_ms: i64) -> Vec<(OrderKey, Sample)> {
        let mut released = Vec::new();
        while let Some(first) = self.buckets.first_entry()
            && *first.key() < watermark_ms
        {
            let (event_time_ms, bucket) = first.remove_entry();
            let mut entries = bucket.entries;
            self.len -= entries.len();
            // Sort small keys, not the samples, then move each sample once.
            let mut order: Vec<Slot> = entries
                .iter()
                .enumerate()
                .map(|(i, e)| (e.partition, e.offset, i))
                .collect();
            order.sort_unstable();
            let mut slots: Vec<Option<Entry>> = entries.drain(..).map(Some).collect();
            released.reserve(order.len());
            for (partition, offset, i) in order {
                let entry = slots[i].take().expect("each index once");
                let key = OrderKey {
                    event_time_ms,
                    partition,
                    offset,
                };
                if entry.stored {
                    self.released_stored.push(key);
                }
                released.push((key, entry.sample));
            }
            if self.spare.len() < SPARE_BUCKETS {
                self.spare.push(entries);
            }
        }
        released
    }

    /// Hands the changes since the last call to `emit`, in key order: each
    /// buffered sample the store does not hold (`Some`, and from now on
    /// counted as stored), and each released sample it holds (`None`).
    pub fn take_changes(&mut self, mut emit: impl FnMut(OrderKey, Option<&Sample>)) {
        let mut times = std::mem::take(&mut self.unstored_buckets);
        times.sort_unstable();
        // Mark, and remember which entries to write, bucket by bucket.
        let mut to_write: Vec<(i64, Vec<Slot>)> = Vec::with_capacity(times.len());
        for t in times {
            let Some(bucket) = self.buckets.get_mut(&t) else {
                continue; // released since
            };
            bucket.listed = false;
            let mut keys: Vec<Slot> = Vec::new();
            for (i, e) in bucket.entries.iter_mut().enumerate() {
                if !e.stored {
                    e.stored = true;
                    keys.push((e.partition, e.offset, i));
                }
            }
            keys.sort_unstable();
            to_write.push((t, keys));
        }
        let deletes = std::mem::take(&mut self.released_stored);
        let mut deletes = deletes.into_iter().peekable();
        for (event_time_ms, keys) in to_write {
            let bucket = &self.buckets[&event_time_ms];
            for (partition, offset, i) in keys {
                let key = OrderKey {
                    event_time_ms,
                    partition,
                    offset,
                };
                while let Some(deleted) = deletes.next_if(|d| *d < key) {
                    emit(deleted, None);
                }
                emit(key, Some(&bucket.entries[i].sample));
            }
        }
        for deleted in deletes {
            emit(deleted, None);
        }
    }

    /// Forgets what the store holds: the next [`Self::take_changes`] hands
    /// over every buffered sample and no release (for a complete
    /// checkpoint into an empty store).
    pub fn mark_all_unstored(&mut self) {
        self.released_stored.clear();
        self.unstored_buckets.clear();
        for (&t, bucket) in &mut self.buckets {
            for e in &mut bucket.entries {
                e.stored = false;
            }
            bucket.listed = true;
            self.unstored_buckets.push(t);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64) -> Sample {
        Sample {
            doc_id: 1,
            version: "v".into(),
            event_time_ms: t,
            context: vec![],
            labels: vec![],
            weight: 1.0,
            sample_id: None,
        }
    }

    fn key(t: i64, p: u32, o: u64) -> OrderKey {
        OrderKey {
            event_time_ms: t,
            partition: p,
            offset: o,
        }
    }

    fn changes(buf: &mut ReorderBuffer) -> Vec<(OrderKey, bool)> {
        let mut out = Vec::new();
        buf.take_changes(|k, s| out.push((k, s.is_some())));
        out
    }

    #[test]
    fn releases_below_the_watermark_in_total_order() {
        let mut buf = ReorderBuffer::new(10);
        for k in [
            key(30, 0, 5),
            key(10, 1, 2),
            key(10, 0, 9),
            key(20, 1, 3),
            key(40, 0, 6),
        ] {
            buf.insert(k, sample(k.event_time_ms));
        }
        let out: Vec<OrderKey> = buf.release_below(30).into_iter().map(|(k, _)| k).collect();
        assert_eq!(out, vec![key(10, 0, 9), key(10, 1, 2), key(20, 1, 3)]);
        assert_eq!(buf.len(), 2);
        assert!(buf.release_below(30).is_empty());
    }

    #[test]
    fn the_bound_signals_but_never_drops() {
        let mut buf = ReorderBuffer::new(1);
        buf.insert(key(1, 0, 0), sample(1));
        assert!(buf.is_full());
        buf.insert(key(2, 0, 1), sample(2));
        assert_eq!(buf.len(), 2);
    }

    #[test]
    fn a_key_inserted_again_replaces_its_sample() {
        let mut buf = ReorderBuffer::new(10);
        buf.insert(key(5, 0, 3), sample(5));
        buf.insert(key(5, 0, 4), sample(5));
        let mut again = sample(5);
        again.doc_id = 2;
        buf.insert(key(5, 0, 3), again);
        assert_eq!(buf.len(), 2);
        let out = buf.release_below(6);
        assert_eq!(
            out.iter()
                .map(|(k, s)| (k.offset, s.doc_id))
                .collect::<Vec<_>>(),
            vec![(3, 2), (4, 1)]
        );
    }

    #[test]
    fn changes_are_the_unstored_buffered_and_the_stored_released_in_key_order() {
        let mut buf = ReorderBuffer::new(10);
        buf.insert(key(10, 1, 0), sample(10));
        buf.insert(key(10, 0, 0), sample(10));
        buf.insert(key(20, 0, 1), sample(20));
        assert_eq!(
            changes(&mut buf),
            vec![
                (key(10, 0, 0), true),
                (key(10, 1, 0), true),
                (key(20, 0, 1), true)
            ]
        );
        assert!(changes(&mut buf).is_empty(), "now stored");
        // Buffered and released between two checkpoints: never written.
        buf.insert(key(15, 1, 1), sample(15));
        buf.insert(key(30, 1, 2), sample(30));
        buf.release_below(16);
        buf.insert(key(25, 0, 2), sample(25));
        assert_eq!(
            changes(&mut buf),
            vec![
                (key(10, 0, 0), false),
                (key(10, 1, 0), false),
                (key(25, 0, 2), true),
                (key(30, 1, 2), true)
            ]
        );
        buf.insert_stored(key(40, 2, 0), sample(40));
        assert!(changes(&mut buf).is_empty(), "restored samples are stored");
        buf.mark_all_unstored();
        assert_eq!(changes(&mut buf).len(), 4, "every buffered sample");
    }
}
