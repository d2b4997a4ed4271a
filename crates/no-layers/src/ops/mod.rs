//! Fused ops: each a candle `CustomOp` with a hand-written CPU forward and backward, beside
//! the composite candle formula it replaces, which is its specification and the path taken
//! on every other device.

pub mod candle_fixes;
pub mod channel_affine;
pub mod channel_mlp;
pub(crate) mod cno_activation;
pub mod complex_block;
pub mod complex_mode_product;
pub mod conv2d;
pub mod dense;
pub mod feature_bias;
pub mod fft;
pub mod fno_block_tail;
pub mod gelu;
pub mod leaky_relu;
pub mod periodic_border;
pub mod relu;
pub mod spectral_transform;
pub mod tanh;
