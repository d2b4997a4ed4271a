//! CNO, the convolutional neural operator (simplified 2D version of the official code).
//!
//! An operator U-Net whose every nonlinearity is CNO's anti-aliased activation
//! ([`no_layers::layers::cno_activation`]: upsample ×2 → LeakyReLU → downsample, antialiased
//! bicubic), and whose every change of resolution happens inside that activation, so
//! the network is (approximately) band-limited and translation equivariant away from its
//! zero-padded boundaries. There is no positional embedding.
//!
//! ```text
//! lift:    CNOBlock(C_in → latent, same size) → conv(latent → cm/2)
//! encoder: for each level l < L: skip_l = ResNet_l(x) (n_res residual blocks);
//!          x = CNOBlock(x, size_l → size_{l+1})      ← consumes x, not skip_l (as upstream)
//! neck:    x = ResNet(x) (n_res_neck blocks)
//! decoder: step 0: x = ED(x); step i > 0: x = cat(x, ED(skip_{L−i}));
//!          x = CNOBlock(x, size_{L−i} → size_{L−i−1})
//! project: cat(x, ED(skip_0)) → CNOBlock(→ latent) → conv(latent → C_out)
//! ```
//! with `size_l = ⌊n / 2^l⌋` per axis (any grid, non-powers of two included, as long as
//! the coarsest level keeps at least one point), channels `[cm/2, cm, 2cm, …, 2^{L−1}cm]`,
//! CNOBlock = conv(k, zero padding k/2) → optional batch norm → activation, residual block
//! = `x + BN(conv(act(BN(conv x))))`, and ED ("encoder–decoder expansion") a same-size
//! CNOBlock on each skip. Convolutions start from PyTorch's default init.
//!
//! Defaults follow the official simplified CNO2d training script: 4 levels, 4 residual
//! blocks per level and in the neck, channel multiplier 16, no batch norm, lift/project
//! latent width 64, kernel 3 (2,006,058 parameters for 1 input and 2 output channels).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::{Module, ModuleT, Tensor};
use candle_nn::{BatchNorm, VarBuilder};
use no_layers::init::{torch_default_bias, torch_default_weight};
use no_layers::layers::cno_activation::{CnoActivation, CnoActivationConfig};
use no_layers::layers::resample::ResampleKind;
use serde::{Deserialize, Serialize};

/// Configuration of CNO.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CnoConfig {
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Number of down (and up) levels `L`.
    pub n_layers: usize,
    /// Residual blocks per encoder level.
    pub n_res: usize,
    /// Residual blocks in the bottleneck.
    pub n_res_neck: usize,
    /// Channel multiplier `cm`: level l has `2^l · cm` channels, the lifted field `cm/2`.
    pub channel_multiplier: usize,
    /// Width of the hidden layer of the lifting and projection blocks.
    pub latent_lift_proj_dim: usize,
    /// Convolution kernel size (odd; zero padding `k/2` keeps the size).
    pub kernel_size: usize,
    /// Batch norm after each convolution of the CNO and residual blocks (not in lift/project).
    pub batch_norm: bool,
    /// Slope of the leaky ReLU inside the activation (upstream: 0.01).
    pub negative_slope: f64,
    /// Upsampling factor of the activation's intermediate grid (upstream: 2).
    pub upsampling: usize,
    /// Resampling kernel (upstream simplified CNO: antialiased bicubic).
    pub resample: ResampleKind,
    /// How the convolutions pad the time axis (upstream: zeros). An experiment option
    /// (docs/cno-equivariance.md); absent from older configs, which read as zeros.
    #[serde(default, skip_serializing_if = "CnoPadding::is_zeros")]
    pub time_padding: CnoPadding,
    /// How the convolutions pad the space axis (upstream: zeros; `causal` is refused).
    #[serde(default, skip_serializing_if = "CnoPadding::is_zeros")]
    pub space_padding: CnoPadding,
}

/// Boundary treatment of CNO's size-preserving convolutions along one axis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CnoPadding {
    /// `k/2` zeros on both sides (the official code).
    #[default]
    Zeros,
    /// `k/2` copies of the edge value on both sides.
    Replicate,
    /// `k/2` mirrored values on both sides, edge excluded (PyTorch's `reflect`).
    Reflect,
    /// `2·(k/2)` zeros before the first row only: each output row sees only the current
    /// and earlier rows of its input (time axis only).
    Causal,
}

impl CnoPadding {
    /// Whether this is the official zero padding (left out of serialised configs, so
    /// that configs and checkpoints written before the option existed are unchanged).
    pub fn is_zeros(&self) -> bool {
        *self == CnoPadding::Zeros
    }
}

impl Default for CnoConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            n_layers: 4,
            n_res: 4,
            n_res_neck: 4,
            channel_multiplier: 16,
            latent_lift_proj_dim: 64,
            kernel_size: 3,
            batch_norm: false,
            negative_slope: 0.01,
            upsampling: 2,
            resample: ResampleKind::BicubicAntialias,
            time_padding: CnoPadding::Zeros,
            space_padding: CnoPadding::Zeros,
        }
    }
}

impl CnoConfig {
    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(ModelError::InvalidConfig {
                model: "cno",
                reason,
            })
        };
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_lift_proj_dim == 0 {
            return bad("channel counts must be positive".into());
        }
        if self.channel_multiplier < 2 {
            return bad(format!(
                "channel_multiplier {} must be at least 2",
                self.channel_multiplier
            ));
        }
        if self.kernel_size.is_multiple_of(2) {
            return bad(format!("kernel_size {} must be odd", self.kernel_size));
        }
        if self.space_padding == CnoPadding::Causal {
            return bad(
                "space_padding must be zeros, replicate or reflect (causal is for time)".into(),
            );
        }
        if self.n_layers > 16 {
            return bad(format!(
                "n_layers {} is unreasonably deep (at most 16)",
                self.n_layers
            ));
        }
        Ok(())
    }

    /// Channels of the encoder levels: `[cm/2, cm, 2cm, …, 2^{L−1} cm]`.
    pub fn encoder_channels(&self) -> Vec<usize> {
        let mut c = vec![self.channel_multiplier / 2];
        c.extend((0..self.n_layers).map(|i| self.channel_multiplier << i));
        c
    }

    /// The activation block every level shares (each call names its output size), so its
    /// cache of resize plans lives as long as the model.
    fn activation(&self) -> Result<CnoActivation> {
        Ok(CnoActivation::new(&CnoActivationConfig {
            out_size: None,
            upsampling: self.upsampling,
            negative_slope: self.negative_slope,
            kind: self.resample,
        })?)
    }
}

/// A size-preserving convolution with bias (zero padding unless the config says otherwise).
#[derive(Debug, Clone)]
struct Conv {
    weight: Tensor,
    bias: Tensor,
    padding: usize,
    time_padding: CnoPadding,
    space_padding: CnoPadding,
}

impl Conv {
    fn new(
        c_in: usize,
        c_out: usize,
        cfg: &CnoConfig,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let k = cfg.kernel_size;
        let fan_in = c_in * k * k;
        Ok(Self {
            weight: vb.get_with_hints(
                (c_out, c_in, k, k),
                "weight",
                torch_default_weight(fan_in),
            )?,
            bias: vb.get_with_hints(c_out, "bias", torch_default_bias(fan_in))?,
            padding: k / 2,
            time_padding: cfg.time_padding,
            space_padding: cfg.space_padding,
        })
    }

    fn params(&self) -> usize {
        self.weight.elem_count() + self.bias.elem_count()
    }
}

impl Module for Conv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let zeros =
            (self.time_padding, self.space_padding) == (CnoPadding::Zeros, CnoPadding::Zeros);
        let y = if zeros || self.padding == 0 {
            // The official path, unchanged: the convolution pads with zeros itself.
            no_layers::ops::conv2d::conv2d(x, &self.weight, self.padding, 1)?
        } else {
            let x = pad_axis(x, 2, self.padding, self.time_padding)?;
            let x = pad_axis(&x, 3, self.padding, self.space_padding)?;
            no_layers::ops::conv2d::conv2d(&x, &self.weight, 0, 1)?
        };
        no_layers::ops::channel_affine::add_channel_bias(&y, &self.bias)
    }
}

/// Pads axis `dim` of `x` by `p` on each side (`2p` before for causal) as `mode` says.
fn pad_axis(x: &Tensor, dim: usize, p: usize, mode: CnoPadding) -> candle_core::Result<Tensor> {
    let n = x.dim(dim)?;
    match mode {
        CnoPadding::Zeros => x.pad_with_zeros(dim, p, p),
        CnoPadding::Replicate => x.pad_with_same(dim, p, p),
        CnoPadding::Causal => x.pad_with_zeros(dim, 2 * p, 0),
        CnoPadding::Reflect => {
            if p >= n {
                return Err(candle_core::Error::Msg(format!(
                    "CNO reflect padding of {p} needs more than {p} points on axis {dim}, got {n}"
                )));
            }
            // Rows p, p−1, …, 1 before and n−2, …, n−1−p after (the edge is not repeated).
            let mut parts: Vec<Tensor> = (1..=p)
                .rev()
                .map(|i| x.narrow(dim, i, 1))
                .collect::<candle_core::Result<_>>()?;
            parts.push(x.clone());
            for i in 1..=p {
                parts.push(x.narrow(dim, n - 1 - i, 1)?);
            }
            Tensor::cat(&parts, dim)
        }
    }
}

/// conv → optional batch norm.
#[derive(Debug, Clone)]
struct ConvBn {
    conv: Conv,
    bn: Option<BatchNorm>,
}

impl ConvBn {
    fn new(
        c_in: usize,
        c_out: usize,
        cfg: &CnoConfig,
        bn: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let conv = Conv::new(c_in, c_out, cfg, vb.pp("conv"))?;
        let bn = if bn {
            Some(candle_nn::batch_norm(
                c_out,
                candle_nn::BatchNormConfig::default(),
                vb.pp("bn"),
            )?)
        } else {
            None
        };
        Ok(Self { conv, bn })
    }

    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let y = self.conv.forward(x)?;
        match &self.bn {
            Some(bn) => bn.forward_t(&y, train),
            None => Ok(y),
        }
    }

    /// Trainable parameters (batch norm's affine weights, not its running statistics).
    fn params(&self) -> usize {
        let c_out = self.conv.bias.elem_count();
        self.conv.params() + self.bn.as_ref().map_or(0, |_| 2 * c_out)
    }
}

/// CNOBlock: conv → BN → anti-aliased activation to the requested size.
#[derive(Debug, Clone)]
struct CnoBlock {
    conv: ConvBn,
}

impl CnoBlock {
    fn new(
        c_in: usize,
        c_out: usize,
        cfg: &CnoConfig,
        bn: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            conv: ConvBn::new(c_in, c_out, cfg, bn, vb)?,
        })
    }

    fn forward_t(
        &self,
        x: &Tensor,
        out: (usize, usize),
        act: &CnoActivation,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        act.forward_to(&self.conv.forward_t(x, train)?, out)
    }
}

/// `x + BN(conv(act(BN(conv x))))`.
#[derive(Debug, Clone)]
struct ResidualBlock {
    first: ConvBn,
    second: ConvBn,
}

impl ResidualBlock {
    fn forward_t(
        &self,
        x: &Tensor,
        act: &CnoActivation,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        let y = act.forward_to(&self.first.forward_t(x, train)?, (h, w))?;
        x + self.second.forward_t(&y, train)?
    }
}

fn res_net(
    n: usize,
    c: usize,
    cfg: &CnoConfig,
    vb: VarBuilder,
) -> candle_core::Result<Vec<ResidualBlock>> {
    (0..n)
        .map(|i| {
            let bvb = vb.pp(i.to_string());
            Ok(ResidualBlock {
                first: ConvBn::new(c, c, cfg, cfg.batch_norm, bvb.pp("first"))?,
                second: ConvBn::new(c, c, cfg, cfg.batch_norm, bvb.pp("second"))?,
            })
        })
        .collect()
}

/// Lifting / projection: CNOBlock(→ latent, no batch norm, same size) → conv.
#[derive(Debug, Clone)]
struct LiftProject {
    block: CnoBlock,
    conv: Conv,
}

impl LiftProject {
    fn new(
        c_in: usize,
        c_out: usize,
        cfg: &CnoConfig,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        Ok(Self {
            block: CnoBlock::new(c_in, cfg.latent_lift_proj_dim, cfg, false, vb.pp("block"))?,
            conv: Conv::new(cfg.latent_lift_proj_dim, c_out, cfg, vb.pp("conv"))?,
        })
    }

    fn forward_t(
        &self,
        x: &Tensor,
        act: &CnoActivation,
        train: bool,
    ) -> candle_core::Result<Tensor> {
        let (_, _, h, w) = x.dims4()?;
        self.conv
            .forward(&self.block.forward_t(x, (h, w), act, train)?)
    }

    fn params(&self) -> usize {
        self.block.conv.params() + self.conv.params()
    }
}

/// The convolutional neural operator.
#[derive(Debug, Clone)]
pub struct Cno {
    cfg: CnoConfig,
    lift: LiftProject,
    project: LiftProject,
    encoder: Vec<CnoBlock>,
    /// One per level 0..=L, applied to the skips (and to the neck output at level L).
    expansion: Vec<CnoBlock>,
    decoder: Vec<CnoBlock>,
    res_nets: Vec<Vec<ResidualBlock>>,
    neck: Vec<ResidualBlock>,
    /// The activation block of every level, with its plan cache.
    activation: CnoActivation,
}

impl Cno {
    /// Builds CNO with weights from `vb` (names `lift.*`, `encoder.{l}.*`, `expansion.{l}.*`,
    /// `decoder.{i}.*`, `res.{l}.{j}.*`, `neck.{j}.*`, `project.*`).
    pub fn new(cfg: &CnoConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let l = cfg.n_layers;
        let enc = cfg.encoder_channels();
        // Decoder inputs: the neck width, then doubled by the skip concatenation.
        let dec_in: Vec<usize> = (0..l)
            .map(|i| if i == 0 { enc[l] } else { 2 * enc[l - i] })
            .collect();
        let dec_out: Vec<usize> = (0..l).map(|i| enc[l - 1 - i]).collect();
        let bn = cfg.batch_norm;
        let lift = LiftProject::new(cfg.in_channels, enc[0], cfg, vb.pp("lift"))?;
        let project = LiftProject::new(
            enc[0] + dec_out.last().copied().unwrap_or(enc[0]),
            cfg.out_channels,
            cfg,
            vb.pp("project"),
        )?;
        let encoder = (0..l)
            .map(|i| CnoBlock::new(enc[i], enc[i + 1], cfg, bn, vb.pp(format!("encoder.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let expansion = (0..=l)
            .map(|i| CnoBlock::new(enc[i], enc[i], cfg, bn, vb.pp(format!("expansion.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let decoder = (0..l)
            .map(|i| {
                CnoBlock::new(
                    dec_in[i],
                    dec_out[i],
                    cfg,
                    bn,
                    vb.pp(format!("decoder.{i}")),
                )
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let res_nets = (0..l)
            .map(|i| res_net(cfg.n_res, enc[i], cfg, vb.pp(format!("res.{i}"))))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let neck = res_net(cfg.n_res_neck, enc[l], cfg, vb.pp("neck"))?;
        Ok(Self {
            cfg: cfg.clone(),
            lift,
            project,
            encoder,
            expansion,
            decoder,
            res_nets,
            neck,
            activation: cfg.activation()?,
        })
    }

    /// The sizes of the levels for an `nt × nx` input: `⌊n/2^l⌋` per axis, `l = 0..=L`.
    pub fn level_sizes(&self, nt: usize, nx: usize) -> Vec<(usize, usize)> {
        (0..=self.cfg.n_layers)
            .map(|l| (nt >> l, nx >> l))
            .collect()
    }

    fn check_input(&self, x: &Tensor) -> candle_core::Result<(usize, usize)> {
        let dims = x.dims();
        let min = 1usize << self.cfg.n_layers;
        if dims.len() != 4 || dims[1] != self.cfg.in_channels || dims[2] < min || dims[3] < min {
            return Err(candle_core::Error::Msg(
                ModelError::Shape {
                    context: "CNO input".into(),
                    got: dims.to_vec(),
                    expected: format!(
                        "[B, {}, nt, nx] with nt, nx ≥ {min} (2^n_layers, so the coarsest level keeps a point)",
                        self.cfg.in_channels
                    ),
                }
                .to_string(),
            ));
        }
        Ok((dims[2], dims[3]))
    }
}

fn run_res(
    blocks: &[ResidualBlock],
    x: Tensor,
    act: &CnoActivation,
    train: bool,
) -> candle_core::Result<Tensor> {
    blocks
        .iter()
        .try_fold(x, |h, b| b.forward_t(&h, act, train))
}

impl Cno {
    fn model_config(&self) -> ModelConfig {
        ModelConfig::Cno(self.cfg.clone())
    }
}

impl NeuralOperator for Cno {
    fn forward_t(&self, input: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        let (nt, nx) = self.check_input(input)?;
        let act = &self.activation;
        let l = self.cfg.n_layers;
        let sizes = self.level_sizes(nt, nx);
        let mut x = self.lift.forward_t(input, act, train)?;
        let mut skips = Vec::with_capacity(l);
        for i in 0..l {
            skips.push(run_res(&self.res_nets[i], x.clone(), act, train)?);
            x = self.encoder[i].forward_t(&x, sizes[i + 1], act, train)?;
        }
        x = run_res(&self.neck, x, act, train)?;
        for i in 0..l {
            let level = l - i;
            x = if i == 0 {
                self.expansion[level].forward_t(&x, sizes[level], act, train)?
            } else {
                let skip =
                    self.expansion[level].forward_t(&skips[level], sizes[level], act, train)?;
                Tensor::cat(&[&x, &skip], 1)?
            };
            x = self.decoder[i].forward_t(&x, sizes[level - 1], act, train)?;
        }
        let skip0 = match skips.first() {
            Some(s) => self.expansion[0].forward_t(s, sizes[0], act, train)?,
            // No levels: the expansion of the lifted field itself.
            None => self.expansion[0].forward_t(&x, sizes[0], act, train)?,
        };
        let x = Tensor::cat(&[&x, &skip0], 1)?;
        self.project.forward_t(&x, act, train)
    }

    fn architecture(&self) -> &str {
        "cno"
    }

    fn config_json(&self) -> serde_json::Value {
        self.model_config().to_json()
    }

    fn rebuild(&self, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
        crate::config::build(&self.model_config(), vb)
    }

    fn param_count(&self) -> ParamCount {
        let blocks = |v: &[CnoBlock]| v.iter().map(|b| b.conv.params()).sum::<usize>();
        let res = |v: &[ResidualBlock]| {
            v.iter()
                .map(|b| b.first.params() + b.second.params())
                .sum::<usize>()
        };
        let n = self.lift.params()
            + self.project.params()
            + blocks(&self.encoder)
            + blocks(&self.expansion)
            + blocks(&self.decoder)
            + self.res_nets.iter().map(|r| res(r)).sum::<usize>()
            + res(&self.neck);
        ParamCount { numel: n, real: n }
    }

    fn accepts_other_resolutions(&self) -> bool {
        true
    }
}

/// Builds CNO.
pub fn build(config: &CnoConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(Cno::new(config, vb)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use no_layers::init::SeededVarMap;

    /// The model keeps one activation block, so a second forward of the same size builds no
    /// plan: a block built per call would start from an empty cache every time.
    #[test]
    fn forwards_share_one_plan_cache() -> Result<()> {
        let cfg = CnoConfig {
            n_layers: 2,
            n_res: 1,
            n_res_neck: 1,
            channel_multiplier: 2,
            latent_lift_proj_dim: 4,
            ..Default::default()
        };
        let vars = SeededVarMap::new(0);
        let model = Cno::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
        let x = Tensor::ones((1, 1, 12, 10), DType::F32, &Device::Cpu)?;
        model.forward(&x)?;
        let built = model.activation.cached_plans();
        assert!(
            built > 0,
            "the fused CPU op should have planned its resizes"
        );
        model.forward(&x)?;
        model.forward_t(&x, true)?;
        assert_eq!(model.activation.cached_plans(), built);
        // Another grid adds plans to the same cache.
        model.forward(&Tensor::ones((1, 1, 8, 8), DType::F32, &Device::Cpu)?)?;
        assert!(model.activation.cached_plans() > built);
        Ok(())
    }
}
