//! The Fourier layers: the spectral convolution, its truncated DFT bases and its
//! Tucker-factorized weights (TFNO).

pub mod conv;
pub mod fourier;
pub mod tucker;
