//! Seeded observation pools and the cyclic walk over them.
//!
//! Contexts are `[1, u₁, …, u_{d−1}]` with uᵢ uniform in [−1, 1] (the
//! leading 1 is a bias feature). Labels are drawn from a fixed logistic
//! model with bias −2 and the other weights uniform in ±3/√d, so the click
//! rate is about 15 % and the true logit has a spread of about 1, like a
//! ranking model's. Weights are all 1 and event times 0 (no forgetting).

use std::ops::Range;

use posterior_learner::Observation;
use rand::{Rng, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Observations per pool; the benches reuse them cyclically.
pub const POOL_SIZE: usize = 4096;
/// Seed of every pool, warm-up and Thompson-draw RNG in the benches.
pub const SEED: u64 = 0x5EED_B3AC;
/// Logit of the true model's bias feature.
const TRUE_BIAS_LOGIT: f64 = -2.0;

/// `len` labelled contexts of dimension `dim`, generated once from a seed.
#[derive(Debug, Clone)]
pub struct ObservationPool {
    dim: usize,
    contexts: Vec<f32>,
    rewards: Vec<bool>,
}

impl ObservationPool {
    /// A pool of `len` observations of dimension `dim` (0 for Beta models:
    /// empty contexts, labels at the bias rate).
    pub fn new(dim: usize, len: usize, seed: u64) -> Self {
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed ^ dim as u64);
        let scale = 3.0 / (dim.max(1) as f64).sqrt();
        let truth: Vec<f64> = (1..dim).map(|_| rng.random_range(-scale..scale)).collect();
        let mut contexts = Vec::with_capacity(len * dim);
        let mut rewards = Vec::with_capacity(len);
        for _ in 0..len {
            let mut logit = TRUE_BIAS_LOGIT;
            if dim > 0 {
                contexts.push(1.0);
            }
            for w in &truth {
                let x: f32 = rng.random_range(-1.0..1.0);
                logit += w * f64::from(x);
                contexts.push(x);
            }
            let p = 1.0 / (1.0 + (-logit).exp());
            rewards.push(rng.random_bool(p));
        }
        Self {
            dim,
            contexts,
            rewards,
        }
    }

    /// The standard pool of the benches: [`POOL_SIZE`] observations from
    /// [`SEED`].
    pub fn standard(dim: usize) -> Self {
        Self::new(dim, POOL_SIZE, SEED)
    }

    /// The context dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of observations.
    pub fn len(&self) -> usize {
        self.rewards.len()
    }

    /// Whether the pool is empty.
    pub fn is_empty(&self) -> bool {
        self.rewards.is_empty()
    }

    /// The `i`-th context (cyclically).
    pub fn context(&self, i: usize) -> &[f32] {
        let i = i % self.len();
        &self.contexts[i * self.dim..(i + 1) * self.dim]
    }

    /// Fraction of positive labels.
    pub fn positive_rate(&self) -> f64 {
        self.rewards.iter().filter(|&&r| r).count() as f64 / self.len() as f64
    }

    /// The pool as observations (weight 1, event time 0), borrowing the
    /// contexts.
    pub fn observations(&self) -> Vec<Observation<'_>> {
        (0..self.len())
            .map(|i| Observation::new(self.context(i), self.rewards[i]))
            .collect()
    }
}

/// Walks a pool in consecutive micro-batches of a fixed size, wrapping at
/// the end; the pool size must be a multiple of the batch size so that no
/// batch straddles the wrap.
#[derive(Debug, Clone)]
pub struct BatchCycle {
    next: usize,
    batch: usize,
    len: usize,
}

impl BatchCycle {
    /// A walk over `len` items in batches of `batch`.
    ///
    /// # Panics
    /// If `batch` is 0 or does not divide `len`.
    pub fn new(len: usize, batch: usize) -> Self {
        assert!(
            batch > 0 && len.is_multiple_of(batch),
            "batch {batch} must divide the pool size {len}"
        );
        Self {
            next: 0,
            batch,
            len,
        }
    }

    /// The index range of the next batch.
    #[inline]
    pub fn next_range(&mut self) -> Range<usize> {
        let start = self.next;
        self.next = if start + self.batch == self.len {
            0
        } else {
            start + self.batch
        };
        start..start + self.batch
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pools_are_seeded_and_shaped() {
        let a = ObservationPool::new(32, 256, 7);
        let b = ObservationPool::new(32, 256, 7);
        assert_eq!(a.contexts, b.contexts);
        assert_eq!(a.rewards, b.rewards);
        assert_eq!(a.context(3).len(), 32);
        assert_eq!(a.context(3)[0], 1.0);
        assert_eq!(a.context(256 + 3), a.context(3));
        assert!(ObservationPool::new(0, 16, 7).context(5).is_empty());
    }

    #[test]
    fn click_rate_is_realistic() {
        let rate = ObservationPool::standard(32).positive_rate();
        assert!((0.05..0.3).contains(&rate), "positive rate {rate}");
    }

    #[test]
    fn cycle_wraps_without_straddling() {
        let mut cycle = BatchCycle::new(64, 16);
        let ranges: Vec<_> = (0..5).map(|_| cycle.next_range()).collect();
        assert_eq!(ranges[0], 0..16);
        assert_eq!(ranges[3], 48..64);
        assert_eq!(ranges[4], 0..16);
    }
}
