//! A dense layer `act(x·Wᵀ + b)` as one fused CPU op, forward and backward.
//!
//! With candle's ops, a tanh layer records three nodes (product, bias, tanh), each with an
//! output the size of the layer's, and candle's backward starts the gradient of every node
//! from a zero tensor and adds into it. On a DeepONet trunk (10,000 query points × 256
//! features, 10 MB a tensor) that is three allocations in the forward and three zero fills,
//! three additions and three allocations in the backward, per layer. Here the layer is one
//! node:
//!
//! - forward: a buffer filled with the bias, one `gemm` accumulating `x·Wᵀ` into it, the
//!   activation in place;
//! - backward: `d = g·act'(y)` in one pass from the saved output (none for the identity),
//!   `∂W = dᵀ·x` and `∂x = d·W` as two products (the second only when `x` needs a
//!   gradient), `∂b` as a sum of `d` over rows in fixed-size blocks added in block order.
//!
//! [`DenseLayout::Columns`] returns the transposed output `[O, N]` (`W·xᵀ + b`, bias per
//! row), which DeepONet's trunk wants for its last layer. Products run on the `gemm` crate
//! (as candle's matmul does), which splits only rows and columns over threads, and every
//! other pass is element-wise or blocked by fixed sizes: results do not depend on the
//! thread count. `f32` and `f64` on the CPU; other dtypes and devices run the same
//! arithmetic through candle's ops.

use crate::cpu::gemm_view::{gemm, GemmScalar, MatMut, MatRef};
use crate::cpu::lane_sum::lane_sum;
use crate::cpu::map::{contiguous, dispatch3, CHUNK};
use crate::cpu::short_input;
use crate::ops::tanh::{tanh_f32_in_place, tanh_grad_f32, tanh_grad_f64};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;

/// Rows per block of the bias gradient's partial sums (fixed: the summation order does not
/// depend on the thread count).
const ROWS_PER_BLOCK: usize = 256;

/// The activation a fused dense layer applies to its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseActivation {
    /// No activation: `x·Wᵀ + b`.
    Identity,
    /// `tanh`.
    Tanh,
}

/// How a fused dense layer lays out its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenseLayout {
    /// `[N, O]`: one row per input row, as `candle_nn::Linear`.
    Rows,
    /// `[O, N]`: the transpose, one row per output feature.
    Columns,
    /// `[K, O/K, N]`: the column layout split into `K` blocks of output features (the same
    /// memory; for DeepONet's per-output basis blocks, without a reshape node whose backward
    /// would add one more zero fill and addition of the whole gradient).
    ColumnBlocks(usize),
}

impl DenseLayout {
    /// Whether the output holds one row per output feature.
    fn by_columns(self) -> bool {
        !matches!(self, DenseLayout::Rows)
    }
}

/// `act(x·Wᵀ + b)` for `x: [N, F]`, `w: [O, F]`, `b` with `O` values, as `[N, O]`
/// ([`DenseLayout::Rows`]), `[O, N]` ([`DenseLayout::Columns`]) or `[K, O/K, N]`
/// ([`DenseLayout::ColumnBlocks`]). Differentiable in all three arguments through candle's
/// autograd.
pub fn dense(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    act: DenseActivation,
    layout: DenseLayout,
) -> Result<Tensor> {
    check_shapes(x, w, b)?;
    if let DenseLayout::ColumnBlocks(k) = layout {
        let o = w.dim(0)?;
        if k == 0 || o % k != 0 {
            candle_core::bail!("dense: {o} output features do not split into {k} blocks");
        }
    }
    if !crate::ops::fused_cpu(&[x, w, b]) {
        return dense_with_candle_ops(x, w, b, act, layout);
    }
    x.contiguous()?.apply_op3(
        &w.contiguous()?,
        &b.flatten_all()?.contiguous()?,
        DenseOp { act, layout },
    )
}

/// Checks that `x` is `[N, F]`, `w` is `[O, F]` and `b` holds `O` values.
fn check_shapes(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<()> {
    let (&[_, f], &[o, fw]) = (x.dims(), w.dims()) else {
        candle_core::bail!(
            "dense: expected an input [N, F] and a weight [O, F], got {:?} and {:?}",
            x.dims(),
            w.dims()
        )
    };
    if fw != f {
        candle_core::bail!("dense: weight [{o}, {fw}] does not take inputs of width {f}");
    }
    if b.elem_count() != o {
        candle_core::bail!(
            "dense: bias {:?} holds {} values, expected one per output feature ({o})",
            b.dims(),
            b.elem_count()
        );
    }
    Ok(())
}

/// The same layer in candle's ops (any device and dtype).
fn dense_with_candle_ops(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    act: DenseActivation,
    layout: DenseLayout,
) -> Result<Tensor> {
    let o = w.dim(0)?;
    let z = match layout {
        DenseLayout::Rows => x.matmul(&w.t()?)?.broadcast_add(&b.reshape((1, o))?)?,
        _ => w.matmul(&x.t()?)?.broadcast_add(&b.reshape((o, 1))?)?,
    };
    let y = match act {
        DenseActivation::Identity => z,
        DenseActivation::Tanh => z.tanh()?,
    };
    match layout {
        DenseLayout::ColumnBlocks(k) => y.reshape((k, o / k, x.dim(0)?)),
        _ => Ok(y),
    }
}

/// The fused op; its arguments are `x`, `w` and the flattened `b`, all contiguous.
#[derive(Debug, Clone, Copy)]
struct DenseOp {
    act: DenseActivation,
    layout: DenseLayout,
}

/// The element types the fused op runs on, with their activation kernels.
trait DenseScalar: GemmScalar + short_input::Scalar {
    /// Applies `act` in place.
    fn activate(v: &mut [Self], act: DenseActivation);
    /// `g·(1 − y²)`, the gradient through `tanh` from its output `y`, written into every
    /// element of `d` (on the calling thread).
    fn tanh_grad(y: &[Self], g: &[Self], d: &mut [MaybeUninit<Self>]);
}

macro_rules! dense_scalar {
    ($t:ty, $tanh_in_place:expr, $tanh_grad:expr) => {
        impl DenseScalar for $t {
            fn activate(v: &mut [$t], act: DenseActivation) {
                match act {
                    DenseActivation::Identity => {}
                    DenseActivation::Tanh => v.par_chunks_mut(CHUNK).for_each($tanh_in_place),
                }
            }

            fn tanh_grad(y: &[$t], g: &[$t], d: &mut [MaybeUninit<$t>]) {
                $tanh_grad(y, g, d)
            }
        }
    };
}

dense_scalar!(f32, tanh_f32_in_place, tanh_grad_f32);
dense_scalar!(
    f64,
    |v: &mut [f64]| {
        for x in v {
            *x = x.tanh();
        }
    },
    tanh_grad_f64
);

/// The forward pass on slices: `x [n, f]`, `w [o, f]`, `b [o]`.
fn forward<T: DenseScalar>(
    x: &[T],
    w: &[T],
    b: &[T],
    (n, f, o): (usize, usize, usize),
    op: DenseOp,
) -> Result<Vec<T>> {
    let threads = rayon::current_num_threads();
    let slices = (x, w, b);
    let (x, w) = (MatRef::row_major(x, n, f), MatRef::row_major(w, o, f));
    let mut out = match op.layout {
        DenseLayout::Rows if f <= short_input::MAX_INPUTS => {
            short_input::forward(slices, (n, f, o), ROWS_PER_BLOCK)
        }
        DenseLayout::Rows if transposed_product_wins(n, f, o) => {
            let columns = columns_product(x, w, b, threads)?;
            let mut rows = Vec::with_capacity(n * o);
            for r in 0..n {
                rows.extend((0..o).map(|c| columns[c * n + r]));
            }
            rows
        }
        DenseLayout::Rows => {
            let mut rows = repeat_rows(b, n);
            gemm(MatMut::row_major(&mut rows, n, o), x, w.t(), true, threads)?;
            rows
        }
        DenseLayout::Columns | DenseLayout::ColumnBlocks(_) => columns_product(x, w, b, threads)?,
    };
    T::activate(&mut out, op.act);
    Ok(out)
}

/// Whether the rows layout's `[n, o]` output is faster computed as the transposed `[o, n]`
/// product and then transposed: for few rows (a branch net on a batch) with a long
/// input (`f ≥ o`), where the `gemm` crate is several times faster that way (1.1 ms
/// instead of 3.4 ms for 32 × 10,000 inputs and 256 outputs) and transposing `n·o`
/// values is cheap. With a short input and many outputs (POD-DeepONet's basis product,
/// 64 modes → 10,000 points; DeepONet-CNN's 80 → 800 last branch layer) the direct product
/// is the faster one (`examples/dense_timing.rs`).
fn transposed_product_wins(n: usize, f: usize, o: usize) -> bool {
    n < o && f >= o
}

/// `W·xᵀ + b` as a row-major `[o, n]` matrix (bias per row), from `x [n, f]` and `w [o, f]`.
fn columns_product<T: DenseScalar>(
    x: MatRef<'_, T>,
    w: MatRef<'_, T>,
    b: &[T],
    threads: usize,
) -> Result<Vec<T>> {
    let (n, o) = (x.rows(), w.rows());
    let mut columns = repeat_each(b, n);
    gemm(
        MatMut::row_major(&mut columns, o, n),
        w,
        x.t(),
        true,
        threads,
    )?;
    Ok(columns)
}

/// `[n, b.len()]` row-major with every row equal to `b` (written once, no zero fill first),
/// in tasks of about [`CHUNK`] values: with blocks of [`ROWS_PER_BLOCK`] rows, a batch of
/// 32 long rows (POD-DeepONet's `32 × 10,000` fields, 1.3 MB each) was one task, filled on
/// the calling thread while the others waited.
fn repeat_rows<T: DenseScalar>(b: &[T], n: usize) -> Vec<T> {
    let o = b.len();
    let mut out = Vec::with_capacity(n * o);
    if let Some(rows_per_task) = CHUNK.checked_div(o) {
        let rows_per_task = rows_per_task.max(1);
        out.spare_capacity_mut()[..n * o]
            .par_chunks_mut(o * rows_per_task)
            .for_each(|rows| {
                for row in rows.chunks_mut(o) {
                    for (d, &v) in row.iter_mut().zip(b) {
                        d.write(v);
                    }
                }
            });
    }
    // SAFETY: the chunks cover `0..n·o` and every element was written (nothing to write
    // when `o` is 0, and then the length is 0).
    unsafe { out.set_len(n * o) };
    out
}

/// `[b.len(), n]` row-major with row `i` filled with `b[i]` (written once, no zero fill).
fn repeat_each<T: DenseScalar>(b: &[T], n: usize) -> Vec<T> {
    let o = b.len();
    let mut out = Vec::with_capacity(n * o);
    if n > 0 {
        out.spare_capacity_mut()[..n * o]
            .par_chunks_mut(n)
            .zip(b.par_iter())
            .for_each(|(row, &v)| {
                for d in row {
                    d.write(v);
                }
            });
    }
    // SAFETY: the rows cover `0..n·o` and every element was written (nothing to write
    // when `n` is 0, and then the length is 0).
    unsafe { out.set_len(n * o) };
    out
}

/// `(∂x, ∂W, ∂b)` as flat buffers (`∂x` absent when the input needs no gradient).
type Gradients<T> = (Option<Vec<T>>, Option<Vec<T>>, Option<Vec<T>>);

/// Which gradients the backward pass computes: those of the operands that are tracked
/// (a frozen weight, such as POD-DeepONet's basis, costs no `∂W` product).
#[derive(Clone, Copy, Debug)]
struct Needed {
    x: bool,
    w: bool,
    b: bool,
}

/// The gradients `(∂x, ∂W, ∂b)` on slices, each only when `need` asks for it; `y` and `g`
/// are the output and its gradient in the op's layout.
fn backward<T: DenseScalar>(
    (x, w, y, g): (&[T], &[T], &[T], &[T]),
    (n, f, o): (usize, usize, usize),
    op: DenseOp,
    need: Needed,
) -> Result<Gradients<T>> {
    let threads = rayon::current_num_threads();
    let short_rows = op.layout == DenseLayout::Rows && f <= short_input::MAX_INPUTS;
    let d_owned;
    let mut grad_b = None;
    let d = match op.act {
        DenseActivation::Identity => g,
        DenseActivation::Tanh => {
            let mut buf = Vec::with_capacity(g.len());
            // The bias gradient is summed from each block of `d` right after it is
            // written, while it is in cache (on DeepONet-CNN's last trunk layer `d` is 32
            // MB); the short-input loops below take theirs from their own pass.
            let with_bias = need.b && !short_rows;
            let sums = tanh_grad_and_bias_grad(
                (y, g),
                &mut buf.spare_capacity_mut()[..g.len()],
                (n, o),
                op.layout,
                with_bias,
            );
            // SAFETY: `tanh_grad_and_bias_grad` writes every element of the slice it is
            // given.
            unsafe { buf.set_len(g.len()) };
            grad_b = sums;
            d_owned = buf;
            &d_owned
        }
    };
    // `d` viewed as `[n, o]` whatever the layout.
    let d_rows = if op.layout.by_columns() {
        MatRef::row_major(d, o, n).t()
    } else {
        MatRef::row_major(d, n, o)
    };
    let grad_x = need
        .x
        .then(|| product(d_rows, MatRef::row_major(w, o, f), threads))
        .transpose()?;
    if short_rows {
        // Both from one pass over `d` (a product with `f` ≤ 4 columns is memory-bound).
        let (grad_w, grad_b) =
            short_input::weight_and_bias_grads((d, x), (n, f, o), ROWS_PER_BLOCK, (need.w, need.b));
        return Ok((grad_x, grad_w, grad_b));
    }
    let grad_w = need
        .w
        .then(|| product(d_rows.t(), MatRef::row_major(x, n, f), threads))
        .transpose()?;
    let grad_b = grad_b.or_else(|| need.b.then(|| bias_grad(d, (n, o), op.layout)));
    Ok((grad_x, grad_w, grad_b))
}

/// `d = g·(1 − y²)` over every element, and with `with_bias` also `Σ_rows d` as
/// [`bias_grad`] sums it: the same blocks (a feature's row in the column layouts, blocks
/// of [`ROWS_PER_BLOCK`] rows in the row layout) added in the same order, each block
/// summed as soon as it is written, so the values are [`bias_grad`]'s bit for bit.
fn tanh_grad_and_bias_grad<T: DenseScalar>(
    (y, g): (&[T], &[T]),
    d: &mut [MaybeUninit<T>],
    (n, o): (usize, usize),
    layout: DenseLayout,
    with_bias: bool,
) -> Option<Vec<T>> {
    if !with_bias || n == 0 || o == 0 {
        d.par_chunks_mut(CHUNK)
            .zip(y.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (y, g))| T::tanh_grad(y, g, d));
        return with_bias.then(|| vec![T::default(); o]);
    }
    let block = if layout.by_columns() {
        n
    } else {
        o * ROWS_PER_BLOCK
    };
    let sums: Vec<Vec<T>> = d
        .par_chunks_mut(block)
        .zip(y.par_chunks(block).zip(g.par_chunks(block)))
        .map(|(d, (y, g))| {
            T::tanh_grad(y, g, d);
            // SAFETY: `tanh_grad` wrote every element of `d`; `MaybeUninit<T>` has the
            // layout of `T`.
            let d: &[T] = unsafe { std::slice::from_raw_parts(d.as_ptr().cast(), d.len()) };
            if layout.by_columns() {
                vec![lane_sum(d)]
            } else {
                block_sum(d, o)
            }
        })
        .collect();
    if layout.by_columns() {
        return Some(sums.into_iter().flatten().collect());
    }
    Some(add_in_order(&sums, o))
}

/// The row sums of one block of `[rows, o]` values, rows added in order.
fn block_sum<T: DenseScalar>(block: &[T], o: usize) -> Vec<T> {
    let mut acc = vec![T::default(); o];
    for row in block.chunks(o) {
        for (a, &v) in acc.iter_mut().zip(row) {
            *a += v;
        }
    }
    acc
}

/// `Σ partials` element-wise, the partials added in order onto zeros.
fn add_in_order<T: DenseScalar>(partials: &[Vec<T>], o: usize) -> Vec<T> {
    let mut total = vec![T::default(); o];
    for p in partials {
        for (t, &v) in total.iter_mut().zip(p) {
            *t += v;
        }
    }
    total
}

/// `lhs · rhs` as a new row-major buffer, written by `gemm` into uninitialised memory: a
/// zero fill first would be one more full pass (∂x of a trunk layer is `10,000 × 256`).
fn product<T: DenseScalar>(
    lhs: MatRef<'_, T>,
    rhs: MatRef<'_, T>,
    threads: usize,
) -> Result<Vec<T>> {
    let (m, n) = (lhs.rows(), rhs.t().rows());
    let len = m.checked_mul(n).ok_or_else(|| {
        candle_core::Error::Msg(format!("dense: a {m} × {n} gradient overflows usize"))
    })?;
    let mut out = Vec::with_capacity(len);
    gemm(
        MatMut::uninit(&mut out.spare_capacity_mut()[..len], m, n),
        lhs,
        rhs,
        false,
        threads,
    )?;
    // SAFETY: `gemm` returned Ok, so it wrote every element of the `m × n` block (it
    // checks shapes before writing anything and overwrites an uninitialised target).
    unsafe { out.set_len(len) };
    Ok(out)
}

/// `Σ_rows d` as `o` values: blocks of rows summed in parallel, the block sums added in
/// block order (row layout), or each feature's row summed in order (column layout).
fn bias_grad<T: DenseScalar>(d: &[T], (n, o): (usize, usize), layout: DenseLayout) -> Vec<T> {
    if n == 0 || o == 0 {
        return vec![T::default(); o];
    }
    if layout.by_columns() {
        return d.par_chunks(n).map(lane_sum).collect();
    }
    let partials: Vec<Vec<T>> = d
        .par_chunks(o * ROWS_PER_BLOCK)
        .map(|block| block_sum(block, o))
        .collect();
    add_in_order(&partials, o)
}

impl DenseOp {
    /// The output shape for `(n, o)`.
    fn out_shape(&self, n: usize, o: usize) -> Shape {
        match self.layout {
            DenseLayout::Rows => (n, o).into(),
            DenseLayout::Columns => (o, n).into(),
            DenseLayout::ColumnBlocks(k) => (k, o / k.max(1), n).into(),
        }
    }
}

/// `(n, f, o)` from the layouts of `x` and `w`.
fn sizes(lx: &Layout, lw: &Layout) -> Result<(usize, usize, usize)> {
    match (lx.dims(), lw.dims()) {
        (&[n, f], &[o, fw]) if fw == f => Ok((n, f, o)),
        (a, b) => candle_core::bail!("dense: input {a:?} and weight {b:?} do not match"),
    }
}

impl CustomOp3 for DenseOp {
    fn name(&self) -> &'static str {
        "dense-fused"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = sizes(lx, lw)?;
        let out = dispatch3(
            self.name(),
            (sx, lx),
            (sw, lw),
            (sb, lb),
            |x, w, b| forward(x, w, b, dims, *self),
            |x, w, b| forward(x, w, b, dims, *self),
        )?;
        Ok((out, self.out_shape(dims.0, dims.2)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = grad_res.contiguous()?;
        let dims = sizes(x.layout(), w.layout())?;
        let (n, f, o) = dims;
        let need = Needed {
            x: x.track_op(),
            w: w.track_op(),
            b: b.track_op(),
        };
        let (sx, lx) = x.storage_and_layout();
        let (sw, lw) = w.storage_and_layout();
        let (sy, ly) = res.storage_and_layout();
        let (sg, lg) = g.storage_and_layout();
        let name = self.name();
        macro_rules! run {
            ($x:expr, $w:expr, $y:expr, $g:expr, $t:ty) => {{
                let slices = (
                    contiguous(name, $x, lx)?,
                    contiguous(name, $w, lw)?,
                    contiguous(name, $y, ly)?,
                    contiguous(name, $g, lg)?,
                );
                let (gx, gw, gb) = backward::<$t>(slices, dims, *self, need)?;
                let dev = x.device();
                (
                    gx.map(|v| Tensor::from_vec(v, (n, f), dev)).transpose()?,
                    gw.map(|v| Tensor::from_vec(v, (o, f), dev)).transpose()?,
                    gb.map(|v| Tensor::from_vec(v, b.shape(), dev))
                        .transpose()?,
                )
            }};
        }
        let (gx, gw, gb) = match (&*sx, &*sw, &*sy, &*sg) {
            (
                Storage::Cpu(CpuStorage::F32(x)),
                Storage::Cpu(CpuStorage::F32(w)),
                Storage::Cpu(CpuStorage::F32(y)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => run!(x, w, y, g, f32),
            (
                Storage::Cpu(CpuStorage::F64(x)),
                Storage::Cpu(CpuStorage::F64(w)),
                Storage::Cpu(CpuStorage::F64(y)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => run!(x, w, y, g, f64),
            _ => candle_core::bail!(
                "dense backward: expected CPU f32 or f64 tensors, got {:?} on {:?}",
                x.dtype(),
                x.device().location()
            ),
        };
        Ok((gx, gw, gb))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::single_threaded;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use candle_core::{DType, Device, Var};

    const ACTS: [DenseActivation; 2] = [DenseActivation::Identity, DenseActivation::Tanh];
    const LAYOUTS: [DenseLayout; 3] = [
        DenseLayout::Rows,
        DenseLayout::Columns,
        DenseLayout::ColumnBlocks(3),
    ];

    fn random(shape: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
        random_like(&Tensor::zeros(shape, dtype, &Device::Cpu)?, seed)
    }

    fn max_abs(t: &Tensor) -> Result<f64> {
        t.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    /// `[N, F, O]` of the tests: more rows than one bias block, fewer rows than outputs
    /// with a short input (the row layout's direct product) and with a long one (its
    /// transposed product), and a two-value input over several blocks (the short-input
    /// loops).
    const SHAPES: [[usize; 3]; 4] = [[600, 7, 6], [3, 7, 9], [3, 11, 9], [600, 2, 6]];

    /// The bias gradient summed while `d` is written equals the separate pass over `d`, bit
    /// for bit, in every layout (rows over several blocks and a partial one).
    #[test]
    fn bias_grad_with_the_tanh_pass_has_the_bits_of_its_own_pass() {
        let (n, o) = (3 * ROWS_PER_BLOCK + 17, 6);
        let value = |i: usize, s: f32| ((i as f32 + 1.0) * s).sin();
        let y: Vec<f32> = (0..n * o).map(|i| value(i, 0.37).tanh()).collect();
        let g: Vec<f32> = (0..n * o).map(|i| value(i, 1.3)).collect();
        for layout in LAYOUTS {
            let mut d = Vec::with_capacity(n * o);
            let sums = tanh_grad_and_bias_grad(
                (&y, &g),
                &mut d.spare_capacity_mut()[..n * o],
                (n, o),
                layout,
                true,
            );
            // SAFETY: every element was written.
            unsafe { d.set_len(n * o) };
            let separate: Vec<f32> = y.iter().zip(&g).map(|(&y, &g)| g * (1.0 - y * y)).collect();
            assert_eq!(d, separate, "{layout:?}");
            assert_eq!(
                sums,
                Some(bias_grad(&separate, (n, o), layout)),
                "{layout:?}"
            );
        }
    }

    /// The fused op against candle's matmul, broadcast add and activation, in both dtypes,
    /// layouts and activations.
    #[test]
    fn matches_candle_ops() -> Result<()> {
        for (dtype, [n, f, o]) in [DType::F32, DType::F64]
            .into_iter()
            .flat_map(|d| SHAPES.map(|s| (d, s)))
        {
            let (x, w, b) = (
                random(&[n, f], 1, dtype)?,
                random(&[o, f], 2, dtype)?,
                random(&[o], 3, dtype)?,
            );
            for act in ACTS {
                for layout in LAYOUTS {
                    let got = dense(&x, &w, &b, act, layout)?;
                    let want = dense_with_candle_ops(&x, &w, &b, act, layout)?;
                    assert_eq!(got.dims(), want.dims());
                    let err = max_abs(&(&got - &want)?)?;
                    let tol = if dtype == DType::F32 { 2e-6 } else { 1e-13 };
                    assert!(
                        err <= tol,
                        "{dtype:?} {n}×{f}→{o} {act:?} {layout:?}: {err}"
                    );
                }
            }
        }
        Ok(())
    }

    /// f64 finite differences for every activation and layout, through a weighted sum so
    /// that every output entry has its own weight; each operand as a variable (its
    /// gradient computed) or as a constant (skipped, the others unchanged), the frozen
    /// weight and bias of a fixed basis among them.
    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // Which of (x, W, b) are variables.
        let tracked = [
            [true, true, true],
            [false, true, true],
            [true, false, false],
            [true, false, true],
        ];
        for [n, f, o] in [[300, 4, 3], [2, 4, 6], [2, 8, 6]] {
            for (act, layout) in ACTS.into_iter().flat_map(|a| LAYOUTS.map(|l| (a, l))) {
                let x = Var::from_tensor(&random(&[n, f], 4, DType::F64)?)?;
                let w = Var::from_tensor(&random(&[o, f], 5, DType::F64)?)?;
                let b = Var::from_tensor(&random(&[o], 6, DType::F64)?)?;
                let out_dims = match layout {
                    DenseLayout::Rows => vec![n, o],
                    DenseLayout::Columns => vec![o, n],
                    DenseLayout::ColumnBlocks(k) => vec![k, o / k, n],
                };
                let weights = random(&out_dims, 7, DType::F64)?;
                for mask in tracked {
                    let operands = [x.clone(), w.clone(), b.clone()];
                    let wt = weights.clone();
                    let loss = move || -> Result<Tensor> {
                        let [x, w, b] = [0, 1, 2].map(|i| {
                            let t = operands[i].as_tensor();
                            if mask[i] {
                                t.clone()
                            } else {
                                t.detach()
                            }
                        });
                        (dense(&x, &w, &b, act, layout)? * &wt)?.sum_all()
                    };
                    let vars: Vec<Var> = [&x, &w, &b]
                        .into_iter()
                        .zip(mask)
                        .filter(|&(_, tracked)| tracked)
                        .map(|(v, _)| v.clone())
                        .collect();
                    let r = check_gradients(loss, &vars, &GradCheckConfig::default())?;
                    assert!(
                        r.passed(),
                        "{n}×{f}→{o} {act:?} {layout:?} tracked (x, W, b) = {mask:?}: {r:?}"
                    );
                }
            }
        }
        Ok(())
    }

    /// Forward and all three gradients carry the same bits on one thread as on the default
    /// pool, with several bias blocks, for a long and a two-value input.
    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let run = || -> Result<Vec<Vec<f32>>> {
            let mut out = Vec::new();
            let cases = [(1100, 16), (8, 16), (1100, 2)];
            for ((n, f), layout) in cases.into_iter().flat_map(|c| LAYOUTS.map(|l| (c, l))) {
                let x = Var::from_tensor(&random(&[n, f], 8, DType::F32)?)?;
                let w = Var::from_tensor(&random(&[24, f], 9, DType::F32)?)?;
                let b = Var::from_tensor(&random(&[24], 10, DType::F32)?)?;
                let y = dense(
                    x.as_tensor(),
                    w.as_tensor(),
                    b.as_tensor(),
                    DenseActivation::Tanh,
                    layout,
                )?;
                let grads = y.sqr()?.sum_all()?.backward()?;
                out.push(y.flatten_all()?.to_vec1()?);
                for v in [&x, &w, &b] {
                    let g = grads.get(v.as_tensor()).ok_or_else(|| {
                        candle_core::Error::Msg("a variable got no gradient".into())
                    })?;
                    out.push(g.flatten_all()?.to_vec1()?);
                }
            }
            Ok(out)
        };
        assert_eq!(single_threaded(run)?, run()?);
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_errors() -> Result<()> {
        let t = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &Device::Cpu);
        let cases = [
            (
                t(&[4, 3])?,
                t(&[2, 5])?,
                t(&[2])?,
                "does not take inputs of width 3",
            ),
            (
                t(&[4, 3])?,
                t(&[2, 3])?,
                t(&[3])?,
                "one per output feature (2)",
            ),
            (
                t(&[1, 4, 3])?,
                t(&[2, 3])?,
                t(&[2])?,
                "expected an input [N, F]",
            ),
        ];
        for (x, w, b, expected) in cases {
            let err = dense(&x, &w, &b, DenseActivation::Tanh, DenseLayout::Rows)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(expected), "{err}");
        }
        for k in [0, 2] {
            let (x, w, b) = (t(&[4, 3])?, t(&[3, 3])?, t(&[3])?);
            let err = dense(
                &x,
                &w,
                &b,
                DenseActivation::Tanh,
                DenseLayout::ColumnBlocks(k),
            )
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
            assert!(err.contains("do not split into"), "{err}");
        }
        Ok(())
    }
}
