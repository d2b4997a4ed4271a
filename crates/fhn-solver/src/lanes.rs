//! `P` f64 lanes as one value, so that lane-parallel loops are written once, portably, and
//! compile to whole vector registers.
//!
//! Why not a plain `for l in 0..P` around a long loop body: LLVM then keeps the body scalar
//! (it does not unroll a large body by 8) and spills the carried arrays to the stack, which
//! puts a store–load on every dependent chain. Each operation here is a tiny fixed-length
//! loop that is always unrolled and packed into `P/4` AVX2 registers (or `P/2` SSE2 ones
//! on the portable path), and values stay in registers.

use std::ops::{Add, Mul, Neg, Sub};

/// `P` f64 lanes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Lanes<const P: usize>(pub [f64; P]);

impl<const P: usize> Lanes<P> {
    /// Every lane `x`.
    #[inline(always)]
    pub fn splat(x: f64) -> Self {
        Self([x; P])
    }

    /// The first `P` values of `s` (panics if shorter: callers pass whole rows).
    #[inline(always)]
    pub fn load(s: &[f64]) -> Self {
        let s = &s[..P];
        Self(std::array::from_fn(|l| s[l]))
    }

    /// Writes the lanes to the first `P` values of `s`.
    #[inline(always)]
    pub fn store(self, s: &mut [f64]) {
        s[..P].copy_from_slice(&self.0);
    }

    /// `self·b + c`, fused into one rounding when `FMA` is set (only set where the CPU has
    /// FMA: otherwise `mul_add` is a slow library call).
    #[inline(always)]
    pub fn madd<const FMA: bool>(self, b: Self, c: Self) -> Self {
        Self(std::array::from_fn(|l| {
            if FMA {
                self.0[l].mul_add(b.0[l], c.0[l])
            } else {
                self.0[l] * b.0[l] + c.0[l]
            }
        }))
    }
}

macro_rules! lanewise {
    ($tr:ident, $f:ident, $op:tt) => {
        impl<const P: usize> $tr for Lanes<P> {
            type Output = Self;
            #[inline(always)]
            fn $f(self, o: Self) -> Self {
                Self(std::array::from_fn(|l| self.0[l] $op o.0[l]))
            }
        }
    };
}
lanewise!(Add, add, +);
lanewise!(Sub, sub, -);
lanewise!(Mul, mul, *);

impl<const P: usize> Neg for Lanes<P> {
    type Output = Self;
    #[inline(always)]
    fn neg(self) -> Self {
        Self(self.0.map(|x| -x))
    }
}

/// A short vector of f64 lanes with the operations the 1D SBDF2 kernels need: written
/// once against this trait, compiled for [`Lanes`] (portable) and the AVX2 types.
pub(crate) trait Vector:
    Copy + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// Number of lanes.
    const WIDTH: usize;
    /// Every lane `x`.
    fn splat(x: f64) -> Self;
    /// The first `WIDTH` values of `s`.
    fn load(s: &[f64]) -> Self;
    /// Writes the lanes to the first `WIDTH` values of `s`.
    fn store(self, s: &mut [f64]);
    /// `self·b + c` (one rounding where fused).
    fn madd(self, b: Self, c: Self) -> Self;
    /// `c − self·b` (one rounding where fused).
    fn nmadd(self, b: Self, c: Self) -> Self;
}

impl<const P: usize> Vector for Lanes<P> {
    const WIDTH: usize = P;
    #[inline(always)]
    fn splat(x: f64) -> Self {
        Lanes::splat(x)
    }
    #[inline(always)]
    fn load(s: &[f64]) -> Self {
        Lanes::load(s)
    }
    #[inline(always)]
    fn store(self, s: &mut [f64]) {
        Lanes::store(self, s)
    }
    #[inline(always)]
    fn madd(self, b: Self, c: Self) -> Self {
        Lanes::madd::<false>(self, b, c)
    }
    #[inline(always)]
    fn nmadd(self, b: Self, c: Self) -> Self {
        c - self * b
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use avx2::{Avx2x4, Avx2x8};

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::Vector;
    use std::arch::x86_64::*;
    use std::ops::{Add, Mul, Sub};

    /// Four lanes in one AVX2 register, with fused multiply–adds.
    ///
    /// Safety contract (also for [`Avx2x8`]): its operations execute AVX2/FMA
    /// instructions, so values of this type may only be used inside functions compiled
    /// with `#[target_feature(enable = "avx2,fma")]` that are reached after run-time
    /// detection (the kernels in `sbdf2_line.rs`). It is private to the crate for that
    /// reason.
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2x4(__m256d);

    /// Eight lanes in two AVX2 registers, with fused multiply–adds (see [`Avx2x4`]).
    #[derive(Clone, Copy)]
    pub(crate) struct Avx2x8(__m256d, __m256d);

    // SAFETY (every `unsafe` block below): the intrinsics need AVX2 and FMA, which the
    // types' contract guarantees; loads and stores go through slices of at least WIDTH
    // values (checked by the slice index).
    impl Vector for Avx2x4 {
        const WIDTH: usize = 4;
        #[inline(always)]
        fn splat(x: f64) -> Self {
            unsafe { Self(_mm256_set1_pd(x)) }
        }
        #[inline(always)]
        fn load(s: &[f64]) -> Self {
            let s = &s[..4];
            unsafe { Self(_mm256_loadu_pd(s.as_ptr())) }
        }
        #[inline(always)]
        fn store(self, s: &mut [f64]) {
            let s = &mut s[..4];
            unsafe { _mm256_storeu_pd(s.as_mut_ptr(), self.0) }
        }
        #[inline(always)]
        fn madd(self, b: Self, c: Self) -> Self {
            unsafe { Self(_mm256_fmadd_pd(self.0, b.0, c.0)) }
        }
        #[inline(always)]
        fn nmadd(self, b: Self, c: Self) -> Self {
            unsafe { Self(_mm256_fnmadd_pd(self.0, b.0, c.0)) }
        }
    }

    impl Vector for Avx2x8 {
        const WIDTH: usize = 8;
        #[inline(always)]
        fn splat(x: f64) -> Self {
            unsafe { Self(_mm256_set1_pd(x), _mm256_set1_pd(x)) }
        }
        #[inline(always)]
        fn load(s: &[f64]) -> Self {
            let s = &s[..8];
            unsafe {
                Self(
                    _mm256_loadu_pd(s.as_ptr()),
                    _mm256_loadu_pd(s.as_ptr().add(4)),
                )
            }
        }
        #[inline(always)]
        fn store(self, s: &mut [f64]) {
            let s = &mut s[..8];
            unsafe {
                _mm256_storeu_pd(s.as_mut_ptr(), self.0);
                _mm256_storeu_pd(s.as_mut_ptr().add(4), self.1);
            }
        }
        #[inline(always)]
        fn madd(self, b: Self, c: Self) -> Self {
            unsafe {
                Self(
                    _mm256_fmadd_pd(self.0, b.0, c.0),
                    _mm256_fmadd_pd(self.1, b.1, c.1),
                )
            }
        }
        #[inline(always)]
        fn nmadd(self, b: Self, c: Self) -> Self {
            unsafe {
                Self(
                    _mm256_fnmadd_pd(self.0, b.0, c.0),
                    _mm256_fnmadd_pd(self.1, b.1, c.1),
                )
            }
        }
    }

    macro_rules! op {
        ($tr:ident, $f:ident, $intr:ident) => {
            impl $tr for Avx2x4 {
                type Output = Self;
                #[inline(always)]
                fn $f(self, o: Self) -> Self {
                    unsafe { Self($intr(self.0, o.0)) }
                }
            }
            impl $tr for Avx2x8 {
                type Output = Self;
                #[inline(always)]
                fn $f(self, o: Self) -> Self {
                    unsafe { Self($intr(self.0, o.0), $intr(self.1, o.1)) }
                }
            }
        };
    }
    op!(Add, add, _mm256_add_pd);
    op!(Sub, sub, _mm256_sub_pd);
    op!(Mul, mul, _mm256_mul_pd);
}
