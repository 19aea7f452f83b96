//! The Lai–Robbins asymptotic lower bound for Bernoulli bandits.
//!
//! Any consistent policy has regret at least
//! `log T · Σ_{i: Δᵢ > 0} Δᵢ / KL(pᵢ, p*)` asymptotically. Chapelle & Li
//! (2011, Figure 1) draw it shifted so that it is zero at T = 100; we do
//! the same.

/// The step at which Chapelle & Li's plotted bound is zero.
pub const BOUND_SHIFT_STEP: u64 = 100;

/// KL divergence between Bernoulli(p) and Bernoulli(q), in nats.
///
/// Both must lie in [0, 1]; `q` in {0, 1} with `p ≠ q` gives +∞.
pub fn bernoulli_kl(p: f64, q: f64) -> f64 {
    let term = |a: f64, b: f64| {
        if a == 0.0 {
            0.0
        } else if b == 0.0 {
            f64::INFINITY
        } else {
            a * (a / b).ln()
        }
    };
    term(p, q) + term(1.0 - p, 1.0 - q)
}

/// The bound's slope `Σ Δᵢ / KL(pᵢ, p*)` over the sub-optimal arms.
pub fn lai_robbins_slope(rates: &[f64]) -> f64 {
    let best = rates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    rates
        .iter()
        .filter(|&&p| p < best)
        .map(|&p| (best - p) / bernoulli_kl(p, best))
        .sum()
}

/// The bound at step `t`, shifted to zero at [`BOUND_SHIFT_STEP`] (negative
/// values before it are clamped to zero).
pub fn shifted_bound(rates: &[f64], t: u64) -> f64 {
    let t = t.max(1) as f64;
    let shift = (BOUND_SHIFT_STEP as f64).ln();
    (lai_robbins_slope(rates) * (t.ln() - shift)).max(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_known_values() {
        assert_eq!(bernoulli_kl(0.3, 0.3), 0.0);
        let kl = bernoulli_kl(0.4, 0.5);
        let expected = 0.4 * (0.8f64).ln() + 0.6 * (1.2f64).ln();
        assert!((kl - expected).abs() < 1e-15);
        assert!((kl - 0.020_135_513).abs() < 1e-8, "{kl}");
        assert_eq!(bernoulli_kl(0.0, 0.5), (2.0f64).ln());
        assert_eq!(bernoulli_kl(0.5, 1.0), f64::INFINITY);
    }

    #[test]
    fn chapelle_li_shifted_bound() {
        // K = 10, best 0.5, others 0.4: the reference plots 412 at T = 1e6.
        let mut rates = vec![0.4; 10];
        rates[0] = 0.5;
        let b = shifted_bound(&rates, 1_000_000);
        assert!((b - 411.7).abs() < 0.5, "{b}");
        assert_eq!(shifted_bound(&rates, 100), 0.0);
        assert_eq!(shifted_bound(&rates, 10), 0.0);
    }

    #[test]
    fn slope_ignores_best_arms() {
        assert_eq!(lai_robbins_slope(&[0.5, 0.5]), 0.0);
        let s = lai_robbins_slope(&[0.5, 0.48]);
        assert!((s - 0.02 / bernoulli_kl(0.48, 0.5)).abs() < 1e-12);
    }
}
