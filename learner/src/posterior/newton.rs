//! The MAP step of the logistic Laplace update (Chapelle & Li 2011,
//! Algorithm 3): for a Gaussian prior N(m, Q⁻¹) and a micro-batch of
//! (xⱼ, yⱼ ∈ {0, 1}, ωⱼ), minimise
//!
//! f(w) = ½ (w − m)ᵀ Q (w − m) + Σⱼ ωⱼ log(1 + exp(−sⱼ w·xⱼ)),  sⱼ = 2yⱼ − 1,
//!
//! by Newton's method with a backtracking line search (f is strictly
//! convex). In the dual form the search reads f's change, summed as such,
//! a step whose decrease is below that sum's rounding is taken whole, and
//! the solve ends as soon as a bound on the next step (from the residual,
//! before factorising) is below the tolerance. Two equivalent
//! parameterisations, chosen by size:
//! - **dual** (n ≤ d): the minimiser lies in m + Q⁻¹Xᵀc; with K = XQ⁻¹Xᵀ
//!   the optimality condition is c = ω∘(y − σ(Xm + Kc)), an n-dimensional
//!   Newton problem, started from Gauss–Seidel sweeps of scalar roots
//!   ([`warm_start`]). One sample costs O(d) per iteration.
//! - **primal** (n > d): Newton on w with the d × d Hessian
//!   Q + Σ ωⱼ pⱼ(1 − pⱼ) xⱼxⱼᵀ.

use super::linalg::{cholesky_in_place, cholesky_solve, dot, dot_f32};
use super::logistic::{LOGIT_CLAMP, MAX_NEWTON_ITERATIONS, NEWTON_TOLERANCE, sigmoid, softplus};
use super::{Observation, PosteriorError};

/// The prior precision Q of the step.
pub(crate) enum Precision<'a> {
    /// Q = diag(q).
    Diagonal(&'a [f64]),
    /// Dense Q (row-major) with its Cholesky factor L (Q = L Lᵀ).
    Full { q: &'a [f64], chol: &'a [f64] },
}

impl Precision<'_> {
    /// `Q⁻¹ x` into `out`.
    fn solve(&self, x: &[f32], out: &mut [f64]) {
        match self {
            Precision::Diagonal(q) => {
                for ((o, &xi), qi) in out.iter_mut().zip(x).zip(q.iter()) {
                    *o = f64::from(xi) / qi;
                }
            }
            Precision::Full { chol, .. } => {
                for (o, &xi) in out.iter_mut().zip(x) {
                    *o = f64::from(xi);
                }
                cholesky_solve(chol, x.len(), out);
            }
        }
    }

    /// `Q v` into `out`.
    fn multiply(&self, v: &[f64], out: &mut [f64]) {
        match self {
            Precision::Diagonal(q) => {
                for ((o, vi), qi) in out.iter_mut().zip(v).zip(q.iter()) {
                    *o = qi * vi;
                }
            }
            Precision::Full { q, .. } => {
                let d = v.len();
                for (i, o) in out.iter_mut().enumerate() {
                    *o = dot(&q[i * d..(i + 1) * d], v);
                }
            }
        }
    }

    /// Writes Q into the dense row-major `h`.
    fn write_dense(&self, d: usize, h: &mut [f64]) {
        match self {
            Precision::Diagonal(q) => {
                h.fill(0.0);
                for i in 0..d {
                    h[i * d + i] = q[i];
                }
            }
            Precision::Full { q, .. } => h.copy_from_slice(q),
        }
    }
}

/// Result of a MAP step.
pub(crate) struct MapStep {
    /// The MAP weights, the new posterior mean.
    pub(crate) w: Vec<f64>,
    /// Newton iterations used.
    pub(crate) iterations: u32,
    /// Whether the tolerance was met before the iteration cap.
    pub(crate) converged: bool,
}

/// Finds the MAP weights for `batch` under the prior N(`mean`, Q⁻¹).
/// The batch must be validated (finite, right dimension) by the caller.
pub(crate) fn map_step(
    mean: &[f64],
    precision: &Precision<'_>,
    batch: &[Observation<'_>],
) -> Result<MapStep, PosteriorError> {
    if batch.len() <= mean.len() {
        dual(mean, precision, batch)
    } else {
        primal(mean, precision, batch)
    }
}

/// σ(z) given e = exp(−|z|): the bits of [`sigmoid`], which computes the
/// same exp for |z| ≤ [`LOGIT_CLAMP`] (beyond, it clamps z first).
#[inline]
fn sigmoid_from(z: f64, e: f64) -> f64 {
    debug_assert!(e.to_bits() == (-z.abs()).exp().to_bits() || e.is_nan());
    if z.abs() > LOGIT_CLAMP {
        sigmoid(z)
    } else if z >= 0.0 {
        1.0 / (1.0 + e)
    } else {
        e / (1.0 + e)
    }
}

fn signed(obs: &Observation<'_>) -> f64 {
    if obs.reward { 1.0 } else { -1.0 }
}

fn target(obs: &Observation<'_>) -> f64 {
    if obs.reward { 1.0 } else { 0.0 }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0_f64, |a, x| a.max(x.abs()))
}

/// The solvers' iteration cap: [`MAX_NEWTON_ITERATIONS`]. A test of this
/// crate may lower it on its own thread ([`with_iteration_cap`]) to see
/// what an unconverged solve does downstream; no input found so far
/// reaches the real cap.
#[inline]
fn iteration_cap() -> u32 {
    #[cfg(test)]
    {
        TEST_ITERATION_CAP
            .with(std::cell::Cell::get)
            .unwrap_or(MAX_NEWTON_ITERATIONS)
    }
    #[cfg(not(test))]
    {
        MAX_NEWTON_ITERATIONS
    }
}

#[cfg(test)]
thread_local! {
    static TEST_ITERATION_CAP: std::cell::Cell<Option<u32>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with the solvers' iteration cap at `cap` on this thread.
#[cfg(test)]
pub(crate) fn with_iteration_cap<T>(cap: u32, f: impl FnOnce() -> T) -> T {
    let before = TEST_ITERATION_CAP.with(|c| c.replace(Some(cap)));
    let out = f();
    TEST_ITERATION_CAP.with(|c| c.set(before));
    out
}

fn converged(step: &[f64], point: &[f64]) -> bool {
    max_abs(step) <= NEWTON_TOLERANCE * (1.0 + max_abs(point))
}

/// Backtracking (Armijo) along a direction with `slope` = ∇f·dir < 0:
/// `change(t)` is f(t) − f(0). Returns the accepted step length, 0 if no
/// decrease was found.
fn line_search(slope: f64, mut change: impl FnMut(f64) -> f64) -> f64 {
    let mut t = 1.0;
    for _ in 0..40 {
        let delta = change(t);
        if delta.is_finite() && delta <= 1e-4 * t * slope {
            return t;
        }
        t *= 0.5;
    }
    0.0
}

/// A bound on the largest coordinate of the dual Newton step
/// (I + DK)⁻¹ r for any positive semi-definite K, from r and D^½ alone:
/// I + DK = D^½ (I + S) D^-½ with S = D^½ K D^½ positive semi-definite, so
/// |step|∞ ≤ |step|₂ ≤ (max D · Σ rⱼ²/Dⱼ)^½. A Dⱼ of 0 makes it infinite or
/// NaN, which no tolerance passes.
fn newton_step_bound(residual: &[f64], sqrt_d: &[f64]) -> f64 {
    let (mut d_max, mut weighted) = (0.0_f64, 0.0);
    for (r, sd) in residual.iter().zip(sqrt_d) {
        d_max = d_max.max(sd * sd);
        weighted += (r / sd) * (r / sd);
    }
    (d_max * weighted).sqrt()
}

/// The `n`-long vectors of [`dual`].
const DUAL_VECTORS: usize = 14;

/// Samples whose softplus ratios [`dual`]'s line search multiplies before
/// one logarithm: each ratio is in [½, 2], so 64 of them stay far inside
/// f64's range.
const RATIOS_PER_LOG: usize = 64;

fn dual(
    mean: &[f64],
    precision: &Precision<'_>,
    batch: &[Observation<'_>],
) -> Result<MapStep, PosteriorError> {
    let (n, d) = (batch.len(), mean.len());
    if n == 0 {
        // Nothing to fit (the callers return before): the prior mean.
        return Ok(MapStep {
            w: mean.to_vec(),
            iterations: 0,
            converged: true,
        });
    }
    // Every vector of the solve in one allocation, not ~17 small ones
    // (3–5 % of a 16-sample update at d = 16–64; BENCHMARKS.md).
    let mut workspace = vec![0.0; n * d + 2 * n * n + DUAL_VECTORS * n];
    let (v, rest) = workspace.split_at_mut(n * d);
    let (k, rest) = rest.split_at_mut(n * n);
    let (b, rest) = rest.split_at_mut(n * n);
    let mut vectors = rest.chunks_exact_mut(n);
    let mut next = || vectors.next().expect("DUAL_VECTORS slices of n");
    let (a, s, y, omega) = (next(), next(), next(), next());
    let (c, kc, residual, kr) = (next(), next(), next(), next());
    let (sqrt_d, dir, kdir, tmp) = (next(), next(), next(), next());
    let (exps, trial_exps) = (next(), next());
    // v_j = Q⁻¹ x_j, K = X Q⁻¹ Xᵀ, a = X m.
    for (j, obs) in batch.iter().enumerate() {
        precision.solve(obs.context, &mut v[j * d..(j + 1) * d]);
    }
    for j in 0..n {
        for l in 0..=j {
            let kjl = dot_f32(&v[l * d..(l + 1) * d], batch[j].context);
            k[j * n + l] = kjl;
            k[l * n + j] = kjl;
        }
    }
    for (j, obs) in batch.iter().enumerate() {
        a[j] = dot_f32(mean, obs.context);
        s[j] = signed(obs);
        y[j] = target(obs);
        omega[j] = obs.weight;
    }
    warm_start(k, a, batch, c);
    for j in 0..n {
        kc[j] = dot(&k[j * n..(j + 1) * n], c);
        exps[j] = (-(a[j] + kc[j]).abs()).exp();
    }
    // One weight for the whole batch (the usual case) lets the line
    // search sum the softplus changes with one logarithm per
    // `RATIOS_PER_LOG` samples instead of one per sample.
    let common_weight = omega.iter().all(|&w| w == omega[0]).then_some(omega[0]);
    let weight_sum: f64 = omega.iter().sum();
    // Read only from here on.
    let (k, a, s, y, omega) = (&*k, &*a, &*s, &*y, &*omega);
    let k_times = |x: &[f64], out: &mut [f64]| {
        for (j, o) in out.iter_mut().enumerate() {
            *o = dot(&k[j * n..(j + 1) * n], x);
        }
    };
    // f(c + t·dir) − f(c), from kc = K c, kdir = K dir and the exps
    // e⁰ⱼ = exp(−|zⱼ|) at c, zⱼ = aⱼ + (Kc)ⱼ:
    //   t dir·kc + ½t² dir·kdir + Σ ωⱼ (softplus(uᵗⱼ) − softplus(u⁰ⱼ)),
    // uⱼ = −sⱼzⱼ, softplus(u) = max(u, 0) + ln(1 + exp(−|u|)). The change
    // itself is summed, not two values of f: near the optimum it is far
    // below f's rounding. Each eᵗⱼ is kept in `trial`: once the step is
    // taken, zᵗⱼ is the next iteration's logit, and σ(zᵗⱼ) needs that
    // same exp (see `sigmoid_from`).
    let change =
        |kc: &[f64], dir: &[f64], kdir: &[f64], t: f64, exps: &[f64], trial: &mut [f64]| {
            let mut quadratic = 0.0;
            let mut hinge = 0.0;
            for j in 0..n {
                quadratic += t * dir[j] * kc[j] + 0.5 * t * t * dir[j] * kdir[j];
                let z0 = a[j] + kc[j];
                let zt = a[j] + (kc[j] + t * kdir[j]);
                trial[j] = (-zt.abs()).exp();
                let (u0, ut) = (-s[j] * z0, -s[j] * zt);
                let max_change = if u0 > 0.0 && ut > 0.0 {
                    -s[j] * t * kdir[j]
                } else {
                    ut.max(0.0) - u0.max(0.0)
                };
                hinge += omega[j] * max_change;
            }
            let mut logs = 0.0;
            match common_weight {
                Some(weight) => {
                    for (now, then) in trial
                        .chunks(RATIOS_PER_LOG)
                        .zip(exps.chunks(RATIOS_PER_LOG))
                    {
                        let ratio: f64 = now
                            .iter()
                            .zip(then)
                            .map(|(et, e0)| (1.0 + et) / (1.0 + e0))
                            .product();
                        logs += ratio.ln();
                    }
                    logs *= weight;
                }
                None => {
                    for j in 0..n {
                        logs += omega[j] * ((1.0 + trial[j]) / (1.0 + exps[j])).ln();
                    }
                }
            }
            quadratic + hinge + logs
        };

    let mut iterations = 0;
    let mut done = false;
    let cap = iteration_cap();
    while iterations < cap && !done {
        iterations += 1;
        // residual r = −F(c) = ω(y − p) − c; D = ω p (1 − p).
        // `exps` holds exp(−|a + kc|) at this point.
        for j in 0..n {
            let p = sigmoid_from(a[j] + kc[j], exps[j]);
            residual[j] = omega[j] * (y[j] - p) - c[j];
            sqrt_d[j] = (omega[j] * p * (1.0 - p)).sqrt();
        }
        // When the step that would be taken is below the tolerance, the
        // iterate is kept without solving for it. Not at the first
        // iterate: its scalar roots are each solved only to the tolerance,
        // which tiny weights make the size of the whole update; one Newton
        // step below corrects them jointly.
        if iterations > 1
            && newton_step_bound(residual, sqrt_d) <= NEWTON_TOLERANCE * (1.0 + max_abs(c))
        {
            done = true;
            break;
        }
        k_times(residual, kr);
        // dir = (I + D K)⁻¹ r = r − D^½ B⁻¹ D^½ K r, B = I + D^½ K D^½.
        for j in 0..n {
            for l in 0..=j {
                b[j * n + l] =
                    sqrt_d[j] * k[j * n + l] * sqrt_d[l] + if j == l { 1.0 } else { 0.0 };
            }
        }
        // Positive definite in exact arithmetic; at the edge of floating
        // point (features ~1e15) it can fail, and the update is refused.
        if !cholesky_in_place(b, n) {
            return Err(PosteriorError::Unstable);
        }
        for j in 0..n {
            tmp[j] = sqrt_d[j] * kr[j];
        }
        cholesky_solve(b, n, tmp);
        for j in 0..n {
            dir[j] = residual[j] - sqrt_d[j] * tmp[j];
        }
        let step = max_abs(dir);
        if step <= NEWTON_TOLERANCE * (1.0 + max_abs(c)) {
            // A step below the tolerance is taken whole and ends the
            // solve: f's change over it is rounding noise, which a line
            // search would misread as no decrease.
            for (cj, dj) in c.iter_mut().zip(dir.iter()) {
                *cj += dj;
            }
            done = true;
            break;
        }
        k_times(dir, kdir);
        // ∇f = K F = −K r; −slope is the squared Newton decrement.
        let slope = -dot(kr, dir);
        // What `change` can resolve: its logarithms round at about ε per
        // sample and weight, its quadratic terms at ε times their size.
        let quadratic_size: f64 = (0..n)
            .map(|j| (dir[j] * kc[j]).abs() + (dir[j] * kdir[j]).abs())
            .sum();
        let resolution = 64.0 * f64::EPSILON * (weight_sum + quadratic_size);
        let unresolved = slope < 0.0 && -slope <= resolution;
        let t = if unresolved {
            // The decrease f would show is below its rounding, so a search
            // would only read noise; a Newton step this small lies where
            // whole steps converge.
            1.0
        } else if slope < 0.0 {
            let t = line_search(slope, |t| change(kc, dir, kdir, t, exps, trial_exps));
            if t > 0.0 {
                // The last evaluation was at the accepted t.
                exps.copy_from_slice(trial_exps);
            }
            t
        } else {
            0.0
        };
        if t == 0.0 {
            // No decrease along a descent direction: the iterate is as
            // good as f's rounding can tell.
            done = true;
            break;
        }
        for j in 0..n {
            c[j] += t * dir[j];
            kc[j] += t * kdir[j];
        }
        if unresolved {
            for j in 0..n {
                exps[j] = (-(a[j] + kc[j]).abs()).exp();
            }
        }
        done = t * step <= NEWTON_TOLERANCE * (1.0 + max_abs(c));
    }
    let mut w = mean.to_vec();
    for j in 0..n {
        for (wi, vi) in w.iter_mut().zip(&v[j * d..(j + 1) * d]) {
            *wi += c[j] * vi;
        }
    }
    Ok(MapStep {
        w,
        iterations,
        converged: done,
    })
}

/// Gauss–Seidel sweeps of [`warm_start`].
const WARM_START_SWEEPS: usize = 2;

/// Evaluations of σ for each scalar root of [`warm_start`].
const WARM_START_EVALUATIONS: u32 = 2;

/// The dual solve's first iterate: [`WARM_START_SWEEPS`] Gauss–Seidel
/// sweeps over the optimality condition cⱼ = ωⱼ(yⱼ − σ(aⱼ + Σₗ Kⱼₗcₗ)),
/// each cⱼ the scalar root given the others' latest values
/// ([`scalar_root`], cut at [`WARM_START_EVALUATIONS`]: Newton's steps
/// refine it). The first sweep moves the mean as the observations would,
/// applied one after another; the second corrects each for the ones after
/// it. On bench 1's micro-batches (contexts that share a constant
/// feature) Newton then needs about two factorisations instead of four and
/// a half (BENCHMARKS.md). A root that is not finite (features at the edge
/// of floating point) leaves c at 0, where the solve used to start.
fn warm_start(k: &[f64], a: &[f64], batch: &[Observation<'_>], c: &mut [f64]) {
    let n = c.len();
    for _ in 0..WARM_START_SWEEPS {
        for (j, obs) in batch.iter().enumerate() {
            let row = &k[j * n..(j + 1) * n];
            // Σₗ≠ⱼ Kⱼₗcₗ.
            let shift = dot(&row[..j], &c[..j]) + dot(&row[j + 1..], &c[j + 1..]);
            let (root, _, _) = scalar_root(
                a[j] + shift,
                row[j],
                obs.reward,
                obs.weight,
                WARM_START_EVALUATIONS,
            );
            c[j] = root;
        }
    }
    if !c.iter().all(|cj| cj.is_finite()) {
        c.fill(0.0);
    }
}

fn primal(
    mean: &[f64],
    precision: &Precision<'_>,
    batch: &[Observation<'_>],
) -> Result<MapStep, PosteriorError> {
    let (n, d) = (batch.len(), mean.len());
    let xs: Vec<f64> = batch
        .iter()
        .flat_map(|o| o.context.iter().map(|&x| f64::from(x)))
        .collect();
    let row = |j: usize| &xs[j * d..(j + 1) * d];
    let (s, y, omega): (Vec<f64>, Vec<f64>, Vec<f64>) = (
        batch.iter().map(signed).collect(),
        batch.iter().map(target).collect(),
        batch.iter().map(|o| o.weight).collect(),
    );
    let mut w = mean.to_vec();
    let (mut h, mut g, mut diff, mut q_diff, mut q_dir) = (
        vec![0.0; d * d],
        vec![0.0; d],
        vec![0.0; d],
        vec![0.0; d],
        vec![0.0; d],
    );
    let (mut z, mut xdir) = (vec![0.0; n], vec![0.0; n]);
    for (j, zj) in z.iter_mut().enumerate() {
        *zj = dot(row(j), &w);
    }
    // f(w + t·dir) in O(n) from z = Xw, xdir = X dir, Q(w − m) and Q dir.
    let objective = |diff: &[f64],
                     q_diff: &[f64],
                     dir_q_dir: f64,
                     dir_q_diff: f64,
                     z: &[f64],
                     xdir: &[f64],
                     t: f64| {
        let quad = 0.5 * (dot(diff, q_diff) + 2.0 * t * dir_q_diff + t * t * dir_q_dir);
        quad + (0..n)
            .map(|j| omega[j] * softplus(-s[j] * (z[j] + t * xdir[j])))
            .sum::<f64>()
    };
    let mut iterations = 0;
    let mut done = false;
    let cap = iteration_cap();
    while iterations < cap && !done {
        iterations += 1;
        // g = Q (w − m) − Σ ω (y − p) x; H = Q + Σ ω p (1 − p) x xᵀ (lower
        // triangle: the factorisation reads nothing else).
        for i in 0..d {
            diff[i] = w[i] - mean[i];
        }
        precision.multiply(&diff, &mut q_diff);
        g.copy_from_slice(&q_diff);
        precision.write_dense(d, &mut h);
        for j in 0..n {
            let x = row(j);
            let p = sigmoid(z[j]);
            let (gj, hj) = (omega[j] * (y[j] - p), omega[j] * p * (1.0 - p));
            for i in 0..d {
                g[i] -= gj * x[i];
                let hx = hj * x[i];
                for (hil, &xl) in h[i * d..i * d + i + 1].iter_mut().zip(&x[..=i]) {
                    *hil += hx * xl;
                }
            }
        }
        if !cholesky_in_place(&mut h, d) {
            return Err(PosteriorError::Unstable);
        }
        let mut dir: Vec<f64> = g.iter().map(|gi| -gi).collect();
        cholesky_solve(&h, d, &mut dir);
        let slope = dot(&g, &dir);
        precision.multiply(&dir, &mut q_dir);
        let (dir_q_dir, dir_q_diff) = (dot(&dir, &q_dir), dot(&dir, &q_diff));
        for (j, xj) in xdir.iter_mut().enumerate() {
            *xj = dot(row(j), &dir);
        }
        let f0 = objective(&diff, &q_diff, dir_q_dir, dir_q_diff, &z, &xdir, 0.0);
        let t = if slope < 0.0 {
            line_search(slope, |t| {
                objective(&diff, &q_diff, dir_q_dir, dir_q_diff, &z, &xdir, t) - f0
            })
        } else {
            0.0
        };
        for i in 0..d {
            dir[i] *= t;
            w[i] += dir[i];
        }
        for j in 0..n {
            z[j] += t * xdir[j];
        }
        done = t == 0.0 || converged(&dir, &w);
    }
    Ok(MapStep {
        w,
        iterations,
        converged: done,
    })
}

/// The MAP step for a single observation in the dual form, without
/// allocation: given a = x·m, k = xᵀQ⁻¹x ≥ 0 and the observation's target
/// y and weight ω, returns the root c of g(c) = c − ω(y − σ(a + kc)), so
/// that w = m + c·Q⁻¹x. Returns (c, evaluations of σ, converged).
///
/// g is strictly increasing and its root lies in [ω(y − 1), ωy]. It is
/// convex below its inflection point a + kc = 0 and concave above it, so
/// the solve starts there (clamped to the bracket): Newton steps from that
/// point move toward the root without passing it, and the bracket catches
/// a Halley step that would. (From c = 0, on a click
/// on a young state, they went from one flat end of the bracket to the
/// other, closing in by ~1e-4 a step: up to 50 iterations, and an
/// unconverged root.) Each step is Halley's, which uses g″ — free once σ
/// is known — and triples the digits per step; bisection on the bracket
/// stays as the safeguard. The solve ends when the step is below the
/// tolerance or, after a Halley step, when the step's cube times Halley's
/// error constant |g″²/(4g′²) − g‴/(6g′)| puts the remaining error two
/// orders of magnitude below the tolerance: one evaluation of σ fewer
/// than confirming a small step. On models of bench 1's young states that
/// is 2.2–2.5 evaluations per solve, against about 4 (and a tail up to 50)
/// for Newton from c = 0.
pub(crate) fn single_step(a: f64, k: f64, reward: bool, weight: f64) -> (f64, u32, bool) {
    scalar_root(a, k, reward, weight, iteration_cap())
}

/// [`single_step`] with at most `cap` evaluations of σ.
fn scalar_root(a: f64, k: f64, reward: bool, weight: f64, cap: u32) -> (f64, u32, bool) {
    let y = if reward { 1.0 } else { 0.0 };
    let (mut lo, mut hi) = (weight * (y - 1.0), weight * y);
    // `max`/`min`, not `clamp`: a NaN bound must not panic (the caller
    // refuses a non-finite result).
    let mut c = if k > 0.0 {
        (-a / k).max(lo).min(hi)
    } else {
        0.0
    };
    for iteration in 1..=cap {
        let p = sigmoid(a + k * c);
        let g = c - weight * (y - p);
        if g > 0.0 {
            hi = c;
        } else if g < 0.0 {
            lo = c;
        } else {
            return (c, iteration, true);
        }
        // g′, g″ and g‴ from σ′ = v, σ″ = v(1 − 2p), σ‴ = v(1 − 6v).
        let v = p * (1.0 - p);
        let slope = 1.0 + weight * k * v;
        let bend = weight * k * k * v * (1.0 - 2.0 * p);
        // Halley's step g/g′ · 1/(1 − g·g″/(2g′²)), as one division, when
        // its correction factor stays below 2; else Newton's.
        let (mut next, mut halley) = if slope * slope > g * bend {
            (c - 2.0 * g * slope / (2.0 * slope * slope - g * bend), true)
        } else {
            (c - g / slope, false)
        };
        if !(next > lo && next < hi) {
            // At the root, g is rounding noise and the step below c's
            // resolution: `next` is c, which the lines above just made an
            // end of the bracket.
            if (next - c).abs() <= NEWTON_TOLERANCE * (1.0 + c.abs()) {
                return (c, iteration, true);
            }
            next = 0.5 * (lo + hi);
            halley = false;
        }
        let step = next - c;
        c = next;
        let tolerance = NEWTON_TOLERANCE * (1.0 + c.abs());
        if step.abs() <= tolerance || hi - lo <= tolerance {
            return (c, iteration, true);
        }
        if halley {
            // The error constant times 12g′², without dividing; NaN (an
            // infinite k³ times v = 0) compares false: go on.
            let third = weight * k * k * k * v * (1.0 - 6.0 * v);
            let constant = (3.0 * bend * bend - 2.0 * third * slope).abs();
            if constant * step.abs().powi(3) <= 0.12 * tolerance * slope * slope {
                return (c, iteration, true);
            }
        }
    }
    (c, cap, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_batch_leaves_the_mean() {
        let mean = [0.5, -1.0, 2.0];
        let step = map_step(&mean, &Precision::Diagonal(&[1.0, 2.0, 4.0]), &[])
            .expect("nothing to refuse");
        assert_eq!(step.w, mean);
        assert!(step.converged);
    }

    /// `n` contexts of bench 1's shape: `[1, u₁ … u_{d−1}]`, uᵢ ~ U(−1, 1).
    fn bench_contexts(rng: &mut impl rand::Rng, n: usize, d: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|_| {
                (0..d)
                    .map(|i| {
                        if i == 0 {
                            1.0
                        } else {
                            rng.random_range(-1.0..1.0)
                        }
                    })
                    .collect()
            })
            .collect()
    }

    /// Observations of `contexts`, each a click with probability 0.2.
    fn one_click_in_five<'a>(
        rng: &mut impl rand::Rng,
        contexts: &'a [Vec<f32>],
    ) -> Vec<Observation<'a>> {
        contexts
            .iter()
            .map(|x| Observation::new(x, rng.random_bool(0.2)))
            .collect()
    }

    /// Small batches on young d = 32 states, as bench 1's micro-batches
    /// make them, with contexts drawn apart and with one context repeated
    /// (K of rank one): every solve ends at the mode, where the gradient
    /// of f vanishes to rounding. The line search reads f's change near
    /// the mode far below f's own rounding, and takes steps it cannot
    /// resolve whole.
    #[test]
    fn small_dual_solves_reach_the_mode() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(3);
        let d = 32;
        for (n, repeated) in [(2, false), (2, true), (8, false), (8, true)] {
            for _ in 0..200 {
                let mean: Vec<f64> = (0..d).map(|_| rng.random_range(-0.3..0.3)).collect();
                let q: Vec<f64> = (0..d).map(|_| rng.random_range(1.0..1.5)).collect();
                let mut contexts = bench_contexts(&mut rng, n, d);
                if repeated {
                    let first = contexts[0].clone();
                    contexts.iter_mut().for_each(|x| x.clone_from(&first));
                }
                let batch = one_click_in_five(&mut rng, &contexts);
                let step =
                    map_step(&mean, &Precision::Diagonal(&q), &batch).expect("a valid batch");
                assert!(step.converged);
                // ∇f(w) = Q(w − m) − Σ ω(y − σ(w·x))x.
                let mut gradient: Vec<f64> = (0..d).map(|i| q[i] * (step.w[i] - mean[i])).collect();
                for obs in &batch {
                    let p = sigmoid(dot_f32(&step.w, obs.context));
                    let y = if obs.reward { 1.0 } else { 0.0 };
                    for (g, &x) in gradient.iter_mut().zip(obs.context) {
                        *g -= obs.weight * (y - p) * f64::from(x);
                    }
                }
                let largest = gradient.iter().fold(0.0_f64, |a, g| a.max(g.abs()));
                assert!(
                    largest < 1e-9,
                    "n {n}, repeated {repeated}: gradient {largest:e} at the returned mode"
                );
            }
        }
    }

    /// The warm start's worth, on batches like bench 1's micro-batches
    /// (d = 32, contexts `[1, u₁ … u₃₁]` that share their first feature,
    /// young states, one click in five): the mean Newton iterations per
    /// solve (the last only confirms), each ending at the mode: 2.45
    /// (n = 2) to 3.46 (n = 8) when written; from c = 0 the same batches
    /// took 5.03 to 5.48.
    #[test]
    fn warm_started_small_solves_take_few_newton_iterations() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(41);
        let d = 32;
        for n in [2, 3, 4, 8] {
            let solves = 300;
            let mut iterations = 0;
            for _ in 0..solves {
                let mut mean: Vec<f64> = (0..d).map(|_| rng.random_range(-0.2..0.2)).collect();
                mean[0] = rng.random_range(-3.0..-1.0);
                let q: Vec<f64> = (0..d).map(|_| rng.random_range(1.0..3.0)).collect();
                let contexts = bench_contexts(&mut rng, n, d);
                let batch = one_click_in_five(&mut rng, &contexts);
                let step =
                    map_step(&mean, &Precision::Diagonal(&q), &batch).expect("a valid batch");
                assert!(step.converged);
                iterations += step.iterations;
            }
            let mean_iterations = f64::from(iterations) / f64::from(solves);
            eprintln!("n {n}: {mean_iterations:.2} Newton iterations per solve");
            assert!(
                mean_iterations <= 4.0,
                "n {n}: {mean_iterations:.2} Newton iterations per solve"
            );
        }
    }

    /// The bound holds for the step solved from (I + DK) dir = r, with K
    /// of full rank and of rank one, D spread over six orders of
    /// magnitude; with min D in place of max D, or as |r|₂ alone, it fails.
    #[test]
    fn the_newton_step_bound_bounds_the_step() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(9);
        let mut tightest = f64::INFINITY;
        for case in 0..2000 {
            let n = 1 + case % 6;
            let rank_one = case % 3 == 0;
            let d = 4;
            let row = |rng: &mut rand_xoshiro::Xoshiro256PlusPlus| -> Vec<f64> {
                (0..d).map(|_| rng.random_range(-2.0..2.0)).collect()
            };
            let first = row(&mut rng);
            let x: Vec<Vec<f64>> = (0..n)
                .map(|j| {
                    if rank_one || j == 0 {
                        first.clone()
                    } else {
                        row(&mut rng)
                    }
                })
                .collect();
            let k: Vec<f64> = (0..n * n)
                .map(|e| x[e / n].iter().zip(&x[e % n]).map(|(a, b)| a * b).sum())
                .collect();
            let sqrt_d: Vec<f64> = (0..n)
                .map(|_| 10f64.powf(rng.random_range(-3.0..0.0)))
                .collect();
            let r: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            // (I + DK) dir = r by Gaussian elimination with pivoting.
            let mut m: Vec<Vec<f64>> = (0..n)
                .map(|j| {
                    let mut row: Vec<f64> = (0..n)
                        .map(|l| {
                            sqrt_d[j] * sqrt_d[j] * k[j * n + l] + if j == l { 1.0 } else { 0.0 }
                        })
                        .collect();
                    row.push(r[j]);
                    row
                })
                .collect();
            for col in 0..n {
                let pivot = (col..n)
                    .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
                    .unwrap();
                m.swap(col, pivot);
                let (above, below) = m.split_at_mut(col + 1);
                let pivot_row = &above[col];
                for row in below.iter_mut() {
                    let f = row[col] / pivot_row[col];
                    for (e, p) in row.iter_mut().zip(pivot_row).skip(col) {
                        *e -= f * p;
                    }
                }
            }
            let mut dir = vec![0.0; n];
            for row in (0..n).rev() {
                let s: f64 = (row + 1..n).map(|e| m[row][e] * dir[e]).sum();
                dir[row] = (m[row][n] - s) / m[row][row];
            }
            let largest = dir.iter().fold(0.0_f64, |a, v| a.max(v.abs()));
            let bound = newton_step_bound(&r, &sqrt_d);
            assert!(
                largest <= bound * (1.0 + 1e-9),
                "case {case}: step {largest:e} above the bound {bound:e}"
            );
            tightest = tightest.min(bound / largest);
        }
        // Not vacuous: some steps come close to it.
        assert!(tightest < 1.5, "the bound was never tight: {tightest}");
    }

    /// Tiny weights make the first step, from c = 0, smaller than the
    /// tolerance, but it is the whole update, and a small precision turns it
    /// into a visible move of the mean (w = m + Q⁻¹Xᵀc): it is taken, not
    /// skipped by the bound on the next step.
    #[test]
    fn a_first_step_below_the_tolerance_still_moves_the_mean() {
        let (d, q, weight) = (4, 1e-6, 1e-10);
        let mean = vec![0.0; d];
        let precision = vec![q; d];
        let contexts = [[1.0_f32, 0.5, -0.5, 0.25], [1.0, -0.25, 0.5, 0.5]];
        let batch: Vec<Observation<'_>> = contexts
            .iter()
            .map(|x| Observation {
                weight,
                ..Observation::new(x, true)
            })
            .collect();
        let step = map_step(&mean, &Precision::Diagonal(&precision), &batch).expect("valid");
        assert!(step.converged);
        // With m = 0 each c is about ω(1 − σ(0)) = ω/2, and K·c is ~1e-4,
        // so c stays within 1e-3 of ω/2: w ≈ (ω/2) Σ x / q, to 1e-3 of
        // its size (w[2] is 0 by symmetry, up to rounding).
        let expected: Vec<f64> = (0..d)
            .map(|i| {
                contexts
                    .iter()
                    .map(|x| 0.5 * weight * f64::from(x[i]) / q)
                    .sum()
            })
            .collect();
        let size = max_abs(&expected);
        assert!(size > 1e-5, "the mean moves visibly: {expected:?}");
        for (i, (wi, e)) in step.w.iter().zip(&expected).enumerate() {
            assert!(
                (wi - e).abs() <= 1e-3 * size,
                "w[{i}] = {wi}, expected about {e}"
            );
        }
    }

    /// A case where Newton lands on the root with ~5e-17 of rounding noise
    /// in g: it used to bisect the bracket from there (35 iterations).
    #[test]
    fn single_step_stops_at_the_root_instead_of_bisecting() {
        let (a, k) = (2.996_947_837_060_564_4, 10.418_423_564_356_08);
        let (c, iterations, converged) = single_step(a, k, false, 1.0);
        // |g| / 2 for ω = 1.
        let residual = single_step_residual(a, k, false, 1.0, c);
        assert!(
            converged && residual < 0.5e-15,
            "c {c}, residual {residual}"
        );
        assert!(iterations <= 8, "{iterations} iterations");
    }

    /// |g(c)| relative to 1 + ω, which bounds |c|.
    fn single_step_residual(a: f64, k: f64, y: bool, w: f64, c: f64) -> f64 {
        let target = if y { 1.0 } else { 0.0 };
        (c - w * (target - sigmoid(a + k * c))).abs() / (1.0 + w)
    }

    /// A click on a young state (k ≈ 13–14, logit −3.9 to −5):
    /// from c = 0, Newton steps went from one end of the bracket to the
    /// other, where g is flat, and back, closing in by ~1e-4 a step. The
    /// first case took 41 iterations; the second stopped at 50, unconverged,
    /// at c ≈ 0.015 where the root is ≈ 0.32 (a wrong update, applied).
    #[test]
    fn single_step_does_not_swing_between_the_ends_of_its_bracket() {
        for (a, k) in [
            (-4.993_455_823_610_324, 13.211_660_111_054_712),
            (-3.910_833_814_942_55, 14.423_705_940_182_323),
        ] {
            let (c, iterations, converged) = single_step(a, k, true, 1.0);
            let residual = single_step_residual(a, k, true, 1.0, c);
            assert!(
                converged && residual < 1e-12 && iterations <= 5,
                "a {a}, k {k}: c {c}, residual {residual}, {iterations} iterations, converged {converged}"
            );
        }
    }

    /// A sweep over the ranges the update allows (weights up to 1e6, k from
    /// 0 to 1e8, logits past the clamp) and over the states bench 1 makes:
    /// every solve converges to its root, within a bounded number of
    /// evaluations of σ.
    #[test]
    fn single_step_converges_over_a_sweep() {
        use rand::{Rng, SeedableRng};
        let mut grid = Vec::new();
        for a in [
            -40.0, -30.0, -10.0, -3.0, -1.0, 0.0, 0.5, 2.0, 5.0, 12.0, 34.0, 40.0,
        ] {
            for k in [0.0, 1e-6, 0.01, 1.0, 10.0, 100.0, 1e4, 1e8] {
                for w in [1e-3, 0.5, 1.0, 10.0, 1e3, 1e6] {
                    grid.push((a, k, w));
                }
            }
        }
        let mut rng = rand_xoshiro::Xoshiro256PlusPlus::seed_from_u64(11);
        let young: Vec<_> = (0..20_000)
            .map(|_| {
                let updates = [0.0, 1.0, 3.0, 10.0, 30.0, 100.0][rng.random_range(0..6)];
                let k = 32.0 / 3.0 / (1.0 + 0.1 * updates) * rng.random_range(0.6..1.4);
                (rng.random_range(-7.0..1.0), k, 1.0)
            })
            .collect();
        let (mut most, mut young_evaluations) = (0, 0);
        for (i, &(a, k, w)) in grid.iter().chain(&young).enumerate() {
            for y in [false, true] {
                let (c, iterations, converged) = single_step(a, k, y, w);
                let residual = single_step_residual(a, k, y, w, c);
                assert!(
                    converged && residual < 1e-10,
                    "a {a}, k {k}, y {y}, w {w}: c {c}, residual {residual}, {iterations} iterations"
                );
                most = most.max(iterations);
                if i >= grid.len() {
                    young_evaluations += iterations;
                }
            }
        }
        let young_mean = f64::from(young_evaluations) / (2.0 * young.len() as f64);
        assert!(most <= 20, "{most} iterations at most");
        assert!(
            young_mean < 3.0,
            "{young_mean} iterations on average on young states"
        );
    }

    #[test]
    fn single_step_solves_the_dual_condition() {
        for (a, k, y, w) in [
            (0.0, 1.0, true, 1.0),
            (-5.0, 3.0, false, 2.0),
            (4.0, 0.0, false, 1.0),
            (30.0, 1e4, false, 1e3),
        ] {
            let (c, _, converged) = single_step(a, k, y, w);
            let residual = single_step_residual(a, k, y, w, c);
            assert!(
                converged && residual < 1e-8,
                "{a} {k} {y} {w}: c {c}, residual {residual}"
            );
        }
    }
}
