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

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::init::Init;
use candle_nn::{Linear, VarBuilder};
use no_layers::ops::channel_affine::add_channel_bias;
use no_layers::ops::dense::{DenseActivation, DenseLayout};
use no_layers::ops::feature_bias::add_feature_bias;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// A pointwise nonlinearity, named as in DeepXDE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// Hyperbolic tangent.
    #[default]
    Tanh,
    /// Rectified linear unit.
    Relu,
    /// Exact (erf) GELU.
    Gelu,
    /// SiLU / swish.
    Silu,
    /// Logistic sigmoid.
    Sigmoid,
    /// Identity (no nonlinearity).
    Linear,
}

impl Activation {
    /// Applies the nonlinearity.
    pub fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::Tanh => no_layers::ops::tanh::tanh(x),
            Activation::Relu => no_layers::ops::relu::relu(x),
            Activation::Gelu => no_layers::ops::gelu::gelu(x),
            Activation::Silu => x.silu(),
            Activation::Sigmoid => candle_nn::ops::sigmoid(x),
            Activation::Linear => Ok(x.clone()),
        }
    }
}

/// Glorot (Xavier) normal init, `N(0, 2/(fan_in + fan_out))`, as `torch.nn.init.xavier_normal_`.
pub(crate) fn glorot_normal(fan_in: usize, fan_out: usize) -> Init {
    Init::Randn {
        mean: 0.0,
        stdev: (2.0 / (fan_in + fan_out).max(1) as f64).sqrt(),
    }
}

/// A DeepXDE-style fully connected net: `Linear` layers of the given sizes with Glorot-normal
/// weights and zero biases, the activation after every hidden layer, optionally after the
/// last one too, and optional identity links between consecutive layers of equal width.
#[derive(Debug, Clone)]
pub(crate) struct Fnn {
    layers: Vec<Linear>,
    activation: Activation,
    last_activation: bool,
    residual: bool,
}

impl Fnn {
    /// `sizes = [input, hidden..., output]`, layers named `{prefix}.{i}` in `vb`.
    pub(crate) fn new(
        sizes: &[usize],
        activation: Activation,
        last_activation: bool,
        residual: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let mut layers = Vec::with_capacity(sizes.len().saturating_sub(1));
        for (i, pair) in sizes.windows(2).enumerate() {
            let (fan_in, fan_out) = (pair[0], pair[1]);
            let lvb = vb.pp(i.to_string());
            let w =
                lvb.get_with_hints((fan_out, fan_in), "weight", glorot_normal(fan_in, fan_out))?;
            let b = lvb.get_with_hints(fan_out, "bias", Init::Const(0.0))?;
            layers.push(Linear::new(w, Some(b)));
        }
        Ok(Self {
            layers,
            activation,
            last_activation,
            residual,
        })
    }

    /// The weights and biases, layer by layer.
    pub(crate) fn parameters(&self) -> Vec<&Tensor> {
        self.layers
            .iter()
            .flat_map(|l| std::iter::once(l.weight()).chain(l.bias()))
            .collect()
    }

    /// Number of parameters.
    pub(crate) fn param_count(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weight().elem_count() + l.bias().map_or(0, |b| b.elem_count()))
            .sum()
    }

    /// The hidden stack (every layer but the last) on rows `x`.
    fn hidden(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers[..self.layers.len().saturating_sub(1)] {
            let mut z = dense_activated(layer, &h, self.activation)?;
            // Identity links only inside the hidden stack (never into the linear output).
            if self.residual && z.dims() == h.dims() {
                z = (z + &h)?;
            }
            h = z;
        }
        Ok(h)
    }

    /// The output on rows `x` `[N, F]` as `k` blocks `[k, P/k, N]` (block `k` holds output
    /// features `k·P/k ..`, transposed), without rearranging `[N, P]` with a strided copy
    /// (on DeepONet-CNN's trunk, 10,000 × 800 values, that copy was half a forward): the
    /// last layer is applied as `W · hᵀ`, whose `[P, N]` rows are already ordered block by
    /// block, so the blocks are a reshape of it (one product, no stacking copy).
    pub(crate) fn forward_blocks(&self, x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let Some(last) = self.layers.last() else {
            candle_core::bail!("a network without layers has no output blocks");
        };
        let p = last.weight().dim(0)?;
        if k == 0 || p % k != 0 {
            candle_core::bail!("output width {p} must be divisible by {k}");
        }
        let n = x.dim(0)?;
        let act = self.last_act();
        let h = self.hidden(x)?;
        if let (Some(b), Some(fused)) = (last.bias(), fused_activation(act)) {
            let blocks = DenseLayout::ColumnBlocks(k);
            return no_layers::ops::dense::dense(&h, last.weight(), b, fused, blocks);
        }
        let mut z = last.weight().matmul(&h.t()?)?;
        if let Some(b) = last.bias() {
            // One bias per row: a per-channel bias of `[1, P, N]`, whose backward is a
            // contiguous row sum instead of candle's strided reduction.
            z = add_channel_bias(&z.unsqueeze(0)?, b)?.squeeze(0)?;
        }
        act.apply(&z)?.reshape((k, p / k, n))
    }
}

impl Module for Fnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.hidden(x)?;
        let Some(last) = self.layers.last() else {
            return Ok(h);
        };
        dense_activated(last, &h, self.last_act())
    }
}

impl Fnn {
    /// The activation of the last layer (the identity unless `last_activation`).
    fn last_act(&self) -> Activation {
        if self.last_activation {
            self.activation
        } else {
            Activation::Linear
        }
    }
}

/// The activations the fused dense op ([`no_layers::ops::dense`]) applies itself. ReLU is not
/// among them: its derivative at 0 cannot be told from the output alone, and candle's
/// (used here) passes the gradient at 0 (`x ≥ 0`), which matters on the trunk, whose
/// first-layer pre-activations are exactly 0 at `(t, x) = (0, 0)` while biases are zero.
fn fused_activation(act: Activation) -> Option<DenseActivation> {
    match act {
        Activation::Tanh => Some(DenseActivation::Tanh),
        Activation::Linear => Some(DenseActivation::Identity),
        Activation::Relu | Activation::Gelu | Activation::Silu | Activation::Sigmoid => None,
    }
}

/// `act(x·Wᵀ + b)` on rows `[N, F_in]`: one fused op ([`no_layers::ops::dense::dense`]: one
/// autograd node instead of three, each of which candle's backward would zero-fill and add
/// into) when the layer has a bias and `act` is one the op applies; [`dense`] and the
/// activation otherwise.
fn dense_activated(layer: &Linear, x: &Tensor, act: Activation) -> candle_core::Result<Tensor> {
    if let (Some(b), Some(fused), 2) = (layer.bias(), fused_activation(act), x.rank()) {
        return no_layers::ops::dense::dense(x, layer.weight(), b, fused, DenseLayout::Rows);
    }
    act.apply(&dense(layer, x)?)
}

/// `x·Wᵀ + b` on rows `[N, F_in]` (what `Linear::forward` computes), with the bias added
/// by [`add_feature_bias`], whose backward avoids candle's strided row reduction.
///
/// When the weight is larger than the output (the branch's first layer: 256 × 10,000
/// weights, one row per sample) the product is taken as `(W·xᵀ)ᵀ`: the same values, but
/// the weight gradient then comes out of the backward GEMM in `W`'s own layout instead
/// of as a transposed view that candle copies element by element, and only the small
/// output is transposed.
fn dense(layer: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
    let w = layer.weight();
    let rows = x.elem_count() / x.dim(candle_core::D::Minus1)?.max(1);
    let y = if x.rank() == 2 && w.elem_count() > rows * w.dim(0)? {
        w.matmul(&x.t()?)?.t()?
    } else if x.rank() == 2 {
        // Not `broadcast_matmul`: with nothing to broadcast, candle still records a
        // broadcast whose backward runs a (no-op) strided reduction over the whole gradient.
        x.matmul(&w.t()?)?
    } else {
        x.broadcast_matmul(&w.t()?)?
    };
    match layer.bias() {
        Some(b) => add_feature_bias(&y, b),
        None => Ok(y),
    }
}

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

fn shape_error(context: &str, got: &[usize], expected: String) -> candle_core::Error {
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
fn trunk_blocks(trunk: &Tensor, k: usize) -> candle_core::Result<Tensor> {
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
    let (b, p) = branch.dims2()?;
    let (k, q, _) = blocks.dims3()?;
    if p != k * q {
        candle_core::bail!("branch width {p} must equal the trunk width {}", k * q);
    }
    // [K, B, q] x [K, q, N] -> [K, B, N]
    let br = branch.reshape((b, k, q))?.transpose(0, 1)?.contiguous()?;
    let out = br.matmul(blocks)?.transpose(0, 1)?;
    match bias {
        Some(bias) => add_channel_bias(&out, bias),
        None => Ok(out),
    }
}

/// Configuration of DeepONet (MLP branch and trunk).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeepOnetConfig {
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Training grid `[nt, nx]`; the branch input size is `in_channels · nt · nx`.
    pub grid: [usize; 2],
    /// Hidden widths of the branch MLP.
    pub branch_hidden: Vec<usize>,
    /// Hidden widths of the trunk MLP (its input is `(t, x)`).
    pub trunk_hidden: Vec<usize>,
    /// Total number of basis functions, split evenly over the outputs.
    pub n_basis: usize,
    /// Activation of the branch's hidden layers.
    pub branch_activation: Activation,
    /// Activation of the trunk's layers (its last layer included, as in DeepXDE).
    pub trunk_activation: Activation,
    /// Whether each output has its own scalar bias.
    pub bias: bool,
}

impl Default for DeepOnetConfig {
    /// DeepXDE-sized default: branch `[10000, 256, 256, 256]`, trunk `[2, 256, 256, 256]`,
    /// 256 basis functions (128 per output), tanh.
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            grid: [100, 100],
            branch_hidden: vec![256, 256],
            trunk_hidden: vec![256, 256],
            n_basis: 256,
            branch_activation: Activation::Tanh,
            trunk_activation: Activation::Tanh,
            bias: true,
        }
    }
}

fn check_basis_split(model: &'static str, n_basis: usize, out_channels: usize) -> Result<()> {
    if out_channels == 0 || n_basis == 0 || n_basis % out_channels != 0 {
        return Err(ModelError::InvalidConfig {
            model,
            reason: format!(
                "n_basis ({n_basis}) must be a positive multiple of out_channels ({out_channels})"
            ),
        });
    }
    Ok(())
}

fn check_grid(model: &'static str, in_channels: usize, grid: [usize; 2]) -> Result<()> {
    if in_channels == 0 || grid[0] == 0 || grid[1] == 0 {
        return Err(ModelError::InvalidConfig {
            model,
            reason: format!("in_channels ({in_channels}) and grid {grid:?} must be positive"),
        });
    }
    Ok(())
}

impl DeepOnetConfig {
    fn validate(&self) -> Result<()> {
        check_grid("don", self.in_channels, self.grid)?;
        check_basis_split("don", self.n_basis, self.out_channels)?;
        if self.branch_hidden.contains(&0) || self.trunk_hidden.contains(&0) {
            return Err(ModelError::InvalidConfig {
                model: "don",
                reason: "hidden widths must be positive".into(),
            });
        }
        Ok(())
    }
}

/// The branch of a DeepONet: an MLP on the flattened input or a CNN encoder.
#[derive(Debug, Clone)]
enum Branch {
    Mlp(Fnn),
    Cnn(CnnBranch),
}

impl Branch {
    fn forward(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Branch::Mlp(f) => f.forward(&u.flatten_from(1)?),
            Branch::Cnn(c) => c.forward(u),
        }
    }

    fn param_count(&self) -> usize {
        match self {
            Branch::Mlp(f) => f.param_count(),
            Branch::Cnn(c) => c.param_count(),
        }
    }
}

/// A DeepONet (DON or DON-CNN, by its branch).
#[derive(Debug, Clone)]
pub struct DeepOnet {
    config: ModelConfig,
    in_channels: usize,
    out_channels: usize,
    grid: [usize; 2],
    branch: Branch,
    trunk: Fnn,
    bias: Option<Tensor>,
    coords: Tensor,
    trunk_cache: TrunkCache,
}

/// The trunk evaluated on the training grid, for [`NeuralOperator::predict`], with a copy
/// of the trunk weights it came from: the trunk does not depend on the input, and on the
/// default configuration it is nearly all of a forward pass.
#[derive(Debug, Default)]
struct TrunkCache(Mutex<Option<(Vec<Vec<f64>>, Tensor)>>);

impl Clone for TrunkCache {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl TrunkCache {
    /// The trunk on `coords` as [`trunk_blocks`] for `k` outputs, recomputed when any trunk
    /// weight differs (bitwise) from the copy taken with the cached value (weights change
    /// in place during training).
    fn get(&self, trunk: &Fnn, coords: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let weights = trunk
            .parameters()
            .iter()
            .map(|p| p.flatten_all()?.to_dtype(DType::F64)?.to_vec1::<f64>())
            .collect::<candle_core::Result<Vec<_>>>()?;
        let same = |a: &[Vec<f64>], b: &[Vec<f64>]| {
            a.len() == b.len()
                && a.iter().zip(b).all(|(a, b)| {
                    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
                })
        };
        let mut slot = self
            .0
            .lock()
            .map_err(|_| candle_core::Error::Msg("DeepONet trunk cache: lock poisoned".into()))?;
        if let Some((cached_weights, value)) = slot.as_ref() {
            if same(cached_weights, &weights) {
                return Ok(value.clone());
            }
        }
        let value = trunk.forward_blocks(coords, k)?.detach();
        *slot = Some((weights, value.clone()));
        Ok(value)
    }
}

impl DeepOnet {
    /// Builds a DeepONet with an MLP branch (weights under `branch.*`, `trunk.*`, `bias`).
    pub fn new(cfg: &DeepOnetConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let m = cfg.in_channels * cfg.grid[0] * cfg.grid[1];
        let branch_sizes = [&[m][..], &cfg.branch_hidden, &[cfg.n_basis]].concat();
        let branch = Fnn::new(
            &branch_sizes,
            cfg.branch_activation,
            false,
            false,
            vb.pp("branch"),
        )?;
        Self::assemble(
            ModelConfig::Don(cfg.clone()),
            (cfg.in_channels, cfg.out_channels, cfg.grid),
            Branch::Mlp(branch),
            (
                &cfg.trunk_hidden,
                cfg.trunk_activation,
                cfg.n_basis,
                cfg.bias,
            ),
            vb,
        )
    }

    /// Builds a DeepONet with a CNN branch.
    pub fn new_cnn(cfg: &DeepOnetCnnConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let branch = CnnBranch::new(cfg, vb.pp("branch"))?;
        Self::assemble(
            ModelConfig::DonCnn(cfg.clone()),
            (cfg.in_channels, cfg.out_channels, cfg.grid),
            Branch::Cnn(branch),
            (
                &cfg.trunk_hidden,
                cfg.trunk_activation,
                cfg.n_basis,
                cfg.bias,
            ),
            vb,
        )
    }

    fn assemble(
        config: ModelConfig,
        (in_channels, out_channels, grid): (usize, usize, [usize; 2]),
        branch: Branch,
        (trunk_hidden, trunk_activation, n_basis, bias): (&[usize], Activation, usize, bool),
        vb: VarBuilder,
    ) -> Result<Self> {
        let trunk_sizes = [&[2][..], trunk_hidden, &[n_basis]].concat();
        let trunk = Fnn::new(&trunk_sizes, trunk_activation, true, false, vb.pp("trunk"))?;
        let bias = if bias {
            Some(vb.get_with_hints(out_channels, "bias", Init::Const(0.0))?)
        } else {
            None
        };
        let coords = grid_coordinates(grid[0], grid[1], vb.dtype(), vb.device())?;
        Ok(Self {
            config,
            in_channels,
            out_channels,
            grid,
            branch,
            trunk,
            bias,
            coords,
            trunk_cache: TrunkCache::default(),
        })
    }

    fn check_input(&self, input: &Tensor) -> candle_core::Result<()> {
        let dims = input.dims();
        if dims.len() != 4
            || dims[1] != self.in_channels
            || dims[2] != self.grid[0]
            || dims[3] != self.grid[1]
        {
            return Err(shape_error(
                "DeepONet input",
                dims,
                format!(
                    "[B, {}, {}, {}] (the branch sees a fixed grid; resample other grids first)",
                    self.in_channels, self.grid[0], self.grid[1]
                ),
            ));
        }
        Ok(())
    }

    /// Evaluates the operator at arbitrary query points: `coords` is `[N, 2]` holding
    /// `(t, x)` scaled to `[0, 1]` as in [`grid_coordinates`]; the result is `[B, C_out, N]`.
    pub fn forward_at(&self, input: &Tensor, coords: &Tensor) -> candle_core::Result<Tensor> {
        self.check_input(input)?;
        let cd = coords.dims();
        if cd.len() != 2 || cd[1] != 2 {
            return Err(shape_error(
                "DeepONet query points",
                cd,
                "[N, 2] holding (t, x)".into(),
            ));
        }
        let b = self.branch.forward(input)?;
        let blocks = self.trunk.forward_blocks(coords, self.out_channels)?;
        combine_with_trunk_blocks(&b, &blocks, self.bias.as_ref())
    }
}

impl NeuralOperator for DeepOnet {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let out = self.forward_at(input, &self.coords)?;
        let bsz = out.dim(0)?;
        out.reshape((bsz, self.out_channels, self.grid[0], self.grid[1]))
    }

    fn predict(&self, input: &Tensor) -> candle_core::Result<Tensor> {
        self.check_input(input)?;
        let blocks = self
            .trunk_cache
            .get(&self.trunk, &self.coords, self.out_channels)?;
        let out =
            combine_with_trunk_blocks(&self.branch.forward(input)?, &blocks, self.bias.as_ref())?;
        let bsz = out.dim(0)?;
        Ok(out
            .reshape((bsz, self.out_channels, self.grid[0], self.grid[1]))?
            .detach())
    }

    fn architecture(&self) -> &str {
        self.config.name()
    }

    fn config_json(&self) -> serde_json::Value {
        self.config.to_json()
    }

    fn rebuild(&self, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
        crate::config::build(&self.config, vb)
    }

    fn param_count(&self) -> ParamCount {
        let n = self.branch.param_count()
            + self.trunk.param_count()
            + self.bias.as_ref().map_or(0, |b| b.elem_count());
        ParamCount { numel: n, real: n }
    }

    fn accepts_other_resolutions(&self) -> bool {
        false
    }
}

/// Configuration of DeepONet with a CNN branch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
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
    pub conv_activation: Activation,
    /// Hidden widths of the branch MLP after flattening.
    pub branch_hidden: Vec<usize>,
    /// Identity links between consecutive branch MLP layers of equal width.
    pub branch_residual: bool,
    /// Activation of the branch MLP's hidden layers.
    pub branch_activation: Activation,
    /// Hidden widths of the trunk MLP.
    pub trunk_hidden: Vec<usize>,
    /// Activation of the trunk (last layer included).
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

    fn validate(&self) -> Result<()> {
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
/// `(H + 2p − k) mod s ≠ (W + 2p − k) mod s` (see `shared/notes/candle-and-friends.md` §2b).
#[derive(Debug, Clone)]
struct ConvStage {
    weight: Tensor,
    bias: Tensor,
    stride: usize,
    padding: usize,
}

/// The 2D CNN encoder followed by an MLP.
#[derive(Debug, Clone)]
struct CnnBranch {
    convs: Vec<ConvStage>,
    conv_activation: Activation,
    mlp: Fnn,
}

impl CnnBranch {
    fn new(cfg: &DeepOnetCnnConfig, vb: VarBuilder) -> Result<Self> {
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

    fn forward(&self, u: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = u.clone();
        for c in &self.convs {
            let y = no_layers::ops::conv2d::conv2d(&x, &c.weight, c.padding, c.stride)?;
            let y = no_layers::ops::channel_affine::add_channel_bias(&y, &c.bias)?;
            x = self.conv_activation.apply(&y)?;
        }
        self.mlp.forward(&x.flatten_from(1)?)
    }

    fn param_count(&self) -> usize {
        let convs: usize = self
            .convs
            .iter()
            .map(|c| c.weight.elem_count() + c.bias.elem_count())
            .sum();
        convs + self.mlp.param_count()
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use no_layers::init::SeededVarMap;

    #[test]
    fn output_blocks_equal_the_rearranged_output() -> candle_core::Result<()> {
        // Residual links, an activation on the last layer and two blocks: every branch of
        // `forward_blocks` against `forward` followed by the strided rearrangement.
        let vars = SeededVarMap::new(5);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let net = Fnn::new(&[2, 6, 6, 8], Activation::Tanh, true, true, vb)?;
        let x = grid_coordinates(4, 3, DType::F64, &Device::Cpu)?;
        let want = trunk_blocks(&net.forward(&x)?, 2)?;
        let got = net.forward_blocks(&x, 2)?;
        assert_eq!(got.dims(), &[2, 4, 12]);
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-14, "{diff}");
        assert!(net.forward_blocks(&x, 3).is_err());
        Ok(())
    }
}
