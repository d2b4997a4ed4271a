//! The AdamW update as one fused CPU pass instead of thirteen tensor operations.
//!
//! Written with candle's ops, one AdamW step costs thirteen passes over each parameter,
//! each into a fresh allocation; on POD-DeepONet (2.7 M parameters, most in the branch's
//! first layer) that was a fifth of a training step. Here each element is read once and
//! written once, in place:
//!
//! ```text
//! m ← β₁m + (1−β₁)g
//! v ← β₂v + (1−β₂)g²
//! w ← w(1 − lr·λ) − s·m/(√v/√(1−β₂ᵗ) + ε),   s = lr/(1−β₁ᵗ)
//! ```
//!
//! candle's in-place ops give one mutable operand each, so the three mutable tensors are
//! reached by nesting: the op on `w` (reading `g`) runs an op on `m`, which runs an op on
//! `v`, and the innermost op holds all four slices. Every lock is on a distinct storage and
//! taken in the same order each time. Because the moments change in place, a copy of the
//! optimiser state must be a deep copy ([`super::AdamW::snapshot`]).
//!
//! Each element is computed independently, so results do not depend on the thread count.
//! `f32` and `f64` on the CPU; [`fused`] says when this applies.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

/// Elements per rayon task.
const CHUNK: usize = 1 << 14;

/// Whether the fused kernel handles these tensors: the one dispatch decision
/// ([`no_layers::ops::fused_cpu`]: all on the CPU, one float dtype, composite not forced)
/// and all contiguous.
pub(crate) fn fused(tensors: &[&Tensor]) -> bool {
    no_layers::ops::fused_cpu(tensors) && tensors.iter().all(|t| t.is_contiguous())
}

/// The constants of one AdamW step (see the module docs).
#[derive(Debug, Clone, Copy)]
pub(crate) struct AdamWUpdate {
    /// `β₁`.
    pub beta1: f64,
    /// `β₂`.
    pub beta2: f64,
    /// `1 − lr·weight_decay`.
    pub shrink: f64,
    /// `lr / (1 − β₁ᵗ)`.
    pub step_size: f64,
    /// `√(1 − β₂ᵗ)`.
    pub sqrt_bc2: f64,
    /// `ε`.
    pub eps: f64,
}

impl AdamWUpdate {
    /// Updates the parameter `w` and its moments `m`, `v` in place from the gradient `g`.
    /// `w`, `m` and `v` must be contiguous, distinct, and of `g`'s shape and dtype.
    pub(crate) fn apply(&self, w: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<()> {
        for (what, t) in [("parameter", w), ("first moment", m), ("second moment", v)] {
            if !t.is_contiguous() {
                candle_core::bail!("fused AdamW: {what} {:?} is not contiguous", t.dims());
            }
            if t.dims() != g.dims() {
                candle_core::bail!(
                    "fused AdamW: {what} has shape {:?}, the gradient {:?}",
                    t.dims(),
                    g.dims()
                );
            }
        }
        w.inplace_op2(&g.contiguous()?, &OnParam { u: *self, m, v })
    }
}

/// The contiguous element range of `l`.
fn range(l: &Layout, what: &str) -> Result<Range<usize>> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(a..b),
        None => candle_core::bail!("fused AdamW: the {what} is not contiguous ({l:?})"),
    }
}

/// Outermost op: holds `w` (mutable) and `g`, descends into `m`.
struct OnParam<'a> {
    u: AdamWUpdate,
    m: &'a Tensor,
    v: &'a Tensor,
}

impl InplaceOp2 for OnParam<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, w: &mut CpuStorage, wl: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let next = OnFirstMoment {
            u: self.u,
            w: RefCell::new(w),
            w_range: range(wl, "parameter")?,
            g,
            g_range: range(gl, "gradient")?,
            v: self.v,
        };
        self.m.inplace_op1(&next)
    }
}

/// Middle op: holds `w`, `g` and `m` (mutable), descends into `v`.
struct OnFirstMoment<'a> {
    u: AdamWUpdate,
    w: RefCell<&'a mut CpuStorage>,
    w_range: Range<usize>,
    g: &'a CpuStorage,
    g_range: Range<usize>,
    v: &'a Tensor,
}

impl InplaceOp1 for OnFirstMoment<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, m: &mut CpuStorage, ml: &Layout) -> Result<()> {
        let mut w = self.w.try_borrow_mut().map_err(|_| {
            candle_core::Error::Msg("fused AdamW: parameter storage borrowed twice".into())
        })?;
        let next = OnSecondMoment {
            u: self.u,
            w: RefCell::new(&mut **w),
            w_range: self.w_range.clone(),
            g: self.g,
            g_range: self.g_range.clone(),
            m: RefCell::new(m),
            m_range: range(ml, "first moment")?,
        };
        self.v.inplace_op1(&next)
    }
}

/// Innermost op: all four operands; runs the kernel.
struct OnSecondMoment<'a> {
    u: AdamWUpdate,
    w: RefCell<&'a mut CpuStorage>,
    w_range: Range<usize>,
    g: &'a CpuStorage,
    g_range: Range<usize>,
    m: RefCell<&'a mut CpuStorage>,
    m_range: Range<usize>,
}

impl InplaceOp1 for OnSecondMoment<'_> {
    fn name(&self) -> &'static str {
        "adamw"
    }

    fn cpu_fwd(&self, v: &mut CpuStorage, vl: &Layout) -> Result<()> {
        let twice = || candle_core::Error::Msg("fused AdamW: storage borrowed twice".into());
        let mut w = self.w.try_borrow_mut().map_err(|_| twice())?;
        let mut m = self.m.try_borrow_mut().map_err(|_| twice())?;
        let (wr, mr, vr, gr) = (
            self.w_range.clone(),
            self.m_range.clone(),
            range(vl, "second moment")?,
            self.g_range.clone(),
        );
        let u = &self.u;
        match (&mut **w, &mut **m, v, self.g) {
            (CpuStorage::F32(w), CpuStorage::F32(m), CpuStorage::F32(v), CpuStorage::F32(g)) => {
                run_f32(&mut w[wr], &mut m[mr], &mut v[vr], &g[gr], u);
            }
            (CpuStorage::F64(w), CpuStorage::F64(m), CpuStorage::F64(v), CpuStorage::F64(g)) => {
                run_f64(&mut w[wr], &mut m[mr], &mut v[vr], &g[gr], u);
            }
            (w, m, v, g) => candle_core::bail!(
                "fused AdamW: dtypes differ (parameter {:?}, moments {:?} and {:?}, gradient {:?})",
                w.dtype(),
                m.dtype(),
                v.dtype(),
                g.dtype()
            ),
        }
        Ok(())
    }
}

/// The element kernel for one float type, in a portable and an AVX2/FMA build of the same
/// loop (chosen at run time; the loop is inlined into both so that the compiler vectorises
/// it for each), and the parallel driver over chunks of `CHUNK` elements (each element is
/// independent, so chunking does not change results). `c = [β₁, 1−β₁, β₂, 1−β₂, shrink,
/// step, 1/√bc₂, ε]`.
macro_rules! adamw_chunk {
    ($t:ty, $plain:ident, $avx2:ident, $run:ident) => {
        #[inline(always)]
        fn $plain(w: &mut [$t], m: &mut [$t], v: &mut [$t], g: &[$t], c: &[$t; 8]) {
            let [b1, rest1, b2, rest2, shrink, step, inv_sqrt_bc2, eps] = *c;
            for (((w, m), v), &g) in w.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                *m = b1 * *m + rest1 * g;
                *v = b2 * *v + rest2 * (g * g);
                *w = *w * shrink - step * (*m / (v.sqrt() * inv_sqrt_bc2 + eps));
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2(w: &mut [$t], m: &mut [$t], v: &mut [$t], g: &[$t], c: &[$t; 8]) {
            $plain(w, m, v, g, c)
        }

        fn $run(w: &mut [$t], m: &mut [$t], v: &mut [$t], g: &[$t], u: &AdamWUpdate) {
            let c = [
                u.beta1 as $t,
                (1.0 - u.beta1) as $t,
                u.beta2 as $t,
                (1.0 - u.beta2) as $t,
                u.shrink as $t,
                u.step_size as $t,
                (1.0 / u.sqrt_bc2) as $t,
                u.eps as $t,
            ];
            let fast = avx2();
            w.par_chunks_mut(CHUNK)
                .zip(m.par_chunks_mut(CHUNK))
                .zip(v.par_chunks_mut(CHUNK))
                .zip(g.par_chunks(CHUNK))
                .for_each(|(((w, m), v), g)| {
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        // SAFETY: the CPU has AVX2 and FMA (checked by `avx2`).
                        unsafe { $avx2(w, m, v, g, &c) };
                        return;
                    }
                    let _ = fast;
                    $plain(w, m, v, g, &c);
                });
        }
    };
}

adamw_chunk!(f32, chunk_f32, chunk_f32_avx2, run_f32);
adamw_chunk!(f64, chunk_f64, chunk_f64_avx2, run_f64);

/// Whether the AVX2/FMA builds can run here.
fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
