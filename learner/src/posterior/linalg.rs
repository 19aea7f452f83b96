//! Small dense linear algebra on row-major `n × n` slices: Cholesky
//! factorisation and triangular solves. Sizes are at most a few hundred, so
//! plain loops in a fixed order (for bit-identical replays) are enough.

/// Factors the symmetric positive-definite `a = L Lᵀ` in place: the lower
/// triangle of `a` becomes `L`, the strict upper triangle is zeroed.
/// Returns `false` (with `a` garbage) if `a` is not positive definite.
pub(crate) fn cholesky_in_place(a: &mut [f64], n: usize) -> bool {
    debug_assert_eq!(a.len(), n * n);
    for j in 0..n {
        let mut diag = a[j * n + j];
        for k in 0..j {
            diag -= a[j * n + k] * a[j * n + k];
        }
        if !(diag > 0.0 && diag.is_finite()) {
            return false;
        }
        let ljj = diag.sqrt();
        a[j * n + j] = ljj;
        for i in (j + 1)..n {
            let mut s = a[i * n + j];
            for k in 0..j {
                s -= a[i * n + k] * a[j * n + k];
            }
            a[i * n + j] = s / ljj;
        }
        for k in (j + 1)..n {
            a[j * n + k] = 0.0;
        }
    }
    true
}

/// Solves `L y = b` in place (`l` lower triangular).
pub(crate) fn forward_solve(l: &[f64], n: usize, b: &mut [f64]) {
    for i in 0..n {
        let mut s = b[i];
        for k in 0..i {
            s -= l[i * n + k] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solves `Lᵀ x = y` in place (`l` lower triangular).
pub(crate) fn backward_solve_transposed(l: &[f64], n: usize, b: &mut [f64]) {
    for i in (0..n).rev() {
        let mut s = b[i];
        for k in (i + 1)..n {
            s -= l[k * n + i] * b[k];
        }
        b[i] = s / l[i * n + i];
    }
}

/// Solves `(L Lᵀ) x = b` in place.
pub(crate) fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) {
    forward_solve(l, n, b);
    backward_solve_transposed(l, n, b);
}

/// `Σ aᵢ bᵢ` in index order.
#[inline]
pub(crate) fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Partial sums of the d-long sums ([`dot_f32`], the single update's
/// logit and spread): element i goes to sum i mod `SUM_LANES`, and the
/// sums are added ((s₀ + s₁) + (s₂ + s₃)).
pub(crate) const SUM_LANES: usize = 4;
const _: () = assert!(SUM_LANES == 4, "the sums are added as four, by hand");

/// `Σ aᵢ bᵢ` with `b` in single precision (a context against a mean or a
/// solved vector, d long), as four partial sums by index mod 4 added
/// ((s₀ + s₁) + (s₂ + s₃)): a fixed order, so the same bits everywhere,
/// which the compiler keeps in vector registers instead of one chain of d
/// dependent additions.
#[inline]
pub(crate) fn dot_f32(a: &[f64], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut sums = [0.0; SUM_LANES];
    for (x, y) in a.chunks_exact(SUM_LANES).zip(b.chunks_exact(SUM_LANES)) {
        for lane in 0..SUM_LANES {
            sums[lane] += x[lane] * f64::from(y[lane]);
        }
    }
    let tail = n - n % SUM_LANES;
    for (lane, (x, &y)) in a[tail..].iter().zip(&b[tail..]).enumerate() {
        sums[lane] += x * f64::from(y);
    }
    (sums[0] + sums[1]) + (sums[2] + sums[3])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The four lanes' sums, bit for bit, at every length (tails of
        /// every size), and within rounding of the index-order sum.
        #[test]
        fn dot_f32_sums_by_lane(
            pairs in prop::collection::vec((-1.0e3_f64..1.0e3, -1.0e3_f32..1.0e3), 0..80),
        ) {
            let a: Vec<f64> = pairs.iter().map(|p| p.0).collect();
            let b: Vec<f32> = pairs.iter().map(|p| p.1).collect();
            let mut lanes = [0.0_f64; 4];
            let (mut in_order, mut size) = (0.0_f64, 0.0_f64);
            for (i, (&x, &y)) in a.iter().zip(&b).enumerate() {
                let product = x * f64::from(y);
                lanes[i % 4] += product;
                in_order += product;
                size += product.abs();
            }
            let expected = (lanes[0] + lanes[1]) + (lanes[2] + lanes[3]);
            let got = dot_f32(&a, &b);
            prop_assert_eq!(got.to_bits(), expected.to_bits());
            prop_assert!((got - in_order).abs() <= 1e-13 * pairs.len() as f64 * size);
            // A longer second operand is cut to the first's length, as zip does.
            let mut longer = b.clone();
            longer.push(7.0);
            prop_assert_eq!(dot_f32(&a, &longer).to_bits(), got.to_bits());
        }
    }

    #[test]
    fn cholesky_solves_a_known_system() {
        // A = [[4, 2], [2, 3]], b = [2, 1] -> x = [0.5, 0].
        let mut a = vec![4.0, 2.0, 2.0, 3.0];
        assert!(cholesky_in_place(&mut a, 2));
        assert_eq!(a[1], 0.0);
        let mut b = vec![2.0, 1.0];
        cholesky_solve(&a, 2, &mut b);
        assert!((b[0] - 0.5).abs() < 1e-15 && b[1].abs() < 1e-15, "{b:?}");
    }

    #[test]
    fn cholesky_rejects_indefinite() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0];
        assert!(!cholesky_in_place(&mut a, 2));
    }
}
