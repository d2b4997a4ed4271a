//! A bounds-checked entry to the `gemm` crate (the kernels candle's CPU matmul runs on) for
//! fused ops that multiply slices they own, such as [`crate::ops::conv2d`]: no candle tensor,
//! allocation or zero fill per product, and a `dst += A·B` form for accumulating.
//!
//! Every view is checked against its slice before the (unsafe) kernel is called, so a
//! wrong shape or stride is an error, never an out-of-bounds access.

use crate::cpu::row_dot;
use candle_core::Result;

/// The element types the wrapper multiplies (f32 and f64).
pub(crate) trait GemmScalar:
    Copy + Default + std::ops::AddAssign + Send + Sync + crate::cpu::scratch::Pooled + 'static
{
    /// The multiplicative identity, for `gemm`'s `alpha`/`beta` factors.
    const ONE: Self;

    /// The [`crate::cpu::row_dot`] kernel for this type on this CPU, if there is one and it
    /// is preferred to the `gemm` crate here.
    fn row_dot_kernel() -> Option<row_dot::Kernel<Self>> {
        None
    }

    /// The [`crate::cpu::row_dot`] kernel for this type on this CPU for matrix-vector
    /// products (one row on either side), if there is one.
    fn row_dot_gemv_kernel() -> Option<row_dot::Kernel<Self>> {
        None
    }
}

impl GemmScalar for f32 {
    const ONE: Self = 1.0;

    fn row_dot_kernel() -> Option<row_dot::Kernel<Self>> {
        row_dot::f32_kernel()
    }

    fn row_dot_gemv_kernel() -> Option<row_dot::Kernel<Self>> {
        row_dot::f32_gemv_kernel()
    }
}

impl GemmScalar for f64 {
    const ONE: Self = 1.0;
}

/// Shortest common dimension for which products whose operands both run along it go to
/// the [`crate::cpu::row_dot`] kernel (below it the `gemm` crate's packing is cheap).
const ROW_DOT_MIN_K: usize = 64;

/// Largest right operand (elements) of those products that goes to the kernel: it is read
/// once per four rows of the left one, so it must stay in cache (1 MB of `f32`, a Zen 4
/// core's L2). The blocked convolution's weight gradient (`32 × 288` over 455 positions,
/// a 524 KB patch block) is inside: 65–69 → 53 ms for LocalNO's 3×3 convolution at batch
/// 32 (`conv_timing`), where 64 K elements kept it in the `gemm` crate.
const ROW_DOT_MAX_RHS: usize = 1 << 18;

/// A read-only strided matrix view: element `(r, c)` is `data[r·row_stride + c·col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a, T> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a, T> MatRef<'a, T> {
    /// A row-major `rows × cols` matrix stored densely in `data`.
    pub(crate) fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// A `rows × cols` view with explicit strides (checked against `data` when multiplied).
    pub(crate) fn strided(
        data: &'a [T],
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride,
            col_stride,
        }
    }

    /// Row `r` as a slice (views with unit column stride; panics outside the slice).
    pub(crate) fn row(&self, r: usize) -> &'a [T] {
        debug_assert_eq!(self.col_stride, 1, "row() needs a unit column stride");
        let start = r * self.row_stride;
        &self.data[start..start + self.cols]
    }

    /// The number of rows.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// The transpose (a view: strides swapped, nothing copied).
    pub(crate) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }
}

/// A mutable row-major `rows × cols` matrix stored densely in a slice, which may be
/// uninitialised (then it can only be overwritten, not accumulated onto).
#[derive(Debug)]
pub(crate) struct MatMut<'a, T> {
    ptr: *mut T,
    len: usize,
    initialised: bool,
    rows: usize,
    cols: usize,
    row_stride: usize,
    _borrow: std::marker::PhantomData<&'a mut [T]>,
}

impl<'a, T> MatMut<'a, T> {
    /// A row-major `rows × cols` matrix stored densely in `data`.
    pub(crate) fn row_major(data: &'a mut [T], rows: usize, cols: usize) -> Self {
        Self::strided_rows(data, (rows, cols), cols)
    }

    /// A `rows × cols` block of a row-major matrix whose rows are `row_stride` apart
    /// (a column range of a wider matrix), starting at `data[0]`.
    pub(crate) fn strided_rows(
        data: &'a mut [T],
        (rows, cols): (usize, usize),
        row_stride: usize,
    ) -> Self {
        Self {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            initialised: true,
            rows,
            cols,
            row_stride,
            _borrow: std::marker::PhantomData,
        }
    }

    /// A row-major `rows × cols` matrix in uninitialised memory: [`gemm()`] overwrites it
    /// (every element, so the slice is initialised afterwards) and refuses to accumulate.
    pub(crate) fn uninit(
        data: &'a mut [std::mem::MaybeUninit<T>],
        rows: usize,
        cols: usize,
    ) -> Self {
        Self::uninit_strided_rows(data, (rows, cols), cols)
    }

    /// [`MatMut::strided_rows`] in uninitialised memory: [`gemm()`] writes every element the
    /// view addresses (and no other) and refuses to accumulate.
    pub(crate) fn uninit_strided_rows(
        data: &'a mut [std::mem::MaybeUninit<T>],
        (rows, cols): (usize, usize),
        row_stride: usize,
    ) -> Self {
        Self {
            ptr: data.as_mut_ptr().cast(),
            len: data.len(),
            initialised: false,
            rows,
            cols,
            row_stride,
            _borrow: std::marker::PhantomData,
        }
    }
}

/// Whether every element a view addresses lies inside a slice of `len` elements.
fn fits(len: usize, rows: usize, cols: usize, row_stride: usize, col_stride: usize) -> bool {
    if rows == 0 || cols == 0 {
        return true;
    }
    let last = (rows - 1).checked_mul(row_stride).and_then(|r| {
        (cols - 1)
            .checked_mul(col_stride)
            .and_then(|c| r.checked_add(c))
    });
    matches!(last, Some(i) if i < len)
}

/// `dst = lhs · rhs`, or `dst += lhs · rhs` when `accumulate`, on `threads` rayon threads
/// (1: on the calling thread). Errors when the shapes disagree or a view overruns its slice.
pub(crate) fn gemm<T: GemmScalar>(
    dst: MatMut<'_, T>,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    threads: usize,
) -> Result<()> {
    checked_product(dst, lhs, rhs, accumulate, threads, true)
}

/// [`gemm()`] without the [`crate::cpu::row_dot`] kernel: always the `gemm` crate (in row
/// bands where [`gemm()`] would cut them). For a product that must sum as the same values
/// in another layout do: whether [`gemm()`] takes the row-dot kernel depends on the strides
/// and the sizes, so a layout the crate reads in place could go to the kernel instead.
pub(crate) fn gemm_by_crate<T: GemmScalar>(
    dst: MatMut<'_, T>,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    threads: usize,
) -> Result<()> {
    checked_product(dst, lhs, rhs, accumulate, threads, false)
}

/// Whether [`gemm()`] gives the product `lhs · rhs` to the [`crate::cpu::row_dot`] kernel on
/// this CPU.
pub(crate) fn takes_row_dot<T: GemmScalar>(lhs: &MatRef<'_, T>, rhs: &MatRef<'_, T>) -> bool {
    row_dot_kernel_for(lhs, rhs).is_some()
}

/// The [`crate::cpu::row_dot`] kernel [`gemm()`] runs `lhs · rhs` with, if any: chosen by
/// shape alone (not by the thread count), so a product sums in the same order whatever the
/// thread count. A matrix-vector product (one row on either side) reads its large operand
/// once, so that operand's size does not matter.
fn row_dot_kernel_for<T: GemmScalar>(
    lhs: &MatRef<'_, T>,
    rhs: &MatRef<'_, T>,
) -> Option<row_dot::Kernel<T>> {
    let (m, n, k) = (lhs.rows, rhs.cols, lhs.cols);
    let gemv = m == 1 || n == 1;
    let shape = lhs.col_stride == 1
        && rhs.row_stride == 1
        && k >= ROW_DOT_MIN_K
        && (gemv || n.saturating_mul(k) <= ROW_DOT_MAX_RHS);
    if !shape {
        None
    } else if gemv {
        T::row_dot_gemv_kernel()
    } else {
        T::row_dot_kernel()
    }
}

/// The checks and the route of [`gemm()`]; `allow_row_dot: false` keeps the product on the
/// `gemm` crate ([`gemm_by_crate`]).
fn checked_product<T: GemmScalar>(
    dst: MatMut<'_, T>,
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    accumulate: bool,
    threads: usize,
    allow_row_dot: bool,
) -> Result<()> {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    if lhs.rows != m || rhs.rows != k || rhs.cols != n {
        candle_core::bail!(
            "gemm: [{m}, {n}] = [{}, {}] · [{}, {}] does not match",
            lhs.rows,
            lhs.cols,
            rhs.rows,
            rhs.cols
        );
    }
    if accumulate && !dst.initialised {
        candle_core::bail!("gemm: cannot accumulate onto an uninitialised matrix");
    }
    let views_fit = fits(dst.len, m, n, dst.row_stride, 1)
        && fits(lhs.data.len(), m, k, lhs.row_stride, lhs.col_stride)
        && fits(rhs.data.len(), k, n, rhs.row_stride, rhs.col_stride);
    if !views_fit {
        candle_core::bail!("gemm: a matrix view overruns its buffer");
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if !accumulate {
            // SAFETY: `dst` addresses only elements of the slice it borrows mutably
            // (checked above); writing (not reading) is valid for uninitialised memory.
            for r in 0..m {
                for c in 0..n {
                    unsafe { dst.ptr.add(r * dst.row_stride + c).write(T::default()) };
                }
            }
        }
        return Ok(());
    }
    let kernel = if allow_row_dot {
        row_dot_kernel_for(&lhs, &rhs)
    } else {
        None
    };
    if let Some(kernel) = kernel {
        let a = row_dot::Rows {
            ptr: lhs.data.as_ptr(),
            rows: m,
            stride: lhs.row_stride,
        };
        let b = row_dot::Rows {
            ptr: rhs.data.as_ptr(),
            rows: n,
            stride: rhs.col_stride,
        };
        let out = row_dot::Out {
            ptr: dst.ptr,
            stride: dst.row_stride,
        };
        // SAFETY: the views were checked above to address only elements of their slices
        // (row `i` of `a` is row `i` of `lhs`, row `j` of `b` column `j` of `rhs`, each `k`
        // long); `dst` is borrowed mutably, so it aliases neither, and is read only when
        // `accumulate` (refused above for uninitialised memory). The kernel exists only
        // where the CPU runs it.
        unsafe { row_dot::run(kernel, (out, a, b), k, accumulate, threads) };
        return Ok(());
    }
    let bands = row_bands(m, n, k);
    let band_rows = m.div_ceil(bands);
    let views = Views {
        dst: dst.ptr,
        dst_row_stride: dst.row_stride,
        lhs,
        rhs,
    };
    if bands == 1 {
        // SAFETY: the whole product, its views checked above.
        unsafe { views.band_product(0, m, accumulate, threads) };
    } else if threads <= 1 {
        for first in (0..m).step_by(band_rows) {
            // SAFETY: `first + rows ≤ m`, inside the views checked above.
            unsafe { views.band_product(first, band_rows.min(m - first), accumulate, 1) };
        }
    } else {
        use rayon::prelude::*;
        // Each band gets the threads left over from the split (none at two threads).
        let per_band = (threads / bands).max(1);
        let shared = &views;
        (0..bands).into_par_iter().for_each(|i| {
            let first = i * band_rows;
            if first < m {
                // SAFETY: bands are disjoint row ranges of `lhs` and `dst` inside the
                // views checked above; `rhs` is only read.
                unsafe {
                    shared.band_product(first, band_rows.min(m - first), accumulate, per_band)
                };
            }
        });
    }
    Ok(())
}

/// One product of [`gemm_column_blocks`]: `dst[:, columns] = lhs · rhs`.
pub(crate) struct ColumnBlock<'a, T> {
    /// The columns of `dst` the product writes.
    pub(crate) columns: std::ops::Range<usize>,
    /// `[rows, k]`.
    pub(crate) lhs: MatRef<'a, T>,
    /// `[k, columns.len()]`.
    pub(crate) rhs: MatRef<'a, T>,
}

/// The column block `columns` of `dst` as a view of its own (same rows and row stride).
fn column_view<'a, T>(dst: &MatMut<'a, T>, columns: &std::ops::Range<usize>) -> MatMut<'a, T> {
    MatMut {
        // `wrapping_add`: computing the address is safe; `gemm` checks every access
        // against `len` before it dereferences anything.
        ptr: dst.ptr.wrapping_add(columns.start),
        len: dst.len.saturating_sub(columns.start),
        initialised: dst.initialised,
        rows: dst.rows,
        cols: columns.len(),
        row_stride: dst.row_stride,
        _borrow: std::marker::PhantomData,
    }
}

/// A [`MatMut`] shared by the tasks of [`gemm_column_blocks`], which write disjoint
/// column blocks of it.
struct SharedDst<'a, T>(MatMut<'a, T>);

// SAFETY: the tasks write disjoint column blocks (checked before they start) and read
// nothing of `dst`; `T: Send` values may be written from several threads that way.
unsafe impl<T: Send> Sync for SharedDst<'_, T> {}

impl<'a, T> SharedDst<'a, T> {
    /// The shared view (a method, so closures capture the `Sync` wrapper, not its field).
    fn view(&self) -> &MatMut<'a, T> {
        &self.0
    }
}

/// `dst[:, columns_j] = lhs_j · rhs_j` for every block `j`, the blocks' products on
/// rayon's threads when `threads > 1` (each a one-thread [`gemm()`] call, so the values
/// do not depend on the thread count). The column ranges must be disjoint and inside
/// `dst`; the blocks need not cover it (columns outside every block are left as they
/// are). Errors as [`gemm()`] does, or when two blocks overlap.
pub(crate) fn gemm_column_blocks<T: GemmScalar>(
    dst: MatMut<'_, T>,
    blocks: &[ColumnBlock<'_, T>],
    threads: usize,
) -> Result<()> {
    let mut ranges: Vec<_> = blocks.iter().map(|b| b.columns.clone()).collect();
    ranges.sort_by_key(|r| r.start);
    let disjoint = ranges.windows(2).all(|w| w[0].end <= w[1].start);
    if !disjoint || ranges.last().is_some_and(|r| r.end > dst.cols) {
        candle_core::bail!(
            "gemm_column_blocks: column blocks {ranges:?} overlap or leave the {} columns",
            dst.cols
        );
    }
    let run = |dst: &MatMut<'_, T>, block: &ColumnBlock<'_, T>| {
        gemm(
            column_view(dst, &block.columns),
            block.lhs,
            block.rhs,
            false,
            1,
        )
    };
    if threads <= 1 || blocks.len() < 2 {
        return blocks.iter().try_for_each(|block| run(&dst, block));
    }
    use rayon::prelude::*;
    let shared = SharedDst(dst);
    blocks
        .par_iter()
        .try_for_each(|block| run(shared.view(), block))
}

/// Rows of `dst` per band in [`row_bands`].
const BAND_ROWS: usize = 128;

/// How many bands of rows the `gemm` crate's product is split into, each a separate call
/// (run on its own thread when there are enough). Tall products with few columns and a
/// long common dimension (a branch network's first layer as `W·xᵀ`, `256 × 32` over
/// 10,000 inputs) are split into bands of [`BAND_ROWS`]: the crate's own threading splits
/// them poorly on two threads (0.83–0.85 ms against 0.60–0.77 ms for two bands of 128
/// rows, Intel Xeon with AVX-512). Chosen by shape alone, and the bands are the same
/// single-call products on one thread as on many, so every sum has the same order
/// whatever the thread count.
fn row_bands(m: usize, n: usize, k: usize) -> usize {
    if n <= 64 && k >= 2048 && m >= 2 * BAND_ROWS {
        m / BAND_ROWS
    } else {
        1
    }
}

/// The checked operands of one product, shared with the rayon tasks of its bands.
struct Views<'a, T> {
    dst: *mut T,
    dst_row_stride: usize,
    lhs: MatRef<'a, T>,
    rhs: MatRef<'a, T>,
}

// SAFETY: the tasks read `lhs` and `rhs` and write disjoint row bands of `dst` (see
// `gemm`); `T: Send + Sync` values may be accessed from several threads that way.
unsafe impl<T: Send + Sync> Sync for Views<'_, T> {}

impl<T: GemmScalar> Views<'_, T> {
    /// `dst[first..first + rows] (+)= lhs[first..first + rows] · rhs` with the `gemm` crate
    /// on `threads` threads.
    ///
    /// # Safety
    /// The views must have been checked against their buffers (as `gemm` does), `dst` must
    /// alias neither operand and be initialised when `accumulate`, and `first + rows` must
    /// not exceed `dst`'s rows.
    unsafe fn band_product(&self, first: usize, rows: usize, accumulate: bool, threads: usize) {
        let (lhs, rhs) = (self.lhs, self.rhs);
        let parallelism = if threads > 1 {
            gemm::Parallelism::Rayon(threads)
        } else {
            gemm::Parallelism::None
        };
        // SAFETY: the caller's guarantees; the band's first rows are inside the views, and
        // strides are below the slice lengths, hence fit in `isize`. An uninitialised
        // `dst` is only written (`read_dst` is `accumulate`), and `gemm` writes all of it.
        unsafe {
            gemm::gemm(
                rows,
                rhs.cols,
                lhs.cols,
                self.dst.add(first * self.dst_row_stride),
                1,
                self.dst_row_stride as isize,
                accumulate,
                lhs.data.as_ptr().add(first * lhs.row_stride),
                lhs.col_stride as isize,
                lhs.row_stride as isize,
                rhs.data.as_ptr(),
                rhs.col_stride as isize,
                rhs.row_stride as isize,
                T::ONE,
                T::ONE,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(a: &[f64], b: &[f64], m: usize, k: usize, n: usize, bt: bool) -> Vec<f64> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] = (0..k)
                    .map(|p| a[i * k + p] * if bt { b[j * k + p] } else { b[p * n + j] })
                    .sum();
            }
        }
        c
    }

    #[test]
    fn products_transposes_and_accumulation_match_a_naive_loop() -> Result<()> {
        let (m, k, n) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let mut c = vec![0.0; m * n];
        gemm(
            MatMut::row_major(&mut c, m, n),
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            false,
            1,
        )?;
        let expected = naive(&a, &b, m, k, n, false);
        assert!(c.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-12));
        // b read as the transpose of an [n, k] matrix; then accumulated onto c.
        gemm(
            MatMut::row_major(&mut c, m, n),
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, n, k).t(),
            true,
            2,
        )?;
        let bt = naive(&a, &b, m, k, n, true);
        for ((x, e), t) in c.iter().zip(&expected).zip(&bt) {
            assert!((x - (e + t)).abs() < 1e-12, "{x} vs {}", e + t);
        }
        Ok(())
    }

    #[test]
    fn products_along_the_common_dimension_match_a_naive_loop_in_f32() -> Result<()> {
        // k ≥ ROW_DOT_MIN_K, both operands contiguous along k, one thread: the row-dot
        // kernel's case (where the CPU has one); into fresh memory, then accumulated.
        let (m, k, n) = (6, ROW_DOT_MIN_K + 3, 5);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let expected = naive(&wide(&a), &wide(&b), m, k, n, true);
        let mut c = vec![std::mem::MaybeUninit::<f32>::uninit(); m * n];
        gemm(
            MatMut::uninit(&mut c, m, n),
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, n, k).t(),
            false,
            1,
        )?;
        // SAFETY: `gemm` wrote every element.
        let mut c: Vec<f32> = c.into_iter().map(|v| unsafe { v.assume_init() }).collect();
        for (x, e) in c.iter().zip(&expected) {
            assert!((*x as f64 - e).abs() < 1e-4, "{x} vs {e}");
        }
        gemm(
            MatMut::row_major(&mut c, m, n),
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, n, k).t(),
            true,
            1,
        )?;
        for (x, e) in c.iter().zip(&expected) {
            assert!((*x as f64 - 2.0 * e).abs() < 2e-4, "{x} vs {}", 2.0 * e);
        }
        Ok(())
    }

    #[test]
    fn row_bands_match_a_naive_loop_with_the_same_bits_on_any_thread_count() -> Result<()> {
        // 300 rows of a tall product with a long common dimension: two bands (150 rows),
        // here with a transposed left operand (as the dense layer's `W·xᵀ` reads it).
        let (m, k, n) = (2 * BAND_ROWS + 44, 2048 + 5, 7);
        assert_eq!(row_bands(m, n, k), 2);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..k * n).map(|i| (i as f32 * 0.91).cos()).collect();
        let wide = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<_>>();
        let expected = naive(&wide(&a), &wide(&b), m, k, n, false);
        let a_t: Vec<f32> = (0..k * m).map(|i| a[(i % m) * k + i / m]).collect();
        let run = |threads: usize| -> Result<Vec<f32>> {
            let mut c = vec![1f32; m * n];
            gemm(
                MatMut::row_major(&mut c, m, n),
                MatRef::row_major(&a_t, k, m).t(),
                MatRef::row_major(&b, k, n),
                true,
                threads,
            )?;
            Ok(c)
        };
        let one = crate::cpu::map::single_threaded(|| run(1))?;
        for (x, e) in one.iter().zip(&expected) {
            assert!(
                (*x as f64 - 1.0 - e).abs() < 2e-3 * (1.0 + e.abs()),
                "{x} vs {e}"
            );
        }
        for threads in [2, 3, 4] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            assert_eq!(pool.install(|| run(threads))?, one, "{threads} threads");
        }
        Ok(())
    }

    #[test]
    fn the_dispatched_product_agrees_with_the_row_dot_kernel() -> Result<()> {
        // Where this CPU prefers the `gemm` crate for the kernel's layout (Intel with
        // AVX-512F), `gemm` takes the library's path: it must agree with the kernel run
        // directly. Where the kernel is preferred both are the kernel (and equal bitwise).
        let Some(kernel) = row_dot::f32_kernel_available() else {
            return Ok(());
        };
        for (m, n, k) in [(37, 24, 96), (200, 80, 80), (5, 256, 256)] {
            let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
            let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
            let mut dispatched = vec![0f32; m * n];
            gemm(
                MatMut::row_major(&mut dispatched, m, n),
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, n, k).t(),
                false,
                2,
            )?;
            let mut direct = vec![0f32; m * n];
            let rows = |v: &[f32], r| row_dot::Rows {
                ptr: v.as_ptr(),
                rows: r,
                stride: k,
            };
            let out = row_dot::Out {
                ptr: direct.as_mut_ptr(),
                stride: n,
            };
            // SAFETY: rows of `k` elements, `direct` holds `m × n`, the kernel runs here.
            unsafe { row_dot::run(kernel, (out, rows(&a, m), rows(&b, n)), k, false, 2) };
            for (x, y) in dispatched.iter().zip(&direct) {
                // Sums of k ≤ 256 terms of size ≤ 1 in two orders: a few ulps of k.
                assert!((x - y).abs() <= 1e-5 * k as f32, "{m}×{n}×{k}: {x} vs {y}");
            }
            if row_dot::kernel_preferred() {
                assert_eq!(dispatched, direct, "the kernel was preferred but not used");
            }
        }
        Ok(())
    }

    #[test]
    fn the_crate_route_skips_the_row_dot_kernel_and_the_predicate_names_it() -> Result<()> {
        // A shape the kernel takes where it is preferred: `takes_row_dot` says so exactly
        // then, `gemm` then runs the kernel, and `gemm_by_crate` runs the crate's product
        // (the bits of one row band of it, which is a plain crate call) all the same.
        let (m, n, k) = (37, 24, 96);
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let (lhs, rhs) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, n, k).t());
        let preferred = <f32 as GemmScalar>::row_dot_kernel().is_some();
        assert_eq!(takes_row_dot(&lhs, &rhs), preferred);
        // Not the kernel's layout (the right operand's rows are not contiguous): never.
        let b_rows = MatRef::row_major(&b, k, n);
        assert!(!takes_row_dot(&lhs, &b_rows));
        let mut by_crate = vec![0f32; m * n];
        gemm_by_crate(MatMut::row_major(&mut by_crate, m, n), lhs, rhs, false, 2)?;
        let mut crate_call = vec![0f32; m * n];
        let views = Views {
            dst: crate_call.as_mut_ptr(),
            dst_row_stride: n,
            lhs,
            rhs,
        };
        // SAFETY: the views fit their buffers (the product above checked the same shapes)
        // and `crate_call` aliases neither operand.
        unsafe { views.band_product(0, m, false, 2) };
        assert_eq!(
            by_crate.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            crate_call.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        let expected = naive(
            &a.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            &b.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(),
            m,
            k,
            n,
            true,
        );
        for (x, y) in by_crate.iter().zip(&expected) {
            assert!((f64::from(*x) - y).abs() <= 1e-5 * k as f64, "{x} vs {y}");
        }
        Ok(())
    }

    #[test]
    fn matrix_vector_products_go_to_the_kernel_whatever_the_right_operand_size() -> Result<()> {
        // One row on either side, the other operand far above ROW_DOT_MAX_RHS where it is
        // the right one: the kernel's matrix-vector case on every CPU that runs it (unless
        // NO_LAYERS_ROW_DOT=off), on bands of output columns or rows; the same bits on one
        // thread and on two.
        let Some(kernel) = row_dot::f32_kernel_available() else {
            return Ok(());
        };
        for (m, n, k) in [(1, 300, 2000), (300, 1, 2000)] {
            matrix_vector_case(kernel, m, n, k)?;
        }
        Ok(())
    }

    /// One product of [`matrix_vector_products_go_to_the_kernel_whatever_the_right_operand_size`].
    fn matrix_vector_case(
        kernel: row_dot::Kernel<f32>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<()> {
        let a: Vec<f32> = (0..m * k).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..n * k).map(|i| (i as f32 * 0.91).cos()).collect();
        let dispatched = |threads| -> Result<Vec<f32>> {
            let mut c = vec![0f32; m * n];
            gemm(
                MatMut::row_major(&mut c, m, n),
                MatRef::row_major(&a, m, k),
                MatRef::row_major(&b, n, k).t(),
                false,
                threads,
            )?;
            Ok(c)
        };
        let one = dispatched(1)?;
        assert_eq!(dispatched(2)?, one);
        let mut direct = vec![0f32; m * n];
        let out = row_dot::Out {
            ptr: direct.as_mut_ptr(),
            stride: n,
        };
        let rows = |v: &[f32], r| row_dot::Rows {
            ptr: v.as_ptr(),
            rows: r,
            stride: k,
        };
        // SAFETY: rows of `k` elements, `direct` holds `m × n`, the kernel runs here.
        unsafe { kernel(out, rows(&a, m), rows(&b, n), k, false) };
        if row_dot::f32_gemv_kernel().is_some() {
            assert_eq!(one, direct, "the matrix-vector case did not use the kernel");
        } else {
            for (x, y) in one.iter().zip(&direct) {
                assert!((x - y).abs() <= 1e-5 * k as f32, "{x} vs {y}");
            }
        }
        Ok(())
    }

    #[test]
    fn column_blocks_match_a_naive_loop_and_refuse_overlaps() -> Result<()> {
        // dst [3, 7] = a [3, 4] · b [4, 7], as blocks of columns 0..2, 2..5 and 5..7, each
        // block's right operand stored on its own.
        let (m, k, n) = (3, 4, 7);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.91).cos()).collect();
        let expected = naive(&a, &b, m, k, n, false);
        let ranges = [0..2, 2..5, 5..7];
        let parts: Vec<Vec<f64>> = ranges
            .iter()
            .map(|r| {
                (0..k)
                    .flat_map(|p| b[p * n + r.start..p * n + r.end].to_vec())
                    .collect()
            })
            .collect();
        let blocks = |ranges: &[std::ops::Range<usize>]| -> Vec<ColumnBlock<'_, f64>> {
            ranges
                .iter()
                .zip(&parts)
                .map(|(r, part)| ColumnBlock {
                    columns: r.clone(),
                    lhs: MatRef::row_major(&a, m, k),
                    rhs: MatRef::row_major(part, k, r.len()),
                })
                .collect()
        };
        for threads in [1, 3] {
            let mut c = vec![f64::NAN; m * n];
            gemm_column_blocks(MatMut::row_major(&mut c, m, n), &blocks(&ranges), threads)?;
            assert!(c.iter().zip(&expected).all(|(x, y)| (x - y).abs() < 1e-12));
        }
        let mut c = vec![0.0; m * n];
        // Overlapping (the second block starts inside the first) or past the last column.
        for bad in [[0..2, 1..4, 5..7], [0..2, 2..5, 5..8]] {
            let e = gemm_column_blocks(MatMut::row_major(&mut c, m, n), &blocks(&bad), 1)
                .unwrap_err()
                .to_string();
            assert!(e.contains("overlap or leave"), "{e}");
        }
        Ok(())
    }

    #[test]
    fn mismatched_shapes_and_overrunning_views_are_errors() {
        let (a, b) = (vec![0f32; 6], vec![0f32; 6]);
        let mut c = vec![0f32; 4];
        let e = gemm(
            MatMut::row_major(&mut c, 2, 2),
            MatRef::row_major(&a, 2, 3),
            MatRef::row_major(&b, 2, 3),
            false,
            1,
        );
        assert!(e.is_err());
        let e = gemm(
            MatMut::row_major(&mut c, 2, 2),
            MatRef::row_major(&a, 2, 4),
            MatRef::row_major(&b, 4, 2),
            false,
            1,
        );
        assert!(e.is_err(), "an [2, 4] view of 6 elements overruns");
    }

    #[test]
    fn uninitialised_destinations_are_overwritten_and_never_accumulated() -> Result<()> {
        let a = [1.0f64, 2.0, 3.0, 4.0];
        let b = [0.5f64, -1.0];
        let mut dst = [std::mem::MaybeUninit::<f64>::uninit(); 2];
        gemm(
            MatMut::uninit(&mut dst, 2, 1),
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&b, 2, 1),
            false,
            1,
        )?;
        // SAFETY: `gemm` overwrote both elements.
        let got = dst.map(|v| unsafe { v.assume_init() });
        assert_eq!(got, [-1.5, -2.5]);
        let mut dst = [std::mem::MaybeUninit::<f64>::uninit(); 2];
        let accumulated = gemm(
            MatMut::uninit(&mut dst, 2, 1),
            MatRef::row_major(&a, 2, 2),
            MatRef::row_major(&b, 2, 1),
            true,
            1,
        );
        assert!(accumulated.is_err());
        Ok(())
    }
}
