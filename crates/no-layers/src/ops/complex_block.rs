//! The real block form of a per-mode complex weight, built in one pass.
//!
//! The spectral convolution mixes channels mode by mode with a complex matrix `W_m`
//! (`[C, O]`). As a real GEMM, `[Zr | Zi] · [[Re W, Im W], [−Im W, Re W]] = [Re ZW | Im ZW]`,
//! so each forward needs the block `[M, 2C, 2O]` from the stored weight `[C, O, M, 2]`
//! (neuraloperator's layout with `view_as_real`). Assembled from candle ops this was two
//! narrows, two permutes, a negation, three concatenations and a copy, each allocating
//! (a quarter of an FNO forward at batch 1). Here it is one gather forward and its exact
//! adjoint backward: `∂W_re = ∂B[m, c, o] + ∂B[m, C+c, O+o]`,
//! `∂W_im = ∂B[m, c, O+o] − ∂B[m, C+c, o]`. `f32` and `f64` on the CPU; elsewhere the
//! same block from candle ops.

use crate::cpu::map::contiguous;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `w [C, O, M, 2]` (re, im) → `[M, 2C, 2O]` = `[[Re, Im], [−Im, Re]]` per mode.
pub fn complex_block(w: &Tensor) -> Result<Tensor> {
    let (c, o, m, two) = w.dims4()?;
    if two != 2 {
        candle_core::bail!(
            "complex_block: expected [C, O, M, 2] (re, im), got {:?}",
            w.dims()
        );
    }
    if crate::ops::fused_cpu(&[w]) {
        return w.contiguous()?.apply_op1(ComplexBlock { c, o, m });
    }
    let part = |k: usize| -> Result<Tensor> { w.narrow(3, k, 1)?.squeeze(3)?.permute((2, 0, 1)) };
    let (re, im) = (part(0)?, part(1)?);
    let top = Tensor::cat(&[&re, &im], 2)?;
    let bottom = Tensor::cat(&[&im.neg()?, &re], 2)?;
    Tensor::cat(&[top, bottom], 1)?.contiguous()
}

/// The forward gather (sizes of `[C, O, M, 2]`).
#[derive(Debug, Clone, Copy)]
struct ComplexBlock {
    c: usize,
    o: usize,
    m: usize,
}

/// The backward: `∂B [M, 2C, 2O]` → `∂W [C, O, M, 2]`.
#[derive(Debug, Clone, Copy)]
struct ComplexBlockGrad {
    c: usize,
    o: usize,
    m: usize,
}

/// A float the ops run on.
trait Real:
    Copy
    + Send
    + Sync
    + std::ops::Neg<Output = Self>
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
{
}
impl Real for f32 {}
impl Real for f64 {}

impl ComplexBlock {
    /// One rayon task per mode: the `[2C, 2O]` block of mode `k`.
    fn gather<T: Real>(&self, w: &[T]) -> Vec<T> {
        let Self { c, o, m } = *self;
        let at =
            |ci: usize, oi: usize, k: usize, part: usize| w[((ci * o + oi) * m + k) * 2 + part];
        filled(m * 4 * c * o, 4 * c * o, |k, block| {
            for (row, out) in block.chunks_mut(2 * o).enumerate() {
                let (ci, lower) = (row % c, row >= c);
                let (left, right) = out.split_at_mut(o);
                for oi in 0..o {
                    let (re, im) = (at(ci, oi, k, 0), at(ci, oi, k, 1));
                    // [[Re, Im], [−Im, Re]]
                    left[oi].write(if lower { -im } else { re });
                    right[oi].write(if lower { re } else { im });
                }
            }
        })
    }
}

impl ComplexBlockGrad {
    /// One rayon task per input channel: `∂W[c, :, :, :]`.
    fn scatter<T: Real>(&self, g: &[T]) -> Vec<T> {
        let Self { c, o, m } = *self;
        let at = |k: usize, row: usize, col: usize| g[(k * 2 * c + row) * 2 * o + col];
        filled(c * o * m * 2, o * m * 2, |ci, out| {
            for (idx, pair) in out.chunks_mut(2).enumerate() {
                let (oi, k) = (idx / m, idx % m);
                pair[0].write(at(k, ci, oi) + at(k, c + ci, o + oi));
                pair[1].write(at(k, ci, o + oi) - at(k, c + ci, oi));
            }
        })
    }
}

/// A vector of `len` elements written by `fill(i, chunk)` for its `i`-th chunk of `chunk`
/// elements, chunks in parallel; `fill` must write every element of its chunk.
fn filled<T: Send>(
    len: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [std::mem::MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let mut out = Vec::with_capacity(len);
    if chunk > 0 {
        out.spare_capacity_mut()[..len]
            .par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, part)| fill(i, part));
    }
    // SAFETY: every chunk of `out[..len]` was handed to `fill`, which writes all of it
    // (both callers above write each element of their chunk exactly once).
    unsafe { out.set_len(len) };
    out
}

impl CustomOp1 for ComplexBlock {
    fn name(&self) -> &'static str {
        "complex-block"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.gather(contiguous(self.name(), v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(self.gather(contiguous(self.name(), v, l)?)),
            other => candle_core::bail!("complex-block: dtype {:?} not handled", other.dtype()),
        };
        Ok((out, Shape::from((self.m, 2 * self.c, 2 * self.o))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let op = ComplexBlockGrad {
            c: self.c,
            o: self.o,
            m: self.m,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

impl CustomOp1 for ComplexBlockGrad {
    fn name(&self) -> &'static str {
        "complex-block-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(self.scatter(contiguous(self.name(), v, l)?)),
            CpuStorage::F64(v) => CpuStorage::F64(self.scatter(contiguous(self.name(), v, l)?)),
            other => {
                candle_core::bail!("complex-block-grad: dtype {:?} not handled", other.dtype())
            }
        };
        Ok((out, Shape::from((self.c, self.o, self.m, 2))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use candle_core::{DType, Device, Var};

    fn weight(c: usize, o: usize, m: usize, seed: u64) -> Result<Tensor> {
        random_like(
            &Tensor::zeros((c, o, m, 2), DType::F64, &Device::Cpu)?,
            seed,
        )
    }

    #[test]
    fn block_multiplies_like_the_complex_matrix() -> Result<()> {
        // [Zr | Zi] · block must equal the complex product Z·W_m, mode by mode.
        let (c, o, m) = (3, 2, 4);
        let w = weight(c, o, m, 1)?;
        let block = complex_block(&w)?;
        assert_eq!(block.dims(), &[m, 2 * c, 2 * o]);
        let z = random_like(&Tensor::zeros((m, 1, 2 * c), DType::F64, &Device::Cpu)?, 2)?;
        let y = z.matmul(&block)?.to_vec3::<f64>()?;
        let zv = z.to_vec3::<f64>()?;
        let wv: Vec<f64> = w.flatten_all()?.to_vec1()?;
        let at = |ci: usize, oi: usize, k: usize, p: usize| wv[((ci * o + oi) * m + k) * 2 + p];
        for k in 0..m {
            for oi in 0..o {
                let (mut re, mut im) = (0.0, 0.0);
                for ci in 0..c {
                    let (zr, zi) = (zv[k][0][ci], zv[k][0][c + ci]);
                    let (wr, wi) = (at(ci, oi, k, 0), at(ci, oi, k, 1));
                    re += zr * wr - zi * wi;
                    im += zr * wi + zi * wr;
                }
                assert!((y[k][0][oi] - re).abs() < 1e-12, "re mode {k} out {oi}");
                assert!((y[k][0][o + oi] - im).abs() < 1e-12, "im mode {k} out {oi}");
            }
        }
        Ok(())
    }

    #[test]
    fn fused_block_equals_the_candle_one_in_f32() -> Result<()> {
        let w = weight(4, 3, 5, 3)?.to_dtype(DType::F32)?;
        let fused = complex_block(&w)?.flatten_all()?.to_vec1::<f32>()?;
        let part =
            |k: usize| -> Result<Tensor> { w.narrow(3, k, 1)?.squeeze(3)?.permute((2, 0, 1)) };
        let (re, im) = (part(0)?, part(1)?);
        let top = Tensor::cat(&[&re, &im], 2)?;
        let bottom = Tensor::cat(&[&im.neg()?, &re], 2)?;
        let want = Tensor::cat(&[top, bottom], 1)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        assert_eq!(fused, want);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // A sliced (non-contiguous) weight, as the layer passes when the grid keeps fewer modes.
        let w = Var::from_tensor(&weight(3, 2, 5, 4)?)?;
        let probe = random_like(&Tensor::zeros((3, 6, 4), DType::F64, &Device::Cpu)?, 5)?;
        let wv = w.clone();
        let r = check_gradients(
            move || (complex_block(&wv.as_tensor().narrow(2, 1, 3)?)? * &probe)?.sum_all(),
            std::slice::from_ref(&w),
            &GradCheckConfig::default(),
        )?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }

    #[test]
    fn rejects_a_weight_without_the_re_im_axis() -> Result<()> {
        let w = Tensor::zeros((2, 2, 3, 3), DType::F32, &Device::Cpu)?;
        let err = complex_block(&w)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("[C, O, M, 2]"), "{err}");
        Ok(())
    }
}
