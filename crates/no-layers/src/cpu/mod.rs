//! CPU plumbing of the fused ops, on plain slices: element-wise maps, bounds-checked `gemm`
//! views and dot-product kernels, fixed-order lane sums, point tiles, per-thread scratch,
//! short-input dense loops, patch gathers, Winograd transforms, banded resize matrices and
//! plane transposes. All of the crate's
//! `unsafe` code (SIMD intrinsics, uninitialised buffers) lives here and in [`crate::ops`].
//!
//! One convention for outputs: a buffer that a kernel overwrites in full is allocated
//! uninitialised (`Vec::with_capacity`, written through `MaybeUninit` or
//! [`gemm_view`]'s `MatMut::uninit`, then `set_len` with a `SAFETY` comment saying what wrote
//! every element), never zero-filled first; a zero fill is a cold pass over the whole output
//! (5–10 % of a DeepONet-CNN forward when the convolution and the bias both did it).
//! Buffers that are accumulated into start from zeros; scratch comes from [`scratch`]'s
//! per-thread pools.

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
