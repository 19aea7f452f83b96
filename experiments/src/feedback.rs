//! How labels reach a policy: at once, or after a delay and in per-doc
//! micro-batches triggered by count — the regime of joined samples.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use anyhow::{Result, ensure};
use posterior_learner::posterior::Observation;

use crate::policy::Policy;

/// Most labels in flight at once (a run fails rather than grow past it).
pub const IN_FLIGHT_MAX: usize = 1 << 22;
/// Largest micro-batch.
pub const BATCH_SIZE_MAX: usize = 1 << 16;

/// One label on its way to the learner.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// The doc shown.
    pub doc: u32,
    /// Its context.
    pub context: Vec<f32>,
    /// Clicked?
    pub reward: bool,
    /// When the exposure happened.
    pub event_time_ms: i64,
}

#[derive(Debug)]
struct InFlight {
    arrival_ms: i64,
    seq: u64,
    label: Label,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.arrival_ms, self.seq) == (other.arrival_ms, other.seq)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.arrival_ms, self.seq).cmp(&(other.arrival_ms, other.seq))
    }
}

/// Delays labels until their arrival time, then groups them per doc and
/// hands a doc's batch to the policy once it holds `batch_size` labels.
#[derive(Debug)]
pub struct Feedback {
    batch_size: usize,
    in_flight: BinaryHeap<Reverse<InFlight>>,
    pending: Vec<Vec<Label>>,
    seq: u64,
    applied: u64,
}

impl Feedback {
    /// A pipeline for `docs` docs with micro-batches of `batch_size`.
    pub fn new(docs: usize, batch_size: usize) -> Result<Self> {
        ensure!(
            (1..=BATCH_SIZE_MAX).contains(&batch_size),
            "batch size must be in 1..={BATCH_SIZE_MAX}"
        );
        Ok(Self {
            batch_size,
            in_flight: BinaryHeap::new(),
            pending: vec![Vec::new(); docs],
            seq: 0,
            applied: 0,
        })
    }

    /// Sends `label`, to arrive at `arrival_ms`.
    pub fn send(&mut self, label: Label, arrival_ms: i64) -> Result<()> {
        ensure!(
            self.in_flight.len() < IN_FLIGHT_MAX,
            "more than {IN_FLIGHT_MAX} labels in flight"
        );
        self.seq += 1;
        self.in_flight.push(Reverse(InFlight {
            arrival_ms,
            seq: self.seq,
            label,
        }));
        Ok(())
    }

    /// Delivers every label that has arrived by `now_ms`, in arrival order,
    /// applying each doc's batch as soon as it is full.
    pub fn deliver(&mut self, now_ms: i64, policy: &mut dyn Policy) -> Result<()> {
        while self
            .in_flight
            .peek()
            .is_some_and(|f| f.0.arrival_ms <= now_ms)
        {
            let Some(Reverse(f)) = self.in_flight.pop() else {
                break;
            };
            let doc = f.label.doc as usize;
            self.pending[doc].push(f.label);
            if self.pending[doc].len() >= self.batch_size {
                let batch = std::mem::take(&mut self.pending[doc]);
                self.apply(&batch, policy)?;
                self.pending[doc] = batch;
                self.pending[doc].clear();
            }
        }
        Ok(())
    }

    fn apply(&mut self, batch: &[Label], policy: &mut dyn Policy) -> Result<()> {
        let observations: Vec<Observation<'_>> = batch
            .iter()
            .map(|l| Observation {
                context: &l.context,
                reward: l.reward,
                weight: 1.0,
                event_time_ms: l.event_time_ms,
            })
            .collect();
        if let Some(first) = batch.first() {
            policy.learn(first.doc, &observations)?;
            self.applied += batch.len() as u64;
        }
        Ok(())
    }

    /// Labels applied so far.
    pub fn applied(&self) -> u64 {
        self.applied
    }

    /// Labels sent but not yet applied.
    pub fn waiting(&self) -> usize {
        self.in_flight.len() + self.pending.iter().map(Vec::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use posterior_learner::simulation::seed::SimRng;
    use posterior_learner::simulation::world::Request;

    #[derive(Default)]
    struct Log(Vec<(u32, Vec<i64>)>);

    impl Policy for Log {
        fn choose(&mut self, _r: &Request, _rng: &mut SimRng) -> Result<usize> {
            Ok(0)
        }
        fn learn(&mut self, doc: u32, batch: &[Observation<'_>]) -> Result<()> {
            self.0
                .push((doc, batch.iter().map(|o| o.event_time_ms).collect()));
            Ok(())
        }
    }

    fn label(doc: u32, t: i64) -> Label {
        Label {
            doc,
            context: vec![1.0],
            reward: false,
            event_time_ms: t,
        }
    }

    #[test]
    fn delays_and_batches_by_count() {
        let mut f = Feedback::new(3, 2).unwrap();
        let mut log = Log::default();
        f.send(label(1, 0), 50).unwrap();
        f.send(label(1, 10), 20).unwrap();
        f.send(label(2, 10), 15).unwrap();
        f.deliver(19, &mut log).unwrap();
        assert!(log.0.is_empty());
        f.deliver(50, &mut log).unwrap();
        // Doc 1's two labels arrive at 20 and 50: one batch, arrival order.
        assert_eq!(log.0, vec![(1, vec![10, 0])]);
        assert_eq!(f.applied(), 2);
        assert_eq!(f.waiting(), 1);
    }
}
