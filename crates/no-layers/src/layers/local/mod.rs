//! LocalNO's local kernels: the finite-difference (differential) kernel, the DISCO
//! integral kernel and the "same"-size convolution both run on.

pub mod conv;
pub mod disco;
pub mod finite_difference;
