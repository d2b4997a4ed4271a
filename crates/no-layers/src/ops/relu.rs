//! ReLU as one fused CPU kernel, forward and backward, with candle's derivative at 0.
//!
//! candle's `relu` backward builds the mask `x ≥ 0` with its generic comparison (a `u8`
//! tensor, element by element), converts it to the float dtype and multiplies: three
//! passes and three allocations, 5–6 % of a DeepONet-CNN training step on its
//! convolutional feature maps. Here it is the fused rectifier of [`crate::ops::leaky_relu`]
//! with slope 0: one pass forward, one pass backward, `grad` where `x ≥ 0` and 0 elsewhere,
//! the same values as candle's rule, including at `x = 0` (PyTorch passes no gradient
//! there; the models keep candle's convention so that their training runs are unchanged).
//! `f32` and `f64` on the CPU; candle's `relu` elsewhere. Element-wise, so results do not
//! depend on the thread count.

use crate::ops::leaky_relu::{rectifier, AtZero};
use candle_core::{Result, Tensor};

/// `max(x, 0)`, differentiable through candle's autograd (gradient passed where `x ≥ 0`).
pub fn relu(x: &Tensor) -> Result<Tensor> {
    rectifier(x, 0.0, AtZero::One)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::elementwise_checks;
    use candle_core::{DType, Device, Var};

    /// Values and gradients equal candle's `relu` exactly (at 0, ±0 and ±∞ included), in
    /// both dtypes, on a strided input. (candle's gradient is analytic, so this also checks
    /// the gradient against the definition away from the kink.)
    #[test]
    fn values_and_gradients_equal_candles() -> Result<()> {
        let xs = [
            -3.0f64,
            -0.5,
            -0.0,
            0.0,
            1e-30,
            0.25,
            2.0,
            -1e-30,
            f64::NEG_INFINITY,
            f64::INFINITY,
        ];
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
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        elementwise_checks::result_does_not_depend_on_the_thread_count(relu, 4.0)
    }
}
