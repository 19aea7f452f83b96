//! The reorder buffer: samples wait here until the instance watermark
//! passes their event time, then leave in (event_time, partition, offset)
//! order — a total order fixed by the log.

use std::collections::BTreeMap;

use crate::sample::Sample;

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

/// Samples waiting for the watermark. The bound is soft: inserts always
/// succeed (dropping or refusing would lose a sample or stall a partition),
/// and [`ReorderBuffer::is_full`] tells the driver to pause the partitions
/// that are ahead until the watermark catches up.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReorderBuffer {
    entries: BTreeMap<OrderKey, Sample>,
    capacity: usize,
}

impl ReorderBuffer {
    /// An empty buffer holding at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: BTreeMap::new(),
            capacity,
        }
    }

    /// Samples waiting.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True at or beyond the bound.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.capacity
    }

    /// True when the buffer holds at most half its bound: backpressure
    /// lifts here, not at the bound, so partitions are not paused and
    /// resumed on every sample.
    pub fn is_half_empty(&self) -> bool {
        self.entries.len() <= self.capacity / 2
    }

    /// Buffers a sample.
    pub fn insert(&mut self, key: OrderKey, sample: Sample) {
        self.entries.insert(key, sample);
    }

    /// Removes and returns, in release order, every sample with event time
    /// strictly below `watermark_ms`.
    pub fn release_below(&mut self, watermark_ms: i64) -> Vec<(OrderKey, Sample)> {
        let split = OrderKey {
            event_time_ms: watermark_ms,
            partition: 0,
            offset: 0,
        };
        let rest = self.entries.split_off(&split);
        std::mem::replace(&mut self.entries, rest)
            .into_iter()
            .collect()
    }

    /// The sample at `key`, if still waiting.
    pub fn get(&self, key: OrderKey) -> Option<&Sample> {
        self.entries.get(&key)
    }

    /// Every waiting sample in release order, for checkpoints.
    pub fn iter(&self) -> impl Iterator<Item = (&OrderKey, &Sample)> {
        self.entries.iter()
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
}
