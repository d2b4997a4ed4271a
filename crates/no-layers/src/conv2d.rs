//! 2-D convolution as unfold (im2col) → matrix product, with the exact adjoint (fold) as
//! the unfold's backward.
//!
//! candle 0.11's CPU `conv2d` runs at a few GFLOP/s and its backward goes through a
//! direct-loop `conv_transpose2d`: measured on the 2-core dev machine, a 3×3 convolution
//! of `[8, 16, 100, 100]` took 49 ms forward and 200 ms more backward, which made CNO's
//! training step almost all convolution. Here the patches are gathered once into a
//! `[B, C·kh·kw, Ho·Wo]` tensor (a parallel copy), the convolution is one batched GEMM
//! with the `[O, C·kh·kw]` weight (candle's matmul, whose backward is two more GEMMs),
//! and the gradient of the patches is scattered back by [`Fold`], the adjoint of the
//! gather. Every output plane of the fold is written by one task, in a fixed order, so
//! results do not depend on the thread count.
//!
//! Semantics are PyTorch's `F.conv2d` (cross-correlation, zero padding, weight
//! `[O, C, kh, kw]`), groups = dilation = 1. Other devices and dtypes use candle's
//! `conv2d`.

use crate::cpu_map::contiguous;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Cross-correlation of `x` `[B, C, H, W]` with `weight` `[O, C, kh, kw]`, zero padding
/// `padding` on every side and step `stride` on both axes: `[B, O, Ho, Wo]` with
/// `Ho = (H + 2·padding − kh)/stride + 1` (likewise `Wo`). Differentiable in both.
pub fn conv2d(x: &Tensor, weight: &Tensor, padding: usize, stride: usize) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
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
    if !(x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64)) {
        return x.conv2d(weight, padding, stride, 1, 1);
    }
    let unfold = Unfold {
        geometry: Geometry::new(c, h, w, kh, kw, padding, stride),
    };
    let g = unfold.geometry;
    let cols = x.contiguous()?.apply_op1(unfold)?;
    weight
        .reshape((o, c * kh * kw))?
        .broadcast_matmul(&cols)?
        .reshape((b, o, g.ho, g.wo))
}

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Geometry {
    c: usize,
    h: usize,
    w: usize,
    kh: usize,
    kw: usize,
    padding: usize,
    stride: usize,
    ho: usize,
    wo: usize,
}

impl Geometry {
    fn new(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        padding: usize,
        stride: usize,
    ) -> Self {
        Self {
            c,
            h,
            w,
            kh,
            kw,
            padding,
            stride,
            ho: (h + 2 * padding - kh) / stride + 1,
            wo: (w + 2 * padding - kw) / stride + 1,
        }
    }

    /// Elements of one input plane and of one patch row.
    fn plane(&self) -> usize {
        self.h * self.w
    }

    fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// The input index read by kernel offset `i` at output index `oh` (or `None` in the
    /// padding), along an axis of length `n`.
    fn source(&self, o: usize, k: usize, n: usize) -> Option<usize> {
        (o * self.stride + k)
            .checked_sub(self.padding)
            .filter(|&s| s < n)
    }

    /// The output indices `lo..hi` (of `n_out`) whose source for kernel offset `k` lies
    /// inside an axis of length `n`: `0 ≤ o·stride + k − padding < n`.
    fn inside(&self, k: usize, n: usize, n_out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.padding.saturating_sub(k).div_ceil(s).min(n_out);
        let hi = if n + self.padding > k {
            ((n + self.padding - k - 1) / s + 1).min(n_out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Gathers patches: `[B, C, H, W]` → `[B, C·kh·kw, Ho·Wo]`.
#[derive(Debug, Clone, Copy)]
struct Unfold {
    geometry: Geometry,
}

/// Scatters patches back, summing overlaps (the adjoint of [`Unfold`]).
#[derive(Debug, Clone, Copy)]
struct Fold {
    geometry: Geometry,
}

/// Fills the `kh·kw` patch rows of one input plane.
fn unfold_plane<T: Copy + Default>(g: &Geometry, plane: &[T], rows: &mut [T]) {
    let l = g.positions();
    for i in 0..g.kh {
        for j in 0..g.kw {
            let row = &mut rows[(i * g.kw + j) * l..(i * g.kw + j + 1) * l];
            let (lo, hi) = g.inside(j, g.w, g.wo);
            for oh in 0..g.ho {
                let out = &mut row[oh * g.wo..(oh + 1) * g.wo];
                let Some(y) = g.source(oh, i, g.h) else {
                    out.fill(T::default());
                    continue;
                };
                let line = &plane[y * g.w..(y + 1) * g.w];
                out[..lo].fill(T::default());
                out[hi..].fill(T::default());
                if lo < hi {
                    // The first source column; `inside` guarantees it is in range.
                    let x0 = lo * g.stride + j - g.padding;
                    let inner = &mut out[lo..hi];
                    if g.stride == 1 {
                        inner.copy_from_slice(&line[x0..x0 + inner.len()]);
                    } else {
                        for (o, &v) in inner.iter_mut().zip(line[x0..].iter().step_by(g.stride)) {
                            *o = v;
                        }
                    }
                }
            }
        }
    }
}

/// Sums the `kh·kw` patch rows of one plane back into it.
fn fold_plane<T: Copy + Default + std::ops::AddAssign>(g: &Geometry, rows: &[T], plane: &mut [T]) {
    let l = g.positions();
    plane.fill(T::default());
    for i in 0..g.kh {
        for j in 0..g.kw {
            let row = &rows[(i * g.kw + j) * l..(i * g.kw + j + 1) * l];
            let (lo, hi) = g.inside(j, g.w, g.wo);
            if lo >= hi {
                continue;
            }
            let x0 = lo * g.stride + j - g.padding;
            for oh in 0..g.ho {
                let Some(y) = g.source(oh, i, g.h) else {
                    continue;
                };
                let line = &mut plane[y * g.w..(y + 1) * g.w];
                let inner = &row[oh * g.wo + lo..oh * g.wo + hi];
                if g.stride == 1 {
                    for (d, &v) in line[x0..x0 + inner.len()].iter_mut().zip(inner) {
                        *d += v;
                    }
                } else {
                    for (d, &v) in line[x0..].iter_mut().step_by(g.stride).zip(inner) {
                        *d += v;
                    }
                }
            }
        }
    }
}

fn unfold_all<T: Copy + Default + Send + Sync>(g: &Geometry, x: &[T]) -> Vec<T> {
    let rows_per_plane = g.kh * g.kw * g.positions();
    let mut cols = vec![T::default(); x.len() / g.plane() * rows_per_plane];
    cols.par_chunks_mut(rows_per_plane)
        .zip(x.par_chunks(g.plane()))
        .for_each(|(rows, plane)| unfold_plane(g, plane, rows));
    cols
}

fn fold_all<T: Copy + Default + Send + Sync + std::ops::AddAssign>(
    g: &Geometry,
    cols: &[T],
) -> Vec<T> {
    let rows_per_plane = g.kh * g.kw * g.positions();
    let mut x = vec![T::default(); cols.len() / rows_per_plane * g.plane()];
    x.par_chunks_mut(g.plane())
        .zip(cols.par_chunks(rows_per_plane))
        .for_each(|(plane, rows)| fold_plane(g, rows, plane));
    x
}

impl CustomOp1 for Unfold {
    fn name(&self) -> &'static str {
        "conv2d-unfold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (b, c, h, w) = l.shape().dims4()?;
        if (c, h, w) != (g.c, g.h, g.w) {
            candle_core::bail!("conv2d-unfold: input {:?} does not match {g:?}", l.dims());
        }
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(unfold_all(g, contiguous(self.name(), v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(unfold_all(g, contiguous(self.name(), v, l)?)),
            other => candle_core::bail!("conv2d-unfold: dtype {:?} not handled", other.dtype()),
        };
        Ok((out, Shape::from((b, c * g.kh * g.kw, g.positions()))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let fold = Fold {
            geometry: self.geometry,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&fold)?))
    }
}

impl CustomOp1 for Fold {
    fn name(&self) -> &'static str {
        "conv2d-fold"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let (b, ck, positions) = l.shape().dims3()?;
        if ck != g.c * g.kh * g.kw || positions != g.positions() {
            candle_core::bail!("conv2d-fold: patches {:?} do not match {g:?}", l.dims());
        }
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(fold_all(g, contiguous(self.name(), v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(fold_all(g, contiguous(self.name(), v, l)?)),
            other => candle_core::bail!("conv2d-fold: dtype {:?} not handled", other.dtype()),
        };
        Ok((out, Shape::from((b, g.c, g.h, g.w))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use candle_core::{Device, Var};

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
            let ours = conv2d(&x, &wt, p, s)?;
            let reference = x.conv2d(&wt, p, s, 1, 1)?;
            assert_eq!(ours.dims(), reference.dims(), "k{k} p{p} s{s}");
            let d = max_abs_diff(&ours, &reference)?;
            assert!(d < 1e-12, "k{k} p{p} s{s}: differs by {d}");
        }
        Ok(())
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() -> Result<()> {
        // <unfold(x), y> = <x, fold(y)> for random x, y; paddings wider than some kernel
        // offsets reach (empty rows) and strides that skip the last column included.
        for (c, h, w, k, p, s) in [
            (2, 6, 5, 3, 1, 2),
            (1, 4, 2, 5, 3, 3),
            (2, 7, 9, 3, 0, 1),
            (1, 5, 6, 5, 4, 2),
            (3, 3, 4, 1, 0, 1),
        ] {
            let g = Geometry::new(c, h, w, k, k, p, s);
            let x = random(&[2, c, h, w], 3)?;
            let y = random(&[2, c * k * k, g.positions()], 4)?;
            let ux = x.apply_op1_no_bwd(&Unfold { geometry: g })?;
            let fy = y.apply_op1_no_bwd(&Fold { geometry: g })?;
            let lhs = (ux * &y)?.sum_all()?.to_scalar::<f64>()?;
            let rhs = (x * fy)?.sum_all()?.to_scalar::<f64>()?;
            assert!(
                (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&random(&[2, 2, 5, 4], 5)?)?;
        let w = Var::from_tensor(&random(&[3, 2, 3, 3], 6)?)?;
        let r = random(&[2, 3, 3, 2], 7)?;
        let (xs, ws) = (x.clone(), w.clone());
        let report = check_gradients(
            move || (conv2d(xs.as_tensor(), ws.as_tensor(), 1, 2)? * &r)?.sum_all(),
            &[x.clone(), w.clone()],
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
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

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let x = random(&[2, 4, 20, 20], 8)?.to_dtype(DType::F32)?;
        let w = Var::from_tensor(&random(&[4, 4, 3, 3], 9)?.to_dtype(DType::F32)?)?;
        let run = || -> Result<(Vec<f32>, Vec<f32>)> {
            let xv = Var::from_tensor(&x)?;
            let y = conv2d(xv.as_tensor(), w.as_tensor(), 1, 1)?;
            let grads = y.sqr()?.sum_all()?.backward()?;
            let gx = grads
                .get(xv.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no input gradient".into()))?;
            Ok((y.flatten_all()?.to_vec1()?, gx.flatten_all()?.to_vec1()?))
        };
        assert_eq!(crate::cpu_map::single_threaded(run)?, run()?);
        Ok(())
    }
}
