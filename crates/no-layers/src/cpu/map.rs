//! Shared plumbing of the fused CPU element-wise ops ([`crate::ops::gelu`],
//! [`crate::ops::leaky_relu`], [`crate::ops::channel_affine`]): slicing a contiguous layout and
//! running a slice kernel over fixed-size chunks on rayon's threads. Chunk boundaries do
//! not depend on the thread count, and the kernels are element-wise, so results are
//! identical however many threads run them.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Shape};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Elements per rayon task: large enough to amortise scheduling, small enough to balance.
pub(crate) const CHUNK: usize = 1 << 15;

/// `if c { a } else { b }` by bit masks, which compiles to a vector compare and blend:
/// written as a branch, the compiler kept a scalar loop with a jump, and on activations of
/// random sign half the jumps were mispredicted (a 3-million value ReLU took 8 ms instead
/// of 0.45 ms). Exact: the chosen value's bits are passed through.
#[inline(always)]
pub(crate) fn select_f32(c: bool, a: f32, b: f32) -> f32 {
    let mask = (c as u32).wrapping_neg();
    f32::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// [`select_f32`] for `f64`.
#[inline(always)]
pub(crate) fn select_f64(c: bool, a: f64, b: f64) -> f64 {
    let mask = (c as u64).wrapping_neg();
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}

/// The elements a contiguous layout covers (an error naming `op` otherwise).
pub(crate) fn contiguous<'a, T>(op: &str, v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((start, end)) => Ok(&v[start..end]),
        None => candle_core::bail!("{op}: expected a contiguous input, got {l:?}"),
    }
}

/// Copies `src` into the equally long uninitialised `dst` (the outputs' convention in the
/// module docs of [`crate::cpu`]: written in full, then `set_len`).
pub(crate) fn write_copy<T: Copy>(dst: &mut [MaybeUninit<T>], src: &[T]) {
    debug_assert_eq!(dst.len(), src.len());
    for (d, &v) in dst.iter_mut().zip(src) {
        d.write(v);
    }
}

/// Runs a kernel on the two contiguous operands of an op that are both `f32` or both
/// `f64` (the slices its layouts cover), returning the kernel's output as a storage; an
/// error names `op` for other dtypes or non-contiguous layouts.
pub(crate) fn dispatch2(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f32_kernel: impl FnOnce(&[f32], &[f32]) -> Result<Vec<f32>>,
    f64_kernel: impl FnOnce(&[f64], &[f64]) -> Result<Vec<f64>>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => {
            CpuStorage::F32(f32_kernel(contiguous(op, a, l1)?, contiguous(op, b, l2)?)?)
        }
        (CpuStorage::F64(a), CpuStorage::F64(b)) => {
            CpuStorage::F64(f64_kernel(contiguous(op, a, l1)?, contiguous(op, b, l2)?)?)
        }
        (a, b) => candle_core::bail!(
            "{op}: dtypes {:?} and {:?} not handled (both f32 or both f64)",
            a.dtype(),
            b.dtype()
        ),
    })
}

/// [`dispatch2`] for an op of three operands, all `f32` or all `f64`.
pub(crate) fn dispatch3(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    (s3, l3): (&CpuStorage, &Layout),
    f32_kernel: impl FnOnce(&[f32], &[f32], &[f32]) -> Result<Vec<f32>>,
    f64_kernel: impl FnOnce(&[f64], &[f64], &[f64]) -> Result<Vec<f64>>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2, s3) {
        (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => {
            CpuStorage::F32(f32_kernel(
                contiguous(op, a, l1)?,
                contiguous(op, b, l2)?,
                contiguous(op, c, l3)?,
            )?)
        }
        (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => {
            CpuStorage::F64(f64_kernel(
                contiguous(op, a, l1)?,
                contiguous(op, b, l2)?,
                contiguous(op, c, l3)?,
            )?)
        }
        (a, b, c) => candle_core::bail!(
            "{op}: dtypes {:?}, {:?} and {:?} not handled (all f32 or all f64)",
            a.dtype(),
            b.dtype(),
            c.dtype()
        ),
    })
}

/// Applies a slice kernel chunk by chunk in parallel. The output is not zero-filled first:
/// every kernel must write every element of the (equally long) output slice it is given.
pub(crate) fn map1<T: Copy + Send + Sync>(
    src: &[T],
    kernel: impl Fn(&[T], &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut dst = Vec::with_capacity(src.len());
    dst.spare_capacity_mut()[..src.len()]
        .par_chunks_mut(CHUNK)
        .zip(src.par_chunks(CHUNK))
        .for_each(|(d, s)| kernel(s, d));
    // SAFETY: the chunks cover `0..src.len()` and the kernels write every element of
    // their output chunk (the contract above; each is a zip over equally long chunks).
    unsafe { dst.set_len(src.len()) };
    dst
}

/// Applies a two-input slice kernel chunk by chunk in parallel (`a` and `b` equally long;
/// the same contract as [`map1`]).
pub(crate) fn map2<T: Copy + Send + Sync>(
    a: &[T],
    b: &[T],
    kernel: impl Fn(&[T], &[T], &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let len = a.len().min(b.len());
    let mut dst = Vec::with_capacity(len);
    dst.spare_capacity_mut()[..len]
        .par_chunks_mut(CHUNK)
        .zip(a[..len].par_chunks(CHUNK).zip(b[..len].par_chunks(CHUNK)))
        .for_each(|(d, (a, b))| kernel(a, b, d));
    // SAFETY: as in `map1`.
    unsafe { dst.set_len(len) };
    dst
}

/// An element-wise op on an f32 or f64 storage: `kernels.0` or `kernels.1` applied chunk by
/// chunk in parallel; the result has the input's shape.
pub(crate) fn unary_storage(
    op: &str,
    s: &CpuStorage,
    l: &Layout,
    f32_kernel: impl Fn(&[f32], &mut [MaybeUninit<f32>]) + Sync,
    f64_kernel: impl Fn(&[f64], &mut [MaybeUninit<f64>]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    let out = match s {
        CpuStorage::F32(v) => CpuStorage::F32(map1(contiguous(op, v, l)?, f32_kernel)),
        CpuStorage::F64(v) => CpuStorage::F64(map1(contiguous(op, v, l)?, f64_kernel)),
        other => candle_core::bail!("{op}: dtype {:?} not handled (f32 or f64)", other.dtype()),
    };
    Ok((out, l.shape().clone()))
}

/// An element-wise op on two f32 or f64 storages of the same shape and dtype.
pub(crate) fn binary_storage(
    op: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f32_kernel: impl Fn(&[f32], &[f32], &mut [MaybeUninit<f32>]) + Sync,
    f64_kernel: impl Fn(&[f64], &[f64], &mut [MaybeUninit<f64>]) + Sync,
) -> Result<(CpuStorage, Shape)> {
    if l1.shape() != l2.shape() {
        candle_core::bail!(
            "{op}: inputs {:?} and {:?} differ in shape",
            l1.dims(),
            l2.dims()
        );
    }
    let out = match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(map2(
            contiguous(op, a, l1)?,
            contiguous(op, b, l2)?,
            f32_kernel,
        )),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(map2(
            contiguous(op, a, l1)?,
            contiguous(op, b, l2)?,
            f64_kernel,
        )),
        (a, b) => candle_core::bail!(
            "{op}: dtypes {:?} and {:?} not handled (both f32 or both f64)",
            a.dtype(),
            b.dtype()
        ),
    };
    Ok((out, l1.shape().clone()))
}

/// Whether the AVX2/FMA versions of the fused kernels can run here (checked once, cached
/// by std).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

/// Whether the sixteen-lane (AVX-512F) versions can run here: AVX-512F with AVX2 and FMA,
/// which every such CPU has (checked once, cached by std).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx512() -> bool {
    is_x86_feature_detected!("avx512f") && has_avx2_fma()
}

/// Runs `f` on a one-thread rayon pool (tests compare its result with the default pool's).
#[cfg(test)]
pub(crate) fn single_threaded<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(f),
        Err(e) => panic!("cannot build a one-thread pool: {e}"),
    }
}

/// Checks shared by the tests of the fused element-wise ops.
#[cfg(test)]
pub(crate) mod elementwise_checks {
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use candle_core::{Device, Result, Tensor, Var};

    /// f64 finite differences of `op` on a transposed (strided) input, which also exercises
    /// the op's contiguous copy; the points stay away from 0 by at least 0.2 except 0 itself.
    pub(crate) fn gradients_match_finite_differences(
        op: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(
            &[[-3.0f64, -1.2, -0.3, 0.0], [0.2, 0.9, 1.7, 4.5]],
            &Device::Cpu,
        )?)?;
        let w = Tensor::new(
            &[[0.3f64, -1.1], [0.7, 0.4], [-0.5, 1.3], [0.9, 0.2]],
            &Device::Cpu,
        )?;
        let xs = x.clone();
        let report = check_gradients(
            move || (op(&xs.as_tensor().t()?)? * &w)?.sum_all(),
            std::slice::from_ref(&x),
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    /// `op` on three and a bit chunks of f32 values spread over `[-range, range]` gives the
    /// same bits on one thread as on the default pool.
    pub(crate) fn result_does_not_depend_on_the_thread_count(
        op: impl Fn(&Tensor) -> Result<Tensor> + Send + Sync,
        range: f32,
    ) -> Result<()> {
        let n = 3 * super::CHUNK + 17;
        let xs: Vec<f32> = (0..n)
            .map(|i| ((i * 7919) % 2001) as f32 / 1000.0 * range - range)
            .collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu)?;
        let serial = super::single_threaded(|| op(&x))?.to_vec1::<f32>()?;
        let parallel = op(&x)?.to_vec1::<f32>()?;
        assert_eq!(serial, parallel);
        Ok(())
    }
}
