//! The reorder buffer: samples wait here until the instance watermark
//! passes their event time, then leave in (event_time, partition, offset)
//! order — a total order fixed by the log.
//!
//! Samples are kept in one bucket per event-time millisecond, in arrival
//! order, and a bucket is sorted by (partition, offset) when it is
//! released. A sorted map of every sample would cost O(log n) with cache
//! misses per insert and per release in a buffer of ~10⁶ samples. The
//! buckets themselves sit in a ring indexed by millisecond, starting at
//! the oldest one still waiting: an insert finds its bucket by a
//! subtraction, a release pops buckets off the front. The ring spans
//! [`RING_SPAN_MS`]; buckets further ahead (a partition far ahead of the
//! others) wait in a sorted map and move into the ring as it advances.
//!
//! What the store holds of the buffer is the sample log's business
//! ([`crate::sample_log`]).

use std::collections::{BTreeMap, VecDeque};

use crate::prefetch::prefetch_slice;
use crate::sample::Sample;

/// Milliseconds of event time the ring of buckets spans (about 65 s, far
/// beyond the usual allowed out-of-orderness): an empty millisecond costs
/// the ring 24 bytes, so a full ring is 1.5 MiB.
pub const RING_SPAN_MS: usize = 1 << 16;

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

/// The samples of one event-time millisecond, in arrival order.
type Bucket = Vec<Entry>;

/// Every bucket, by millisecond. Each millisecond has at most one bucket,
/// in the ring when it lies within [`RING_SPAN_MS`] of `base`, in `far`
/// otherwise; the ring is empty only when `far` is too.
#[derive(Debug, Clone, Default)]
struct Buckets {
    /// The bucket of millisecond `base + i` at index `i` (empty buckets
    /// own no memory).
    ring: VecDeque<Bucket>,
    base: i64,
    /// Buckets at `base + RING_SPAN_MS` or later.
    far: BTreeMap<i64, Bucket>,
}

impl Buckets {
    /// First millisecond past the ring's reach.
    fn ring_end(&self) -> i64 {
        self.base.saturating_add(RING_SPAN_MS as i64)
    }

    /// The bucket of millisecond `t`, created empty if need be.
    fn bucket_mut(&mut self, t: i64) -> &mut Bucket {
        if self.ring.is_empty() {
            self.base = t;
        } else if t < self.base {
            self.extend_back_to(t);
        }
        if t >= self.ring_end() {
            return self.far.entry(t).or_default();
        }
        let index = usize::try_from(t.abs_diff(self.base)).expect("within the ring's span");
        if index >= self.ring.len() {
            self.ring.resize_with(index + 1, Bucket::new);
        }
        &mut self.ring[index]
    }

    /// Moves the ring's start back to `t`, a millisecond before every
    /// waiting one (the ring starts at the first sample it gets after
    /// emptying, and an older one may follow within the disorder window);
    /// the buckets that fall out of its new reach go to `far`.
    fn extend_back_to(&mut self, t: i64) {
        let shift = usize::try_from(self.base.abs_diff(t)).unwrap_or(usize::MAX);
        let keep = RING_SPAN_MS.saturating_sub(shift);
        while self.ring.len() > keep {
            let bucket = self.ring.pop_back().expect("longer than keep");
            if !bucket.is_empty() {
                let at = self.base + self.ring.len() as i64;
                self.far.insert(at, bucket);
            }
        }
        if self.ring.is_empty() {
            self.base = t;
            self.ring.push_back(Bucket::new());
        } else {
            for _ in 0..shift {
                self.ring.push_front(Bucket::new());
            }
            self.base = t;
        }
    }

    /// Moves into the ring the far buckets it now reaches; when the ring
    /// is empty, it restarts at the first far bucket.
    fn pull_far(&mut self) {
        if self.ring.is_empty() {
            match self.far.first_key_value() {
                Some((&t, _)) => self.base = t,
                None => return,
            }
        }
        let end = self.ring_end();
        while let Some(first) = self.far.first_entry()
            && *first.key() < end
        {
            let (t, bucket) = first.remove_entry();
            let index = usize::try_from(t.abs_diff(self.base)).expect("within the ring's span");
            if index >= self.ring.len() {
                self.ring.resize_with(index + 1, Bucket::new);
            }
            debug_assert!(self.ring[index].is_empty(), "one bucket per millisecond");
            self.ring[index] = bucket;
        }
    }

    /// Removes and returns the oldest bucket below `watermark_ms` with its
    /// millisecond, skipping empty ones; `None` when there is none.
    fn pop_below(&mut self, watermark_ms: i64) -> Option<(i64, Bucket)> {
        loop {
            if self.ring.is_empty() || self.base >= watermark_ms {
                return None;
            }
            let t = self.base;
            let bucket = self.ring.pop_front().expect("not empty");
            self.base += 1;
            if !self.far.is_empty() {
                self.pull_far();
            }
            if !bucket.is_empty() {
                return Some((t, bucket));
            }
        }
    }

    /// Every bucket with its millisecond (not in order across ring and
    /// far map).
    fn iter(&self) -> impl Iterator<Item = (i64, &Bucket)> {
        let ring = self
            .ring
            .iter()
            .enumerate()
            .map(|(i, b)| (self.base + i as i64, b));
        ring.chain(self.far.iter().map(|(&t, b)| (t, b)))
    }
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
    buckets: Buckets,
    len: usize,
    capacity: usize,
    /// Highest offset buffered per partition: an insert at or below it may
    /// replace a buffered sample with the same key.
    newest_offsets: BTreeMap<u32, u64>,
    spare: Vec<Bucket>,
    /// Scratch of [`ReorderBuffer::release_below_into`], kept for its
    /// capacity: a bucket's sort keys, and room to place them in order.
    order: Vec<Slot>,
    placed: Vec<Slot>,
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
            .flat_map(|(event_time_ms, bucket)| {
                bucket.iter().map(move |e| {
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
    #[inline]
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
        let bucket = self.buckets.bucket_mut(key.event_time_ms);
        if bucket.capacity() == 0
            && let Some(room) = self.spare.pop()
        {
            *bucket = room;
        }
        if maybe_present
            && let Some(old) = bucket
                .iter_mut()
                .find(|e| e.partition == key.partition && e.offset == key.offset)
        {
            old.sample = sample;
            return;
        }
        bucket.push(Entry {
            partition: key.partition,
            offset: key.offset,
            sample,
        });
        // The bucket's next sample arrives after many others (a bucket
        // fills over the whole disorder window): ask now for the room it
        // will be written to, which has been out of the caches since the
        // vector's previous bucket was released.
        if let Some(next) = bucket.spare_capacity_mut().first() {
            prefetch_slice(std::slice::from_ref(next));
        }
        self.len += 1;
    }

    /// Removes and returns, in release order, every sample with event time
    /// strictly below `watermark_ms`.
    pub fn release_below(&mut self, watermark_ms: i64) -> Vec<(OrderKey, Sample)> {
        let mut released = Vec::new();
        self.release_below_into(watermark_ms, usize::MAX, &mut released);
        released
    }

    /// [`ReorderBuffer::release_below`] appending to `released`, so a
    /// caller that releases over and over reuses one vector (a fresh one per
    /// release costs fresh pages: the allocator hands freed ones back to the
    /// system), and stopping at the end of the millisecond in which the
    /// count appended reaches `limit`: a caller releasing a large part of
    /// the buffer (at the end of the input) can take it in parts of about
    /// `limit`, in the same order. Returns how many samples were appended;
    /// 0 when nothing below `watermark_ms` is left.
    pub fn release_below_into(
        &mut self,
        watermark_ms: i64,
        limit: usize,
        released: &mut Vec<(OrderKey, Sample)>,
    ) -> usize {
        let before = released.len();
        while released.len() - before < limit
            && let Some((event_time_ms, mut entries)) = self.buckets.pop_below(watermark_ms)
        {
            self.len -= entries.len();
            // Sort small keys, not the samples, then move each sample out
            // once, in that order.
            self.order.clear();
            self.order.extend(
                entries
                    .iter()
                    .enumerate()
                    .map(|(i, e)| (e.partition, e.offset, i)),
            );
            sort_order(&mut self.order, &mut self.placed);
            move_in_order(&mut entries, &self.order, event_time_ms, released);
            if self.spare.len() < SPARE_BUCKETS {
                self.spare.push(entries);
            }
        }
        self.order.clear();
        self.placed.clear();
        for scratch in [&mut self.order, &mut self.placed] {
            if scratch.capacity() > SCRATCH_ENTRIES {
                scratch.shrink_to(SCRATCH_ENTRIES);
            }
        }
        released.len() - before
    }
}

/// Most partitions [`sort_order`] places by counting; a bucket holding
/// more is sorted.
const COUNTED_PARTITIONS: usize = 16;

/// Sorts a bucket's keys, as `sort_unstable` would (the index makes every
/// key distinct, so there is one order), in linear time for the usual
/// bucket: one partition's samples arrive in offset order, so a bucket is
/// a few ascending runs interleaved. The keys are placed partition by
/// partition (counted, stable), and a partition whose offsets then turn
/// out not ascending (a replay or a re-delivery inserted out of order) is
/// sorted on its own. Sorting every bucket was 7.7 % of bench 1's Beta
/// row. `placed` is scratch.
fn sort_order(order: &mut Vec<Slot>, placed: &mut Vec<Slot>) {
    if order.len() < 2 {
        return;
    }
    // (partition, count), in order of first appearance.
    let mut counts = [(0_u32, 0_usize); COUNTED_PARTITIONS];
    let mut n = 0;
    for &(partition, _, _) in order.iter() {
        match counts[..n].iter_mut().find(|(p, _)| *p == partition) {
            Some((_, count)) => *count += 1,
            None if n < COUNTED_PARTITIONS => {
                counts[n] = (partition, 1);
                n += 1;
            }
            None => {
                order.sort_unstable();
                return;
            }
        }
    }
    if n == 1 {
        if !order.is_sorted() {
            order.sort_unstable();
        }
        return;
    }
    let counts = &mut counts[..n];
    counts.sort_unstable();
    // Where each partition's keys start, then where its next one goes.
    let mut next = [0_usize; COUNTED_PARTITIONS];
    let mut at = 0;
    for (slot, &(_, count)) in next.iter_mut().zip(counts.iter()) {
        *slot = at;
        at += count;
    }
    placed.clear();
    placed.resize(order.len(), (0, 0, 0));
    for &key in order.iter() {
        let i = counts
            .iter()
            .position(|&(p, _)| p == key.0)
            .expect("every partition was counted");
        placed[next[i]] = key;
        next[i] += 1;
    }
    // `next[i]` now ends partition i's keys.
    let mut start = 0;
    for &end in &next[..n] {
        let run = &mut placed[start..end];
        if !run.is_sorted() {
            run.sort_unstable();
        }
        start = end;
    }
    std::mem::swap(order, placed);
}

/// Moves every entry out of `entries` to the end of `released`, in the
/// order `order` gives (a permutation of its indices, with their keys),
/// leaving `entries` empty with its capacity. Each sample (~170 bytes)
/// is copied once, from the bucket straight into `released`'s room;
/// reading each entry out and pushing it copied it twice.
#[allow(unsafe_code)]
fn move_in_order(
    entries: &mut Vec<Entry>,
    order: &[Slot],
    event_time_ms: i64,
    released: &mut Vec<(OrderKey, Sample)>,
) {
    assert_eq!(order.len(), entries.len(), "one order slot per entry");
    debug_assert!(
        {
            let mut seen = vec![false; order.len()];
            order
                .iter()
                .all(|&(_, _, i)| i < seen.len() && !std::mem::replace(&mut seen[i], true))
        },
        "a permutation"
    );
    released.reserve(order.len());
    let start = released.len();
    let base = entries.as_ptr();
    // SAFETY: the entries stay in the allocation, and from here on the
    // vector never drops them: each is read exactly once below (nothing
    // below can panic).
    unsafe { entries.set_len(0) };
    let room = released.spare_capacity_mut()[..order.len()].as_mut_ptr();
    for (n, &(partition, offset, i)) in order.iter().enumerate() {
        let key = OrderKey {
            event_time_ms,
            partition,
            offset,
        };
        // SAFETY: `order` holds each index below the former length
        // exactly once (built from the entries' enumeration, then only
        // sorted; checked above in debug builds), so this entry's sample
        // is initialised and moved only here, into room `n` of the
        // `order.len()` reserved past `start`; `released` owns it from
        // now on. The entry's partition and offset are plain data, left
        // behind.
        unsafe {
            let to = room.add(n).cast::<(OrderKey, Sample)>();
            (&raw mut (*to).0).write(key);
            std::ptr::copy_nonoverlapping(&raw const (*base.add(i)).sample, &raw mut (*to).1, 1);
        }
    }
    // SAFETY: the loop initialised the `order.len()` entries of room
    // reserved after `start`.
    unsafe { released.set_len(start + order.len()) };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t: i64) -> Sample {
        Sample {
            doc_id: 1,
            version: "v".into(),
            event_time_ms: t,
            // On the heap: a sample moved out of a bucket twice, or not
            // at all, would be freed twice or leak.
            context: vec![t as f32],
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
        assert_eq!(buf.release_below_into(4, usize::MAX, &mut out), 10);
        assert_eq!(buf.release_below_into(4, usize::MAX, &mut out), 0);
        assert_eq!(buf.release_below_into(8, usize::MAX, &mut out), n as usize);
        let keys: Vec<OrderKey> = out.iter().map(|(k, _)| *k).collect();
        assert_eq!(keys[0], key(0, 0, 0), "what was there stays first");
        assert!(keys[1..].is_sorted(), "release order");
        assert_eq!(keys.len(), 1 + 10 + n as usize);
        assert!(buf.is_empty());
        assert!(
            buf.order.capacity() <= SCRATCH_ENTRIES,
            "large scratch given back"
        );
    }

    #[test]
    fn a_release_in_parts_ends_each_at_a_whole_millisecond() {
        let mut whole = ReorderBuffer::new(usize::MAX);
        for o in 0..1_000u64 {
            // Milliseconds of 1 to 7 samples, arriving out of order.
            let t = (o * 7919 % 1_000) as i64 / 4;
            whole.insert(key(t, (o % 3) as u32, o), sample(t));
        }
        let mut parts = whole.clone();
        let expected = whole.release_below(200);
        let mut got = Vec::new();
        loop {
            let mut part = Vec::new();
            let n = parts.release_below_into(200, 10, &mut part);
            assert_eq!(n, part.len());
            if n == 0 {
                break;
            }
            let last = part.last().expect("a part").0.event_time_ms;
            assert!(
                part.len() - part.iter().filter(|(k, _)| k.event_time_ms == last).count() < 10,
                "a part stops at the millisecond that reaches the limit"
            );
            got.extend(part);
        }
        assert_eq!(got, expected);
        assert_eq!(parts, whole);
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
    fn buckets_beyond_the_ring_wait_in_order() {
        let span = RING_SPAN_MS as i64;
        let mut buf = ReorderBuffer::new(100);
        for (i, t) in [0, 3 * span, 5, span + 1, span - 1, 3 * span + 2, -2 * span]
            .into_iter()
            .enumerate()
        {
            buf.insert(key(t, 0, i as u64), sample(t));
        }
        assert!(
            !buf.buckets.far.is_empty(),
            "some buckets wait beyond the ring"
        );
        let times = |out: Vec<(OrderKey, Sample)>| -> Vec<i64> {
            out.into_iter().map(|(k, _)| k.event_time_ms).collect()
        };
        assert_eq!(
            times(buf.release_below(2 * span)),
            vec![-2 * span, 0, 5, span - 1, span + 1]
        );
        assert_eq!(buf.len(), 2);
        buf.insert(key(2 * span, 1, 0), sample(2 * span));
        assert_eq!(
            times(buf.release_below(i64::MAX)),
            vec![2 * span, 3 * span, 3 * span + 2]
        );
        assert!(buf.is_empty());
        assert!(buf.buckets.ring.is_empty() && buf.buckets.far.is_empty());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert { t: i64, partition: u32, offset: u64 },
        Release(i64),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let span = RING_SPAN_MS as i64;
        // Mostly a narrow disorder window, sometimes a jump past the ring
        // either way, and offsets reused so that keys repeat.
        let t = prop_oneof![
            4 => 0..300i64,
            1 => -3 * span..4 * span,
            1 => Just(i64::MAX - 1),
        ];
        prop_oneof![
            5 => (t, 0..3u32, 0..40u64).prop_map(|(t, partition, offset)| Op::Insert { t, partition, offset }),
            1 => prop_oneof![0..300i64, -3 * span..5 * span].prop_map(Op::Release),
        ]
    }

    proptest::proptest! {
        /// A bucket's keys come out as a full sort puts them: partitions
        /// interleaved, each partition's offsets ascending (the usual
        /// bucket) or not (a replay), and more partitions than are counted.
        #[test]
        fn sort_order_sorts(
            keys in proptest::collection::vec((0..20_u32, 0..1_000_u64), 0..300),
            ascending in proptest::prelude::any::<bool>(),
            partitions in 1..20_u32,
        ) {
            let mut keys: Vec<(u32, u64)> =
                keys.into_iter().map(|(p, o)| (p % partitions, o)).collect();
            if ascending {
                // Offsets ascending within each partition, as one
                // partition's records arrive.
                let mut next = std::collections::HashMap::new();
                for (p, o) in &mut keys {
                    let last = next.entry(*p).or_insert(0_u64);
                    *last += 1 + *o % 3;
                    *o = *last;
                }
            }
            let mut order: Vec<Slot> =
                keys.iter().enumerate().map(|(i, &(p, o))| (p, o, i)).collect();
            let mut want = order.clone();
            want.sort_unstable();
            let mut placed = Vec::new();
            sort_order(&mut order, &mut placed);
            proptest::prop_assert_eq!(order, want);
        }

        /// The ring and its far map release exactly what a sorted map of
        /// every sample releases.
        #[test]
        fn releases_what_a_sorted_map_releases(ops in proptest::collection::vec(op(), 1..200)) {
            let mut buf = ReorderBuffer::new(usize::MAX);
            let mut model: BTreeMap<OrderKey, u64> = BTreeMap::new();
            for (i, op) in ops.into_iter().enumerate() {
                match op {
                    Op::Insert { t, partition, offset } => {
                        let mut s = sample(t);
                        s.doc_id = i as u64;
                        buf.insert(key(t, partition, offset), s);
                        model.insert(key(t, partition, offset), i as u64);
                    }
                    Op::Release(w) => {
                        let got: Vec<(OrderKey, u64)> = buf
                            .release_below(w)
                            .into_iter()
                            .map(|(k, s)| (k, s.doc_id))
                            .collect();
                        let keep = model.split_off(&key(w, 0, 0));
                        let want: Vec<(OrderKey, u64)> = std::mem::replace(&mut model, keep).into_iter().collect();
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                proptest::prop_assert_eq!(buf.len(), model.len());
            }
            let rest: Vec<(OrderKey, u64)> = buf
                .release_below(i64::MAX)
                .into_iter()
                .map(|(k, s)| (k, s.doc_id))
                .collect();
            let want: Vec<(OrderKey, u64)> = model
                .into_iter()
                .filter(|(k, _)| k.event_time_ms < i64::MAX)
                .collect();
            proptest::prop_assert_eq!(rest, want);
        }
    }
}
