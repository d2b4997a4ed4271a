//! ReLU as one fused CPU kernel, forward and backward, with candle's derivative at 0.
//!
//! candle's `relu` backward builds the mask `x ≥ 0` with its generic comparison (a `u8`
//! tensor, element by element), converts it to the float dtype and multiplies: three
//! passes and three allocations, 5–6 % of a DeepONet-CNN training step on its
//! convolutional feature maps. Here the forward is one pass and the backward one pass,
//! `grad` where `x ≥ 0` and 0 elsewhere: the same values as candle's rule, including at
//! `x = 0` (PyTorch passes no gradient there; the models keep candle's convention so that
//! their training runs are unchanged). `f32` and `f64` on the CPU; candle's `relu`
//! elsewhere. Element-wise, so results do not depend on the thread count.

use crate::cpu_map::{binary_storage, select_f32, select_f64, unary_storage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};

/// `max(x, 0)`, differentiable through candle's autograd (gradient passed where `x ≥ 0`).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F64) {
        x.contiguous()?.apply_op1(Relu)
    } else {
        x.relu()
    }
}

/// The forward op.
#[derive(Debug, Clone, Copy)]
struct Relu;

/// The backward op: `(x, g) ↦ g` where `x ≥ 0`, 0 elsewhere.
#[derive(Debug, Clone, Copy)]
struct ReluGrad;

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "relu-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unary_storage(
            self.name(),
            s,
            l,
            |s, d| {
                for (d, &x) in d.iter_mut().zip(s) {
                    d.write(select_f32(x > 0.0, x, 0.0));
                }
            },
            |s, d| {
                for (d, &x) in d.iter_mut().zip(s) {
                    d.write(select_f64(x > 0.0, x, 0.0));
                }
            },
        )
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&g, &ReluGrad)?))
    }
}

impl CustomOp2 for ReluGrad {
    fn name(&self) -> &'static str {
        "relu-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary_storage(
            self.name(),
            (s1, l1),
            (s2, l2),
            |x, g, d| {
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                    d.write(select_f32(x >= 0.0, g, 0.0));
                }
            },
            |x, g, d| {
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                    d.write(select_f64(x >= 0.0, g, 0.0));
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu_map::elementwise_checks;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use candle_core::{Device, Var};

    /// Values and gradients equal candle's `relu` exactly (at 0 and ±0 included), in both
    /// dtypes, on a strided input.
    #[test]
    fn values_and_gradients_equal_candles() -> Result<()> {
        let xs = [-3.0f64, -0.5, -0.0, 0.0, 1e-30, 0.25, 2.0, -1e-30];
        for dtype in [DType::F32, DType::F64] {
            let base = Tensor::new(&xs, &Device::Cpu)?.to_dtype(dtype)?;
            let x = Var::from_tensor(&Tensor::stack(&[&base, &base], 1)?)?;
            let weights = Tensor::new(&[1.5f64, -0.5], &Device::Cpu)?.to_dtype(dtype)?;
            let run = |f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<(Vec<f64>, Vec<f64>)> {
                let y = f(&x.as_tensor().t()?)?;
                let loss = y.t()?.broadcast_mul(&weights)?.sum_all()?;
                let grads = loss.backward()?;
                let g = grads
                    .get(x.as_tensor())
                    .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
                Ok((
                    y.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?,
                    g.flatten_all()?.to_dtype(DType::F64)?.to_vec1()?,
                ))
            };
            assert_eq!(run(&relu)?, run(&|t| t.relu())?, "{dtype:?}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // Points away from the kink at 0; a transposed (strided) input.
        let x = Var::from_tensor(&Tensor::new(
            &[[-2.1f64, -0.7, -0.1], [0.2, 0.9, 3.3]],
            &Device::Cpu,
        )?)?;
        let w = Tensor::new(&[[0.3f64, -1.1], [0.7, 0.4], [-0.5, 1.3]], &Device::Cpu)?;
        let xs = x.clone();
        let r = check_gradients(
            move || (relu(&xs.as_tensor().t()?)? * &w)?.sum_all(),
            std::slice::from_ref(&x),
            &GradCheckConfig::default(),
        )?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        elementwise_checks::result_does_not_depend_on_the_thread_count(relu, 4.0)
    }
}
