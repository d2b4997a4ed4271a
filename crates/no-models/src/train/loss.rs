//! The relative L2 loss of the study, differentiable (the evaluation crate reuses it).
//!
//! For each sample and output channel (v and w), `‖pred − target‖₂ / (‖target‖₂ + ε)`
//! over the space–time grid; the loss averages these over channels and samples, so both
//! fields weigh the same whatever their scale. neuraloperator's `LpLoss` sums the same
//! per-sample, per-channel ratios and its trainer divides by the sample count; averaging
//! over channels too only rescales it by `1/C`.

use candle_core::{Result, Tensor};
use serde::{Deserialize, Serialize};

/// The mean squared error `mean((pred − target)²)` (PyTorch's `F.mse_loss`), one fused
/// CPU op forward and backward; the loss of the timed training steps in `benches/` and
/// `examples/model_timing.rs`, which the PyTorch anchors time with `F.mse_loss`.
pub use no_layers::ops::mse::mse_loss;

/// Added to the target norm (as neuraloperator's `LpLoss`), so a zero target stays finite.
pub const EPS: f64 = 1e-8;
/// Added under the square root of the error norm, so the gradient at a perfect fit is 0
/// rather than NaN.
const TINY: f64 = 1e-30;

/// Per-sample, per-channel relative L2 errors `[B, C]` of `[B, C, ...]` tensors.
pub fn relative_l2_per_channel(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() || pred.rank() < 2 {
        candle_core::bail!(
            "relative L2: prediction {:?} and target {:?} must have the same shape [B, C, ...]",
            pred.dims(),
            target.dims()
        );
    }
    let (b, c) = (pred.dims()[0], pred.dims()[1]);
    let diff = (pred - target)?.reshape((b, c, ()))?;
    let num = (diff.sqr()?.sum(2)? + TINY)?.sqrt()?;
    let den = (target.reshape((b, c, ()))?.sqr()?.sum(2)?.sqrt()? + EPS)?;
    num / den
}

/// The scalar loss: [`relative_l2_per_channel`] averaged over samples and channels.
pub fn relative_l2(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    relative_l2_per_channel(pred, target)?.mean_all()
}

/// Which training loss the [`crate::train::Trainer`] minimises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossKind {
    /// [`relative_l2`]: per-sample, per-channel ratios, averaged (neuraloperator's `LpLoss`,
    /// DeepXDE's "mean l2 relative error").
    #[default]
    RelativeL2,
    /// [`pooled_relative_l2`]: one ratio per channel over the whole batch. On FHN data a
    /// sub-threshold stimulus gives a target about 20× smaller in norm than a wave, so the
    /// per-sample ratio lets the few such samples dominate the loss and its gradient; the
    /// pooled ratio weighs every grid point of the batch alike.
    PooledRelativeL2,
}

impl LossKind {
    /// The loss of a batch.
    pub fn compute(self, pred: &Tensor, target: &Tensor) -> Result<Tensor> {
        match self {
            Self::RelativeL2 => relative_l2(pred, target),
            Self::PooledRelativeL2 => pooled_relative_l2(pred, target),
        }
    }
}

/// `‖pred − target‖₂ / (‖target‖₂ + ε)` per channel over the whole batch and grid,
/// averaged over channels.
pub fn pooled_relative_l2(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    if pred.dims() != target.dims() || pred.rank() < 2 {
        candle_core::bail!(
            "pooled relative L2: prediction {:?} and target {:?} must have the same shape [B, C, ...]",
            pred.dims(),
            target.dims()
        );
    }
    // Channels first, then everything else: [C, B·...].
    let per_channel = |t: &Tensor| -> Result<Tensor> {
        let c = t.dim(1)?;
        t.transpose(0, 1)?.contiguous()?.reshape((c, ()))
    };
    let diff = per_channel(&(pred - target)?)?;
    let num = (diff.sqr()?.sum(1)? + TINY)?.sqrt()?;
    let den = (per_channel(target)?.sqr()?.sum(1)?.sqrt()? + EPS)?;
    (num / den)?.mean_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};
    use no_layers::gradcheck::{check_gradients, random_like, GradCheckConfig};

    #[test]
    fn matches_hand_computed_value() -> Result<()> {
        let dev = Device::Cpu;
        // sample 0: channel 0 target (3,4) pred (3,0) -> 4/5; channel 1 target (1,0) pred (0,0) -> 1.
        let t = Tensor::new(&[[[3f64, 4.], [1., 0.]]], &dev)?;
        let p = Tensor::new(&[[[3f64, 0.], [0., 0.]]], &dev)?;
        let per = relative_l2_per_channel(&p, &t)?.to_vec2::<f64>()?;
        assert!(
            (per[0][0] - 0.8).abs() < 1e-7 && (per[0][1] - 1.0).abs() < 1e-7,
            "{per:?}"
        );
        let l = relative_l2(&p, &t)?.to_scalar::<f64>()?;
        assert!((l - 0.9).abs() < 1e-7);
        Ok(())
    }

    #[test]
    fn pooled_loss_matches_hand_computed_value() -> Result<()> {
        let dev = Device::Cpu;
        // Two samples, one channel each of two points. Channel pooled over the batch:
        // targets (3,4),(0,0.1) pred (3,0),(0,0): ‖err‖ = √(16+0.01), ‖t‖ = √(25+0.01).
        // The per-sample loss instead gives (0.8 + 1)/2 = 0.9, the small sample weighing
        // as much as the large one.
        let t = Tensor::new(&[[[3f64, 4.]], [[0., 0.1]]], &dev)?;
        let p = Tensor::new(&[[[3f64, 0.]], [[0., 0.]]], &dev)?;
        let want = (16.01f64).sqrt() / (25.01f64).sqrt();
        let got = LossKind::PooledRelativeL2
            .compute(&p, &t)?
            .to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-7, "{got} vs {want}");
        let per_sample = LossKind::RelativeL2.compute(&p, &t)?.to_scalar::<f64>()?;
        assert!((per_sample - 0.9).abs() < 1e-7, "{per_sample}");
        assert!(pooled_relative_l2(&p, &t.flatten_all()?).is_err());
        Ok(())
    }

    #[test]
    fn pooled_loss_gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let t = random_like(
            &Tensor::zeros((3, 2, 2, 3), candle_core::DType::F64, &dev)?,
            5,
        )?;
        let p = Var::from_tensor(&random_like(&t, 6)?)?;
        let ps = p.clone();
        let r = check_gradients(
            move || pooled_relative_l2(ps.as_tensor(), &t),
            std::slice::from_ref(&p),
            &GradCheckConfig::default(),
        )?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }

    #[test]
    fn is_scale_invariant_per_channel_and_zero_at_a_perfect_fit() -> Result<()> {
        let dev = Device::Cpu;
        let z = Tensor::zeros((2, 2, 5, 3), candle_core::DType::F64, &dev)?;
        let (t, p) = (random_like(&z, 1)?, random_like(&z, 2)?);
        let a = relative_l2(&p, &t)?.to_scalar::<f64>()?;
        let b = relative_l2(&(&p * 1000.0)?, &(&t * 1000.0)?)?.to_scalar::<f64>()?;
        // Exact up to the ε in the denominator: a relative change of about ε/‖t‖ ≈ 2e-9.
        assert!((a - b).abs() < 1e-7 * a, "{a} vs {b}");
        assert!(relative_l2(&t, &t)?.to_scalar::<f64>()? < 1e-12);
        Ok(())
    }

    #[test]
    fn gradient_matches_finite_differences() -> Result<()> {
        let dev = Device::Cpu;
        let t = random_like(
            &Tensor::zeros((2, 2, 3, 4), candle_core::DType::F64, &dev)?,
            1,
        )?;
        let p = Var::from_tensor(&random_like(&t, 3)?)?;
        let pc = p.clone();
        let report = check_gradients(
            move || relative_l2(pc.as_tensor(), &t),
            &[p],
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    #[test]
    fn gradient_is_finite_at_a_perfect_fit() -> Result<()> {
        let t = random_like(
            &Tensor::zeros((1, 2, 3, 3), candle_core::DType::F32, &Device::Cpu)?,
            4,
        )?;
        let p = Var::from_tensor(&t)?;
        let g = relative_l2(p.as_tensor(), &t)?.backward()?;
        let gp = g.get(p.as_tensor()).expect("gradient of p");
        assert_eq!(gp.abs()?.max_all()?.to_scalar::<f32>()?, 0.0);
        Ok(())
    }
}
