//! Exponential forgetting toward the prior, by event time.

use super::PosteriorError;

/// Forgetting with an event-time half-life: before a batch is applied, the
/// evidence a key has gathered (its natural parameters minus the prior's)
/// is multiplied by `0.5^(Δt / half_life)`, where Δt is the event time
/// elapsed since the key's last update. Old clicks thus count half after
/// one half-life, and a drifting CTR is tracked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Forgetting {
    half_life_ms: f64,
}

impl Forgetting {
    /// A forgetting rule with the given half-life in event-time ms (> 0).
    pub fn new(half_life_ms: i64) -> Result<Self, PosteriorError> {
        if half_life_ms <= 0 {
            return Err(PosteriorError::OutOfRange {
                field: "forgetting_half_life_ms",
                value: half_life_ms as f64,
                reason: "must be > 0",
            });
        }
        Ok(Self {
            half_life_ms: half_life_ms as f64,
        })
    }

    /// The half-life in ms.
    pub fn half_life_ms(&self) -> i64 {
        self.half_life_ms as i64
    }

    /// The factor in (0, 1] by which evidence decays from `from_ms` to
    /// `to_ms`. Time never runs backwards: an older `to_ms` gives 1.
    pub fn factor(&self, from_ms: i64, to_ms: i64) -> f64 {
        let elapsed_ms = to_ms.saturating_sub(from_ms);
        if elapsed_ms <= 0 {
            return 1.0;
        }
        (-(elapsed_ms as f64) / self.half_life_ms).exp2()
    }
}

/// Moves `value` toward `prior` so that only `factor` of the difference
/// remains.
#[inline]
pub(crate) fn decay(value: f64, prior: f64, factor: f64) -> f64 {
    prior + factor * (value - prior)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factor_halves_per_half_life_and_never_grows() {
        let f = Forgetting::new(1_000).unwrap();
        assert_eq!(f.factor(0, 1_000), 0.5);
        assert_eq!(f.factor(0, 2_000), 0.25);
        assert_eq!(f.factor(5_000, 1_000), 1.0);
        assert_eq!(f.factor(7, 7), 1.0);
        assert!(Forgetting::new(0).is_err());
    }

    #[test]
    fn decay_moves_toward_prior() {
        assert_eq!(decay(10.0, 2.0, 0.5), 6.0);
        assert_eq!(decay(10.0, 2.0, 1.0), 10.0);
    }
}
