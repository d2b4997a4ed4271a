//! The spectral convolution's channel mixing at batch 1 or 2, read straight from the
//! stored complex weight.
//!
//! Each kept Fourier mode `m` mixes channels with a complex matrix `W_m` (`[C, O]`):
//! `Y_m = Z_m · W_m`. The general path multiplies the spectrum `[M, B, 2C]` by the real
//! block form `[M, 2C, 2O]` of the weight ([`crate::ops::complex_block`]), one matrix
//! product per mode. An inference twin keeps those blocks between calls, but its weights
//! share storage with the trained variables, so before each reuse it compares a copy of the
//! weight with the weight, bit by bit ([`crate::layers::spectral::conv`]): at batch 1 that
//! check and the products (run one after the other on the calling thread) read three times
//! the weight on one core while the others wait, per layer and call.
//!
//! Here the weight `[C, O, M, 2]` is read in its stored order instead, output channel by
//! output channel in parallel, with the `2M` values of one `(c, o)` row (all modes, `[re,
//! im]` pairs) as one vector. The sums are made in the order the block product makes them,
//! as fused multiply-adds: `Re y = Σ_c Re z·Re w`, then `+ Σ_c Im z·(−Im w)`; `Im y = Σ_c
//! Re z·Im w`, then `+ Σ_c Im z·Re w`. On a CPU with FMA, where the `gemm` crate runs the
//! block product as one fused multiply-add chain per output, the values are the block
//! product's bit for bit (tested, from two input channels on; with one, the crate takes
//! another path and the two agree within rounding), so a prediction does not depend on the
//! batch it was computed in.
//!
//! Forward only, `f32` only: the op serves inference (a constant weight and an untracked
//! spectrum); with a tracked operand, another device, `f64` or no FMA the block product
//! runs, which is also this op's specification. Results do not depend on the thread count.

use crate::cpu::map::contiguous;
use crate::ops::complex_block::complex_block;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Largest batch this op is chosen for by [`crate::layers::spectral::conv::SpectralConv`].
/// This op loads two operands per multiply-add, where the block product's `gemm` keeps one
/// in registers: its cost grows with the batch about three times as fast (measured on the
/// 2-core Intel dev machine, 144 modes, 32 → 32 channels, two threads: 86 against 80 µs
/// at batch 1, 245 against 91 µs at batch 4). What it saves is the cache check of the
/// blocks, a read of twice the weight on one core.
pub const MAX_DIRECT_BATCH: usize = 2;

/// `z [M, B, 2C]` (`[Re | Im]` per mode and sample) mixed with the complex weight `w [C,
/// O, M, 2]` → `[M, B, 2O]`: the same values as `z.matmul(&complex_block(w))`. Errors when
/// the shapes do not fit.
pub fn mode_mix(z: &Tensor, w: &Tensor) -> Result<Tensor> {
    let sizes = MixSizes::of(z, w)?;
    let untracked = !z.track_op() && !w.track_op();
    let f32s = z.dtype() == DType::F32 && w.dtype() == DType::F32;
    if untracked && f32s && crate::ops::fused_cpu(&[z, w]) && fma_available() {
        return z
            .contiguous()?
            .apply_op2_no_bwd(&w.contiguous()?, &ModeMix(sizes));
    }
    z.matmul(&complex_block(w)?)
}

/// Whether this CPU has the fused multiply-add the `gemm` crate sums with.
fn fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        crate::cpu::map::has_avx2_fma()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Modes, batch, input and output channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MixSizes {
    m: usize,
    b: usize,
    c: usize,
    o: usize,
}

impl MixSizes {
    fn of(z: &Tensor, w: &Tensor) -> Result<Self> {
        let (m, b, c2) = z.dims3()?;
        let (c, o, wm, two) = w.dims4()?;
        if two != 2 || wm != m || c2 != 2 * c {
            candle_core::bail!(
                "mode_mix: spectrum {:?} and weight {:?} do not fit (expected [M, B, 2C] and [C, O, M, 2])",
                z.dims(),
                w.dims()
            );
        }
        Ok(Self { m, b, c, o })
    }
}

struct ModeMix(MixSizes);

impl CustomOp2 for ModeMix {
    fn name(&self) -> &'static str {
        "mode_mix"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, sz) = (self.name(), self.0);
        let shape = Shape::from((sz.m, sz.b, 2 * sz.o));
        let out = match (s1, s2) {
            (CpuStorage::F32(z), CpuStorage::F32(w)) => {
                CpuStorage::F32(forward(contiguous(op, z, l1)?, contiguous(op, w, l2)?, sz))
            }
            _ => candle_core::bail!(
                "mode_mix: f32 operands, got {:?} and {:?}",
                s1.dtype(),
                s2.dtype()
            ),
        };
        Ok((out, shape))
    }
}

/// `[M, B, 2O]` from the contiguous spectrum and weight.
fn forward(z: &[f32], w: &[f32], sz: MixSizes) -> Vec<f32> {
    let (re, im) = spread_spectrum(z, sz);
    // One task per output channel: its `[B, 2M]` results, all modes as [re, im] pairs.
    let per_channel: Vec<Vec<f32>> = (0..sz.o)
        .into_par_iter()
        .map(|o| {
            let mut y = vec![0.0; sz.b * 2 * sz.m];
            mix_channel(&re, &im, w, sz, o, &mut y);
            y
        })
        .collect();
    let mut out = vec![0.0; sz.m * sz.b * 2 * sz.o];
    out.par_chunks_mut((sz.b * 2 * sz.o).max(1))
        .enumerate()
        .for_each(|(m, rows)| {
            for (b, row) in rows.chunks_exact_mut(2 * sz.o).enumerate() {
                let (y_re, y_im) = row.split_at_mut(sz.o);
                for (o, y) in per_channel.iter().enumerate() {
                    let pair = &y[b * 2 * sz.m + 2 * m..][..2];
                    y_re[o] = pair[0];
                    y_im[o] = pair[1];
                }
            }
        });
    out
}

/// The spectrum `[M, B, 2C]` as two `[B, C, 2M]` arrays laid out like the weight's rows
/// (one value per mode and part): `re` holds `(Re z, Re z)` per mode, `im` holds
/// `(−Im z, Im z)`, the factors of the weight's `(re, im)` and swapped `(im, re)` pairs.
fn spread_spectrum(z: &[f32], sz: MixSizes) -> (Vec<f32>, Vec<f32>) {
    let row = 2 * sz.m;
    let mut re = vec![0.0; sz.b * sz.c * row];
    let mut im = vec![0.0; sz.b * sz.c * row];
    re.par_chunks_mut((sz.c * row).max(1))
        .zip(im.par_chunks_mut((sz.c * row).max(1)))
        .enumerate()
        .for_each(|(b, (re_b, im_b))| {
            for m in 0..sz.m {
                let zm = &z[(m * sz.b + b) * 2 * sz.c..][..2 * sz.c];
                let (zr, zi) = zm.split_at(sz.c);
                for c in 0..sz.c {
                    re_b[c * row + 2 * m] = zr[c];
                    re_b[c * row + 2 * m + 1] = zr[c];
                    im_b[c * row + 2 * m] = -zi[c];
                    im_b[c * row + 2 * m + 1] = zi[c];
                }
            }
        });
    (re, im)
}

/// Output channel `o` for every sample into `y [B, 2M]`: the sums of [the module
/// docs](self), in the block product's order (over `c` with the weight's `(re, im)` pairs,
/// then over `c` with the pairs swapped), one fused multiply-add at a time.
fn mix_channel(re: &[f32], im: &[f32], w: &[f32], sz: MixSizes, o: usize, y: &mut [f32]) {
    let n = 2 * sz.m;
    assert!(
        re.len() == sz.b * sz.c * n
            && im.len() == re.len()
            && w.len() == sz.c * sz.o * n
            && y.len() == sz.b * n
            && o < sz.o,
        "mode_mix: buffer sizes"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::map::has_avx512() {
            // SAFETY: the CPU has AVX-512F (checked just above); the sizes were checked.
            return unsafe { mix_channel_avx512(re, im, w, sz, o, y) };
        }
        if crate::cpu::map::has_avx2_fma() {
            // SAFETY: the CPU has AVX2 and FMA (checked just above); the sizes were checked.
            return unsafe { mix_channel_avx2(re, im, w, sz, o, y) };
        }
    }
    for (b, out) in y.chunks_exact_mut(n.max(1)).enumerate() {
        mix_values(re, im, w, (sz, o, b), 0..n, out);
    }
}

/// Values `range` of sample `b`'s row (one at a time; the vector kernels' tail).
fn mix_values(
    re: &[f32],
    im: &[f32],
    w: &[f32],
    (sz, o, b): (MixSizes, usize, usize),
    range: std::ops::Range<usize>,
    out: &mut [f32],
) {
    let n = 2 * sz.m;
    for j in range {
        let mut acc = 0.0f32;
        for c in 0..sz.c {
            acc = re[(b * sz.c + c) * n + j].mul_add(w[(c * sz.o + o) * n + j], acc);
        }
        for c in 0..sz.c {
            acc = im[(b * sz.c + c) * n + j].mul_add(w[(c * sz.o + o) * n + (j ^ 1)], acc);
        }
        out[j] = acc;
    }
}

/// [`mix_channel`] on sixteen lanes, four vectors (32 modes) at a time, the last ones
/// masked.
///
/// # Safety
/// The CPU must have AVX-512F, and the slices the sizes [`mix_channel`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn mix_channel_avx512(
    re: &[f32],
    im: &[f32],
    w: &[f32],
    sz: MixSizes,
    o: usize,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = 2 * sz.m;
    let mask = |lanes: usize, k: usize| -> __mmask16 {
        let rem = lanes.saturating_sub(16 * k).min(16);
        ((1u32 << rem) - 1) as __mmask16
    };
    for b in 0..sz.b {
        let mut j = 0;
        while j < n {
            let lanes = (n - j).min(64);
            let masks = [
                mask(lanes, 0),
                mask(lanes, 1),
                mask(lanes, 2),
                mask(lanes, 3),
            ];
            let mut acc = [_mm512_setzero_ps(); 4];
            for c in 0..sz.c {
                let wp = w.as_ptr().add((c * sz.o + o) * n + j);
                let zp = re.as_ptr().add((b * sz.c + c) * n + j);
                for k in 0..4 {
                    let wv = _mm512_maskz_loadu_ps(masks[k], wp.wrapping_add(16 * k));
                    let zv = _mm512_maskz_loadu_ps(masks[k], zp.wrapping_add(16 * k));
                    acc[k] = _mm512_fmadd_ps(zv, wv, acc[k]);
                }
            }
            for c in 0..sz.c {
                let wp = w.as_ptr().add((c * sz.o + o) * n + j);
                let zp = im.as_ptr().add((b * sz.c + c) * n + j);
                for k in 0..4 {
                    // (re, im) pairs swapped to (im, re): lanes 2i and 2i + 1 exchanged.
                    let wv = _mm512_permute_ps::<0b1011_0001>(_mm512_maskz_loadu_ps(
                        masks[k],
                        wp.wrapping_add(16 * k),
                    ));
                    let zv = _mm512_maskz_loadu_ps(masks[k], zp.wrapping_add(16 * k));
                    acc[k] = _mm512_fmadd_ps(zv, wv, acc[k]);
                }
            }
            let out = y.as_mut_ptr().add(b * n + j);
            // Pointers past a row's end (`wrapping_add`) are never dereferenced: their
            // lanes are masked off.
            for k in 0..4 {
                _mm512_mask_storeu_ps(out.wrapping_add(16 * k), masks[k], acc[k]);
            }
            j += lanes;
        }
    }
}

/// [`mix_channel`] on eight lanes, four vectors (16 modes) at a time, the rest one value
/// at a time.
///
/// # Safety
/// The CPU must have AVX2 and FMA, and the slices the sizes [`mix_channel`] checks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn mix_channel_avx2(
    re: &[f32],
    im: &[f32],
    w: &[f32],
    sz: MixSizes,
    o: usize,
    y: &mut [f32],
) {
    use std::arch::x86_64::*;
    let n = 2 * sz.m;
    for b in 0..sz.b {
        let mut j = 0;
        while j + 32 <= n {
            let mut acc = [_mm256_setzero_ps(); 4];
            for c in 0..sz.c {
                let wp = w.as_ptr().add((c * sz.o + o) * n + j);
                let zp = re.as_ptr().add((b * sz.c + c) * n + j);
                for (k, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_loadu_ps(wp.add(8 * k));
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(zp.add(8 * k)), wv, *a);
                }
            }
            for c in 0..sz.c {
                let wp = w.as_ptr().add((c * sz.o + o) * n + j);
                let zp = im.as_ptr().add((b * sz.c + c) * n + j);
                for (k, a) in acc.iter_mut().enumerate() {
                    let wv = _mm256_permute_ps::<0b1011_0001>(_mm256_loadu_ps(wp.add(8 * k)));
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(zp.add(8 * k)), wv, *a);
                }
            }
            let out = y.as_mut_ptr().add(b * n + j);
            for (k, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(out.add(8 * k), *a);
            }
            j += 32;
        }
        mix_values(re, im, w, (sz, o, b), j..n, &mut y[b * n..][..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn operands(m: usize, b: usize, c: usize, o: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        let dev = Device::Cpu;
        let z = Tensor::randn(0f32, 1.0, (m, b, 2 * c), &dev)?.to_dtype(dtype)?;
        let w = Tensor::randn(0f32, 0.3, (c, o, m, 2), &dev)?.to_dtype(dtype)?;
        Ok((z, w))
    }

    fn bits(t: &Tensor) -> Result<Vec<u64>> {
        Ok(match t.dtype() {
            DType::F32 => t
                .flatten_all()?
                .to_vec1::<f32>()?
                .iter()
                .map(|v| v.to_bits() as u64)
                .collect(),
            _ => t
                .flatten_all()?
                .to_vec1::<f64>()?
                .iter()
                .map(|v| v.to_bits())
                .collect(),
        })
    }

    /// On a CPU with FMA the kernel (called directly, so that the fallback cannot stand in
    /// for it) gives the block product's bits, so a sample's prediction is the same alone
    /// or in a batch; the op gives them too, and so does `f64`, which takes the block
    /// product itself.
    #[test]
    fn equals_the_block_product_bit_for_bit() -> Result<()> {
        for (m, b, c, o) in [
            (144, 1, 32, 32),
            (7, 3, 5, 4),
            (16, 4, 8, 12),
            (5, 2, 2, 3),
            (3, 1, 4, 16),
            (144, 4, 64, 64),
        ] {
            let (z, w) = operands(m, b, c, o, DType::F32)?;
            let blocks = z.matmul(&complex_block(&w)?)?;
            if fma_available() {
                let sz = MixSizes { m, b, c, o };
                let (zv, wv) = (z.flatten_all()?.to_vec1()?, w.flatten_all()?.to_vec1()?);
                let kernel = Tensor::from_vec(forward(&zv, &wv, sz), (m, b, 2 * o), &Device::Cpu)?;
                assert_eq!(bits(&kernel)?, bits(&blocks)?, "kernel {m} {b} {c} {o}");
            }
            let op = mode_mix(&z, &w)?;
            assert_eq!(op.dims(), &[m, b, 2 * o]);
            assert_eq!(bits(&op)?, bits(&blocks)?, "op {m} {b} {c} {o}");
            let (z, w) = (z.to_dtype(DType::F64)?, w.to_dtype(DType::F64)?);
            let blocks = z.matmul(&complex_block(&w)?)?;
            assert_eq!(
                bits(&mode_mix(&z, &w)?)?,
                bits(&blocks)?,
                "f64 {m} {b} {c} {o}"
            );
        }
        Ok(())
    }

    /// With one input channel the common dimension is 2, where the `gemm` crate takes
    /// another path than its fused multiply-add chain: equal within rounding there.
    #[test]
    fn one_input_channel_is_within_rounding_of_the_block_product() -> Result<()> {
        let (z, w) = operands(9, 2, 1, 3, DType::F32)?;
        let fused = mode_mix(&z, &w)?;
        let blocks = z.matmul(&complex_block(&w)?)?;
        let diff = (fused - &blocks)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = blocks.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff <= 4.0 * f32::EPSILON * scale, "{diff} vs {scale}");
        Ok(())
    }

    /// A sample's values do not depend on the others in its batch.
    #[test]
    fn a_sample_alone_equals_it_in_a_batch() -> Result<()> {
        let (z, w) = operands(20, 4, 6, 5, DType::F32)?;
        let batch = mode_mix(&z, &w)?;
        for s in 0..4 {
            let alone = mode_mix(&z.narrow(1, s, 1)?, &w)?;
            assert_eq!(bits(&alone)?, bits(&batch.narrow(1, s, 1)?)?);
        }
        Ok(())
    }

    #[test]
    fn thread_count_does_not_change_the_values() -> Result<()> {
        let (z, w) = operands(30, 2, 8, 6, DType::F32)?;
        let many = mode_mix(&z, &w)?;
        let one = crate::cpu::map::single_threaded(|| mode_mix(&z, &w))?;
        assert_eq!(bits(&many)?, bits(&one)?);
        Ok(())
    }

    #[test]
    fn tracked_operands_take_the_block_product_with_its_gradients() -> Result<()> {
        let (z, w) = operands(6, 1, 3, 2, DType::F64)?;
        let wv = candle_core::Var::from_tensor(&w)?;
        let y = mode_mix(&z, wv.as_tensor())?;
        let grads = y.sqr()?.sum_all()?.backward()?;
        let expected = z.matmul(&complex_block(&w)?)?;
        assert_eq!(bits(&y)?, bits(&expected)?);
        assert!(grads.get(wv.as_tensor()).is_some());
        Ok(())
    }

    /// Each vector kernel this CPU can run gives the one-at-a-time sums' bits, on rows that
    /// end in a partial vector (35 modes: 70 values).
    #[test]
    fn vector_kernels_equal_the_scalar_sums() -> Result<()> {
        let sz = MixSizes {
            m: 35,
            b: 2,
            c: 3,
            o: 4,
        };
        let n = 2 * sz.m;
        let values = |len: usize, seed: u64| -> Result<Vec<f32>> {
            let t = Tensor::randn(0f32, 1.0, len, &Device::Cpu)?;
            Ok(t.to_vec1::<f32>()?
                .iter()
                .map(|v| v + seed as f32 * 1e-3)
                .collect())
        };
        let (re, im) = (values(sz.b * sz.c * n, 1)?, values(sz.b * sz.c * n, 2)?);
        let w = values(sz.c * sz.o * n, 3)?;
        for o in 0..sz.o {
            let mut scalar = vec![0.0; sz.b * n];
            for (b, out) in scalar.chunks_exact_mut(n).enumerate() {
                mix_values(&re, &im, &w, (sz, o, b), 0..n, out);
            }
            #[cfg(target_arch = "x86_64")]
            {
                if crate::cpu::map::has_avx2_fma() {
                    let mut y = vec![0.0; sz.b * n];
                    // SAFETY: AVX2 and FMA are present; the sizes are the kernel's.
                    unsafe { mix_channel_avx2(&re, &im, &w, sz, o, &mut y) };
                    assert!(y == scalar, "AVX2, output channel {o}");
                }
                if crate::cpu::map::has_avx512() {
                    let mut y = vec![0.0; sz.b * n];
                    // SAFETY: AVX-512F is present; the sizes are the kernel's.
                    unsafe { mix_channel_avx512(&re, &im, &w, sz, o, &mut y) };
                    assert!(y == scalar, "AVX-512, output channel {o}");
                }
            }
        }
        Ok(())
    }

    #[test]
    fn shapes_that_do_not_fit_are_errors() -> Result<()> {
        let (z, w) = operands(6, 1, 3, 2, DType::F32)?;
        assert!(mode_mix(&z, &w.narrow(2, 0, 5)?).is_err());
        assert!(mode_mix(&z.narrow(2, 0, 4)?, &w).is_err());
        let empty = Tensor::zeros((6, 0, 6), DType::F32, &Device::Cpu)?;
        assert_eq!(mode_mix(&empty, &w)?.dims(), &[6, 0, 4]);
        Ok(())
    }
}
