//! Products `A·Bᵀ` of two matrices stored along their common dimension, as blocked dot
//! products.
//!
//! The weight gradients of the point-wise ops are such products: `∂W = ∂Y·Xᵀ` with `∂Y`
//! `[out, len]` and `X` `[in, len]`, both contiguous along the tile's `len` points. The
//! `gemm` crate first copies (packs) the left operand, as large as the product's inputs,
//! and for these small outputs (`32 × 32` over 512 points) the copy cost half as much as the
//! arithmetic. Both operands are already laid out the way a dot product reads them, so
//! here a block of `4 × 3` outputs keeps twelve vector accumulators running along `k`,
//! reading four rows of `A` and three of `B` in step: no copy, two multiply-adds per load.
//! The last `k mod 8` columns go through masked loads, and the block's accumulators are
//! reduced eight at a time by one tree of horizontal adds. The grid-to-spectrum transform's
//! last-axis product (`plane · Rx`, 100 × 18 over 100 points) is another such product.
//! Each output's sum has a fixed order (eight lanes, then a fixed tree), so results do not
//! depend on the thread count.
//!
//! Measured single-threaded (f32, this project's 2-core Zen 4 VM): `32 × 32` over 512 points
//! 106 GFLOP/s (the `gemm` crate: 46, packing its left operand on every call),
//! `100 × 18` over 100 points 77 GFLOP/s (the `gemm` crate: 56).
//!
//! Only `f32` with AVX2 and FMA has a kernel; [`crate::cpu::gemm_view::gemm`] uses it for
//! products of this layout whose right operand stays in cache, and for matrix-vector
//! products of this layout (one row on either side) whatever their size (chosen by shape
//! alone, so the order of every sum is the same on one thread and on many), and the `gemm`
//! crate for everything else. On CPUs where the `gemm` crate's own kernel is faster (Intel
//! with AVX-512F, measured in [`kernel_wins_here`]) the kernel takes only the
//! matrix-vector products ([`f32_gemv_kernel`]); the choice is made once per process (so
//! it too is the same on one thread and on many), and the environment variable
//! `NO_LAYERS_ROW_DOT=on`/`off` overrides it.

use rayon::prelude::*;

/// A row-major operand: `rows` rows of at least `k` elements, `stride` apart.
#[derive(Debug)]
pub(crate) struct Rows<T> {
    /// First element of the first row.
    pub(crate) ptr: *const T,
    /// Number of rows.
    pub(crate) rows: usize,
    /// Distance between consecutive rows, in elements.
    pub(crate) stride: usize,
}

/// The destination: `rows(A) × rows(B)` elements, rows `stride` apart.
#[derive(Debug)]
pub(crate) struct Out<T> {
    /// First element.
    pub(crate) ptr: *mut T,
    /// Distance between consecutive rows, in elements.
    pub(crate) stride: usize,
}

// Pointers copy whatever `T` is (a derive would ask `T: Copy`).
impl<T> Clone for Rows<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Rows<T> {}
impl<T> Clone for Out<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Out<T> {}

/// `dst = A·Bᵀ`, or `dst += A·Bᵀ` when `accumulate`, over `k` columns.
///
/// # Safety
/// Every row of `a` and `b` must hold `k` readable elements, `dst` must address
/// `a.rows × b.rows` writable elements (readable too when `accumulate`) that overlap
/// neither operand, and the CPU must support AVX2 and FMA.
pub(crate) type Kernel<T> = unsafe fn(Out<T>, Rows<T>, Rows<T>, usize, bool);

/// Runs `kernel` on `threads` rayon threads (1: on the calling thread), each on a band of
/// the output, so every output is summed the same way whatever the thread count: bands of
/// rows of `A` (a multiple of the kernel's block height), or, when `A` is at most one block
/// (a matrix-vector product, or a few), bands of rows of `B`, that is of output columns.
///
/// # Safety
/// As for [`Kernel`].
pub(crate) unsafe fn run<T: Send + Sync>(
    kernel: Kernel<T>,
    views: (Out<T>, Rows<T>, Rows<T>),
    k: usize,
    accumulate: bool,
    threads: usize,
) {
    let split = Split::for_views(&views);
    let (rows, band) = split.bands(&views, threads.max(1));
    if threads <= 1 || band >= rows {
        let (dst, a, b) = views;
        // SAFETY: the caller's guarantees.
        unsafe { kernel(dst, a, b, k, accumulate) };
        return;
    }
    let shared = Shared(views);
    (0..rows.div_ceil(band)).into_par_iter().for_each(|i| {
        let first = i * band;
        // SAFETY: bands are disjoint row ranges of the split operand and of the matching
        // part of `dst`, inside the ranges the caller vouched for; the other operand is
        // only read.
        unsafe {
            let (dst, a, b) = split.band(shared.get(), first, band.min(rows - first));
            kernel(dst, a, b, k, accumulate)
        }
    });
}

/// Rows of `B` per task when a product with one block of `A` rows is split by columns: a
/// few hundred thousand multiply-adds per task at the matrix-vector shapes this serves.
const COLUMN_BAND_MIN: usize = 32;

/// Which operand's rows [`run`] splits over the threads.
#[derive(Clone, Copy, Debug)]
enum Split {
    /// Rows of `A`, that is rows of the output.
    RowsOfA,
    /// Rows of `B`, that is columns of the output; splitting them changes no sum (each
    /// output is one block's dot product whatever band it falls in).
    RowsOfB,
}

impl Split {
    /// Rows of `A` while there is more than one kernel block of them, else rows of `B`.
    fn for_views<T>((_, a, _): &(Out<T>, Rows<T>, Rows<T>)) -> Self {
        if a.rows <= BLOCK_ROWS {
            Split::RowsOfB
        } else {
            Split::RowsOfA
        }
    }

    /// The split operand's row count and the rows per band for `threads` threads.
    fn bands<T>(self, (_, a, b): &(Out<T>, Rows<T>, Rows<T>), threads: usize) -> (usize, usize) {
        match self {
            Split::RowsOfA => (
                a.rows,
                a.rows.div_ceil(threads).next_multiple_of(BLOCK_ROWS),
            ),
            Split::RowsOfB => (b.rows, b.rows.div_ceil(threads).max(COLUMN_BAND_MIN)),
        }
    }

    /// The views of the band of `rows` split rows starting at `first`.
    ///
    /// # Safety
    /// `first + rows` must not exceed the split operand's rows.
    unsafe fn band<T>(
        self,
        (dst, a, b): (Out<T>, Rows<T>, Rows<T>),
        first: usize,
        rows: usize,
    ) -> (Out<T>, Rows<T>, Rows<T>) {
        // SAFETY: the band lies inside the operand and the destination (caller's bound).
        unsafe {
            match self {
                Split::RowsOfA => (dst.offset(first * dst.stride), a.band(first, rows), b),
                Split::RowsOfB => (dst.offset(first), a, b.band(first, rows)),
            }
        }
    }
}

impl<T> Rows<T> {
    /// Rows `first .. first + rows`.
    ///
    /// # Safety
    /// They must lie inside this operand.
    unsafe fn band(self, first: usize, rows: usize) -> Self {
        Rows {
            // SAFETY: inside the operand (caller's bound).
            ptr: unsafe { self.ptr.add(first * self.stride) },
            rows,
            stride: self.stride,
        }
    }
}

impl<T> Out<T> {
    /// The destination from element `elements` on (same row stride).
    ///
    /// # Safety
    /// The offset must lie inside the destination.
    unsafe fn offset(self, elements: usize) -> Self {
        Out {
            // SAFETY: inside the destination (caller's bound).
            ptr: unsafe { self.ptr.add(elements) },
            stride: self.stride,
        }
    }
}

/// The operands, shared with the rayon tasks (each writes its own band of rows).
struct Shared<T>((Out<T>, Rows<T>, Rows<T>));

// SAFETY: the tasks only read the operands and write disjoint rows of the destination
// (see [`run`]); `T: Send + Sync` values may be accessed from several threads that way.
unsafe impl<T: Send + Sync> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The three views (a method, so closures capture the `Sync` wrapper, not its fields).
    fn get(&self) -> (Out<T>, Rows<T>, Rows<T>) {
        self.0
    }
}

/// Rows of `A` per kernel block (bands of rows are multiples of it).
const BLOCK_ROWS: usize = 4;

/// The `f32` kernel, when this CPU can run it and [`kernel_preferred`] says it should.
pub(crate) fn f32_kernel() -> Option<Kernel<f32>> {
    if kernel_preferred() {
        f32_kernel_available()
    } else {
        None
    }
}

/// The `f32` kernel, when this CPU can run it (preferred or not: the tests check it
/// wherever it runs).
pub(crate) fn f32_kernel_available() -> Option<Kernel<f32>> {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::map::has_avx2_fma() {
        return Some(avx2::row_dot);
    }
    None
}

/// Whether the products this kernel can do go to it rather than to the `gemm` crate on
/// this CPU (decided once per process).
///
/// The environment variable `NO_LAYERS_ROW_DOT` overrides the choice: `1`/`on` for the
/// kernel, `0`/`off` for the `gemm` crate (to measure one against the other with the same
/// binary, as `examples/dense_timing.rs` and `examples/conv_timing.rs` do). Otherwise
/// [`kernel_wins_here`] decides.
///
/// The answer is kept: [`kernel_wins_here`] reads the vendor with `CPUID`, which a virtual
/// machine's hypervisor intercepts (a VM exit, microseconds), and [`crate::cpu::gemm_view`]
/// asks on every product of the shape this kernel can take. Asked afresh each time, it was
/// 16 % of an FNO training step on the Intel Xeon VM (`perf`: all of it on the instruction
/// after `cpuid`), whose channel-MLP tiles make thousands of such products per step.
pub(crate) fn kernel_preferred() -> bool {
    static PREFERRED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PREFERRED.get_or_init(|| forced().unwrap_or_else(kernel_wins_here))
}

/// `NO_LAYERS_ROW_DOT`, read once per process: `Some(true)` for `1`/`on`, `Some(false)` for
/// `0`/`off`, `None` when unset or anything else.
fn forced() -> Option<bool> {
    static FORCED: std::sync::OnceLock<Option<bool>> = std::sync::OnceLock::new();
    *FORCED.get_or_init(|| match std::env::var("NO_LAYERS_ROW_DOT").as_deref() {
        Ok("1" | "on") => Some(true),
        Ok("0" | "off") => Some(false),
        _ => None,
    })
}

/// The `f32` kernel for matrix-vector products (one row of `A` or of `B`: a DeepONet branch
/// at batch 1), on every CPU that runs it unless `NO_LAYERS_ROW_DOT=off`.
///
/// There the `gemm` crate's AVX-512 microkernel has no advantage to show (each element of
/// the large operand takes part in one multiply-add) and it runs such a product on one
/// thread. On the Intel Xeon with AVX-512 where [`kernel_wins_here`] chose the library,
/// the DeepONets' first branch layer at batch 1 (`1 × 10,000 → 256`, `dense_timing`, fastest
/// of 30) takes 0.18–0.20 ms here on two threads against 0.36–0.38 ms (0.32–0.34 against
/// 0.34–0.37 ms on one).
pub(crate) fn f32_gemv_kernel() -> Option<Kernel<f32>> {
    if forced() == Some(false) {
        None
    } else {
        f32_kernel_available()
    }
}

/// The measured default: the kernel, except on Intel CPUs with AVX-512F.
///
/// An Intel Xeon with AVX-512 (two cores of a VM, 2026-12-05; `dense_timing`, fastest of
/// 30, one thread) ran DeepONet's trunk layer `10,000 × 256 → 256` in 14.1–18.1 ms through
/// the `gemm` crate's AVX-512 microkernel against 20.7–28.9 ms through this AVX2 kernel,
/// `10,000 × 80 → 80` in 1.1–1.6 against 2.3–3.5 ms, and the `32 × 288`-over-455 weight
/// gradient of LocalNO's 3×3 convolution (`conv_timing`, batch 32) in 120–202 against
/// 240–312 ms. Those cores do 512-bit multiply-adds at full rate, which doubles the
/// library's arithmetic and outweighs its packing. On AMD Zen 4, whose AVX-512 runs on
/// 256-bit units, the kernel measured 106 GFLOP/s against the library's 46 (see the module
/// documentation), and without AVX-512 the library has no wider kernel: the kernel stays
/// there.
fn kernel_wins_here() -> bool {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx512f") && cpu_vendor_is_intel() {
        return false;
    }
    true
}

/// Whether CPUID's vendor string is `GenuineIntel`.
#[cfg(target_arch = "x86_64")]
fn cpu_vendor_is_intel() -> bool {
    // SAFETY: CPUID leaf 0 exists on every x86-64 CPU (older toolchains mark the intrinsic
    // unsafe, newer ones safe).
    #[allow(unused_unsafe)]
    let id = unsafe { std::arch::x86_64::__cpuid(0) };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&id.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&id.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&id.ecx.to_le_bytes());
    &vendor == b"GenuineIntel"
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Out, Rows};
    use std::arch::x86_64::*;

    /// Rows of `A` per block.
    const MR: usize = super::BLOCK_ROWS;
    /// Rows of `B` per block.
    const NR: usize = 3;

    /// The whole product, block by block (edge blocks are smaller).
    ///
    /// # Safety
    /// See [`super::Kernel`].
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn row_dot(dst: Out<f32>, a: Rows<f32>, b: Rows<f32>, k: usize, acc: bool) {
        let mut i = 0;
        while i < a.rows {
            let mr = (a.rows - i).min(MR);
            let mut j = 0;
            while j < b.rows {
                let nr = (b.rows - j).min(NR);
                let a_i = Rows {
                    ptr: a.ptr.add(i * a.stride),
                    ..a
                };
                let b_j = Rows {
                    ptr: b.ptr.add(j * b.stride),
                    ..b
                };
                let d = Out {
                    ptr: dst.ptr.add(i * dst.stride + j),
                    ..dst
                };
                match mr {
                    4 => block_rows::<4>(d, a_i, b_j, nr, k, acc),
                    3 => block_rows::<3>(d, a_i, b_j, nr, k, acc),
                    2 => block_rows::<2>(d, a_i, b_j, nr, k, acc),
                    _ => block_rows::<1>(d, a_i, b_j, nr, k, acc),
                }
                j += nr;
            }
            i += mr;
        }
    }

    /// Dispatches on the block's number of `B` rows.
    #[inline(always)]
    unsafe fn block_rows<const M: usize>(
        d: Out<f32>,
        a: Rows<f32>,
        b: Rows<f32>,
        nr: usize,
        k: usize,
        acc: bool,
    ) {
        match nr {
            3 => block::<M, 3>(d, a, b, k, acc),
            2 => block::<M, 2>(d, a, b, k, acc),
            _ => block::<M, 1>(d, a, b, k, acc),
        }
    }

    /// One `M × N` block of outputs.
    #[inline(always)]
    unsafe fn block<const M: usize, const N: usize>(
        d: Out<f32>,
        a: Rows<f32>,
        b: Rows<f32>,
        k: usize,
        accumulate: bool,
    ) {
        let mut sums = [[_mm256_setzero_ps(); N]; M];
        let k8 = k - k % 8;
        let mut p = 0;
        while p < k8 {
            step::<M, N>(&mut sums, a, b, |ptr| _mm256_loadu_ps(ptr.add(p)));
            p += 8;
        }
        if k8 < k {
            // The last `k mod 8` columns through masked loads (lanes past `k` read as 0
            // and are never touched in memory).
            let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32((k - k8) as i32), lane);
            step::<M, N>(&mut sums, a, b, |ptr| _mm256_maskload_ps(ptr.add(k8), mask));
        }
        // All accumulators reduced together, sixteen at a time (zeros pad the last group).
        let mut flat = [_mm256_setzero_ps(); 16];
        for (r, row) in sums.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                flat[r * N + j] = v;
            }
        }
        let mut totals = [0f32; 16];
        _mm256_storeu_ps(totals.as_mut_ptr(), reduce8(&flat[..8]));
        if M * N > 8 {
            _mm256_storeu_ps(totals.as_mut_ptr().add(8), reduce8(&flat[8..]));
        }
        for r in 0..M {
            for j in 0..N {
                let out = d.ptr.add(r * d.stride + j);
                let total = totals[r * N + j];
                if accumulate {
                    *out += total;
                } else {
                    out.write(total);
                }
            }
        }
    }

    /// One step of eight columns: `load` gives the eight values of a row from its start.
    #[inline(always)]
    unsafe fn step<const M: usize, const N: usize>(
        sums: &mut [[__m256; N]; M],
        a: Rows<f32>,
        b: Rows<f32>,
        load: impl Fn(*const f32) -> __m256,
    ) {
        let mut bv = [_mm256_setzero_ps(); N];
        for (j, v) in bv.iter_mut().enumerate() {
            *v = load(b.ptr.add(j * b.stride));
        }
        for (r, row) in sums.iter_mut().enumerate() {
            let av = load(a.ptr.add(r * a.stride));
            for (s, &bj) in row.iter_mut().zip(&bv) {
                *s = _mm256_fmadd_ps(av, bj, *s);
            }
        }
    }

    /// The lane sums of eight vectors, as one vector (`v[i]`'s sum in lane `i`), by a
    /// fixed tree of horizontal adds.
    #[inline(always)]
    unsafe fn reduce8(v: &[__m256]) -> __m256 {
        let t0 = _mm256_hadd_ps(v[0], v[1]);
        let t1 = _mm256_hadd_ps(v[2], v[3]);
        let t2 = _mm256_hadd_ps(v[4], v[5]);
        let t3 = _mm256_hadd_ps(v[6], v[7]);
        // Lanes 0–3: v0..v3 over their low halves, lanes 4–7 over their high halves.
        let u0 = _mm256_hadd_ps(t0, t1);
        let u1 = _mm256_hadd_ps(t2, t3);
        let low = _mm256_permute2f128_ps::<0x20>(u0, u1);
        let high = _mm256_permute2f128_ps::<0x31>(u0, u1);
        _mm256_add_ps(low, high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `A·Bᵀ` in f64, row by row.
    fn naive(a: &[f32], b: &[f32], (m, n, k): (usize, usize, usize), stride: usize) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * stride + p] as f64 * b[j * stride + p] as f64)
                    .sum();
            }
        }
        c
    }

    #[test]
    fn every_block_shape_and_tail_matches_a_naive_product() {
        let Some(kernel) = f32_kernel_available() else {
            eprintln!("no AVX2/FMA on this CPU: the kernel is never used, nothing to test");
            return;
        };
        // Rows padded to a wider stride, so a kernel that ignored it would read the padding.
        for (m, n, k) in [
            (1, 1, 8),
            (4, 3, 64),
            (5, 7, 67),
            (9, 4, 130),
            (2, 64, 512),
            (64, 3, 13),
        ] {
            let stride = k + 5;
            let a: Vec<f32> = (0..m * stride)
                .map(|i| ((i * 7 % 23) as f32 - 11.0) * 0.1)
                .collect();
            let b: Vec<f32> = (0..n * stride)
                .map(|i| ((i * 5 % 19) as f32 - 9.0) * 0.1)
                .collect();
            let expected = naive(&a, &b, (m, n, k), stride);
            // Output rows also strided: column `n` of each row must stay untouched.
            let mut c = vec![7.0f32; m * (n + 1)];
            let out = Out {
                ptr: c.as_mut_ptr(),
                stride: n + 1,
            };
            let rows = |v: &[f32], r| Rows {
                ptr: v.as_ptr(),
                rows: r,
                stride,
            };
            // SAFETY: every row holds `k` elements (`stride ≥ k`), `c` has `m` rows of
            // `n + 1`, and the kernel exists on this CPU.
            unsafe { kernel(out, rows(&a, m), rows(&b, n), k, false) };
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (c[i * (n + 1) + j] as f64, expected[i * n + j]);
                    assert!(
                        (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                        "{m}×{n}×{k} ({i},{j}): {got} vs {want}"
                    );
                }
                assert_eq!(c[i * (n + 1) + n], 7.0, "padding column written");
            }
            // Accumulating adds the same product again.
            // SAFETY: as above.
            unsafe { kernel(out, rows(&a, m), rows(&b, n), k, true) };
            for i in 0..m {
                for j in 0..n {
                    let (got, want) = (c[i * (n + 1) + j] as f64, 2.0 * expected[i * n + j]);
                    assert!(
                        (got - want).abs() < 2e-4 * (1.0 + want.abs()),
                        "accumulated {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn bands_of_columns_on_several_threads_give_the_same_bits() {
        // One block of A rows or fewer: the work is split over rows of B (output columns).
        let Some(kernel) = f32_kernel_available() else {
            return;
        };
        for (m, n, k) in [(1, 200, 300), (3, 77, 129), (4, 33, 64)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
            let expected = naive(&a, &b, (m, n, k), k);
            let product = |threads| {
                let mut c = vec![0f32; m * n];
                let out = Out {
                    ptr: c.as_mut_ptr(),
                    stride: n,
                };
                let rows = |v: &[f32], r| Rows {
                    ptr: v.as_ptr(),
                    rows: r,
                    stride: k,
                };
                // SAFETY: rows of `k` elements, `c` holds `m × n`, the kernel runs here.
                unsafe { run(kernel, (out, rows(&a, m), rows(&b, n)), k, false, threads) };
                c
            };
            let one = product(1);
            for (got, want) in one.iter().zip(&expected) {
                let (got, want) = (*got as f64, *want);
                assert!(
                    (got - want).abs() < 1e-4 * (1.0 + want.abs()),
                    "{got} vs {want}"
                );
            }
            for threads in [2, 3, 8] {
                assert_eq!(product(threads), one, "{m}×{n}×{k}, {threads} threads");
            }
        }
    }

    #[test]
    fn bands_of_rows_on_several_threads_give_the_same_bits() {
        let Some(kernel) = f32_kernel_available() else {
            return;
        };
        let (m, n, k) = (13, 5, 200);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let product = |threads| {
            let mut c = vec![0f32; m * n];
            let out = Out {
                ptr: c.as_mut_ptr(),
                stride: n,
            };
            let (ra, rb) = (
                Rows {
                    ptr: a.as_ptr(),
                    rows: m,
                    stride: k,
                },
                Rows {
                    ptr: b.as_ptr(),
                    rows: n,
                    stride: k,
                },
            );
            // SAFETY: rows of `k` elements, `c` holds `m × n`, the kernel runs on this CPU.
            unsafe { run(kernel, (out, ra, rb), k, false, threads) };
            c
        };
        let one = product(1);
        assert!(one.iter().all(|v| *v != 0.0), "some output not written");
        for threads in [2, 3, 8] {
            assert_eq!(product(threads), one, "{threads} threads");
        }
    }
}
