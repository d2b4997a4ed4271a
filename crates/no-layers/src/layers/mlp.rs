//! Channel MLP: the same small perceptron applied at every grid point.
//!
//! neuraloperator's `ChannelMLP` stores each layer as a kernel-size-1 `Conv1d` over
//! the flattened spatial axes; that is a per-point `Linear`. Here each layer is one
//! `[O, C]·[B, C, N]` matmul. Because it acts point by point it commutes with any
//! permutation of the grid (shifts included) and works at every resolution.
//!
//! Parameters (names as neuraloperator's `state_dict`, so weights import directly):
//! `fcs.{i}.weight` `[out_i, in_i, 1]` and `fcs.{i}.bias` `[out_i]`, `i = 0..n_layers`.
//! Layer 0 maps `in → hidden`, middle layers `hidden → hidden`, the last
//! `hidden → out` (a single layer maps `in → out`). The activation follows every
//! layer but the last. Initialisation is PyTorch's default (`U(±1/√fan_in)`).

use crate::error::{LayerError, Result};
use crate::init::{torch_default_bias, torch_default_weight};
use crate::layers::activation::Activation;
use crate::layers::params::ParamCount;
use crate::layers::rounding::round_half_even;
use crate::ops::channel_mlp::two_layer_gelu_mlp;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of a [`ChannelMlp`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelMlpConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels (`None`: same as input).
    pub out_channels: Option<usize>,
    /// Hidden channels (`None`: same as input). neuraloperator's FNO blocks use
    /// `round(channels · channel_mlp_expansion)`; see [`ChannelMlpConfig::with_expansion`].
    pub hidden_channels: Option<usize>,
    /// Number of linear layers (≥ 1).
    pub n_layers: usize,
    /// Non-linearity between layers (exact GELU as neuraloperator).
    pub activation: Activation,
}

impl Default for ChannelMlpConfig {
    fn default() -> Self {
        Self {
            in_channels: 32,
            out_channels: None,
            hidden_channels: None,
            n_layers: 2,
            activation: Activation::Gelu,
        }
    }
}

impl ChannelMlpConfig {
    /// A `channels → round(channels·expansion) → channels` MLP, as in FNO/LocalNO blocks
    /// (`channel_mlp_expansion`, default 0.5).
    pub fn with_expansion(channels: usize, expansion: f64) -> Self {
        Self {
            in_channels: channels,
            out_channels: Some(channels),
            hidden_channels: Some(round_half_even(channels as f64 * expansion)),
            ..Self::default()
        }
    }

    /// The output channel count.
    pub fn out(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    fn layer_sizes(&self) -> Vec<(usize, usize)> {
        let hidden = self.hidden_channels.unwrap_or(self.in_channels);
        (0..self.n_layers)
            .map(|i| {
                let fan_in = if i == 0 { self.in_channels } else { hidden };
                let fan_out = if i + 1 == self.n_layers {
                    self.out()
                } else {
                    hidden
                };
                (fan_in, fan_out)
            })
            .collect()
    }
}

/// A per-point linear map: `x` `[B, C, ...]`, `weight` `[O, C]` or `[O, C, 1]`, optional
/// `bias` `[O]`, result `[B, O, ...]`.
pub fn pointwise_linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    let dims = x.dims().to_vec();
    if dims.len() < 2 {
        candle_core::bail!("pointwise linear: input {dims:?} needs [batch, channels, ...]");
    }
    let o = weight.dim(0)?;
    let w = weight.reshape((o, weight.elem_count() / o))?;
    let n: usize = dims[2..].iter().product();
    let y = w.broadcast_matmul(&x.reshape((dims[0], dims[1], n))?)?;
    let y = match bias {
        Some(b) => crate::ops::channel_affine::add_channel_bias(&y, b)?,
        None => y,
    };
    let mut out_dims = dims;
    out_dims[1] = o;
    y.reshape(out_dims)
}

/// neuraloperator's `ChannelMLP`.
#[derive(Debug, Clone)]
pub struct ChannelMlp {
    weights: Vec<Tensor>,
    biases: Vec<Tensor>,
    activation: Activation,
    in_channels: usize,
}

impl ChannelMlp {
    /// Builds the layers under `vb` (`fcs.{i}.weight`, `fcs.{i}.bias`).
    pub fn new(cfg: &ChannelMlpConfig, vb: VarBuilder) -> Result<Self> {
        let bad = |reason: String| LayerError::InvalidConfig {
            layer: "ChannelMlp",
            reason,
        };
        if cfg.n_layers == 0 {
            return Err(bad("n_layers must be at least 1".into()));
        }
        if cfg.in_channels == 0 || cfg.out() == 0 || cfg.hidden_channels == Some(0) {
            return Err(bad(format!(
                "channel counts must be positive (in {}, hidden {:?}, out {})",
                cfg.in_channels,
                cfg.hidden_channels,
                cfg.out()
            )));
        }
        cfg.activation.validate()?;
        let mut weights = Vec::new();
        let mut biases = Vec::new();
        for (i, (fan_in, fan_out)) in cfg.layer_sizes().into_iter().enumerate() {
            let vb = vb.pp("fcs").pp(i);
            weights.push(vb.get_with_hints(
                (fan_out, fan_in, 1),
                "weight",
                torch_default_weight(fan_in),
            )?);
            biases.push(vb.get_with_hints(fan_out, "bias", torch_default_bias(fan_in))?);
        }
        Ok(Self {
            weights,
            biases,
            activation: cfg.activation,
            in_channels: cfg.in_channels,
        })
    }

    /// The layers' weights `[out_i, in_i, 1]`, first layer first.
    pub fn weights(&self) -> &[Tensor] {
        &self.weights
    }

    /// The layers' biases `[out_i]`.
    pub fn biases(&self) -> &[Tensor] {
        &self.biases
    }

    /// The activation between layers.
    pub fn activation(&self) -> Activation {
        self.activation
    }

    /// Its parameters: every layer's weight and bias.
    pub fn param_count(&self) -> ParamCount {
        ParamCount::of_reals(self.weights.iter().chain(&self.biases).map(Some))
    }
}

impl Module for ChannelMlp {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        if x.rank() < 2 || x.dim(1)? != self.in_channels {
            return Err(LayerError::Shape {
                layer: "ChannelMlp",
                got: x.dims().to_vec(),
                expected: format!("[batch, {}, ...]", self.in_channels),
            }
            .into());
        }
        if let ([w1, w2], [b1, b2], Activation::Gelu) = (
            self.weights.as_slice(),
            self.biases.as_slice(),
            self.activation,
        ) {
            // FNO's lifting and projection: the hidden layer stays in cache.
            return two_layer_gelu_mlp(x, w1, b1, w2, b2);
        }
        let last = self.weights.len() - 1;
        let mut h = x.clone();
        for (i, (w, b)) in self.weights.iter().zip(&self.biases).enumerate() {
            h = pointwise_linear(&h, w, Some(b))?;
            if i < last {
                h = self.activation.forward(&h)?;
            }
        }
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for, SeededVarMap};
    use candle_core::{DType, Device, IndexOp, Shape, Var};

    #[test]
    fn shapes_keys_and_errors() -> Result<()> {
        let vars = SeededVarMap::new(0);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let cfg = ChannelMlpConfig {
            in_channels: 3,
            out_channels: Some(5),
            hidden_channels: Some(4),
            n_layers: 3,
            ..Default::default()
        };
        let mlp = ChannelMlp::new(&cfg, vb)?;
        let data = vars
            .varmap()
            .data()
            .lock()
            .map_err(|_| LayerError::InvalidConfig {
                layer: "test",
                reason: "lock".into(),
            })?;
        let mut keys: Vec<_> = data
            .iter()
            .map(|(k, v)| (k.clone(), v.dims().to_vec()))
            .collect();
        keys.sort();
        drop(data);
        assert_eq!(
            keys,
            vec![
                ("fcs.0.bias".to_string(), vec![4]),
                ("fcs.0.weight".to_string(), vec![4, 3, 1]),
                ("fcs.1.bias".to_string(), vec![4]),
                ("fcs.1.weight".to_string(), vec![4, 4, 1]),
                ("fcs.2.bias".to_string(), vec![5]),
                ("fcs.2.weight".to_string(), vec![5, 4, 1]),
            ]
        );
        let x = Tensor::zeros((2, 3, 4, 6), DType::F64, &Device::Cpu)?;
        assert_eq!(mlp.forward(&x)?.dims(), &[2, 5, 4, 6]);
        assert!(mlp
            .forward(&Tensor::zeros((2, 4, 4), DType::F64, &Device::Cpu)?)
            .is_err());
        let bad = ChannelMlpConfig {
            n_layers: 0,
            ..Default::default()
        };
        assert!(ChannelMlp::new(&bad, vars.var_builder(DType::F64, &Device::Cpu)).is_err());
        Ok(())
    }

    #[test]
    fn expansion_rounds_like_python() {
        assert_eq!(
            ChannelMlpConfig::with_expansion(32, 0.5).hidden_channels,
            Some(16)
        );
    }

    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (n_layers, hidden) in [(1, None), (2, Some(5)), (3, Some(4))] {
            let vars = SeededVarMap::new(3);
            let cfg = ChannelMlpConfig {
                in_channels: 3,
                out_channels: Some(2),
                hidden_channels: hidden,
                n_layers,
                ..Default::default()
            };
            let mlp = ChannelMlp::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
            let n = crate::layers::params::var_map_entries(vars.varmap());
            assert_eq!(mlp.param_count(), ParamCount::real(n));
        }
        Ok(())
    }

    #[test]
    fn is_a_per_point_linear_gelu_linear() -> Result<()> {
        // Check one grid point by hand: y = W1·gelu(W0·x + b0) + b1.
        let vars = SeededVarMap::new(1);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let cfg = ChannelMlpConfig {
            in_channels: 2,
            out_channels: Some(1),
            hidden_channels: Some(3),
            ..Default::default()
        };
        let mlp = ChannelMlp::new(&cfg, vb.clone())?;
        let x = init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from((1, 2, 3, 2)),
            &mut rng_for(5, "x"),
        )?;
        let y = mlp.forward(&x)?;
        let g = |n: &str, s: &[usize]| vb.get_with_hints(s, n, candle_nn::Init::Const(0.0));
        let (w0, b0) = (
            g("fcs.0.weight", &[3, 2, 1])?.to_vec3::<f64>()?,
            g("fcs.0.bias", &[3])?.to_vec1::<f64>()?,
        );
        let (w1, b1) = (
            g("fcs.1.weight", &[1, 3, 1])?.to_vec3::<f64>()?,
            g("fcs.1.bias", &[1])?.to_vec1::<f64>()?,
        );
        let xat =
            |c: usize, i: usize, j: usize| x.i((0, c, i, j)).and_then(|t| t.to_scalar::<f64>());
        let gelu = |v: f64| {
            let t = Tensor::new(&[v], &Device::Cpu)
                .and_then(|t| t.gelu_erf())
                .and_then(|t| t.to_vec1::<f64>());
            t.map(|v| v[0])
        };
        let (i, j) = (2, 1);
        let mut want = b1[0];
        for k in 0..3 {
            let pre = w0[k][0][0] * xat(0, i, j)? + w0[k][1][0] * xat(1, i, j)? + b0[k];
            want += w1[0][k][0] * gelu(pre)?;
        }
        let got = y.i((0, 0, i, j))?.to_scalar::<f64>()?;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let vars = SeededVarMap::new(2);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let mlp = ChannelMlp::new(
            &ChannelMlpConfig {
                in_channels: 3,
                hidden_channels: Some(4),
                ..Default::default()
            },
            vb,
        )?;
        let x = Var::from_tensor(&init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from((2, 3, 3, 2)),
            &mut rng_for(3, "x"),
        )?)?;
        let mut all = vec![x.clone()];
        all.extend(vars.varmap().all_vars());
        let xs = x.clone();
        let r = check_gradients(
            move || mlp.forward(xs.as_tensor()),
            &all,
            &GradCheckConfig::default(),
        )?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }
}
