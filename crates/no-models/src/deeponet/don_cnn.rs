//! The CNN branch of DeepONet-CNN (DON-CNN) and its configuration.

use super::bare_activation;
use super::{check_basis_split, check_grid, Activation, Fnn};
use crate::error::{ModelError, Result};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use no_layers::ops::conv2d_bias_act::{conv2d_bias_act, ConvActivation};
use serde::{Deserialize, Serialize};

/// Configuration of DeepONet with a CNN branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeepOnetCnnConfig {
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Training grid `[nt, nx]`, which fixes the size the CNN flattens to.
    pub grid: [usize; 2],
    /// Output channels of each convolution.
    pub conv_channels: Vec<usize>,
    /// Kernel size of each convolution (one entry per convolution, or one for all).
    pub kernel_sizes: Vec<usize>,
    /// Stride of each convolution (one entry per convolution, or one for all).
    pub strides: Vec<usize>,
    /// Zero padding of each convolution (one entry per convolution, or one for all).
    pub paddings: Vec<usize>,
    /// Activation after each convolution.
    #[serde(with = "bare_activation")]
    pub conv_activation: Activation,
    /// Hidden widths of the branch MLP after flattening.
    pub branch_hidden: Vec<usize>,
    /// Identity links between consecutive branch MLP layers of equal width.
    pub branch_residual: bool,
    /// Activation of the branch MLP's hidden layers.
    #[serde(with = "bare_activation")]
    pub branch_activation: Activation,
    /// Hidden widths of the trunk MLP.
    pub trunk_hidden: Vec<usize>,
    /// Activation of the trunk (last layer included).
    #[serde(with = "bare_activation")]
    pub trunk_activation: Activation,
    /// Total number of basis functions, split evenly over the outputs.
    pub n_basis: usize,
    /// Whether each output has its own scalar bias.
    pub bias: bool,
}

impl Default for DeepOnetCnnConfig {
    /// The research group's tuned configuration: CNN channels [40, 80, 100, 120], kernel 3,
    /// stride 2, no padding, ReLU; branch MLP [80, 80, 80] with residual links; trunk
    /// [80, 80, 80] tanh; 800 basis functions (400 per output). 605,342 parameters at 100×100.
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            grid: [100, 100],
            conv_channels: vec![40, 80, 100, 120],
            kernel_sizes: vec![3],
            strides: vec![2],
            paddings: vec![0],
            conv_activation: Activation::Relu,
            branch_hidden: vec![80, 80, 80],
            branch_residual: true,
            branch_activation: Activation::Relu,
            trunk_hidden: vec![80, 80, 80],
            trunk_activation: Activation::Tanh,
            n_basis: 800,
            bias: true,
        }
    }
}

impl DeepOnetCnnConfig {
    fn per_layer(&self, what: &str, values: &[usize]) -> Result<Vec<usize>> {
        let n = self.conv_channels.len();
        match values.len() {
            1 => Ok(vec![values[0]; n]),
            len if len == n => Ok(values.to_vec()),
            len => Err(ModelError::InvalidConfig {
                model: "don_cnn",
                reason: format!(
                    "{what} has {len} entries; expected 1 or one per convolution ({n})"
                ),
            }),
        }
    }

    pub(crate) fn validate(&self) -> Result<()> {
        check_grid("don_cnn", self.in_channels, self.grid)?;
        check_basis_split("don_cnn", self.n_basis, self.out_channels)?;
        for (what, v) in [
            ("kernel_sizes", &self.kernel_sizes),
            ("strides", &self.strides),
        ] {
            if self.per_layer(what, v)?.contains(&0) {
                return Err(ModelError::InvalidConfig {
                    model: "don_cnn",
                    reason: format!("{what} must be positive"),
                });
            }
        }
        self.per_layer("paddings", &self.paddings)?;
        if self.conv_channels.contains(&0)
            || self.branch_hidden.contains(&0)
            || self.trunk_hidden.contains(&0)
        {
            return Err(ModelError::InvalidConfig {
                model: "don_cnn",
                reason: "channel counts and widths must be positive".into(),
            });
        }
        Ok(())
    }
}

/// One convolution of the CNN branch, run through [`no_layers::ops::conv2d::conv2d`]:
/// candle 0.11's own conv2d backward fails for strided convolutions on grids where
/// `(H + 2p − k) mod s ≠ (W + 2p − k) mod s` (the regression
/// test `candle_strided_conv2d_backward_on_non_square_input_still_fails` shows it).
#[derive(Debug, Clone)]
struct ConvStage {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

/// The 2D CNN encoder followed by an MLP.
#[derive(Debug, Clone)]
pub(crate) struct CnnBranch {
    convs: Vec<ConvStage>,
    conv_activation: Activation,
    mlp: Fnn,
}

impl CnnBranch {
    pub(crate) fn new(cfg: &DeepOnetCnnConfig, vb: VarBuilder) -> Result<Self> {
        let kernels = cfg.per_layer("kernel_sizes", &cfg.kernel_sizes)?;
        let strides = cfg.per_layer("strides", &cfg.strides)?;
        let paddings = cfg.per_layer("paddings", &cfg.paddings)?;
        let (mut h, mut w) = (cfg.grid[0], cfg.grid[1]);
        let mut c_in = cfg.in_channels;
        let mut convs = Vec::new();
        for (i, &c_out) in cfg.conv_channels.iter().enumerate() {
            let (k, s, p) = (kernels[i], strides[i], paddings[i]);
            if h + 2 * p < k || w + 2 * p < k {
                return Err(ModelError::InvalidConfig {
                    model: "don_cnn",
                    reason: format!("convolution {i}: a {h}×{w} input (padding {p}) is smaller than the kernel {k}"),
                });
            }
            let fan_in = c_in * k * k;
            let cvb = vb.pp(format!("conv{i}"));
            let weight = cvb.get_with_hints(
                (c_out, c_in, k, k),
                "weight",
                no_layers::init::torch_default_weight(fan_in),
            )?;
            let bias =
                cvb.get_with_hints(c_out, "bias", no_layers::init::torch_default_bias(fan_in))?;
            convs.push(ConvStage {
                weight,
                bias,
                stride: s,
                padding: p,
            });
            h = (h + 2 * p - k) / s + 1;
            w = (w + 2 * p - k) / s + 1;
            c_in = c_out;
        }
        let flat = c_in * h * w;
        let sizes = [&[flat][..], &cfg.branch_hidden, &[cfg.n_basis]].concat();
        let mlp = Fnn::new(
            &sizes,
            cfg.branch_activation,
            false,
            cfg.branch_residual,
            vb.pp("mlp"),
        )?;
        Ok(Self {
            convs,
            conv_activation: cfg.conv_activation,
            mlp,
        })
    }

    pub(crate) fn forward(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = u.clone();
        for c in &self.convs {
            x = match rectifier(self.conv_activation) {
                // One pass after the convolution at inference (the same values as below).
                Some(act) => conv2d_bias_act(&x, &c.weight, &c.bias, c.padding, c.stride, act)?,
                None => {
                    let y = no_layers::ops::conv2d::conv2d(&x, &c.weight, c.padding, c.stride)?;
                    let y = no_layers::ops::channel_affine::add_channel_bias(&y, &c.bias)?;
                    self.conv_activation.forward(&y)?
                }
            };
        }
        self.mlp.forward(&x.flatten_from(1)?)
    }

    pub(crate) fn param_count(&self) -> usize {
        let convs: usize = self
            .convs
            .iter()
            .map(|c| c.weight.elem_count() + c.bias.elem_count())
            .sum();
        convs + self.mlp.param_count()
    }
}

/// The convolution epilogue that computes `act` as its own op does, if there is one.
fn rectifier(act: Activation) -> Option<ConvActivation> {
    match act {
        Activation::Identity => Some(ConvActivation::Identity),
        Activation::Relu => Some(ConvActivation::Relu),
        Activation::LeakyRelu { negative_slope } => {
            Some(ConvActivation::LeakyRelu { negative_slope })
        }
        _ => None,
    }
}
