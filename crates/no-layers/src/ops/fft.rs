//! Truncated real FFTs of the last axis as candle `CustomOp1`s (CPU, `realfft`), each
//! the exact adjoint of the other, so candle's autograd can run through them.
//!
//! Two linear maps on rows of a `[rows, n]` / `[rows, 2q]` tensor (spectra are laid out
//! `[Re(0..q) | Im(0..q)]`, the layout of [`crate::layers::spectral::fourier::rfft_basis`]):
//! * `TruncRfft`: `Y_k = s_k·Σ_x x_x e^{-2πikx/n}` for `k < q` (zero for `k > n/2`);
//! * `TruncIrfft`: `x_x = Σ_{k<q, k≤n/2} w_k·Re(Y_k e^{2πikx/n})`.
//!
//! The adjoint of `TruncRfft{s}` is `TruncIrfft{w = s}` and vice versa (the sine of DC
//! and Nyquist is 0, so their imaginary parts play no part either way). With
//! `s_k = 1/n` and `w_k = c_k` (1 at DC/Nyquist, 2 elsewhere) they are the forward and
//! inverse transforms of the spectral convolution. Rows are processed in parallel with
//! rayon. The public functions ([`truncated_rfft`], [`truncated_irfft`]) run these ops where
//! [`crate::ops::fused_cpu`] says so and the same maps as basis products elsewhere.

use crate::layers::spectral::fourier;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use realfft::num_complex::Complex;
use realfft::{FftNum, RealFftPlanner};
use std::sync::{Arc, Mutex, OnceLock};

/// Forward truncated real DFT of the last axis: `[rows, n] → [rows, 2q]`.
#[derive(Debug, Clone)]
pub(crate) struct TruncRfft {
    n: usize,
    q: usize,
    scale: Arc<Vec<f64>>,
}

/// Weighted inverse real DFT of the last axis: `[rows, 2q] → [rows, n]`.
#[derive(Debug, Clone)]
pub(crate) struct TruncIrfft {
    n: usize,
    q: usize,
    weight: Arc<Vec<f64>>,
}

impl TruncRfft {
    /// `q` bins of a length-`n` axis with per-bin scale `scale` (length `q`).
    pub(crate) fn new(n: usize, q: usize, scale: Vec<f64>) -> Result<Self> {
        if n == 0 || q == 0 || scale.len() != q {
            candle_core::bail!(
                "TruncRfft: need n > 0, q > 0 and q scales, got n={n}, q={q}, {} scales",
                scale.len()
            );
        }
        Ok(Self {
            n,
            q,
            scale: Arc::new(scale),
        })
    }

    /// The forward-normalised transform (`s_k = 1/n`), as neuraloperator's `rfft`.
    pub(crate) fn forward_normalised(n: usize, q: usize) -> Result<Self> {
        Self::new(n, q, vec![1.0 / n as f64; q])
    }
}

impl TruncIrfft {
    /// `q` bins onto a length-`n` axis with per-bin weight `weight` (length `q`).
    pub(crate) fn new(n: usize, q: usize, weight: Vec<f64>) -> Result<Self> {
        if n == 0 || q == 0 || weight.len() != q {
            candle_core::bail!(
                "TruncIrfft: need n > 0, q > 0 and q weights, got n={n}, q={q}, {} weights",
                weight.len()
            );
        }
        Ok(Self {
            n,
            q,
            weight: Arc::new(weight),
        })
    }

    /// The unnormalised inverse (`irfft` of the spectrum zero-padded to `n/2+1` bins).
    pub(crate) fn irfft(n: usize, q: usize) -> Result<Self> {
        let w = (0..q)
            .map(|k| if k == 0 || 2 * k == n { 1.0 } else { 2.0 })
            .collect();
        Self::new(n, q, w)
    }
}

/// `[rows, n] → [rows, 2q]`, forward-normalised, through `TruncRfft`.
///
/// Fused where [`crate::ops::fused_cpu`] says so; elsewhere the product with the real DFT
/// basis ([`crate::layers::spectral::fourier::rfft_basis`], bins above `n/2` zero), which
/// computes the same values.
pub fn truncated_rfft(x: &Tensor, q: usize) -> Result<Tensor> {
    let n = x.dim(candle_core::D::Minus1)?;
    let op = TruncRfft::forward_normalised(n, q)?;
    if crate::ops::fused_cpu(&[x]) {
        return x.contiguous()?.apply_op1(op);
    }
    let kept = q.min(n / 2 + 1);
    let basis = fourier::rfft_basis(n, kept, x.dtype(), x.device())?;
    let y = fourier::mul_basis_right(x, &basis)?;
    if kept == q {
        return Ok(y);
    }
    let last = y.rank() - 1;
    let pad = |t: Tensor| t.pad_with_zeros(last, 0, q - kept);
    Tensor::cat(
        &[
            pad(y.narrow(last, 0, kept)?)?,
            pad(y.narrow(last, kept, kept)?)?,
        ],
        last,
    )
}

/// `[rows, 2q] → [rows, n_out]`, the inverse of [`truncated_rfft`], through `TruncIrfft`.
///
/// Fused where [`crate::ops::fused_cpu`] says so; elsewhere the product with
/// [`crate::layers::spectral::fourier::irfft_basis`], which computes the same values.
pub fn truncated_irfft(y: &Tensor, n_out: usize) -> Result<Tensor> {
    let q = y.dim(candle_core::D::Minus1)? / 2;
    let op = TruncIrfft::irfft(n_out, q)?;
    if crate::ops::fused_cpu(&[y]) {
        return y.contiguous()?.apply_op1(op);
    }
    fourier::mul_basis_right(y, &fourier::irfft_basis(n_out, q, y.dtype(), y.device())?)
}

fn planner<T: FftNum>(
    cell: &'static OnceLock<Mutex<RealFftPlanner<T>>>,
) -> &'static Mutex<RealFftPlanner<T>> {
    cell.get_or_init(|| Mutex::new(RealFftPlanner::new()))
}

/// Per-precision planner caches (planning is done once per length).
trait Planned: FftNum {
    fn planner() -> &'static Mutex<RealFftPlanner<Self>>;
}
impl Planned for f32 {
    fn planner() -> &'static Mutex<RealFftPlanner<f32>> {
        static P: OnceLock<Mutex<RealFftPlanner<f32>>> = OnceLock::new();
        planner(&P)
    }
}
impl Planned for f64 {
    fn planner() -> &'static Mutex<RealFftPlanner<f64>> {
        static P: OnceLock<Mutex<RealFftPlanner<f64>>> = OnceLock::new();
        planner(&P)
    }
}

fn lock_err<E>(_: E) -> candle_core::Error {
    candle_core::Error::Msg("FFT planner lock poisoned".into())
}

/// Rows per rayon task: enough work per task to amortise scheduling.
const ROWS_PER_TASK: usize = 64;

fn rfft_rows<T: Planned>(input: &[T], n: usize, q: usize, scale: &[f64]) -> Result<Vec<T>> {
    let plan = T::planner().lock().map_err(lock_err)?.plan_fft_forward(n);
    let rows = input.len() / n;
    let mut out = vec![T::zero(); rows * 2 * q];
    let kmax = q.min(n / 2 + 1);
    let scale: Vec<T> = scale
        .iter()
        .map(|&s| T::from_f64(s).unwrap_or_else(T::zero))
        .collect();
    out.par_chunks_mut(2 * q * ROWS_PER_TASK)
        .zip(input.par_chunks(n * ROWS_PER_TASK))
        .try_for_each(|(o, i)| -> Result<()> {
            let mut buf = plan.make_input_vec();
            let mut spec = plan.make_output_vec();
            let mut scratch = plan.make_scratch_vec();
            for (orow, irow) in o.chunks_mut(2 * q).zip(i.chunks(n)) {
                buf.copy_from_slice(irow);
                plan.process_with_scratch(&mut buf, &mut spec, &mut scratch)
                    .map_err(|e| candle_core::Error::Msg(format!("rfft: {e}")))?;
                for k in 0..kmax {
                    orow[k] = spec[k].re * scale[k];
                    orow[q + k] = spec[k].im * scale[k];
                }
            }
            Ok(())
        })?;
    Ok(out)
}

fn irfft_rows<T: Planned>(input: &[T], n: usize, q: usize, weight: &[f64]) -> Result<Vec<T>> {
    let plan = T::planner().lock().map_err(lock_err)?.plan_fft_inverse(n);
    let rows = input.len() / (2 * q);
    let mut out = vec![T::zero(); rows * n];
    let kmax = q.min(n / 2 + 1);
    // c2r computes S_0 + 2·Σ Re(S_k e^{iθ}) (+ S_{n/2}(-1)^x): divide interior weights by 2.
    let w: Vec<T> = (0..kmax)
        .map(|k| {
            let c2r = if k == 0 || 2 * k == n { 1.0 } else { 2.0 };
            T::from_f64(weight[k] / c2r).unwrap_or_else(T::zero)
        })
        .collect();
    out.par_chunks_mut(n * ROWS_PER_TASK)
        .zip(input.par_chunks(2 * q * ROWS_PER_TASK))
        .try_for_each(|(o, i)| -> Result<()> {
            let mut spec = plan.make_input_vec();
            let mut buf = plan.make_output_vec();
            let mut scratch = plan.make_scratch_vec();
            for (orow, irow) in o.chunks_mut(n).zip(i.chunks(2 * q)) {
                spec.iter_mut()
                    .for_each(|z| *z = Complex::new(T::zero(), T::zero()));
                for k in 0..kmax {
                    let im = if k == 0 || 2 * k == n {
                        T::zero()
                    } else {
                        irow[q + k] * w[k]
                    };
                    spec[k] = Complex::new(irow[k] * w[k], im);
                }
                plan.process_with_scratch(&mut spec, &mut buf, &mut scratch)
                    .map_err(|e| candle_core::Error::Msg(format!("irfft: {e}")))?;
                orow.copy_from_slice(&buf);
            }
            Ok(())
        })?;
    Ok(out)
}

/// The contiguous slice of a CPU storage, or an error naming the op.
fn rows_of<'a, T>(v: &'a [T], layout: &Layout, name: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => candle_core::bail!("{name}: input must be contiguous"),
    }
}

fn last_dim(layout: &Layout, expected: usize, name: &str) -> Result<Vec<usize>> {
    let dims = layout.shape().dims().to_vec();
    if dims.last() != Some(&expected) {
        candle_core::bail!("{name}: last axis must have size {expected}, got shape {dims:?}");
    }
    Ok(dims)
}

impl CustomOp1 for TruncRfft {
    fn name(&self) -> &'static str {
        "trunc-rfft"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = last_dim(l, self.n, self.name())?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(rfft_rows(
                rows_of(v, l, self.name())?,
                self.n,
                self.q,
                &self.scale,
            )?),
            CpuStorage::F64(v) => CpuStorage::F64(rfft_rows(
                rows_of(v, l, self.name())?,
                self.n,
                self.q,
                &self.scale,
            )?),
            _ => candle_core::bail!("trunc-rfft: f32 or f64 input expected"),
        };
        if let Some(d) = dims.last_mut() {
            *d = 2 * self.q;
        }
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let adj = TruncIrfft {
            n: self.n,
            q: self.q,
            weight: self.scale.clone(),
        };
        Ok(Some(grad.contiguous()?.apply_op1(adj)?))
    }
}

impl CustomOp1 for TruncIrfft {
    fn name(&self) -> &'static str {
        "trunc-irfft"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let mut dims = last_dim(l, 2 * self.q, self.name())?;
        let out = match s {
            CpuStorage::F32(v) => CpuStorage::F32(irfft_rows(
                rows_of(v, l, self.name())?,
                self.n,
                self.q,
                &self.weight,
            )?),
            CpuStorage::F64(v) => CpuStorage::F64(irfft_rows(
                rows_of(v, l, self.name())?,
                self.n,
                self.q,
                &self.weight,
            )?),
            _ => candle_core::bail!("trunc-irfft: f32 or f64 input expected"),
        };
        if let Some(d) = dims.last_mut() {
            *d = self.n;
        }
        Ok((out, Shape::from(dims)))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let adj = TruncRfft {
            n: self.n,
            q: self.q,
            scale: self.weight.clone(),
        };
        Ok(Some(grad.contiguous()?.apply_op1(adj)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use crate::layers::spectral::fourier::{irfft_basis, rfft_basis};
    use candle_core::{DType, Device, Var};

    fn max_abs(t: &Tensor) -> Result<f64> {
        t.abs()?.max_all()?.to_scalar::<f64>()
    }

    #[test]
    fn ops_equal_the_matmul_bases() -> Result<()> {
        for (n, q, n_out) in [
            (12usize, 4usize, 12usize),
            (9, 5, 9),
            (10, 6, 7),
            (8, 5, 16),
        ] {
            let x = random_like(&Tensor::zeros((3, n), DType::F64, &Device::Cpu)?, n as u64)?;
            let fwd = truncated_rfft(&x, q.min(n / 2 + 1))?;
            let reference =
                x.matmul(&rfft_basis(n, q.min(n / 2 + 1), DType::F64, &Device::Cpu)?)?;
            assert!(max_abs(&(fwd - reference)?)? < 1e-14);
            let y = random_like(&Tensor::zeros((3, 2 * q), DType::F64, &Device::Cpu)?, 7)?;
            let inv = truncated_irfft(&y, n_out)?;
            let reference = y.matmul(&irfft_basis(n_out, q, DType::F64, &Device::Cpu)?)?;
            assert!(max_abs(&(inv - reference)?)? < 1e-13, "n_out {n_out}");
        }
        Ok(())
    }

    #[test]
    fn ops_are_each_others_adjoint() -> Result<()> {
        // <A x, y> = <x, A* y> for random x, y.
        for (n, q) in [(10usize, 6usize), (9, 3), (8, 7)] {
            let scale: Vec<f64> = (0..q).map(|k| 0.3 + k as f64).collect();
            let a = TruncRfft::new(n, q, scale.clone())?;
            let a_adj = TruncIrfft::new(n, q, scale)?;
            let x = random_like(&Tensor::zeros((4, n), DType::F64, &Device::Cpu)?, 1)?;
            let y = random_like(&Tensor::zeros((4, 2 * q), DType::F64, &Device::Cpu)?, 2)?;
            let lhs = (x.apply_op1(a)? * &y)?.sum_all()?.to_scalar::<f64>()?;
            let rhs = (x * y.apply_op1(a_adj)?)?.sum_all()?.to_scalar::<f64>()?;
            assert!(
                (lhs - rhs).abs() < 1e-12 * (1.0 + lhs.abs()),
                "n={n}: {lhs} vs {rhs}"
            );
        }
        Ok(())
    }

    #[test]
    fn gradients_through_both_ops_match_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&random_like(
            &Tensor::zeros((3, 10), DType::F64, &Device::Cpu)?,
            5,
        )?)?;
        let xs = x.clone();
        // Nonlinear in between, so both backward passes are exercised with non-trivial grads.
        let f = move || truncated_irfft(&truncated_rfft(xs.as_tensor(), 4)?.sqr()?, 11);
        let report = check_gradients(f, &[x], &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    #[test]
    fn wrong_input_width_is_an_error() -> Result<()> {
        let x = Tensor::zeros((2, 7), DType::F32, &Device::Cpu)?;
        assert!(x.apply_op1(TruncIrfft::irfft(8, 3)?).is_err());
        Ok(())
    }
}
