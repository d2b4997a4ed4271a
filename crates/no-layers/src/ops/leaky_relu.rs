//! Leaky ReLU (and ReLU) as one fused CPU kernel, forward and backward.
//!
//! Written with candle's ops, `max(x,0) + slope·min(x,0)` costs five passes over memory
//! forward and more backward; CNO applies it on the 2×-upsampled grid (four times the
//! activations) after every convolution, where those passes dominated. Here the forward
//! is one pass and the backward one pass, `grad·(1 if x > 0 else slope)` (PyTorch's
//! convention at 0). [`crate::ops::relu::relu`] runs the same op with slope 0 and candle's
//! convention at 0 (gradient passed where `x ≥ 0`). `f32` and `f64` on the CPU; elsewhere
//! the candle formula.

use crate::cpu::map::{binary_storage, select_f32, select_f64, unary_storage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

/// `x` where `x > 0`, `slope·x` elsewhere; differentiable through candle's autograd.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> Result<Tensor> {
    rectifier(x, negative_slope, AtZero::Slope)
}

/// The derivative a rectifier takes at exactly `x = 0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AtZero {
    /// The slope (PyTorch's convention).
    Slope,
    /// 1 (candle's `relu`).
    One,
}

/// `x` where `x > 0`, `slope·x` elsewhere (exactly 0 there when `slope` is 0), with the
/// derivative at 0 given by `at_zero`.
pub(crate) fn rectifier(x: &Tensor, slope: f64, at_zero: AtZero) -> Result<Tensor> {
    if crate::ops::fused_cpu(&[x]) {
        x.contiguous()?.apply_op1(LeakyRelu { slope, at_zero })
    } else if slope == 0.0 && at_zero == AtZero::One {
        x.relu()
    } else {
        let zeros = x.zeros_like()?;
        x.maximum(&zeros)? + (x.minimum(&zeros)? * slope)?
    }
}

/// The forward op.
#[derive(Debug, Clone, Copy)]
struct LeakyRelu {
    slope: f64,
    at_zero: AtZero,
}

/// The backward op: `(x, g) ↦ g` where `x > 0` (or `x ≥ 0`, see [`AtZero`]), `slope·g`
/// elsewhere.
#[derive(Debug, Clone, Copy)]
struct LeakyReluGrad {
    slope: f64,
    at_zero: AtZero,
}

impl CustomOp1 for LeakyRelu {
    fn name(&self) -> &'static str {
        "leaky-relu-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (a32, a64) = (self.slope as f32, self.slope);
        // With slope 0 the negative side is exactly 0 (not `0·x`, which is NaN at −∞).
        // Branch-free (bit masks, non-short-circuit `|`/`&` below): a branch in these loops
        // keeps them scalar (measured: the DeepONet-CNN step 10 ms slower).
        let zero_slope = self.slope == 0.0;
        unary_storage(
            self.name(),
            s,
            l,
            |s, d| {
                for (d, &x) in d.iter_mut().zip(s) {
                    let negative = select_f32(zero_slope, 0.0, a32 * x);
                    d.write(select_f32(x > 0.0, x, negative));
                }
            },
            |s, d| {
                for (d, &x) in d.iter_mut().zip(s) {
                    let negative = select_f64(zero_slope, 0.0, a64 * x);
                    d.write(select_f64(x > 0.0, x, negative));
                }
            },
        )
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        let op = LeakyReluGrad {
            slope: self.slope,
            at_zero: self.at_zero,
        };
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&g, &op)?))
    }
}

impl CustomOp2 for LeakyReluGrad {
    fn name(&self) -> &'static str {
        "leaky-relu-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a32, a64) = (self.slope as f32, self.slope);
        let one_at_zero = self.at_zero == AtZero::One;
        binary_storage(
            self.name(),
            (s1, l1),
            (s2, l2),
            |x, g, d| {
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                    let positive = (x > 0.0) | (one_at_zero & (x == 0.0));
                    d.write(select_f32(positive, g, a32 * g));
                }
            },
            |x, g, d| {
                for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
                    let positive = (x > 0.0) | (one_at_zero & (x == 0.0));
                    d.write(select_f64(positive, g, a64 * g));
                }
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use candle_core::{DType, Device, Var};

    #[test]
    fn values_match_the_definition_in_both_dtypes() -> Result<()> {
        let xs = [-3.0f64, -0.5, 0.0, 0.25, 2.0];
        let want: Vec<f64> = xs
            .iter()
            .map(|&x| if x > 0.0 { x } else { 0.2 * x })
            .collect();
        let x = Tensor::new(&xs, &Device::Cpu)?;
        assert_eq!(leaky_relu(&x, 0.2)?.to_vec1::<f64>()?, want);
        let got = leaky_relu(&x.to_dtype(DType::F32)?, 0.2)?.to_vec1::<f32>()?;
        for (g, w) in got.iter().zip(&want) {
            assert!((*g as f64 - w).abs() < 1e-7, "{g} vs {w}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // Points away from 0, where the function has a kink; a transposed (strided) input.
        let x = Var::from_tensor(&Tensor::new(
            &[[-2.1f64, -0.7, -0.1], [0.2, 0.9, 3.3]],
            &Device::Cpu,
        )?)?;
        let w = Tensor::new(&[[0.3f64, -1.1], [0.7, 0.4], [-0.5, 1.3]], &Device::Cpu)?;
        let xs = x.clone();
        let r = check_gradients(
            move || (leaky_relu(&xs.as_tensor().t()?, 0.01)? * &w)?.sum_all(),
            std::slice::from_ref(&x),
            &GradCheckConfig::default(),
        )?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }

    #[test]
    fn gradient_at_zero_is_the_slope_as_in_pytorch() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[0.0f64, 1.0, -1.0], &Device::Cpu)?)?;
        let grads = leaky_relu(x.as_tensor(), 0.1)?.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
        assert_eq!(g.to_vec1::<f64>()?, vec![0.1, 1.0, 0.1]);
        Ok(())
    }
}
