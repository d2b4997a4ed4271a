//! Shared plumbing of the tiled point-wise CPU ops ([`crate::ops::fno_block_tail`],
//! [`crate::ops::channel_mlp`]): a `[B, C, N]` tensor is cut into fixed tiles of [`TILE`]
//! points of one sample, each processed in cache by one thread and written back into its
//! rows. Tile boundaries and the grouping of tiles for weight-gradient sums are fixed, so
//! results do not depend on the thread count.

use crate::cpu::gemm_view::{GemmScalar, MatRef};
use crate::ops::gelu::{
    gelu_f32_slice, gelu_f64_slice, gelu_grad_f32_slice, gelu_grad_f64_slice,
    gelu_of_sum_f32_slice, gelu_with_derivative_f32_slice, gelu_with_derivative_f64_slice,
    gelu_with_derivative_of_sum_f32_slice,
};
use std::mem::MaybeUninit;
use std::ops::{Add, Mul};

/// Points per tile (one sample's `C × TILE` block stays in cache).
pub const TILE: usize = 512;

/// Tiles whose weight gradients one task sums before the ordered reduction.
pub const TILES_PER_GROUP: usize = 2;

/// Element types of the tiled point-wise ops.
pub(crate) trait PointScalar: GemmScalar + Add<Output = Self> + Mul<Output = Self> {
    /// Exact GELU of `src` into `dst`.
    fn gelu(src: &[Self], dst: &mut [MaybeUninit<Self>]);
    /// `g·GELU'(x)` into `dst`.
    fn gelu_grad(x: &[Self], g: &[Self], dst: &mut [MaybeUninit<Self>]);
    /// `GELU(x)` into `value`, and `x` replaced by `GELU'(x)`.
    fn gelu_with_derivative(x: &mut [Self], value: &mut [MaybeUninit<Self>]);
    /// `u += s`, then `GELU(u)` into `value`.
    fn gelu_of_sum(u: &mut [Self], s: &[Self], value: &mut [MaybeUninit<Self>]);
    /// `u += s`, then `GELU(u)` into `value` and `u` replaced by `GELU'(u)`.
    fn gelu_with_derivative_of_sum(u: &mut [Self], s: &[Self], value: &mut [MaybeUninit<Self>]);
}

impl PointScalar for f32 {
    fn gelu(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        gelu_f32_slice(src, dst)
    }
    fn gelu_grad(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
        gelu_grad_f32_slice(x, g, dst)
    }
    fn gelu_with_derivative(x: &mut [f32], value: &mut [MaybeUninit<f32>]) {
        gelu_with_derivative_f32_slice(x, value)
    }
    fn gelu_of_sum(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
        gelu_of_sum_f32_slice(u, s, value)
    }
    fn gelu_with_derivative_of_sum(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
        gelu_with_derivative_of_sum_f32_slice(u, s, value)
    }
}

impl PointScalar for f64 {
    fn gelu(src: &[f64], dst: &mut [MaybeUninit<f64>]) {
        gelu_f64_slice(src, dst)
    }
    fn gelu_grad(x: &[f64], g: &[f64], dst: &mut [MaybeUninit<f64>]) {
        gelu_grad_f64_slice(x, g, dst)
    }
    fn gelu_with_derivative(x: &mut [f64], value: &mut [MaybeUninit<f64>]) {
        gelu_with_derivative_f64_slice(x, value)
    }
    fn gelu_of_sum(u: &mut [f64], s: &[f64], value: &mut [MaybeUninit<f64>]) {
        add_assign(u, s);
        gelu_f64_slice(u, value)
    }
    fn gelu_with_derivative_of_sum(u: &mut [f64], s: &[f64], value: &mut [MaybeUninit<f64>]) {
        add_assign(u, s);
        gelu_with_derivative_f64_slice(u, value)
    }
}

/// An initialised slice seen as writable uninitialised memory (the kernels only write).
pub(crate) fn as_uninit<T>(s: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout, and every writer of the returned slice
    // writes initialised values, so `s` stays initialised.
    unsafe { &mut *(s as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// One tile: sample `b`, points `p0..p0 + len`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tile {
    /// Sample.
    pub(crate) b: usize,
    /// First point.
    pub(crate) p0: usize,
    /// Number of points.
    pub(crate) len: usize,
}

/// The tiles of `batch` samples of `n` points, sample by sample.
pub(crate) fn tiles(batch: usize, n: usize) -> Vec<Tile> {
    (0..batch)
        .flat_map(|b| {
            (0..n.div_ceil(TILE)).map(move |t| Tile {
                b,
                p0: t * TILE,
                len: TILE.min(n - t * TILE),
            })
        })
        .collect()
}

/// A `[C, len]` strided view of a tile in a contiguous `[B, C, N]` buffer.
pub(crate) fn tile_view<T>(data: &[T], t: Tile, c: usize, n: usize) -> MatRef<'_, T> {
    MatRef::strided(&data[t.b * c * n + t.p0..], (c, t.len), (n, 1))
}

/// Rows of `[B, C, N]` output buffers written by disjoint tiles from several threads.
pub(crate) struct SharedRows<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: tiles write disjoint elements (each `(b, c, p)` belongs to exactly one tile), and
// every write is bounds-checked against `len`.
unsafe impl<T: Send> Sync for SharedRows<T> {}

impl<T: Copy> SharedRows<T> {
    /// Rows over the whole of `buf`, which must outlive every write.
    pub(crate) fn new(buf: &mut [MaybeUninit<T>]) -> Self {
        Self {
            ptr: buf.as_mut_ptr().cast(),
            len: buf.len(),
        }
    }

    /// Writes row `ch` of tile `t` (of a `[B, c, n]` buffer) with `fill`, which must write
    /// every element of the `t.len` elements it is given.
    pub(crate) fn fill_row(
        &self,
        (t, ch): (Tile, usize),
        (c, n): (usize, usize),
        fill: impl FnOnce(&mut [MaybeUninit<T>]),
    ) {
        let start = t.b * c * n + ch * n + t.p0;
        assert!(
            ch < c && start + t.len <= self.len,
            "tile row outside its buffer"
        );
        // SAFETY: in bounds (asserted); these `t.len` elements belong to this tile alone,
        // so no other reference to them exists while `fill` runs, and the buffer outlives
        // the parallel loop that calls this.
        let row = unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start).cast(), t.len) };
        fill(row);
    }

    /// Copies a `[C, len]` tile into its rows.
    pub(crate) fn write_tile(&self, t: Tile, c: usize, n: usize, src: &[T]) {
        for (ch, row) in src.chunks_exact(t.len).take(c).enumerate() {
            let start = t.b * c * n + ch * n + t.p0;
            assert!(start + t.len <= self.len, "tile row outside its buffer");
            // SAFETY: in bounds (asserted); no other tile writes these elements, and the
            // buffer outlives the parallel loop that calls this.
            unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), self.ptr.add(start), t.len) };
        }
    }
}

/// Fills row `r` of a `[rows, len]` buffer with `values[r]`.
pub(crate) fn fill_rows<T: Copy>(dst: &mut [T], values: &[T], len: usize) {
    for (row, &v) in dst.chunks_exact_mut(len).zip(values) {
        row.fill(v);
    }
}

/// `u[i] += s[i]`.
pub(crate) fn add_assign<T: PointScalar>(u: &mut [T], s: &[T]) {
    for (u, &s) in u.iter_mut().zip(s) {
        *u += s;
    }
}

/// `dst[i] = a[i]·b[i]`.
pub(crate) fn mul_into<T: PointScalar>(a: &[T], b: &[T], dst: &mut [T]) {
    for ((d, &x), &y) in dst.iter_mut().zip(a).zip(b) {
        *d = x * y;
    }
}

/// `*d += v` when `accumulate`, `*d = v` otherwise.
pub(crate) fn add_or_set<T: PointScalar>(d: &mut T, v: T, accumulate: bool) {
    if accumulate {
        *d += v;
    } else {
        *d = v;
    }
}

/// The element-wise sum of per-group partial gradients, added in group order (so the result
/// does not depend on which thread computed which group).
pub(crate) fn sum_in_order<T: PointScalar>(partials: &[Vec<T>], len: usize) -> Vec<T> {
    let mut total = vec![T::default(); len];
    for part in partials {
        for (d, &v) in total.iter_mut().zip(part) {
            *d += v;
        }
    }
    total
}

/// The values of `y` followed by the gradients of `Σ y²` with respect to each of `vars`
/// (for the thread-count checks of the tiled ops).
#[cfg(test)]
pub(crate) fn output_and_gradients(
    y: &candle_core::Tensor,
    vars: &[&candle_core::Var],
) -> candle_core::Result<Vec<Vec<f32>>> {
    let grads = y.sqr()?.sum_all()?.backward()?;
    let mut out = vec![y.flatten_all()?.to_vec1()?];
    for v in vars {
        match grads.get(v) {
            Some(t) => out.push(t.flatten_all()?.to_vec1()?),
            None => candle_core::bail!("a variable has no gradient"),
        }
    }
    Ok(out)
}
