//! CNO's activation block (resize up → LeakyReLU → resize down) as one fused CPU op,
//! plane by plane.
//!
//! The composite form ([`crate::layers::cno_activation`] on other devices) multiplies by dense
//! per-axis matrices and materialises the 4× larger upsampled activation and its leaky
//! ReLU in memory: at batch 32 on 100 × 100 that was most of a CNO forward. Here each
//! `(batch, channel)` plane goes through the four separable resizes with
//! [`BandedMatrix`] (only the taps the bicubic kernel touches) and the leaky ReLU while
//! it sits in cache, and only the input and the output touch memory. The backward
//! recomputes the upsampled plane instead of storing it and applies the transposed
//! matrices in reverse order, `gx = Uₕᵀ·Uwᵀ·(σ'(s) ⊙ Dwᵀ·Dₕᵀ·g)`.
//!
//! Per plane (rows first, then the transposed plane, so every pass is a sum of contiguous
//! scaled rows): `s₁ = Uₕ·x` `[uH, W]`, `s₂ᵀ = Uw·s₁ᵀ` `[uW, uH]`, `a = σ(s₂ᵀ)`,
//! `s₃ᵀ = Dw·a` `[oW, uH]`, `y = Dₕ·s₃` `[oH, oW]`. The order of the additions is fixed, so
//! results do not depend on the thread count; they differ from the composite's by rounding
//! only (the axes are resized in the other order).

use crate::cpu::banded::{BandScalar, BandedMatrix};
use crate::cpu::map::{contiguous, write_copy};
use crate::cpu::scratch::{PoolBuf, Pooled};
use crate::cpu::transpose::Transpose;
use crate::layers::resample::{resample_matrix, ResampleKind};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::Arc;

/// The per-axis matrices of one activation shape, in both dtypes.
#[derive(Debug)]
pub(crate) struct ActivationPlan {
    /// Input plane `(H, W)`.
    input: (usize, usize),
    /// Upsampled plane `(uH, uW)`.
    up: (usize, usize),
    /// Output plane `(oH, oW)`.
    output: (usize, usize),
    slope: f64,
    f32: PlanMatrices<f32>,
    f64: PlanMatrices<f64>,
}

/// The four resizes and their transposes.
#[derive(Debug)]
struct PlanMatrices<T> {
    up_h: BandedMatrix<T>,
    up_w: BandedMatrix<T>,
    down_w: BandedMatrix<T>,
    down_h: BandedMatrix<T>,
    up_h_t: BandedMatrix<T>,
    up_w_t: BandedMatrix<T>,
    down_w_t: BandedMatrix<T>,
    down_h_t: BandedMatrix<T>,
}

impl<T: BandScalar> PlanMatrices<T> {
    fn new(
        kind: ResampleKind,
        input: (usize, usize),
        up: (usize, usize),
        output: (usize, usize),
    ) -> Self {
        let (h, w) = input;
        let (uh, uw) = up;
        let (oh, ow) = output;
        let m_up_h = resample_matrix(kind, h, uh);
        let m_up_w = resample_matrix(kind, w, uw);
        let m_down_w = resample_matrix(kind, uw, ow);
        let m_down_h = resample_matrix(kind, uh, oh);
        Self {
            up_h: BandedMatrix::from_dense(&m_up_h, uh, h),
            up_w: BandedMatrix::from_dense(&m_up_w, uw, w),
            down_w: BandedMatrix::from_dense(&m_down_w, ow, uw),
            down_h: BandedMatrix::from_dense(&m_down_h, oh, uh),
            up_h_t: BandedMatrix::transpose_of_dense(&m_up_h, uh, h),
            up_w_t: BandedMatrix::transpose_of_dense(&m_up_w, uw, w),
            down_w_t: BandedMatrix::transpose_of_dense(&m_down_w, ow, uw),
            down_h_t: BandedMatrix::transpose_of_dense(&m_down_h, oh, uh),
        }
    }
}

impl ActivationPlan {
    /// The plan of one activation: `input` → `up` → `output` planes with `kind` resizes.
    pub(crate) fn new(
        kind: ResampleKind,
        input: (usize, usize),
        up: (usize, usize),
        output: (usize, usize),
        slope: f64,
    ) -> Self {
        Self {
            input,
            up,
            output,
            slope,
            f32: PlanMatrices::new(kind, input, up, output),
            f64: PlanMatrices::new(kind, input, up, output),
        }
    }

    fn in_len(&self) -> usize {
        self.input.0 * self.input.1
    }

    fn out_len(&self) -> usize {
        self.output.0 * self.output.1
    }

    /// Scratch values one plane needs (three buffers of the largest intermediate).
    fn scratch_len(&self) -> usize {
        let (h, w) = self.input;
        let (uh, uw) = self.up;
        let (_, ow) = self.output;
        (uh * w).max(uw * uh).max(ow * uh).max(h * w)
    }
}

/// Three buffers of one worker, from the thread's pool (every pass writes a buffer before
/// reading it, so their previous contents never matter).
struct Scratch<T: Pooled> {
    a: PoolBuf<T>,
    b: PoolBuf<T>,
    c: PoolBuf<T>,
}

impl<T: BandScalar + Pooled> Scratch<T> {
    fn new(len: usize) -> Self {
        Self {
            a: PoolBuf::new(len),
            b: PoolBuf::new(len),
            c: PoolBuf::new(len),
        }
    }
}

/// `finish(s₂ᵀ)` with `s₂ᵀ = Uw·(Uₕ·x)ᵀ` `[uW, uH]` into `out`, using `tmp`: `finish`
/// is applied as each value is stored (the leaky ReLU in the forward, nothing in the
/// backward, which needs the pre-activation).
fn upsampled_t<T: BandScalar + Pooled + Transpose>(
    plan: &ActivationPlan,
    m: &PlanMatrices<T>,
    x: &[T],
    (tmp, tmp_t): (&mut [T], &mut [T]),
    out: &mut [T],
    finish: impl Fn(T) -> T + Copy,
) {
    let (_, w) = plan.input;
    let (uh, uw) = plan.up;
    let s1 = &mut tmp[..uh * w];
    m.up_h.apply_rows(x, w, s1);
    let s1_t = &mut tmp_t[..w * uh];
    T::transpose_plane(s1, uh, w, s1_t);
    m.up_w
        .apply_rows_then(s1_t, uh, &mut out[..uw * uh], finish);
}

fn forward_plane<T: BandScalar + Pooled + Transpose>(
    plan: &ActivationPlan,
    m: &PlanMatrices<T>,
    slope: T,
    x: &[T],
    y: &mut [T],
    s: &mut Scratch<T>,
) {
    let (uh, uw) = plan.up;
    let (_, ow) = plan.output;
    let leaky = move |v: T| T::leaky(v, v, slope);
    upsampled_t(plan, m, x, (&mut s.a, &mut s.b), &mut s.c, leaky);
    let act = &s.c[..uw * uh];
    let s3_t = &mut s.a[..ow * uh];
    m.down_w.apply_rows(act, uh, s3_t);
    let s3 = &mut s.b[..uh * ow];
    T::transpose_plane(s3_t, ow, uh, s3);
    m.down_h.apply_rows(s3, ow, y);
}

fn backward_plane<T: BandScalar + Pooled + Transpose>(
    plan: &ActivationPlan,
    m: &PlanMatrices<T>,
    slope: T,
    (x, g): (&[T], &[T]),
    gx: &mut [T],
    s: &mut Scratch<T>,
) {
    let (_, w) = plan.input;
    let (uh, uw) = plan.up;
    let (_, ow) = plan.output;
    // The pre-activation s₂ᵀ, recomputed, in c.
    upsampled_t(plan, m, x, (&mut s.a, &mut s.b), &mut s.c, |v| v);
    let g3 = &mut s.a[..uh * ow];
    m.down_h_t.apply_rows(g, ow, g3);
    let g3_t = &mut s.b[..ow * uh];
    T::transpose_plane(g3, uh, ow, g3_t);
    let g2_t = &mut s.a[..uw * uh];
    m.down_w_t.apply_rows(g3_t, uh, g2_t);
    for (gv, &pre) in g2_t.iter_mut().zip(&s.c[..uw * uh]) {
        // PyTorch's convention: the slope at 0.
        *gv = T::leaky(pre, *gv, slope);
    }
    let g1_t = &mut s.b[..w * uh];
    m.up_w_t.apply_rows(g2_t, uh, g1_t);
    let g1 = &mut s.c[..uh * w];
    T::transpose_plane(g1_t, w, uh, g1);
    m.up_h_t.apply_rows(g1, w, gx);
}

/// Runs `plane` on rayon's threads over the planes of `a` (`a_len` values each), the
/// matching planes of `b` if any, and output planes of `dst_len` values, one scratch per
/// worker.
fn map_planes<T: BandScalar + Pooled + Transpose>(
    plan: &ActivationPlan,
    (a, a_len): (&[T], usize),
    b: Option<(&[T], usize)>,
    dst_len: usize,
    plane: impl Fn(&[T], Option<&[T]>, &mut [T], &mut Scratch<T>) + Sync,
) -> Vec<T> {
    let n = a.len() / a_len.max(1);
    let total = n * dst_len;
    if dst_len == 0 {
        return vec![T::default(); total];
    }
    // The output is not zero-filled first (a cold pass over all of it): each plane is
    // computed into a worker's buffer, which stays in cache, and copied into place.
    let mut out = Vec::with_capacity(total);
    let scratch = plan.scratch_len();
    out.spare_capacity_mut()[..total]
        .par_chunks_mut(dst_len)
        .enumerate()
        .for_each_init(
            || (Scratch::new(scratch), PoolBuf::new(dst_len)),
            |(s, y), (p, dst)| {
                let src = &a[p * a_len..(p + 1) * a_len];
                let other = b.map(|(b, b_len)| &b[p * b_len..(p + 1) * b_len]);
                plane(src, other, y, s);
                write_copy(dst, y);
            },
        );
    // SAFETY: the chunks of `dst_len` cover `0..total`, and each was written in full from
    // the plane's buffer of `dst_len` values.
    unsafe { out.set_len(total) };
    out
}

/// The forward op on `[B, C, H, W]`.
#[derive(Debug, Clone)]
pub(crate) struct CnoActivationOp {
    pub(crate) plan: Arc<ActivationPlan>,
}

/// The backward op: `(x, g) ↦ ∂L/∂x`.
#[derive(Debug, Clone)]
struct CnoActivationGradOp {
    plan: Arc<ActivationPlan>,
}

fn check_input(op: &str, plan: &ActivationPlan, l: &Layout) -> Result<(usize, usize)> {
    match l.dims() {
        [b, c, h, w] if (*h, *w) == plan.input => Ok((*b, *c)),
        d => candle_core::bail!(
            "{op}: expected [batch, channels, {}, {}], got {d:?}",
            plan.input.0,
            plan.input.1
        ),
    }
}

impl CustomOp1 for CnoActivationOp {
    fn name(&self) -> &'static str {
        "cno-activation-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let plan = &*self.plan;
        let (b, c) = check_input(self.name(), plan, l)?;
        let (il, ol) = (plan.in_len(), plan.out_len());
        let out = match s {
            CpuStorage::F32(v) => {
                let slope = plan.slope as f32;
                CpuStorage::F32(map_planes(
                    plan,
                    (contiguous(self.name(), v, l)?, il),
                    None,
                    ol,
                    |x, _, y, s| forward_plane(plan, &plan.f32, slope, x, y, s),
                ))
            }
            CpuStorage::F64(v) => {
                let slope = plan.slope;
                CpuStorage::F64(map_planes(
                    plan,
                    (contiguous(self.name(), v, l)?, il),
                    None,
                    ol,
                    |x, _, y, s| forward_plane(plan, &plan.f64, slope, x, y, s),
                ))
            }
            other => candle_core::bail!(
                "{}: dtype {:?} not handled (f32 or f64)",
                self.name(),
                other.dtype()
            ),
        };
        Ok((out, Shape::from((b, c, plan.output.0, plan.output.1))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = CnoActivationGradOp {
            plan: self.plan.clone(),
        };
        Ok(Some(
            arg.contiguous()?
                .apply_op2_no_bwd(&grad_res.contiguous()?, &op)?,
        ))
    }
}

impl CustomOp2 for CnoActivationGradOp {
    fn name(&self) -> &'static str {
        "cno-activation-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let plan = &*self.plan;
        let (b, c) = check_input(self.name(), plan, l1)?;
        if l2.dims() != [b, c, plan.output.0, plan.output.1] {
            candle_core::bail!(
                "{}: gradient {:?} does not match the output [{b}, {c}, {}, {}]",
                self.name(),
                l2.dims(),
                plan.output.0,
                plan.output.1
            );
        }
        let (il, ol) = (plan.in_len(), plan.out_len());
        // Input plane `p` and output-gradient plane `p` give input-gradient plane `p`.
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(g)) => {
                let slope = plan.slope as f32;
                CpuStorage::F32(map_planes(
                    plan,
                    (contiguous(self.name(), x, l1)?, il),
                    Some((contiguous(self.name(), g, l2)?, ol)),
                    il,
                    |x, g, gx, s| {
                        if let Some(g) = g {
                            backward_plane(plan, &plan.f32, slope, (x, g), gx, s)
                        }
                    },
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(g)) => {
                let slope = plan.slope;
                CpuStorage::F64(map_planes(
                    plan,
                    (contiguous(self.name(), x, l1)?, il),
                    Some((contiguous(self.name(), g, l2)?, ol)),
                    il,
                    |x, g, gx, s| {
                        if let Some(g) = g {
                            backward_plane(plan, &plan.f64, slope, (x, g), gx, s)
                        }
                    },
                ))
            }
            (a, g) => candle_core::bail!(
                "{}: dtypes {:?} and {:?} not handled (both f32 or both f64)",
                self.name(),
                a.dtype(),
                g.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }
}
