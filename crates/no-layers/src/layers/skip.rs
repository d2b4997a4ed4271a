//! Skip connections of FNO/LocalNO blocks: identity, linear (1×1, no bias) and
//! soft-gating (a learned per-channel scale).
//!
//! All three act point by point, so they commute with grid shifts and work at every
//! resolution. Parameter names and shapes follow neuraloperator's
//! `skip_connection(..)` so that weights import directly:
//! - `Linear` (neuraloperator's `Flattened1dConv`): `conv.weight` `[out, in, 1]`,
//!   PyTorch default init `U(±1/√in)`;
//! - `SoftGating`: `weight` `[1, C, 1, …, 1]` (one 1 per spatial axis), initialised to
//!   ones; with `bias`, also `bias` of the same shape, initialised to ones.

use crate::error::{LayerError, Result};
use crate::init::torch_default_weight;
use crate::layers::mlp::pointwise_linear;
use crate::ops::channel_affine::{add_channel_bias, scale_channels};
use candle_core::{Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};

/// Which skip connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SkipKind {
    /// `x` (requires `in == out`).
    Identity,
    /// `W·x` per point, no bias.
    #[default]
    Linear,
    /// `w ⊙ x (+ b)` with a per-channel `w` (requires `in == out`).
    SoftGating,
}

/// Configuration of a [`Skip`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SkipConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Number of spatial axes (shape of the soft-gating weight).
    pub n_dim: usize,
    /// The kind of skip.
    pub kind: SkipKind,
    /// Soft-gating only: also learn a per-channel bias (neuraloperator's default: no).
    pub bias: bool,
}

impl Default for SkipConfig {
    fn default() -> Self {
        Self {
            in_channels: 32,
            out_channels: 32,
            n_dim: 2,
            kind: SkipKind::Linear,
            bias: false,
        }
    }
}

/// A skip connection (see the module docs).
#[derive(Debug, Clone)]
pub struct Skip {
    kind: SkipKind,
    weight: Option<Tensor>,
    bias: Option<Tensor>,
    in_channels: usize,
    n_dim: usize,
}

impl Skip {
    /// Builds the skip under `vb`.
    pub fn new(cfg: &SkipConfig, vb: VarBuilder) -> Result<Self> {
        let bad = |reason: String| LayerError::InvalidConfig {
            layer: "Skip",
            reason,
        };
        if cfg.in_channels == 0 || cfg.out_channels == 0 {
            return Err(bad("channel counts must be positive".into()));
        }
        if cfg.kind != SkipKind::Linear && cfg.in_channels != cfg.out_channels {
            return Err(bad(format!(
                "{:?} needs in_channels == out_channels, got {} and {}",
                cfg.kind, cfg.in_channels, cfg.out_channels
            )));
        }
        if cfg.bias && cfg.kind != SkipKind::SoftGating {
            return Err(bad("only the soft-gating skip has a bias".into()));
        }
        let gate_shape: Vec<usize> = [1, cfg.in_channels]
            .into_iter()
            .chain(std::iter::repeat_n(1, cfg.n_dim))
            .collect();
        let (weight, bias) = match cfg.kind {
            SkipKind::Identity => (None, None),
            SkipKind::Linear => {
                let w = vb.pp("conv").get_with_hints(
                    (cfg.out_channels, cfg.in_channels, 1),
                    "weight",
                    torch_default_weight(cfg.in_channels),
                )?;
                (Some(w), None)
            }
            SkipKind::SoftGating => {
                let w = vb.get_with_hints(gate_shape.as_slice(), "weight", Init::Const(1.0))?;
                let b = if cfg.bias {
                    Some(vb.get_with_hints(gate_shape.as_slice(), "bias", Init::Const(1.0))?)
                } else {
                    None
                };
                (Some(w), b)
            }
        };
        Ok(Self {
            kind: cfg.kind,
            weight,
            bias,
            in_channels: cfg.in_channels,
            n_dim: cfg.n_dim,
        })
    }

    /// The kind of skip.
    pub fn kind(&self) -> SkipKind {
        self.kind
    }

    /// The weight (`[out, in, 1]` for `Linear`, `[1, C, 1, …]` for `SoftGating`), if any.
    pub fn weight(&self) -> Option<&Tensor> {
        self.weight.as_ref()
    }

    /// The soft-gating bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Its parameters: the weight and bias, if any.
    pub fn param_count(&self) -> crate::layers::params::ParamCount {
        crate::layers::params::ParamCount::of_reals([self.weight.as_ref(), self.bias.as_ref()])
    }
}

impl Module for Skip {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.rank() != self.n_dim + 2 || x.dim(1)? != self.in_channels {
            return Err(LayerError::Shape {
                layer: "Skip",
                got: x.dims().to_vec(),
                expected: format!(
                    "[batch, {} channels] followed by {} spatial axes",
                    self.in_channels, self.n_dim
                ),
            }
            .into());
        }
        match (self.kind, &self.weight) {
            (SkipKind::Linear, Some(w)) => pointwise_linear(x, w, None),
            (SkipKind::SoftGating, Some(w)) => {
                let y = scale_channels(x, w)?;
                match &self.bias {
                    Some(b) => add_channel_bias(&y, b),
                    None => Ok(y),
                }
            }
            _ => Ok(x.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for, SeededVarMap};
    use candle_core::{DType, Device, Shape, Var};

    fn x() -> candle_core::Result<Tensor> {
        init_tensor(
            Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from((2, 3, 4, 5)),
            &mut rng_for(0, "x"),
        )
    }

    #[test]
    fn kinds_shapes_and_errors() -> Result<()> {
        let vars = SeededVarMap::new(0);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let lin = Skip::new(
            &SkipConfig {
                in_channels: 3,
                out_channels: 4,
                ..Default::default()
            },
            vb.pp("lin"),
        )?;
        assert_eq!(lin.forward(&x()?)?.dims(), &[2, 4, 4, 5]);
        let gate = Skip::new(
            &SkipConfig {
                in_channels: 3,
                out_channels: 3,
                kind: SkipKind::SoftGating,
                bias: true,
                ..Default::default()
            },
            vb.pp("gate"),
        )?;
        // Ones init: w ⊙ x + 1.
        let diff = (gate.forward(&x()?)? - (x()? + 1.0)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        assert_eq!(diff, 0.0);
        let id = Skip::new(
            &SkipConfig {
                in_channels: 3,
                out_channels: 3,
                kind: SkipKind::Identity,
                ..Default::default()
            },
            vb.pp("id"),
        )?;
        assert_eq!(
            id.forward(&x()?)?.flatten_all()?.to_vec1::<f64>()?,
            x()?.flatten_all()?.to_vec1::<f64>()?
        );
        let names: Vec<(String, Vec<usize>)> = {
            let d = vars
                .varmap()
                .data()
                .lock()
                .map_err(|_| LayerError::InvalidConfig {
                    layer: "test",
                    reason: "lock".into(),
                })?;
            let mut v: Vec<_> = d
                .iter()
                .map(|(k, t)| (k.clone(), t.dims().to_vec()))
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            names,
            vec![
                ("gate.bias".into(), vec![1, 3, 1, 1]),
                ("gate.weight".into(), vec![1, 3, 1, 1]),
                ("lin.conv.weight".into(), vec![4, 3, 1])
            ]
        );
        assert!(Skip::new(
            &SkipConfig {
                in_channels: 3,
                out_channels: 4,
                kind: SkipKind::SoftGating,
                ..Default::default()
            },
            vb.pp("e")
        )
        .is_err());
        assert!(lin
            .forward(&Tensor::zeros((2, 3, 4), DType::F64, &Device::Cpu)?)
            .is_err());
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for kind in [SkipKind::Linear, SkipKind::SoftGating] {
            let vars = SeededVarMap::new(1);
            let vb = vars.var_builder(DType::F64, &Device::Cpu);
            let skip = Skip::new(
                &SkipConfig {
                    in_channels: 3,
                    out_channels: 3,
                    kind,
                    bias: kind == SkipKind::SoftGating,
                    ..Default::default()
                },
                vb,
            )?;
            let xv = Var::from_tensor(&x()?)?;
            let mut all = vec![xv.clone()];
            all.extend(vars.varmap().all_vars());
            let xs = xv.clone();
            let r = check_gradients(
                move || skip.forward(xs.as_tensor()),
                &all,
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "{kind:?}: {r:?}");
        }
        Ok(())
    }

    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (kind, bias, (ci, co)) in [
            (SkipKind::Identity, false, (3, 3)),
            (SkipKind::Linear, false, (3, 5)),
            (SkipKind::SoftGating, false, (4, 4)),
            (SkipKind::SoftGating, true, (4, 4)),
        ] {
            let vars = SeededVarMap::new(2);
            let cfg = SkipConfig {
                in_channels: ci,
                out_channels: co,
                n_dim: 2,
                kind,
                bias,
            };
            let skip = Skip::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
            let n = crate::layers::params::var_map_entries(vars.varmap());
            assert_eq!(
                skip.param_count(),
                crate::layers::params::ParamCount::real(n)
            );
        }
        Ok(())
    }
}
