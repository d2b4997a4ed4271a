//! A bias-free convolution that is causal in time (zero padding before `t = 0` only) and
//! reflection-padded in space, dilated on both axes, as one CPU op: the convolution of
//! the causal operator (`no_models::causal`).
//!
//! For an input `x` `[B, C, T, X]` and a weight `W` `[O, kt·kx·C, 1, 1]` laid out
//! tap-major (input channel `(a·kx + b)·C + c` is channel `c` at time tap `a`, oldest
//! first, and space tap `b`):
//!
//! ```text
//! y[s, o, t, x] = Σ_{a, b, c} W[o, (a·kx + b)·C + c] · x[s, c, t − (kt − 1 − a)·d_t, r(x + (b − kx/2)·d_x)]
//! ```
//!
//! where rows before `t = 0` read zeros and `r` reflects an index about the end nodes
//! ([`reflect_indices`], applied repeatedly when the reach exceeds the axis).
//!
//! # Why a fused op
//!
//! The composite form ([`causal_conv_composite`]: a zero pad, an `index_select` for the
//! reflection, `kt·kx` `narrow`s concatenated into a `[B, kt·kx·C, T, X]` patch tensor,
//! then a 1 × 1 convolution) made the causal operator the slowest model to train: 410 ms
//! per training step at batch 8 on 50 × 50 (2 threads; FNO takes 26 ms), of which `perf`
//! put 30 % in `memmove`, 10 % in candle's `index_add` (the backward of the reflection's
//! `index_select`), 8 % in its strided copies and 5 % in `memset`: the backward of every
//! pad, narrow and concatenation copies and zero-fills whole tensors, while the products
//! themselves were about 10 %. This op gathers the taps of a block of rows of one sample
//! into a per-thread patch matrix that stays in cache and multiplies it by the weight
//! with `gemm`; the backward gathers the block again and makes both gradients from it,
//! scattering the input gradient back in one pass. No padded or patch tensor is
//! allocated.
//!
//! The forward runs (sample, block of rows) tasks in parallel; the backward runs samples
//! in parallel (the scatter of a sample's blocks overlaps in time), blocks in order, and
//! sums the weight gradient's per-sample partials in sample order, so results do not
//! depend on the thread count. `f32` and `f64` on the CPU (the decision is
//! [`crate::ops::fused_cpu`]'s); elsewhere [`causal_conv_composite`] computes the same
//! function with candle ops: it is the op's specification.

use crate::cpu::gemm_view::{gemm, GemmScalar, MatMut, MatRef};
use crate::cpu::map::contiguous;
use crate::cpu::point_tiles::{SharedRows, Tile};
use crate::cpu::scratch::PoolBuf;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// The shape of a causal, dilated convolution kernel (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CausalTaps {
    /// Taps in time, `kt ≥ 1` (the last one is the present row).
    pub kernel_time: usize,
    /// Taps in space, `kx` odd (a centred kernel).
    pub kernel_space: usize,
    /// Rows between time taps, `d_t ≥ 1`.
    pub dilation_time: usize,
    /// Columns between space taps, `d_x ≥ 1`.
    pub dilation_space: usize,
}

impl CausalTaps {
    /// Taps per input channel, `kt·kx`.
    pub fn taps(&self) -> usize {
        self.kernel_time * self.kernel_space
    }

    /// Zero rows padded before `t = 0`: `(kt − 1)·d_t`.
    pub fn pad_time(&self) -> usize {
        self.kernel_time.saturating_sub(1) * self.dilation_time
    }

    /// Columns reflected on each side: `(kx / 2)·d_x`.
    pub fn pad_space(&self) -> usize {
        (self.kernel_space / 2) * self.dilation_space
    }

    fn validate(&self) -> Result<()> {
        if self.kernel_time == 0
            || self.kernel_space.is_multiple_of(2)
            || self.dilation_time == 0
            || self.dilation_space == 0
        {
            candle_core::bail!(
                "causal conv: kernel {}×{} dilated by {}×{} (expected kt ≥ 1, odd kx, dilations ≥ 1)",
                self.kernel_time,
                self.kernel_space,
                self.dilation_time,
                self.dilation_space
            );
        }
        Ok(())
    }
}

/// The indices that pad an axis of length `n` by `pad` on each side by reflection about
/// the end nodes (`… x2 x1 | x0 x1 … x_{n−1} | x_{n−2} …`, numpy's "reflect", applied
/// repeatedly when `pad ≥ n`): the even extension of a zero-flux field. An axis of one
/// node pads with copies of it.
pub fn reflect_indices(n: usize, pad: usize) -> Vec<u32> {
    let period = 2 * n.saturating_sub(1);
    (0..n + 2 * pad)
        .map(|j| {
            if period == 0 {
                return 0;
            }
            let m = (j as i64 - pad as i64).rem_euclid(period as i64) as usize;
            let i = if m < n { m } else { period - m };
            i as u32
        })
        .collect()
}

/// The causal, space-reflected, dilated convolution of `x` `[B, C, T, X]` by `weight`
/// `[O, kt·kx·C, 1, 1]` (tap-major, module docs): `[B, O, T, X]`. Differentiable in both.
/// The fused CPU op where [`crate::ops::fused_cpu`] allows it, [`causal_conv_composite`]
/// elsewhere.
pub fn causal_conv(x: &Tensor, weight: &Tensor, taps: CausalTaps) -> Result<Tensor> {
    taps.validate()?;
    let (_, c, t, w) = x.dims4()?;
    let (o, k, one_h, one_w) = weight.dims4()?;
    if k != c * taps.taps() || (one_h, one_w) != (1, 1) {
        candle_core::bail!(
            "causal conv: weight {:?} does not fit input {:?} with {}×{} taps (expected [O, {}, 1, 1])",
            weight.dims(),
            x.dims(),
            taps.kernel_time,
            taps.kernel_space,
            c * taps.taps()
        );
    }
    if x.dtype() != weight.dtype() {
        candle_core::bail!(
            "causal conv: input is {:?} but the weight is {:?}",
            x.dtype(),
            weight.dtype()
        );
    }
    if !crate::ops::fused_cpu(&[x, weight]) || t == 0 || w == 0 {
        return causal_conv_composite(x, weight, taps);
    }
    let op = CausalConv::new((c, t, w), o, taps);
    x.contiguous()?.apply_op2(&weight.contiguous()?, op)
}

/// [`causal_conv`] from candle ops: zeros padded before `t = 0`, the space axis padded by
/// an `index_select` of [`reflect_indices`], the `kt·kx` shifted windows concatenated
/// along channels (tap-major) and a 1 × 1 convolution by `weight`. The fused op's
/// specification, and what every other device runs; shapes are not checked here (see
/// [`causal_conv`]).
pub fn causal_conv_composite(x: &Tensor, weight: &Tensor, taps: CausalTaps) -> Result<Tensor> {
    let (_, _, nt, nx) = x.dims4()?;
    let (kt, kx) = (taps.kernel_time, taps.kernel_space);
    let (dt, dx) = (taps.dilation_time, taps.dilation_space);
    // Zeros before t = 0 only: the rest state the network maps to zero.
    let x = x.pad_with_zeros(2, taps.pad_time(), 0)?;
    let pad_x = taps.pad_space();
    let x = if pad_x > 0 {
        let idx = Tensor::new(reflect_indices(nx, pad_x), x.device())?;
        x.index_select(&idx, 3)?
    } else {
        x
    };
    let mut windows = Vec::with_capacity(kt * kx);
    for a in 0..kt {
        for b in 0..kx {
            windows.push(x.narrow(2, a * dt, nt)?.narrow(3, b * dx, nx)?);
        }
    }
    let patches = Tensor::cat(&windows, 1)?;
    crate::ops::conv2d::conv2d(&patches, weight, 0, 1)
}

/// Target size of a block's patch matrix (a share of a 1 MB L2 cache).
const BLOCK_BYTES: usize = 512 * 1024;

/// Where space tap `b` reads: columns `lo..hi` read `x + shift` (inside the axis; the
/// range is empty when the tap reaches past the whole axis), the others `source[x]`
/// (reflected).
#[derive(Debug, Clone)]
struct SpaceTap {
    shift: isize,
    lo: usize,
    hi: usize,
    source: Vec<usize>,
}

/// The fused op: sizes, kernel shape and the space taps' sources.
#[derive(Debug, Clone)]
struct CausalConv {
    c: usize,
    nt: usize,
    nx: usize,
    o: usize,
    taps: CausalTaps,
    space: Vec<SpaceTap>,
}

impl CausalConv {
    fn new((c, nt, nx): (usize, usize, usize), o: usize, taps: CausalTaps) -> Self {
        let pad = taps.pad_space();
        let reflected = reflect_indices(nx, pad);
        let space = (0..taps.kernel_space)
            .map(|b| {
                let shift = (b * taps.dilation_space) as isize - pad as isize;
                let lo = (-shift).clamp(0, nx as isize) as usize;
                let hi = (nx as isize - shift).clamp(lo as isize, nx as isize) as usize;
                let source = (0..nx)
                    .map(|x| reflected[x + b * taps.dilation_space] as usize)
                    .collect();
                SpaceTap {
                    shift,
                    lo,
                    hi,
                    source,
                }
            })
            .collect();
        Self {
            c,
            nt,
            nx,
            o,
            taps,
            space,
        }
    }

    /// Rows of the patch matrix, `kt·kx·C`.
    fn patch_rows(&self) -> usize {
        self.taps.taps() * self.c
    }

    fn plane(&self) -> usize {
        self.nt * self.nx
    }

    /// The row blocks `(t0, t1)` of a sample: about [`BLOCK_BYTES`] of patches each,
    /// fixed by the geometry alone.
    fn blocks<T>(&self) -> Vec<(usize, usize)> {
        let row_bytes = std::mem::size_of::<T>() * self.patch_rows() * self.nx;
        let rows = (BLOCK_BYTES / row_bytes.max(1)).clamp(1, self.nt.max(1));
        let n = self.nt.div_ceil(rows);
        // Even blocks: `n` of them, sizes differing by at most one row.
        (0..n)
            .map(|i| (i * self.nt / n, (i + 1) * self.nt / n))
            .collect()
    }

    /// Calls `row(patch row, input row or None for a zero row, space tap, output row
    /// index within the block)` for every row of the patch matrix of rows `t0..t1`, in
    /// patch-row order.
    fn for_each_row(
        &self,
        (t0, t1): (usize, usize),
        mut row: impl FnMut(usize, Option<usize>, &SpaceTap, usize),
    ) {
        let (kt, kx) = (self.taps.kernel_time, self.taps.kernel_space);
        for a in 0..kt {
            let lag = (kt - 1 - a) * self.taps.dilation_time;
            for (b, tap) in self.space.iter().enumerate() {
                for ch in 0..self.c {
                    let k = (a * kx + b) * self.c + ch;
                    for t in t0..t1 {
                        let src = t.checked_sub(lag).map(|s| ch * self.plane() + s * self.nx);
                        row(k, src, tap, t - t0);
                    }
                }
            }
        }
    }

    /// The patch matrix `[kt·kx·C, (t1 − t0)·X]` of rows `t0..t1` of one sample `x_s`
    /// `[C, T, X]`.
    fn gather<T: GemmScalar>(&self, x_s: &[T], block: (usize, usize), p: &mut PoolBuf<T>) {
        let nx = self.nx;
        let width = (block.1 - block.0) * nx;
        p.set_len(self.patch_rows() * width);
        self.for_each_row(block, |k, src, tap, i| {
            let dst = &mut p[k * width + i * nx..][..nx];
            let Some(src) = src else {
                dst.fill(T::default());
                return;
            };
            let src = &x_s[src..src + nx];
            let (lo, hi) = (tap.lo, tap.hi);
            if hi > lo {
                let from = (lo as isize + tap.shift) as usize;
                dst[lo..hi].copy_from_slice(&src[from..from + (hi - lo)]);
            }
            for x in (0..lo).chain(hi..nx) {
                dst[x] = src[tap.source[x]];
            }
        });
    }

    /// The adjoint of [`Self::gather`]: adds `e` `[kt·kx·C, (t1 − t0)·X]` into `dx_s`
    /// `[C, T, X]`.
    fn scatter<T: GemmScalar>(&self, e: &[T], block: (usize, usize), dx_s: &mut [T]) {
        let nx = self.nx;
        let width = (block.1 - block.0) * nx;
        self.for_each_row(block, |k, src, tap, i| {
            let Some(src) = src else {
                return;
            };
            let row = &e[k * width + i * nx..][..nx];
            let dst = &mut dx_s[src..src + nx];
            let (lo, hi) = (tap.lo, tap.hi);
            if hi > lo {
                let from = (lo as isize + tap.shift) as usize;
                for (d, &v) in dst[from..from + (hi - lo)].iter_mut().zip(&row[lo..hi]) {
                    *d += v;
                }
            }
            for x in (0..lo).chain(hi..nx) {
                dst[tap.source[x]] += row[x];
            }
        });
    }

    /// Forward on slices: `x` `[B, C, T, X]`, `w` `[O, kt·kx·C]`.
    fn forward<T: GemmScalar>(&self, x: &[T], w: &[T]) -> Result<Vec<T>> {
        let (plane, rows) = (self.plane(), self.patch_rows());
        let batch = x.len() / (self.c * plane).max(1);
        let weight = MatRef::row_major(w, self.o, rows);
        let tasks: Vec<(usize, (usize, usize))> = (0..batch)
            .flat_map(|s| self.blocks::<T>().into_iter().map(move |blk| (s, blk)))
            .collect();
        let len = batch * self.o * plane;
        let mut out: Vec<T> = Vec::with_capacity(len);
        let shared = SharedRows::new(&mut out.spare_capacity_mut()[..len]);
        tasks.par_iter().try_for_each_init(
            || (PoolBuf::new(0), PoolBuf::new(0)),
            |(p, y), &(s, blk)| {
                let width = (blk.1 - blk.0) * self.nx;
                self.gather(&x[s * self.c * plane..][..self.c * plane], blk, p);
                y.set_len(self.o * width);
                gemm(
                    MatMut::row_major(y, self.o, width),
                    weight,
                    MatRef::row_major(p, rows, width),
                    false,
                    1,
                )?;
                let tile = Tile {
                    b: s,
                    p0: blk.0 * self.nx,
                    len: width,
                };
                shared.write_tile(tile, self.o, plane, y);
                Ok::<(), candle_core::Error>(())
            },
        )?;
        // SAFETY: the tasks' tiles cover every (sample, channel, position) of the buffer
        // (blocks partition the rows of every sample) and each wrote all of its elements.
        unsafe { out.set_len(len) };
        Ok(out)
    }

    /// Backward on slices: `∂x` (when `want_x`, else empty) and `∂W` for the output
    /// gradient `g` `[B, O, T, X]`.
    fn backward<T: GemmScalar>(
        &self,
        (x, w, g): (&[T], &[T], &[T]),
        want_x: bool,
    ) -> Result<(Vec<T>, Vec<T>)> {
        let (plane, rows) = (self.plane(), self.patch_rows());
        let batch = x.len() / (self.c * plane).max(1);
        let weight_t = MatRef::row_major(w, self.o, rows).t();
        let blocks = self.blocks::<T>();
        let mut dx = vec![T::default(); if want_x { x.len() } else { 0 }];
        let dx_chunks: Vec<Option<&mut [T]>> = if want_x {
            dx.chunks_mut(self.c * plane).map(Some).collect()
        } else {
            (0..batch).map(|_| None).collect()
        };
        let partials: Vec<Vec<T>> = dx_chunks
            .into_par_iter()
            .enumerate()
            .map_init(
                || (PoolBuf::new(0), PoolBuf::new(0)),
                |(p, e), (s, mut dx_s)| {
                    let x_s = &x[s * self.c * plane..][..self.c * plane];
                    let g_s = &g[s * self.o * plane..][..self.o * plane];
                    let mut part = vec![T::default(); self.o * rows];
                    for (i, &blk) in blocks.iter().enumerate() {
                        let width = (blk.1 - blk.0) * self.nx;
                        let g_blk =
                            MatRef::strided(&g_s[blk.0 * self.nx..], (self.o, width), (plane, 1));
                        self.gather(x_s, blk, p);
                        gemm(
                            MatMut::row_major(&mut part, self.o, rows),
                            g_blk,
                            MatRef::row_major(p, rows, width).t(),
                            i > 0,
                            1,
                        )?;
                        if let Some(dx_s) = dx_s.as_deref_mut() {
                            e.set_len(rows * width);
                            gemm(MatMut::row_major(e, rows, width), weight_t, g_blk, false, 1)?;
                            self.scatter(e, blk, dx_s);
                        }
                    }
                    Ok(part)
                },
            )
            .collect::<Result<_>>()?;
        let mut dw = vec![T::default(); self.o * rows];
        for part in &partials {
            for (t, &v) in dw.iter_mut().zip(part) {
                *t += v;
            }
        }
        Ok((dx, dw))
    }

    fn check(&self, l: &Layout) -> Result<usize> {
        let (b, c, nt, nx) = l.shape().dims4()?;
        if (c, nt, nx) != (self.c, self.nt, self.nx) {
            candle_core::bail!(
                "causal conv: input {:?}, expected [B, {}, {}, {}]",
                l.dims(),
                self.c,
                self.nt,
                self.nx
            );
        }
        Ok(b)
    }

    fn check_weight(&self, l: &Layout) -> Result<()> {
        if l.shape().elem_count() != self.o * self.patch_rows() {
            candle_core::bail!(
                "causal conv: weight {:?}, expected [{}, {}, 1, 1]",
                l.dims(),
                self.o,
                self.patch_rows()
            );
        }
        Ok(())
    }
}

impl CustomOp2 for CausalConv {
    fn name(&self) -> &'static str {
        "causal-conv"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = self.check(l1)?;
        self.check_weight(l2)?;
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                CpuStorage::F32(self.forward(contiguous(name, x, l1)?, contiguous(name, w, l2)?)?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                CpuStorage::F64(self.forward(contiguous(name, x, l1)?, contiguous(name, w, l2)?)?)
            }
            _ => candle_core::bail!(
                "{name}: expected two f32 or two f64 storages, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, Shape::from((b, self.o, self.nt, self.nx))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        // An input that is neither a variable nor computed from anything needs no
        // gradient: skipping it saves a product and a scatter per block.
        let want_x = x.track_op();
        let (xs, xl) = x.storage_and_layout();
        let (ws, wl) = weight.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        if gl.dims() != [xl.dims()[0], self.o, self.nt, self.nx] {
            candle_core::bail!(
                "causal conv: output gradient {:?} for input {:?}",
                gl.dims(),
                xl.dims()
            );
        }
        let name = self.name();
        macro_rules! run {
            ($x:expr, $w:expr, $g:expr) => {{
                let slices = (
                    contiguous(name, $x, xl)?,
                    contiguous(name, $w, wl)?,
                    contiguous(name, $g, gl)?,
                );
                let (dx, dw) = self.backward(slices, want_x)?;
                let dev = x.device();
                (
                    if want_x {
                        Some(Tensor::from_vec(dx, xl.shape(), dev)?)
                    } else {
                        None
                    },
                    Tensor::from_vec(dw, wl.shape(), dev)?,
                )
            }};
        }
        let (dx, dw) = match (&*xs, &*ws, &*gs) {
            (
                Storage::Cpu(CpuStorage::F32(x)),
                Storage::Cpu(CpuStorage::F32(w)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => run!(x, w, g),
            (
                Storage::Cpu(CpuStorage::F64(x)),
                Storage::Cpu(CpuStorage::F64(w)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => run!(x, w, g),
            _ => candle_core::bail!(
                "{name}: backward expects f32 or f64 CPU tensors of one dtype, got {:?}",
                grad.dtype()
            ),
        };
        Ok((dx, weight.track_op().then_some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for};
    use candle_core::{DType, Var};

    fn randn(shape: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
        init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut rng_for(seed, "causal_conv"),
        )?
        .to_dtype(dtype)
    }

    fn abs_max(t: &Tensor) -> Result<f64> {
        t.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    fn taps(kt: usize, kx: usize, dt: usize, dx: usize) -> CausalTaps {
        CausalTaps {
            kernel_time: kt,
            kernel_space: kx,
            dilation_time: dt,
            dilation_space: dx,
        }
    }

    /// `[B, C, T, X]` inputs, kernels and output channels: odd and non-square planes,
    /// dilations beyond either axis (the space reflection folds several times, the
    /// oldest time taps read only zeros), one-column planes, and a plane large enough to
    /// be cut into several row blocks.
    fn cases() -> Vec<([usize; 4], CausalTaps, usize)> {
        vec![
            ([2, 3, 7, 5], taps(3, 3, 1, 1), 4),
            ([1, 2, 9, 6], taps(2, 3, 2, 2), 3),
            ([3, 2, 5, 3], taps(3, 3, 4, 4), 2),
            ([2, 1, 6, 4], taps(3, 3, 8, 7), 3),
            ([1, 3, 4, 7], taps(2, 1, 3, 1), 2),
            ([2, 2, 11, 1], taps(3, 3, 2, 2), 2),
            ([1, 2, 3, 5], taps(3, 1, 16, 16), 3),
            ([2, 16, 23, 50], taps(3, 3, 2, 2), 5),
        ]
    }

    /// The fused op equals its composite form (forced with [`crate::ops::composite_only`]):
    /// values and the gradients of the input and the weight, in f64 and f32.
    #[test]
    fn fused_equals_the_composite_form_with_all_gradients() -> Result<()> {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (seed, (xs, tp, o)) in cases().into_iter().enumerate() {
                let seed = 10 * seed as u64;
                let ws = [o, xs[1] * tp.taps(), 1, 1];
                let x = Var::from_tensor(&randn(&xs, seed, dtype)?)?;
                let w = Var::from_tensor(&randn(&ws, seed + 1, dtype)?)?;
                let r = randn(&[xs[0], o, xs[2], xs[3]], seed + 2, dtype)?;
                let fused = causal_conv(x.as_tensor(), w.as_tensor(), tp)?;
                let guard = crate::ops::composite_only();
                let composite = causal_conv(x.as_tensor(), w.as_tensor(), tp)?;
                let g_c = (&composite * &r)?.sum_all()?.backward()?;
                drop(guard);
                let g_f = (&fused * &r)?.sum_all()?.backward()?;
                let what = format!("{dtype:?} {xs:?} {tp:?} → {o}");
                let scale = abs_max(&composite)?.max(1.0);
                let diff = abs_max(&(&fused - &composite)?)?;
                assert!(diff < tol * scale, "{what}: output off by {diff}");
                for (name, v) in [("input", &x), ("weight", &w)] {
                    let (Some(a), Some(e)) = (g_f.get(v), g_c.get(v)) else {
                        candle_core::bail!("{what}: the {name} gradient is missing");
                    };
                    let diff = abs_max(&(a - e)?)?;
                    assert!(
                        diff < tol * abs_max(e)?.max(1.0),
                        "{what}: {name} gradient off by {diff}"
                    );
                }
            }
        }
        Ok(())
    }

    /// The composite form is the formula of the module docs, written out as loops.
    #[test]
    fn composite_is_the_documented_formula() -> Result<()> {
        let (xs, tp, o) = ([2, 2, 6, 4], taps(3, 3, 2, 3), 2);
        let x = randn(&xs, 7, DType::F64)?;
        let w = randn(&[o, xs[1] * tp.taps(), 1, 1], 8, DType::F64)?;
        let y = {
            let _g = crate::ops::composite_only();
            causal_conv(&x, &w, tp)?
        };
        let xv = x.flatten_all()?.to_vec1::<f64>()?;
        let wv = w.flatten_all()?.to_vec1::<f64>()?;
        let yv = y.flatten_all()?.to_vec1::<f64>()?;
        let [b, c, nt, nx] = xs;
        // Reflection about the end nodes, by hand: … 2 1 | 0 1 2 3 | 2 1 0 1 …
        let reflect = |j: isize| -> usize {
            let period = 2 * (nx as isize - 1);
            let m = j.rem_euclid(period);
            (if m < nx as isize { m } else { period - m }) as usize
        };
        let (kt, kx) = (tp.kernel_time, tp.kernel_space);
        for s in 0..b {
            for oc in 0..o {
                for t in 0..nt {
                    for xx in 0..nx {
                        let mut sum = 0.0;
                        for a in 0..kt {
                            let Some(src_t) = t.checked_sub((kt - 1 - a) * tp.dilation_time) else {
                                continue;
                            };
                            for bb in 0..kx {
                                let j = xx as isize
                                    + (bb as isize - (kx / 2) as isize)
                                        * tp.dilation_space as isize;
                                let src_x = reflect(j);
                                for ch in 0..c {
                                    let k = (a * kx + bb) * c + ch;
                                    sum += wv[oc * c * kt * kx + k]
                                        * xv[((s * c + ch) * nt + src_t) * nx + src_x];
                                }
                            }
                        }
                        let got = yv[((s * o + oc) * nt + t) * nx + xx];
                        assert!((got - sum).abs() < 1e-12, "({s}, {oc}, {t}, {xx})");
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (seed, (xs, tp)) in [
            ([2, 2, 5, 4], taps(3, 3, 2, 2)),
            ([1, 3, 4, 3], taps(2, 3, 1, 5)),
        ]
        .into_iter()
        .enumerate()
        {
            let seed = 20 + 10 * seed as u64;
            let x = Var::from_tensor(&randn(&xs, seed, DType::F64)?)?;
            let w = Var::from_tensor(&randn(&[3, xs[1] * tp.taps(), 1, 1], seed + 1, DType::F64)?)?;
            let (xv, wv) = (x.clone(), w.clone());
            let f = move || causal_conv(xv.as_tensor(), wv.as_tensor(), tp);
            let report = check_gradients(f, &[x, w], &GradCheckConfig::default())?;
            assert!(report.passed(), "{tp:?}: {report:?}");
        }
        Ok(())
    }

    /// Output and both gradients are the same on one thread and on several.
    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let x = Var::from_tensor(&randn(&[5, 16, 23, 30], 50, DType::F32)?)?;
        let w = Var::from_tensor(&randn(&[6, 16 * 9, 1, 1], 51, DType::F32)?)?;
        let run = || {
            let y = causal_conv(x.as_tensor(), w.as_tensor(), taps(3, 3, 2, 2))?;
            crate::cpu::point_tiles::output_and_gradients(&y, &[&x, &w])
        };
        assert_eq!(crate::cpu::map::single_threaded(run)?, run()?);
        Ok(())
    }

    /// An input that is not tracked gets no gradient; the weight's is still right.
    #[test]
    fn untracked_input_gets_no_gradient() -> Result<()> {
        let x = randn(&[2, 2, 5, 4], 60, DType::F64)?;
        let w = Var::from_tensor(&randn(&[3, 18, 1, 1], 61, DType::F64)?)?;
        let tp = taps(3, 3, 1, 2);
        let grads = causal_conv(&x, w.as_tensor(), tp)?
            .sqr()?
            .sum_all()?
            .backward()?;
        let g_ref = {
            let _g = crate::ops::composite_only();
            causal_conv(&x, w.as_tensor(), tp)?
                .sqr()?
                .sum_all()?
                .backward()?
        };
        assert!(grads.get(&x).is_none());
        let (Some(a), Some(e)) = (grads.get(&w), g_ref.get(&w)) else {
            candle_core::bail!("the weight gradient is missing");
        };
        assert!(abs_max(&(a - e)?)? < 1e-12 * abs_max(e)?.max(1.0));
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes_and_kernels() -> Result<()> {
        let x = randn(&[1, 2, 4, 4], 1, DType::F64)?;
        let w = randn(&[3, 18, 1, 1], 2, DType::F64)?;
        assert!(causal_conv(&x, &w, taps(3, 3, 1, 1)).is_ok());
        assert!(causal_conv(&x, &w, taps(2, 3, 1, 1)).is_err());
        assert!(causal_conv(&x, &w, taps(3, 2, 1, 1)).is_err());
        assert!(causal_conv(&x, &w, taps(3, 3, 0, 1)).is_err());
        assert!(causal_conv(&x, &randn(&[3, 18, 3, 1], 2, DType::F64)?, taps(1, 3, 1, 1)).is_err());
        assert!(causal_conv(&x.to_dtype(DType::F32)?, &w, taps(3, 3, 1, 1)).is_err());
        Ok(())
    }

    #[test]
    fn reflect_indices_mirror_about_the_end_nodes() {
        assert_eq!(reflect_indices(4, 2), vec![2, 1, 0, 1, 2, 3, 2, 1]);
        // Padding beyond the length folds again.
        assert_eq!(reflect_indices(3, 4), vec![0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]);
        assert_eq!(reflect_indices(1, 2), vec![0; 5]);
    }
}
