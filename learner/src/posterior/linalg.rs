//! Small dense linear algebra on row-major `n × n` slices: Cholesky
//! factorisation and triangular solves. Sizes are at most a few hundred, so
//! plain loops in a fixed order (for bit-identical replays) are enough.
//! And the d-long kernels of the diagonal model, run for every update
//! (dot products, a mean logit with its variance, one observation's step),
//! with AVX where the CPU has it, bit for bit the portable loops' results.

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
/// ((s₀ + s₁) + (s₂ + s₃)): a fixed order, so the same bits everywhere.
/// On a CPU with AVX the four sums are the four lanes of one register
/// ([`avx`]); the same multiplications and additions in the same order,
/// so the same bits as the portable loop.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn dot_f32(a: &[f64], b: &[f32]) -> f64 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    #[cfg(target_arch = "x86_64")]
    if avx::available() {
        // SAFETY: the CPU has AVX.
        return unsafe { avx::dot_f32(a, b) };
    }
    dot_f32_portable(a, b)
}

/// [`dot_f32`] on any CPU, for equal lengths.
#[inline]
fn dot_f32_portable(a: &[f64], b: &[f32]) -> f64 {
    let mut sums = [0.0; SUM_LANES];
    for (x, y) in a.chunks_exact(SUM_LANES).zip(b.chunks_exact(SUM_LANES)) {
        for lane in 0..SUM_LANES {
            sums[lane] += x[lane] * f64::from(y[lane]);
        }
    }
    let tail = a.len() - a.len() % SUM_LANES;
    add_tail_products(&mut sums, &a[tail..], &b[tail..]);
    (sums[0] + sums[1]) + (sums[2] + sums[3])
}

/// Adds the products of a tail (shorter than [`SUM_LANES`]) to the first
/// sums.
#[inline]
fn add_tail_products(sums: &mut [f64; SUM_LANES], a: &[f64], b: &[f32]) {
    for (lane, (x, &y)) in a.iter().zip(b).enumerate() {
        sums[lane] += x * f64::from(y);
    }
}

/// `(Σ mᵢxᵢ, Σ xᵢ²/qᵢ)`: a diagonal Gaussian's mean logit and its variance
/// along a context, in one pass, each as [`SUM_LANES`] partial sums (lane
/// i mod 4 takes coordinate i) added ((l₀ + l₁) + (l₂ + l₃)) at the end:
/// a fixed order, so the same bits on every run and machine (the first is
/// [`dot_f32`]`(mean, context)` to the bit). Summed in index order, each
/// sum was one chain of d dependent additions per update. On a CPU with
/// AVX the four lanes are one register's.
#[inline]
#[allow(unsafe_code)]
pub(crate) fn logit_and_spread(mean: &[f64], precision: &[f64], context: &[f32]) -> (f64, f64) {
    let n = mean.len().min(precision.len()).min(context.len());
    let (mean, precision, context) = (&mean[..n], &precision[..n], &context[..n]);
    #[cfg(target_arch = "x86_64")]
    if avx::available() {
        // SAFETY: the CPU has AVX.
        return unsafe { avx::logit_and_spread(mean, precision, context) };
    }
    logit_and_spread_portable(mean, precision, context)
}

/// [`logit_and_spread`] on any CPU, for equal lengths.
#[inline]
fn logit_and_spread_portable(mean: &[f64], precision: &[f64], context: &[f32]) -> (f64, f64) {
    let n = mean.len();
    let (mut a, mut k) = ([0.0; SUM_LANES], [0.0; SUM_LANES]);
    let chunks = mean
        .chunks_exact(SUM_LANES)
        .zip(precision.chunks_exact(SUM_LANES))
        .zip(context.chunks_exact(SUM_LANES));
    for ((m, q), x) in chunks {
        for lane in 0..SUM_LANES {
            let x = f64::from(x[lane]);
            a[lane] += m[lane] * x;
            k[lane] += x * x / q[lane];
        }
    }
    let tail = n - n % SUM_LANES;
    add_tail_logit_and_spread(
        &mut a,
        &mut k,
        &mean[tail..],
        &precision[tail..],
        &context[tail..],
    );
    ((a[0] + a[1]) + (a[2] + a[3]), (k[0] + k[1]) + (k[2] + k[3]))
}

/// Adds a tail's terms (shorter than [`SUM_LANES`]) of
/// [`logit_and_spread`] to the first sums.
#[inline]
fn add_tail_logit_and_spread(
    a: &mut [f64; SUM_LANES],
    k: &mut [f64; SUM_LANES],
    mean: &[f64],
    precision: &[f64],
    context: &[f32],
) {
    for (lane, ((&m, &q), &x)) in mean.iter().zip(precision).zip(context).enumerate() {
        let x = f64::from(x);
        a[lane] += m * x;
        k[lane] += x * x / q;
    }
}

/// One observation's step of a diagonal Gaussian, coordinate by
/// coordinate: `mᵢ ← mᵢ + c·xᵢ/qᵢ`, then `qᵢ ← qᵢ + κ·xᵢ·xᵢ` (each
/// coordinate's own operations in that order, so the same bits with or
/// without [`avx`]).
#[inline]
#[allow(unsafe_code)]
pub(crate) fn step_diagonal(
    mean: &mut [f64],
    precision: &mut [f64],
    context: &[f32],
    c: f64,
    curvature: f64,
) {
    let n = mean.len().min(precision.len()).min(context.len());
    let (mean, precision, context) = (&mut mean[..n], &mut precision[..n], &context[..n]);
    #[cfg(target_arch = "x86_64")]
    if avx::available() {
        // SAFETY: the CPU has AVX.
        return unsafe { avx::step_diagonal(mean, precision, context, c, curvature) };
    }
    step_diagonal_portable(mean, precision, context, c, curvature);
}

/// [`step_diagonal`] on any CPU, for equal lengths.
#[inline]
fn step_diagonal_portable(
    mean: &mut [f64],
    precision: &mut [f64],
    context: &[f32],
    c: f64,
    curvature: f64,
) {
    for ((m, q), &x) in mean.iter_mut().zip(precision.iter_mut()).zip(context) {
        let x = f64::from(x);
        *m += c * x / *q;
        *q += curvature * x * x;
    }
}

/// The lane sums above with AVX: four doubles a register, lane i holding
/// sum i mod 4, so each lane does exactly what the portable loop does for
/// its coordinates (a multiplication, a division and an addition are each
/// rounded once, packed or not; nothing is fused: FMA is not enabled, and
/// Rust does not contract). The tails run the portable code. Chosen at
/// run time: the release builds target baseline x86-64 (BENCHMARKS.md,
/// "Release builds for x86-64-v3").
#[cfg(target_arch = "x86_64")]
#[allow(unsafe_code)]
mod avx {
    use std::arch::x86_64::{
        __m256d, _mm_loadu_ps, _mm256_add_pd, _mm256_cvtps_pd, _mm256_div_pd, _mm256_loadu_pd,
        _mm256_mul_pd, _mm256_set1_pd, _mm256_setzero_pd, _mm256_storeu_pd,
    };

    use super::SUM_LANES;

    /// Whether this CPU has AVX (detected once, then a cached flag).
    #[inline]
    pub(super) fn available() -> bool {
        std::arch::is_x86_feature_detected!("avx")
    }

    /// Four doubles from `a[i..i + 4]`.
    ///
    /// # Safety
    /// `i + 4 <= a.len()`.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn load(a: &[f64], i: usize) -> __m256d {
        debug_assert!(i + 4 <= a.len());
        // SAFETY: the four doubles are in `a` (the caller's bound).
        unsafe { _mm256_loadu_pd(a.as_ptr().add(i)) }
    }

    /// Four floats from `b[i..i + 4]`, widened to doubles.
    ///
    /// # Safety
    /// `i + 4 <= b.len()`.
    #[inline]
    #[target_feature(enable = "avx")]
    unsafe fn load_widened(b: &[f32], i: usize) -> __m256d {
        debug_assert!(i + 4 <= b.len());
        // SAFETY: the four floats are in `b` (the caller's bound).
        _mm256_cvtps_pd(unsafe { _mm_loadu_ps(b.as_ptr().add(i)) })
    }

    /// The register's four lanes.
    #[inline]
    #[target_feature(enable = "avx")]
    fn lanes(v: __m256d) -> [f64; SUM_LANES] {
        let mut out = [0.0; SUM_LANES];
        // SAFETY: `out` has room for four doubles.
        unsafe { _mm256_storeu_pd(out.as_mut_ptr(), v) };
        out
    }

    /// [`super::dot_f32`] for equal lengths.
    #[target_feature(enable = "avx")]
    pub(super) fn dot_f32(a: &[f64], b: &[f32]) -> f64 {
        let body = a.len().min(b.len()) / SUM_LANES * SUM_LANES;
        let mut sums = _mm256_setzero_pd();
        for i in (0..body).step_by(SUM_LANES) {
            // SAFETY: i + 4 <= body, within both slices.
            let (x, y) = unsafe { (load(a, i), load_widened(b, i)) };
            sums = _mm256_add_pd(sums, _mm256_mul_pd(x, y));
        }
        let mut sums = lanes(sums);
        super::add_tail_products(&mut sums, &a[body..], &b[body..]);
        (sums[0] + sums[1]) + (sums[2] + sums[3])
    }

    /// [`super::logit_and_spread`] for equal lengths.
    #[target_feature(enable = "avx")]
    pub(super) fn logit_and_spread(mean: &[f64], precision: &[f64], context: &[f32]) -> (f64, f64) {
        let n = mean.len().min(precision.len()).min(context.len());
        let body = n / SUM_LANES * SUM_LANES;
        let (mut a, mut k) = (_mm256_setzero_pd(), _mm256_setzero_pd());
        for i in (0..body).step_by(SUM_LANES) {
            // SAFETY: i + 4 <= body, within the three slices.
            let (m, q, x) =
                unsafe { (load(mean, i), load(precision, i), load_widened(context, i)) };
            a = _mm256_add_pd(a, _mm256_mul_pd(m, x));
            k = _mm256_add_pd(k, _mm256_div_pd(_mm256_mul_pd(x, x), q));
        }
        let (mut a, mut k) = (lanes(a), lanes(k));
        super::add_tail_logit_and_spread(
            &mut a,
            &mut k,
            &mean[body..n],
            &precision[body..n],
            &context[body..n],
        );
        ((a[0] + a[1]) + (a[2] + a[3]), (k[0] + k[1]) + (k[2] + k[3]))
    }

    /// [`super::step_diagonal`] for equal lengths.
    #[target_feature(enable = "avx")]
    pub(super) fn step_diagonal(
        mean: &mut [f64],
        precision: &mut [f64],
        context: &[f32],
        c: f64,
        curvature: f64,
    ) {
        let n = mean.len().min(precision.len()).min(context.len());
        let body = n / SUM_LANES * SUM_LANES;
        let (cv, kv) = (_mm256_set1_pd(c), _mm256_set1_pd(curvature));
        for i in (0..body).step_by(SUM_LANES) {
            // SAFETY: i + 4 <= body, within the three slices; the stores
            // write the four doubles just read.
            unsafe {
                let (m, q, x) = (load(mean, i), load(precision, i), load_widened(context, i));
                let m = _mm256_add_pd(m, _mm256_div_pd(_mm256_mul_pd(cv, x), q));
                let q = _mm256_add_pd(q, _mm256_mul_pd(_mm256_mul_pd(kv, x), x));
                _mm256_storeu_pd(mean.as_mut_ptr().add(i), m);
                _mm256_storeu_pd(precision.as_mut_ptr().add(i), q);
            }
        }
        super::step_diagonal_portable(
            &mut mean[body..n],
            &mut precision[body..n],
            &context[body..n],
            c,
            curvature,
        );
    }
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
            prop_assert_eq!(dot_f32_portable(&a, &b).to_bits(), expected.to_bits());
            prop_assert!((got - in_order).abs() <= 1e-13 * pairs.len() as f64 * size);
            // A longer second operand is cut to the first's length, as zip does.
            let mut longer = b.clone();
            longer.push(7.0);
            prop_assert_eq!(dot_f32(&a, &longer).to_bits(), got.to_bits());
        }

        /// The sums are those of a plain loop into four lanes by index
        /// mod 4, bit for bit, whatever the dimension (1 to 80: tails of
        /// every length), on this CPU's path and the portable one, and
        /// within rounding of the index-order sums.
        #[test]
        fn logit_and_spread_sums_by_lane(
            coordinates in prop::collection::vec(
                (-1.0e3_f64..1.0e3, 1.0e-6_f64..1.0e6, -1.0e3_f32..1.0e3),
                1..80,
            ),
        ) {
            let mean: Vec<f64> = coordinates.iter().map(|c| c.0).collect();
            let precision: Vec<f64> = coordinates.iter().map(|c| c.1).collect();
            let context: Vec<f32> = coordinates.iter().map(|c| c.2).collect();
            let (mut a, mut k) = ([0.0_f64; 4], [0.0_f64; 4]);
            let (mut a_in_order, mut k_in_order, mut a_size, mut k_size) = (0.0, 0.0, 0.0, 0.0);
            for (i, ((&m, &q), &x)) in mean.iter().zip(&precision).zip(&context).enumerate() {
                let x = f64::from(x);
                a[i % 4] += m * x;
                k[i % 4] += x * x / q;
                a_in_order += m * x;
                k_in_order += x * x / q;
                a_size += (m * x).abs();
                k_size += x * x / q;
            }
            let (a, k) = ((a[0] + a[1]) + (a[2] + a[3]), (k[0] + k[1]) + (k[2] + k[3]));
            for (lane_a, lane_k) in [
                logit_and_spread(&mean, &precision, &context),
                logit_and_spread_portable(&mean, &precision, &context),
            ] {
                prop_assert_eq!(lane_a.to_bits(), a.to_bits());
                prop_assert_eq!(lane_k.to_bits(), k.to_bits());
                prop_assert_eq!(lane_a.to_bits(), dot_f32(&mean, &context).to_bits());
                let tolerance = 1e-13 * coordinates.len() as f64;
                prop_assert!((lane_a - a_in_order).abs() <= tolerance * a_size);
                prop_assert!((lane_k - k_in_order).abs() <= tolerance * k_size);
            }
        }

        /// Each coordinate steps as `m + c·x/q`, `q + κ·x·x` computed one
        /// coordinate at a time, bit for bit, at every length, on this
        /// CPU's path and the portable one; a longer context is cut.
        #[test]
        fn step_diagonal_steps_each_coordinate(
            coordinates in prop::collection::vec(
                (-1.0e3_f64..1.0e3, 1.0e-6_f64..1.0e6, -1.0e3_f32..1.0e3),
                0..80,
            ),
            c in -1.0e3_f64..1.0e3,
            curvature in 0.0_f64..1.0e3,
        ) {
            let mean: Vec<f64> = coordinates.iter().map(|c| c.0).collect();
            let precision: Vec<f64> = coordinates.iter().map(|c| c.1).collect();
            let mut context: Vec<f32> = coordinates.iter().map(|c| c.2).collect();
            let expected: Vec<(u64, u64)> = coordinates
                .iter()
                .map(|&(m, q, x)| {
                    let x = f64::from(x);
                    ((m + c * x / q).to_bits(), (q + curvature * x * x).to_bits())
                })
                .collect();
            let bits = |m: &[f64], q: &[f64]| -> Vec<(u64, u64)> {
                m.iter().zip(q).map(|(m, q)| (m.to_bits(), q.to_bits())).collect()
            };
            let (mut m, mut q) = (mean.clone(), precision.clone());
            step_diagonal(&mut m, &mut q, &context, c, curvature);
            prop_assert_eq!(bits(&m, &q), expected.clone());
            let (mut m, mut q) = (mean.clone(), precision.clone());
            step_diagonal_portable(&mut m, &mut q, &context, c, curvature);
            prop_assert_eq!(bits(&m, &q), expected.clone());
            context.push(7.0);
            let (mut m, mut q) = (mean, precision);
            step_diagonal(&mut m, &mut q, &context, c, curvature);
            prop_assert_eq!(bits(&m, &q), expected);
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
