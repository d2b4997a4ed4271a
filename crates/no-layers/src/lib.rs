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

pub mod error;
pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod ops;

mod cpu;

pub use error::{LayerError, Result};
