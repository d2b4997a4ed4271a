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
//! TFNO is the same model with Tucker-factorized spectral weights: an [`FnoConfig`] with
//! `factorization: Some(Tucker)` (which `{"model": "tfno", ...}` implies; rank 0.1 by
//! default). The block is the layer [`no_layers::layers::blocks::FnoBlock`]; this file
//! only assembles the model.
//!
//! Variable names are neuraloperator's `state_dict` keys (`lifting.fcs.0.weight`,
//! `fno_blocks.convs.0.weight.tensor`, ...), complex tensors as `[..., 2]` real pairs, so
//! imported weights map one-to-one (see `docs/checkpoints.md`).
//!
//! The grid embedding (absolute coordinates) is on by default, as in neuraloperator;
//! without it and without domain padding the model commutes with circular shifts,
//! which is what the translation study probes.

use super::frame::{Frame, FrameSpec};
use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use no_layers::layers::blocks::{FnoBlock, FnoBlockConfig};
use no_layers::layers::skip::SkipKind;
use no_layers::layers::spectral::conv::{Factorization, SpectralTransform, TuckerImplementation};
use no_layers::layers::spectral::tucker::TuckerRank;
use serde::{Deserialize, Serialize};

/// TFNO's default Tucker rank (neuraloperator's `TFNO` sets `rank=0.1`).
pub const TFNO_DEFAULT_RANK: f64 = 0.1;

/// Configuration of FNO and TFNO, with neuraloperator's argument names and defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
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
    /// Factorization of the spectral weights (`Some(Tucker)`: TFNO). Under
    /// `{"model": "tfno"}` a missing value means Tucker; omitted from FNO's JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub factorization: Option<Factorization>,
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
            factorization: None,
            rank: None,
            implementation: TuckerImplementation::Factorized,
            transform: SpectralTransform::default(),
        }
    }
}

impl FnoConfig {
    /// The same configuration as TFNO: Tucker-factorized unless a factorization is set.
    pub fn tfno(&self) -> Self {
        Self {
            factorization: Some(self.factorization.unwrap_or(Factorization::Tucker)),
            ..self.clone()
        }
    }

    /// The blocks' configuration.
    pub fn block_config(&self) -> FnoBlockConfig {
        FnoBlockConfig {
            channels: self.hidden_channels,
            n_modes: self.n_modes.clone(),
            n_layers: self.n_layers,
            factorization: self.factorization,
            rank: self
                .rank
                .clone()
                .unwrap_or(TuckerRank::Fraction(TFNO_DEFAULT_RANK)),
            implementation: self.implementation,
            transform: self.transform,
            skip: self.fno_skip,
            use_channel_mlp: self.use_channel_mlp,
            channel_mlp_expansion: self.channel_mlp_expansion,
            channel_mlp_skip: self.channel_mlp_skip,
        }
    }

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

/// FNO, or TFNO (an FNO with a factorization).
#[derive(Debug, Clone)]
pub struct Fno {
    cfg: FnoConfig,
    frame: Frame,
    blocks: Vec<FnoBlock>,
    params: ParamCount,
}

impl Fno {
    /// Builds FNO, or TFNO when `cfg.factorization` is set, with its variables under `vb`.
    pub fn new(cfg: &FnoConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate(if cfg.factorization.is_some() {
            "tfno"
        } else {
            "fno"
        })?;
        let frame = Frame::new(
            &FrameSpec {
                in_channels: cfg.in_channels,
                out_channels: cfg.out_channels,
                hidden_channels: cfg.hidden_channels,
                n_dim: cfg.n_modes.len(),
                lifting_channel_ratio: cfg.lifting_channel_ratio,
                projection_channel_ratio: cfg.projection_channel_ratio,
                positional_embedding: cfg.positional_embedding,
                domain_padding: cfg.domain_padding,
            },
            &vb,
        )?;
        let block_cfg = cfg.block_config();
        let bvb = vb.pp("fno_blocks");
        let blocks = (0..cfg.n_layers)
            .map(|i| FnoBlock::new(&block_cfg, bvb.clone(), i))
            .collect::<no_layers::Result<Vec<_>>>()?;
        let params = frame.param_count() + blocks.iter().map(FnoBlock::param_count).sum();
        Ok(Self {
            cfg: cfg.clone(),
            frame,
            blocks,
            params,
        })
    }

    /// Whether this is TFNO (a factorized FNO).
    pub fn is_tfno(&self) -> bool {
        self.cfg.factorization.is_some()
    }

    /// The configuration it was built from, tagged: TFNO's with the factorization left
    /// implicit when it is Tucker (the JSON of every earlier TFNO checkpoint).
    fn model_config(&self) -> ModelConfig {
        match self.cfg.factorization {
            None => ModelConfig::Fno(self.cfg.clone()),
            Some(Factorization::Tucker) => ModelConfig::Tfno(FnoConfig {
                factorization: None,
                ..self.cfg.clone()
            }),
        }
    }
}

impl NeuralOperator for Fno {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        self.frame.run(input, &self.blocks)
    }

    fn architecture(&self) -> &str {
        if self.is_tfno() {
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

/// Builds FNO, or TFNO when `config.factorization` is set.
pub fn build(config: &FnoConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(Fno::new(config, vb)?))
}
