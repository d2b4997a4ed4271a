//! Neural-operator layers on candle.
//!
//! The building blocks of FNO, TFNO, LocalNO and CNO: spectral convolutions with
//! neuraloperator 2.x conventions, Tucker-factorized spectral weights, local
//! (finite-difference and DISCO) kernels, band-limited resampling and CNO's
//! anti-aliased activation, plus the small shared pieces (channel MLP, skips, grid
//! embedding, domain padding) and seeded initialisation. Every layer is gradient-checked
//! in f64 against finite differences ([`gradcheck`]).
//!
//! ```
//! use candle_core::{DType, Device};
//! use no_layers::init::SeededVarMap;
//!
//! // Layers take a `VarBuilder`; a `SeededVarMap` makes their weights reproducible.
//! let vars = SeededVarMap::new(42);
//! let vb = vars.var_builder(DType::F32, &Device::Cpu);
//! let w = vb.get_with_hints((4, 4), "w", candle_nn::init::DEFAULT_KAIMING_UNIFORM)?;
//! assert_eq!(w.dims(), &[4, 4]);
//! # Ok::<(), candle_core::Error>(())
//! ```

pub mod activation;
pub mod banded;
pub mod candle_fixes;
pub mod channel_mlp_op;
pub mod channel_ops;
pub mod cno_activation;
mod cno_activation_op;
pub mod complex_block_op;
pub mod complex_mode_product_op;
pub mod conv2d;
mod cpu_map;
pub mod dense;
pub mod differential;
pub mod disco;
pub mod embedding;
pub mod error;
pub mod feature_bias;
pub mod fft_op;
pub mod fno_block_tail;
pub mod fourier;
pub mod gelu_op;
mod gemm_view;
pub mod gradcheck;
mod im2col;
pub mod init;
mod lane_sum;
pub mod leaky_relu_op;
pub mod local_conv;
pub mod mlp;
pub mod padding;
pub mod periodic_border_op;
mod point_tiles;
pub mod relu_op;
pub mod resample;
mod row_dot;
mod scratch;
pub mod skip;
pub mod spectral_conv;
pub mod spectral_transform_op;
pub mod tanh_op;
pub mod tucker;
mod winograd;

pub use error::{LayerError, Result};
