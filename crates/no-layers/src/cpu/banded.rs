//! Banded matrices applied to the rows of a plane: the CPU kernel of the fused resampling
//! ops (`cno_activation_op.rs`).
//!
//! A PyTorch-style antialiased bicubic resize touches at most `4·max(1, n_in/n_out)` inputs
//! per output, so its `[n_out, n_in]` matrix is banded: applied densely by matmul (as
//! [`crate::layers::resample::Resampler`] does, on every backend) it spends 25–50× more
//! multiply-adds than it needs and moves the 4× larger upsampled activations through
//! memory. [`BandedMatrix`] keeps, per output row, the first column and the contiguous
//! run of weights up to the last non-zero, and [`BandedMatrix::apply_rows`] computes
//! `dst = M · src` for a plane `src` of shape `[n_in, len]` (row-major) as a sum of
//! scaled rows: contiguous, vectorisable, and in a fixed order (no dependence on threads).

use std::fmt;

/// The scalar types the banded kernels run on (`f32`, `f64`).
pub trait BandScalar: Copy + Default + Send + Sync + PartialOrd + fmt::Debug + 'static {
    /// Converts a matrix entry built in `f64`.
    fn from_f64(v: f64) -> Self;
    /// `self·x + acc` (the portable form: a multiply and an add, no libm call).
    fn mul_add_plain(self, x: Self, acc: Self) -> Self;
    /// `self·x + acc` as one fused multiply-add (used where the CPU has FMA).
    fn mul_add_fused(self, x: Self, acc: Self) -> Self;
    /// `self·x`.
    fn mul(self, x: Self) -> Self;
    /// `value` where `pre > 0`, else `slope·value` (a leaky ReLU and its derivative),
    /// without a branch so that loops over it vectorise ([`crate::ops::leaky_relu`]).
    fn leaky(pre: Self, value: Self, slope: Self) -> Self;
}

impl BandScalar for f32 {
    fn from_f64(v: f64) -> Self {
        v as f32
    }
    #[inline(always)]
    fn mul_add_plain(self, x: Self, acc: Self) -> Self {
        acc + self * x
    }
    #[inline(always)]
    fn mul_add_fused(self, x: Self, acc: Self) -> Self {
        self.mul_add(x, acc)
    }
    #[inline(always)]
    fn mul(self, x: Self) -> Self {
        self * x
    }
    #[inline(always)]
    fn leaky(pre: Self, value: Self, slope: Self) -> Self {
        crate::cpu::map::select_f32(pre > 0.0, value, slope * value)
    }
}

impl BandScalar for f64 {
    fn from_f64(v: f64) -> Self {
        v
    }
    #[inline(always)]
    fn mul_add_plain(self, x: Self, acc: Self) -> Self {
        acc + self * x
    }
    #[inline(always)]
    fn mul_add_fused(self, x: Self, acc: Self) -> Self {
        self.mul_add(x, acc)
    }
    #[inline(always)]
    fn mul(self, x: Self) -> Self {
        self * x
    }
    #[inline(always)]
    fn leaky(pre: Self, value: Self, slope: Self) -> Self {
        crate::cpu::map::select_f64(pre > 0.0, value, slope * value)
    }
}

/// An `[n_out, n_in]` matrix stored as one contiguous run of columns per row.
#[derive(Debug, Clone, PartialEq)]
pub struct BandedMatrix<T> {
    n_out: usize,
    n_in: usize,
    /// First column of each row's run.
    starts: Vec<usize>,
    /// Offsets of each row's weights in `weights` (`n_out + 1` entries).
    offsets: Vec<usize>,
    weights: Vec<T>,
}

impl<T: BandScalar> BandedMatrix<T> {
    /// The band of a dense row-major `[n_out, n_in]` matrix: each row keeps the columns from
    /// its first to its last non-zero entry (an all-zero row keeps none). Exact: applying it
    /// gives the dense product up to the order of the additions.
    pub fn from_dense(dense: &[f64], n_out: usize, n_in: usize) -> Self {
        assert_eq!(
            dense.len(),
            n_out * n_in,
            "BandedMatrix::from_dense: {} entries for a {n_out}×{n_in} matrix",
            dense.len()
        );
        let mut starts = Vec::with_capacity(n_out);
        let mut offsets = Vec::with_capacity(n_out + 1);
        let mut weights = Vec::new();
        offsets.push(0);
        for row in dense.chunks(n_in.max(1)).take(n_out) {
            let first = row.iter().position(|&v| v != 0.0);
            let last = row.iter().rposition(|&v| v != 0.0);
            match (first, last) {
                (Some(a), Some(b)) => {
                    starts.push(a);
                    weights.extend(row[a..=b].iter().map(|&v| T::from_f64(v)));
                }
                _ => starts.push(0),
            }
            offsets.push(weights.len());
        }
        Self {
            n_out,
            n_in,
            starts,
            offsets,
            weights,
        }
    }

    /// The band of the transpose of a dense row-major `[n_out, n_in]` matrix (an
    /// `[n_in, n_out]` banded matrix): what the backward pass applies.
    pub fn transpose_of_dense(dense: &[f64], n_out: usize, n_in: usize) -> Self {
        let mut t = vec![0.0; dense.len()];
        for i in 0..n_out {
            for j in 0..n_in {
                t[j * n_out + i] = dense[i * n_in + j];
            }
        }
        Self::from_dense(&t, n_in, n_out)
    }

    /// The widest row's run of columns.
    #[cfg(test)]
    pub fn max_width(&self) -> usize {
        self.offsets
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(0)
    }

    /// `dst = M · src` with `src` a row-major `[n_in, len]` plane and `dst` `[n_out, len]`.
    /// Uses fused multiply-adds where the CPU has AVX2 and FMA, and sixteen-lane vectors
    /// where it has AVX-512F (both detected at run time); every path computes each output
    /// value with the same operations in the same order, so they give the same bits.
    ///
    /// # Panics
    /// If the slices are not `n_in·len` and `n_out·len` long (callers size them from the
    /// same matrix; a mismatch is a bug, not a user error).
    pub fn apply_rows(&self, src: &[T], len: usize, dst: &mut [T]) {
        self.apply_rows_then(src, len, dst, |v| v);
    }

    /// [`Self::apply_rows`], then `finish` applied to each output value before it is
    /// stored (an activation, say), so that the output is written once, in final form.
    ///
    /// # Panics
    /// As [`Self::apply_rows`].
    pub fn apply_rows_then<F: Fn(T) -> T + Copy>(
        &self,
        src: &[T],
        len: usize,
        dst: &mut [T],
        finish: F,
    ) {
        assert!(
            src.len() == self.n_in * len && dst.len() == self.n_out * len,
            "BandedMatrix::apply_rows: planes of {} and {} values for a {}×{} matrix and rows of {len}",
            src.len(),
            dst.len(),
            self.n_out,
            self.n_in
        );
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::map::has_avx512() {
            // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
            unsafe { self.apply_rows_avx512(src, len, dst, finish) };
            return;
        }
        #[cfg(target_arch = "x86_64")]
        if crate::cpu::map::has_avx2_fma() {
            // SAFETY: the CPU supports AVX2 and FMA (checked just above).
            unsafe { self.apply_rows_avx2(src, len, dst, finish) };
            return;
        }
        self.apply_rows_body::<false, F>(src, len, dst, finish);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx2,fma")]
    unsafe fn apply_rows_avx512<F: Fn(T) -> T + Copy>(
        &self,
        src: &[T],
        len: usize,
        dst: &mut [T],
        finish: F,
    ) {
        self.apply_rows_body::<true, F>(src, len, dst, finish);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn apply_rows_avx2<F: Fn(T) -> T + Copy>(
        &self,
        src: &[T],
        len: usize,
        dst: &mut [T],
        finish: F,
    ) {
        self.apply_rows_body::<true, F>(src, len, dst, finish);
    }

    /// The kernel, inlined into the portable and the vector entry points so that the
    /// compiler vectorises the column blocks for each.
    #[inline(always)]
    fn apply_rows_body<const FMA: bool, F: Fn(T) -> T + Copy>(
        &self,
        src: &[T],
        len: usize,
        dst: &mut [T],
        finish: F,
    ) {
        for (i, out) in dst
            .chunks_exact_mut(len.max(1))
            .enumerate()
            .take(self.n_out)
        {
            let w = &self.weights[self.offsets[i]..self.offsets[i + 1]];
            if w.is_empty() {
                out.fill(finish(T::default()));
                continue;
            }
            let rows = &src[self.starts[i] * len..];
            if len >= WIDE {
                band_row_blocks::<T, WIDE, FMA, F>(w, rows, len, out, finish);
            } else if len >= NARROW {
                band_row_blocks::<T, NARROW, FMA, F>(w, rows, len, out, finish);
            } else {
                band_row_columns::<T, FMA, F>(w, rows, len, out, finish);
            }
        }
    }
}

/// Columns per block of the wide kernel: 4 sixteen-lane `f32` accumulators (8 with AVX2),
/// enough independent chains to hide the multiply-add latency.
const WIDE: usize = 64;
/// Columns per block for rows shorter than [`WIDE`].
const NARROW: usize = 16;

/// One output row `out = Σₖ w[k]·rows[k·len..][..len]` in blocks of `N` columns, each
/// summed in registers over all taps and stored once (the plain loop loads and stores the
/// row once per tap). The last block overlaps the one before it when `N` does not divide
/// `len`: a column's value does not depend on its block, so it is written twice with the
/// same bits. Each value is `w₀·x₀`, then one multiply-add per further tap in tap order,
/// exactly as in [`band_row_columns`], and stored as `finish(value)`. Needs `len ≥ N` and
/// a non-empty `w`.
#[inline(always)]
fn band_row_blocks<T: BandScalar, const N: usize, const FMA: bool, F: Fn(T) -> T>(
    w: &[T],
    rows: &[T],
    len: usize,
    out: &mut [T],
    finish: F,
) {
    let mut c0 = 0;
    loop {
        let c = c0.min(len - N);
        let mut acc = [T::default(); N];
        let first = &rows[c..c + N];
        for (a, &x) in acc.iter_mut().zip(first) {
            *a = w[0].mul(x);
        }
        for (k, &wk) in w.iter().enumerate().skip(1) {
            let row = &rows[k * len + c..k * len + c + N];
            for (a, &x) in acc.iter_mut().zip(row) {
                *a = multiply_add::<T, FMA>(wk, x, *a);
            }
        }
        // By reference: iterating the array by value copies it to the stack first.
        for (o, &a) in out[c..c + N].iter_mut().zip(&acc) {
            *o = finish(a);
        }
        if c + N == len {
            break;
        }
        c0 += N;
    }
}

/// One output row, a pass over the whole row per tap (rows shorter than [`NARROW`]).
#[inline(always)]
fn band_row_columns<T: BandScalar, const FMA: bool, F: Fn(T) -> T>(
    w: &[T],
    rows: &[T],
    len: usize,
    out: &mut [T],
    finish: F,
) {
    for (o, &s) in out.iter_mut().zip(&rows[..len]) {
        *o = w[0].mul(s);
    }
    for (k, &wk) in w.iter().enumerate().skip(1) {
        for (o, &x) in out.iter_mut().zip(&rows[k * len..(k + 1) * len]) {
            *o = multiply_add::<T, FMA>(wk, x, *o);
        }
    }
    for o in out.iter_mut() {
        *o = finish(*o);
    }
}

#[inline(always)]
fn multiply_add<T: BandScalar, const FMA: bool>(w: T, x: T, acc: T) -> T {
    if FMA {
        w.mul_add_fused(x, acc)
    } else {
        w.mul_add_plain(x, acc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::resample::bicubic_antialias_matrix;

    fn dense_apply(m: &[f64], n_out: usize, n_in: usize, src: &[f64], len: usize) -> Vec<f64> {
        let mut out = vec![0.0; n_out * len];
        for i in 0..n_out {
            for j in 0..n_in {
                for c in 0..len {
                    out[i * len + c] += m[i * n_in + j] * src[j * len + c];
                }
            }
        }
        out
    }

    fn plane(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 37 % 101) as f64 - 50.0) / 17.0)
            .collect()
    }

    #[test]
    fn banded_product_equals_the_dense_one_and_its_transpose() {
        for (n_in, n_out, len) in [
            (10usize, 20usize, 7usize),
            (20, 10, 3),
            (23, 9, 1),
            (6, 6, 5),
        ] {
            let m = bicubic_antialias_matrix(n_in, n_out);
            let b = BandedMatrix::<f64>::from_dense(&m, n_out, n_in);
            // Keys' kernel spans 4 taps, widened by the down-scale factor.
            let taps = (4.0 * (n_in as f64 / n_out as f64).max(1.0)).ceil() as usize + 1;
            assert!(b.max_width() <= taps, "{} > {taps}", b.max_width());
            let src = plane(n_in * len);
            let mut got = vec![0.0; n_out * len];
            b.apply_rows(&src, len, &mut got);
            let want = dense_apply(&m, n_out, n_in, &src, len);
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-13, "{n_in}->{n_out}: {g} vs {w}");
            }
            // The transpose: ⟨M x, y⟩ = ⟨x, Mᵀ y⟩.
            let bt = BandedMatrix::<f64>::transpose_of_dense(&m, n_out, n_in);
            let y = plane(n_out * len);
            let mut mty = vec![0.0; n_in * len];
            bt.apply_rows(&y, len, &mut mty);
            let lhs: f64 = got.iter().zip(&y).map(|(a, b)| a * b).sum();
            let rhs: f64 = src.iter().zip(&mty).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-11 * lhs.abs().max(1.0),
                "{lhs} vs {rhs}"
            );
        }
    }

    /// Every output value as the kernel defines it, one column at a time: `w₀·x₀`, then one
    /// multiply-add per further tap, fused where `fused`.
    fn per_column(b: &BandedMatrix<f32>, src: &[f32], len: usize, fused: bool) -> Vec<f32> {
        let mut out = vec![0.0f32; b.n_out * len];
        for i in 0..b.n_out {
            let w = &b.weights[b.offsets[i]..b.offsets[i + 1]];
            for c in 0..len {
                let x = |k: usize| src[(b.starts[i] + k) * len + c];
                out[i * len + c] = match w.split_first() {
                    None => 0.0,
                    Some((&w0, rest)) => {
                        rest.iter().enumerate().fold(w0 * x(0), |acc, (k, &wk)| {
                            if fused {
                                wk.mul_add(x(k + 1), acc)
                            } else {
                                acc + wk * x(k + 1)
                            }
                        })
                    }
                };
            }
        }
        out
    }

    #[test]
    fn column_blocks_give_the_bits_of_one_column_at_a_time_on_every_path() {
        // Row lengths below, at and between the block widths (16 and 64), so that the last
        // block overlaps the one before it, and the up- and down-sampling bands of CNO.
        for len in [1usize, 5, 15, 16, 17, 40, 63, 64, 65, 100, 127, 130, 200] {
            for (n_in, n_out) in [(25usize, 50usize), (50, 25), (13, 13)] {
                let m = bicubic_antialias_matrix(n_in, n_out);
                let b = BandedMatrix::<f32>::from_dense(&m, n_out, n_in);
                let src: Vec<f32> = plane(n_in * len).iter().map(|&v| v as f32).collect();
                let mut plain = vec![f32::NAN; n_out * len];
                b.apply_rows_body::<false, _>(&src, len, &mut plain, |v| v);
                assert_eq!(plain, per_column(&b, &src, len, false), "plain, len {len}");
                #[cfg(target_arch = "x86_64")]
                {
                    let want = per_column(&b, &src, len, true);
                    if crate::cpu::map::has_avx2_fma() {
                        let mut got = vec![f32::NAN; n_out * len];
                        // SAFETY: AVX2 and FMA are present (checked just above).
                        unsafe { b.apply_rows_avx2(&src, len, &mut got, |v| v) };
                        assert_eq!(got, want, "AVX2, len {len}, {n_in}->{n_out}");
                    }
                    if crate::cpu::map::has_avx512() {
                        let mut got = vec![f32::NAN; n_out * len];
                        // SAFETY: AVX-512F, AVX2 and FMA are present (checked just above).
                        unsafe { b.apply_rows_avx512(&src, len, &mut got, |v| v) };
                        assert_eq!(got, want, "AVX-512, len {len}, {n_in}->{n_out}");
                    }
                    let mut got = vec![f32::NAN; n_out * len];
                    b.apply_rows(&src, len, &mut got);
                    let fused = crate::cpu::map::has_avx2_fma();
                    assert_eq!(got, per_column(&b, &src, len, fused), "dispatch, len {len}");
                    // A finishing map is applied to the stored values, and to nothing else.
                    let leaky = |v: f32| f32::leaky(v, v, 0.01);
                    let mut mapped = vec![f32::NAN; n_out * len];
                    b.apply_rows_then(&src, len, &mut mapped, leaky);
                    let want: Vec<f32> = got.iter().map(|&v| leaky(v)).collect();
                    assert_eq!(mapped, want, "finish, len {len}");
                }
            }
        }
    }

    #[test]
    fn zero_rows_and_f32_agree_with_f64() {
        let m = vec![0.0, 0.0, 0.5, 0.0, 0.0, 0.0, 2.0, 0.0, -1.0];
        let b32 = BandedMatrix::<f32>::from_dense(&m, 3, 3);
        assert_eq!(b32.max_width(), 3);
        let mut out = vec![9.0f32; 6];
        b32.apply_rows(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, &mut out);
        assert_eq!(out, vec![2.5, 3.0, 0.0, 0.0, -3.0, -2.0]);
    }
}
