//! Dense layers whose input is a handful of values per row (a DeepONet trunk's first layer
//! maps 2 coordinates to 256 features at each of 10,000 points) as direct loops.
//!
//! As a matrix product such a layer has a common dimension of 2: the `gemm` crate runs it
//! at 5–7 GFLOP/s (its blocking buys nothing at that depth), and the layer's bias fill,
//! product and weight and bias gradients are four passes over a `10,000 × 256` buffer.
//! Here the forward writes each output row once, and the backward reads `∂y` once for the
//! weight and bias gradients together. Each output is rounded as the matrix product rounds
//! it (the inputs' products summed in order, fused multiply-adds where the CPU has them,
//! then the bias), so the layer gives the bits of candle's matmul and broadcast add: near a
//! saturated `tanh` (where `1 − y²` cancels) one rounding of `y` shows in the gradient at
//! 1e-5. Rows are taken in fixed blocks whose partial sums are added in block order, so
//! results do not depend on the thread count.

use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, AddAssign, Mul};

/// Widest input these loops take; wider layers go to the matrix product.
pub(crate) const MAX_INPUTS: usize = 4;

/// The element types (f32 and f64).
pub(crate) trait Scalar:
    Copy + Default + Send + Sync + Add<Output = Self> + Mul<Output = Self> + AddAssign
{
    /// `self·a + b` with one rounding (an FMA instruction inside the kernels compiled for
    /// it; only those call it).
    fn fused_mul_add(self, a: Self, b: Self) -> Self;
}

impl Scalar for f32 {
    #[inline(always)]
    fn fused_mul_add(self, a: f32, b: f32) -> f32 {
        self.mul_add(a, b)
    }
}

impl Scalar for f64 {
    #[inline(always)]
    fn fused_mul_add(self, a: f64, b: f64) -> f64 {
        self.mul_add(a, b)
    }
}

/// Whether this CPU fuses multiply-adds (as the `gemm` crate's kernels then do).
fn fma_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::map::has_avx2_fma() {
        return true;
    }
    false
}

/// `row = Σ_j xs[j]·w_j + b` (each `w_j` the `o` weights of input `j`, laid end to end in
/// `w_by_input`), summed in input order with separate roundings.
fn row_plain<T: Scalar>(row: &mut [T], xs: &[T], w_by_input: &[T], b: &[T]) {
    let o = row.len();
    for (c, y) in row.iter_mut().enumerate() {
        let mut acc = T::default();
        for (j, &xj) in xs.iter().enumerate() {
            acc += xj * w_by_input[j * o + c];
        }
        *y = acc + b[c];
    }
}

/// [`row_plain`] with fused multiply-adds.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn row_fma<T: Scalar>(row: &mut [T], xs: &[T], w_by_input: &[T], b: &[T]) {
    let o = row.len();
    let mut inputs = xs.iter().zip(w_by_input.chunks(o));
    // The first product alone is `fma(x₀, w₀, 0)`, as the product's accumulator starts.
    match inputs.next() {
        Some((&x0, w0)) => {
            for (y, &wv) in row.iter_mut().zip(w0) {
                *y = x0 * wv;
            }
        }
        None => row.fill(T::default()),
    }
    for (&xj, wj) in inputs {
        for (y, &wv) in row.iter_mut().zip(wj) {
            *y = xj.fused_mul_add(wv, *y);
        }
    }
    for (y, &bv) in row.iter_mut().zip(b) {
        *y += bv;
    }
}

/// Adds `d_row` to `acc_b` and `d_row·xs[j]` to each input's `o` sums in `acc_w`, with
/// separate roundings.
fn accumulate_plain<T: Scalar>(acc_b: &mut [T], acc_w: &mut [T], d_row: &[T], xs: &[T]) {
    for (a, &v) in acc_b.iter_mut().zip(d_row) {
        *a += v;
    }
    for (&xj, acc_j) in xs.iter().zip(acc_w.chunks_mut(d_row.len())) {
        for (a, &v) in acc_j.iter_mut().zip(d_row) {
            *a += v * xj;
        }
    }
}

/// [`accumulate_plain`] with fused multiply-adds.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn accumulate_fma<T: Scalar>(acc_b: &mut [T], acc_w: &mut [T], d_row: &[T], xs: &[T]) {
    for (a, &v) in acc_b.iter_mut().zip(d_row) {
        *a += v;
    }
    for (&xj, acc_j) in xs.iter().zip(acc_w.chunks_mut(d_row.len())) {
        for (a, &v) in acc_j.iter_mut().zip(d_row) {
            *a = v.fused_mul_add(xj, *a);
        }
    }
}

/// `x·Wᵀ + b` as `[n, o]` rows, from `x [n, f]`, `w [o, f]` and `b [o]`, in blocks of
/// `block_rows` rows.
pub(crate) fn forward<T: Scalar>(
    (x, w, b): (&[T], &[T], &[T]),
    (n, f, o): (usize, usize, usize),
    block_rows: usize,
) -> Vec<T> {
    // The weight by input: each input's `o` weights contiguous, read along the row.
    let w_by_input: Vec<T> = (0..f * o).map(|i| w[(i % o) * f + i / o]).collect();
    let fma = fma_here();
    let mut out = Vec::with_capacity(n * o);
    if o > 0 {
        out.spare_capacity_mut()[..n * o]
            .par_chunks_mut(o * block_rows)
            .enumerate()
            .for_each(|(block, rows)| {
                let first = block * block_rows;
                for (i, row) in rows.chunks_mut(o).enumerate() {
                    // The bias first only to initialise the row; the kernels overwrite it.
                    let row = write_all(row, b);
                    let xs = &x[(first + i) * f..(first + i + 1) * f];
                    #[cfg(target_arch = "x86_64")]
                    if fma {
                        // SAFETY: `fma_here` found AVX2 and FMA.
                        unsafe { row_fma(row, xs, &w_by_input, b) };
                        continue;
                    }
                    let _ = fma;
                    row_plain(row, xs, &w_by_input, b);
                }
            });
    }
    // SAFETY: the chunks cover `0..n·o` and `write_all` wrote every element of each row
    // (nothing to write when `o` is 0, and then the length is 0).
    unsafe { out.set_len(n * o) };
    out
}

/// Writes `values` into `row` (the same length) and returns it initialised.
fn write_all<'a, T: Copy>(row: &'a mut [MaybeUninit<T>], values: &[T]) -> &'a mut [T] {
    debug_assert_eq!(row.len(), values.len());
    for (d, &v) in row.iter_mut().zip(values) {
        d.write(v);
    }
    // SAFETY: every element was written just above (`row` and `values` have one length);
    // `MaybeUninit<T>` has `T`'s layout.
    unsafe { &mut *(row as *mut [MaybeUninit<T>] as *mut [T]) }
}

/// `(∂W, ∂b) = (dᵀ·x, 1ᵀ·d)` for `d [n, o]` and `x [n, f]`, each only when asked: `∂W` as
/// `[o, f]`, `∂b` as `o` values. One pass over `d` in blocks of `block_rows` rows, the
/// blocks' partial sums added in block order.
pub(crate) fn weight_and_bias_grads<T: Scalar>(
    (d, x): (&[T], &[T]),
    (n, f, o): (usize, usize, usize),
    block_rows: usize,
    (need_w, need_b): (bool, bool),
) -> (Option<Vec<T>>, Option<Vec<T>>) {
    // Partial sums per block: the bias's `o`, then each input's `o`.
    let width = (f + 1) * o;
    let fma = fma_here();
    let mut total = vec![T::default(); width];
    if n > 0 && o > 0 {
        let partials: Vec<Vec<T>> = d
            .par_chunks(o * block_rows)
            .enumerate()
            .map(|(block, d_rows)| {
                let first = block * block_rows;
                let mut acc = vec![T::default(); width];
                let (acc_b, acc_w) = acc.split_at_mut(o);
                for (i, d_row) in d_rows.chunks(o).enumerate() {
                    let xs = &x[(first + i) * f..(first + i + 1) * f];
                    #[cfg(target_arch = "x86_64")]
                    if fma {
                        // SAFETY: `fma_here` found AVX2 and FMA.
                        unsafe { accumulate_fma(acc_b, acc_w, d_row, xs) };
                        continue;
                    }
                    let _ = fma;
                    accumulate_plain(acc_b, acc_w, d_row, xs);
                }
                acc
            })
            .collect();
        for p in &partials {
            for (t, &v) in total.iter_mut().zip(p) {
                *t += v;
            }
        }
    }
    let grad_w = need_w.then(|| (0..o * f).map(|i| total[o + (i % f) * o + i / f]).collect());
    total.truncate(o);
    (grad_w, need_b.then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(x, w, b, d)` for `n × f → o`, from a fixed formula.
    fn operands(n: usize, f: usize, o: usize) -> [Vec<f64>; 4] {
        let fill = |len: usize, s: f64| (0..len).map(|i| (i as f64 * s).sin()).collect();
        [
            fill(n * f, 0.37),
            fill(o * f, 0.91),
            fill(o, 0.53),
            fill(n * o, 0.29),
        ]
    }

    #[test]
    fn forward_and_gradients_match_plain_loops_across_blocks() {
        for (n, f, o) in [(7, 2, 5), (1, 4, 3), (9, 1, 1), (4, 0, 3)] {
            let [x, w, b, d] = operands(n, f, o);
            let y = forward((&x, &w, &b), (n, f, o), 3);
            let (gw, gb) = weight_and_bias_grads((&d, &x), (n, f, o), 3, (true, true));
            let (gw, gb) = (gw.unwrap_or_default(), gb.unwrap_or_default());
            for r in 0..n {
                for c in 0..o {
                    let want = b[c] + (0..f).map(|j| x[r * f + j] * w[c * f + j]).sum::<f64>();
                    assert!((y[r * o + c] - want).abs() < 1e-12, "y[{r}, {c}]");
                }
            }
            for c in 0..o {
                let want_b: f64 = (0..n).map(|r| d[r * o + c]).sum();
                assert!((gb[c] - want_b).abs() < 1e-12, "∂b[{c}]");
                for j in 0..f {
                    let want: f64 = (0..n).map(|r| d[r * o + c] * x[r * f + j]).sum();
                    assert!((gw[c * f + j] - want).abs() < 1e-12, "∂W[{c}, {j}]");
                }
            }
        }
    }

    #[test]
    fn gradients_are_computed_only_when_asked() {
        let [x, _, _, d] = operands(5, 2, 3);
        let (gw, gb) = weight_and_bias_grads((&d, &x), (5, 2, 3), 2, (false, true));
        assert!(gw.is_none());
        assert_eq!(gb.map(|g| g.len()), Some(3));
        let (gw, gb) = weight_and_bias_grads((&d, &x), (5, 2, 3), 2, (true, false));
        assert_eq!(gw.map(|g| g.len()), Some(6));
        assert!(gb.is_none());
    }
}
