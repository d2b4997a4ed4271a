//! The frame FNO, TFNO and LocalNO share around their blocks:
//! `grid embedding (optional) → lifting ChannelMLP → [domain padding] → blocks →
//! [unpad] → projection ChannelMLP`, with neuraloperator's names (`lifting.fcs.0.weight`,
//! `projection.fcs.1.bias`, ...).

use crate::error::Result;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use no_layers::layers::embedding::{GridEmbedding, GridEmbeddingConfig};
use no_layers::layers::mlp::{ChannelMlp, ChannelMlpConfig};
use no_layers::layers::padding::{DomainPadding, DomainPaddingConfig};
use no_layers::layers::params::ParamCount;

/// Lifting, projection, embedding and padding: the parts FNO and LocalNO share.
#[derive(Debug, Clone)]
pub(crate) struct Frame {
    embedding: Option<GridEmbedding>,
    lifting: ChannelMlp,
    projection: ChannelMlp,
    padding: Option<DomainPadding>,
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
        Ok(Self {
            embedding,
            lifting,
            projection,
            padding,
        })
    }

    /// The lifting's and the projection's parameters (embedding and padding have none).
    pub(crate) fn param_count(&self) -> ParamCount {
        self.lifting.param_count() + self.projection.param_count()
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

    /// The whole model: `enter`, `blocks` in order, `exit`.
    pub(crate) fn run<B: Module>(
        &self,
        input: &Tensor,
        blocks: &[B],
    ) -> candle_core::Result<Tensor> {
        use crate::error::to_candle;
        let (mut x, grid) = self.enter(input).map_err(to_candle)?;
        for b in blocks {
            x = b.forward(&x)?;
        }
        self.exit(&x, &grid).map_err(to_candle)
    }
}
