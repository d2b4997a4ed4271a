//! Finite-difference (differential) kernel of LocalNO (Liu-Schiaffini et al., ICML 2024).
//!
//! A learned stencil `W` of odd size `k` is made zero-sum by removing its total from
//! the centre tap, and the result is divided by the grid width *relative to the
//! training grid*:
//!
//! ```text
//! FD(x) = (conv(x, W) − x·ΣW) / (h/h₀),   h/h₀ = N₀/N
//! ```
//!
//! where `N` is the input's length on the last axis and `N₀` the training resolution
//! (`default_resolution`). A zero-sum stencil annihilates constants, so as the grid is
//! refined `conv(x, W)/h` converges to a directional derivative `(Σ W_j·j)·∇x` (times
//! `h₀`); dividing by `h/h₀` instead of `h` keeps the trained values O(1). This is
//! neuraloperator's `FiniteDifferenceConvolution` (`(conv(x,W) − conv(x,ΣW))/grid_width`
//! with `grid_width = 1/(N/N₀)`), computed with one convolution by folding `−ΣW` into
//! the centre tap, which is the same linear map.
//!
//! - Padding: periodic (neuraloperator's default `"periodic"` = circular) or zeros.
//!   With periodic padding the layer commutes exactly with circular shifts.
//! - `groups`: 1 mixes all channels in every derivative (LocalNO's `mix_derivatives=True`);
//!   `groups = in_channels` gives one stencil per input channel (`mix_derivatives=False`).
//! - No bias.
//! - 1-D (`[B, C, L]`) and 2-D (`[B, C, H, W]`) grids.
//!
//! Parameter: `conv.weight` `[out, in/groups, k]` (1-D) or `[out, in/groups, k, k]` (2-D),
//! PyTorch's default conv init `U(±1/√fan_in)` with `fan_in = in/groups·k^d`.
//! neuraloperator's `state_dict` holds the same tensor twice, as `weight` and
//! `conv.weight`; import either.

use crate::error::{LayerError, Result};
use crate::init::torch_default_weight;
use crate::layers::local::conv::{conv2d_same, PaddingMode};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of a [`FiniteDifference`] kernel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FiniteDifferenceConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (a multiple of `groups`).
    pub out_channels: usize,
    /// Spatial dimension, 1 or 2.
    pub n_dim: usize,
    /// Odd stencil size per axis (neuraloperator's `fin_diff_kernel_size`, default 3).
    pub kernel_size: usize,
    /// Channel groups: 1 (`mix_derivatives=True`) or `in_channels` (`False`).
    pub groups: usize,
    /// Boundary treatment.
    pub padding: PaddingMode,
    /// Training resolution `N₀` along the last axis (neuraloperator: `default_in_shape[0]`).
    pub default_resolution: usize,
}

impl Default for FiniteDifferenceConfig {
    fn default() -> Self {
        Self {
            in_channels: 32,
            out_channels: 32,
            n_dim: 2,
            kernel_size: 3,
            groups: 1,
            padding: PaddingMode::Periodic,
            default_resolution: 100,
        }
    }
}

impl FiniteDifferenceConfig {
    /// The configuration LocalNO builds: `mix_derivatives` selects `groups`.
    pub fn local_no(channels: usize, default_resolution: usize, mix_derivatives: bool) -> Self {
        Self {
            in_channels: channels,
            out_channels: channels,
            groups: if mix_derivatives { 1 } else { channels },
            default_resolution,
            ..Self::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(LayerError::InvalidConfig {
                layer: "FiniteDifference",
                reason,
            })
        };
        if !(1..=2).contains(&self.n_dim) {
            return bad(format!("n_dim must be 1 or 2, got {}", self.n_dim));
        }
        if self.kernel_size.is_multiple_of(2) {
            return bad(format!("kernel_size must be odd, got {}", self.kernel_size));
        }
        if self.groups == 0
            || !self.in_channels.is_multiple_of(self.groups)
            || !self.out_channels.is_multiple_of(self.groups)
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return bad(format!(
                "groups ({}) must divide in_channels ({}) and out_channels ({}), all positive",
                self.groups, self.in_channels, self.out_channels
            ));
        }
        if self.default_resolution == 0 {
            return bad("default_resolution must be positive".into());
        }
        Ok(())
    }
}

/// The finite-difference kernel (see the module docs).
#[derive(Debug, Clone)]
pub struct FiniteDifference {
    weight: Tensor,
    cfg: FiniteDifferenceConfig,
}

impl FiniteDifference {
    /// Builds the kernel; its weight is `conv.weight` under `vb`.
    pub fn new(cfg: &FiniteDifferenceConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let cg = cfg.in_channels / cfg.groups;
        let k = cfg.kernel_size;
        let mut shape = vec![cfg.out_channels, cg, k];
        if cfg.n_dim == 2 {
            shape.push(k);
        }
        let fan_in = cg * k.pow(cfg.n_dim as u32);
        let weight = vb
            .pp("conv")
            .get_with_hints(shape, "weight", torch_default_weight(fan_in))?;
        Ok(Self {
            weight,
            cfg: cfg.clone(),
        })
    }

    /// The raw (not zero-sum) stencil weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Its parameters: the stencil weight.
    pub fn param_count(&self) -> crate::layers::params::ParamCount {
        crate::layers::params::ParamCount::of_real(&self.weight)
    }

    /// The zero-sum stencil actually applied, `[O, C/g, kh, kw]` (1-D: `kh = 1`).
    pub fn zero_sum_kernel(&self) -> candle_core::Result<Tensor> {
        let k = self.cfg.kernel_size;
        let w = if self.cfg.n_dim == 1 {
            self.weight.unsqueeze(2)?
        } else {
            self.weight.clone()
        };
        let (kh, kw) = (w.dim(2)?, w.dim(3)?);
        let total = w.sum_keepdim(2)?.sum_keepdim(3)?;
        let mut delta = vec![0.0; kh * kw];
        delta[(kh / 2) * kw + k / 2] = 1.0;
        let delta = Tensor::from_vec(delta, (1, 1, kh, kw), w.device())?.to_dtype(w.dtype())?;
        w - total.broadcast_mul(&delta)?
    }

    /// The stencil the layer convolves an input of width `n` (last axis) with: the
    /// zero-sum kernel times `1/(h/h₀) = n/N₀`, shaped `[out, in/groups, kh, kw]` (`kh = 1`
    /// for 1-D). The scale goes on this small kernel rather than on the output (one pass
    /// less each way; equal up to rounding). LocalNO adds it to the DISCO stencil to run both
    /// as one convolution ([`crate::layers::local::conv::conv2d_same_sum`]).
    pub fn kernel_for_width(&self, n: usize) -> candle_core::Result<Tensor> {
        let inv_width = n as f64 / self.cfg.default_resolution as f64;
        self.zero_sum_kernel()? * inv_width
    }

    /// The layer's configuration.
    pub fn config(&self) -> &FiniteDifferenceConfig {
        &self.cfg
    }
}

impl Module for FiniteDifference {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let c = &self.cfg;
        if x.rank() != c.n_dim + 2 || x.dim(1)? != c.in_channels {
            return Err(LayerError::Shape {
                layer: "FiniteDifference",
                got: x.dims().to_vec(),
                expected: format!(
                    "[batch, {} channels] followed by {} spatial axes",
                    c.in_channels, c.n_dim
                ),
            }
            .into());
        }
        let x4 = if c.n_dim == 1 {
            x.unsqueeze(2)?
        } else {
            x.clone()
        };
        let kernel = self.kernel_for_width(x.dim(x.rank() - 1)?)?;
        let y = conv2d_same(&x4, &kernel, c.padding, c.groups)?;
        if c.n_dim == 1 {
            y.squeeze(2)
        } else {
            Ok(y)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for, SeededVarMap};
    use candle_core::{DType, Device, Shape, Var};

    fn layer(cfg: &FiniteDifferenceConfig, seed: u64) -> Result<(FiniteDifference, SeededVarMap)> {
        let vars = SeededVarMap::new(seed);
        let fd = FiniteDifference::new(cfg, vars.var_builder(DType::F64, &Device::Cpu))?;
        Ok((fd, vars))
    }

    fn randn(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
        init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut rng_for(seed, "fd"),
        )
    }

    #[test]
    fn annihilates_constants_and_scales_with_resolution() -> Result<()> {
        let cfg = FiniteDifferenceConfig {
            in_channels: 2,
            out_channels: 3,
            default_resolution: 8,
            ..Default::default()
        };
        let (fd, _v) = layer(&cfg, 0)?;
        let ones = Tensor::ones((1, 2, 8, 8), DType::F64, &Device::Cpu)?;
        assert!(fd.forward(&ones)?.abs()?.max_all()?.to_scalar::<f64>()? < 1e-13);
        // Same stencil on a grid twice as fine: the raw stencil output is multiplied by 2.
        let x = randn(&[1, 2, 16, 16], 1)?;
        let raw = conv2d_same(&x, &fd.zero_sum_kernel()?, PaddingMode::Periodic, 1)?;
        let diff = (fd.forward(&x)? - (raw * 2.0)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        Ok(())
    }

    #[test]
    fn equals_conv_minus_sum_conv_like_neuraloperator() -> Result<()> {
        // (conv(x, W) − conv(x, ΣW)) / grid_width, written out with candle's conv2d.
        for groups in [1, 2] {
            let cfg = FiniteDifferenceConfig {
                in_channels: 2,
                out_channels: 4,
                groups,
                padding: PaddingMode::Zeros,
                default_resolution: 5,
                ..Default::default()
            };
            let (fd, _v) = layer(&cfg, 3)?;
            let x = randn(&[2, 2, 6, 7], 4)?;
            let w = fd.weight();
            let conv = x
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .conv2d(w, 0, 1, 1, groups)?;
            let sum = x.conv2d(&w.sum_keepdim(2)?.sum_keepdim(3)?, 0, 1, 1, groups)?;
            let want = ((conv - sum)? / (1.0 / (7.0 / 5.0)))?;
            let diff = (fd.forward(&x)? - want)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(diff < 1e-12, "groups {groups}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn converges_to_the_analytic_derivative() -> Result<()> {
        // A fixed central-difference stencil [−1/2, 0, 1/2] along the last axis, trained
        // at N₀ = 1: the layer computes h₀·∂f/∂y → ∂f/∂y. f = sin(2πx)·cos(2πy) on [0,1)².
        let mut errors = Vec::new();
        for n in [16usize, 32, 64] {
            let cfg = FiniteDifferenceConfig {
                in_channels: 1,
                out_channels: 1,
                default_resolution: 1,
                ..Default::default()
            };
            let vars = SeededVarMap::new(0);
            let vb = vars.var_builder(DType::F64, &Device::Cpu);
            let stencil = Tensor::new(
                &[[[[0.0f64, 0.0, 0.0], [-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]]]],
                &Device::Cpu,
            )?;
            let fd = FiniteDifference::new(&cfg, vb)?;
            vars.varmap().all_vars()[0].set(&stencil)?;
            let tau = std::f64::consts::TAU;
            let grid = |f: &dyn Fn(f64, f64) -> f64| -> candle_core::Result<Tensor> {
                let v: Vec<f64> = (0..n * n)
                    .map(|i| f((i / n) as f64 / n as f64, (i % n) as f64 / n as f64))
                    .collect();
                Tensor::from_vec(v, (1, 1, n, n), &Device::Cpu)
            };
            let x = grid(&|a, b| (tau * a).sin() * (tau * b).cos())?;
            let want = grid(&|a, b| -tau * (tau * a).sin() * (tau * b).sin())?;
            errors.push(
                (fd.forward(&x)? - want)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f64>()?,
            );
        }
        // Second order: each halving of h divides the error by ~4.
        assert!(errors[0] < 0.7 && errors[2] < 0.04, "{errors:?}");
        for w in errors.windows(2) {
            assert!(w[0] / w[1] > 3.8, "{errors:?}");
        }
        Ok(())
    }

    #[test]
    fn periodic_padding_commutes_with_circular_shifts() -> Result<()> {
        let cfg = FiniteDifferenceConfig {
            in_channels: 3,
            out_channels: 2,
            kernel_size: 5,
            default_resolution: 9,
            ..Default::default()
        };
        let (fd, _v) = layer(&cfg, 5)?;
        let x = randn(&[2, 3, 9, 11], 6)?;
        let roll = |t: &Tensor, s0: usize, s1: usize| -> candle_core::Result<Tensor> {
            t.roll(s0 as i32, 2)?.roll(s1 as i32, 3)
        };
        let lhs = fd.forward(&roll(&x, 4, 7)?)?;
        let rhs = roll(&fd.forward(&x)?, 4, 7)?;
        let diff = (lhs - rhs)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-12, "{diff}");
        Ok(())
    }

    #[test]
    fn one_dimensional_and_depthwise_shapes_and_errors() -> Result<()> {
        let cfg = FiniteDifferenceConfig {
            in_channels: 2,
            out_channels: 4,
            n_dim: 1,
            groups: 2,
            default_resolution: 10,
            ..Default::default()
        };
        let (fd, vars) = layer(&cfg, 7)?;
        assert_eq!(fd.weight().dims(), &[4, 1, 3]);
        assert!(vars
            .varmap()
            .data()
            .lock()
            .map(|d| d.contains_key("conv.weight"))
            .unwrap_or(false));
        assert_eq!(fd.forward(&randn(&[3, 2, 10], 8)?)?.dims(), &[3, 4, 10]);
        assert!(fd.forward(&randn(&[3, 2, 10, 10], 8)?).is_err());
        for bad in [
            FiniteDifferenceConfig {
                kernel_size: 4,
                ..Default::default()
            },
            FiniteDifferenceConfig {
                groups: 3,
                ..Default::default()
            },
            FiniteDifferenceConfig {
                n_dim: 3,
                ..Default::default()
            },
        ] {
            assert!(FiniteDifference::new(
                &bad,
                SeededVarMap::new(0).var_builder(DType::F64, &Device::Cpu)
            )
            .is_err());
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (n_dim, padding, groups) in [
            (2, PaddingMode::Periodic, 1),
            (2, PaddingMode::Zeros, 2),
            (1, PaddingMode::Periodic, 1),
        ] {
            let cfg = FiniteDifferenceConfig {
                in_channels: 2,
                out_channels: 2,
                n_dim,
                groups,
                padding,
                default_resolution: 4,
                ..Default::default()
            };
            let (fd, vars) = layer(&cfg, 9)?;
            let shape: Vec<usize> = if n_dim == 2 {
                vec![2, 2, 5, 6]
            } else {
                vec![2, 2, 7]
            };
            let x = Var::from_tensor(&randn(&shape, 10)?)?;
            let mut all = vec![x.clone()];
            all.extend(vars.varmap().all_vars());
            let xs = x.clone();
            let r = check_gradients(
                move || fd.forward(xs.as_tensor()),
                &all,
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "{n_dim}D {padding:?} groups {groups}: {r:?}");
        }
        Ok(())
    }

    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (n_dim, kernel_size, groups) in [(2, 3, 1), (2, 5, 4), (1, 3, 2)] {
            let cfg = FiniteDifferenceConfig {
                in_channels: 4,
                out_channels: 4,
                n_dim,
                kernel_size,
                groups,
                ..Default::default()
            };
            let (fd, vars) = layer(&cfg, 1)?;
            let n = crate::layers::params::var_map_entries(vars.varmap());
            assert_eq!(fd.param_count(), crate::layers::params::ParamCount::real(n));
        }
        Ok(())
    }
}
