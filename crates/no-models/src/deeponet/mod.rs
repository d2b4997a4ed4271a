//! DeepONet (DON) and DeepONet with a CNN branch (DON-CNN), with DeepXDE's conventions.
//!
//! A DeepONet writes each output field as a sum of `p` learned basis functions of the
//! coordinates (the *trunk*, evaluated at `(t, x)`) weighted by `p` coefficients computed
//! from the input function (the *branch*):
//! `y_k(t, x) = Σ_i b_{k,i}(u) · τ_{k,i}(t, x) + β_k`.
//! The `n_basis` outputs of the branch and of the trunk are split into one block per
//! output field (DeepXDE's `multi_output_strategy="split_both"`), so v and w get their own
//! basis functions and coefficients, and each output has its own scalar bias β_k.
//!
//! DeepXDE conventions kept here (so weights and outputs are comparable with
//! `deepxde.nn.pytorch.DeepONetCartesianProd`, checked by a parity fixture):
//! - the activation **is applied to the trunk's last layer**; the branch's last layer is
//!   linear;
//! - fully connected layers start from Glorot-normal weights and zero biases;
//! - the bias β_k starts at zero.
//!
//! The trunk takes the coordinates `(t, x)` scaled to `[0, 1]` on the training grid
//! (`t_i = i/(nt-1)`, `x_j = j/(nx-1)`), so the models evaluate at arbitrary query points
//! ([`DeepOnet::forward_at`]) as well as on the grid. The branch sees the whole input
//! field flattened (DON) or through a CNN (DON-CNN): its size is fixed, so these models do
//! not accept other input resolutions unless the input is resampled first.
//!
//! The family lives in one folder: [`fnn`] (the fully connected nets of branch and
//! trunk, on [`no_layers::layers::dense::Dense`]), [`don`] (DeepONet with an MLP branch),
//! [`don_cnn`] (the CNN branch) and [`pod`] (POD-DeepONet, whose trunk is a POD basis).

pub mod don;
pub mod don_cnn;
pub mod fnn;
pub mod pod;

pub use don::{DeepOnet, DeepOnetConfig};
pub use don_cnn::DeepOnetCnnConfig;
pub(crate) use fnn::Fnn;
/// The activations of the DeepONet family: `no_layers`' (DeepXDE names such as `"tanh"` or
/// `"linear"` read as bare strings).
pub use no_layers::layers::activation::Activation;

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use no_layers::ops::basis_product::{basis_product, PanelBasis};
use no_layers::ops::channel_affine::add_channel_bias;

/// The `(t, x)` coordinates of every node of an `nt × nx` grid, scaled to `[0, 1]`, row-major
/// (`t` slow, `x` fast): shape `[nt·nx, 2]`.
pub fn grid_coordinates(
    nt: usize,
    nx: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let scale = |n: usize, i: usize| {
        if n > 1 {
            i as f64 / (n - 1) as f64
        } else {
            0.0
        }
    };
    let mut values = Vec::with_capacity(nt * nx * 2);
    for i in 0..nt {
        for j in 0..nx {
            values.push(scale(nt, i));
            values.push(scale(nx, j));
        }
    }
    Tensor::from_vec(values, (nt * nx, 2), device)?.to_dtype(dtype)
}

pub(crate) fn shape_error(context: &str, got: &[usize], expected: String) -> candle_core::Error {
    candle_core::Error::Msg(
        ModelError::Shape {
            context: context.to_string(),
            got: got.to_vec(),
            expected,
        }
        .to_string(),
    )
}

/// Trunk values `[N, K·q]` rearranged as `[K, q, N]` (the reference for
/// [`Fnn::forward_blocks`] in the tests).
#[cfg(test)]
pub(crate) fn trunk_blocks(trunk: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let (n, p) = trunk.dims2()?;
    trunk
        .reshape((n, k, p / k))?
        .permute((1, 2, 0))?
        .contiguous()
}

/// Combines branch coefficients `[B, K·q]` with trunk values as `[K, q, N]` blocks
/// ([`Fnn::forward_blocks`]): output `[B, K, N]` with
/// `out[b,k,n] = Σ_i branch[b,k·q+i] · blocks[k,i,n] + bias[k]`.
pub(crate) fn combine_with_trunk_blocks(
    branch: &Tensor,
    blocks: &Tensor,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    with_bias(basis_product(branch, blocks)?, bias)
}

/// [`combine_with_trunk_blocks`] with a cached trunk output stored in panels: the same
/// values.
pub(crate) fn combine_with_trunk_panels(
    branch: &Tensor,
    panels: &PanelBasis,
    bias: Option<&Tensor>,
) -> candle_core::Result<Tensor> {
    with_bias(panels.product(branch)?, bias)
}

/// `out[b, k, n] + bias[k]`, or `out` without a bias.
fn with_bias(out: Tensor, bias: Option<&Tensor>) -> candle_core::Result<Tensor> {
    match bias {
        Some(bias) => add_channel_bias(&out, bias),
        None => Ok(out),
    }
}

pub(crate) fn check_basis_split(
    model: &'static str,
    n_basis: usize,
    out_channels: usize,
) -> Result<()> {
    if out_channels == 0 || n_basis == 0 || !n_basis.is_multiple_of(out_channels) {
        return Err(ModelError::InvalidConfig {
            model,
            reason: format!(
                "n_basis ({n_basis}) must be a positive multiple of out_channels ({out_channels})"
            ),
        });
    }
    Ok(())
}

pub(crate) fn check_grid(model: &'static str, in_channels: usize, grid: [usize; 2]) -> Result<()> {
    if in_channels == 0 || grid[0] == 0 || grid[1] == 0 {
        return Err(ModelError::InvalidConfig {
            model,
            reason: format!("in_channels ({in_channels}) and grid {grid:?} must be positive"),
        });
    }
    Ok(())
}

/// Builds DeepONet.
pub fn build_don(config: &DeepOnetConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(DeepOnet::new(config, vb)?))
}

/// Builds DeepONet with a CNN branch.
pub fn build_don_cnn(
    config: &DeepOnetCnnConfig,
    vb: VarBuilder,
) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(DeepOnet::new_cnn(config, vb)?))
}

/// Reads and writes DeepONet activations as DeepXDE's bare names (`"tanh"`, `"relu"`, …,
/// `"linear"` for the identity), so configurations and checkpoints keep the form they had;
/// a parameterised activation (leaky ReLU) is written tagged.
pub(crate) mod bare_activation {
    use super::Activation;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    /// Writes the bare name where there is one.
    pub fn serialize<S: Serializer>(act: &Activation, s: S) -> Result<S::Ok, S::Error> {
        let name = match act {
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
            Activation::Tanh => "tanh",
            Activation::Silu => "silu",
            Activation::Sigmoid => "sigmoid",
            Activation::Identity => "linear",
            Activation::LeakyRelu { .. } => return act.serialize(s),
        };
        s.serialize_str(name)
    }

    /// Reads a bare name or the tagged form.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Activation, D::Error> {
        Activation::deserialize(d)
    }
}
