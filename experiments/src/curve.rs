//! Regret curves: log-spaced checkpoints, per-run recording and the mean ±
//! standard error over seeds.

use serde::Serialize;

/// Largest number of checkpoints per decade (bounds curve sizes).
pub const PER_DECADE_MAX: u32 = 100;

/// Steps (1-based, ascending, distinct) at which cumulative regret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Checkpoints {
    steps: Vec<u64>,
}

impl Checkpoints {
    /// `per_decade` log-spaced steps per decade from 1 to `horizon`, always
    /// including every power of ten and `horizon` itself.
    pub fn log_spaced(horizon: u64, per_decade: u32) -> Self {
        let per_decade = per_decade.clamp(1, PER_DECADE_MAX);
        let mut steps = Vec::new();
        let mut i = 0u32;
        loop {
            let t = 10f64.powf(f64::from(i) / f64::from(per_decade)).round() as u64;
            if t >= horizon {
                break;
            }
            if steps.last() != Some(&t) {
                steps.push(t);
            }
            i += 1;
        }
        if horizon > 0 {
            steps.push(horizon);
        }
        Self { steps }
    }

    /// Explicit steps; sorted and deduplicated, zero dropped.
    pub fn from_steps(mut steps: Vec<u64>) -> Self {
        steps.retain(|&t| t > 0);
        steps.sort_unstable();
        steps.dedup();
        Self { steps }
    }

    /// The steps.
    pub fn steps(&self) -> &[u64] {
        &self.steps
    }

    /// The last step (the horizon), 0 if empty.
    pub fn horizon(&self) -> u64 {
        self.steps.last().copied().unwrap_or(0)
    }

    /// Index of step `t`, if it is a checkpoint.
    pub fn index_of(&self, t: u64) -> Option<usize> {
        self.steps.binary_search(&t).ok()
    }
}

/// Cumulative regret and clicks of one run, at the checkpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Curve {
    /// Cumulative (pseudo-)regret after each checkpoint step.
    pub regret: Vec<f64>,
    /// Cumulative realised rewards (clicks) after each checkpoint step.
    pub clicks: Vec<f64>,
}

/// Accumulates one run step by step and snapshots at the checkpoints.
#[derive(Debug)]
pub struct Recorder<'a> {
    steps: &'a [u64],
    next: usize,
    t: u64,
    regret: f64,
    clicks: u64,
    curve: Curve,
}

impl<'a> Recorder<'a> {
    /// A recorder for the given checkpoints.
    pub fn new(checkpoints: &'a Checkpoints) -> Self {
        let n = checkpoints.steps.len();
        Self {
            steps: &checkpoints.steps,
            next: 0,
            t: 0,
            regret: 0.0,
            clicks: 0,
            curve: Curve {
                regret: Vec::with_capacity(n),
                clicks: Vec::with_capacity(n),
            },
        }
    }

    /// Records one step's expected regret and realised reward.
    #[inline]
    pub fn record(&mut self, regret: f64, click: bool) {
        self.t += 1;
        self.regret += regret;
        self.clicks += u64::from(click);
        if self.steps.get(self.next) == Some(&self.t) {
            self.curve.regret.push(self.regret);
            self.curve.clicks.push(self.clicks as f64);
            self.next += 1;
        }
    }

    /// Steps recorded so far.
    pub fn steps_done(&self) -> u64 {
        self.t
    }

    /// The finished curve (checkpoints past the last step are missing).
    pub fn finish(self) -> Curve {
        self.curve
    }
}

/// Mean and standard error of the mean over seeds, per checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Band {
    /// Mean cumulative regret.
    pub mean: Vec<f64>,
    /// Standard error of the mean regret (0 for a single seed).
    pub se: Vec<f64>,
    /// Mean cumulative clicks.
    pub clicks_mean: Vec<f64>,
    /// Number of seeds.
    pub seeds: usize,
}

impl Band {
    /// Aggregates runs that share checkpoints (shorter curves are cut to
    /// the shortest).
    pub fn from_curves(curves: &[Curve]) -> Self {
        let len = curves.iter().map(|c| c.regret.len()).min().unwrap_or(0);
        let column =
            |pick: &dyn Fn(&Curve) -> f64| -> Vec<f64> { curves.iter().map(pick).collect() };
        let mut band = Self {
            mean: Vec::with_capacity(len),
            se: Vec::with_capacity(len),
            clicks_mean: Vec::with_capacity(len),
            seeds: curves.len(),
        };
        for i in 0..len {
            let (mean, se) = mean_se(&column(&|c| c.regret[i]));
            band.mean.push(mean);
            band.se.push(se);
            band.clicks_mean.push(mean_se(&column(&|c| c.clicks[i])).0);
        }
        band
    }

    /// Mean and s.e. at the last checkpoint.
    pub fn last(&self) -> (f64, f64) {
        match (self.mean.last(), self.se.last()) {
            (Some(&m), Some(&s)) => (m, s),
            _ => (f64::NAN, f64::NAN),
        }
    }
}

/// Sample mean and standard error of the mean (s / √n).
pub fn mean_se(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    if xs.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mean = xs.iter().sum::<f64>() / n;
    if xs.len() < 2 {
        return (mean, 0.0);
    }
    let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, (var / n).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_spaced_has_decades_and_horizon() {
        let c = Checkpoints::log_spaced(1_000, 4);
        assert_eq!(
            c.steps(),
            &[1, 2, 3, 6, 10, 18, 32, 56, 100, 178, 316, 562, 1000]
        );
        let c = Checkpoints::log_spaced(1_500, 1);
        assert_eq!(c.steps(), &[1, 10, 100, 1000, 1500]);
        assert_eq!(c.horizon(), 1500);
        assert_eq!(c.index_of(100), Some(2));
        assert_eq!(c.index_of(99), None);
        assert!(Checkpoints::log_spaced(0, 10).steps().is_empty());
    }

    #[test]
    fn recorder_snapshots_cumulative_values() {
        let c = Checkpoints::from_steps(vec![3, 1, 3, 0, 5]);
        assert_eq!(c.steps(), &[1, 3, 5]);
        let mut r = Recorder::new(&c);
        for t in 0..5 {
            r.record(0.5, t % 2 == 0);
        }
        assert_eq!(r.steps_done(), 5);
        let curve = r.finish();
        assert_eq!(curve.regret, vec![0.5, 1.5, 2.5]);
        assert_eq!(curve.clicks, vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn band_mean_and_standard_error() {
        let a = Curve {
            regret: vec![1.0, 2.0],
            clicks: vec![0.0, 1.0],
        };
        let b = Curve {
            regret: vec![3.0, 6.0],
            clicks: vec![2.0, 3.0],
        };
        let band = Band::from_curves(&[a, b]);
        assert_eq!(band.mean, vec![2.0, 4.0]);
        // s = sqrt(2) and sqrt(8); s.e. = s / sqrt(2).
        assert!((band.se[0] - 1.0).abs() < 1e-12);
        assert!((band.se[1] - 2.0).abs() < 1e-12);
        assert_eq!(band.clicks_mean, vec![1.0, 2.0]);
        assert_eq!(band.last(), (4.0, band.se[1]));
    }
}
