//! UCB1 (Auer, Cesa-Bianchi & Fischer 2002), the frequentist baseline.

/// UCB1 over a fixed set of arms with rewards in [0, 1].
#[derive(Debug, Clone)]
pub struct Ucb1 {
    pulls: Vec<u64>,
    reward_sums: Vec<f64>,
    total_pulls: u64,
}

impl Ucb1 {
    /// A fresh index for `arms` arms.
    pub fn new(arms: usize) -> Self {
        Self {
            pulls: vec![0; arms],
            reward_sums: vec![0.0; arms],
            total_pulls: 0,
        }
    }

    /// The arm to pull: each arm once, then the largest
    /// `mean + sqrt(2 ln n / nᵢ)` (lowest index on ties).
    pub fn choose(&self) -> usize {
        if let Some(arm) = self.pulls.iter().position(|&n| n == 0) {
            return arm;
        }
        let log_total = 2.0 * (self.total_pulls as f64).ln();
        let mut best = (0, f64::NEG_INFINITY);
        for (arm, (&n, &sum)) in self.pulls.iter().zip(&self.reward_sums).enumerate() {
            let n = n as f64;
            let index = sum / n + (log_total / n).sqrt();
            if index > best.1 {
                best = (arm, index);
            }
        }
        best.0
    }

    /// Records the reward of pulling `arm`.
    pub fn observe(&mut self, arm: usize, reward: f64) {
        self.pulls[arm] += 1;
        self.reward_sums[arm] += reward;
        self.total_pulls += 1;
    }

    /// How often each arm was pulled.
    pub fn pulls(&self) -> &[u64] {
        &self.pulls
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_each_arm_once_first() {
        let mut ucb = Ucb1::new(3);
        for expected in 0..3 {
            let arm = ucb.choose();
            assert_eq!(arm, expected);
            ucb.observe(arm, 0.0);
        }
        assert_eq!(ucb.pulls(), &[1, 1, 1]);
    }

    #[test]
    fn index_matches_formula() {
        let mut ucb = Ucb1::new(2);
        // Arm 0: 10 pulls, mean 0.9. Arm 1: 1 pull, mean 0.
        for _ in 0..9 {
            ucb.observe(0, 1.0);
        }
        ucb.observe(0, 0.0);
        ucb.observe(1, 0.0);
        // n = 11: arm 0 index 0.9 + sqrt(2 ln 11 / 10) ≈ 1.593,
        // arm 1 index 0 + sqrt(2 ln 11) ≈ 2.190: the rarely pulled arm wins.
        assert_eq!(ucb.choose(), 1);
        for _ in 0..30 {
            ucb.observe(1, 0.0);
        }
        assert_eq!(ucb.choose(), 0);
    }

    #[test]
    fn concentrates_on_the_best_arm() {
        // Deterministic rewards: arm 2 always pays.
        let mut ucb = Ucb1::new(4);
        for _ in 0..2_000 {
            let arm = ucb.choose();
            ucb.observe(arm, if arm == 2 { 1.0 } else { 0.0 });
        }
        assert!(ucb.pulls()[2] > 1_900, "{:?}", ucb.pulls());
    }
}
