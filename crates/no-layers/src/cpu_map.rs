//! Shared plumbing of the fused CPU element-wise ops ([`crate::gelu_op`],
//! [`crate::leaky_relu_op`], [`crate::channel_ops`]): slicing a contiguous layout and
//! running a slice kernel over fixed-size chunks on rayon's threads. Chunk boundaries do
//! not depend on the thread count, and the kernels are element-wise, so results are
//! identical however many threads run them.

use candle_core::{Layout, Result};
use rayon::prelude::*;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
pub(crate) const CHUNK: usize = 1 << 15;

/// The elements a contiguous layout covers (an error naming `op` otherwise).
pub(crate) fn contiguous<'a, T>(op: &str, v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous input, got {l:?}"),
    }
}

/// Applies a slice kernel chunk by chunk in parallel.
pub(crate) fn map1<T: Copy + Default + Send + Sync>(
    src: &[T],
    kernel: impl Fn(&[T], &mut [T]) + Sync,
) -> Vec<T> {
    let mut dst = vec![T::default(); src.len()];
    dst.par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| kernel(s, d));
    dst
}

/// Applies a two-input slice kernel chunk by chunk in parallel.
pub(crate) fn map2<T: Copy + Default + Send + Sync>(
    a: &[T],
    b: &[T],
    kernel: impl Fn(&[T], &[T], &mut [T]) + Sync,
) -> Vec<T> {
    let mut dst = vec![T::default(); a.len()];
    dst.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| kernel(a, b, d));
    dst
}
