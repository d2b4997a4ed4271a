//! `tanh` as one fused, vectorised CPU kernel, forward and backward.
//!
//! candle's `tanh` calls libm's scalar `tanhf` element by element; in a DeepONet trunk
//! (three tanh layers of 256 units on 10,000 query points) that was half of a forward.
//! Here the forward is one vectorised pass (AVX2/FMA when the CPU has them, chosen at run
//! time) split over rayon's threads, and the backward is one pass `g·(1 − y²)` from the
//! saved output, as candle's own rule. Each element is computed independently, so results
//! do not depend on the thread count.
//!
//! Accuracy in `f32`: `tanh|x| = −m/(2 + m)` with `m = expm1(−2|x|)`, the sign restored
//! after; `expm1` is a Cody–Waite reduction `y = k·ln2 + r`, `|r| ≤ ln2/2`, with
//! `expm1(y) = 2ᵏ·expm1(r) + (2ᵏ − 1)` and `expm1(r)` a degree-8 Taylor polynomial, so
//! small arguments keep their relative accuracy (no `1 − e` cancellation). Arguments are
//! clamped to `|x| ≤ 9`, where `tanh` is 1 in `f32`. Measured against `f64`: a few ulps
//! (the tests bound it). `f64` uses std's `tanh`; other dtypes and devices candle's.

use crate::cpu::map::{binary_storage, unary_storage};
#[cfg(target_arch = "x86_64")]
use crate::cpu::map::{has_avx2_fma, has_avx512};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;

/// `tanh(x)`, fused on the CPU for `f32` and `f64` (where [`crate::ops::fused_cpu`] says
/// so); candle's `tanh` elsewhere.
/// Differentiable through candle's autograd.
pub fn tanh(x: &Tensor) -> Result<Tensor> {
    if crate::ops::fused_cpu(&[x]) {
        x.contiguous()?.apply_op1(TanhOp)
    } else {
        x.tanh()
    }
}

/// The forward op: `x ↦ tanh(x)`.
#[derive(Debug, Clone, Copy)]
struct TanhOp;

/// The backward op: `(y, g) ↦ g·(1 − y²)` with `y = tanh(x)`.
#[derive(Debug, Clone, Copy)]
struct TanhGradOp;

impl CustomOp1 for TanhOp {
    fn name(&self) -> &'static str {
        "tanh-fused"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        unary_storage(self.name(), s, l, tanh_f32_slice, |src, dst| {
            for (d, &x) in dst.iter_mut().zip(src) {
                d.write(x.tanh());
            }
        })
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let g = grad_res.contiguous()?;
        Ok(Some(res.contiguous()?.apply_op2_no_bwd(&g, &TanhGradOp)?))
    }
}

impl CustomOp2 for TanhGradOp {
    fn name(&self) -> &'static str {
        "tanh-fused-grad"
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
            tanh_grad_f32,
            tanh_grad_f64,
        )
    }
}

/// `expm1(y)` in `f32` for `−18 ≤ y ≤ 0` (the range `tanh` needs).
#[inline(always)]
fn expm1_nonpositive_f32(y: f32) -> f32 {
    // 1.5·2²³: adding and subtracting it rounds to the nearest integer, and the integer
    // sits in the low mantissa bits of the sum.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let shifted = y * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let k_int = shifted.to_bits() as i32 - ROUND.to_bits() as i32;
    let r = y - k * LN2_HI - k * LN2_LO;
    // expm1(r) = r + r²/2! + … + r⁸/8! on |r| ≤ ln2/2 (remainder below 1e-9 relative).
    let mut p = 1.0 / 40_320.0;
    for c in [
        1.0 / 5040.0,
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
    ] {
        p = p * r + c;
    }
    let em1_r = r + r * r * p;
    let two_k = f32::from_bits(((k_int + 127) << 23) as u32);
    two_k * em1_r + (two_k - 1.0)
}

/// `tanh` of one `f32` (see the module docs).
#[inline(always)]
fn tanh_f32(x: f32) -> f32 {
    let a = x.abs().min(9.0);
    let m = expm1_nonpositive_f32(-2.0 * a);
    (-m / (2.0 + m)).copysign(x)
}

#[inline(always)]
fn tanh_f32_kernel(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        d.write(tanh_f32(x));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_f32_avx2(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    tanh_f32_kernel(src, dst)
}

/// The same loop compiled for sixteen lanes (no fused multiply-adds are formed without
/// being written, so the bits equal the eight-lane and portable versions').
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tanh_f32_avx512(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    tanh_f32_kernel(src, dst)
}

fn tanh_f32_slice(src: &[f32], dst: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { tanh_f32_avx512(src, dst) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { tanh_f32_avx2(src, dst) };
        return;
    }
    tanh_f32_kernel(src, dst)
}

#[inline(always)]
fn tanh_f32_in_place_kernel(v: &mut [f32]) {
    for x in v {
        *x = tanh_f32(*x);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_f32_in_place_avx2(v: &mut [f32]) {
    tanh_f32_in_place_kernel(v)
}

/// The same loop compiled for sixteen lanes (no fused multiply-adds are formed without
/// being written, so the bits equal the eight-lane and portable versions').
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tanh_f32_in_place_avx512(v: &mut [f32]) {
    tanh_f32_in_place_kernel(v)
}

#[inline(always)]
fn tanh_grad_f32_kernel(y: &[f32], g: &[f32], d: &mut [MaybeUninit<f32>]) {
    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
        d.write(g * (1.0 - y * y));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tanh_grad_f32_avx2(y: &[f32], g: &[f32], d: &mut [MaybeUninit<f32>]) {
    tanh_grad_f32_kernel(y, g, d)
}

/// The same loop compiled for sixteen lanes (a multiplication, a subtraction and a
/// multiplication, never fused, so every width gives the portable bits).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tanh_grad_f32_avx512(y: &[f32], g: &[f32], d: &mut [MaybeUninit<f32>]) {
    tanh_grad_f32_kernel(y, g, d)
}

/// `d = g·(1 − y²)` on `f32` values (the gradient through `tanh` from its output `y`),
/// every element of `d` written; on the widest vectors the CPU has (the portable build
/// alone uses four lanes, a quarter of an AVX-512 register).
pub(crate) fn tanh_grad_f32(y: &[f32], g: &[f32], d: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { tanh_grad_f32_avx512(y, g, d) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { tanh_grad_f32_avx2(y, g, d) };
        return;
    }
    tanh_grad_f32_kernel(y, g, d)
}

/// `d = g·(1 − y²)` on `f64` values, every element of `d` written.
pub(crate) fn tanh_grad_f64(y: &[f64], g: &[f64], d: &mut [MaybeUninit<f64>]) {
    for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
        d.write(g * (1.0 - y * y));
    }
}

/// `tanh` in place on `f32` values, the same function as the fused op's forward (for ops
/// that apply it to a buffer they own, such as [`crate::ops::dense`]).
pub(crate) fn tanh_f32_in_place(v: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx512() {
        // SAFETY: the CPU supports AVX-512F, AVX2 and FMA (checked just above).
        unsafe { tanh_f32_in_place_avx512(v) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        unsafe { tanh_f32_in_place_avx2(v) };
        return;
    }
    tanh_f32_in_place_kernel(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::elementwise_checks;
    use crate::cpu::map::map1;
    use candle_core::{DType, Device};

    /// The bulk, tiny arguments (relative accuracy), the clamp and beyond, both signs.
    fn sample_points() -> Vec<f32> {
        let mut xs: Vec<f32> = (0..=4000).map(|i| -12.0 + 0.006 * i as f32).collect();
        xs.extend([
            1e-30, -1e-20, 1e-8, -3e-5, 0.0, -0.0, 8.99, 9.0, 9.01, 50.0, -1e4,
        ]);
        xs
    }

    #[test]
    fn f32_is_within_a_few_ulps_of_the_exact_value() {
        for x in sample_points() {
            let exact = (x as f64).tanh();
            let got = tanh_f32(x) as f64;
            let tol = 4.0 * f32::EPSILON as f64 * exact.abs() + 1e-45;
            assert!((got - exact).abs() <= tol, "tanh({x}): {got} vs {exact}");
        }
    }

    #[test]
    fn fused_op_matches_std_in_both_dtypes() -> Result<()> {
        let xs = sample_points();
        let x = Tensor::new(xs.as_slice(), &Device::Cpu)?;
        for (got, &x) in tanh(&x)?.to_vec1::<f32>()?.iter().zip(&xs) {
            let exact = (x as f64).tanh();
            assert!(
                (*got as f64 - exact).abs() <= 5e-7 * exact.abs() + 1e-45,
                "{x}"
            );
        }
        let xd = x.to_dtype(DType::F64)?;
        let got = tanh(&xd)?.to_vec1::<f64>()?;
        for (g, &x) in got.iter().zip(&xs) {
            assert_eq!(*g, (x as f64).tanh());
        }
        Ok(())
    }

    #[test]
    fn simd_and_portable_kernels_agree() {
        let xs = sample_points();
        let a: Vec<f32> = map1(&xs, tanh_f32_slice);
        let b = map1(&xs, tanh_f32_kernel);
        for (p, q) in a.iter().zip(&b) {
            assert!((p - q).abs() <= 2.0 * f32::EPSILON * p.abs(), "{p} vs {q}");
        }
        // The in-place build computes the same function as the out-of-place one.
        let mut c = xs.clone();
        tanh_f32_in_place(&mut c);
        assert_eq!(a, c);
    }

    /// The eight- and sixteen-lane builds, each called directly where the CPU has it, give
    /// the portable kernel's bits (the loop forms no fused multiply-add).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_width_gives_the_portable_gradient_bits() {
        let y: Vec<f32> = sample_points().iter().map(|&x| tanh_f32(x)).collect();
        let g: Vec<f32> = (0..y.len()).map(|i| ((i as f32) * 0.37).sin()).collect();
        let run = |f: &dyn Fn(&mut [MaybeUninit<f32>])| {
            let mut d = vec![MaybeUninit::new(f32::NAN); y.len()];
            f(&mut d);
            // SAFETY: every kernel writes every element.
            d.iter()
                .map(|v| unsafe { v.assume_init() }.to_bits())
                .collect::<Vec<_>>()
        };
        let portable = run(&|d| tanh_grad_f32_kernel(&y, &g, d));
        if has_avx2_fma() {
            // SAFETY: AVX2 and FMA are present (checked just above).
            assert_eq!(run(&|d| unsafe { tanh_grad_f32_avx2(&y, &g, d) }), portable);
        }
        if has_avx512() {
            // SAFETY: AVX-512F, AVX2 and FMA are present (checked just above).
            assert_eq!(
                run(&|d| unsafe { tanh_grad_f32_avx512(&y, &g, d) }),
                portable
            );
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_simd_width_gives_the_portable_bits() {
        let xs = sample_points();
        let want = map1(&xs, tanh_f32_kernel);
        type Kernel = unsafe fn(&[f32], &mut [MaybeUninit<f32>]);
        let mut builds: Vec<(&str, Kernel)> = Vec::new();
        if has_avx2_fma() {
            builds.push(("avx2", tanh_f32_avx2));
        }
        if has_avx512() {
            builds.push(("avx512", tanh_f32_avx512));
        }
        for (name, kernel) in builds {
            // SAFETY: each build is pushed only where the CPU has its features.
            let got = map1(&xs, |x, d| unsafe { kernel(x, d) });
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        elementwise_checks::gradients_match_finite_differences(tanh)
    }

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        elementwise_checks::result_does_not_depend_on_the_thread_count(tanh, 6.0)
    }
}
