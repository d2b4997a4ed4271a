//! Blocks are layers: an FNO block ([`fno_block`]) and a LocalNO block
//! ([`local_no_block`]) each own their mathematics (spectral convolution, skips,
//! activations, channel MLP, local kernels) and create their variables under
//! neuraloperator's names, so a model's forward is a short assembly over them.
//!
//! Where a block's point-wise part or local kernels have a fused CPU op, the block calls
//! the op function ([`crate::ops::fno_block_tail`], [`crate::ops::periodic_border`]),
//! which chooses between its fused kernel and its composite form itself.

pub mod fno_block;
pub mod local_no_block;

pub use fno_block::{FnoBlock, FnoBlockConfig};
pub use local_no_block::{LocalNoBlock, LocalNoBlockConfig};

use crate::layers::activation::Activation;
use crate::layers::mlp::ChannelMlp;
use crate::layers::skip::{Skip, SkipKind};
use crate::ops::fno_block_tail::BlockTailWeights;

/// The weights of a block's point-wise part when its layers have the fused op's form: a
/// `Linear` skip, a two-layer GELU channel MLP and a `SoftGating` skip without bias, of
/// one width. `None` for any other configuration (which then runs as separate layers).
pub(crate) fn tail_weights(skip: &Skip, mlp: &ChannelMlp, gate: &Skip) -> Option<BlockTailWeights> {
    let fused_form = skip.kind() == SkipKind::Linear
        && gate.kind() == SkipKind::SoftGating
        && gate.bias().is_none()
        && mlp.weights().len() == 2
        && mlp.activation() == Activation::Gelu;
    if !fused_form {
        return None;
    }
    let w = BlockTailWeights {
        skip: skip.weight()?.clone(),
        w1: mlp.weights()[0].clone(),
        b1: mlp.biases()[0].clone(),
        w2: mlp.weights()[1].clone(),
        b2: mlp.biases()[1].clone(),
        gate: gate.weight()?.clone(),
    };
    w.sizes().is_ok().then_some(w)
}
