//! The mean squared error `mean((pred − target)²)` as one fused CPU op, forward and
//! backward.
//!
//! Written with candle's ops (`(pred − target).sqr().mean_all()`), the loss is three nodes.
//! Its backward starts from the scalar gradient broadcast to the prediction's shape, which
//! the gradient store makes contiguous with candle's strided copy, then multiplies, scales
//! and negates it in three more passes: on a batch of 32 DeepONet outputs (640,000 values)
//! that was about 1 ms of serial work per training step, an eighth of a POD-DeepONet step.
//! Here the forward is one reduction and the backward one pass,
//! `∂pred = (2·g/n)·(pred − target)` (and its negation for a tracked target).
//!
//! The reduction sums fixed chunks of 32,768 squares in `f64`, then the chunk sums in
//! order, so the loss does not depend on the thread count. `f32` and `f64` on the CPU;
//! elsewhere the candle formula.

use crate::cpu::map::{binary_storage, contiguous, CHUNK};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `mean((pred − target)²)` over every element, as a scalar tensor; differentiable in both
/// arguments through candle's autograd (PyTorch's `F.mse_loss` with its default mean
/// reduction). Errors when the shapes differ or the tensors are empty.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use no_layers::ops::mse::mse_loss;
///
/// let pred = Tensor::new(&[1.0f32, 2.0, 4.0], &Device::Cpu)?;
/// let target = Tensor::new(&[1.0f32, 0.0, 1.0], &Device::Cpu)?;
/// // (0 + 4 + 9) / 3
/// let loss = mse_loss(&pred, &target)?.to_scalar::<f32>()?;
/// assert!((loss - 13.0 / 3.0).abs() < 1e-6);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn mse_loss(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() {
        candle_core::bail!(
            "mse_loss: prediction {:?} and target {:?} must have the same shape",
            pred.dims(),
            target.dims()
        );
    }
    if pred.elem_count() == 0 {
        candle_core::bail!(
            "mse_loss: the tensors {:?} are empty, the mean is undefined",
            pred.dims()
        );
    }
    if crate::ops::fused_cpu(&[pred, target]) {
        pred.contiguous()?.apply_op2(&target.contiguous()?, MseLoss)
    } else {
        (pred - target)?.sqr()?.mean_all()
    }
}

/// The forward op: `(pred, target) ↦ mean((pred − target)²)`.
#[derive(Debug, Clone, Copy)]
struct MseLoss;

/// The backward op: `(pred, target) ↦ factor·(pred − target)`, `factor = 2·g/n`.
#[derive(Debug, Clone, Copy)]
struct MseLossGrad {
    factor: f64,
}

/// `Σ (a − b)²` in `f64`: chunks of [`CHUNK`] values summed in parallel, the chunk sums added in
/// chunk order (the same order whatever the thread count).
fn squared_distance<T: Copy + Into<f64> + Send + Sync>(a: &[T], b: &[T]) -> f64 {
    let partials: Vec<f64> = a
        .par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| {
            a.iter()
                .zip(b)
                .map(|(&x, &y)| {
                    let d = x.into() - y.into();
                    d * d
                })
                .sum::<f64>()
        })
        .collect();
    partials.iter().sum()
}

impl CustomOp2 for MseLoss {
    fn name(&self) -> &'static str {
        "mse-loss-fused"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = self.name();
        if l1.shape() != l2.shape() {
            candle_core::bail!("{op}: inputs {:?} and {:?} differ", l1.dims(), l2.dims());
        }
        let n = l1.shape().elem_count().max(1) as f64;
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => {
                let sum = squared_distance(contiguous(op, a, l1)?, contiguous(op, b, l2)?);
                CpuStorage::F32(vec![(sum / n) as f32])
            }
            (CpuStorage::F64(a), CpuStorage::F64(b)) => {
                let sum = squared_distance(contiguous(op, a, l1)?, contiguous(op, b, l2)?);
                CpuStorage::F64(vec![sum / n])
            }
            _ => candle_core::bail!("{op}: both inputs must be f32 or both f64"),
        };
        Ok((out, Shape::from(())))
    }

    fn bwd(
        &self,
        pred: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let factor = 2.0 * g / pred.elem_count().max(1) as f64;
        let d_pred = pred.apply_op2_no_bwd(target, &MseLossGrad { factor })?;
        // A target that is neither a variable nor computed from one (the data) needs none.
        let d_target = if target.track_op() {
            Some(d_pred.neg()?)
        } else {
            None
        };
        Ok((Some(d_pred), d_target))
    }
}

impl CustomOp2 for MseLossGrad {
    fn name(&self) -> &'static str {
        "mse-loss-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (f32_factor, f64_factor) = (self.factor as f32, self.factor);
        binary_storage(
            self.name(),
            (s1, l1),
            (s2, l2),
            |p, t, d| {
                for ((d, &p), &t) in d.iter_mut().zip(p).zip(t) {
                    d.write(f32_factor * (p - t));
                }
            },
            |p, t, d| {
                for ((d, &p), &t) in d.iter_mut().zip(p).zip(t) {
                    d.write(f64_factor * (p - t));
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::ops::composite_only;
    use candle_core::{Device, Var};

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 + seed) * 0.731).sin()).collect()
    }

    #[test]
    fn matches_the_candle_formula_in_both_dtypes() -> Result<()> {
        // More than one chunk, and a length that is not a multiple of it.
        let n = 2 * CHUNK + 1234;
        let p = Tensor::from_vec(values(n, 0.3), (2, n / 2), &Device::Cpu)?;
        let t = Tensor::from_vec(values(n, 1.9), (2, n / 2), &Device::Cpu)?;
        let want = (&p - &t)?.sqr()?.mean_all()?.to_scalar::<f64>()?;
        let got = mse_loss(&p, &t)?.to_scalar::<f64>()?;
        assert!((got - want).abs() <= 1e-13 * want, "{got} vs {want}");
        let (p32, t32) = (p.to_dtype(DType::F32)?, t.to_dtype(DType::F32)?);
        let got32 = mse_loss(&p32, &t32)?.to_scalar::<f32>()? as f64;
        assert!((got32 - want).abs() <= 1e-6 * want, "{got32} vs {want}");
        let composite = {
            let _guard = composite_only();
            mse_loss(&p32, &t32)?.to_scalar::<f32>()? as f64
        };
        assert!(
            (composite - want).abs() <= 1e-5 * want,
            "{composite} vs {want}"
        );
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences_in_both_arguments() -> Result<()> {
        let dev = Device::Cpu;
        let p = Var::from_tensor(&Tensor::from_vec(values(12, 0.1), (3, 4), &dev)?)?;
        let t = Var::from_tensor(&Tensor::from_vec(values(12, 5.0), (3, 4), &dev)?)?;
        let (ps, ts) = (p.clone(), t.clone());
        // A transposed (strided) prediction, and the loss composed with another op.
        let r = check_gradients(
            move || mse_loss(&ps.as_tensor().t()?, &ts.as_tensor().t()?)?.sqr(),
            &[p, t],
            &GradCheckConfig::default(),
        )?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }

    #[test]
    fn gradient_matches_the_candle_formula_in_f32() -> Result<()> {
        let n = CHUNK + 77;
        let p = Var::from_tensor(
            &Tensor::from_vec(values(n, 0.7), n, &Device::Cpu)?.to_dtype(DType::F32)?,
        )?;
        let t = Tensor::from_vec(values(n, 2.2), n, &Device::Cpu)?.to_dtype(DType::F32)?;
        let fused = mse_loss(p.as_tensor(), &t)?.backward()?;
        let composite = {
            let _guard = composite_only();
            mse_loss(p.as_tensor(), &t)?.backward()?
        };
        let grad = |g: &candle_core::backprop::GradStore| -> Result<Vec<f32>> {
            g.get(p.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?
                .to_vec1::<f32>()
        };
        for (a, b) in grad(&fused)?.iter().zip(grad(&composite)?) {
            assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
        }
        // The data target gets no gradient.
        assert!(fused.get(&t).is_none());
        Ok(())
    }

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let n = 5 * CHUNK + 3;
        let p = Tensor::from_vec(values(n, 0.2), n, &Device::Cpu)?.to_dtype(DType::F32)?;
        let t = Tensor::from_vec(values(n, 3.1), n, &Device::Cpu)?.to_dtype(DType::F32)?;
        let run = |threads: usize| -> Result<u32> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            pool.install(|| Ok(mse_loss(&p, &t)?.to_scalar::<f32>()?.to_bits()))
        };
        assert_eq!(run(1)?, run(3)?);
        Ok(())
    }

    #[test]
    fn bad_shapes_and_empty_tensors_are_errors() -> Result<()> {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev)?;
        let b = Tensor::zeros((3, 2), DType::F32, &dev)?;
        let e = mse_loss(&a, &b).unwrap_err().to_string();
        assert!(e.contains("same shape"), "{e}");
        let empty = Tensor::zeros((0, 3), DType::F32, &dev)?;
        let e = mse_loss(&empty, &empty).unwrap_err().to_string();
        assert!(e.contains("empty"), "{e}");
        Ok(())
    }
}
