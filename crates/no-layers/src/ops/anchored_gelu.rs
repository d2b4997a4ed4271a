//! The zero-anchored GELU with a learnable per-channel threshold, `σ(z) = GELU(z + b[c]) −
//! GELU(b[c])`, as one CPU op: the activation of the causal operator (`no_models::causal`),
//! which maps 0 to 0 exactly whatever `b`.
//!
//! # Why a fused op
//!
//! The composite form ([`anchored_gelu_composite`]) broadcasts `b` to the whole of `z`,
//! evaluates the anchor `GELU(b)` at every position (so that a zero `z` gives the same
//! bits twice), and its backward sums both broadcasts over the batch and the plane with
//! candle's generic strided reduction. Once the causal operator's convolution was fused
//! ([`crate::ops::causal_conv`]) those passes were the largest part of its training
//! step (candle's `Map1` reduction, the broadcast copies and zero fills: about 40 % in
//! `perf`). Here the forward is one pass per plane, the anchor is evaluated once per
//! channel for one plane, and the backward is one pass that also makes the per-plane sums
//! of the bias gradient, added in sample order so results do not depend on the thread
//! count.
//!
//! `σ(0) = 0` stays exact: the anchor plane and every `z + b` plane go through the same
//! GELU kernel over slices of the same length and alignment, so each position takes the
//! same path (vector lanes or scalar tail) for both. `f32` and `f64` on the CPU (the
//! decision is [`crate::ops::fused_cpu`]'s); elsewhere [`anchored_gelu_composite`]
//! computes the same function with candle ops: it is the op's specification.

use crate::cpu::lane_sum::lane_sum;
use crate::cpu::map::contiguous;
use crate::cpu::point_tiles::PointScalar;
use crate::cpu::scratch::PoolBuf;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::Sub;

/// `GELU(z + b[c]) − GELU(b[c])` over `z` `[B, C, ...]` with `bias` holding `C` values
/// (any shape, e.g. `[C]`). Differentiable in both. The fused CPU op where
/// [`crate::ops::fused_cpu`] allows it, [`anchored_gelu_composite`] elsewhere.
pub fn anchored_gelu(z: &Tensor, bias: &Tensor) -> Result<Tensor> {
    if z.rank() < 2 || z.dim(1)? != bias.elem_count() {
        candle_core::bail!(
            "anchored GELU: bias {:?} does not hold one value per channel of {:?}",
            bias.dims(),
            z.dims()
        );
    }
    if !crate::ops::fused_cpu(&[z, bias]) || z.elem_count() == 0 {
        return anchored_gelu_composite(z, bias);
    }
    let c = bias.elem_count();
    let plane = z.dims()[2..].iter().product::<usize>();
    z.contiguous()?.apply_op2(
        &bias.flatten_all()?.contiguous()?,
        AnchoredGelu { c, plane },
    )
}

/// [`anchored_gelu`] from candle ops: `b` broadcast over `z`, `GELU(z + b)` minus `GELU`
/// of the broadcast `b` itself (the anchor evaluated at the same positions). The fused
/// op's specification, and what every other device runs.
pub fn anchored_gelu_composite(z: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let c = bias.elem_count();
    let mut shape = vec![1; z.rank()];
    shape[1] = c;
    let b = bias.reshape(shape)?.broadcast_as(z.shape())?;
    let shifted = crate::ops::gelu::gelu(&(z + &b)?)?;
    let anchor = crate::ops::gelu::gelu(&b.contiguous()?)?;
    shifted - anchor
}

/// The fused op: channels and plane size (elements per channel and sample).
#[derive(Debug, Clone, Copy)]
struct AnchoredGelu {
    c: usize,
    plane: usize,
}

/// `dst[i] = src[i] + v`.
fn shift_into<T: PointScalar>(src: &[T], v: T, dst: &mut [T]) {
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = s + v;
    }
}

impl AnchoredGelu {
    /// `GELU(b[c])` over a whole plane, channel by channel: `[C, plane]`.
    fn anchors<T: PointScalar>(&self, bias: &[T]) -> Vec<T> {
        let mut anchors = vec![T::default(); self.c * self.plane];
        let mut constant = PoolBuf::new(self.plane);
        for (dst, &b) in anchors.chunks_exact_mut(self.plane).zip(bias) {
            constant.fill(b);
            T::gelu(&constant, crate::cpu::point_tiles::as_uninit(dst));
        }
        anchors
    }

    fn forward<T: PointScalar + Sub<Output = T>>(&self, z: &[T], bias: &[T]) -> Vec<T> {
        let anchors = self.anchors(bias);
        let mut out: Vec<T> = Vec::with_capacity(z.len());
        out.spare_capacity_mut()[..z.len()]
            .par_chunks_mut(self.plane)
            .zip(z.par_chunks(self.plane))
            .enumerate()
            .for_each_init(
                || (PoolBuf::new(self.plane), PoolBuf::new(self.plane)),
                |(u, v), (i, (dst, z_p))| {
                    let ch = i % self.c;
                    shift_into(z_p, bias[ch], u);
                    T::gelu(u, crate::cpu::point_tiles::as_uninit(v));
                    let anchor = &anchors[ch * self.plane..][..self.plane];
                    for ((d, &v), &a) in dst.iter_mut().zip(v.iter()).zip(anchor) {
                        *d = MaybeUninit::new(v - a);
                    }
                },
            );
        // SAFETY: the planes cover the `z.len()` elements and every one was written.
        unsafe { out.set_len(z.len()) };
        out
    }

    /// `∂z = g ⊙ GELU'(z + b)` and `∂b[c] = Σ ∂z − GELU'(b[c])·Σ g` over the channel's
    /// planes, summed plane by plane in sample order.
    fn backward<T: PointScalar + Sub<Output = T>>(
        &self,
        (z, bias, g): (&[T], &[T], &[T]),
    ) -> (Vec<T>, Vec<T>) {
        let mut dz = vec![T::default(); z.len()];
        let sums: Vec<(T, T)> = dz
            .par_chunks_mut(self.plane)
            .zip(z.par_chunks(self.plane))
            .zip(g.par_chunks(self.plane))
            .enumerate()
            .map_init(
                || PoolBuf::new(self.plane),
                |u, (i, ((dz_p, z_p), g_p))| {
                    shift_into(z_p, bias[i % self.c], u);
                    T::gelu_grad(u, g_p, crate::cpu::point_tiles::as_uninit(dz_p));
                    (lane_sum(dz_p), lane_sum(g_p))
                },
            )
            .collect();
        let mut slope = vec![T::default(); self.c];
        T::gelu_grad(
            bias,
            &vec![T::ONE; self.c],
            crate::cpu::point_tiles::as_uninit(&mut slope),
        );
        let mut sum_dz = vec![T::default(); self.c];
        let mut sum_g = vec![T::default(); self.c];
        for (i, &(a, b)) in sums.iter().enumerate() {
            sum_dz[i % self.c] += a;
            sum_g[i % self.c] += b;
        }
        let db = (0..self.c)
            .map(|ch| sum_dz[ch] - slope[ch] * sum_g[ch])
            .collect();
        (dz, db)
    }

    fn check(&self, l: &Layout) -> Result<()> {
        let dims = l.dims();
        if dims.len() < 2 || dims[1] != self.c || dims[2..].iter().product::<usize>() != self.plane
        {
            candle_core::bail!(
                "anchored GELU: input {:?}, expected [B, {}, ...] with planes of {}",
                dims,
                self.c,
                self.plane
            );
        }
        Ok(())
    }
}

impl CustomOp2 for AnchoredGelu {
    fn name(&self) -> &'static str {
        "anchored-gelu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.check(l1)?;
        if l2.shape().elem_count() != self.c {
            candle_core::bail!(
                "anchored GELU: bias {:?} for {} channels",
                l2.dims(),
                self.c
            );
        }
        let name = self.name();
        let out = match (s1, s2) {
            (CpuStorage::F32(z), CpuStorage::F32(b)) => {
                CpuStorage::F32(self.forward(contiguous(name, z, l1)?, contiguous(name, b, l2)?))
            }
            (CpuStorage::F64(z), CpuStorage::F64(b)) => {
                CpuStorage::F64(self.forward(contiguous(name, z, l1)?, contiguous(name, b, l2)?))
            }
            _ => candle_core::bail!(
                "{name}: expected two f32 or two f64 storages, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, l1.shape().clone()))
    }

    fn bwd(
        &self,
        z: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (zs, zl) = z.storage_and_layout();
        let (bs, bl) = bias.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        if gl.dims() != zl.dims() {
            candle_core::bail!(
                "anchored GELU: gradient {:?} for input {:?}",
                gl.dims(),
                zl.dims()
            );
        }
        let name = self.name();
        macro_rules! run {
            ($z:expr, $b:expr, $g:expr) => {{
                let (dz, db) = self.backward((
                    contiguous(name, $z, zl)?,
                    contiguous(name, $b, bl)?,
                    contiguous(name, $g, gl)?,
                ));
                let dev = z.device();
                (
                    Tensor::from_vec(dz, zl.shape(), dev)?,
                    Tensor::from_vec(db, bl.shape(), dev)?,
                )
            }};
        }
        let (dz, db) = match (&*zs, &*bs, &*gs) {
            (
                Storage::Cpu(CpuStorage::F32(z)),
                Storage::Cpu(CpuStorage::F32(b)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => run!(z, b, g),
            (
                Storage::Cpu(CpuStorage::F64(z)),
                Storage::Cpu(CpuStorage::F64(b)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => run!(z, b, g),
            _ => candle_core::bail!(
                "{name}: backward expects f32 or f64 CPU tensors of one dtype, got {:?}",
                grad.dtype()
            ),
        };
        Ok((z.track_op().then_some(dz), bias.track_op().then_some(db)))
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
            &mut rng_for(seed, "anchored_gelu"),
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

    /// The fused op equals its composite form (forced with [`crate::ops::composite_only`]):
    /// values and both gradients, in f64 and f32, on planes whose length is and is not a
    /// multiple of the vector width.
    #[test]
    fn fused_equals_the_composite_form_with_all_gradients() -> Result<()> {
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            for (seed, shape) in [
                vec![2, 3, 7, 5],
                vec![3, 4, 8, 8],
                vec![1, 5, 11],
                vec![4, 2, 3, 1],
            ]
            .into_iter()
            .enumerate()
            {
                let seed = 10 * seed as u64;
                let z = Var::from_tensor(&randn(&shape, seed, dtype)?)?;
                let b = Var::from_tensor(&randn(&[shape[1]], seed + 1, dtype)?)?;
                let r = randn(&shape, seed + 2, dtype)?;
                let fused = anchored_gelu(z.as_tensor(), b.as_tensor())?;
                let guard = crate::ops::composite_only();
                let composite = anchored_gelu(z.as_tensor(), b.as_tensor())?;
                let g_c = (&composite * &r)?.sum_all()?.backward()?;
                drop(guard);
                let g_f = (&fused * &r)?.sum_all()?.backward()?;
                let what = format!("{dtype:?} {shape:?}");
                let diff = abs_max(&(&fused - &composite)?)?;
                assert!(diff < tol * abs_max(&composite)?.max(1.0), "{what}: {diff}");
                for (name, v) in [("input", &z), ("bias", &b)] {
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

    /// A zero input maps to exactly zero, whatever the bias, in both dtypes.
    #[test]
    fn zero_maps_to_zero_exactly() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            let z = Tensor::zeros((3, 6, 7, 13), dtype, &candle_core::Device::Cpu)?;
            let b = (randn(&[6], 3, dtype)? * 3.0)?;
            assert_eq!(abs_max(&anchored_gelu(&z, &b)?)?, 0.0, "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let z = Var::from_tensor(&randn(&[2, 3, 4, 5], 20, DType::F64)?)?;
        let b = Var::from_tensor(&randn(&[3], 21, DType::F64)?)?;
        let (zv, bv) = (z.clone(), b.clone());
        let f = move || anchored_gelu(zv.as_tensor(), bv.as_tensor());
        let report = check_gradients(f, &[z, b], &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    /// Output and both gradients are the same on one thread and on several.
    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let z = Var::from_tensor(&randn(&[6, 5, 17, 19], 30, DType::F32)?)?;
        let b = Var::from_tensor(&randn(&[5], 31, DType::F32)?)?;
        let run = || {
            let y = anchored_gelu(z.as_tensor(), b.as_tensor())?;
            crate::cpu::point_tiles::output_and_gradients(&y, &[&z, &b])
        };
        assert_eq!(crate::cpu::map::single_threaded(run)?, run()?);
        Ok(())
    }

    #[test]
    fn rejects_a_bias_of_the_wrong_size() -> Result<()> {
        let z = randn(&[2, 3, 4], 1, DType::F32)?;
        assert!(anchored_gelu(&z, &randn(&[4], 2, DType::F32)?).is_err());
        assert!(anchored_gelu(&z, &randn(&[3], 2, DType::F64)?).is_err());
        Ok(())
    }
}
