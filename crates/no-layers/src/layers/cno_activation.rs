//! CNO's activation block (simplified CNO, `CNO_LReLu`): upsample ×2 → LeakyReLU →
//! downsample to the output size, with antialiased bicubic resampling.
//!
//! Applying the non-linearity on a finer grid and filtering back keeps the block close
//! to band-limited (the "alias-free" idea of CNO). Each resampling is a per-axis matrix
//! ([`crate::layers::resample`]), so the block is exact, differentiable and device-agnostic:
//!
//! ```text
//! F.interpolate(x, size=2·in, mode="bicubic", antialias=True) → LeakyReLU(0.01)
//!   → F.interpolate(·, size=out, mode="bicubic", antialias=True)
//! ```
//!
//! 2-D inputs are `[B, C, H, W]`; 1-D inputs `[B, C, L]` are treated as CNO1d does
//! (`[B, C, 1, L]`, only the last axis is resampled). No parameters.
//!
//! On the CPU (f32, f64) a 2-D block with the bicubic kernel runs as one fused op
//! (`cno_activation_op.rs`): banded resizes plane by plane, nothing upsampled kept in
//! memory. Elsewhere, and for the spectral kernel (whose matrices are dense), the block is
//! the composite of the matmul resizes and the leaky ReLU; both give the same values up to
//! rounding (tested).

use crate::error::{LayerError, Result};
use crate::layers::activation::leaky_relu;
use crate::layers::resample::{ResampleKind, Resampler};
use crate::ops::cno_activation::{ActivationPlan, CnoActivationOp};
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Configuration of a [`CnoActivation`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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

/// Input, upsampled and output plane sizes of one 2-D application.
type PlanKey = ((usize, usize), (usize, usize), (usize, usize));

/// CNO's up → LeakyReLU → down activation.
#[derive(Debug, Clone)]
pub struct CnoActivation {
    cfg: CnoActivationConfig,
    resampler: Resampler,
    /// The fused op's banded matrices per plane sizes, built on first use.
    plans: Arc<Mutex<HashMap<PlanKey, Arc<ActivationPlan>>>>,
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
            plans: Arc::default(),
        })
    }

    /// How many plans of the fused CPU op the cache holds, one per (input plane, output
    /// plane) pair seen so far: a model that keeps one instance builds each plan once, so
    /// this stays fixed across forwards of the same sizes.
    pub fn cached_plans(&self) -> usize {
        self.plans.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Whether `x` takes the fused CPU op.
    fn fused(&self, x: &Tensor) -> bool {
        self.cfg.kind == ResampleKind::BicubicAntialias && crate::ops::fused_cpu(&[x])
    }

    /// The fused op's plan for these plane sizes (cached).
    fn plan(&self, key: PlanKey) -> candle_core::Result<Arc<ActivationPlan>> {
        let mut plans = self
            .plans
            .lock()
            .map_err(|_| candle_core::Error::Msg("CnoActivation: plan cache poisoned".into()))?;
        Ok(plans
            .entry(key)
            .or_insert_with(|| {
                Arc::new(ActivationPlan::new(
                    self.cfg.kind,
                    key.0,
                    key.1,
                    key.2,
                    self.cfg.negative_slope,
                ))
            })
            .clone())
    }

    /// The composite form (matmul resizes, leaky ReLU in between), on every device.
    fn forward_composite(
        &self,
        x: &Tensor,
        up: (usize, usize),
        out: (usize, usize),
    ) -> candle_core::Result<Tensor> {
        let up = self.resampler.resample2d(x, up)?;
        Ok(self
            .resampler
            .resample2d(&leaky_relu(&up, self.cfg.negative_slope)?, out)?)
    }
}

impl CnoActivation {
    /// The block on a `[B, C, H, W]` input, resized to the `out` plane whatever the
    /// configured `out_size`: one instance serves every level of a U-Net, and its cache of
    /// fused-op plans (built on first use per plane sizes) is kept across calls, so repeated
    /// forwards rebuild no resize matrix.
    pub fn forward_to(&self, x: &Tensor, out: (usize, usize)) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let u = self.cfg.upsampling;
        let up = (u * h, u * w);
        if self.fused(x) {
            let plan = self.plan(((h, w), up, out))?;
            x.contiguous()?.apply_op1(CnoActivationOp { plan })
        } else {
            self.forward_composite(x, up, out)
        }
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
                self.forward_to(x, (oh, ow))
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
    fn one_instance_serves_every_size_and_builds_each_plan_once() -> Result<()> {
        let shared = CnoActivation::new(&CnoActivationConfig::default())?;
        let x = pattern((1, 3, 10, 6), 1)?;
        for out in [(5, 3), (10, 6), (5, 3)] {
            // The same values as an instance configured for that output size.
            let fixed = CnoActivation::new(&CnoActivationConfig {
                out_size: Some(vec![out.0, out.1]),
                ..Default::default()
            })?;
            let got = shared.forward_to(&x, out)?;
            let want = fixed.forward(&x)?;
            assert_eq!(got.dims(), &[1, 3, out.0, out.1]);
            let diff = (got - want)?.abs()?.flatten_all()?.max(0)?;
            assert_eq!(diff.to_scalar::<f64>()?, 0.0);
        }
        // Two output sizes from one input size: two plans, reused on the repeated call.
        assert_eq!(shared.cached_plans(), 2);
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

    /// `[B, C, H, W]` f64 values in [-1, 1] (a deterministic pattern).
    fn pattern(dims: (usize, usize, usize, usize), salt: usize) -> Result<Tensor> {
        let n = dims.0 * dims.1 * dims.2 * dims.3;
        let v: Vec<f64> = (0..n)
            .map(|i| (((i + salt) * 7919) % 2001) as f64 / 1000.0 - 1.0)
            .collect();
        Ok(Tensor::from_vec(v, dims, &Device::Cpu)?)
    }

    #[test]
    fn fused_op_matches_the_composite_forward_and_backward() -> Result<()> {
        // Same size, CNO's down level (half), up level (double), odd sizes.
        for ((h, w), out) in [
            ((12usize, 10usize), None),
            ((12, 10), Some(vec![6usize, 5])),
            ((7, 9), Some(vec![14, 18])),
            ((9, 5), Some(vec![4, 11])),
        ] {
            let act = CnoActivation::new(&CnoActivationConfig {
                out_size: out.clone(),
                ..Default::default()
            })?;
            let (oh, ow) = out.as_ref().map_or((h, w), |o| (o[0], o[1]));
            let x = Var::from_tensor(&pattern((2, 3, h, w), 0)?)?;
            let g = pattern((2, 3, oh, ow), 11)?;
            assert!(act.fused(x.as_tensor()));
            let fused = act.forward(x.as_tensor())?;
            let composite = act.forward_composite(x.as_tensor(), (2 * h, 2 * w), (oh, ow))?;
            let err = (&fused - &composite)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(
                err < 1e-13,
                "{h}x{w} -> {oh}x{ow}: forward differs by {err}"
            );
            let gf = (fused * &g)?.sum_all()?.backward()?;
            let gc = (composite * &g)?.sum_all()?.backward()?;
            let (Some(gf), Some(gc)) = (gf.get(x.as_tensor()), gc.get(x.as_tensor())) else {
                panic!("no gradient for the input");
            };
            let err = (gf - gc)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(
                err < 1e-13,
                "{h}x{w} -> {oh}x{ow}: gradient differs by {err}"
            );
            // f32 follows the same path.
            let y32 = act.forward(&x.as_tensor().to_dtype(DType::F32)?)?;
            let err = (y32.to_dtype(DType::F64)? - act.forward(x.as_tensor())?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(err < 1e-5, "f32 differs by {err}");
        }
        Ok(())
    }

    #[test]
    fn fused_op_does_not_depend_on_the_thread_count() -> Result<()> {
        let act = CnoActivation::new(&CnoActivationConfig {
            out_size: Some(vec![8, 7]),
            ..Default::default()
        })?;
        let x = Var::from_tensor(&pattern((3, 5, 16, 14), 3)?.to_dtype(DType::F32)?)?;
        let g = pattern((3, 5, 8, 7), 5)?.to_dtype(DType::F32)?;
        let run = || -> Result<(Vec<f32>, Vec<f32>)> {
            let y = act.forward(x.as_tensor())?;
            let grads = (&y * &g)?.sum_all()?.backward()?;
            let gx = grads
                .get(x.as_tensor())
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
            Ok((
                y.flatten_all()?.to_vec1::<f32>()?,
                gx.flatten_all()?.to_vec1::<f32>()?,
            ))
        };
        let serial = crate::cpu::map::single_threaded(run)?;
        assert_eq!(serial, run()?);
        Ok(())
    }

    #[test]
    fn fused_op_rejects_a_mismatched_plane() -> Result<()> {
        let plan = Arc::new(ActivationPlan::new(
            ResampleKind::BicubicAntialias,
            (4, 4),
            (8, 8),
            (4, 4),
            0.01,
        ));
        let x = Tensor::zeros((1, 2, 5, 4), DType::F32, &Device::Cpu)?;
        let err = x.apply_op1(CnoActivationOp { plan }).unwrap_err();
        assert!(
            err.to_string().contains("expected [batch, channels, 4, 4]"),
            "{err}"
        );
        Ok(())
    }
}
