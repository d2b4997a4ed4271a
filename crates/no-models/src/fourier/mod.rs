//! The FNO family: FNO, TFNO (FNO with Tucker-factorized spectral weights) and LocalNO.
//!
//! Each model is a short assembly, as in neuraloperator: the shared `frame` (embedding,
//! lifting, padding, projection) around a stack of block layers from
//! [`no_layers::layers::blocks`], which own the blocks' mathematics and their fused ops.

pub mod fno;
pub(crate) mod frame;
pub mod local_no;
