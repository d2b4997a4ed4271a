//! 2-D convolution on the CPU as one fused op: patches gathered (im2col, `im2col.rs`)
//! into a small per-thread buffer and multiplied by the weight with the `gemm` crate, a group
//! of samples at a time; the backward computes the weight gradient and the input gradient
//! (transposed product, then the exact adjoint of the gather) the same way. 3×3, stride-1
//! convolutions with 32 or more channels on planes of 32 × 32 outputs or more run their
//! forward and input gradient through Winograd's F(2×2, 3×3) instead (`winograd.rs`:
//! 2.25× fewer multiplications).
//!
//! candle 0.11's CPU `conv2d` runs at a few GFLOP/s and its backward goes through a
//! direct-loop `conv_transpose2d`: measured on the 2-core dev machine, a 3×3 convolution
//! of `[8, 16, 100, 100]` took 49 ms forward and 200 ms more backward. An earlier version
//! here gathered the patches of the whole batch into a `[B, C·kh·kw, Ho·Wo]` tensor and used
//! candle's batched matmul; the fused op allocates no patch tensor (the patch matrix of a
//! group of samples stays in cache), never stores patches for the backward (it gathers them
//! again, which costs far less than the products), multiplies small output planes of
//! several samples in one product, and skips the input gradient when nothing upstream
//! needs it. On the DeepONet-CNN branch (batch 32) that halved the convolutions' training
//! time (docs/layers-local.md).
//!
//! Samples are grouped by a size fixed by the geometry alone, groups run in parallel (each
//! product on one thread) or, when there are too few groups, one after the other with
//! multi-threaded products, and the weight gradient sums one partial per group in group
//! order: results do not depend on the thread count.
//!
//! Semantics are PyTorch's `F.conv2d` (cross-correlation, zero padding, weight
//! `[O, C, kh, kw]`), groups = dilation = 1. Where [`crate::ops::fused_cpu`] says no (other
//! devices and dtypes, or the composite path forced), [`conv2d`] runs candle's `conv2d` on an
//! input padded and cropped so that its backward is right for every stride and shape
//! (`candle_fixes::conv2d`: candle's own strided backward fails when
//! `(H + 2p − k) mod s ≠ (W + 2p − k) mod s`).

use crate::cpu::gemm_view::{self, gemm, GemmScalar, MatMut, MatRef};
use crate::cpu::im2col::{fold_rows, fold_samples, unfold_rows, unfold_samples, Geometry};
use crate::cpu::map::{dispatch2, write_copy};
use crate::cpu::point_tiles::{SharedRows, Tile};
use crate::cpu::scratch::PoolBuf;
use crate::cpu::transpose::transpose_tiles;
use crate::cpu::winograd::{self, WinogradScalar};
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Cross-correlation of `x` `[B, C, H, W]` with `weight` `[O, C, kh, kw]`, zero padding
/// `padding` on every side and step `stride` on both axes: `[B, O, Ho, Wo]` with
/// `Ho = (H + 2·padding − kh)/stride + 1` (likewise `Wo`). Differentiable in both.
///
/// The fused CPU op where [`crate::ops::fused_cpu`] says so; elsewhere candle's `conv2d`
/// behind the crate's workaround for its strided backward, with gradients right for every
/// stride, padding and (non-square) shape.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (geometry, out_channels) = checked_geometry(x, weight, padding, stride)?;
    if !crate::ops::fused_cpu(&[x, weight]) {
        // candle's own `conv2d` backward fails for strided convolutions of some
        // non-square inputs; this form's gradients are right for every geometry.
        return Ok(crate::ops::candle_fixes::conv2d(
            x, weight, padding, stride, 1,
        )?);
    }
    let op = Conv2dOp {
        geometry,
        out_channels,
    };
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// The geometry and output channel count of `x ⋆ weight`, after checking that they fit
/// each other (channels, kernel within the padded input, a stride of at least 1, one
/// dtype).
pub(crate) fn checked_geometry(
    x: &Tensor,
    weight: &Tensor,
    padding: usize,
    stride: usize,
) -> Result<(Geometry, usize)> {
    let (_, c, h, w) = x.dims4()?;
    let (o, wc, kh, kw) = weight.dims4()?;
    if wc != c {
        candle_core::bail!(
            "conv2d: weight {:?} expects {wc} input channels, input {:?} has {c}",
            weight.dims(),
            x.dims()
        );
    }
    if stride == 0 {
        candle_core::bail!("conv2d: stride must be at least 1");
    }
    if h + 2 * padding < kh || w + 2 * padding < kw {
        candle_core::bail!(
            "conv2d: kernel {kh}×{kw} larger than the padded input {}×{}",
            h + 2 * padding,
            w + 2 * padding
        );
    }
    if x.dtype() != weight.dtype() {
        candle_core::bail!(
            "conv2d: input is {:?} but the weight is {:?}",
            x.dtype(),
            weight.dtype()
        );
    }
    Ok((Geometry::new(c, h, w, kh, kw, padding, stride), o))
}

/// Aim for about this many patch-matrix columns per group of samples: output planes
/// smaller than this (strided encoders, coarse U-Net levels) are multiplied several
/// samples at a time, larger ones one sample at a time.
const TARGET_COLUMNS: usize = 1024;

/// The most bytes of patch matrix a forward group gathers (at least one sample's): a
/// quarter of this machine's 2 MB per-core L2, so that the patches stay in the core's
/// cache between the gather and the product, next to the packed operands. With the
/// column target alone, DeepONet-CNN's deeper layers gathered 1.7–3.1 MB per group
/// (`C·kh·kw` rows of 720 and 900), which went out to L3 and back; capped, its batch-32
/// inference ran 1.17–1.18× faster than before, against 1.08× with the direct stride-2
/// gather alone (paired rounds, `docs/performance.md`).
const FORWARD_PATCH_BYTES: usize = 512 * 1024;

/// The fewest columns from which a product with `out_channels` rows is computed the same
/// way whatever its column count: by the `gemm` crate's general path, whose cache
/// blocking of the inner dimension depends on that dimension alone. Narrower products
/// take other paths that cut a long inner dimension elsewhere and so round differently:
/// the crate's small-matrix paths (both sides at most 64, or at most 256 entries) and
/// [`gemm`]'s own matrix-vector kernel (one column) and row bands (at most 64 columns).
/// From here on a forward column is the same sum whatever the group of samples it is
/// computed in (`forward_groups_give_the_same_bits`).
fn same_blocking_from(out_channels: usize) -> usize {
    (256 / out_channels.max(1) + 1).max(65)
}

/// The forward convolution (input, weight) → output.
#[derive(Debug, Clone, Copy)]
struct Conv2dOp {
    geometry: Geometry,
    out_channels: usize,
}

/// Input gradient: (weight, output gradient) → `[B, C, H, W]`.
#[derive(Debug, Clone, Copy)]
struct InputGrad {
    geometry: Geometry,
    out_channels: usize,
}

/// Weight gradient: (input, output gradient) → `[O, C, kh, kw]`.
#[derive(Debug, Clone, Copy)]
struct WeightGrad {
    geometry: Geometry,
    out_channels: usize,
}

/// Per-thread buffers reused across the groups a thread handles.
#[derive(Default)]
struct Scratch<T: GemmScalar> {
    /// The patch matrix `[C·kh·kw, n·Ho·Wo]` of a group.
    cols: PoolBuf<T>,
    /// A group's outputs (or output gradients) channel-major, `[O, n·Ho·Wo]`.
    channel_major: PoolBuf<T>,
}

/// Output rows whose patch matrix `[C·kh·kw, rows·Wo]` a one-sample product gathers at a
/// time: the block stays in the core's cache between the gather and the product instead
/// of a whole sample's patch matrix (11.5 MB for 32 channels, 3×3, 100 × 100) going
/// through memory twice.
fn rows_per_block<T>(g: &Geometry) -> usize {
    let row_bytes = std::mem::size_of::<T>() * g.patch_rows() * g.wo;
    (BLOCK_BYTES / row_bytes.max(1)).clamp(1, g.ho.max(1))
}

/// Whether a group runs block by block ([`rows_per_block`]): one sample of a stride-1
/// convolution. (Not a function of the thread count: the weight gradient's sums are
/// ordered by block.)
fn blocked(g: &Geometry, n: usize) -> bool {
    n == 1 && g.stride == 1
}

/// The geometry of the input gradient as a convolution of the output gradient, when that
/// runs through [`winograd`]: a 3×3, stride-1 kernel with padding `p ≤ 2` has the adjoint
/// `∂x = ∂y ⋆ flip(Wᵀ)` with padding `2 − p`, whose output is `H × W` again.
fn winograd_adjoint(g: &Geometry, out_channels: usize) -> Option<Geometry> {
    let adjoint = Geometry::new(
        out_channels,
        g.ho,
        g.wo,
        3,
        3,
        2usize.checked_sub(g.padding)?,
        1,
    );
    let fits = winograd::applies(g, out_channels)
        && winograd::applies(&adjoint, g.c)
        && (adjoint.ho, adjoint.wo) == (g.h, g.w);
    fits.then_some(adjoint)
}

/// `w [O, C, 3, 3]` → `[C, O, 3, 3]` with each filter turned by 180°.
fn flip_transposed<T: Copy + Default>(w: &[T], (o, c): (usize, usize)) -> Vec<T> {
    let mut flipped = vec![T::default(); w.len()];
    for (oc, filter) in w.chunks_exact(9).enumerate() {
        let (oi, ci) = (oc / c, oc % c);
        let dst = &mut flipped[(ci * o + oi) * 9..][..9];
        for (k, &v) in filter.iter().enumerate() {
            dst[8 - k] = v;
        }
    }
    flipped
}

/// The output-row blocks `(oh0, oh1)` of [`rows_per_block`] rows.
fn row_blocks<T>(g: &Geometry) -> impl Iterator<Item = (usize, usize)> {
    let (rows, ho) = (rows_per_block::<T>(g), g.ho);
    (0..ho)
        .step_by(rows)
        .map(move |oh0| (oh0, (oh0 + rows).min(ho)))
}

/// Target size of a block's patch matrix (a share of a 1 MB L2 cache).
const BLOCK_BYTES: usize = 512 * 1024;

/// The sizes shared by the three kernels.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sizes {
    batch: usize,
    /// Samples per group.
    group: usize,
    out_channels: usize,
    positions: usize,
    patch_rows: usize,
}

impl Sizes {
    pub(crate) fn new(g: &Geometry, batch: usize, out_channels: usize) -> Self {
        let positions = g.positions();
        Self {
            batch,
            group: TARGET_COLUMNS
                .div_ceil(positions.max(1))
                .clamp(1, batch.max(1)),
            out_channels,
            positions,
            patch_rows: g.patch_rows(),
        }
    }

    /// Samples per group of the forward: [`Self::group`] lowered so that a group's patch
    /// matrix stays within [`FORWARD_PATCH_BYTES`], where that changes no bit (see
    /// [`same_blocking_from`]); else [`Self::group`]. The weight gradient keeps
    /// [`Self::group`] always: it sums one partial per group, so its groups fix its
    /// rounding.
    fn forward_group<T>(&self) -> usize {
        if self.batch == 0 {
            return self.group;
        }
        let column = self
            .patch_rows
            .saturating_mul(std::mem::size_of::<T>())
            .max(1);
        let by_bytes = (FORWARD_PATCH_BYTES / column).div_ceil(self.positions.max(1));
        let min_columns = same_blocking_from(self.out_channels);
        // Every group of a grouping, the last (partial) one included, has enough columns.
        let blocked_alike = |group: usize| {
            let last = self.batch - (self.batch.div_ceil(group) - 1) * group;
            last.min(group).saturating_mul(self.positions) >= min_columns
        };
        if !blocked_alike(self.group) {
            return self.group;
        }
        (by_bytes.max(1)..self.group)
            .find(|&group| blocked_alike(group))
            .unwrap_or(self.group)
    }

    /// Output (or output-gradient) elements of one sample.
    fn out_sample(&self) -> usize {
        self.out_channels * self.positions
    }
}

/// Runs `work(group index, its slice of dst, scratch, threads for its products)` over
/// `dst` cut into `chunk_len` pieces: in parallel with one-thread products when there are
/// enough pieces to keep every thread busy, else in turn with multi-threaded products.
fn run_groups<D, T, W>(dst: &mut [D], chunk_len: usize, work: W) -> Result<()>
where
    D: Send,
    T: GemmScalar,
    W: Fn(usize, &mut [D], &mut Scratch<T>, usize) -> Result<()> + Sync,
{
    let chunk_len = chunk_len.max(1);
    let threads = rayon::current_num_threads();
    if threads == 1 || dst.len().div_ceil(chunk_len) >= 2 * threads {
        dst.par_chunks_mut(chunk_len)
            .enumerate()
            .try_for_each_init(Scratch::default, |scratch, (i, d)| work(i, d, scratch, 1))
    } else {
        let mut scratch = Scratch::default();
        dst.chunks_mut(chunk_len)
            .enumerate()
            .try_for_each(|(i, d)| work(i, d, &mut scratch, threads))
    }
}

/// `[n, O, L]` (sample-major) → `[O, n·L]` (channel-major).
fn to_channel_major<T: Copy>(src: &[T], sz: &Sizes, dst: &mut [T]) {
    let (o, l) = (sz.out_channels, sz.positions);
    let n = src.len() / sz.out_sample().max(1);
    for (s, sample) in src.chunks_exact(sz.out_sample().max(1)).enumerate() {
        for (c, plane) in sample.chunks_exact(l.max(1)).enumerate() {
            dst[c * n * l + s * l..][..l].copy_from_slice(plane);
        }
    }
    debug_assert_eq!(dst.len(), o * n * l);
}

/// `[O, n·L]` (channel-major) → `[n, O, L]` (sample-major), every element of `dst` written.
fn to_sample_major<T: Copy>(src: &[T], sz: &Sizes, dst: &mut [MaybeUninit<T>]) {
    let l = sz.positions;
    let n = dst.len() / sz.out_sample().max(1);
    for (s, sample) in dst.chunks_exact_mut(sz.out_sample().max(1)).enumerate() {
        for (c, plane) in sample.chunks_exact_mut(l.max(1)).enumerate() {
            write_copy(plane, &src[c * n * l + s * l..][..l]);
        }
    }
}

/// The output gradient of the `n` samples of group `index` as a channel-major `[O, n·L]`
/// matrix: the input slice itself for one sample, else rearranged into `buffer`.
fn group_grad<'a, T: GemmScalar>(
    grad: &'a [T],
    sz: &Sizes,
    index: usize,
    n: usize,
    buffer: &'a mut PoolBuf<T>,
) -> &'a [T] {
    let slice = &grad[index * sz.group * sz.out_sample()..][..n * sz.out_sample()];
    if n == 1 {
        return slice;
    }
    buffer.set_len(slice.len());
    to_channel_major(slice, sz, buffer);
    buffer
}

/// One sample's output `out_s` `[O, Ho·Wo]` block by block ([`rows_per_block`]): each
/// block's patch matrix gathered and multiplied while in cache. With several threads
/// (batch 1) the blocks run in parallel, each into its own staging buffer that it then
/// copies into its columns of the output rows (the copy was one serial pass over the whole
/// output on the calling thread); the products are the same one-thread products either
/// way.
fn forward_blocked<T: GemmScalar>(
    g: &Geometry,
    sz: &Sizes,
    xs: &[T],
    weight: MatRef<T>,
    out_s: &mut [MaybeUninit<T>],
    threads: usize,
) -> Result<()> {
    let product = |cols: &mut PoolBuf<T>, (oh0, oh1): (usize, usize), dst: MatMut<T>| {
        let width = (oh1 - oh0) * g.wo;
        cols.set_len(sz.patch_rows * width);
        unfold_rows(g, xs, (oh0, oh1), cols);
        gemm(
            dst,
            weight,
            MatRef::row_major(cols, sz.patch_rows, width),
            false,
            1,
        )
    };
    let o = sz.out_channels;
    if threads == 1 {
        let mut cols = PoolBuf::new(0);
        for (oh0, oh1) in row_blocks::<T>(g) {
            let width = (oh1 - oh0) * g.wo;
            let dst =
                MatMut::uninit_strided_rows(&mut out_s[oh0 * g.wo..], (o, width), sz.positions);
            product(&mut cols, (oh0, oh1), dst)?;
        }
        return Ok(());
    }
    // At least two blocks per thread, so that small planes (CNO's coarse levels: three
    // blocks on 16 × 16 with 128 channels) do not leave a core idle. Each output column is
    // the same sum whatever the block's width, so the values do not change.
    let per_block = aligned_rows(
        g,
        rows_per_block::<T>(g)
            .min(g.ho.div_ceil(2 * threads))
            .max(1),
    );
    let blocks: Vec<(usize, usize)> = (0..g.ho)
        .step_by(per_block)
        .map(|oh0| (oh0, (oh0 + per_block).min(g.ho)))
        .collect();
    let rows = SharedRows::new(out_s);
    blocks.par_iter().try_for_each_init(
        || (PoolBuf::new(0), PoolBuf::new(0)),
        |(cols, staged), &(oh0, oh1)| {
            let width = (oh1 - oh0) * g.wo;
            staged.set_len(o * width);
            product(cols, (oh0, oh1), MatMut::row_major(staged, o, width))?;
            // Each block writes its own columns of every output row, while in cache.
            let tile = Tile {
                b: 0,
                p0: oh0 * g.wo,
                len: width,
            };
            rows.write_tile(tile, o, sz.positions, staged);
            Ok(())
        },
    )
}

/// `rows` rounded down to a multiple of the rows that make a block's width `rows·Wo` a
/// multiple of 16 columns, when that leaves at least one such multiple. The `gemm` crate
/// then reads a narrow product's patches in place instead of copying them into its packed
/// layout first (with at most 48 output channels; the crate packs whenever the width is not
/// a multiple of its 16-lane vectors). The values do not change: each output column is the
/// same sum whatever its block's width.
fn aligned_rows(g: &Geometry, rows: usize) -> usize {
    // 16 / gcd(Wo, 16): each factor 2 of Wo (up to four) halves the rows needed.
    let align = 16 >> g.wo.max(1).trailing_zeros().min(4);
    if rows >= align {
        rows - rows % align
    } else {
        rows
    }
}

/// The output gradient of output rows `oh0..oh1` of one sample `gs` `[O, Ho·Wo]`: a
/// `[O, (oh1 − oh0)·Wo]` view.
fn grad_block<'a, T>(
    g: &Geometry,
    sz: &Sizes,
    gs: &'a [T],
    (oh0, oh1): (usize, usize),
) -> MatRef<'a, T> {
    let width = (oh1 - oh0) * g.wo;
    MatRef::strided(
        &gs[oh0 * g.wo..],
        (sz.out_channels, width),
        (sz.positions, 1),
    )
}

/// One sample's weight gradient `[O, C·kh·kw]` block by block: one product per block into
/// its own partial (blocks in parallel with several threads), partials summed in block
/// order, so the result does not depend on the thread count.
fn weight_grad_blocked<T: GemmScalar>(
    g: &Geometry,
    sz: &Sizes,
    xs: &[T],
    gs: &[T],
    partial: &mut [T],
    threads: usize,
) -> Result<()> {
    let blocks: Vec<(usize, usize)> = row_blocks::<T>(g).collect();
    let per = sz.out_channels * sz.patch_rows;
    let mut parts = PoolBuf::new(blocks.len() * per);
    let product = |cols: &mut PoolBuf<T>, (dst, &(oh0, oh1)): (&mut [T], &(usize, usize))| {
        let width = (oh1 - oh0) * g.wo;
        cols.set_len(sz.patch_rows * width);
        unfold_rows(g, xs, (oh0, oh1), cols);
        let grad = grad_block(g, sz, gs, (oh0, oh1));
        gemm(
            MatMut::row_major(dst, sz.out_channels, sz.patch_rows),
            grad,
            MatRef::row_major(cols, sz.patch_rows, width).t(),
            false,
            1,
        )
    };
    if threads == 1 {
        let mut cols = PoolBuf::new(0);
        for item in parts.chunks_mut(per).zip(&blocks) {
            product(&mut cols, item)?;
        }
    } else {
        parts
            .par_chunks_mut(per)
            .zip(blocks.par_iter())
            .try_for_each_init(|| PoolBuf::new(0), product)?;
    }
    let mut chunks = parts.chunks_exact(per);
    if let Some(first) = chunks.next() {
        partial.copy_from_slice(first);
    }
    for part in chunks {
        for (d, &v) in partial.iter_mut().zip(part) {
            *d += v;
        }
    }
    Ok(())
}

/// Input channels whose gradient planes one task of [`input_grad_blocked`] owns.
const FOLD_CHANNELS: usize = 4;

/// One sample's input gradient `gx_s` `[C, H, W]` block by block: per fixed chunk of
/// [`FOLD_CHANNELS`] channels, each block's rows of `Wᵀ·G` multiplied and folded back in
/// block order (chunks in parallel with several threads: they own disjoint planes).
fn input_grad_blocked<T: GemmScalar>(
    g: &Geometry,
    sz: &Sizes,
    w: &[T],
    gs: &[T],
    gx_s: &mut [T],
    threads: usize,
) -> Result<()> {
    let taps = g.kh * g.kw;
    let fold = |cols: &mut PoolBuf<T>, (chunk, planes): (usize, &mut [T])| {
        let c0 = chunk * FOLD_CHANNELS;
        let sub = Geometry {
            c: planes.len() / g.plane().max(1),
            ..*g
        };
        // Rows `c0·taps ..` of `Wᵀ`: columns of `W` `[O, C·taps]`.
        let weight_t = MatRef::strided(
            &w[c0 * taps..],
            (sz.out_channels, sub.c * taps),
            (sz.patch_rows, 1),
        )
        .t();
        planes.fill(T::default());
        for (oh0, oh1) in row_blocks::<T>(g) {
            let width = (oh1 - oh0) * g.wo;
            cols.set_len(sub.c * taps * width);
            let grad = grad_block(g, sz, gs, (oh0, oh1));
            gemm(
                MatMut::row_major(cols, sub.c * taps, width),
                weight_t,
                grad,
                false,
                1,
            )?;
            fold_rows(&sub, cols, (oh0, oh1), planes);
        }
        Ok(())
    };
    let chunk_len = FOLD_CHANNELS * g.plane();
    if threads == 1 {
        let mut cols = PoolBuf::new(0);
        gx_s.chunks_mut(chunk_len)
            .enumerate()
            .try_for_each(|item| fold(&mut cols, item))
    } else {
        gx_s.par_chunks_mut(chunk_len)
            .enumerate()
            .try_for_each_init(|| PoolBuf::new(0), fold)
    }
}

pub(crate) fn forward<T: WinogradScalar>(
    g: &Geometry,
    sz: &Sizes,
    x: &[T],
    w: &[T],
) -> Result<Vec<T>> {
    forward_then(g, sz, x, w, |_, _| {})
}

/// [`forward`], then `finish(outputs, threads)` on each group's finished outputs (whole
/// `[n, O, Ho·Wo]` samples, while they are in cache) or, on the Winograd path, on the
/// whole output; `threads` says how many threads `finish` may use there.
pub(crate) fn forward_then<T: WinogradScalar>(
    g: &Geometry,
    sz: &Sizes,
    x: &[T],
    w: &[T],
    finish: impl Fn(&mut [T], usize) + Sync,
) -> Result<Vec<T>> {
    if winograd::applies(g, sz.out_channels) {
        let mut out = winograd::forward_to_vec(g, x, w, sz.out_channels)?;
        finish(&mut out, rayon::current_num_threads());
        return Ok(out);
    }
    forward_grouped(g, sz, sz.forward_group::<T>(), (x, w), finish)
}

/// [`forward_then`] with `group` samples per group.
fn forward_grouped<T: WinogradScalar>(
    g: &Geometry,
    sz: &Sizes,
    group: usize,
    (x, w): (&[T], &[T]),
    finish: impl Fn(&mut [T], usize) + Sync,
) -> Result<Vec<T>> {
    let total = sz.batch * sz.out_sample();
    let weight = MatRef::row_major(w, sz.out_channels, sz.patch_rows);
    // Not zero-filled: every group writes all of its outputs (a fill was a pass over the
    // whole output, 5–10 % of a DeepONet-CNN forward with the same fill in the bias op).
    let mut out = Vec::with_capacity(total);
    run_groups(
        &mut out.spare_capacity_mut()[..total],
        group * sz.out_sample(),
        |i, out, scratch, threads| {
            let n = out.len() / sz.out_sample();
            let xs = &x[i * group * g.sample()..][..n * g.sample()];
            let columns = n * sz.positions;
            if blocked(g, n) {
                forward_blocked(g, sz, xs, weight, out, threads)?;
            } else {
                scratch.cols.set_len(sz.patch_rows * columns);
                unfold_samples(g, xs, &mut scratch.cols, threads > 1);
                let cols = MatRef::row_major(&scratch.cols, sz.patch_rows, columns);
                if n == 1 {
                    gemm(
                        MatMut::uninit(out, sz.out_channels, columns),
                        weight,
                        cols,
                        false,
                        threads,
                    )?;
                } else {
                    let buffer = &mut scratch.channel_major;
                    buffer.set_len(out.len());
                    gemm(
                        MatMut::row_major(buffer, sz.out_channels, columns),
                        weight,
                        cols,
                        false,
                        threads,
                    )?;
                    to_sample_major(buffer, sz, out);
                }
            }
            // SAFETY: every element of the group's slice was written just above: by
            // `forward_blocked` (whose row blocks cover every output row of every channel),
            // by `gemm` into an uninitialised matrix (which writes all of it) or by
            // `to_sample_major`; `MaybeUninit<T>` has `T`'s layout.
            let done = unsafe { &mut *(out as *mut [MaybeUninit<T>] as *mut [T]) };
            finish(done, threads);
            Ok(())
        },
    )?;
    // SAFETY: the groups cover `0..total`, and each wrote every element of its slice (see
    // the group's own SAFETY note).
    unsafe { out.set_len(total) };
    Ok(out)
}

/// `len` zeros written on rayon's threads. The input gradient is a whole input's size (12
/// MB on DeepONet-CNN's second layer), and `vec![0; len]` filled it on the calling thread
/// while the other cores waited; every path of [`input_grad`] then overwrites it.
fn zeros_in_parallel<T: Copy + Default + Send + Sync>(len: usize) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    out.spare_capacity_mut()[..len]
        .par_chunks_mut(crate::cpu::map::CHUNK)
        .for_each(|chunk| {
            for d in chunk {
                d.write(T::default());
            }
        });
    // SAFETY: the chunks cover `0..len` and every element was written.
    unsafe { out.set_len(len) };
    out
}

fn input_grad<T: WinogradScalar>(g: &Geometry, sz: &Sizes, w: &[T], grad: &[T]) -> Result<Vec<T>> {
    let total = sz.batch * g.sample();
    if let Some(adjoint) = winograd_adjoint(g, sz.out_channels) {
        // The input gradient of a stride-1 convolution is the convolution of the output
        // gradient with the flipped, transposed filter and the complementary padding.
        let flipped = flip_transposed(w, (sz.out_channels, g.c));
        return winograd::forward_to_vec(&adjoint, grad, &flipped, g.c);
    }
    let mut gx = zeros_in_parallel(total);
    let weight_t = MatRef::row_major(w, sz.out_channels, sz.patch_rows).t();
    run_groups(&mut gx, sz.group * g.sample(), |i, gx, scratch, threads| {
        let n = gx.len() / g.sample();
        let columns = n * sz.positions;
        if blocked(g, n) {
            let gs = &grad[i * sz.group * sz.out_sample()..][..sz.out_sample()];
            return input_grad_blocked(g, sz, w, gs, gx, threads);
        }
        let gmat = group_grad(grad, sz, i, n, &mut scratch.channel_major);
        scratch.cols.set_len(sz.patch_rows * columns);
        gemm(
            MatMut::row_major(&mut scratch.cols, sz.patch_rows, columns),
            weight_t,
            MatRef::row_major(gmat, sz.out_channels, columns),
            false,
            threads,
        )?;
        fold_samples(g, &scratch.cols, gx, threads > 1);
        Ok(())
    })?;
    Ok(gx)
}

/// Whether [`weight_grad`] keeps its partial sums transposed, `[C·kh·kw, O]`: the layout in
/// which the `gemm` crate reads a group's patch matrix where it lies instead of packing a
/// copy of it first (`examples/gemm_layout_timing.rs`: DeepONet-CNN's four weight
/// gradients at batch 32 in 7.8 ms instead of 9.2 ms on the Intel Xeon, the same bits).
/// Not where every group is one sample of a stride-1 convolution (all of them take
/// [`weight_grad_blocked`], whose partials are `[O, C·kh·kw]`), nor where the product is a
/// matrix-vector one or small enough (at most 256 values) for the crate's dot-product
/// kernels, whose sums could differ with the layout.
fn transposed_partials(g: &Geometry, sz: &Sizes) -> bool {
    let all_blocked = g.stride == 1 && sz.group == 1;
    let (o, k) = (sz.out_channels, sz.patch_rows);
    !all_blocked && o >= 2 && k >= 2 && o.saturating_mul(k) > 256
}

/// One group's partial weight gradient written transposed (`[C·kh·kw, O]`) into `partial`,
/// from the group's patch matrix `cols` and output gradient `gmat`, with the same sums as
/// the `[O, C·kh·kw]` product [`weight_grad`] takes otherwise: that product goes to the
/// `gemm` crate in either layout (which sums each value in the same order) unless it goes
/// to the row-dot kernel, which it then still does, transposed afterwards.
fn transposed_partial<T: GemmScalar>(
    sz: &Sizes,
    (gmat, cols, columns): (&[T], &[T], usize),
    partial: &mut [T],
    threads: usize,
) -> Result<()> {
    let (o, k) = (sz.out_channels, sz.patch_rows);
    let grad = MatRef::row_major(gmat, o, columns);
    let patches = MatRef::row_major(cols, k, columns);
    if gemm_view::takes_row_dot(&grad, &patches.t()) {
        let mut upright = PoolBuf::new(o * k);
        gemm(
            MatMut::row_major(&mut upright, o, k),
            grad,
            patches.t(),
            false,
            threads,
        )?;
        transpose_tiles(&upright, o, k, partial);
        return Ok(());
    }
    gemm_view::gemm_by_crate(
        MatMut::row_major(partial, k, o),
        patches,
        grad.t(),
        false,
        threads,
    )
}

fn weight_grad<T: GemmScalar>(g: &Geometry, sz: &Sizes, x: &[T], grad: &[T]) -> Result<Vec<T>> {
    weight_grad_laid_out(g, sz, (x, grad), transposed_partials(g, sz))
}

/// [`weight_grad`] with its partial sums `[C·kh·kw, O]` (`transposed`) or `[O, C·kh·kw]`.
fn weight_grad_laid_out<T: GemmScalar>(
    g: &Geometry,
    sz: &Sizes,
    (x, grad): (&[T], &[T]),
    transposed: bool,
) -> Result<Vec<T>> {
    let per_group = sz.out_channels * sz.patch_rows;
    let groups = sz.batch.div_ceil(sz.group);
    let mut partials = vec![T::default(); groups * per_group];
    run_groups(&mut partials, per_group, |i, partial, scratch, threads| {
        let n = sz.group.min(sz.batch - i * sz.group);
        let columns = n * sz.positions;
        let xs = &x[i * sz.group * g.sample()..][..n * g.sample()];
        if blocked(g, n) {
            let gs = &grad[i * sz.group * sz.out_sample()..][..sz.out_sample()];
            if !transposed {
                return weight_grad_blocked(g, sz, xs, gs, partial, threads);
            }
            // A last group of one sample after larger ones (stride 1).
            let mut upright = PoolBuf::new(per_group);
            weight_grad_blocked(g, sz, xs, gs, &mut upright, threads)?;
            transpose_tiles(&upright, sz.out_channels, sz.patch_rows, partial);
            return Ok(());
        }
        scratch.cols.set_len(sz.patch_rows * columns);
        unfold_samples(g, xs, &mut scratch.cols, threads > 1);
        let gmat = group_grad(grad, sz, i, n, &mut scratch.channel_major);
        if transposed {
            return transposed_partial(sz, (gmat, &scratch.cols, columns), partial, threads);
        }
        gemm(
            MatMut::row_major(partial, sz.out_channels, sz.patch_rows),
            MatRef::row_major(gmat, sz.out_channels, columns),
            MatRef::row_major(&scratch.cols, sz.patch_rows, columns).t(),
            false,
            threads,
        )
    })?;
    let total = sum_partials(partials, groups, per_group);
    if !transposed {
        return Ok(total);
    }
    let mut upright = vec![T::default(); per_group];
    transpose_tiles(&total, sz.patch_rows, sz.out_channels, &mut upright);
    Ok(upright)
}

/// `Σ` of `groups` partials of `per_group` values each, added in group order onto the
/// first (element chunks in parallel).
fn sum_partials<T: GemmScalar>(mut partials: Vec<T>, groups: usize, per_group: usize) -> Vec<T> {
    if groups <= 1 {
        // One group, or an empty batch (whose weight gradient is zero).
        partials.resize(per_group, T::default());
        return partials;
    }
    let mut total = partials[..per_group].to_vec();
    total
        .par_chunks_mut(crate::cpu::map::CHUNK)
        .enumerate()
        .for_each(|(c, out)| {
            let start = c * crate::cpu::map::CHUNK;
            for partial in partials.chunks_exact(per_group).skip(1) {
                for (o, &p) in out.iter_mut().zip(&partial[start..]) {
                    *o += p;
                }
            }
        });
    total
}

/// Checks an input-shaped layout and a `[O, C, kh, kw]`/`[B, O, Ho, Wo]` one against the
/// geometry; returns the batch size.
pub(crate) fn check_input(op: &str, g: &Geometry, l: &Layout) -> Result<usize> {
    let (b, c, h, w) = l.shape().dims4()?;
    if (c, h, w) != (g.c, g.h, g.w) {
        candle_core::bail!("{op}: input {:?} does not match {g:?}", l.dims());
    }
    Ok(b)
}

pub(crate) fn check_weight(op: &str, g: &Geometry, o: usize, l: &Layout) -> Result<()> {
    if l.dims() != [o, g.c, g.kh, g.kw] {
        candle_core::bail!("{op}: weight {:?} does not match {o} × {g:?}", l.dims());
    }
    Ok(())
}

fn check_grad(op: &str, g: &Geometry, o: usize, l: &Layout) -> Result<usize> {
    let (b, go, ho, wo) = l.shape().dims4()?;
    if (go, ho, wo) != (o, g.ho, g.wo) {
        candle_core::bail!(
            "{op}: output gradient {:?} does not match {o} × {g:?}",
            l.dims()
        );
    }
    Ok(b)
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "conv2d"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (&self.geometry, self.out_channels);
        let b = check_input(self.name(), g, l1)?;
        check_weight(self.name(), g, o, l2)?;
        let sz = Sizes::new(g, b, o);
        let out = dispatch2(
            self.name(),
            (s1, l1),
            (s2, l2),
            |x, w| forward(g, &sz, x, w),
            |x, w| forward(g, &sz, x, w),
        )?;
        Ok((out, Shape::from((b, o, g.ho, g.wo))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (geometry, out_channels) = (self.geometry, self.out_channels);
        // An input that is neither a variable nor computed from anything (the model's
        // input) needs no gradient: skipping it saves a product and a scatter.
        let gx = if x.track_op() {
            let op = InputGrad {
                geometry,
                out_channels,
            };
            Some(weight.apply_op2_no_bwd(&grad, &op)?)
        } else {
            None
        };
        let gw = if weight.track_op() {
            let op = WeightGrad {
                geometry,
                out_channels,
            };
            Some(x.apply_op2_no_bwd(&grad, &op)?)
        } else {
            None
        };
        Ok((gx, gw))
    }
}

impl CustomOp2 for InputGrad {
    fn name(&self) -> &'static str {
        "conv2d-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (&self.geometry, self.out_channels);
        check_weight(self.name(), g, o, l1)?;
        let b = check_grad(self.name(), g, o, l2)?;
        let sz = Sizes::new(g, b, o);
        let out = dispatch2(
            self.name(),
            (s1, l1),
            (s2, l2),
            |w, gr| input_grad(g, &sz, w, gr),
            |w, gr| input_grad(g, &sz, w, gr),
        )?;
        Ok((out, Shape::from((b, g.c, g.h, g.w))))
    }
}

impl CustomOp2 for WeightGrad {
    fn name(&self) -> &'static str {
        "conv2d-weight-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (&self.geometry, self.out_channels);
        let b = check_input(self.name(), g, l1)?;
        if check_grad(self.name(), g, o, l2)? != b {
            candle_core::bail!(
                "{}: input {:?} and output gradient {:?} differ in batch size",
                self.name(),
                l1.dims(),
                l2.dims()
            );
        }
        let sz = Sizes::new(g, b, o);
        let out = dispatch2(
            self.name(),
            (s1, l1),
            (s2, l2),
            |x, gr| weight_grad(g, &sz, x, gr),
            |x, gr| weight_grad(g, &sz, x, gr),
        )?;
        Ok((out, Shape::from((o, g.c, g.kh, g.kw))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use candle_core::{DType, Device, Var};

    fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
        random_like(&Tensor::zeros(shape, DType::F64, &Device::Cpu)?, seed)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    #[test]
    fn matches_candle_conv2d_for_paddings_strides_and_kernels() -> Result<()> {
        for (k, p, s, h, w) in [
            (3, 1, 1, 7, 6),
            (3, 0, 1, 5, 5),
            (3, 1, 2, 8, 7),
            (1, 0, 1, 4, 3),
            (5, 2, 2, 9, 6),
            (5, 4, 3, 4, 2),
            (3, 2, 1, 3, 5),
        ] {
            let x = random(&[2, 3, h, w], 1)?;
            let wt = random(&[4, 3, k, k], 2)?;
            let reference = x.conv2d(&wt, p, s, 1, 1)?;
            // Untracked operands take the batched no-gradient path, a `Var` the per-sample
            // graph path: both must match candle.
            let tracked = Var::from_tensor(&x)?;
            for (path, ours) in [
                ("no-grad", conv2d(&x, &wt, p, s)?),
                ("graph", conv2d(tracked.as_tensor(), &wt, p, s)?),
            ] {
                assert_eq!(ours.dims(), reference.dims(), "{path} k{k} p{p} s{s}");
                let d = max_abs_diff(&ours, &reference)?;
                assert!(d < 1e-12, "{path} k{k} p{p} s{s}: differs by {d}");
            }
        }
        Ok(())
    }

    #[test]
    fn bad_shapes_are_errors() -> Result<()> {
        let x = random(&[1, 3, 4, 4], 1)?;
        let e = conv2d(&x, &random(&[2, 2, 3, 3], 2)?, 1, 1).expect_err("channel mismatch");
        assert!(e.to_string().contains("expects 2 input channels"), "{e}");
        assert!(conv2d(&x, &random(&[2, 3, 7, 7], 2)?, 1, 1).is_err());
        assert!(conv2d(&x, &random(&[2, 3, 3, 3], 2)?, 1, 0).is_err());
        Ok(())
    }

    /// Large planes run block by block (several output-row blocks per sample here, with a
    /// last block shorter than the others): forward equal to candle's, gradients equal to
    /// the whole-sample path's through candle (`conv2d` with a graph on stride-1 inputs)
    /// and to finite differences, on one thread and on several.
    #[test]
    fn blocked_path_matches_candle_and_finite_differences() -> Result<()> {
        let (b, c, h, w) = (2, 8, 40, 64);
        let g = Geometry::new(c, h, w, 3, 3, 1, 1);
        assert!(
            blocked(&g, 1) && rows_per_block::<f64>(&g) < h && h % rows_per_block::<f64>(&g) != 0,
            "the case must have several blocks and a short last one"
        );
        let x = Var::from_tensor(&random(&[b, c, h, w], 20)?)?;
        let wt = Var::from_tensor(&random(&[5, c, 3, 3], 21)?)?;
        let ours = conv2d(x.as_tensor(), wt.as_tensor(), 1, 1)?;
        let reference = x.as_tensor().conv2d(wt.as_tensor(), 1, 1, 1, 1)?;
        assert!(max_abs_diff(&ours, &reference)? < 1e-12);
        let r = random(&[b, 5, h, w], 22)?;
        let grads = |run_on_one_thread: bool| -> Result<Vec<Vec<f64>>> {
            let run = || -> Result<Vec<Vec<f64>>> {
                let y = conv2d(x.as_tensor(), wt.as_tensor(), 1, 1)?;
                let gs = (y * &r)?.sum_all()?.backward()?;
                let missing = || candle_core::Error::Msg("missing gradient".into());
                let gx = gs.get(x.as_tensor()).ok_or_else(missing)?;
                let gw = gs.get(wt.as_tensor()).ok_or_else(missing)?;
                Ok(vec![
                    gx.flatten_all()?.to_vec1()?,
                    gw.flatten_all()?.to_vec1()?,
                ])
            };
            if run_on_one_thread {
                crate::cpu::map::single_threaded(run)
            } else {
                run()
            }
        };
        let (one, many) = (grads(true)?, grads(false)?);
        assert_eq!(one, many, "thread count changed the gradients");
        // The exact gradients of Σ r·conv(x, w): ∂x = conv_transpose(r, w), ∂w = corr(x, r).
        let gx_ref = r.conv_transpose2d(wt.as_tensor(), 1, 0, 1, 1)?;
        let gw_ref = x
            .as_tensor()
            .transpose(0, 1)?
            .conv2d(&r.transpose(0, 1)?, 1, 1, 1, 1)?
            .transpose(0, 1)?;
        let to_vec = |t: &Tensor| -> Result<Vec<f64>> { t.flatten_all()?.to_vec1() };
        for (got, want) in one.iter().zip([to_vec(&gx_ref)?, to_vec(&gw_ref)?]) {
            let d = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(
                d < 1e-10,
                "blocked gradient differs from the reference by {d}"
            );
        }
        let (xs, ws) = (x.clone(), wt.clone());
        let report = check_gradients(
            move || (conv2d(xs.as_tensor(), ws.as_tensor(), 1, 1)? * &r)?.sum_all(),
            &[x, wt],
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    /// Convolutions with enough channels run forward and input gradient through
    /// [`winograd`]: for paddings 0, 1 and 2, odd and even planes and batches that take
    /// several tasks, the output equals candle's, the input gradient equals candle's
    /// `conv_transpose2d` and finite differences, and neither depends on the thread count.
    #[test]
    fn winograd_paths_match_candle_and_finite_differences() -> Result<()> {
        for (b, c, o, h, w, p) in [
            (2, 32, 33, 32, 34, 1),
            (1, 33, 32, 35, 33, 0),
            (1, 32, 32, 33, 32, 2),
        ] {
            let g = Geometry::new(c, h, w, 3, 3, p, 1);
            assert!(winograd::applies(&g, o) && winograd_adjoint(&g, o).is_some());
            let x = Var::from_tensor(&random(&[b, c, h, w], 30)?)?;
            let wt = random(&[o, c, 3, 3], 31)?;
            let ours = conv2d(x.as_tensor(), &wt, p, 1)?;
            let reference = x.as_tensor().conv2d(&wt, p, 1, 1, 1)?;
            assert!(max_abs_diff(&ours, &reference)? < 1e-12, "forward p{p}");
            let r = random(ours.dims(), 32)?;
            let grad = || -> Result<Tensor> {
                let gs = (conv2d(x.as_tensor(), &wt, p, 1)? * &r)?
                    .sum_all()?
                    .backward()?;
                gs.get(x.as_tensor())
                    .cloned()
                    .ok_or_else(|| candle_core::Error::Msg("missing gradient".into()))
            };
            let gx = grad()?;
            let gx_ref = r.conv_transpose2d(&wt, p, 0, 1, 1)?;
            assert!(max_abs_diff(&gx, &gx_ref)? < 1e-12, "input gradient p{p}");
            let one = crate::cpu::map::single_threaded(grad)?;
            assert_eq!(
                one.flatten_all()?.to_vec1::<f64>()?,
                gx.flatten_all()?.to_vec1::<f64>()?,
                "thread count changed the input gradient (p{p})"
            );
            let (xs, ws, rs) = (x.clone(), wt.clone(), r.clone());
            let report = check_gradients(
                move || (conv2d(xs.as_tensor(), &ws, p, 1)? * &rs)?.sum_all(),
                &[x],
                &GradCheckConfig::default(),
            )?;
            assert!(report.passed(), "p{p}: {report:?}");
        }
        Ok(())
    }

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        // Batch 6 of small planes (groups of samples, run in parallel), and batch 1 of a
        // larger plane (one group, multi-threaded products); at 50 columns the threaded
        // forward's blocks are cut to 8 rows (400 columns, `aligned_rows`) where one thread
        // takes 36, and the `gemm` crate reads the 400-column blocks unpacked.
        for (b, c, n, stride) in [(6, 4, 20, 2), (1, 8, 64, 1), (1, 8, 50, 1)] {
            let x = random(&[b, c, n, n], 8)?.to_dtype(DType::F32)?;
            let w = Var::from_tensor(&random(&[5, c, 3, 3], 9)?.to_dtype(DType::F32)?)?;
            let run = || -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
                let xv = Var::from_tensor(&x)?;
                let y = conv2d(xv.as_tensor(), w.as_tensor(), 1, stride)?;
                let grads = y.sqr()?.sum_all()?.backward()?;
                let missing = || candle_core::Error::Msg("missing gradient".into());
                let gx = grads.get(xv.as_tensor()).ok_or_else(missing)?;
                let gw = grads.get(w.as_tensor()).ok_or_else(missing)?;
                Ok((
                    y.flatten_all()?.to_vec1()?,
                    gx.flatten_all()?.to_vec1()?,
                    gw.flatten_all()?.to_vec1()?,
                ))
            };
            assert_eq!(crate::cpu::map::single_threaded(run)?, run()?, "batch {b}");
        }
        Ok(())
    }

    #[test]
    fn transposed_weight_gradient_partials_give_the_same_bits() -> Result<()> {
        // The weight gradient with `[C·9, O]` partials (the `gemm` crate reads the patches in
        // place) against `[O, C·9]` ones, bit for bit, in f32 and f64, on one thread and on
        // the default pool: one input channel (9 patch rows, a common dimension of 1,200
        // columns: the crate's small-matrix path), DeepONet-CNN-like strided layers (one
        // group of 1,089 columns; one of 200), and a stride-1 layer whose last group is one
        // sample (the blocked path, transposed afterwards). Products of at most 256 values
        // keep the upright layout.
        let shapes = [
            (4, 1, 41, 40, 0, 2, true),
            (9, 40, 24, 66, 0, 2, true),
            (8, 12, 11, 70, 0, 2, true),
            (9, 3, 12, 20, 1, 1, true),
            (3, 2, 9, 8, 0, 2, false),
        ];
        for (b, c, n, o, padding, stride, transposed) in shapes {
            let g = Geometry::new(c, n, n, 3, 3, padding, stride);
            let sz = Sizes::new(&g, b, o);
            assert_eq!(transposed_partials(&g, &sz), transposed, "{g:?}");
            let x = random(&[b, c, n, n], 5)?;
            let dy = random(&[b, o, g.ho, g.wo], 6)?;
            let (x32, dy32) = (x.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
            let (xs, gs): (Vec<f32>, Vec<f32>) = (
                x32.flatten_all()?.to_vec1()?,
                dy32.flatten_all()?.to_vec1()?,
            );
            let bits = |v: Vec<f32>| v.into_iter().map(f32::to_bits).collect::<Vec<_>>();
            let upright = bits(weight_grad_laid_out(&g, &sz, (&xs, &gs), false)?);
            let laid_out = |t| weight_grad_laid_out(&g, &sz, (&xs, &gs), t);
            assert_eq!(bits(laid_out(true)?), upright, "{g:?}, f32");
            let one_thread = crate::cpu::map::single_threaded(|| laid_out(true))?;
            assert_eq!(bits(one_thread), upright, "{g:?}, f32, one thread");
            let (xs, gs): (Vec<f64>, Vec<f64>) =
                (x.flatten_all()?.to_vec1()?, dy.flatten_all()?.to_vec1()?);
            let bits = |v: Vec<f64>| v.into_iter().map(f64::to_bits).collect::<Vec<_>>();
            assert_eq!(
                bits(weight_grad_laid_out(&g, &sz, (&xs, &gs), true)?),
                bits(weight_grad_laid_out(&g, &sz, (&xs, &gs), false)?),
                "{g:?}, f64"
            );
        }
        Ok(())
    }

    #[test]
    fn forward_groups_give_the_same_bits() -> Result<()> {
        // The byte-capped forward groups must change no value: the forward with them
        // against the forward with the weight gradient's groups, in f32 and f64, at
        // strided layers with many patch rows on small planes (DeepONet-CNN's deeper
        // layers; 900 patch rows are two cache blocks of the inner dimension) and a padded
        // stride-1 layer. The cap applies where every group keeps more than 64 columns
        // (and 256 entries: 3 samples of 121 columns for one output channel) and gives way
        // where the last group would be narrower (one sample of 25 columns).
        let shapes = [
            (9, 100, 11, 70, 0, 2, true),
            (9, 40, 24, 66, 0, 2, true),
            (7, 100, 11, 8, 0, 2, false),
            (8, 100, 11, 70, 0, 2, false),
            (6, 60, 24, 1, 0, 2, true),
            (5, 30, 24, 6, 1, 1, true),
        ];
        for (b, c, n, o, padding, stride, capped) in shapes {
            let g = Geometry::new(c, n, n, 3, 3, padding, stride);
            let sz = Sizes::new(&g, b, o);
            let x = random(&[b, c, n, n], 3)?;
            let w = random(&[o, c, 3, 3], 4)?;
            let (x32, w32) = (x.to_dtype(DType::F32)?, w.to_dtype(DType::F32)?);
            let (xs, ws): (Vec<f32>, Vec<f32>) =
                (x32.flatten_all()?.to_vec1()?, w32.flatten_all()?.to_vec1()?);
            let group = sz.forward_group::<f32>();
            assert_eq!(
                group < sz.group,
                capped,
                "{g:?}: groups of {group}, not {}",
                sz.group
            );
            assert_eq!(
                forward_grouped::<f32>(&g, &sz, group, (&xs, &ws), |_, _| {})?,
                forward_grouped::<f32>(&g, &sz, sz.group, (&xs, &ws), |_, _| {})?,
                "{g:?}, f32, groups of {group}"
            );
            let (xs, ws): (Vec<f64>, Vec<f64>) =
                (x.flatten_all()?.to_vec1()?, w.flatten_all()?.to_vec1()?);
            let group = sz.forward_group::<f64>();
            assert_eq!(
                forward_grouped::<f64>(&g, &sz, group, (&xs, &ws), |_, _| {})?,
                forward_grouped::<f64>(&g, &sz, sz.group, (&xs, &ws), |_, _| {})?,
                "{g:?}, f64, groups of {group}"
            );
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // Stride 2, padding 1, 3×3 kernel, non-square inputs (where candle's own backward
        // is wrong). 5×4 and 6×5 inputs give 3×2 and 3×3 outputs: one group holds the whole
        // batch. 36×34 inputs give 18×17 outputs (306 columns): groups of 4, so batch 5 is
        // a full and a partial group run in turn, and batch 13 is four groups run in parallel.
        for (b, h, w) in [(2, 5, 4), (5, 6, 5), (5, 36, 34), (13, 36, 34)] {
            let x = Var::from_tensor(&random(&[b, 2, h, w], 10)?)?;
            let wt = Var::from_tensor(&random(&[3, 2, 3, 3], 11)?)?;
            let r = random(&[b, 3, (h - 1) / 2 + 1, (w - 1) / 2 + 1], 12)?;
            let (xs, ws) = (x.clone(), wt.clone());
            let report = check_gradients(
                move || (conv2d(xs.as_tensor(), ws.as_tensor(), 1, 2)? * &r)?.sum_all(),
                &[x.clone(), wt.clone()],
                &GradCheckConfig::default(),
            )?;
            assert!(report.passed(), "batch {b}, {h}×{w}: {report:?}");
        }
        Ok(())
    }

    #[test]
    fn an_empty_batch_has_an_empty_output_and_a_zero_weight_gradient() -> Result<()> {
        let x = Var::from_tensor(&random(&[0, 2, 5, 5], 15)?)?;
        let w = Var::from_tensor(&random(&[3, 2, 3, 3], 16)?)?;
        let y = conv2d(x.as_tensor(), w.as_tensor(), 1, 1)?;
        assert_eq!(y.dims(), &[0, 3, 5, 5]);
        let grads = y.sum_all()?.backward()?;
        let gw = grads
            .get(w.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no weight gradient".into()))?;
        assert_eq!(gw.dims(), &[3, 2, 3, 3]);
        assert_eq!(gw.abs()?.sum_all()?.to_scalar::<f64>()?, 0.0);
        Ok(())
    }

    #[test]
    fn an_input_that_needs_no_gradient_gets_none() -> Result<()> {
        let x = random(&[2, 2, 5, 5], 13)?;
        let w = Var::from_tensor(&random(&[3, 2, 3, 3], 14)?)?;
        let grads = conv2d(&x, w.as_tensor(), 1, 1)?.sum_all()?.backward()?;
        assert!(grads.get(&x).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
        Ok(())
    }
}
