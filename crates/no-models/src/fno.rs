//! FNO and TFNO with neuraloperator 2.x semantics.
//!
//! `grid embedding (optional) → lifting ChannelMLP → [domain padding] → n_layers FNO
//! blocks → [unpad] → projection ChannelMLP`. Block `i` (post-activation, as
//! neuraloperator's `FNOBlocks`):
//!
//! ```text
//! x' = SpectralConv_i(x) + fno_skip_i(x)          (linear 1×1 skip, no bias)
//! x' = gelu(x')                                   (not on the last block)
//! x' = ChannelMLP_i(x') + channel_mlp_skip_i(x)   (soft-gating skip of the block input)
//! x' = gelu(x')                                   (not on the last block)
//! ```
//!
//! TFNO is the same model with Tucker-factorized spectral weights (rank 0.1 by default).
//! Variable names are neuraloperator's `state_dict` keys (`lifting.fcs.0.weight`,
//! `fno_blocks.convs.0.weight.tensor`, ...), complex tensors as `[..., 2]` real pairs, so
//! imported weights map one-to-one (see `docs/checkpoints.md`).
//!
//! The grid embedding (absolute coordinates) is on by default, as in neuraloperator;
//! without it and without domain padding the model commutes with circular shifts,
//! which is what the translation study probes.

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use no_layers::layers::activation::gelu;
use no_layers::layers::embedding::{GridEmbedding, GridEmbeddingConfig};
use no_layers::layers::mlp::{round_half_even, ChannelMlp, ChannelMlpConfig};
use no_layers::layers::padding::{DomainPadding, DomainPaddingConfig};
use no_layers::layers::skip::{Skip, SkipConfig, SkipKind};
use no_layers::layers::spectral::conv::{
    Factorization, SpectralConv, SpectralConvConfig, SpectralTransform, TuckerImplementation,
};
use no_layers::layers::spectral::tucker::TuckerRank;
use no_layers::ops::fno_block_tail::{fno_block_tail, fused_block_tail_applies, BlockTailWeights};
use serde::{Deserialize, Serialize};

/// TFNO's default Tucker rank (neuraloperator's `TFNO` sets `rank=0.1`).
pub const TFNO_DEFAULT_RANK: f64 = 0.1;

/// Configuration of FNO and TFNO, with neuraloperator's argument names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FnoConfig {
    /// Total modes per spatial axis (`[16, 16]` keeps k ∈ [−8, 7] × [0, 8]).
    pub n_modes: Vec<usize>,
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Width of the blocks.
    pub hidden_channels: usize,
    /// Number of FNO blocks.
    pub n_layers: usize,
    /// Hidden width of the lifting MLP over `hidden_channels` (0: a single linear layer).
    pub lifting_channel_ratio: f64,
    /// Hidden width of the projection MLP over `hidden_channels`.
    pub projection_channel_ratio: f64,
    /// Append the grid coordinates `linspace(0, 1, n+1)[:-1]` per axis as input channels.
    pub positional_embedding: bool,
    /// Channel MLP inside each block.
    pub use_channel_mlp: bool,
    /// Hidden width of the block channel MLPs over `hidden_channels`.
    pub channel_mlp_expansion: f64,
    /// Skip around the block channel MLP.
    pub channel_mlp_skip: SkipKind,
    /// Skip around the spectral convolution.
    pub fno_skip: SkipKind,
    /// Zero-padding fraction per side (`None`: no padding).
    pub domain_padding: Option<f64>,
    /// Tucker rank (TFNO only; `None`: [`TFNO_DEFAULT_RANK`]).
    pub rank: Option<TuckerRank>,
    /// How Tucker weights meet the spectrum (TFNO only).
    pub implementation: TuckerImplementation,
    /// How the last axis is transformed (a speed choice, same results).
    pub transform: SpectralTransform,
}

impl Default for FnoConfig {
    fn default() -> Self {
        Self {
            n_modes: vec![16, 16],
            in_channels: 1,
            out_channels: 2,
            hidden_channels: 32,
            n_layers: 4,
            lifting_channel_ratio: 2.0,
            projection_channel_ratio: 2.0,
            positional_embedding: true,
            use_channel_mlp: true,
            channel_mlp_expansion: 0.5,
            channel_mlp_skip: SkipKind::SoftGating,
            fno_skip: SkipKind::Linear,
            domain_padding: None,
            rank: None,
            implementation: TuckerImplementation::Factorized,
            transform: SpectralTransform::default(),
        }
    }
}

impl FnoConfig {
    /// Checks ranges (more checks happen in the layers).
    pub fn validate(&self, model: &'static str) -> Result<()> {
        let bad = |reason: String| Err(ModelError::InvalidConfig { model, reason });
        if self.in_channels == 0 || self.out_channels == 0 || self.hidden_channels == 0 {
            return bad(format!(
                "channels must be positive (in {}, hidden {}, out {})",
                self.in_channels, self.hidden_channels, self.out_channels
            ));
        }
        if self.n_layers == 0 {
            return bad("n_layers must be at least 1".into());
        }
        if !(1..=2).contains(&self.n_modes.len()) {
            return bad(format!(
                "n_modes must have 1 or 2 entries, got {:?}",
                self.n_modes
            ));
        }
        for (name, r) in [
            ("lifting_channel_ratio", self.lifting_channel_ratio),
            ("projection_channel_ratio", self.projection_channel_ratio),
            ("channel_mlp_expansion", self.channel_mlp_expansion),
        ] {
            if !(r.is_finite() && r >= 0.0) {
                return bad(format!("{name} must be finite and >= 0, got {r}"));
            }
        }
        if self.projection_channel_ratio * self.hidden_channels as f64 <= 0.0 {
            return bad("projection_channel_ratio * hidden_channels must be at least 1".into());
        }
        Ok(())
    }
}

/// Lifting, projection, embedding and padding: the parts FNO and LocalNO share.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    embedding: Option<GridEmbedding>,
    lifting: ChannelMlp,
    projection: ChannelMlp,
    padding: Option<DomainPadding>,
    pub(crate) real_params: usize,
}

/// The frame's settings.
pub(crate) struct FrameSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub hidden_channels: usize,
    pub n_dim: usize,
    pub lifting_channel_ratio: f64,
    pub projection_channel_ratio: f64,
    pub positional_embedding: bool,
    pub domain_padding: Option<f64>,
}

impl Frame {
    pub(crate) fn new(s: &FrameSpec, vb: &VarBuilder) -> Result<Self> {
        let embedding = if s.positional_embedding {
            Some(GridEmbedding::new(&GridEmbeddingConfig {
                in_channels: s.in_channels,
                n_dim: s.n_dim,
                grid_boundaries: vec![[0.0, 1.0]; s.n_dim],
            })?)
        } else {
            None
        };
        let lift_in = s.in_channels + if s.positional_embedding { s.n_dim } else { 0 };
        // neuraloperator: `int(ratio * hidden)`, truncation.
        let lifting_channels = (s.lifting_channel_ratio * s.hidden_channels as f64) as usize;
        let lifting_cfg = ChannelMlpConfig {
            in_channels: lift_in,
            out_channels: Some(s.hidden_channels),
            hidden_channels: Some(if lifting_channels > 0 {
                lifting_channels
            } else {
                s.hidden_channels
            }),
            n_layers: if lifting_channels > 0 { 2 } else { 1 },
            ..Default::default()
        };
        let projection_cfg = ChannelMlpConfig {
            in_channels: s.hidden_channels,
            out_channels: Some(s.out_channels),
            hidden_channels: Some((s.projection_channel_ratio * s.hidden_channels as f64) as usize),
            n_layers: 2,
            ..Default::default()
        };
        let lifting = ChannelMlp::new(&lifting_cfg, vb.pp("lifting"))?;
        let projection = ChannelMlp::new(&projection_cfg, vb.pp("projection"))?;
        let padding = match s.domain_padding {
            Some(p) if p > 0.0 => Some(DomainPadding::new(&DomainPaddingConfig {
                fractions: vec![p],
            })?),
            _ => None,
        };
        let real_params = mlp_params(&lifting_cfg) + mlp_params(&projection_cfg);
        Ok(Self {
            embedding,
            lifting,
            projection,
            padding,
            real_params,
        })
    }

    /// Embedding, lifting and padding; returns the latent field and the unpadded grid.
    pub(crate) fn enter(&self, x: &Tensor) -> Result<(Tensor, Vec<usize>)> {
        let x = match &self.embedding {
            Some(e) => e.forward(x)?,
            None => x.clone(),
        };
        let x = self.lifting.forward(&x)?;
        let grid = x.dims()[2..].to_vec();
        let x = match &self.padding {
            Some(p) => p.pad(&x)?,
            None => x,
        };
        Ok((x, grid))
    }

    /// Unpadding and projection.
    pub(crate) fn exit(&self, x: &Tensor, grid: &[usize]) -> Result<Tensor> {
        let x = match &self.padding {
            Some(p) => p.unpad(x, grid)?,
            None => x.clone(),
        };
        Ok(self.projection.forward(&x)?)
    }
}

/// Real parameters of a channel MLP built from `cfg`.
pub(crate) fn mlp_params(cfg: &ChannelMlpConfig) -> usize {
    let hidden = cfg.hidden_channels.unwrap_or(cfg.in_channels);
    (0..cfg.n_layers)
        .map(|i| {
            let fan_in = if i == 0 { cfg.in_channels } else { hidden };
            let fan_out = if i + 1 == cfg.n_layers {
                cfg.out()
            } else {
                hidden
            };
            fan_out * fan_in + fan_out
        })
        .sum()
}

/// Real parameters of a skip.
pub(crate) fn skip_params(cfg: &SkipConfig) -> usize {
    match cfg.kind {
        SkipKind::Identity => 0,
        SkipKind::Linear => cfg.in_channels * cfg.out_channels,
        SkipKind::SoftGating => cfg.in_channels * if cfg.bias { 2 } else { 1 },
    }
}

/// (numel, real) parameters of a spectral convolution: complex weights count once in
/// numel and twice in real numbers; the bias is real.
pub(crate) fn spectral_params(cfg: &SpectralConvConfig) -> Result<(usize, usize)> {
    let shape = cfg.weight_shape();
    let complex = match cfg.factorization {
        None => shape.iter().product(),
        Some(Factorization::Tucker) => {
            let rank = cfg.rank.resolve(&shape)?;
            rank.iter().product::<usize>()
                + shape.iter().zip(&rank).map(|(s, r)| s * r).sum::<usize>()
        }
    };
    let bias = if cfg.bias { cfg.out_channels } else { 0 };
    Ok((complex + bias, 2 * complex + bias))
}

/// The spectral convolution of the blocks.
pub(crate) fn block_spectral_config(
    hidden: usize,
    n_modes: &[usize],
    tucker: Option<TuckerRank>,
    implementation: TuckerImplementation,
    transform: SpectralTransform,
) -> SpectralConvConfig {
    SpectralConvConfig {
        in_channels: hidden,
        out_channels: hidden,
        n_modes: n_modes.to_vec(),
        bias: true,
        factorization: tucker.as_ref().map(|_| Factorization::Tucker),
        rank: tucker.unwrap_or_default(),
        implementation,
        init_std: None,
        transform,
    }
}

/// One FNO block.
#[derive(Debug, Clone)]
struct FnoBlock {
    conv: SpectralConv,
    skip: Skip,
    mlp: Option<(ChannelMlp, Skip)>,
    /// The weights of the point-wise part when it has the fused op's form.
    fused_tail: Option<BlockTailWeights>,
}

/// FNO or TFNO.
#[derive(Debug, Clone)]
pub struct Fno {
    cfg: FnoConfig,
    tucker: bool,
    frame: Frame,
    blocks: Vec<FnoBlock>,
    params: ParamCount,
}

impl Fno {
    /// Builds FNO (`tucker = false`) or TFNO (`tucker = true`) with its variables under `vb`.
    pub fn new(cfg: &FnoConfig, tucker: bool, vb: VarBuilder) -> Result<Self> {
        let model = if tucker { "tfno" } else { "fno" };
        cfg.validate(model)?;
        let n_dim = cfg.n_modes.len();
        let h = cfg.hidden_channels;
        let frame = Frame::new(
            &FrameSpec {
                in_channels: cfg.in_channels,
                out_channels: cfg.out_channels,
                hidden_channels: h,
                n_dim,
                lifting_channel_ratio: cfg.lifting_channel_ratio,
                projection_channel_ratio: cfg.projection_channel_ratio,
                positional_embedding: cfg.positional_embedding,
                domain_padding: cfg.domain_padding,
            },
            &vb,
        )?;
        let rank = tucker.then(|| {
            cfg.rank
                .clone()
                .unwrap_or(TuckerRank::Fraction(TFNO_DEFAULT_RANK))
        });
        let conv_cfg =
            block_spectral_config(h, &cfg.n_modes, rank, cfg.implementation, cfg.transform);
        let skip_cfg = SkipConfig {
            in_channels: h,
            out_channels: h,
            n_dim,
            kind: cfg.fno_skip,
            bias: false,
        };
        let mlp_cfg = ChannelMlpConfig::with_expansion(h, cfg.channel_mlp_expansion);
        let mlp_skip_cfg = SkipConfig {
            kind: cfg.channel_mlp_skip,
            ..skip_cfg.clone()
        };
        let bvb = vb.pp("fno_blocks");
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            let conv = SpectralConv::new(&conv_cfg, bvb.pp("convs").pp(i))?;
            let skip = Skip::new(&skip_cfg, bvb.pp("fno_skips").pp(i))?;
            let mlp = if cfg.use_channel_mlp {
                Some((
                    ChannelMlp::new(&mlp_cfg, bvb.pp("channel_mlp").pp(i))?,
                    Skip::new(&mlp_skip_cfg, bvb.pp("channel_mlp_skips").pp(i))?,
                ))
            } else {
                None
            };
            let fused_tail = mlp
                .as_ref()
                .and_then(|(m, gate)| BlockTailWeights::from_layers(&skip, m, gate));
            blocks.push(FnoBlock {
                conv,
                skip,
                mlp,
                fused_tail,
            });
        }
        let (conv_numel, conv_real) = spectral_params(&conv_cfg)?;
        let block_real = skip_params(&skip_cfg)
            + if cfg.use_channel_mlp {
                mlp_params(&mlp_cfg) + skip_params(&mlp_skip_cfg)
            } else {
                0
            };
        let n = cfg.n_layers;
        let params = ParamCount {
            numel: frame.real_params + n * (conv_numel + block_real),
            real: frame.real_params + n * (conv_real + block_real),
        };
        Ok(Self {
            cfg: cfg.clone(),
            tucker,
            frame,
            blocks,
            params,
        })
    }

    fn block(&self, i: usize, x: &Tensor) -> candle_core::Result<Tensor> {
        let b = &self.blocks[i];
        let last = i + 1 == self.blocks.len();
        if let (Some(tail), true) = (&b.fused_tail, fused_block_tail_applies(x)) {
            // Everything after the spectral convolution in one op (no_layers::ops::fno_block_tail).
            return fno_block_tail(x, &b.conv.forward(x)?, tail, !last, !last);
        }
        let mut y = (b.conv.forward(x)? + b.skip.forward(x)?)?;
        if !last {
            y = gelu(&y)?;
        }
        if let Some((mlp, gate)) = &b.mlp {
            y = (mlp.forward(&y)? + gate.forward(x)?)?;
            if !last {
                y = gelu(&y)?;
            }
        }
        Ok(y)
    }
}

impl Fno {
    fn model_config(&self) -> ModelConfig {
        if self.tucker {
            ModelConfig::Tfno(self.cfg.clone())
        } else {
            ModelConfig::Fno(self.cfg.clone())
        }
    }
}

impl NeuralOperator for Fno {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let (mut x, grid) = self.frame.enter(input).map_err(to_candle)?;
        for i in 0..self.blocks.len() {
            x = self.block(i, &x)?;
        }
        self.frame.exit(&x, &grid).map_err(to_candle)
    }

    fn architecture(&self) -> &str {
        if self.tucker {
            "tfno"
        } else {
            "fno"
        }
    }

    fn config_json(&self) -> serde_json::Value {
        self.model_config().to_json()
    }

    fn rebuild(&self, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
        crate::config::build(&self.model_config(), vb)
    }

    fn param_count(&self) -> ParamCount {
        self.params
    }

    fn accepts_other_resolutions(&self) -> bool {
        true
    }
}

/// Turns a model error met inside a forward into candle's error type (the trait's).
pub(crate) fn to_candle(e: ModelError) -> candle_core::Error {
    match e {
        ModelError::Candle(c) => c,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

/// Builds FNO (`tucker = false`) or TFNO (`tucker = true`).
pub fn build(config: &FnoConfig, tucker: bool, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(Fno::new(config, tucker, vb)?))
}

/// The hidden width neuraloperator gives a block channel MLP.
pub fn channel_mlp_hidden(hidden: usize, expansion: f64) -> usize {
    round_half_even(hidden as f64 * expansion)
}
