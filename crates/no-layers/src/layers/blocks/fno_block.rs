//! One FNO block, as neuraloperator's `FNOBlocks` computes block `i` (post-activation):
//!
//! ```text
//! x' = SpectralConv_i(x) + fno_skip_i(x)          (linear 1×1 skip, no bias)
//! x' = gelu(x')                                   (not on the last block)
//! x' = ChannelMLP_i(x') + channel_mlp_skip_i(x)   (soft-gating skip of the block input)
//! x' = gelu(x')                                   (not on the last block)
//! ```
//!
//! TFNO's block is the same with Tucker-factorized spectral weights
//! ([`FnoBlockConfig::factorization`]). Variables are created under the blocks' prefix
//! with neuraloperator's names: `convs.{i}`, `fno_skips.{i}`, `channel_mlp.{i}` and
//! `channel_mlp_skips.{i}`. With neuraloperator's default skips, everything after the
//! spectral convolution runs as [`crate::ops::fno_block_tail::fno_block_tail`] (one fused
//! pass on the CPU, its composite form elsewhere).

use crate::error::Result;
use crate::layers::activation::gelu;
use crate::layers::mlp::{ChannelMlp, ChannelMlpConfig};
use crate::layers::params::ParamCount;
use crate::layers::skip::{Skip, SkipConfig, SkipKind};
use crate::layers::spectral::conv::{
    Factorization, SpectralConv, SpectralConvConfig, SpectralTransform, TuckerImplementation,
};
use crate::layers::spectral::tucker::TuckerRank;
use crate::ops::fno_block_tail::{fno_block_tail, BlockTailWeights};
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;

/// Configuration of the FNO blocks of one model (every block has the same).
#[derive(Debug, Clone, PartialEq)]
pub struct FnoBlockConfig {
    /// Width of the blocks.
    pub channels: usize,
    /// Total modes per spatial axis.
    pub n_modes: Vec<usize>,
    /// Number of blocks in the stack (the last one has no activations).
    pub n_layers: usize,
    /// Factorization of the spectral weights (`Some(Tucker)`: TFNO).
    pub factorization: Option<Factorization>,
    /// Tucker rank (with a factorization only).
    pub rank: TuckerRank,
    /// How Tucker weights meet the spectrum (with a factorization only).
    pub implementation: TuckerImplementation,
    /// How the last axis is transformed (a speed choice, same results).
    pub transform: SpectralTransform,
    /// Skip around the spectral convolution.
    pub skip: SkipKind,
    /// Channel MLP inside each block.
    pub use_channel_mlp: bool,
    /// Hidden width of the channel MLP over `channels`.
    pub channel_mlp_expansion: f64,
    /// Skip around the channel MLP.
    pub channel_mlp_skip: SkipKind,
}

impl Default for FnoBlockConfig {
    fn default() -> Self {
        Self {
            channels: 32,
            n_modes: vec![16, 16],
            n_layers: 4,
            factorization: None,
            rank: TuckerRank::default(),
            implementation: TuckerImplementation::Factorized,
            transform: SpectralTransform::default(),
            skip: SkipKind::Linear,
            use_channel_mlp: true,
            channel_mlp_expansion: 0.5,
            channel_mlp_skip: SkipKind::SoftGating,
        }
    }
}

impl FnoBlockConfig {
    /// The blocks' spectral convolution (`C → C`, with bias).
    pub fn spectral_config(&self) -> SpectralConvConfig {
        SpectralConvConfig {
            in_channels: self.channels,
            out_channels: self.channels,
            n_modes: self.n_modes.clone(),
            bias: true,
            factorization: self.factorization,
            rank: self.rank.clone(),
            implementation: self.implementation,
            init_std: None,
            transform: self.transform,
        }
    }

    /// A skip of the blocks' width (no bias).
    pub(crate) fn skip_config(&self, kind: SkipKind) -> SkipConfig {
        SkipConfig {
            in_channels: self.channels,
            out_channels: self.channels,
            n_dim: self.n_modes.len(),
            kind,
            bias: false,
        }
    }

    /// The channel MLP and its skip, under `channel_mlp.{i}` and `channel_mlp_skips.{i}`.
    pub(crate) fn channel_mlp(
        &self,
        vb: &VarBuilder,
        index: usize,
    ) -> Result<Option<(ChannelMlp, Skip)>> {
        if !self.use_channel_mlp {
            return Ok(None);
        }
        let mlp_cfg = ChannelMlpConfig::with_expansion(self.channels, self.channel_mlp_expansion);
        Ok(Some((
            ChannelMlp::new(&mlp_cfg, vb.pp("channel_mlp").pp(index))?,
            Skip::new(
                &self.skip_config(self.channel_mlp_skip),
                vb.pp("channel_mlp_skips").pp(index),
            )?,
        )))
    }
}

/// Block `index` of an FNO (or TFNO).
#[derive(Debug, Clone)]
pub struct FnoBlock {
    conv: SpectralConv,
    skip: Skip,
    mlp: Option<(ChannelMlp, Skip)>,
    /// The weights of the point-wise part when it has the fused op's form.
    tail: Option<BlockTailWeights>,
    last: bool,
}

impl FnoBlock {
    /// Builds block `index` of `cfg.n_layers` with its variables under `vb`, the blocks'
    /// prefix (`fno_blocks` in neuraloperator): `convs.{index}`, `fno_skips.{index}`,
    /// `channel_mlp.{index}`, `channel_mlp_skips.{index}`.
    pub fn new(cfg: &FnoBlockConfig, vb: VarBuilder, index: usize) -> Result<Self> {
        let conv = SpectralConv::new(&cfg.spectral_config(), vb.pp("convs").pp(index))?;
        let skip = Skip::new(&cfg.skip_config(cfg.skip), vb.pp("fno_skips").pp(index))?;
        let mlp = cfg.channel_mlp(&vb, index)?;
        let tail = mlp
            .as_ref()
            .and_then(|(m, gate)| super::tail_weights(&skip, m, gate));
        Ok(Self {
            conv,
            skip,
            mlp,
            tail,
            last: index + 1 >= cfg.n_layers,
        })
    }

    /// The spectral convolution.
    pub fn conv(&self) -> &SpectralConv {
        &self.conv
    }

    /// Its parameters: spectral convolution, skip, channel MLP and its skip.
    pub fn param_count(&self) -> ParamCount {
        self.conv.param_count()
            + self.skip.param_count()
            + self
                .mlp
                .as_ref()
                .map_or(ParamCount::ZERO, |(m, g)| m.param_count() + g.param_count())
    }
}

impl Module for FnoBlock {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let act = !self.last;
        if let Some(tail) = &self.tail {
            // Everything after the spectral convolution in one op (fused on the CPU).
            return fno_block_tail(x, &self.conv.forward(x)?, tail, act, act);
        }
        let mut y = (self.conv.forward(x)? + self.skip.forward(x)?)?;
        if act {
            y = gelu(&y)?;
        }
        if let Some((mlp, gate)) = &self.mlp {
            y = (mlp.forward(&y)? + gate.forward(x)?)?;
            if act {
                y = gelu(&y)?;
            }
        }
        Ok(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::SeededVarMap;
    use crate::layers::params::var_map_entries;
    use candle_core::{DType, Device};

    fn cfg(factorization: Option<Factorization>, use_channel_mlp: bool) -> FnoBlockConfig {
        FnoBlockConfig {
            channels: 6,
            n_modes: vec![6, 4],
            n_layers: 2,
            factorization,
            rank: TuckerRank::Fraction(0.5),
            use_channel_mlp,
            ..Default::default()
        }
    }

    #[test]
    fn param_count_is_the_variables_it_created() -> Result<()> {
        for (f, mlp) in [
            (None, true),
            (None, false),
            (Some(Factorization::Tucker), true),
        ] {
            let vars = SeededVarMap::new(1);
            let c = cfg(f, mlp);
            let block = FnoBlock::new(&c, vars.var_builder(DType::F32, &Device::Cpu), 1)?;
            let count = block.param_count();
            assert_eq!(count.real, var_map_entries(vars.varmap()));
            let conv = SpectralConv::new(
                &c.spectral_config(),
                SeededVarMap::new(1).var_builder(DType::F32, &Device::Cpu),
            )?
            .param_count();
            assert_eq!(count.real - count.numel, conv.real - conv.numel);
        }
        Ok(())
    }

    /// The block through its fused tail equals the same block with the composite path
    /// forced (what a GPU runs), first and last block.
    #[test]
    fn fused_and_composite_blocks_agree() -> Result<()> {
        let vars = SeededVarMap::new(5);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let x = crate::gradcheck::random_like(
            &Tensor::zeros((2, 6, 9, 7), DType::F64, &Device::Cpu)?,
            3,
        )?;
        for index in [0, 1] {
            let block = FnoBlock::new(&cfg(None, true), vb.pp("fno_blocks"), index)?;
            assert!(block.tail.is_some());
            let fused = block.forward(&x)?;
            let _g = crate::ops::composite_only();
            let composite = block.forward(&x)?;
            let diff = (fused - composite)?
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_scalar::<f64>()?;
            assert!(diff < 1e-12, "block {index}: {diff}");
        }
        let names: Vec<String> = vars
            .varmap()
            .data()
            .lock()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert!(
            names.contains(&"fno_blocks.convs.0.weight.tensor".to_string()),
            "{names:?}"
        );
        assert!(names.contains(&"fno_blocks.channel_mlp_skips.1.weight".to_string()));
        Ok(())
    }
}
