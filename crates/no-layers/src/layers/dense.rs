//! A fully connected (dense) layer on rows `[N, F_in] → [N, F_out]`, `act(x·Wᵀ + b)`,
//! with the layouts DeepONet's GEMMs want.
//!
//! Parameters: `weight` `[F_out, F_in]` and `bias` `[F_out]` (as `torch.nn.Linear`, so
//! state dicts and checkpoints keep their names). Initialisation is Glorot (Xavier) normal
//! weights and zero biases (DeepXDE's) or PyTorch's default.
//!
//! Where the layer has a bias and the activation is the identity or `tanh` it runs as one
//! fused op ([`crate::ops::dense::dense`]: one autograd node instead of three); otherwise as
//! a matrix product, a bias add whose backward avoids candle's strided reduction
//! ([`crate::ops::feature_bias::add_feature_bias`]) and the activation.

use crate::error::{LayerError, Result};
use crate::init::{torch_default_bias, torch_default_weight};
use crate::layers::activation::Activation;
use crate::ops::dense::{DenseActivation, DenseLayout};
use crate::ops::feature_bias::add_feature_bias;
use candle_core::{Module, Tensor};
use candle_nn::init::Init;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// How a [`Dense`] layer initialises its weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DenseInit {
    /// Glorot (Xavier) normal weights `N(0, 2/(F_in + F_out))`, zero biases (DeepXDE).
    #[default]
    GlorotNormal,
    /// PyTorch's `nn.Linear` default, `U(±1/√F_in)` for weights and biases.
    TorchDefault,
}

/// Configuration of a [`Dense`] layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseConfig {
    /// Input features `F_in`.
    pub in_features: usize,
    /// Output features `F_out`.
    pub out_features: usize,
    /// Whether the layer has a bias.
    #[serde(default = "yes")]
    pub bias: bool,
    /// Initialisation.
    #[serde(default)]
    pub init: DenseInit,
}

fn yes() -> bool {
    true
}

impl DenseConfig {
    /// A layer `in_features → out_features` with a bias and Glorot-normal weights.
    pub fn new(in_features: usize, out_features: usize) -> Self {
        Self {
            in_features,
            out_features,
            bias: true,
            init: DenseInit::GlorotNormal,
        }
    }

    /// Checks the sizes (both at least 1).
    pub fn validate(&self) -> Result<()> {
        if self.in_features == 0 || self.out_features == 0 {
            return Err(LayerError::InvalidConfig {
                layer: "Dense",
                reason: format!(
                    "in_features and out_features must be at least 1, got {} and {}",
                    self.in_features, self.out_features
                ),
            });
        }
        Ok(())
    }
}

/// Glorot (Xavier) normal init, `N(0, 2/(fan_in + fan_out))`, as
/// `torch.nn.init.xavier_normal_`.
pub fn glorot_normal(fan_in: usize, fan_out: usize) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: (2.0 / (fan_in + fan_out).max(1) as f64).sqrt(),
    }
}

/// A dense layer; see the module documentation.
#[derive(Debug, Clone)]
pub struct Dense {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Dense {
    /// Creates (or reads) `weight` and `bias` in `vb`.
    pub fn new(cfg: DenseConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let (fan_in, fan_out) = (cfg.in_features, cfg.out_features);
        let (w_init, b_init) = match cfg.init {
            DenseInit::GlorotNormal => (glorot_normal(fan_in, fan_out), Init::Const(0.0)),
            DenseInit::TorchDefault => (torch_default_weight(fan_in), torch_default_bias(fan_in)),
        };
        let weight = vb.get_with_hints((fan_out, fan_in), "weight", w_init)?;
        let bias = if cfg.bias {
            Some(vb.get_with_hints(fan_out, "bias", b_init)?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// The weight `[F_out, F_in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias `[F_out]`, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Number of parameters.
    pub fn param_count(&self) -> usize {
        self.weight.elem_count() + self.bias.as_ref().map_or(0, Tensor::elem_count)
    }

    /// `act(x·Wᵀ + b)` on rows `x` `[N, F_in]` (or `[..., F_in]`): the fused op when it
    /// applies (a bias, rank 2, identity or `tanh`), the composite otherwise.
    pub fn forward_activated(&self, x: &Tensor, act: &Activation) -> candle_core::Result<Tensor> {
        if let (Some(b), Some(fused), 2) = (&self.bias, fused_activation(act), x.rank()) {
            return crate::ops::dense::dense(x, &self.weight, b, fused, DenseLayout::Rows);
        }
        act.forward(&self.affine(x)?)
    }

    /// The output on rows `x` `[N, F_in]` as `k` blocks `[k, F_out/k, N]` (block `i` holds
    /// output features `i·F_out/k ..`, transposed): the product is taken as `W · xᵀ`, whose
    /// `[F_out, N]` rows are already ordered block by block, so no strided copy is needed.
    pub fn forward_blocks(
        &self,
        x: &Tensor,
        k: usize,
        act: &Activation,
    ) -> candle_core::Result<Tensor> {
        let p = self.weight.dim(0)?;
        if k == 0 || p % k != 0 {
            candle_core::bail!("output width {p} must be divisible by {k}");
        }
        let n = x.dim(0)?;
        if let (Some(b), Some(fused)) = (&self.bias, fused_activation(act)) {
            let blocks = DenseLayout::ColumnBlocks(k);
            return crate::ops::dense::dense(x, &self.weight, b, fused, blocks);
        }
        let mut z = self.weight.matmul(&x.t()?)?;
        if let Some(b) = &self.bias {
            // One bias per row: a per-channel bias of `[1, P, N]`, whose backward is a
            // contiguous row sum instead of candle's strided reduction.
            z = crate::ops::channel_affine::add_channel_bias(&z.unsqueeze(0)?, b)?.squeeze(0)?;
        }
        act.forward(&z)?.reshape((k, p / k, n))
    }

    /// `x·Wᵀ + b` (what `Linear::forward` computes), with the bias added by
    /// [`add_feature_bias`]. When the weight is larger than the output (one row per sample
    /// through a wide first layer) the product is taken as `(W·xᵀ)ᵀ`: the same values, but
    /// the weight gradient comes out of the backward GEMM in `W`'s own layout.
    fn affine(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let w = &self.weight;
        let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
        let y = if x.rank() == 2 && w.elem_count() > rows * w.dim(0)? {
            w.matmul(&x.t()?)?.t()?
        } else if x.rank() == 2 {
            // Not `broadcast_matmul`: with nothing to broadcast, candle still records a
            // broadcast whose backward runs a (no-op) strided reduction over the gradient.
            x.matmul(&w.t()?)?
        } else {
            x.broadcast_matmul(&w.t()?)?
        };
        match &self.bias {
            Some(b) => add_feature_bias(&y, b),
            None => Ok(y),
        }
    }
}

impl Module for Dense {
    /// `x·Wᵀ + b`.
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_activated(x, &Activation::Identity)
    }
}

/// The activations the fused dense op applies itself. ReLU is not among them: its
/// derivative at 0 cannot be told from the output alone.
fn fused_activation(act: &Activation) -> Option<DenseActivation> {
    match act {
        Activation::Tanh => Some(DenseActivation::Tanh),
        Activation::Identity => Some(DenseActivation::Identity),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use crate::init::SeededVarMap;
    use candle_core::{DType, Device, Var};

    fn layer(cfg: DenseConfig) -> Result<(Dense, SeededVarMap)> {
        let vars = SeededVarMap::new(4);
        let d = Dense::new(cfg, vars.var_builder(DType::F64, &Device::Cpu))?;
        Ok((d, vars))
    }

    #[test]
    fn matches_linear_and_names_its_variables() -> Result<()> {
        let (d, vars) = layer(DenseConfig::new(5, 3))?;
        // A non-zero bias, set in place through the variable map.
        let b = random_like(&Tensor::zeros(3, DType::F64, &Device::Cpu)?, 9)?;
        let data = vars.varmap().data().lock().expect("lock");
        data.get("bias").expect("a bias variable").set(&b)?;
        drop(data);
        let data = vars.varmap().data().lock().expect("lock");
        let mut names: Vec<String> = data.keys().cloned().collect();
        drop(data);
        names.sort();
        assert_eq!(names, ["bias", "weight"]);
        assert_eq!(d.param_count(), 18);
        let x = random_like(&Tensor::zeros((4, 5), DType::F64, &Device::Cpu)?, 1)?;
        let linear = candle_nn::Linear::new(d.weight().clone(), d.bias().cloned());
        let want = linear.forward(&x)?.flatten_all()?.to_vec1::<f64>()?;
        for act in [Activation::Identity, Activation::Relu] {
            let got = d
                .forward_activated(&x, &act)?
                .flatten_all()?
                .to_vec1::<f64>()?;
            let want: Vec<f64> = match act {
                Activation::Relu => want.iter().map(|v| v.max(0.0)).collect(),
                _ => want.clone(),
            };
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-12, "{act:?}: {got:?} vs {want:?}");
            }
        }
        let blocks = d.forward_blocks(&x, 3, &Activation::Tanh)?;
        assert_eq!(blocks.dims(), &[3, 1, 4]);
        let rows = d.forward_activated(&x, &Activation::Tanh)?;
        let back = blocks.reshape((3, 4))?.t()?;
        let diff = (rows - back)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-12);
        Ok(())
    }

    #[test]
    fn bad_sizes_are_errors() {
        let vars = SeededVarMap::new(0);
        let err = Dense::new(
            DenseConfig::new(0, 3),
            vars.var_builder(DType::F32, &Device::Cpu),
        )
        .expect_err("zero inputs must fail");
        assert!(err.to_string().contains("at least 1"), "{err}");
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (d, _) = layer(DenseConfig {
            init: DenseInit::TorchDefault,
            ..DenseConfig::new(3, 2)
        })?;
        let x = Var::from_tensor(&random_like(
            &Tensor::zeros((4, 3), DType::F64, &Device::Cpu)?,
            2,
        )?)?;
        for act in [Activation::Tanh, Activation::Gelu] {
            let (xs, d) = (x.clone(), d.clone());
            let r = check_gradients(
                move || d.forward_activated(xs.as_tensor(), &act),
                std::slice::from_ref(&x),
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "{act:?}: {r:?}");
        }
        Ok(())
    }
}
