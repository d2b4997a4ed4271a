//! The exact (erf) GELU as one fused CPU kernel, forward and backward.
//!
//! candle's `gelu_erf` evaluates `erf` with a scalar libm call per element on one thread,
//! and its backward builds the derivative out of eight separate tensor operations, each a
//! full pass over memory with a fresh allocation. In an FNO those two made up about half
//! of a training step. Here the forward is one pass and the backward is one pass
//! (`grad · GELU'(x)`), both vectorised (AVX2/FMA when the CPU has them, chosen at run
//! time) and split over rayon's threads. Each element is computed independently, so the
//! result does not depend on the thread count.
//!
//! Accuracy: in `f32`, `erf` is a rational minimax fit `x·P(x²)/Q(x²)` on `|x| ≤ 4`
//! (clamped outside, where `erf` is 1 to within 2e-8), fitted for this crate (absolute
//! error 1.5e-9 in exact arithmetic, 4e-7 once evaluated in `f32`), and `exp` is a
//! Cody–Waite reduction with a degree-6 polynomial (relative error below 2e-7); the AVX2
//! kernels divide by a reciprocal estimate refined with one Newton step (about 1e-7 relative
//! more, and the exact bits then depend on the CPU's estimate, not on the thread count). `f64`
//! tensors use candle's exact `erf` and std's `exp`, which makes the f64 gradient checks
//! exact. Other dtypes and devices fall back to candle's `gelu_erf`.

use crate::cpu::map::{binary_storage, unary_storage};
#[cfg(target_arch = "x86_64")]
use crate::cpu::map::{has_avx2_fma, has_avx512};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// `1/√2`.
const FRAC_1_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;
/// `1/√(2π)`.
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// Exact GELU, `x·(1 + erf(x/√2))/2`, fused on the CPU for `f32` and `f64` (where
/// [`crate::ops::fused_cpu`] says so); [`gelu_composite`] elsewhere. Differentiable through
/// candle's autograd.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if crate::ops::fused_cpu(&[x]) {
        x.contiguous()?.apply_op1(GeluOp)
    } else {
        gelu_composite(x)
    }
}

/// The composite form of [`gelu`]: candle's `gelu_erf`, except in `f64`, where it is
/// written out as `0.5·x·(1 + erf(x/√2))`. candle 0.11's `gelu_erf` backward uses the
/// constant 0.398942 for `1/√(2π)` (a relative error of 7e-7, several f32 rounding steps
/// but far above f64's), while its `erf` backward is exact; an f64 gradient check of the
/// composite path needs the exact derivative. In f32 one op is cheaper and the difference
/// is below the rounding of the sums around it.
pub fn gelu_composite(x: &Tensor) -> Result<Tensor> {
    if x.dtype() == candle_core::DType::F64 {
        let cdf = ((x * std::f64::consts::FRAC_1_SQRT_2)?.erf()? + 1.0)?;
        (x * 0.5)? * cdf
    } else {
        x.gelu_erf()
    }
}

/// The forward op: `x ↦ GELU(x)`.
#[derive(Debug, Clone, Copy)]
struct GeluOp;

/// The backward op: `(x, g) ↦ g·GELU'(x)`.
#[derive(Debug, Clone, Copy)]
struct GeluGradOp;

impl CustomOp1 for GeluOp {
    fn name(&self) -> &'static str {
        "gelu-erf-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unary_storage(self.name(), s, l, gelu_f32_slice, gelu_f64_slice)
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(arg.contiguous()?.apply_op2_no_bwd(&g, &GeluGradOp)?))
    }
}

impl CustomOp2 for GeluGradOp {
    fn name(&self) -> &'static str {
        "gelu-erf-fused-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        binary_storage(
            self.name(),
            (s1, l1),
            (s2, l2),
            gelu_grad_f32_slice,
            gelu_grad_f64_slice,
        )
    }
}

/// Numerator coefficients of the `f32` `erf` fit (powers of `x²`).
const ERF_P: [f32; 7] = [
    std::f32::consts::FRAC_2_SQRT_PI,
    0.184_710_8,
    0.054_332_53,
    3.839_530_4e-3,
    3.826_871_4e-4,
    4.780_397_3e-6,
    -1.366_61e-8,
];

/// Denominator coefficients (`1 + Σ Q[i]·x^(2i+2)`).
const ERF_Q: [f32; 5] = [
    0.497_029_23,
    0.113_826_38,
    0.015_453_501,
    1.309_572_3e-3,
    6.400_79e-5,
];

/// High part of `ln 2` for the Cody–Waite reduction of [`exp_nonpositive_f32`].
const LN2_HI: f32 = 0.693_145_75;
/// Low part of `ln 2`.
const LN2_LO: f32 = 1.428_606_8e-6;

/// `erf` in `f32`: `x·P(x²)/Q(x²)` on the argument clamped to `[-4, 4]`.
#[inline(always)]
fn erf_f32(x: f32) -> f32 {
    const P: [f32; 7] = ERF_P;
    const Q: [f32; 5] = ERF_Q;
    let x = x.clamp(-4.0, 4.0);
    let z = x * x;
    let mut p = P[6];
    for &c in P[..6].iter().rev() {
        p = p * z + c;
    }
    let mut q = Q[4];
    for &c in Q[..4].iter().rev() {
        q = q * z + c;
    }
    q = q * z + 1.0;
    x * p / q
}

/// `exp(y)` in `f32` for `y ≤ 0` (arguments below −87 give `exp(−87)`, which is as good as
/// zero wherever it is used here).
#[inline(always)]
fn exp_nonpositive_f32(y: f32) -> f32 {
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer, and the integer
    // sits in the low mantissa bits of the sum.
    const ROUND: f32 = 12_582_912.0;
    let y = y.clamp(-87.0, 0.0);
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let k_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = y - k * LN2_HI - k * LN2_LO;
    // e^r on |r| ≤ ln2/2, Taylor to degree 6 (remainder below 1.5e-7 relative).
    let mut p = 1.0 / 720.0;
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = p * r + c;
    }
    p * f32::from_bits(((k_int + 127) << 23) as u32)
}

/// GELU of one `f32`.
#[inline(always)]
fn gelu_f32(x: f32) -> f32 {
    0.5 * x * (1.0 + erf_f32(x * FRAC_1_SQRT_2))
}

/// `GELU'(x) = Φ(x) + x·φ(x)` in `f32`.
#[inline(always)]
fn gelu_grad_f32(x: f32) -> f32 {
    let cdf = 0.5 * (1.0 + erf_f32(x * FRAC_1_SQRT_2));
    cdf + x * FRAC_1_SQRT_2PI * exp_nonpositive_f32(-0.5 * x * x)
}

/// Writes `GELU(x)` into `value` and replaces `x` by `GELU'(x)` (one `erf` for both).
#[inline(always)]
fn gelu_with_derivative_f32_kernel(x: &mut [f32], value: &mut [MaybeUninit<f32>]) {
    for (v, x) in value.iter_mut().zip(x) {
        let cdf = 0.5 * (1.0 + erf_f32(*x * FRAC_1_SQRT_2));
        v.write(*x * cdf);
        *x = cdf + *x * FRAC_1_SQRT_2PI * exp_nonpositive_f32(-0.5 * *x * *x);
    }
}

/// `u += s`, then `GELU(u)` into `value`.
#[inline(always)]
fn gelu_of_sum_f32_kernel(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
    for ((v, u), &s) in value.iter_mut().zip(u).zip(s) {
        *u += s;
        v.write(gelu_f32(*u));
    }
}

/// `u += s`, then [`gelu_with_derivative_f32_kernel`] on `u`.
#[inline(always)]
fn gelu_with_derivative_of_sum_f32_kernel(
    u: &mut [f32],
    s: &[f32],
    value: &mut [MaybeUninit<f32>],
) {
    for (u, &s) in u.iter_mut().zip(s) {
        *u += s;
    }
    gelu_with_derivative_f32_kernel(u, value)
}

#[inline(always)]
fn gelu_f32_kernel(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        d.write(gelu_f32(x));
    }
}

#[inline(always)]
fn gelu_grad_f32_kernel(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for ((d, &x), &g) in dst.iter_mut().zip(x).zip(g) {
        d.write(g * gelu_grad_f32(x));
    }
}

/// The same formulas on eight lanes with AVX2/FMA intrinsics. The only difference from the
/// portable kernels is the division of `erf`'s rational fit: a reciprocal estimate refined
/// by one Newton step (relative error about 1e-7; the division was a fifth of the kernel's
/// time). The last `len mod 8` elements use the portable kernel.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{FRAC_1_SQRT_2, FRAC_1_SQRT_2PI};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `erf` on eight lanes (see [`super::erf_f32`]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn erf8(x: __m256) -> __m256 {
        const P: [f32; 7] = super::ERF_P;
        const Q: [f32; 5] = super::ERF_Q;
        let x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(4.0)), _mm256_set1_ps(-4.0));
        let z = _mm256_mul_ps(x, x);
        let mut p = _mm256_set1_ps(P[6]);
        for &c in P[..6].iter().rev() {
            p = _mm256_fmadd_ps(p, z, _mm256_set1_ps(c));
        }
        let mut q = _mm256_set1_ps(Q[4]);
        for &c in Q[..4].iter().rev() {
            q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(c));
        }
        q = _mm256_fmadd_ps(q, z, _mm256_set1_ps(1.0));
        let r = _mm256_rcp_ps(q);
        let r = _mm256_mul_ps(r, _mm256_fnmadd_ps(q, r, _mm256_set1_ps(2.0)));
        _mm256_mul_ps(_mm256_mul_ps(x, p), r)
    }

    /// `exp(y)` for `y ≤ 0` on eight lanes (see [`super::exp_nonpositive_f32`]).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp_nonpositive8(y: __m256) -> __m256 {
        const ROUND: f32 = 12_582_912.0;
        let y = _mm256_max_ps(_mm256_min_ps(y, _mm256_setzero_ps()), _mm256_set1_ps(-87.0));
        let shifted = _mm256_fmadd_ps(
            y,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(ROUND),
        );
        let k = _mm256_sub_ps(shifted, _mm256_set1_ps(ROUND));
        let k_int = _mm256_sub_epi32(
            _mm256_castps_si256(shifted),
            _mm256_set1_epi32(ROUND.to_bits() as i32),
        );
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(super::LN2_HI), y);
        let r = _mm256_fnmadd_ps(k, _mm256_set1_ps(super::LN2_LO), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(k_int, _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
    }

    /// `Φ(x) = (1 + erf(x/√2))/2` on eight lanes.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn cdf8(x: __m256) -> __m256 {
        let e = erf8(_mm256_mul_ps(x, _mm256_set1_ps(FRAC_1_SQRT_2)));
        _mm256_mul_ps(_mm256_set1_ps(0.5), _mm256_add_ps(_mm256_set1_ps(1.0), e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let main = n - n % 8;
        for i in (0..main).step_by(8) {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            let y = _mm256_mul_ps(x, cdf8(x));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i).cast(), y);
        }
        super::gelu_f32_kernel(&src[main..n], &mut dst[main..n]);
    }

    /// `GELU'(x)` on eight lanes, given `Φ(x)`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn derivative8(x: __m256, cdf: __m256) -> __m256 {
        let half_sq = _mm256_mul_ps(_mm256_set1_ps(-0.5), _mm256_mul_ps(x, x));
        let pdf = _mm256_mul_ps(_mm256_set1_ps(FRAC_1_SQRT_2PI), exp_nonpositive8(half_sq));
        _mm256_fmadd_ps(x, pdf, cdf)
    }

    /// `u[i..i + 8] + s[i..i + 8]` (the caller keeps `i + 8` within both slices).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum8(u: &[f32], s: &[f32], i: usize) -> __m256 {
        _mm256_add_ps(
            _mm256_loadu_ps(u.as_ptr().add(i)),
            _mm256_loadu_ps(s.as_ptr().add(i)),
        )
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_of_sum(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
        let n = u.len().min(s.len()).min(value.len());
        let main = n - n % 8;
        for i in (0..main).step_by(8) {
            let xv = sum8(u, s, i);
            _mm256_storeu_ps(u.as_mut_ptr().add(i), xv);
            _mm256_storeu_ps(
                value.as_mut_ptr().add(i).cast(),
                _mm256_mul_ps(xv, cdf8(xv)),
            );
        }
        super::gelu_of_sum_f32_kernel(&mut u[main..n], &s[main..n], &mut value[main..n]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_with_derivative_of_sum(
        u: &mut [f32],
        s: &[f32],
        value: &mut [MaybeUninit<f32>],
    ) {
        let n = u.len().min(s.len()).min(value.len());
        let main = n - n % 8;
        for i in (0..main).step_by(8) {
            let xv = sum8(u, s, i);
            let cdf = cdf8(xv);
            _mm256_storeu_ps(value.as_mut_ptr().add(i).cast(), _mm256_mul_ps(xv, cdf));
            _mm256_storeu_ps(u.as_mut_ptr().add(i), derivative8(xv, cdf));
        }
        super::gelu_with_derivative_of_sum_f32_kernel(
            &mut u[main..n],
            &s[main..n],
            &mut value[main..n],
        );
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_with_derivative(x: &mut [f32], value: &mut [MaybeUninit<f32>]) {
        let n = x.len().min(value.len());
        let main = n - n % 8;
        for i in (0..main).step_by(8) {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let cdf = cdf8(xv);
            _mm256_storeu_ps(value.as_mut_ptr().add(i).cast(), _mm256_mul_ps(xv, cdf));
            _mm256_storeu_ps(x.as_mut_ptr().add(i), derivative8(xv, cdf));
        }
        super::gelu_with_derivative_f32_kernel(&mut x[main..n], &mut value[main..n]);
    }

    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn gelu_grad(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let n = x.len().min(g.len()).min(dst.len());
        let main = n - n % 8;
        for i in (0..main).step_by(8) {
            let xv = _mm256_loadu_ps(x.as_ptr().add(i));
            let gv = _mm256_loadu_ps(g.as_ptr().add(i));
            let d = derivative8(xv, cdf8(xv));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i).cast(), _mm256_mul_ps(gv, d));
        }
        super::gelu_grad_f32_kernel(&x[main..n], &g[main..n], &mut dst[main..n]);
    }
}

/// The AVX2 formulas on sixteen lanes (AVX-512F): the same polynomials, the reciprocal
/// estimate of `erf`'s fit from `rcp14` (14 bits, not 12) refined by the same Newton step.
/// On an AVX-512 CPU the pre-activations of a training step pass through these kernels
/// several times (forward with derivative, backward): a fifth of an FNO step in `perf`
/// with eight lanes. The last `len mod 16` elements use the AVX2 kernels.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{FRAC_1_SQRT_2, FRAC_1_SQRT_2PI};
    use std::arch::x86_64::*;
    use std::mem::MaybeUninit;

    /// `erf` on sixteen lanes (see [`super::erf_f32`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn erf16(x: __m512) -> __m512 {
        const P: [f32; 7] = super::ERF_P;
        const Q: [f32; 5] = super::ERF_Q;
        let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(4.0)), _mm512_set1_ps(-4.0));
        let z = _mm512_mul_ps(x, x);
        let mut p = _mm512_set1_ps(P[6]);
        for &c in P[..6].iter().rev() {
            p = _mm512_fmadd_ps(p, z, _mm512_set1_ps(c));
        }
        let mut q = _mm512_set1_ps(Q[4]);
        for &c in Q[..4].iter().rev() {
            q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(c));
        }
        q = _mm512_fmadd_ps(q, z, _mm512_set1_ps(1.0));
        let r = _mm512_rcp14_ps(q);
        let r = _mm512_mul_ps(r, _mm512_fnmadd_ps(q, r, _mm512_set1_ps(2.0)));
        _mm512_mul_ps(_mm512_mul_ps(x, p), r)
    }

    /// `exp(y)` for `y ≤ 0` on sixteen lanes (see [`super::exp_nonpositive_f32`]).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_nonpositive16(y: __m512) -> __m512 {
        const ROUND: f32 = 12_582_912.0;
        let y = _mm512_max_ps(_mm512_min_ps(y, _mm512_setzero_ps()), _mm512_set1_ps(-87.0));
        let shifted = _mm512_fmadd_ps(
            y,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
            _mm512_set1_ps(ROUND),
        );
        let k = _mm512_sub_ps(shifted, _mm512_set1_ps(ROUND));
        let k_int = _mm512_sub_epi32(
            _mm512_castps_si512(shifted),
            _mm512_set1_epi32(ROUND.to_bits() as i32),
        );
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(super::LN2_HI), y);
        let r = _mm512_fnmadd_ps(k, _mm512_set1_ps(super::LN2_LO), r);
        let mut p = _mm512_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let scale = _mm512_slli_epi32::<23>(_mm512_add_epi32(k_int, _mm512_set1_epi32(127)));
        _mm512_mul_ps(p, _mm512_castsi512_ps(scale))
    }

    /// `Φ(x) = (1 + erf(x/√2))/2` on sixteen lanes.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn cdf16(x: __m512) -> __m512 {
        let e = erf16(_mm512_mul_ps(x, _mm512_set1_ps(FRAC_1_SQRT_2)));
        _mm512_mul_ps(_mm512_set1_ps(0.5), _mm512_add_ps(_mm512_set1_ps(1.0), e))
    }

    /// `GELU'(x)` on sixteen lanes, given `Φ(x)`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn derivative16(x: __m512, cdf: __m512) -> __m512 {
        let half_sq = _mm512_mul_ps(_mm512_set1_ps(-0.5), _mm512_mul_ps(x, x));
        let pdf = _mm512_mul_ps(_mm512_set1_ps(FRAC_1_SQRT_2PI), exp_nonpositive16(half_sq));
        _mm512_fmadd_ps(x, pdf, cdf)
    }

    /// Sixteen lanes of `v` from `i` (the caller keeps `i + 16` within the slice).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn load(v: &[f32], i: usize) -> __m512 {
        // SAFETY: the caller keeps `i + 16 ≤ v.len()`.
        unsafe { _mm512_loadu_ps(v.as_ptr().add(i)) }
    }

    /// Stores sixteen lanes into `v` from `i` (the caller keeps `i + 16` within the slice).
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn store<T>(v: &mut [T], i: usize, x: __m512) {
        debug_assert!(std::mem::size_of::<T>() == 4);
        // SAFETY: the caller keeps `i + 16 ≤ v.len()`, and `T` is `f32` or
        // `MaybeUninit<f32>` (same layout).
        unsafe { _mm512_storeu_ps(v.as_mut_ptr().add(i).cast(), x) }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gelu(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let n = src.len().min(dst.len());
        let main = n - n % 16;
        for i in (0..main).step_by(16) {
            // SAFETY: `i + 16 ≤ main ≤ n` for both slices.
            unsafe {
                let x = load(src, i);
                store(dst, i, _mm512_mul_ps(x, cdf16(x)));
            }
        }
        // SAFETY: AVX2 and FMA are enabled with AVX-512F here.
        unsafe { super::avx2::gelu(&src[main..n], &mut dst[main..n]) }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gelu_of_sum(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
        let n = u.len().min(s.len()).min(value.len());
        let main = n - n % 16;
        for i in (0..main).step_by(16) {
            // SAFETY: `i + 16 ≤ main ≤ n` for the three slices.
            unsafe {
                let xv = _mm512_add_ps(load(u, i), load(s, i));
                store(u, i, xv);
                store(value, i, _mm512_mul_ps(xv, cdf16(xv)));
            }
        }
        // SAFETY: AVX2 and FMA are enabled with AVX-512F here.
        unsafe { super::avx2::gelu_of_sum(&mut u[main..n], &s[main..n], &mut value[main..n]) }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gelu_with_derivative_of_sum(
        u: &mut [f32],
        s: &[f32],
        value: &mut [MaybeUninit<f32>],
    ) {
        let n = u.len().min(s.len()).min(value.len());
        let main = n - n % 16;
        for i in (0..main).step_by(16) {
            // SAFETY: `i + 16 ≤ main ≤ n` for the three slices.
            unsafe {
                let xv = _mm512_add_ps(load(u, i), load(s, i));
                let cdf = cdf16(xv);
                store(value, i, _mm512_mul_ps(xv, cdf));
                store(u, i, derivative16(xv, cdf));
            }
        }
        // SAFETY: AVX2 and FMA are enabled with AVX-512F here.
        unsafe {
            super::avx2::gelu_with_derivative_of_sum(
                &mut u[main..n],
                &s[main..n],
                &mut value[main..n],
            )
        }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gelu_with_derivative(x: &mut [f32], value: &mut [MaybeUninit<f32>]) {
        let n = x.len().min(value.len());
        let main = n - n % 16;
        for i in (0..main).step_by(16) {
            // SAFETY: `i + 16 ≤ main ≤ n` for both slices.
            unsafe {
                let xv = load(x, i);
                let cdf = cdf16(xv);
                store(value, i, _mm512_mul_ps(xv, cdf));
                store(x, i, derivative16(xv, cdf));
            }
        }
        // SAFETY: AVX2 and FMA are enabled with AVX-512F here.
        unsafe { super::avx2::gelu_with_derivative(&mut x[main..n], &mut value[main..n]) }
    }

    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn gelu_grad(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
        let n = x.len().min(g.len()).min(dst.len());
        let main = n - n % 16;
        for i in (0..main).step_by(16) {
            // SAFETY: `i + 16 ≤ main ≤ n` for the three slices.
            unsafe {
                let xv = load(x, i);
                let d = derivative16(xv, cdf16(xv));
                store(dst, i, _mm512_mul_ps(load(g, i), d));
            }
        }
        // SAFETY: AVX2 and FMA are enabled with AVX-512F here.
        unsafe { super::avx2::gelu_grad(&x[main..n], &g[main..n], &mut dst[main..n]) }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_f32_avx2(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    avx2::gelu(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_grad_f32_avx2(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
    avx2::gelu_grad(x, g, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_with_derivative_f32_avx2(x: &mut [f32], value: &mut [MaybeUninit<f32>]) {
    avx2::gelu_with_derivative(x, value)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_of_sum_f32_avx2(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
    avx2::gelu_of_sum(u, s, value)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_with_derivative_of_sum_f32_avx2(
    u: &mut [f32],
    s: &[f32],
    value: &mut [MaybeUninit<f32>],
) {
    avx2::gelu_with_derivative_of_sum(u, s, value)
}

/// `u += s`, then `GELU(u)` into `value`: a pre-activation that is the sum of two terms,
/// added where the activation reads it (one pass instead of a copy and a pass).
pub(crate) fn gelu_of_sum_f32_slice(u: &mut [f32], s: &[f32], value: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { avx512::gelu_of_sum(u, s, value) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { gelu_of_sum_f32_avx2(u, s, value) };
        return;
    }
    gelu_of_sum_f32_kernel(u, s, value)
}

/// `u += s`, then `GELU(u)` into `value` and `u` replaced by `GELU'(u)`.
pub(crate) fn gelu_with_derivative_of_sum_f32_slice(
    u: &mut [f32],
    s: &[f32],
    value: &mut [MaybeUninit<f32>],
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { avx512::gelu_with_derivative_of_sum(u, s, value) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { gelu_with_derivative_of_sum_f32_avx2(u, s, value) };
        return;
    }
    gelu_with_derivative_of_sum_f32_kernel(u, s, value)
}

/// `GELU(x)` into `value`, and `x` replaced by `GELU'(x)`: for a backward pass that needs
/// both (one `erf` and one `exp` instead of two `erf`s and one `exp`).
pub(crate) fn gelu_with_derivative_f32_slice(x: &mut [f32], value: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { avx512::gelu_with_derivative(x, value) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { gelu_with_derivative_f32_avx2(x, value) };
        return;
    }
    gelu_with_derivative_f32_kernel(x, value)
}

/// The `f64` form of [`gelu_with_derivative_f32_slice`] (exact `erf` and `exp`).
pub(crate) fn gelu_with_derivative_f64_slice(x: &mut [f64], value: &mut [MaybeUninit<f64>]) {
    let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    for (v, x) in value.iter_mut().zip(x) {
        let cdf =
            0.5 * (1.0 + candle_core::cpu::erf::erf_f64(*x * std::f64::consts::FRAC_1_SQRT_2));
        v.write(*x * cdf);
        *x = cdf + *x * inv_sqrt_2pi * (-0.5 * *x * *x).exp();
    }
}

pub(crate) fn gelu_f32_slice(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { avx512::gelu(src, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { gelu_f32_avx2(src, dst) };
        return;
    }
    gelu_f32_kernel(src, dst)
}

pub(crate) fn gelu_grad_f32_slice(x: &[f32], g: &[f32], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { avx512::gelu_grad(x, g, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { gelu_grad_f32_avx2(x, g, dst) };
        return;
    }
    gelu_grad_f32_kernel(x, g, dst)
}

pub(crate) fn gelu_f64_slice(src: &[f64], dst: &mut [MaybeUninit<f64>]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        d.write(
            0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2)),
        );
    }
}

pub(crate) fn gelu_grad_f64_slice(x: &[f64], g: &[f64], dst: &mut [MaybeUninit<f64>]) {
    let inv_sqrt_2pi = 1.0 / (2.0 * std::f64::consts::PI).sqrt();
    for ((d, &x), &g) in dst.iter_mut().zip(x).zip(g) {
        let cdf = 0.5 * (1.0 + candle_core::cpu::erf::erf_f64(x * std::f64::consts::FRAC_1_SQRT_2));
        d.write(g * (cdf + x * inv_sqrt_2pi * (-0.5 * x * x).exp()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::elementwise_checks;
    use crate::cpu::map::{map1, map2};
    use candle_core::{DType, Device};

    /// Points covering the bulk, the tails and the clamp of the erf fit.
    fn sample_points() -> Vec<f32> {
        (0..=4000).map(|i| -10.0 + 0.005 * i as f32).collect()
    }

    #[test]
    fn f32_erf_and_exp_are_accurate() {
        for x in sample_points() {
            let exact = candle_core::cpu::erf::erf_f64(x as f64);
            let got = erf_f32(x) as f64;
            assert!((got - exact).abs() < 5e-7, "erf({x}): {got} vs {exact}");
            let y = -0.5 * x * x;
            let exact = (y as f64).exp();
            let got = exp_nonpositive_f32(y) as f64;
            let tol = 3e-7 * exact + 1e-37;
            assert!((got - exact).abs() <= tol, "exp({y}): {got} vs {exact}");
        }
    }

    #[test]
    fn f32_forward_and_gradient_match_the_exact_f64_formulas() -> Result<()> {
        let xs = sample_points();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu)?;
        let xd = x.to_dtype(DType::F64)?;
        let y = gelu(&x)?.to_dtype(DType::F64)?;
        let y_exact = gelu(&xd)?;
        let err = (y - &y_exact)?.abs()?.max(0)?.to_scalar::<f64>()?;
        assert!(err < 2e-6, "f32 GELU max abs error {err}");

        let g_exact = xd.apply_op2_no_bwd(&xd.ones_like()?, &GeluGradOp)?;
        let g = x
            .apply_op2_no_bwd(&x.ones_like()?, &GeluGradOp)?
            .to_dtype(DType::F64)?;
        let err = (g - &g_exact)?.abs()?.max(0)?.to_scalar::<f64>()?;
        assert!(err < 1e-6, "f32 GELU' max abs error {err}");
        Ok(())
    }

    #[test]
    fn f64_is_the_exact_erf_form() -> Result<()> {
        let xs: Vec<f64> = (0..200).map(|i| -5.0 + 0.05 * i as f64).collect();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu)?;
        let got = gelu(&x)?.to_vec1::<f64>()?;
        let reference = x.gelu_erf()?.to_vec1::<f64>()?;
        for ((g, r), x) in got.iter().zip(&reference).zip(&xs) {
            assert!((g - r).abs() < 1e-14, "GELU({x}): {g} vs candle {r}");
        }
        Ok(())
    }

    #[test]
    fn value_and_derivative_together_match_the_separate_kernels() {
        // The backward's fused kernel against the forward and gradient kernels (which the
        // test above holds to the exact formulas): f32 dispatch, portable f32, and f64.
        let xs = sample_points();
        let value = map1(&xs, gelu_f32_slice);
        let slope = map2(&xs, &vec![1.0; xs.len()], gelu_grad_f32_slice);
        type Kernel = fn(&mut [f32], &mut [MaybeUninit<f32>]);
        let kernels: [Kernel; 2] = [gelu_with_derivative_f32_slice, |x, v| {
            gelu_with_derivative_f32_kernel(x, v)
        }];
        for kernel in kernels {
            let mut d = xs.clone();
            let mut v = vec![MaybeUninit::uninit(); xs.len()];
            kernel(&mut d, &mut v);
            // SAFETY: the kernel wrote every element.
            let v: Vec<f32> = v.into_iter().map(|e| unsafe { e.assume_init() }).collect();
            for i in 0..xs.len() {
                let (x, tol) = (xs[i], 1e-6 * value[i].abs().max(1.0));
                assert!(
                    (v[i] - value[i]).abs() <= tol,
                    "GELU({x}): {} vs {}",
                    v[i],
                    value[i]
                );
                assert!(
                    (d[i] - slope[i]).abs() <= 1e-6,
                    "GELU'({x}): {} vs {}",
                    d[i],
                    slope[i]
                );
            }
        }
        let xd: Vec<f64> = xs.iter().map(|&x| x as f64).collect();
        let mut d = xd.clone();
        let mut v = vec![MaybeUninit::uninit(); xd.len()];
        gelu_with_derivative_f64_slice(&mut d, &mut v);
        // SAFETY: the kernel wrote every element.
        let v: Vec<f64> = v.into_iter().map(|e| unsafe { e.assume_init() }).collect();
        let value = map1(&xd, gelu_f64_slice);
        let slope = map2(&xd, &vec![1.0; xd.len()], gelu_grad_f64_slice);
        assert_eq!(v, value, "f64 values");
        assert_eq!(d, slope, "f64 derivatives");
    }

    #[test]
    fn sums_are_added_before_the_activation() {
        // `u + s` through the fused kernels equals the plain kernels on the sum (to the
        // SIMD and portable kernels' difference), and `u` ends up holding the sum.
        let xs = sample_points();
        let s: Vec<f32> = xs.iter().map(|x| 0.3 * x.sin()).collect();
        let u: Vec<f32> = xs.iter().zip(&s).map(|(x, s)| x - s).collect();
        let sum: Vec<f32> = u.iter().zip(&s).map(|(u, s)| u + s).collect();
        let value = map1(&sum, gelu_f32_slice);
        let mut slope = sum.clone();
        let mut v = vec![MaybeUninit::uninit(); sum.len()];
        gelu_with_derivative_f32_slice(&mut slope, &mut v);
        type Kernel = fn(&mut [f32], &[f32], &mut [MaybeUninit<f32>]);
        let plain: [Kernel; 2] = [gelu_of_sum_f32_slice, |u, s, v| {
            gelu_of_sum_f32_kernel(u, s, v)
        }];
        let derived: [Kernel; 2] = [gelu_with_derivative_of_sum_f32_slice, |u, s, v| {
            gelu_with_derivative_of_sum_f32_kernel(u, s, v)
        }];
        let assume = |v: Vec<MaybeUninit<f32>>| -> Vec<f32> {
            // SAFETY: the kernels wrote every element.
            v.into_iter().map(|e| unsafe { e.assume_init() }).collect()
        };
        for (i, kernel) in plain.into_iter().enumerate() {
            let (mut uu, mut v) = (u.clone(), vec![MaybeUninit::uninit(); u.len()]);
            kernel(&mut uu, &s, &mut v);
            let v = assume(v);
            assert_eq!(uu, sum, "kernel {i}: u holds the sum");
            for (p, q) in v.iter().zip(&value) {
                assert!(
                    (p - q).abs() <= 1e-6 * q.abs().max(1.0),
                    "kernel {i}: {p} vs {q}"
                );
            }
        }
        for (i, kernel) in derived.into_iter().enumerate() {
            let (mut uu, mut v) = (u.clone(), vec![MaybeUninit::uninit(); u.len()]);
            kernel(&mut uu, &s, &mut v);
            let v = assume(v);
            for j in 0..u.len() {
                assert!(
                    (v[j] - value[j]).abs() <= 1e-6 * value[j].abs().max(1.0),
                    "kernel {i}"
                );
                assert!(
                    (uu[j] - slope[j]).abs() <= 1e-6,
                    "kernel {i}: {} vs {}",
                    uu[j],
                    slope[j]
                );
            }
        }
    }

    #[test]
    fn simd_and_portable_kernels_agree() {
        let xs = sample_points();
        let a: Vec<f32> = map1(&xs, gelu_f32_slice);
        let b = map1(&xs, gelu_f32_kernel);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{p} vs {q}");
        }
        let a: Vec<f32> = map2(&xs, &xs, gelu_grad_f32_slice);
        let b = map2(&xs, &xs, gelu_grad_f32_kernel);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 1e-6 * p.abs().max(1.0), "{p} vs {q}");
        }
    }

    /// The eight- and sixteen-lane kernels, each called directly where the CPU has it,
    /// against the portable ones (value, gradient, and both at once).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn avx2_and_avx512_kernels_each_agree_with_the_portable_ones() {
        let xs = sample_points();
        assert!(
            xs.len() > 40,
            "the lanes' main loops and their tails both run"
        );
        let close = |a: &[f32], b: &[f32], what: &str| {
            for (p, q) in a.iter().zip(b) {
                assert!(
                    (p - q).abs() <= 1e-6 * p.abs().max(1.0),
                    "{what}: {p} vs {q}"
                );
            }
        };
        let want_value = map1(&xs, gelu_f32_kernel);
        let want_grad = map2(&xs, &xs, gelu_grad_f32_kernel);
        type Kernels = (
            unsafe fn(&[f32], &mut [MaybeUninit<f32>]),
            unsafe fn(&[f32], &[f32], &mut [MaybeUninit<f32>]),
            unsafe fn(&mut [f32], &mut [MaybeUninit<f32>]),
        );
        let mut widths: Vec<(&str, Kernels)> = Vec::new();
        if has_avx2_fma() {
            widths.push((
                "avx2",
                (avx2::gelu, avx2::gelu_grad, avx2::gelu_with_derivative),
            ));
        }
        if has_avx512() {
            widths.push((
                "avx512",
                (
                    avx512::gelu,
                    avx512::gelu_grad,
                    avx512::gelu_with_derivative,
                ),
            ));
        }
        for (name, (value, grad, both)) in widths {
            // SAFETY: each width is pushed only where the CPU has its features.
            close(&map1(&xs, |x, d| unsafe { value(x, d) }), &want_value, name);
            close(
                &map2(&xs, &xs, |x, g, d| unsafe { grad(x, g, d) }),
                &want_grad,
                name,
            );
            let mut deriv = xs.clone();
            let mut v = vec![MaybeUninit::new(0.0f32); xs.len()];
            // SAFETY: as above.
            unsafe { both(&mut deriv, &mut v) };
            let v: Vec<f32> = v.iter().map(|v| unsafe { v.assume_init() }).collect();
            close(&v, &want_value, name);
            let ones = vec![1.0f32; xs.len()];
            close(&deriv, &map2(&xs, &ones, gelu_grad_f32_kernel), name);
        }
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        elementwise_checks::gradients_match_finite_differences(gelu)
    }

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        elementwise_checks::result_does_not_depend_on_the_thread_count(gelu, 4.0)
    }
}
