//! Neural-operator layers on candle.
//!
//! The building blocks of FNO, TFNO, LocalNO and CNO: spectral convolutions with
//! neuraloperator 2.x conventions, Tucker-factorized spectral weights, local
//! (finite-difference and DISCO) kernels, band-limited resampling and CNO's
//! anti-aliased activation, plus the small shared pieces (channel MLP, skips, grid
//! embedding, domain padding) and seeded initialisation. Every layer is gradient-checked
//! in f64 against finite differences ([`gradcheck`]).
//!
//! The crate has three levels, importing one way:
//! - [`layers`]: the layer concepts, each a configuration, a constructor over a
//!   `VarBuilder` and a forward (no `unsafe` code: `#![forbid(unsafe_code)]`). The main
//!   types are re-exported here, flat.
//! - [`ops`]: fused ops, a hand-written CPU kernel beside the composite candle formula it
//!   replaces; [`ops::fused_cpu`] is the one place that chooses between them, so every op
//!   runs on every device with correct gradients.
//! - `cpu` (private): the kernels' plumbing on plain slices.
//!
//! ```
//! use candle_core::{DType, Device, Module, Tensor};
//! use no_layers::init::SeededVarMap;
//! use no_layers::{SpectralConv, SpectralConvConfig};
//!
//! // Layers take a `VarBuilder`; a `SeededVarMap` makes their weights reproducible.
//! let vars = SeededVarMap::new(42);
//! let vb = vars.var_builder(DType::F32, &Device::Cpu);
//! let cfg = SpectralConvConfig {
//!     in_channels: 2,
//!     out_channels: 3,
//!     n_modes: vec![4, 4],
//!     ..SpectralConvConfig::default()
//! };
//! let conv = SpectralConv::new(&cfg, vb.pp("conv"))?;
//! let x = Tensor::randn(0f32, 1.0, (1, 2, 10, 12), &Device::Cpu)?;
//! assert_eq!(conv.forward(&x)?.dims(), &[1, 3, 10, 12]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod error;
pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod ops;
pub mod threads;

mod cpu;

pub use error::{LayerError, Result};
pub use layers::activation::Activation;
pub use layers::blocks::{FnoBlock, FnoBlockConfig, LocalNoBlock, LocalNoBlockConfig};
pub use layers::cno_activation::{CnoActivation, CnoActivationConfig};
pub use layers::dense::{Dense, DenseConfig};
pub use layers::embedding::{GridEmbedding, GridEmbeddingConfig};
pub use layers::local::conv::PaddingMode;
pub use layers::local::disco::{Disco, DiscoConfig};
pub use layers::local::finite_difference::{FiniteDifference, FiniteDifferenceConfig};
pub use layers::mlp::{ChannelMlp, ChannelMlpConfig};
pub use layers::padding::{DomainPadding, DomainPaddingConfig};
pub use layers::params::ParamCount;
pub use layers::resample::{ResampleKind, Resampler};
pub use layers::skip::{Skip, SkipConfig, SkipKind};
pub use layers::spectral::conv::{SpectralConv, SpectralConvConfig};
pub use layers::spectral::tucker::{TuckerRank, TuckerWeight};
