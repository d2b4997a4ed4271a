//! What periodic padding adds to a zero-padded "same" convolution, as one CPU op, with
//! LocalNO's per-channel bias and GELU folded in.
//!
//! A "same" cross-correlation with periodic padding differs from the zero-padded one only
//! where the kernel reaches outside the grid, i.e. within `kh/2` rows or `kw/2` columns of
//! the border:
//!
//! ```text
//! conv_periodic(x, K) = conv_zeros(x, K) + R(x, K),   R = Σ over taps outside the grid
//!                                                         of K · (wrapped input)
//! ```
//!
//! LocalNO runs two 3×3 kernels on every block input, the finite-difference one with
//! periodic padding and the DISCO one with zeros. By linearity their sum is **one**
//! zero-padded convolution with the summed kernel plus `R` of the periodic kernel
//! ([`crate::layers::local::conv::conv2d_same_sum`]): half the convolution work, and `R` costs a
//! product over the 4·(H + W) border positions only.
//!
//! [`periodic_border_sum`] returns `act(main + R(x, K) + b)` for a `main` of the output's
//! shape, a per-channel bias `b` (optional) and `act` = GELU or the identity: the end of a
//! LocalNO block (`main` = spectral convolution + merged local convolution) in one pass
//! over the output. For each sample the op gathers the wrapped inputs of the border
//! positions into a small patch matrix `D` `[C·kh·kw, P]` (zero where a tap stays inside
//! the grid) and adds `K · D` to those positions. The backward recomputes the
//! pre-activation from `main` (one pass), passes `g ⊙ act'` on as `main`'s gradient, and
//! gives `∂K = Σ G_border · Dᵀ`, `∂b` (per-channel sums) and `∂x = Dᵀ`-scatter of
//! `Kᵀ · G_border` (zero away from the border), per-sample partials summed in sample
//! order so results do not depend on the thread count. `f32` and `f64` on the CPU (the
//! decision is [`crate::ops::fused_cpu`]'s); groups = 1, stride 1, odd kernels. Elsewhere
//! [`periodic_border_composite`] computes the same function with candle ops: it is the
//! op's specification.

use crate::cpu::gemm_view::{gemm, MatMut, MatRef};
use crate::cpu::lane_sum::lane_sum;
use crate::cpu::map::contiguous;
use crate::cpu::point_tiles::{as_uninit, PointScalar};
use crate::cpu::scratch::PoolBuf;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// `main + R(x, kernel)` (module docs): `main` `[B, O, H, W]`, `x` `[B, C, H, W]`,
/// `kernel` `[O, C, kh, kw]` with odd `kh ≤ 2H + 1` and `kw ≤ 2W + 1` (one wrap at most,
/// as [`crate::layers::local::conv::pad_axis`] allows). Differentiable in all three.
pub fn add_periodic_border(main: &Tensor, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    periodic_border_sum(main, x, kernel, None, false)
}

/// `act(main + R(x, kernel) + bias)` with `act` = exact GELU when `gelu`, else the
/// identity, and `bias` `[O]` added per output channel (module docs; shapes as
/// [`add_periodic_border`]). Differentiable in `main`, `x`, `kernel` and `bias`. The fused
/// CPU op where [`crate::ops::fused_cpu`] allows it, [`periodic_border_composite`]
/// elsewhere.
pub fn periodic_border_sum(
    main: &Tensor,
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    border_sum(main, None, x, kernel, bias, gelu)
}

/// [`periodic_border_sum`] of `spectral + main` (the end of a LocalNO block, whose `main`
/// is the merged local convolution). When no operand records gradients (inference), the
/// fused CPU op adds `spectral` in its own pass over the output, with the values of adding
/// it first (`(spectral + main) + bias`, rounded in that order); otherwise the sum is made
/// first and differentiated as usual.
pub fn periodic_border_sum_of(
    spectral: &Tensor,
    main: &Tensor,
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    let mut tensors = vec![spectral, main, x, kernel];
    tensors.extend(bias);
    let in_pass = tensors.iter().all(|t| !t.track_op())
        && spectral.shape() == main.shape()
        && spectral.dtype() == main.dtype()
        && crate::ops::fused_cpu(&tensors);
    if !in_pass {
        return periodic_border_sum(&(spectral + main)?, x, kernel, bias, gelu);
    }
    border_sum(main, Some(spectral.contiguous()?), x, kernel, bias, gelu)
}

/// [`periodic_border_sum`] with an optional untracked `addend` of `main`'s shape added in
/// the fused op's pass (the composite form adds it first).
fn border_sum(
    main: &Tensor,
    addend: Option<Tensor>,
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, kc, kh, kw) = kernel.dims4()?;
    if main.dims() != [b, o, h, w] || kc != c {
        candle_core::bail!(
            "periodic border: main {:?}, input {:?} and kernel {:?} do not fit (expected [B, O, H, W], [B, C, H, W], [O, C, kh, kw])",
            main.dims(),
            x.dims(),
            kernel.dims()
        );
    }
    if let Some(bias) = bias {
        if bias.elem_count() != o {
            candle_core::bail!(
                "periodic border: bias {:?} for {o} output channels (expected [{o}])",
                bias.dims()
            );
        }
    }
    if kh % 2 == 0 || kw % 2 == 0 || kh / 2 > h || kw / 2 > w {
        candle_core::bail!(
            "periodic border: kernel {kh}×{kw} must have odd sizes whose half-widths fit the grid {h}×{w}"
        );
    }
    let mut tensors = vec![main, x, kernel];
    tensors.extend(bias);
    if !crate::ops::fused_cpu(&tensors) {
        let main = match &addend {
            Some(a) => &(a + main)?,
            None => main,
        };
        return periodic_border_composite(main, x, kernel, bias, gelu);
    }
    let params = match bias {
        Some(bias) => Tensor::cat(&[kernel.flatten_all()?, bias.flatten_all()?], 0)?,
        None => kernel.flatten_all()?,
    };
    let mut border = Border::new((c, h, w), (o, kh, kw), (bias.is_some(), gelu));
    border.addend = addend;
    main.contiguous()?
        .apply_op3(&x.contiguous()?, &params.contiguous()?, border)
}

/// `x` padded by `half` entries on each side of axis `dim` with the entries of its other
/// end (periodic padding; `half` at most the axis length, which the callers check).
fn wrap_axis(x: &Tensor, dim: usize, half: usize) -> Result<Tensor> {
    if half == 0 {
        return Ok(x.clone());
    }
    let n = x.dim(dim)?;
    let lo = x.narrow(dim, n - half, half)?.contiguous()?;
    let hi = x.narrow(dim, 0, half)?.contiguous()?;
    Tensor::cat(&[&lo, x, &hi], dim)
}

/// [`periodic_border_sum`] from candle ops: `act(main + conv(P(x) − Z(x), K) + bias)`
/// where `P` and `Z` pad `x` by the kernel's half-widths periodically and with zeros, so
/// `P(x) − Z(x)` is zero except on the wrap-around halo and the valid convolution of it
/// is `conv_periodic(x, K) − conv_zeros(x, K)`. The fused op's specification, and what
/// every other device runs; shapes are not checked here (see [`periodic_border_sum`]).
pub fn periodic_border_composite(
    main: &Tensor,
    x: &Tensor,
    kernel: &Tensor,
    bias: Option<&Tensor>,
    gelu: bool,
) -> Result<Tensor> {
    let (_, _, kh, kw) = kernel.dims4()?;
    let x = x.contiguous()?;
    let periodic = wrap_axis(&wrap_axis(&x, 2, kh / 2)?, 3, kw / 2)?;
    let zeros = x
        .pad_with_zeros(2, kh / 2, kh / 2)?
        .pad_with_zeros(3, kw / 2, kw / 2)?;
    let halo = (periodic - zeros)?;
    let mut y = (main + halo.conv2d(kernel, 0, 1, 1, 1)?)?;
    if let Some(bias) = bias {
        y = crate::ops::channel_affine::add_channel_bias(&y, bias)?;
    }
    if gelu {
        y = crate::ops::gelu::gelu(&y)?;
    }
    Ok(y)
}

/// The positions `r·w + col` (ascending) within `ph` rows or `pw` columns of the edge of
/// an `h × w` plane, row by row: whole rows at the top and bottom, the two side strips in
/// between (built on every call, so without a division per point of the plane).
fn border_positions(h: usize, w: usize, ph: usize, pw: usize) -> Vec<usize> {
    let mut positions = Vec::new();
    for r in 0..h {
        if r < ph || r + ph >= h || 2 * pw >= w {
            positions.extend(r * w..(r + 1) * w);
        } else {
            positions.extend(r * w..r * w + pw);
            positions.extend((r + 1) * w - pw..(r + 1) * w);
        }
    }
    positions
}

/// Output channels per task of a batch-1 border product (four tasks at 32 channels).
const BORDER_BAND: usize = 8;

/// Sizes, options, and where the border positions read outside the grid.
#[derive(Debug, Clone)]
struct Border {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    bias: bool,
    gelu: bool,
    /// Output positions within the border (row-major indices into the `H·W` plane).
    positions: Vec<usize>,
    /// Every tap that reads outside the grid: (tap `i·kw + j`, column in `positions`,
    /// wrapped source index in the plane).
    halo: Vec<(usize, usize, usize)>,
    /// A contiguous tensor of `main`'s shape added to it in the forward pass; only set when
    /// no gradient flows (it is not an input of the op's graph node).
    addend: Option<Tensor>,
}

/// The backward's results on slices (`main` empty without the activation).
struct Grads<T> {
    main: Vec<T>,
    x: Vec<T>,
    params: Vec<T>,
}

impl Border {
    fn new(
        (c, h, w): (usize, usize, usize),
        (o, kh, kw): (usize, usize, usize),
        (bias, gelu): (bool, bool),
    ) -> Self {
        let (ph, pw) = (kh / 2, kw / 2);
        let positions = border_positions(h, w, ph, pw);
        let mut halo = Vec::new();
        for (q, &p) in positions.iter().enumerate() {
            let (r, col) = ((p / w) as isize, (p % w) as isize);
            for i in 0..kh {
                for j in 0..kw {
                    let sr = r + i as isize - ph as isize;
                    let sc = col + j as isize - pw as isize;
                    let outside = sr < 0 || sr >= h as isize || sc < 0 || sc >= w as isize;
                    if outside {
                        let src = sr.rem_euclid(h as isize) as usize * w
                            + sc.rem_euclid(w as isize) as usize;
                        halo.push((i * kw + j, q, src));
                    }
                }
            }
        }
        Self {
            c,
            h,
            w,
            o,
            kh,
            kw,
            bias,
            gelu,
            positions,
            halo,
            addend: None,
        }
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Rows of the border patch matrix, `C·kh·kw`.
    fn patch_rows(&self) -> usize {
        self.c * self.taps()
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Length of the flat parameter vector `[K | bias]`.
    fn n_params(&self) -> usize {
        self.o * self.patch_rows() + if self.bias { self.o } else { 0 }
    }

    /// The kernel `[O, C·kh·kw]` and the bias (zeros when there is none) in `params`.
    fn split<'a, T: PointScalar>(&self, params: &'a [T]) -> Result<(MatRef<'a, T>, Vec<T>)> {
        if params.len() != self.n_params() {
            candle_core::bail!(
                "periodic border: {} parameters, expected {}",
                params.len(),
                self.n_params()
            );
        }
        let (k, b) = params.split_at(self.o * self.patch_rows());
        let bias = if self.bias {
            b.to_vec()
        } else {
            vec![T::default(); self.o]
        };
        Ok((MatRef::row_major(k, self.o, self.patch_rows()), bias))
    }

    /// The border patch matrix `D` `[C·kh·kw, P]` of one sample `x_s` `[C, H, W]`.
    fn gather<T: PointScalar>(&self, x_s: &[T], d: &mut PoolBuf<T>) {
        let p = self.positions.len();
        d.set_len(self.patch_rows() * p);
        for (ch, rows) in d.chunks_mut((self.taps() * p).max(1)).enumerate() {
            self.gather_channel(&x_s[ch * self.plane()..][..self.plane()], rows);
        }
    }

    /// [`Self::gather`] with the channels in parallel (a batch of one, where the samples
    /// give no parallel work).
    fn gather_in_parallel<T: PointScalar>(&self, x_s: &[T], d: &mut PoolBuf<T>) {
        let p = self.positions.len();
        d.set_len(self.patch_rows() * p);
        d.par_chunks_mut((self.taps() * p).max(1))
            .enumerate()
            .for_each(|(ch, rows)| {
                self.gather_channel(&x_s[ch * self.plane()..][..self.plane()], rows)
            });
    }

    /// One channel's rows `[kh·kw, P]` of the patch matrix from its `plane`.
    fn gather_channel<T: PointScalar>(&self, plane: &[T], rows: &mut [T]) {
        let p = self.positions.len();
        rows.fill(T::default());
        for &(t, q, src) in &self.halo {
            rows[t * p + q] = plane[src];
        }
    }

    /// The adjoint of [`Self::gather`]: adds `e` `[C·kh·kw, P]` into `dx_s` `[C, H, W]`.
    fn scatter<T: PointScalar>(&self, e: &[T], dx_s: &mut [T]) {
        let p = self.positions.len();
        for ch in 0..self.c {
            let plane = &mut dx_s[ch * self.plane()..(ch + 1) * self.plane()];
            let rows = &e[ch * self.taps() * p..(ch + 1) * self.taps() * p];
            for &(t, q, src) in &self.halo {
                plane[src] += rows[t * p + q];
            }
        }
    }

    /// The pre-activation of output channel `o` of one sample into `pre`: its `main`
    /// plane plus the bias plus the border values `y_o` (`[P]`).
    fn pre_activation<T: PointScalar>(
        &self,
        (main_plane, addend_plane): (&[T], Option<&[T]>),
        bias: T,
        y_o: &[T],
        pre: &mut [T],
    ) {
        match addend_plane {
            Some(a) => {
                for ((d, &m), &a) in pre.iter_mut().zip(main_plane).zip(a) {
                    *d = (a + m) + bias;
                }
            }
            None => {
                for (d, &m) in pre.iter_mut().zip(main_plane) {
                    *d = m + bias;
                }
            }
        }
        for (&pos, &v) in self.positions.iter().zip(y_o) {
            pre[pos] += v;
        }
    }

    /// The border values `K · D` `[O, P]` of a batch of one, the product cut into bands of
    /// [`BORDER_BAND`] output channels in parallel (one sample gives the per-sample split
    /// nothing to share out). Each value is the same sum as in the whole product.
    fn border_values_in_bands<T: PointScalar>(
        &self,
        params: &[T],
        x_s: &[T],
    ) -> Result<PoolBuf<T>> {
        let (p, rows) = (self.positions.len(), self.patch_rows());
        let mut d = PoolBuf::new(0);
        self.gather_in_parallel(x_s, &mut d);
        let mut y = PoolBuf::new(0);
        y.set_len(self.o * p);
        let kernel = &params[..self.o * rows];
        y.par_chunks_mut((BORDER_BAND * p).max(1))
            .zip(kernel.par_chunks(BORDER_BAND * rows))
            .try_for_each(|(y_band, k_band)| {
                let band = k_band.len() / rows.max(1);
                gemm(
                    MatMut::row_major(y_band, band, p),
                    MatRef::row_major(k_band, band, rows),
                    MatRef::row_major(&d, rows, p),
                    false,
                    1,
                )
            })?;
        Ok(y)
    }

    /// The border values `K · D` `[O, P]` of one sample into `y` (and `D` into `d`).
    fn border_values<T: PointScalar>(
        &self,
        k: MatRef<T>,
        x_s: &[T],
        (d, y): (&mut PoolBuf<T>, &mut PoolBuf<T>),
    ) -> Result<()> {
        let p = self.positions.len();
        self.gather(x_s, d);
        y.set_len(self.o * p);
        gemm(
            MatMut::row_major(y, self.o, p),
            k,
            MatRef::row_major(d, self.patch_rows(), p),
            false,
            1,
        )
    }

    /// Forward on slices, in two parallel passes: the border values `K · D` of every
    /// sample (one product each), then the output planes of every (sample, channel) pair.
    /// The second pass is most of the work (a full plane of bias, border and GELU each), and
    /// splitting it by channel keeps every thread busy at batch 1 too.
    fn forward<T: PointScalar>(
        &self,
        (main, addend): (&[T], Option<&[T]>),
        x: &[T],
        params: &[T],
    ) -> Result<Vec<T>> {
        let (k, bias) = self.split(params)?;
        let (plane, p) = (self.plane(), self.positions.len());
        if addend.is_some_and(|a| a.len() != main.len()) {
            candle_core::bail!("periodic border: the addend's size differs from main's");
        }
        let sample = (self.c * plane).max(1);
        let borders: Vec<PoolBuf<T>> = if x.len() == sample {
            vec![self.border_values_in_bands(params, x)?]
        } else {
            x.par_chunks(sample)
                .map_init(
                    || PoolBuf::new(0),
                    |d, x_s| {
                        let mut y = PoolBuf::new(0);
                        self.border_values(k, x_s, (d, &mut y))?;
                        Ok(y)
                    },
                )
                .collect::<Result<_>>()?
        };
        let mut out: Vec<T> = Vec::with_capacity(main.len());
        out.spare_capacity_mut()
            .par_chunks_mut(plane.max(1))
            .zip(main.par_chunks(plane.max(1)))
            .enumerate()
            .for_each_init(
                || PoolBuf::new(plane),
                |pre, (i, (dst, main_plane))| {
                    let (s, o) = (i / self.o, i % self.o);
                    let y_o = &borders[s][o * p..(o + 1) * p];
                    let addend_plane = addend.map(|a| &a[i * plane..][..plane]);
                    self.pre_activation((main_plane, addend_plane), bias[o], y_o, pre);
                    if self.gelu {
                        T::gelu(pre, dst);
                    } else {
                        for (d, &v) in dst.iter_mut().zip(pre.iter()) {
                            *d = MaybeUninit::new(v);
                        }
                    }
                },
            );
        // SAFETY: the planes cover the buffer (`main.len()` elements, a whole number of
        // samples of `O` planes, checked by the caller) and every plane was written.
        unsafe { out.set_len(main.len()) };
        Ok(out)
    }

    /// Backward on slices: `∂x` and `∂[K | bias]` for the output gradient `g`, and `∂main`
    /// (`g ⊙ GELU'(pre)`) with the activation; without it `∂main` is `g` itself and
    /// `Grads::main` stays empty.
    fn backward<T: PointScalar>(
        &self,
        (main, x, params, g): (&[T], &[T], &[T], &[T]),
    ) -> Result<Grads<T>> {
        let (k, bias) = self.split(params)?;
        let (plane, p) = (self.plane(), self.positions.len());
        let batch = x.len() / (self.c * plane).max(1);
        let mut d_main = vec![T::default(); if self.gelu { main.len() } else { 0 }];
        let mut dx = vec![T::default(); x.len()];
        let dm_chunks: Vec<Option<&mut [T]>> = if self.gelu {
            d_main.chunks_mut(self.o * plane).map(Some).collect()
        } else {
            (0..batch).map(|_| None).collect()
        };
        let kt = k.t();
        let partials: Vec<Vec<T>> = dm_chunks
            .into_par_iter()
            .zip(dx.par_chunks_mut(self.c * plane))
            .zip(main.par_chunks(self.o * plane))
            .zip(
                x.par_chunks(self.c * plane)
                    .zip(g.par_chunks(self.o * plane)),
            )
            .map_init(
                || (PoolBuf::new(0), PoolBuf::new(0), PoolBuf::new(plane)),
                |(d, y, pre), (((dm_s, dx_s), main_s), (x_s, g_s))| {
                    let mut part = vec![T::default(); self.n_params()];
                    self.border_values(k, x_s, (d, y))?;
                    // `∂pre`: `g ⊙ GELU'(pre)` with the activation (the pre-activation
                    // recomputed plane by plane), else `g`.
                    let dpre: &[T] = match dm_s {
                        Some(dm_s) => {
                            for o in 0..self.o {
                                let range = o * plane..(o + 1) * plane;
                                let y_o = &y[o * p..(o + 1) * p];
                                self.pre_activation(
                                    (&main_s[range.clone()], None),
                                    bias[o],
                                    y_o,
                                    pre,
                                );
                                T::gelu_grad(pre, &g_s[range.clone()], as_uninit(&mut dm_s[range]));
                            }
                            dm_s
                        }
                        None => g_s,
                    };
                    if self.bias {
                        let bias_grad = &mut part[self.o * self.patch_rows()..];
                        for (b, row) in bias_grad.iter_mut().zip(dpre.chunks_exact(plane)) {
                            *b = lane_sum(row);
                        }
                    }
                    // `∂pre` on the border, `[O, P]`, into `y` (no longer needed).
                    for (row, dpre_plane) in y.chunks_exact_mut(p).zip(dpre.chunks_exact(plane)) {
                        for (v, &pos) in row.iter_mut().zip(&self.positions) {
                            *v = dpre_plane[pos];
                        }
                    }
                    let gb = MatRef::row_major(&y[..self.o * p], self.o, p);
                    let rows = self.patch_rows();
                    gemm(
                        MatMut::row_major(&mut part[..self.o * rows], self.o, rows),
                        gb,
                        MatRef::row_major(d, rows, p).t(),
                        false,
                        1,
                    )?;
                    // `D` is no longer needed either: `Kᵀ · ∂pre_border` into it, scattered.
                    gemm(MatMut::row_major(d, rows, p), kt, gb, false, 1)?;
                    self.scatter(d, dx_s);
                    Ok(part)
                },
            )
            .collect::<Result<_>>()?;
        let mut params_grad = vec![T::default(); self.n_params()];
        for part in &partials {
            for (t, &v) in params_grad.iter_mut().zip(part) {
                *t += v;
            }
        }
        Ok(Grads {
            main: d_main,
            x: dx,
            params: params_grad,
        })
    }

    fn check(&self, what: &str, l: &Layout, channels: usize) -> Result<usize> {
        let (b, c, h, w) = l.shape().dims4()?;
        if (c, h, w) != (channels, self.h, self.w) {
            candle_core::bail!(
                "periodic border: {what} {:?}, expected [B, {channels}, {}, {}]",
                l.dims(),
                self.h,
                self.w
            );
        }
        Ok(b)
    }
}

impl CustomOp3 for Border {
    fn name(&self) -> &'static str {
        "periodic-border"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let b = self.check("main", l1, self.o)?;
        if self.check("input", l2, self.c)? != b {
            candle_core::bail!(
                "periodic border: main {:?} and input {:?} differ in batch size",
                l1.dims(),
                l2.dims()
            );
        }
        let name = self.name();
        let addend = self.addend.as_ref().map(|a| a.storage_and_layout());
        let addend = addend.as_ref().map(|(st, l)| (&**st, *l));
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(m), CpuStorage::F32(x), CpuStorage::F32(k)) => {
                let a = match addend {
                    Some((Storage::Cpu(CpuStorage::F32(a)), l)) => Some(contiguous(name, a, l)?),
                    Some(_) => candle_core::bail!("{name}: the addend is not an f32 CPU tensor"),
                    None => None,
                };
                CpuStorage::F32(self.forward(
                    (contiguous(name, m, l1)?, a),
                    contiguous(name, x, l2)?,
                    contiguous(name, k, l3)?,
                )?)
            }
            (CpuStorage::F64(m), CpuStorage::F64(x), CpuStorage::F64(k)) => {
                let a = match addend {
                    Some((Storage::Cpu(CpuStorage::F64(a)), l)) => Some(contiguous(name, a, l)?),
                    Some(_) => candle_core::bail!("{name}: the addend is not an f64 CPU tensor"),
                    None => None,
                };
                CpuStorage::F64(self.forward(
                    (contiguous(name, m, l1)?, a),
                    contiguous(name, x, l2)?,
                    contiguous(name, k, l3)?,
                )?)
            }
            _ => candle_core::bail!(
                "{name}: expected three f32 or three f64 storages, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, Shape::from((b, self.o, self.h, self.w))))
    }

    fn bwd(
        &self,
        main: &Tensor,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (ms, ml) = main.storage_and_layout();
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = params.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let name = self.name();
        macro_rules! run {
            ($m:expr, $x:expr, $p:expr, $g:expr) => {{
                let slices = (
                    contiguous(name, $m, ml)?,
                    contiguous(name, $x, xl)?,
                    contiguous(name, $p, pl)?,
                    contiguous(name, $g, gl)?,
                );
                let r = self.backward(slices)?;
                let dev = x.device();
                (
                    if self.gelu {
                        Tensor::from_vec(r.main, ml.shape(), dev)?
                    } else {
                        grad.clone()
                    },
                    Tensor::from_vec(r.x, xl.shape(), dev)?,
                    Tensor::from_vec(r.params, pl.shape(), dev)?,
                )
            }};
        }
        let (dm, dx, dp) = match (&*ms, &*xs, &*ps, &*gs) {
            (
                Storage::Cpu(CpuStorage::F32(m)),
                Storage::Cpu(CpuStorage::F32(x)),
                Storage::Cpu(CpuStorage::F32(p)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => run!(m, x, p, g),
            (
                Storage::Cpu(CpuStorage::F64(m)),
                Storage::Cpu(CpuStorage::F64(x)),
                Storage::Cpu(CpuStorage::F64(p)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => run!(m, x, p, g),
            _ => candle_core::bail!(
                "{name}: backward expects f32 or f64 CPU tensors of one dtype, got {:?}",
                grad.dtype()
            ),
        };
        Ok((
            Some(dm),
            x.track_op().then_some(dx),
            params.track_op().then_some(dp),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for};
    use crate::layers::local::conv::{conv2d_same, PaddingMode};
    use candle_core::{DType, Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
        init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut rng_for(seed, "periodic_border"),
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    /// The border's positions, listed row by row, are the points within the half-widths
    /// of an edge, in ascending order.
    #[test]
    fn border_positions_are_the_points_near_an_edge() {
        for (h, w, ph, pw) in [
            (6, 7, 1, 1),
            (5, 4, 2, 1),
            (2, 3, 2, 3),
            (1, 1, 1, 1),
            (9, 8, 0, 2),
        ] {
            let expected: Vec<usize> = (0..h * w)
                .filter(|&p| {
                    let (r, col) = (p / w, p % w);
                    r < ph || r + ph >= h || col < pw || col + pw >= w
                })
                .collect();
            assert_eq!(
                border_positions(h, w, ph, pw),
                expected,
                "{h}×{w}, {ph}, {pw}"
            );
        }
    }

    /// Zero-padded convolution + border = periodic convolution, values and all three
    /// gradients (checked against candle's autograd through the padded-copy path), for
    /// square and oblong kernels, grids as small as the kernel's half-widths, B > 1.
    #[test]
    fn zero_padded_conv_plus_border_is_the_periodic_conv() -> Result<()> {
        let cases = [
            ([2, 3, 6, 7], [4, 3, 3, 3]),
            ([1, 2, 5, 4], [3, 2, 5, 3]),
            ([3, 1, 2, 3], [2, 1, 5, 7]),
            ([2, 2, 1, 1], [2, 2, 3, 3]),
        ];
        for (seed, (xs, ks)) in cases.into_iter().enumerate() {
            let seed = 10 * seed as u64;
            let x = Var::from_tensor(&randn(&xs, seed)?)?;
            let k = Var::from_tensor(&randn(&ks, seed + 1)?)?;
            let m = Var::from_tensor(&randn(&[xs[0], ks[0], xs[2], xs[3]], seed + 2)?)?;
            let r = randn(&[xs[0], ks[0], xs[2], xs[3]], seed + 3)?;
            let reference = (m.as_tensor()
                + conv2d_same(x.as_tensor(), k.as_tensor(), PaddingMode::Periodic, 1)?)?;
            let zero = conv2d_same(x.as_tensor(), k.as_tensor(), PaddingMode::Zeros, 1)?;
            let ours = add_periodic_border(&(m.as_tensor() + zero)?, x.as_tensor(), k.as_tensor())?;
            let scale = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(
                max_diff(&ours, &reference)? < 1e-12 * scale,
                "case {xs:?} {ks:?}"
            );
            let g_ref = (reference * &r)?.sum_all()?.backward()?;
            let g_ours = (ours * &r)?.sum_all()?.backward()?;
            for v in [&x, &k, &m] {
                let (a, b) = (g_ours.get(v), g_ref.get(v));
                let (Some(a), Some(b)) = (a, b) else {
                    candle_core::bail!("a gradient is missing");
                };
                let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                assert!(
                    max_diff(a, b)? < 1e-12 * scale.max(1.0),
                    "case {xs:?} {ks:?}"
                );
            }
        }
        Ok(())
    }

    /// The fused op equals its composite form (forced with [`crate::ops::composite_only`]):
    /// values and the gradients of `main`, `x`, the kernel and the bias, with and without
    /// bias and GELU, in f64 and f32, on odd, non-square grids and oblong kernels.
    #[test]
    fn fused_equals_the_composite_form_with_all_gradients() -> Result<()> {
        let cases = [
            ([2, 3, 7, 5], [4, 3, 3, 3]),
            ([1, 2, 5, 9], [3, 2, 5, 3]),
            ([3, 1, 2, 3], [2, 1, 5, 7]),
            ([2, 4, 11, 6], [4, 4, 3, 5]),
        ];
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 2e-5 };
            for (seed, (xs, ks)) in cases.into_iter().enumerate() {
                for (with_bias, gelu) in
                    [(false, false), (true, false), (false, true), (true, true)]
                {
                    let seed = 100 + 10 * seed as u64;
                    let var = |shape: &[usize], k: u64| -> Result<Var> {
                        Var::from_tensor(&randn(shape, seed + k)?.to_dtype(dtype)?)
                    };
                    let out = [xs[0], ks[0], xs[2], xs[3]];
                    let (x, k, m, b) =
                        (var(&xs, 0)?, var(&ks, 1)?, var(&out, 2)?, var(&[ks[0]], 3)?);
                    let r = randn(&out, seed + 4)?.to_dtype(dtype)?;
                    let bias = with_bias.then(|| b.as_tensor());
                    let run = || {
                        periodic_border_sum(m.as_tensor(), x.as_tensor(), k.as_tensor(), bias, gelu)
                    };
                    let fused = run()?;
                    let _g = crate::ops::composite_only();
                    let composite = run()?;
                    let abs_max = |t: &Tensor| -> Result<f64> {
                        t.abs()?
                            .flatten_all()?
                            .max(0)?
                            .to_dtype(DType::F64)?
                            .to_scalar::<f64>()
                    };
                    let diff = |a: &Tensor, b: &Tensor| abs_max(&(a - b)?);
                    let what = format!("{dtype:?} {xs:?} {ks:?} bias {with_bias} gelu {gelu}");
                    assert!(
                        diff(&fused, &composite)? < tol * abs_max(&composite)?.max(1.0),
                        "{what}"
                    );
                    let g_c = (composite * &r)?.sum_all()?.backward()?;
                    drop(_g);
                    let g_f = (fused * &r)?.sum_all()?.backward()?;
                    let mut vars = vec![&x, &k, &m];
                    if with_bias {
                        vars.push(&b);
                    }
                    for (i, v) in vars.into_iter().enumerate() {
                        let (Some(a), Some(e)) = (g_f.get(v), g_c.get(v)) else {
                            candle_core::bail!("{what}: gradient {i} is missing");
                        };
                        assert!(
                            diff(a, e)? < tol * abs_max(e)?.max(1.0),
                            "{what}: gradient {i}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&randn(&[2, 2, 4, 5], 1)?)?;
        let k = Var::from_tensor(&randn(&[3, 2, 3, 5], 2)?)?;
        let m = Var::from_tensor(&randn(&[2, 3, 4, 5], 3)?)?;
        let (xs, ks, ms) = (x.clone(), k.clone(), m.clone());
        let f = move || add_periodic_border(ms.as_tensor(), xs.as_tensor(), ks.as_tensor());
        let report = check_gradients(f, &[x, k, m], &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    /// With a bias and the GELU, the op is `gelu(main + periodic − zero-padded conv + b)`
    /// written with candle ops: values and all four gradients. (The reference's GELU is
    /// the crate's exact one: candle's `gelu_erf` gradient is off by about 1e-6 in f64.)
    #[test]
    fn bias_and_gelu_match_the_composite() -> Result<()> {
        for gelu in [false, true] {
            let x = Var::from_tensor(&randn(&[3, 2, 5, 6], 30)?)?;
            let k = Var::from_tensor(&randn(&[3, 2, 3, 3], 31)?)?;
            let m = Var::from_tensor(&randn(&[3, 3, 5, 6], 32)?)?;
            let b = Var::from_tensor(&randn(&[3], 33)?)?;
            let r = randn(&[3, 3, 5, 6], 34)?;
            let pre = ((m.as_tensor()
                + conv2d_same(x.as_tensor(), k.as_tensor(), PaddingMode::Periodic, 1)?)?
                - conv2d_same(x.as_tensor(), k.as_tensor(), PaddingMode::Zeros, 1)?)?
            .broadcast_add(&b.as_tensor().reshape((1, 3, 1, 1))?)?;
            let reference = if gelu {
                crate::layers::activation::gelu(&pre)?
            } else {
                pre
            };
            let ours = periodic_border_sum(
                m.as_tensor(),
                x.as_tensor(),
                k.as_tensor(),
                Some(b.as_tensor()),
                gelu,
            )?;
            assert!(max_diff(&ours, &reference)? < 1e-12, "gelu {gelu}");
            let g_ref = (reference * &r)?.sum_all()?.backward()?;
            let g_ours = (ours * &r)?.sum_all()?.backward()?;
            for v in [&x, &k, &m, &b] {
                let (Some(a), Some(e)) = (g_ours.get(v), g_ref.get(v)) else {
                    candle_core::bail!("a gradient is missing");
                };
                let scale = e.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                let diff = max_diff(a, e)?;
                assert!(
                    diff < 1e-12 * scale.max(1.0),
                    "gelu {gelu}: {diff} of {scale}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn bias_and_gelu_gradients_match_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&randn(&[2, 2, 4, 5], 40)?)?;
        let k = Var::from_tensor(&randn(&[3, 2, 3, 3], 41)?)?;
        let m = Var::from_tensor(&randn(&[2, 3, 4, 5], 42)?)?;
        let b = Var::from_tensor(&randn(&[3], 43)?)?;
        let (xs, ks, ms, bs) = (x.clone(), k.clone(), m.clone(), b.clone());
        let f = move || {
            periodic_border_sum(
                ms.as_tensor(),
                xs.as_tensor(),
                ks.as_tensor(),
                Some(bs.as_tensor()),
                true,
            )
        };
        let report = check_gradients(f, &[x, k, m, b], &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    /// With nothing tracked the spectral part is added in the op's pass, with the bits of
    /// adding it first; a batch of one (border products in bands of channels) gives each
    /// sample the bits it has in a batch of three.
    #[test]
    fn the_sum_of_two_mains_in_one_pass_equals_adding_first() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let x = randn(&[3, 4, 9, 8], 60)?.to_dtype(dtype)?;
            let k = randn(&[20, 4, 3, 3], 61)?.to_dtype(dtype)?;
            let m = randn(&[3, 20, 9, 8], 62)?.to_dtype(dtype)?;
            let s = randn(&[3, 20, 9, 8], 63)?.to_dtype(dtype)?;
            let b = randn(&[20], 64)?.to_dtype(dtype)?;
            let fused = periodic_border_sum_of(&s, &m, &x, &k, Some(&b), true)?;
            let first = periodic_border_sum(&(&s + &m)?, &x, &k, Some(&b), true)?;
            let bits = |t: &Tensor| t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>();
            assert_eq!(bits(&fused)?, bits(&first)?, "{dtype:?}");
            for i in 0..3 {
                let one = |t: &Tensor| t.narrow(0, i, 1);
                let alone =
                    periodic_border_sum_of(&one(&s)?, &one(&m)?, &one(&x)?, &k, Some(&b), true)?;
                assert_eq!(bits(&alone)?, bits(&one(&fused)?)?, "{dtype:?} sample {i}");
            }
        }
        Ok(())
    }

    /// With a tracked operand the sum is made first, so every operand gets its gradient.
    #[test]
    fn a_tracked_sum_of_two_mains_has_gradients() -> Result<()> {
        let x = randn(&[1, 2, 5, 5], 70)?;
        let k = randn(&[3, 2, 3, 3], 71)?;
        let m = randn(&[1, 3, 5, 5], 72)?;
        let s = Var::from_tensor(&randn(&[1, 3, 5, 5], 73)?)?;
        let y = periodic_border_sum_of(s.as_tensor(), &m, &x, &k, None, true)?;
        let expected = periodic_border_sum(&(s.as_tensor() + &m)?, &x, &k, None, true)?;
        assert_eq!(max_diff(&y, &expected)?, 0.0);
        let grads = y.sum_all()?.backward()?;
        assert!(grads.get(s.as_tensor()).is_some());
        Ok(())
    }

    /// Output and every gradient are the same on one thread and on several.
    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let x = Var::from_tensor(&randn(&[5, 3, 7, 6], 50)?.to_dtype(DType::F32)?)?;
        let k = Var::from_tensor(&randn(&[4, 3, 3, 3], 51)?.to_dtype(DType::F32)?)?;
        let m = Var::from_tensor(&randn(&[5, 4, 7, 6], 52)?.to_dtype(DType::F32)?)?;
        let b = Var::from_tensor(&randn(&[4], 53)?.to_dtype(DType::F32)?)?;
        let run = || {
            let y = periodic_border_sum(
                m.as_tensor(),
                x.as_tensor(),
                k.as_tensor(),
                Some(b.as_tensor()),
                true,
            )?;
            crate::cpu::point_tiles::output_and_gradients(&y, &[&x, &k, &m, &b])
        };
        assert_eq!(crate::cpu::map::single_threaded(run)?, run()?);
        Ok(())
    }

    /// Away from the border the op adds nothing.
    #[test]
    fn interior_is_untouched() -> Result<()> {
        let x = randn(&[1, 2, 7, 8], 4)?;
        let k = randn(&[2, 2, 3, 3], 5)?;
        let m = Tensor::zeros((1, 2, 7, 8), DType::F64, &Device::Cpu)?;
        let y = add_periodic_border(&m, &x, &k)?;
        let interior = y.narrow(2, 1, 5)?.narrow(3, 1, 6)?;
        assert_eq!(
            interior.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?,
            0.0
        );
        assert!(y.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()? > 0.0);
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes_and_dtypes() -> Result<()> {
        let x = randn(&[1, 2, 4, 4], 1)?;
        let m = randn(&[1, 3, 4, 4], 2)?;
        assert!(add_periodic_border(&m, &x, &randn(&[3, 2, 2, 3], 3)?).is_err());
        assert!(add_periodic_border(&m, &x, &randn(&[3, 1, 3, 3], 3)?).is_err());
        assert!(add_periodic_border(&m, &x, &randn(&[2, 2, 3, 3], 3)?).is_err());
        assert!(add_periodic_border(&m, &x, &randn(&[3, 2, 11, 3], 3)?).is_err());
        let k = randn(&[3, 2, 3, 3], 3)?;
        assert!(add_periodic_border(&m.to_dtype(DType::F32)?, &x, &k).is_err());
        assert!(add_periodic_border(&m, &x, &k).is_ok());
        Ok(())
    }
}
