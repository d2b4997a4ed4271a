//! Plane transposes for the plane-wise kernels (the fused CNO activation applies each
//! separable resize as a sum of contiguous rows, and transposes between the two axes).
//!
//! The portable form walks the plane in cache-sized tiles one element at a time. For `f32`
//! on a CPU with AVX, 8 × 8 blocks move through registers instead: eight row loads, the
//! classic unpack / shuffle / lane-permute network, eight row stores. The element at
//! `(r, c)` lands at `(c, r)` either way: a transpose only moves values, so both forms give
//! the same bits.

/// Element types with a plane transpose (`f32` has a SIMD one; others the portable one).
pub(crate) trait Transpose: Copy {
    /// `dst = srcᵀ` for a row-major `[rows, cols]` plane.
    fn transpose_plane(src: &[Self], rows: usize, cols: usize, dst: &mut [Self]) {
        transpose_tiles(src, rows, cols, dst);
    }
}

impl Transpose for f64 {}

impl Transpose for f32 {
    fn transpose_plane(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx") {
            // SAFETY: the CPU supports AVX (checked just above).
            unsafe { avx::transpose_plane(src, rows, cols, dst) };
            return;
        }
        transpose_tiles(src, rows, cols, dst);
    }
}

/// `dst = srcᵀ` for a row-major `[rows, cols]` plane, in cache-sized tiles (any element
/// type; the portable form).
///
/// # Panics
/// If either slice is not `rows·cols` long.
pub fn transpose_tiles<T: Copy>(src: &[T], rows: usize, cols: usize, dst: &mut [T]) {
    const TILE: usize = 32;
    assert!(
        src.len() == rows * cols && dst.len() == rows * cols,
        "transpose: planes of {} and {} values for {rows}×{cols}",
        src.len(),
        dst.len()
    );
    for r0 in (0..rows).step_by(TILE) {
        for c0 in (0..cols).step_by(TILE) {
            transpose_block(
                src,
                rows,
                cols,
                dst,
                (r0, (r0 + TILE).min(rows)),
                (c0, (c0 + TILE).min(cols)),
            );
        }
    }
}

/// The portable transpose of the block `rows.0..rows.1 × cols.0..cols.1`.
fn transpose_block<T: Copy>(
    src: &[T],
    n_rows: usize,
    n_cols: usize,
    dst: &mut [T],
    rows: (usize, usize),
    cols: (usize, usize),
) {
    for r in rows.0..rows.1 {
        for c in cols.0..cols.1 {
            dst[c * n_rows + r] = src[r * n_cols + c];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx {
    use std::arch::x86_64::*;

    /// `dst = srcᵀ`: whole 8 × 8 blocks in registers, the ragged right and bottom edges by
    /// the portable loop.
    ///
    /// # Safety
    /// The CPU must support AVX.
    #[target_feature(enable = "avx")]
    pub(super) unsafe fn transpose_plane(src: &[f32], rows: usize, cols: usize, dst: &mut [f32]) {
        assert!(
            src.len() == rows * cols && dst.len() == rows * cols,
            "transpose: planes of {} and {} values for {rows}×{cols}",
            src.len(),
            dst.len()
        );
        let (rows8, cols8) = (rows - rows % 8, cols - cols % 8);
        for r0 in (0..rows8).step_by(8) {
            for c0 in (0..cols8).step_by(8) {
                // SAFETY: rows r0..r0+8 and columns c0..c0+8 are inside the plane, so every
                // load reads src[(r0+i)·cols + c0 ..][..8] and every store writes
                // dst[(c0+j)·rows + r0 ..][..8], both in bounds (lengths asserted above).
                unsafe { block8(src.as_ptr(), rows, cols, dst.as_mut_ptr(), r0, c0) };
            }
        }
        super::transpose_block(src, rows, cols, dst, (0, rows8), (cols8, cols));
        super::transpose_block(src, rows, cols, dst, (rows8, rows), (0, cols));
    }

    /// One 8 × 8 block: rows `r0..r0+8`, columns `c0..c0+8` of the source.
    #[target_feature(enable = "avx")]
    #[inline]
    unsafe fn block8(
        src: *const f32,
        rows: usize,
        cols: usize,
        dst: *mut f32,
        r0: usize,
        c0: usize,
    ) {
        // SAFETY: the caller keeps the block inside both planes.
        unsafe {
            let ld = |i: usize| _mm256_loadu_ps(src.add((r0 + i) * cols + c0));
            let (a, b, c, d) = (ld(0), ld(1), ld(2), ld(3));
            let (e, f, g, h) = (ld(4), ld(5), ld(6), ld(7));
            // Pairs of rows interleaved, then quadruples, then the 128-bit halves swapped.
            let (ab_lo, ab_hi) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b));
            let (cd_lo, cd_hi) = (_mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
            let (ef_lo, ef_hi) = (_mm256_unpacklo_ps(e, f), _mm256_unpackhi_ps(e, f));
            let (gh_lo, gh_hi) = (_mm256_unpacklo_ps(g, h), _mm256_unpackhi_ps(g, h));
            let q0 = _mm256_shuffle_ps::<0x44>(ab_lo, cd_lo);
            let q1 = _mm256_shuffle_ps::<0xEE>(ab_lo, cd_lo);
            let q2 = _mm256_shuffle_ps::<0x44>(ab_hi, cd_hi);
            let q3 = _mm256_shuffle_ps::<0xEE>(ab_hi, cd_hi);
            let q4 = _mm256_shuffle_ps::<0x44>(ef_lo, gh_lo);
            let q5 = _mm256_shuffle_ps::<0xEE>(ef_lo, gh_lo);
            let q6 = _mm256_shuffle_ps::<0x44>(ef_hi, gh_hi);
            let q7 = _mm256_shuffle_ps::<0xEE>(ef_hi, gh_hi);
            let st = |j: usize, v: __m256| _mm256_storeu_ps(dst.add((c0 + j) * rows + r0), v);
            st(0, _mm256_permute2f128_ps::<0x20>(q0, q4));
            st(1, _mm256_permute2f128_ps::<0x20>(q1, q5));
            st(2, _mm256_permute2f128_ps::<0x20>(q2, q6));
            st(3, _mm256_permute2f128_ps::<0x20>(q3, q7));
            st(4, _mm256_permute2f128_ps::<0x31>(q0, q4));
            st(5, _mm256_permute2f128_ps::<0x31>(q1, q5));
            st(6, _mm256_permute2f128_ps::<0x31>(q2, q6));
            st(7, _mm256_permute2f128_ps::<0x31>(q3, q7));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check<T: Transpose + PartialEq + std::fmt::Debug>(make: impl Fn(usize) -> T) {
        // Whole blocks, ragged edges on either side, and planes smaller than a block.
        for (r, c) in [
            (37, 70),
            (8, 8),
            (16, 24),
            (200, 100),
            (3, 5),
            (9, 1),
            (1, 13),
        ] {
            let src: Vec<T> = (0..r * c).map(&make).collect();
            let mut dst = vec![make(0); r * c];
            T::transpose_plane(&src, r, c, &mut dst);
            for i in 0..r {
                for j in 0..c {
                    assert_eq!(dst[j * r + i], src[i * c + j], "{r}×{c} at ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn f32_and_f64_transposes_move_every_element_to_its_mirror() {
        check(|i| i as f32 * 0.5 - 3.0);
        check(|i| i as f64 * 0.25 + 1.0);
    }

    #[test]
    fn the_portable_transpose_matches_indexing_for_any_type() {
        let (r, c) = (37, 70);
        let src: Vec<u32> = (0..(r * c) as u32).collect();
        let mut dst = vec![0; r * c];
        transpose_tiles(&src, r, c, &mut dst);
        for i in 0..r {
            for j in 0..c {
                assert_eq!(dst[j * r + i], src[i * c + j]);
            }
        }
    }
}
