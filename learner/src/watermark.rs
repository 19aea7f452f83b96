//! Event-time watermarks.
//!
//! Each partition's watermark is the largest event time it has delivered
//! minus the allowed out-of-orderness. A sample whose event time is below
//! its own partition's watermark (as it stood before the sample) is *late*.
//! The instance watermark is the minimum over the active partitions;
//! buffered samples below it are released in (event_time, partition,
//! offset) order.
//!
//! Lateness is judged against the sample's own partition only, never the
//! instance watermark: a partition's prefix of records fixes it, whatever
//! order the broker interleaves partitions in. And a sample that is not
//! late is never behind anything already released, because the released
//! watermark is at most its partition's watermark. Together: the set of
//! applied samples and their order depend on the log alone, so a replay
//! from any checkpoint reproduces them.
//!
//! Idle partitions: a partition that has delivered nothing holds the
//! instance watermark back (at `i64::MIN`) until it delivers or is marked
//! idle by the driver ([`Watermarks::set_idle`]), which the driver does when
//! a partition has no new records for the configured idle timeout while the
//! broker reports it caught up. An idle partition is left out of the
//! minimum; it becomes active again with its next record. Idleness is the
//! one wall-clock input: a partition that goes idle and later resumes with
//! events older than the released watermark sends those to the dead-letter
//! sink as `late` (checked by the engine), instead of applying them out of
//! order.

use std::collections::BTreeMap;

/// Watermark state of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionClock {
    /// Largest event time delivered, if any.
    pub max_event_ms: Option<i64>,
    /// Left out of the instance watermark until its next record.
    pub idle: bool,
}

/// Per-partition and instance watermarks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermarks {
    out_of_orderness_ms: i64,
    partitions: BTreeMap<u32, PartitionClock>,
    /// [`Watermarks::instance_watermark`], recomputed whenever a clock
    /// changes (the engine asks for it after every record).
    instance_ms: i64,
}

/// Whether a sample is on time for its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeliness {
    /// At or above its partition's watermark.
    OnTime,
    /// Below its partition's watermark, which is given.
    Late {
        /// The partition watermark it missed.
        watermark_ms: i64,
    },
}

impl Watermarks {
    /// Watermarks for the assigned `partitions`, none of which has
    /// delivered yet.
    pub fn new(out_of_orderness_ms: i64, partitions: impl IntoIterator<Item = u32>) -> Self {
        let clock = PartitionClock {
            max_event_ms: None,
            idle: false,
        };
        Self::from_clocks(
            out_of_orderness_ms,
            partitions.into_iter().map(|p| (p, clock)).collect(),
        )
    }

    /// Restores watermarks from checkpointed clocks.
    pub fn from_clocks(out_of_orderness_ms: i64, clocks: BTreeMap<u32, PartitionClock>) -> Self {
        let mut watermarks = Self {
            out_of_orderness_ms: out_of_orderness_ms.max(0),
            partitions: clocks,
            instance_ms: i64::MIN,
        };
        watermarks.recompute();
        watermarks
    }

    /// The allowed out-of-orderness in ms.
    pub fn out_of_orderness_ms(&self) -> i64 {
        self.out_of_orderness_ms
    }

    /// Every partition's clock, for checkpoints.
    pub fn clocks(&self) -> &BTreeMap<u32, PartitionClock> {
        &self.partitions
    }

    /// Adds a partition (e.g. after a rescale) that has delivered nothing.
    pub fn assign(&mut self, partition: u32) {
        self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_ms: None,
            idle: false,
        });
        self.recompute();
    }

    /// The watermark of `partition` (`i64::MIN` before its first record).
    pub fn partition_watermark(&self, partition: u32) -> i64 {
        self.partitions
            .get(&partition)
            .map_or(i64::MIN, |c| self.watermark_of(c))
    }

    fn watermark_of(&self, clock: &PartitionClock) -> i64 {
        clock
            .max_event_ms
            .map_or(i64::MIN, |t| t.saturating_sub(self.out_of_orderness_ms))
    }

    /// Judges a sample of `partition` at `event_ms` against the partition's
    /// watermark, then advances the partition's clock and marks it active.
    pub fn observe(&mut self, partition: u32, event_ms: i64) -> Timeliness {
        let out_of_orderness_ms = self.out_of_orderness_ms;
        // Most samples of an active partition arrive at or below its
        // newest event time: they change no clock, only the comparison
        // is made.
        if let Some(clock) = self.partitions.get(&partition)
            && !clock.idle
            && let Some(max_event_ms) = clock.max_event_ms
            && event_ms <= max_event_ms
        {
            let watermark_ms = max_event_ms.saturating_sub(out_of_orderness_ms);
            return if event_ms < watermark_ms {
                Timeliness::Late { watermark_ms }
            } else {
                Timeliness::OnTime
            };
        }
        let clock = self.partitions.entry(partition).or_insert(PartitionClock {
            max_event_ms: None,
            idle: false,
        });
        let was_idle = std::mem::replace(&mut clock.idle, false);
        let max_event_ms = clock.max_event_ms;
        let watermark_ms = max_event_ms.map_or(i64::MIN, |t| t.saturating_sub(out_of_orderness_ms));
        let timeliness = if event_ms < watermark_ms {
            Timeliness::Late { watermark_ms }
        } else {
            clock.max_event_ms = Some(max_event_ms.map_or(event_ms, |m| m.max(event_ms)));
            Timeliness::OnTime
        };
        if was_idle || clock.max_event_ms != max_event_ms {
            self.recompute();
        }
        timeliness
    }

    /// Marks a partition idle (left out of the minimum) or active.
    pub fn set_idle(&mut self, partition: u32, idle: bool) {
        if let Some(clock) = self.partitions.get_mut(&partition) {
            clock.idle = idle;
            self.recompute();
        }
    }

    /// Minimum watermark over the active partitions, `i64::MIN` while an
    /// active partition has delivered nothing. When every partition is
    /// idle, the largest partition watermark: release catches up with the
    /// furthest partition but never jumps past what any partition has
    /// delivered, so a partition that resumes is judged against real
    /// event times (ending a bounded input is `Engine::finish`).
    pub fn instance_watermark(&self) -> i64 {
        self.instance_ms
    }

    fn recompute(&mut self) {
        let clocks = self.partitions.values();
        self.instance_ms = clocks
            .clone()
            .filter(|c| !c.idle)
            .map(|c| self.watermark_of(c))
            .min()
            .unwrap_or_else(|| {
                clocks
                    .map(|c| self.watermark_of(c))
                    .max()
                    .unwrap_or(i64::MIN)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition, from the clocks alone.
    fn instance_by_definition(w: &Watermarks) -> i64 {
        let marks = |active: bool| {
            w.clocks()
                .iter()
                .filter(move |(_, c)| !active || !c.idle)
                .map(|(&p, _)| w.partition_watermark(p))
        };
        marks(true)
            .min()
            .unwrap_or_else(|| marks(false).max().unwrap_or(i64::MIN))
    }

    #[derive(Debug, Clone)]
    enum Op {
        Observe(u32, i64),
        Idle(u32, bool),
        Assign(u32),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            6 => (0..4_u32, 0..1_000_i64).prop_map(|(p, t)| Op::Observe(p, t)),
            2 => (0..4_u32, any::<bool>()).prop_map(|(p, idle)| Op::Idle(p, idle)),
            1 => (0..6_u32).prop_map(Op::Assign),
        ]
    }

    proptest::proptest! {
        /// The instance watermark is kept up to date as clocks change; it
        /// must always equal its definition. Each sample is judged late by
        /// its partition's watermark alone.
        #[test]
        fn the_kept_instance_watermark_is_the_definitions(
            ops in proptest::collection::vec(op(), 0..60),
            out_of_orderness in 0..50_i64,
        ) {
            let mut w = Watermarks::new(out_of_orderness, [0, 1, 2]);
            for op in ops {
                match op {
                    Op::Observe(p, t) => {
                        // Judged against the partition's watermark before
                        // it; a sample on time raises its clock, a late one
                        // leaves it; either way the partition is active.
                        let watermark_ms = w.partition_watermark(p);
                        let max_before = w.clocks().get(&p).and_then(|c| c.max_event_ms);
                        let late = t < watermark_ms;
                        let expected = if late {
                            Timeliness::Late { watermark_ms }
                        } else {
                            Timeliness::OnTime
                        };
                        proptest::prop_assert_eq!(w.observe(p, t), expected);
                        let clock = w.clocks()[&p];
                        proptest::prop_assert!(!clock.idle);
                        let max_after = if late {
                            max_before
                        } else {
                            Some(max_before.map_or(t, |m| m.max(t)))
                        };
                        proptest::prop_assert_eq!(clock.max_event_ms, max_after);
                    }
                    Op::Idle(p, idle) => w.set_idle(p, idle),
                    Op::Assign(p) => w.assign(p),
                }
                proptest::prop_assert_eq!(w.instance_watermark(), instance_by_definition(&w));
            }
            let restored = Watermarks::from_clocks(out_of_orderness, w.clocks().clone());
            proptest::prop_assert_eq!(restored.instance_watermark(), w.instance_watermark());
        }
    }

    #[test]
    fn lateness_is_judged_per_partition() {
        let mut w = Watermarks::new(100, [0, 1]);
        assert_eq!(w.observe(0, 1_000), Timeliness::OnTime);
        assert_eq!(
            w.observe(0, 950),
            Timeliness::OnTime,
            "within out-of-orderness"
        );
        assert_eq!(
            w.observe(0, 900),
            Timeliness::OnTime,
            "exactly on the watermark"
        );
        assert_eq!(w.observe(0, 899), Timeliness::Late { watermark_ms: 900 });
        // Partition 1 is far behind but not late: its own clock is what counts.
        assert_eq!(w.observe(1, 10), Timeliness::OnTime);
        assert_eq!(w.partition_watermark(0), 900);
        assert_eq!(w.instance_watermark(), -90);
    }

    #[test]
    fn silent_partitions_hold_the_instance_back_until_idle() {
        let mut w = Watermarks::new(0, [0, 1]);
        w.observe(0, 500);
        assert_eq!(w.instance_watermark(), i64::MIN);
        w.set_idle(1, true);
        assert_eq!(w.instance_watermark(), 500);
        w.observe(1, 200);
        assert_eq!(
            w.instance_watermark(),
            200,
            "a record makes it active again"
        );
        w.set_idle(0, true);
        w.set_idle(1, true);
        assert_eq!(
            w.instance_watermark(),
            500,
            "all idle: up to the furthest partition, never beyond"
        );
    }

    #[test]
    fn a_late_sample_does_not_move_the_clock() {
        let mut w = Watermarks::new(10, [3]);
        w.observe(3, 100);
        let before = w.clone();
        assert!(matches!(w.observe(3, 50), Timeliness::Late { .. }));
        assert_eq!(w, before);
    }
}
