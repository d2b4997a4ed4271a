//! A tridiagonal solve split into `P` segments that run side by side in SIMD lanes (the
//! partition method of Wang 1981, in the "recurrence + homogeneous solution" form).
//!
//! Why: a Thomas sweep is a chain of dependent multiply–adds, so a solve costs about
//! `2n × (FMA latency)` cycles however wide the CPU is. Here the `n` unknowns are cut into `P`
//! contiguous segments of `m = ⌈n/P⌉` rows and stored *segment-interleaved* (node
//! `s·m + j` at index `j·P + s`), so row `j` of every segment is one `P`-wide vector and both
//! sweeps become chains of length `m` that advance `P` segments per instruction.
//!
//! The result is exact (not an approximation by overlap): the factorisation is the ordinary
//! Thomas LU of the whole matrix (`y_i = r_i/p_i − (a_i/p_i)·y_{i−1}`,
//! `x_i = y_i − (c_i/p_i)·x_{i+1}`). Each lane runs these first-order linear recurrences
//! from zero at its segment's start; the true sequence is the lane's plus the true value
//! carried in across the segment boundary times the recurrence's homogeneous solution (the
//! running product of the multipliers, precomputed once). The `P` boundary values follow
//! from a short sequential chain, then a vectorised multiply–add fixes every node up. The
//! answer equals the sequential solve's up to rounding.
//!
//! Rows past `n` (padding to `m·P`) are identity rows decoupled from the rest; they hold
//! zeros.

use crate::implicit::{FactoredSolve, Scratch};
use crate::lanes::Lanes;

/// The SIMD width in f64 lanes used by the 1D solver: 8 (two AVX2 registers or one
/// AVX-512 register), short chains of `⌈n/8⌉` rows for the default 397-node grid.
pub const LANES: usize = 8;

/// `a·b + c`, fused into one rounding when `FMA` is set (only set where the CPU has FMA:
/// otherwise `mul_add` is a slow library call).
#[inline(always)]
pub(crate) fn madd<const FMA: bool>(a: f64, b: f64, c: f64) -> f64 {
    if FMA {
        a.mul_add(b, c)
    } else {
        a * b + c
    }
}

/// Subnormal products are flushed to zero: they would only add < 1e-280 relative, and
/// subnormal arithmetic is slow.
fn flush(h: f64) -> f64 {
    if h.abs() < 1e-280 {
        0.0
    } else {
        h
    }
}

/// A tridiagonal matrix factored for the partitioned solve, `P` segments.
///
/// The factorisation is `LU` with a unit lower factor: forward `z_i = r_i − l_i·z_{i−1}`
/// (`l_i = a_i/p_{i−1}`), backward `x_i = z_i/p_i − (c_i/p_i)·x_{i+1}`, so the forward
/// sweep (fused with the reaction stage in the SBDF2 stepper) costs one multiply–add per
/// node and the division by the pivot moves to the backward sweep, whose chain has
/// spare throughput.
#[derive(Debug, Clone)]
pub struct Partitioned<const P: usize> {
    n: usize,
    m: usize,
    /// `l_i = a_i/p_{i−1}`, interleaved.
    lower: Vec<f64>,
    /// `1/p_i`, interleaved.
    inv: Vec<f64>,
    /// `c_i/p_i`, interleaved.
    bwd: Vec<f64>,
    /// `(∏_{k=start..=i} (−l_k)) / p_i`: the forward sweep's homogeneous solution per
    /// segment, divided by the pivot (as the backward sweep consumes it).
    hz: Vec<f64>,
    /// `∏_{k=i..=end} (−c_k/p_k)`: the backward sweep's homogeneous solution per segment.
    hb: Vec<f64>,
    /// The forward homogeneous solution (not divided) at each segment's last row.
    hz_last: Vec<f64>,
}

/// Borrowed interleaved coefficients of a [`Partitioned`] factorisation.
pub(crate) struct Coefficients<'a> {
    /// `l_i = a_i/p_{i−1}`.
    pub lower: &'a [f64],
    /// `1/p_i`.
    pub inv: &'a [f64],
    /// `c_i/p_i`.
    pub bwd: &'a [f64],
    /// Forward homogeneous solution over the pivot.
    pub hz: &'a [f64],
    /// Backward homogeneous solution.
    pub hb: &'a [f64],
}

/// The per-segment values carried across the boundaries: the true forward value just
/// before each segment, or the true solution just after it.
pub(crate) type Carry<const P: usize> = [f64; P];

impl<const P: usize> Partitioned<P> {
    /// Factors `α·I − k·Δ` (k = κ/h²) with Neumann rows (n ≥ 3), as
    /// [`crate::implicit::Tridiagonal::neumann`].
    pub fn neumann(n: usize, alpha: f64, k: f64) -> Self {
        let (sub, diag, sup) = crate::implicit::neumann_bands(n, alpha, k);
        Self::new(&sub, &diag, &sup)
    }

    /// Factors the matrix with sub-diagonal `a` (`a[0]` unused), diagonal `d` and
    /// super-diagonal `c` (`c[n−1]` unused); no pivoting (it must be diagonally dominant).
    pub fn new(a: &[f64], d: &[f64], c: &[f64]) -> Self {
        let n = d.len();
        let m = n.div_ceil(P).max(1);
        let len = m * P;
        // Natural order first, padded with identity rows (decoupled: l = c = 0).
        let (mut lower, mut inv, mut bwd) = (vec![0.0; len], vec![1.0; len], vec![0.0; len]);
        for i in 0..n {
            let ci = if i + 1 < n { c[i] } else { 0.0 };
            // Once the pivots of a constant stretch reach their fixed point, the next row
            // would compute exactly the same numbers: copy them (the divisions are a
            // dependent chain and dominated the setup of a short solve).
            if i >= 2
                && inv[i - 1] == inv[i - 2]
                && (a[i], d[i], c[i - 1], ci) == (a[i - 1], d[i - 1], c[i - 2], c[i - 1])
            {
                (lower[i], inv[i], bwd[i]) = (lower[i - 1], inv[i - 1], bwd[i - 1]);
                continue;
            }
            let pivot = if i == 0 {
                d[0]
            } else {
                lower[i] = a[i] * inv[i - 1];
                d[i] - lower[i] * c[i - 1]
            };
            inv[i] = 1.0 / pivot;
            bwd[i] = ci * inv[i];
        }
        let (mut hz, mut hb, mut hz_last) = (vec![0.0; len], vec![0.0; len], vec![0.0; P]);
        for (s, last) in hz_last.iter_mut().enumerate() {
            let seg = s * m..(s + 1) * m;
            let mut h = 1.0;
            for i in seg.clone() {
                h = flush(-lower[i] * h);
                hz[i] = h * inv[i];
            }
            *last = h;
            h = 1.0;
            for i in seg.rev() {
                h = flush(-bwd[i] * h);
                hb[i] = h;
            }
        }
        // Node s·m + j goes to j·P + s (loops, not divisions: this runs per solve).
        let il = |natural: &[f64]| {
            let mut buf = vec![0.0; len];
            for (s, seg) in natural.chunks_exact(m).enumerate() {
                for (j, x) in seg.iter().enumerate() {
                    buf[j * P + s] = *x;
                }
            }
            buf
        };
        Self {
            n,
            m,
            lower: il(&lower),
            inv: il(&inv),
            bwd: il(&bwd),
            hz: il(&hz),
            hb: il(&hb),
            hz_last,
        }
    }

    /// Unknowns.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether there are no unknowns (never, for a factored matrix).
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Rows per segment, `⌈n/P⌉`.
    pub fn rows(&self) -> usize {
        self.m
    }

    /// Length of an interleaved vector, `rows·P ≥ n`.
    pub fn padded_len(&self) -> usize {
        self.m * P
    }

    /// Where node `i` lives in an interleaved vector.
    #[inline]
    pub fn index(&self, i: usize) -> usize {
        (i % self.m) * P + i / self.m
    }

    /// Which node interleaved position `k` holds (`≥ n` for padding).
    #[inline]
    pub fn node(&self, k: usize) -> usize {
        (k % P) * self.m + k / P
    }

    /// `out[index(i)] = natural[i]`, padding zeroed (`out` has [`Self::padded_len`]).
    pub fn to_interleaved(&self, natural: &[f64], out: &mut [f64]) {
        out.fill(0.0);
        for (i, x) in natural.iter().take(self.n).enumerate() {
            out[self.index(i)] = *x;
        }
    }

    /// `natural[i] = inter[index(i)]` for `i < n`.
    pub fn from_interleaved(&self, inter: &[f64], natural: &mut [f64]) {
        for (i, x) in natural.iter_mut().take(self.n).enumerate() {
            *x = inter[self.index(i)];
        }
    }

    /// The interleaved coefficient arrays, for sweeps fused with other work.
    pub(crate) fn coefficients(&self) -> Coefficients<'_> {
        Coefficients {
            lower: &self.lower,
            inv: &self.inv,
            bwd: &self.bwd,
            hz: &self.hz,
            hb: &self.hb,
        }
    }

    /// Solves in place on an interleaved vector (length [`Self::padded_len`], padding zero).
    /// On x86-64 CPUs with AVX2 and FMA (detected at run time) the lanes run in vector
    /// registers with fused multiply–adds; the result then differs from
    /// [`Self::solve_interleaved_portable`] by rounding only.
    pub fn solve_interleaved(&self, r: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above), the only
            // requirement of `solve_avx2`'s target features.
            unsafe { self.solve_avx2(r) };
            return;
        }
        self.solve_generic::<false>(r);
    }

    /// The portable solve (no FMA); for tests comparing both paths.
    pub fn solve_interleaved_portable(&self, r: &mut [f64]) {
        self.solve_generic::<false>(r);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn solve_avx2(&self, r: &mut [f64]) {
        self.solve_generic::<true>(r);
    }

    #[inline(always)]
    fn solve_generic<const FMA: bool>(&self, r: &mut [f64]) {
        self.forward::<FMA>(r);
        let c = self.forward_carry::<FMA>(r);
        self.backward::<FMA>(r, &c);
        let d = self.backward_carry::<FMA>(r);
        self.fix_up::<FMA>(r, &d);
    }

    /// Every lane's forward recurrence from zero: `z ← r − l·z`.
    #[inline(always)]
    fn forward<const FMA: bool>(&self, r: &mut [f64]) {
        let mut z = Lanes::<P>::splat(0.0);
        for (rr, l) in r.chunks_exact_mut(P).zip(self.lower.chunks_exact(P)) {
            z = (-Lanes::load(l)).madd::<FMA>(z, Lanes::load(rr));
            z.store(rr);
        }
    }

    /// The true forward values entering each segment, from the lanes' last rows: a chain
    /// of `P − 1` multiply–adds.
    #[inline(always)]
    pub(crate) fn forward_carry<const FMA: bool>(&self, z: &[f64]) -> Carry<P> {
        let last = (self.m - 1) * P;
        let mut c = [0.0; P];
        for s in 1..P {
            c[s] = madd::<FMA>(c[s - 1], self.hz_last[s - 1], z[last + s - 1]);
        }
        c
    }

    /// Every lane's backward recurrence from zero on the corrected forward values:
    /// `x ← (z + c·hz·p)/p − (c/p)·x`.
    #[inline(always)]
    pub(crate) fn backward<const FMA: bool>(&self, z: &mut [f64], c: &Carry<P>) {
        let c = Lanes(*c);
        let mut x = Lanes::<P>::splat(0.0);
        for (((zz, hz), inv), bwd) in z
            .chunks_exact_mut(P)
            .zip(self.hz.chunks_exact(P))
            .zip(self.inv.chunks_exact(P))
            .zip(self.bwd.chunks_exact(P))
            .rev()
        {
            let zt = c.madd::<FMA>(Lanes::load(hz), Lanes::load(zz) * Lanes::load(inv));
            x = (-Lanes::load(bwd)).madd::<FMA>(x, zt);
            x.store(zz);
        }
    }

    /// The true solution just after each segment, from the lanes' first rows: a chain of
    /// `P − 1` multiply–adds running downwards.
    #[inline(always)]
    pub(crate) fn backward_carry<const FMA: bool>(&self, x: &[f64]) -> Carry<P> {
        let mut d = [0.0; P];
        for s in (0..P - 1).rev() {
            d[s] = madd::<FMA>(d[s + 1], self.hb[s + 1], x[s + 1]);
        }
        d
    }

    /// `x ← x + d·hb`: the lanes' backward values made true.
    #[inline(always)]
    fn fix_up<const FMA: bool>(&self, x: &mut [f64], d: &Carry<P>) {
        let d = Lanes(*d);
        for (xr, hb) in x.chunks_exact_mut(P).zip(self.hb.chunks_exact(P)) {
            d.madd::<FMA>(Lanes::load(hb), Lanes::load(xr)).store(xr);
        }
    }
}

/// A [`FactoredSolve`] on natural-order vectors (permutes in and out: for tests and
/// occasional use; the 1D SBDF2 stepper keeps its state interleaved instead).
impl<const P: usize> FactoredSolve for Partitioned<P> {
    fn solve(&self, rhs: &mut [f64], _scratch: &mut Scratch) {
        let mut buf = vec![0.0; self.padded_len()];
        self.to_interleaved(rhs, &mut buf);
        self.solve_interleaved(&mut buf);
        self.from_interleaved(&buf, rhs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::implicit::{Domain, Line, Tridiagonal};

    fn test_rhs(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0)
            .collect()
    }

    /// max |(α − κΔ)x − r| for the Neumann line with spacing 1 (k = κ).
    fn residual(alpha: f64, k: f64, x: &[f64], r: &[f64]) -> f64 {
        let n = x.len();
        let line = Line { n, h: 1.0 };
        let mut lap = vec![0.0; n];
        line.laplacian(x, &mut lap);
        (0..n)
            .map(|i| (alpha * x[i] - k * lap[i] - r[i]).abs())
            .fold(0.0, f64::max)
    }

    fn solve_natural<const P: usize>(t: &Partitioned<P>, r: &[f64], portable: bool) -> Vec<f64> {
        let mut buf = vec![f64::NAN; t.padded_len()];
        t.to_interleaved(r, &mut buf);
        if portable {
            t.solve_interleaved_portable(&mut buf);
        } else {
            t.solve_interleaved(&mut buf);
        }
        let mut x = vec![0.0; r.len()];
        t.from_interleaved(&buf, &mut x);
        x
    }

    fn check_sizes<const P: usize>() {
        // Sizes below P, below 2P, odd, exact multiples and the default grid.
        let sizes = (3..=3 * P + 2).chain([57, 64, 97, 101, 397, 400, 401, 1585]);
        for n in sizes {
            for (alpha, k) in [(3.0, 12.7), (1.0, 6.3), (2.0, 0.3), (1.0, 400.0)] {
                let t = Partitioned::<P>::neumann(n, alpha, k);
                let seq = Tridiagonal::neumann(n, alpha, k);
                let r = test_rhs(n);
                let mut x_seq = r.clone();
                seq.solve_in_place(&mut x_seq);
                let scale = x_seq.iter().fold(1.0f64, |a, x| a.max(x.abs()));
                for portable in [false, true] {
                    let x = solve_natural(&t, &r, portable);
                    let res = residual(alpha, k, &x, &r);
                    assert!(
                        res < 1e-12 * (alpha + 4.0 * k),
                        "P={P} n={n} k={k}: residual {res}"
                    );
                    let diff = x
                        .iter()
                        .zip(&x_seq)
                        .map(|(a, b)| (a - b).abs())
                        .fold(0.0, f64::max);
                    assert!(
                        diff < 1e-13 * scale,
                        "P={P} n={n} k={k}: vs sequential {diff}"
                    );
                }
            }
        }
    }

    #[test]
    fn partitioned_solve_matches_the_sequential_solve_for_every_size() {
        check_sizes::<LANES>();
        check_sizes::<4>();
        check_sizes::<16>();
        check_sizes::<1>();
    }

    #[test]
    fn simd_and_portable_paths_agree() {
        let t = Partitioned::<LANES>::neumann(397, 3.0, 12.7);
        let r = test_rhs(397);
        let a = solve_natural(&t, &r, false);
        let b = solve_natural(&t, &r, true);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-13, "{diff}");
    }

    #[test]
    fn padding_stays_zero_and_layout_round_trips() {
        let t = Partitioned::<LANES>::neumann(11, 2.0, 1.0);
        assert_eq!(t.rows(), 2);
        let mut seen = vec![false; t.padded_len()];
        for i in 0..11 {
            assert_eq!(t.node(t.index(i)), i);
            seen[t.index(i)] = true;
        }
        let mut buf = vec![0.0; t.padded_len()];
        t.to_interleaved(&test_rhs(11), &mut buf);
        t.solve_interleaved(&mut buf);
        for (k, x) in buf.iter().enumerate() {
            if !seen[k] {
                assert_eq!(*x, 0.0, "padding slot {k}");
            }
        }
    }

    #[test]
    fn factored_solve_trait_solves_in_natural_order() {
        let t = Partitioned::<LANES>::neumann(23, 1.5, 4.0);
        let r = test_rhs(23);
        let mut x = r.clone();
        t.solve(&mut x, &mut Scratch::default());
        assert!(residual(1.5, 4.0, &x, &r) < 1e-12);
    }
}
