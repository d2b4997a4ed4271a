//! CPU plumbing of the fused ops, on plain slices: element-wise maps, bounds-checked `gemm`
//! views and dot-product kernels, fixed-order lane sums, point tiles, per-thread scratch,
//! short-input dense loops, patch gathers, Winograd transforms, banded resize matrices and
//! plane transposes. All of the crate's
//! `unsafe` code (SIMD intrinsics, uninitialised buffers) lives here and in [`crate::ops`].

pub(crate) mod banded;
pub(crate) mod gemm_view;
pub(crate) mod im2col;
pub(crate) mod lane_sum;
pub(crate) mod map;
pub(crate) mod point_tiles;
pub(crate) mod row_dot;
pub(crate) mod scratch;
pub(crate) mod short_input;
pub(crate) mod transpose;
pub(crate) mod winograd;
