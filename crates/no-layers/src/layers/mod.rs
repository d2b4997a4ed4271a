//! The layer concepts: each a configuration, a constructor over a `VarBuilder` and a
//! forward, readable without the kernels they run on.
//!
//! Nothing here is `unsafe`: where a layer has a fused CPU kernel, it calls the op in
//! [`crate::ops`], which chooses between the fused kernel and its composite candle form.
#![forbid(unsafe_code)]

pub mod activation;
pub mod blocks;
pub mod cno_activation;
pub(crate) mod constant_cache;
pub mod dense;
pub mod embedding;
pub mod local;
pub mod mlp;
pub mod padding;
pub mod params;
pub mod resample;
pub mod rounding;
pub mod skip;
pub mod spectral;
