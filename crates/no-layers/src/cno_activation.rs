//! CNO's activation block (simplified CNO, `CNO_LReLu`): upsample ×2 → LeakyReLU →
//! downsample to the output size, with antialiased bicubic resampling.
//!
//! Applying the non-linearity on a finer grid and filtering back keeps the block close
//! to band-limited (the "alias-free" idea of CNO). Each resampling is a per-axis matrix
//! ([`crate::resample`]), so the block is exact, differentiable and device-agnostic:
//!
//! ```text
//! F.interpolate(x, size=2·in, mode="bicubic", antialias=True) → LeakyReLU(0.01)
//!   → F.interpolate(·, size=out, mode="bicubic", antialias=True)
//! ```
//!
//! 2-D inputs are `[B, C, H, W]`; 1-D inputs `[B, C, L]` are treated as CNO1d does
//! (`[B, C, 1, L]`, only the last axis is resampled). No parameters.

use crate::activation::leaky_relu;
use crate::error::{LayerError, Result};
use crate::resample::{ResampleKind, Resampler};
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

/// Configuration of a [`CnoActivation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CnoActivationConfig {
    /// Output spatial size (`[H, W]`, or `[L]` in 1-D); `None` keeps the input size.
    pub out_size: Option<Vec<usize>>,
    /// Upsampling factor of the intermediate grid (CNO: 2).
    pub upsampling: usize,
    /// Leaky ReLU slope (CNO simplified: PyTorch's default 0.01).
    pub negative_slope: f64,
    /// Resampling kernel (CNO simplified: antialiased bicubic).
    pub kind: ResampleKind,
}

impl Default for CnoActivationConfig {
    fn default() -> Self {
        Self {
            out_size: None,
            upsampling: 2,
            negative_slope: 0.01,
            kind: ResampleKind::BicubicAntialias,
        }
    }
}

/// CNO's up → LeakyReLU → down activation.
#[derive(Debug, Clone)]
pub struct CnoActivation {
    cfg: CnoActivationConfig,
    resampler: Resampler,
}

impl CnoActivation {
    /// Checks the configuration.
    pub fn new(cfg: &CnoActivationConfig) -> Result<Self> {
        let bad = |reason: String| {
            Err(LayerError::InvalidConfig {
                layer: "CnoActivation",
                reason,
            })
        };
        if cfg.upsampling == 0 {
            return bad("upsampling must be at least 1".into());
        }
        if !cfg.negative_slope.is_finite() {
            return bad(format!(
                "negative_slope must be finite, got {}",
                cfg.negative_slope
            ));
        }
        if let Some(s) = &cfg.out_size {
            if s.is_empty() || s.len() > 2 || s.contains(&0) {
                return bad(format!(
                    "out_size must be [L] or [H, W] with positive entries, got {s:?}"
                ));
            }
        }
        Ok(Self {
            cfg: cfg.clone(),
            resampler: Resampler::new(cfg.kind),
        })
    }
}

impl Module for CnoActivation {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let u = self.cfg.upsampling;
        let slope = self.cfg.negative_slope;
        match (x.rank(), self.cfg.out_size.as_deref()) {
            (4, None | Some([_, _])) => {
                let (_, _, h, w) = x.dims4()?;
                let (oh, ow) = match self.cfg.out_size.as_deref() {
                    Some([a, b]) => (*a, *b),
                    _ => (h, w),
                };
                let up = self.resampler.resample2d(x, (u * h, u * w))?;
                Ok(self
                    .resampler
                    .resample2d(&leaky_relu(&up, slope)?, (oh, ow))?)
            }
            (3, None | Some([_])) => {
                let l = x.dim(2)?;
                let ol = self.cfg.out_size.as_ref().map_or(l, |s| s[0]);
                let up = self.resampler.resample1d(x, u * l)?;
                Ok(self.resampler.resample1d(&leaky_relu(&up, slope)?, ol)?)
            }
            _ => Err(LayerError::Shape {
                layer: "CnoActivation",
                got: x.dims().to_vec(),
                expected: format!(
                    "[B, C, L] or [B, C, H, W] matching out_size {:?}",
                    self.cfg.out_size
                ),
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for};
    use candle_core::{DType, Device, Shape, Var};

    #[test]
    fn shapes_and_errors() -> Result<()> {
        let act = CnoActivation::new(&CnoActivationConfig {
            out_size: Some(vec![5, 3]),
            ..Default::default()
        })?;
        assert_eq!(
            act.forward(&Tensor::zeros((2, 4, 10, 6), DType::F32, &Device::Cpu)?)?
                .dims(),
            &[2, 4, 5, 3]
        );
        assert!(act
            .forward(&Tensor::zeros((2, 4, 10), DType::F32, &Device::Cpu)?)
            .is_err());
        let act1 = CnoActivation::new(&CnoActivationConfig::default())?;
        assert_eq!(
            act1.forward(&Tensor::zeros((2, 4, 10), DType::F32, &Device::Cpu)?)?
                .dims(),
            &[2, 4, 10]
        );
        assert!(CnoActivation::new(&CnoActivationConfig {
            upsampling: 0,
            ..Default::default()
        })
        .is_err());
        assert!(CnoActivation::new(&CnoActivationConfig {
            out_size: Some(vec![0, 2]),
            ..Default::default()
        })
        .is_err());
        Ok(())
    }

    #[test]
    fn positive_inputs_pass_through_the_filters_only() -> Result<()> {
        // On a positive signal the leaky ReLU is the identity, so the block is down∘up.
        let act = CnoActivation::new(&CnoActivationConfig {
            kind: ResampleKind::Spectral,
            ..Default::default()
        })?;
        let v: Vec<f64> = (0..16)
            .map(|i| 2.0 + (std::f64::consts::TAU * i as f64 / 16.0).sin())
            .collect();
        let x = Tensor::from_vec(v.clone(), (1, 1, 16), &Device::Cpu)?;
        let y = act.forward(&x)?.flatten_all()?.to_vec1::<f64>()?;
        for (a, b) in y.iter().zip(&v) {
            assert!((a - b).abs() < 1e-12);
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (shape, out) in [
            (vec![2usize, 2, 5, 6], Some(vec![4usize, 3])),
            (vec![2, 2, 7], None),
        ] {
            let act = CnoActivation::new(&CnoActivationConfig {
                out_size: out,
                ..Default::default()
            })?;
            let x = Var::from_tensor(&init_tensor(
                candle_nn::Init::Randn {
                    mean: 0.0,
                    stdev: 1.0,
                },
                &Shape::from(shape.as_slice()),
                &mut rng_for(0, "cno"),
            )?)?;
            let xs = x.clone();
            let r = check_gradients(
                move || act.forward(xs.as_tensor()),
                &[x],
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "{shape:?}: {r:?}");
        }
        Ok(())
    }
}
