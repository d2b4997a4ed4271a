//! A delay-equivariant operator by construction: a residual stack of dilated convolutions
//! that are causal in time.
//!
//! The FitzHugh–Nagumo cable starting from rest is causal and autonomous: delaying the
//! applied current by `s` delays `(v, w)` by `s`, with the rest state before it. This
//! network has the same property exactly, for delays by whole grid steps:
//!
//! - every convolution is **causal in time**: zero padding before `t = 0` only, none after,
//!   so the output at row `t` reads input rows `≤ t`;
//! - every layer maps 0 to 0 (no biases; the activation is zero-anchored,
//!   `σ(z + b) − σ(b)`, which keeps a learnable threshold `b` per channel while fixing the
//!   value at 0), so the zero padding before `t = 0` *is* the network's own response to the
//!   rest input, and with scale-only (or no) normalisers the rest input maps to the rest
//!   state;
//! - there is no absolute-time input (no positional embedding) and no resampling in time
//!   (full resolution in time; a stride would only be equivariant to its multiples).
//!
//! Then delaying the input by `k` rows delays every activation by `k` rows: rows pushed
//! past the window's end are dropped, the first `k` rows are the rest state.
//!
//! ```text
//! lift:    h = W_lift · I                                    (pointwise, no bias)
//! block i: h = h + P_i · σ_i(D_i ⋆ h)                        (i = 0..n_layers)
//! project: out = W_out · σ_out(W_hid · h)                    (pointwise, no bias)
//! ```
//! with `D_i` a `kernel_time × kernel_space` convolution dilated by `2^(i mod
//! dilation_cycle)` in time (and in space when `dilate_space`), causal in time and padded
//! in space by reflection about the boundary nodes (the physics' zero-flux boundary), and
//! `σ(z) = GELU(z + b) − GELU(b)`. The receptive field in time is
//! `1 + (kernel_time − 1)·Σ_i 2^(i mod dilation_cycle)` rows
//! ([`CausalConfig::time_receptive_field`]); it should cover the window (50 rows in the
//! quick protocol, 100 in the default).

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::{NeuralOperator, ParamCount};
use candle_core::Tensor;
use candle_nn::VarBuilder;
use no_layers::init::torch_default_weight;
use no_layers::ops::causal_conv::{causal_conv, CausalTaps};
use serde::{Deserialize, Serialize};

/// Configuration of the causal dilated convolution operator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CausalConfig {
    /// Input channels (the applied current: 1).
    pub in_channels: usize,
    /// Output channels (v and w: 2).
    pub out_channels: usize,
    /// Width of the hidden field.
    pub hidden_channels: usize,
    /// Residual blocks.
    pub n_layers: usize,
    /// Taps in time of each block's convolution (at least 2: one tap sees only the present).
    pub kernel_time: usize,
    /// Taps in space (odd, so the kernel is centred).
    pub kernel_space: usize,
    /// Block `i` is dilated by `2^(i mod dilation_cycle)`.
    pub dilation_cycle: usize,
    /// Dilate in space as in time (a receptive field across the cable in few blocks).
    pub dilate_space: bool,
}

impl Default for CausalConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            out_channels: 2,
            hidden_channels: 32,
            n_layers: 7,
            kernel_time: 3,
            kernel_space: 3,
            dilation_cycle: 7,
            dilate_space: true,
        }
    }
}

/// At most this many blocks, and dilations up to `2^MAX_CYCLE`.
const MAX_LAYERS: usize = 64;
const MAX_CYCLE: usize = 16;

impl CausalConfig {
    fn validate(&self) -> Result<()> {
        let bad = |reason: String| {
            Err(ModelError::InvalidConfig {
                model: "causal",
                reason,
            })
        };
        if self.in_channels == 0 || self.out_channels == 0 || self.hidden_channels == 0 {
            return bad(format!(
                "in_channels {}, out_channels {} and hidden_channels {} must all be positive",
                self.in_channels, self.out_channels, self.hidden_channels
            ));
        }
        if self.n_layers == 0 || self.n_layers > MAX_LAYERS {
            return bad(format!(
                "n_layers {} must be between 1 and {MAX_LAYERS}",
                self.n_layers
            ));
        }
        if self.kernel_time < 2 {
            return bad(format!(
                "kernel_time {} must be at least 2 (one tap sees only the present)",
                self.kernel_time
            ));
        }
        if self.kernel_space.is_multiple_of(2) {
            return bad(format!(
                "kernel_space {} must be odd (a centred kernel)",
                self.kernel_space
            ));
        }
        if self.dilation_cycle == 0 || self.dilation_cycle > MAX_CYCLE {
            return bad(format!(
                "dilation_cycle {} must be between 1 and {MAX_CYCLE}",
                self.dilation_cycle
            ));
        }
        Ok(())
    }

    /// The dilation of block `i`: `2^(i mod dilation_cycle)`.
    pub fn dilation(&self, i: usize) -> usize {
        1usize << (i % self.dilation_cycle.max(1))
    }

    /// Rows of input that row `t` of the output depends on (itself and the past).
    pub fn time_receptive_field(&self) -> usize {
        1 + self.kernel_time.saturating_sub(1)
            * (0..self.n_layers).map(|i| self.dilation(i)).sum::<usize>()
    }
}

/// A bias-free convolution, causal in time and reflection-padded in space, dilated by `d`
/// (the fused [`causal_conv`] on the CPU, its composite form elsewhere).
#[derive(Debug, Clone)]
struct CausalConv {
    /// `[O, C·kt·kx, 1, 1]`, tap-major: input channel `(a·kx + b)·C + c` is channel `c`
    /// at time tap `a` (oldest first) and space tap `b`.
    weight: Tensor,
    taps: CausalTaps,
}

impl CausalConv {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        causal_conv(x, &self.weight, self.taps)
    }
}

/// A bias-free pointwise (1 × 1) map of channels.
fn pointwise(c_in: usize, c_out: usize, vb: VarBuilder) -> candle_core::Result<Tensor> {
    vb.get_with_hints((c_out, c_in, 1, 1), "weight", torch_default_weight(c_in))
}

/// `σ(z) = GELU(z + b) − GELU(b)` per channel: a learnable threshold `b`, and `σ(0) = 0`
/// exactly (the anchor goes through the same kernel at the same positions, so a zero `z`
/// gives the same bits twice; [`no_layers::ops::anchored_gelu`]).
#[derive(Debug, Clone)]
struct AnchoredGelu {
    bias: Tensor,
}

impl AnchoredGelu {
    fn new(c: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            bias: vb.get_with_hints(c, "bias", candle_nn::Init::Const(0.0))?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        no_layers::ops::anchored_gelu::anchored_gelu(z, &self.bias)
    }
}

/// `h + P · σ(D ⋆ h)`.
#[derive(Debug, Clone)]
struct Block {
    conv: CausalConv,
    act: AnchoredGelu,
    mix: Tensor,
}

impl Block {
    fn forward(&self, h: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.act.forward(&self.conv.forward(h)?)?;
        h + no_layers::ops::conv2d::conv2d(&y, &self.mix, 0, 1)?
    }
}

/// The causal dilated convolution operator (see the module documentation).
#[derive(Debug, Clone)]
pub struct CausalNo {
    cfg: CausalConfig,
    lift: Tensor,
    blocks: Vec<Block>,
    project_hidden: Tensor,
    project_act: AnchoredGelu,
    project_out: Tensor,
}

impl CausalNo {
    /// Builds the operator with weights from `vb` (names `lift.weight`,
    /// `blocks.{i}.conv.weight`, `blocks.{i}.act.bias`, `blocks.{i}.mix.weight`,
    /// `project.hidden.weight`, `project.act.bias`, `project.out.weight`).
    pub fn new(cfg: &CausalConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate()?;
        let c = cfg.hidden_channels;
        let (kt, kx) = (cfg.kernel_time, cfg.kernel_space);
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let bvb = vb.pp(format!("blocks.{i}"));
                let fan_in = c * kt * kx;
                let weight = bvb.pp("conv").get_with_hints(
                    (c, fan_in, 1, 1),
                    "weight",
                    torch_default_weight(fan_in),
                )?;
                let d = cfg.dilation(i);
                Ok(Block {
                    conv: CausalConv {
                        weight,
                        taps: CausalTaps {
                            kernel_time: kt,
                            kernel_space: kx,
                            dilation_time: d,
                            dilation_space: if cfg.dilate_space { d } else { 1 },
                        },
                    },
                    act: AnchoredGelu::new(c, bvb.pp("act"))?,
                    mix: pointwise(c, c, bvb.pp("mix"))?,
                })
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            lift: pointwise(cfg.in_channels, c, vb.pp("lift"))?,
            blocks,
            project_hidden: pointwise(c, c, vb.pp("project.hidden"))?,
            project_act: AnchoredGelu::new(c, vb.pp("project.act"))?,
            project_out: pointwise(c, cfg.out_channels, vb.pp("project.out"))?,
        })
    }

    fn check_input(&self, x: &Tensor) -> candle_core::Result<()> {
        let dims = x.dims();
        if dims.len() != 4 || dims[1] != self.cfg.in_channels || dims[2] == 0 || dims[3] == 0 {
            return Err(candle_core::Error::Msg(
                ModelError::Shape {
                    context: "causal operator input".into(),
                    got: dims.to_vec(),
                    expected: format!("[B, {}, nt, nx] with nt, nx ≥ 1", self.cfg.in_channels),
                }
                .to_string(),
            ));
        }
        Ok(())
    }

    fn model_config(&self) -> ModelConfig {
        ModelConfig::Causal(self.cfg.clone())
    }
}

impl NeuralOperator for CausalNo {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        self.check_input(input)?;
        let conv = |x: &Tensor, w: &Tensor| no_layers::ops::conv2d::conv2d(x, w, 0, 1);
        let mut h = conv(input, &self.lift)?;
        for block in &self.blocks {
            h = block.forward(&h)?;
        }
        let y = self.project_act.forward(&conv(&h, &self.project_hidden)?)?;
        conv(&y, &self.project_out)
    }

    fn architecture(&self) -> &str {
        "causal"
    }

    fn config_json(&self) -> serde_json::Value {
        self.model_config().to_json()
    }

    fn rebuild(&self, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
        crate::config::build(&self.model_config(), vb)
    }

    fn param_count(&self) -> ParamCount {
        let n = self.lift.elem_count()
            + self
                .blocks
                .iter()
                .map(|b| b.conv.weight.elem_count() + b.act.bias.elem_count() + b.mix.elem_count())
                .sum::<usize>()
            + self.project_hidden.elem_count()
            + self.project_act.bias.elem_count()
            + self.project_out.elem_count();
        ParamCount { numel: n, real: n }
    }

    fn accepts_other_resolutions(&self) -> bool {
        // Convolutions run on any grid (the receptive field is counted in grid steps).
        true
    }
}

/// Builds the causal operator.
pub fn build(config: &CausalConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Ok(Box::new(CausalNo::new(config, vb)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use no_layers::ops::causal_conv::reflect_indices;

    #[test]
    fn reflect_indices_mirror_about_the_end_nodes() {
        assert_eq!(reflect_indices(4, 2), vec![2, 1, 0, 1, 2, 3, 2, 1]);
        // Padding beyond the length folds again.
        assert_eq!(reflect_indices(3, 4), vec![0, 1, 2, 1, 0, 1, 2, 1, 0, 1, 2]);
        assert_eq!(reflect_indices(1, 2), vec![0; 5]);
    }

    #[test]
    fn receptive_field_counts_the_dilations() {
        let cfg = CausalConfig {
            n_layers: 6,
            dilation_cycle: 6,
            ..CausalConfig::default()
        };
        assert_eq!(cfg.time_receptive_field(), 1 + 2 * 63);
    }

    #[test]
    fn invalid_configs_say_what_is_expected() {
        let err = CausalConfig {
            kernel_space: 4,
            ..CausalConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(
            err.to_string().contains("kernel_space 4 must be odd"),
            "{err}"
        );
        let err = CausalConfig {
            kernel_time: 1,
            ..CausalConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("kernel_time 1"), "{err}");
    }
}
