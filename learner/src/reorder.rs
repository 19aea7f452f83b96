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
//! What the store holds of the buffer is the sample log's business
//! ([`crate::sample_log`]).

use std::collections::BTreeMap;

use crate::prefetch::prefetch_slice;
use crate::sample::Sample;

/// Emptied bucket vectors kept for reuse (their capacity is the point).
const SPARE_BUCKETS: usize = 64;

/// Entries of release scratch kept past a release (an unusually large
/// bucket's scratch is given back).
const SCRATCH_ENTRIES: usize = 4096;

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
    sample: Sample,
}

/// The samples of one event-time millisecond.
#[derive(Debug, Clone, PartialEq, Default)]
struct Bucket {
    /// In arrival order.
    entries: Vec<Entry>,
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
    spare: Vec<Vec<Entry>>,
    /// Scratch of [`ReorderBuffer::release_below_into`], kept for its
    /// capacity: a bucket's sort keys, and its entries by arrival index.
    order: Vec<Slot>,
    slots: Vec<Option<Entry>>,
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

    /// Calls `f` with every buffered sample, in release order.
    pub fn for_each(&self, mut f: impl FnMut(OrderKey, &Sample)) {
        for (key, sample) in self.sorted() {
            f(key, sample);
        }
    }

    /// Buffers a sample; a sample buffered under the same key is replaced.
    pub fn insert(&mut self, key: OrderKey, sample: Sample) {
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
            });
        let entry = Entry {
            partition: key.partition,
            offset: key.offset,
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
        // The bucket's next sample arrives after many others (a bucket
        // fills over the whole disorder window): ask now for the room it
        // will be written to, which has been out of the caches since the
        // vector's previous bucket was released.
        if let Some(next) = bucket.entries.spare_capacity_mut().first() {
            prefetch_slice(std::slice::from_ref(next));
        }
        self.len += 1;
    }

    /// Removes and returns, in release order, every sample with event time
    /// strictly below `watermark_ms`.
    pub fn release_below(&mut self, watermark_ms: i64) -> Vec<(OrderKey, Sample)> {
        let mut released = Vec::new();
        self.release_below_into(watermark_ms, &mut released);
        released
    }

    /// [`ReorderBuffer::release_below`] appending to `released`, so a
    /// caller that releases over and over reuses one vector (a fresh one per
    /// release costs fresh pages: the allocator hands freed ones back to the
    /// system). Returns how many samples were appended.
    pub fn release_below_into(
        &mut self,
        watermark_ms: i64,
        released: &mut Vec<(OrderKey, Sample)>,
    ) -> usize {
        let before = released.len();
        while let Some(first) = self.buckets.first_entry()
            && *first.key() < watermark_ms
        {
            let (event_time_ms, bucket) = first.remove_entry();
            let mut entries = bucket.entries;
            self.len -= entries.len();
            // Sort small keys, not the samples, then move each sample once
            // more (into `slots`, from which it is taken in order).
            self.order.clear();
            self.order.extend(
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.partition, e.offset, i)),
            );
            self.order.sort_unstable();
            self.slots.clear();
            self.slots.extend(entries.drain(..).map(Some));
            released.reserve(self.order.len());
            for &(partition, offset, i) in &self.order {
                let entry = self.slots[i].take().expect("each index once");
                let key = OrderKey {
                    event_time_ms,
                    partition,
                    offset,
                };
                released.push((key, entry.sample));
            }
            if self.spare.len() < SPARE_BUCKETS {
                self.spare.push(entries);
            }
        }
        self.slots.clear();
        if self.slots.capacity() > SCRATCH_ENTRIES {
            self.slots.shrink_to(SCRATCH_ENTRIES);
            self.order.shrink_to(SCRATCH_ENTRIES);
        }
        released.len() - before
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
            labels: Default::default(),
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
    fn releases_append_in_order_to_a_reused_vector() {
        let mut buf = ReorderBuffer::new(100);
        // Buckets bigger than the kept scratch too, arriving out of order.
        let n = SCRATCH_ENTRIES as u64 + 10;
        for o in (0..n).rev() {
            buf.insert(key(7, (o % 3) as u32, o), sample(7));
        }
        for o in 0..5 {
            buf.insert(key(3, 1, 100 + o), sample(3));
            buf.insert(key(3, 0, 200 + o), sample(3));
        }
        let mut out = vec![(key(0, 0, 0), sample(0))];
        assert_eq!(buf.release_below_into(4, &mut out), 10);
        assert_eq!(buf.release_below_into(4, &mut out), 0);
        assert_eq!(buf.release_below_into(8, &mut out), n as usize);
        let keys: Vec<OrderKey> = out.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys[0], key(0, 0, 0), "what was there stays first");
        assert!(keys[1..].is_sorted(), "release order");
        assert_eq!(keys.len(), 1 + 10 + n as usize);
        assert!(buf.is_empty());
        assert!(
            buf.slots.capacity() <= SCRATCH_ENTRIES,
            "large scratch given back"
        );
        assert!(buf.slots.is_empty());
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
}
