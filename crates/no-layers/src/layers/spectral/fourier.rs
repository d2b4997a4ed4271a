//! Truncated real-DFT bases, one axis at a time, cached per (size, modes).
//!
//! candle has no FFT and no complex dtype, so the spectral convolution computes only the
//! few Fourier modes it keeps, as matrix products with precomputed cos/sin bases (this
//! works on every backend and candle's autograd differentiates it). A truncated DFT of
//! `q` modes of a length-`n` axis costs `O(n·q)`, which for the study's 16 modes is as
//! cheap as an FFT and runs as one large GEMM.
//!
//! # Conventions (neuraloperator 2.x)
//! * Forward transform scaled by `1/n` per axis (`norm="forward"`), inverse unscaled.
//! * The **last** axis is a real transform that keeps frequencies `0..q`; a layer asked
//!   for `m` modes there keeps `q = m/2 + 1` ([`rfft_kept`]).
//! * Every other axis keeps `m` frequencies centred on 0: `-(m/2) ..= m - m/2 - 1`
//!   ([`centred_kept`]); weight index `j` holds frequency `j - m/2` (neuraloperator's
//!   `fftshift` order).
//! * Hermitian handling: the inverse real transform weighs frequency `k` by `c_k = 2`,
//!   except DC and (even `n`) Nyquist where `c_k = 1`; their sine columns are exactly 0, so
//!   the imaginary parts of those bins are ignored, as `irfft` does.
//! * Frequencies an output grid cannot represent get zero basis rows (they are dropped,
//!   as `irfft` crops its input).
//!
//! Phases are computed as `2π·((k·x) mod n)/n` with the product in integers, so bases are
//! exact to rounding at any size (no power-of-two constraint).

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp2, DType, Device, DeviceLocation, Layout, MetalStorage,
    Result, Shape, Tensor,
};
use std::collections::HashMap;
use std::f64::consts::PI;
use std::sync::{Mutex, OnceLock};

/// The frequencies kept on a centred (non-last) axis: `(lowest, count)`.
///
/// For `n_modes = m` on an axis of length `n` this is the intersection of
/// `-(m/2) ..= m - m/2 - 1` with the frequencies that the grid resolves,
/// `-(n/2) ..= n - n/2 - 1`. The weight index of frequency `k` is `k + m/2`.
pub fn centred_kept(n_modes: usize, n: usize) -> (i64, usize) {
    let (m, n) = (n_modes as i64, n as i64);
    let lo = (-(m / 2)).max(-(n / 2));
    let hi = (m - m / 2 - 1).min(n - n / 2 - 1);
    (lo, (hi - lo + 1).max(0) as usize)
}

/// The number of frequencies (`0..q`) kept on the last (real) axis: `min(m/2+1, n/2+1)`.
pub fn rfft_kept(n_modes: usize, n: usize) -> usize {
    (n_modes / 2 + 1).min(n / 2 + 1)
}

/// Phase `2π·((k·x) mod n)/n`, with the product reduced in integers.
fn phase(k: i64, x: usize, n: usize) -> f64 {
    let r = (k * x as i64).rem_euclid(n as i64);
    2.0 * PI * r as f64 / n as f64
}

/// Whether frequency `k` is DC or the Nyquist frequency of a length-`n` axis.
fn is_self_conjugate(k: i64, n: usize) -> bool {
    k.rem_euclid(n as i64) == 0 || 2 * k.rem_euclid(n as i64) == n as i64
}

/// Sine of the phase, exactly 0 at DC and Nyquist.
fn sin_phase(k: i64, x: usize, n: usize) -> f64 {
    if is_self_conjugate(k, n) {
        0.0
    } else {
        phase(k, x, n).sin()
    }
}

/// Which basis, for the cache key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Rfft,
    RfftTransposed,
    Irfft,
    Dft,
    Idft,
}

type Key = (Kind, usize, i64, usize, DType, DeviceLocation);

fn cache() -> &'static Mutex<HashMap<Key, Tensor>> {
    static CACHE: OnceLock<Mutex<HashMap<Key, Tensor>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Builds (or fetches) a basis. Values are computed in f64 and then converted.
fn cached(
    kind: Kind,
    n: usize,
    lo: i64,
    count: usize,
    dtype: DType,
    device: &Device,
    build: impl FnOnce() -> (Vec<f64>, (usize, usize)),
) -> Result<Tensor> {
    let key = (kind, n, lo, count, dtype, device.location());
    if let Ok(map) = cache().lock() {
        if let Some(t) = map.get(&key) {
            return Ok(t.clone());
        }
    }
    let (values, shape) = build();
    let t = Tensor::from_vec(values, shape, &Device::Cpu)?
        .to_dtype(dtype)?
        .to_device(device)?;
    if let Ok(mut map) = cache().lock() {
        map.insert(key, t.clone());
    }
    Ok(t)
}

/// Forward real transform of the last axis, `[n, 2q]`: `x @ basis = [Re | Im]` of
/// `(1/n)·Σ_x x·e^{-2πikx/n}` for `k = 0..q`.
pub fn rfft_basis(n: usize, q: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    cached(Kind::Rfft, n, 0, q, dtype, device, || {
        let mut v = vec![0.0; n * 2 * q];
        let scale = 1.0 / n as f64;
        for x in 0..n {
            for k in 0..q {
                v[x * 2 * q + k] = phase(k as i64, x, n).cos() * scale;
                v[x * 2 * q + q + k] = -sin_phase(k as i64, x, n) * scale;
            }
        }
        (v, (n, 2 * q))
    })
}

/// [`rfft_basis`] stored transposed, `[2q, n]` (cached separately): its `.t()` is the same
/// `[n, 2q]` matrix with contiguous columns, the layout in which
/// [`crate::ops::spectral_transform::grid_to_spectrum`] runs the product as dot products along
/// the grid rows.
pub fn rfft_basis_transposed(n: usize, q: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    cached(Kind::RfftTransposed, n, 0, q, dtype, device, || {
        let mut v = vec![0.0; 2 * q * n];
        let scale = 1.0 / n as f64;
        for k in 0..q {
            for x in 0..n {
                v[k * n + x] = phase(k as i64, x, n).cos() * scale;
                v[(q + k) * n + x] = -sin_phase(k as i64, x, n) * scale;
            }
        }
        (v, (2 * q, n))
    })
}

/// Inverse real transform onto a last axis of length `n_out`, `[2q, n_out]`:
/// `[Re | Im] @ basis = Σ_k c_k·Re(Y_k·e^{2πikx/n_out})`, the `irfft` of the spectrum
/// zero-padded (or cropped) to `n_out/2 + 1` bins.
pub fn irfft_basis(n_out: usize, q: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    cached(Kind::Irfft, n_out, 0, q, dtype, device, || {
        let mut v = vec![0.0; 2 * q * n_out];
        for k in 0..q.min(n_out / 2 + 1) {
            let c = if is_self_conjugate(k as i64, n_out) {
                1.0
            } else {
                2.0
            };
            for x in 0..n_out {
                v[k * n_out + x] = c * phase(k as i64, x, n_out).cos();
                v[(q + k) * n_out + x] = -c * sin_phase(k as i64, x, n_out);
            }
        }
        (v, (2 * q, n_out))
    })
}

/// Forward complex transform of a centred axis, `[2·count, n]`: rows `cos θ/n` for the
/// frequencies `lo..lo+count`, then rows `sin θ/n`. For a complex input `A = Ar + iAi`
/// laid out `[n, 2q]` as `[Ar | Ai]`, `P = basis @ A` gives
/// `Re Z = P[:c, :q] + P[c:, q:]` and `Im Z = P[:c, q:] − P[c:, :q]`, where
/// `Z_k = (1/n)·Σ_x A_x e^{-2πikx/n}`.
pub fn dft_basis(n: usize, lo: i64, count: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    cached(Kind::Dft, n, lo, count, dtype, device, || {
        let mut v = vec![0.0; 2 * count * n];
        let scale = 1.0 / n as f64;
        for j in 0..count {
            let k = lo + j as i64;
            for x in 0..n {
                v[j * n + x] = phase(k, x, n).cos() * scale;
                v[(count + j) * n + x] = sin_phase(k, x, n) * scale;
            }
        }
        (v, (2 * count, n))
    })
}

/// Inverse complex transform onto a centred axis of length `n_out`, `[n_out, 2·count]`
/// = `[cos θ | sin θ]`: with `Y` laid out as the real block `[[Yr, Yi], [−Yi, Yr]]`,
/// `basis @ block = [Re U | Im U]` where `U_x = Σ_k Y_k e^{2πikx/n_out}`. Frequencies
/// outside the band of `n_out` get zero columns.
pub fn idft_basis(
    n_out: usize,
    lo: i64,
    count: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor> {
    cached(Kind::Idft, n_out, lo, count, dtype, device, || {
        let (band_lo, band_len) = centred_kept(usize::MAX >> 2, n_out);
        let band = band_lo..band_lo + band_len as i64;
        let mut v = vec![0.0; n_out * 2 * count];
        for j in 0..count {
            let k = lo + j as i64;
            if !band.contains(&k) {
                continue;
            }
            for x in 0..n_out {
                v[x * 2 * count + j] = phase(k, x, n_out).cos();
                v[x * 2 * count + count + j] = sin_phase(k, x, n_out);
            }
        }
        (v, (n_out, 2 * count))
    })
}

/// Which side of the data a constant basis multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `x[…, k] @ basis[k, n]`.
    Right,
    /// `basis[m, k] @ x[batch, k, n]`.
    Left,
}

/// A product with a constant basis whose backward computes only the data's gradient.
///
/// candle's `matmul` backward always computes both operands' gradients, even for a
/// constant: for the study's size that is an extra full-size GEMM per basis product
/// plus a buffer per basis. This op runs the backend's own GEMM (every backend: it only
/// calls `BackendStorage::matmul`) and returns `grad · basisᵀ` (or `basisᵀ · grad`),
/// itself such a product, so higher derivatives work too.
#[derive(Debug, Clone, Copy)]
struct BasisProduct(Side);

impl BasisProduct {
    fn fwd<S: BackendStorage>(&self, x: &S, xl: &Layout, b: &S, bl: &Layout) -> Result<(S, Shape)> {
        let (xd, bd) = (xl.shape().dims(), bl.shape().dims());
        match (self.0, bd) {
            (Side::Right, &[k, n]) if xd.last() == Some(&k) => {
                let rows = xl.shape().elem_count() / k.max(1);
                let lhs = Layout::contiguous_with_offset((rows, k), xl.start_offset());
                let out = x.matmul(b, (1, rows, n, k), &lhs, bl)?;
                let mut dims = xd.to_vec();
                if let Some(d) = dims.last_mut() {
                    *d = n;
                }
                Ok((out, Shape::from(dims)))
            }
            (Side::Left, &[m, k]) if xd.len() == 3 && xd[1] == k => {
                let (batch, n) = (xd[0], xd[2]);
                let lhs = bl.broadcast_as((batch, m, k))?;
                Ok((
                    b.matmul(x, (batch, m, n, k), &lhs, xl)?,
                    Shape::from((batch, m, n)),
                ))
            }
            _ => candle_core::bail!(
                "basis product ({:?}): shapes {xd:?} and basis {bd:?} do not chain",
                self.0
            ),
        }
    }
}

impl CustomOp2 for BasisProduct {
    fn name(&self) -> &'static str {
        "basis-product"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        b: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.fwd(x, xl, b, bl)
    }

    fn cuda_fwd(
        &self,
        x: &CudaStorage,
        xl: &Layout,
        b: &CudaStorage,
        bl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.fwd(x, xl, b, bl)
    }

    fn metal_fwd(
        &self,
        x: &MetalStorage,
        xl: &Layout,
        b: &MetalStorage,
        bl: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.fwd(x, xl, b, bl)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        basis: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let bt = basis.t()?.contiguous()?;
        let gx = grad.contiguous()?.apply_op2(&bt, *self)?;
        Ok((Some(gx), None))
    }
}

/// `x[…, k] @ basis[k, n]` for a constant `basis` (no gradient is computed for it).
pub fn mul_basis_right(x: &Tensor, basis: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&basis.contiguous()?, BasisProduct(Side::Right))
}

/// `basis[m, k] @ x[batch, k, n]` for a constant `basis` (no gradient is computed for it).
pub fn mul_basis_left(basis: &Tensor, x: &Tensor) -> Result<Tensor> {
    x.contiguous()?
        .apply_op2(&basis.contiguous()?, BasisProduct(Side::Left))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_modes_follow_neuraloperator() {
        // 16 modes keep -8..=7 on a large grid, 9 bins on the last axis.
        assert_eq!(centred_kept(16, 100), (-8, 16));
        assert_eq!(rfft_kept(16, 100), 9);
        // A grid smaller than the modes keeps what it resolves.
        assert_eq!(centred_kept(16, 6), (-3, 6));
        assert_eq!(centred_kept(16, 5), (-2, 5));
        assert_eq!(rfft_kept(16, 6), 4);
        // Odd mode counts: one more non-negative frequency.
        assert_eq!(centred_kept(5, 100), (-2, 5));
    }

    #[test]
    fn rfft_basis_matches_a_direct_sum_and_zeroes_self_conjugate_sines() -> Result<()> {
        let n = 8;
        let b = rfft_basis(n, 5, DType::F64, &Device::Cpu)?.to_vec2::<f64>()?;
        for (x, row) in b.iter().enumerate() {
            for k in 0..5 {
                let th = 2.0 * PI * (k * x) as f64 / n as f64;
                assert!((row[k] - th.cos() / 8.0).abs() < 1e-15);
                if k == 0 || k == 4 {
                    assert_eq!(row[5 + k], 0.0);
                } else {
                    assert!((row[5 + k] + th.sin() / 8.0).abs() < 1e-15);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn the_transposed_rfft_basis_is_the_transpose_bit_for_bit() -> Result<()> {
        for (n, q) in [(100, 9), (7, 4), (8, 5)] {
            let b = rfft_basis(n, q, DType::F32, &Device::Cpu)?;
            let t = rfft_basis_transposed(n, q, DType::F32, &Device::Cpu)?;
            assert_eq!(t.dims(), &[2 * q, n]);
            assert_eq!(
                t.t()?.to_vec2::<f32>()?,
                b.to_vec2::<f32>()?,
                "n {n}, q {q}"
            );
        }
        Ok(())
    }

    #[test]
    fn irfft_of_rfft_is_identity_when_all_bins_are_kept() -> Result<()> {
        for n in [7usize, 8] {
            let q = n / 2 + 1;
            let f = rfft_basis(n, q, DType::F64, &Device::Cpu)?;
            let g = irfft_basis(n, q, DType::F64, &Device::Cpu)?;
            let eye = Tensor::eye(n, DType::F64, &Device::Cpu)?;
            let err = (f.matmul(&g)? - eye)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(err < 1e-13, "n={n}: {err}");
        }
        Ok(())
    }

    #[test]
    fn dft_then_idft_is_identity_on_a_full_band() -> Result<()> {
        // A complex signal [n, 2q] = [Ar | Ai], transformed and inverted along axis 0.
        for n in [6usize, 7] {
            let (lo, c) = centred_kept(n, n);
            let a = Tensor::arange(0.0, (n * 4) as f64, &Device::Cpu)?
                .sin()?
                .reshape((n, 4))?;
            let p = dft_basis(n, lo, c, DType::F64, &Device::Cpu)?.matmul(&a)?;
            let q = 2;
            let zr = (p.narrow(0, 0, c)?.narrow(1, 0, q)? + p.narrow(0, c, c)?.narrow(1, q, q)?)?;
            let zi = (p.narrow(0, 0, c)?.narrow(1, q, q)? - p.narrow(0, c, c)?.narrow(1, 0, q)?)?;
            let block = Tensor::cat(
                &[
                    Tensor::cat(&[&zr, &zi], 1)?,
                    Tensor::cat(&[&zi.neg()?, &zr], 1)?,
                ],
                0,
            )?;
            let u = idft_basis(n, lo, c, DType::F64, &Device::Cpu)?.matmul(&block)?;
            let err = (u - a)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(err < 1e-13, "n={n}: {err}");
        }
        Ok(())
    }

    #[test]
    fn bases_are_cached() -> Result<()> {
        let a = rfft_basis(10, 3, DType::F32, &Device::Cpu)?;
        let b = rfft_basis(10, 3, DType::F32, &Device::Cpu)?;
        assert_eq!(a.id(), b.id());
        Ok(())
    }

    #[test]
    fn basis_products_equal_matmul_and_have_checked_gradients() -> Result<()> {
        use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
        use candle_core::Var;
        let dev = Device::Cpu;
        let b = random_like(&Tensor::zeros((5, 4), DType::F64, &dev)?, 1)?;
        let x = Var::from_tensor(&random_like(
            &Tensor::zeros((3, 2, 5), DType::F64, &dev)?,
            2,
        )?)?;
        let right = mul_basis_right(x.as_tensor(), &b)?;
        assert!(
            (right - x.as_tensor().broadcast_matmul(&b)?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?
                < 1e-14
        );
        let y = Var::from_tensor(&random_like(
            &Tensor::zeros((3, 4, 6), DType::F64, &dev)?,
            3,
        )?)?;
        let left = mul_basis_left(&b, y.as_tensor())?;
        assert!(
            (left - b.broadcast_matmul(y.as_tensor())?)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?
                < 1e-14
        );
        assert!(mul_basis_right(y.as_tensor(), &b).is_err());
        let (xs, ys, bs) = (x.clone(), y.clone(), b.clone());
        // Both sides chained with a nonlinearity in between, so both backward passes matter.
        let f = move || {
            let r = mul_basis_right(xs.as_tensor(), &bs)?.sin()?; // [3, 2, 4]
            let l = mul_basis_left(&bs, ys.as_tensor())?; // [3, 5, 6]
            r.sum_all()?.broadcast_mul(&l)
        };
        let report = check_gradients(f, &[x, y], &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }
}
