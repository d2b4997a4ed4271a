//! DeepONet's combination of branch coefficients with trunk basis functions as one fused
//! CPU op, forward and backward:
//! `out[b, k, n] = Σ_i branch[b, k·q + i] · basis[k, i, n]` for `K` outputs of `q` basis
//! functions each, at `N` query points.
//!
//! With candle's ops this is a reshape and transpose of the branch made contiguous, a
//! batched product over the `K` outputs and a transposed (strided) result. Its backward
//! makes the transposed gradient contiguous again (a copy of the whole output on the
//! calling thread) and computes `∂branch_k = ∂out_k · basis_kᵀ` as a product whose
//! left operand the `gemm` crate packs in full on the calling thread before its threads
//! start (`q × N` values, 4 million on DeepONet-CNN's `400 × 10,000` blocks): together
//! about 5 ms of a DeepONet-CNN training step during which the other core waited.
//!
//! Here each output's product writes straight into its rows of the `[B, K, N]` result,
//! the backward reads the gradient in place, and `∂branch_k` is computed transposed,
//! `basis_k · ∂out_kᵀ` (`q × B`), where the operand packed on the calling thread is the
//! `B × N` gradient instead. Every product is the same `gemm` call as candle's, with the
//! same inner dimension, so each sum runs in the same order: where the `gemm` crate
//! computes both (on CPUs whose products do not go to the crate's dot-product kernel) the values
//! are candle's bit for bit. `f32` and `f64` on the CPU; elsewhere the candle formula.

use crate::cpu::gemm_view::{gemm, gemm_column_blocks, ColumnBlock, GemmScalar, MatMut, MatRef};
use crate::cpu::map::dispatch2;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use std::mem::MaybeUninit;
use std::ops::Range;

/// `out[b, k, n] = Σ_i branch[b, k·q + i] · basis[k, i, n]` for `branch` `[B, K·q]` and
/// `basis` `[K, q, N]`, as `[B, K, N]`; differentiable in both through candle's autograd.
/// Errors when the branch width is not `K·q`.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use no_layers::ops::basis_product::basis_product;
///
/// // One sample, two outputs of two basis functions each, three query points.
/// let branch = Tensor::new(&[[1.0f32, 2.0, 3.0, 4.0]], &Device::Cpu)?;
/// let basis = Tensor::new(
///     &[[[1.0f32, 0.0, 1.0], [0.0, 1.0, 1.0]], [[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]],
///     &Device::Cpu,
/// )?;
/// let out = basis_product(&branch, &basis)?;
/// assert_eq!(out.dims(), &[1, 2, 3]);
/// // Output 0: 1·[1, 0, 1] + 2·[0, 1, 1]; output 1: 3·[1, 1, 0] + 4·[0, 0, 1].
/// assert_eq!(out.to_vec3::<f32>()?, vec![vec![vec![1.0, 2.0, 3.0], vec![3.0, 3.0, 4.0]]]);
/// # Ok::<(), candle_core::Error>(())
/// ```
pub fn basis_product(branch: &Tensor, basis: &Tensor) -> Result<Tensor> {
    let (b, p) = branch.dims2()?;
    let (k, q, _) = basis.dims3()?;
    if Some(p) != k.checked_mul(q) {
        candle_core::bail!(
            "basis_product: branch width {p} must equal the basis width {k} × {q} = {}",
            k.saturating_mul(q)
        );
    }
    if crate::ops::fused_cpu(&[branch, basis]) {
        return branch
            .contiguous()?
            .apply_op2(&basis.contiguous()?, BasisProduct { k, q });
    }
    // [K, B, q] × [K, q, N] → [K, B, N] → [B, K, N]
    let per_output = branch.reshape((b, k, q))?.transpose(0, 1)?.contiguous()?;
    per_output.matmul(basis)?.transpose(0, 1)
}

/// Query points per column panel of a [`PanelBasis`] (the last panel also takes the
/// remainder, so every panel has at least this many unless the whole basis has fewer).
/// A multiple of 16, so the `gemm` crate reads a panel in place instead of packing it,
/// and above 64, so every panel's product takes the crate's general path, whose sums do
/// not depend on the number of points (its small-matrix path cuts the inner dimension
/// differently above 512 basis functions). Measured with the `basis_product_timing`
/// example at DeepONet-CNN's product (docs/performance.md).
const PANEL_POINTS: usize = 128;

/// A constant basis `[K, q, N]` (a DeepONet trunk's output, cached per query grid)
/// stored for repeated products with branch coefficients:
/// [`PanelBasis::product`] gives [`basis_product`]'s result, bit for bit, faster.
///
/// [`basis_product`] multiplies each output's `[q, N]` block as one `gemm` call, which
/// reads, for each of the `q` basis functions, a short run of points `N` values after the
/// previous one: on DeepONet-CNN's 10,000-point grid that is a new 4 KB page per basis
/// function, which the hardware prefetchers do not follow. Here each output's block is
/// cut into panels of 128 points, each panel stored contiguously (`[q, w]`),
/// and the panels' products run as separate single-thread calls spread over the threads.
/// Every output value still sums its `q` terms in the same order as the whole-width call.
/// On other devices or dtypes the basis is kept as it is and [`basis_product`] runs.
///
/// ```
/// use candle_core::{Device, Tensor};
/// use no_layers::ops::basis_product::{basis_product, PanelBasis};
///
/// let basis = Tensor::randn(0f32, 1.0, (2, 8, 300), &Device::Cpu)?;
/// let branch = Tensor::randn(0f32, 1.0, (4, 16), &Device::Cpu)?;
/// let panels = PanelBasis::new(&basis)?;
/// let (a, b) = (panels.product(&branch)?, basis_product(&branch, &basis)?);
/// assert_eq!(a.dims(), &[4, 2, 300]);
/// assert_eq!(a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
/// # Ok::<(), candle_core::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PanelBasis {
    /// `K·q·N` values, panel by panel (as [`to_panels`] writes them), or the `[K, q, N]`
    /// basis as given where the fused CPU op does not run.
    data: Tensor,
    /// Whether `data` holds panels.
    paneled: bool,
    /// `(K, q, N)`.
    dims: (usize, usize, usize),
}

/// The query-point ranges of the panels of an `N`-point basis: [`PANEL_POINTS`] each, the
/// last one taking the remainder (one range of all `N` when `N < 2·PANEL_POINTS`).
fn panel_ranges(n: usize) -> Vec<Range<usize>> {
    let count = (n / PANEL_POINTS).max(1);
    (0..count)
        .map(|c| {
            let end = if c + 1 == count {
                n
            } else {
                (c + 1) * PANEL_POINTS
            };
            c * PANEL_POINTS..end
        })
        .collect()
}

/// `[K, q, N]` values rewritten panel by panel: output `k`'s panel of points `s..e` is
/// the row-major `[q, e − s]` block at `k·q·N + q·s`.
fn to_panels<T: Copy>(basis: &[T], (k, q, n): (usize, usize, usize)) -> Vec<T> {
    let mut out = Vec::with_capacity(basis.len());
    for block in basis.chunks_exact((q * n).max(1)).take(k) {
        for points in panel_ranges(n) {
            for row in block.chunks_exact(n.max(1)) {
                out.extend_from_slice(&row[points.clone()]);
            }
        }
    }
    out
}

/// The inverse of [`to_panels`].
fn from_panels<T: Copy + Default>(panels: &[T], (k, q, n): (usize, usize, usize)) -> Vec<T> {
    let mut out = vec![T::default(); panels.len()];
    for (block, src) in out
        .chunks_exact_mut((q * n).max(1))
        .zip(panels.chunks_exact((q * n).max(1)))
        .take(k)
    {
        let mut at = 0;
        for points in panel_ranges(n) {
            let w = points.len();
            for row in block.chunks_exact_mut(n.max(1)) {
                row[points.clone()].copy_from_slice(&src[at..at + w]);
                at += w;
            }
        }
    }
    out
}

/// Output `o`'s panel of `points` (`[q, w]`) in a paneled basis.
fn panel<'a, T>(
    panels: &'a [T],
    (_, q, n): (usize, usize, usize),
    o: usize,
    points: &Range<usize>,
) -> MatRef<'a, T> {
    MatRef::row_major(&panels[o * q * n + q * points.start..], q, points.len())
}

/// Which way [`rearranged`] goes.
#[derive(Debug, Clone, Copy)]
enum Rearrange {
    /// `[K, q, N]` → panels ([`to_panels`]).
    ToPanels,
    /// Panels → `[K, q, N]` ([`from_panels`]).
    FromPanels,
}

/// The values of an `f32` or `f64` CPU tensor of `K·q·N` values rearranged, as a flat
/// tensor (the new values moved in, not copied again).
fn rearranged(t: &Tensor, dims: (usize, usize, usize), way: Rearrange) -> Result<Tensor> {
    fn apply<T: Copy + Default>(v: &[T], dims: (usize, usize, usize), way: Rearrange) -> Vec<T> {
        match way {
            Rearrange::ToPanels => to_panels(v, dims),
            Rearrange::FromPanels => from_panels(v, dims),
        }
    }
    let (len, flat) = (t.elem_count(), t.flatten_all()?);
    match t.dtype() {
        DType::F32 => Tensor::from_vec(apply(&flat.to_vec1::<f32>()?, dims, way), len, t.device()),
        DType::F64 => Tensor::from_vec(apply(&flat.to_vec1::<f64>()?, dims, way), len, t.device()),
        other => candle_core::bail!("PanelBasis: dtype {other:?} is not laid out in panels"),
    }
}

impl PanelBasis {
    /// The panels of `basis` `[K, q, N]` (copied and detached: no gradient reaches
    /// `basis` through [`Self::product`]). Errors unless `basis` has three dimensions.
    pub fn new(basis: &Tensor) -> Result<Self> {
        let dims = basis.dims3()?;
        let basis = basis.detach();
        if !crate::ops::fused_cpu(&[&basis]) {
            return Ok(Self {
                data: basis,
                paneled: false,
                dims,
            });
        }
        let data = rearranged(&basis, dims, Rearrange::ToPanels)?;
        Ok(Self {
            data,
            paneled: true,
            dims,
        })
    }

    /// `(K, q, N)`: outputs, basis functions per output, query points.
    pub fn dims(&self) -> (usize, usize, usize) {
        self.dims
    }

    /// The basis as `[K, q, N]` again (a copy where it is stored in panels).
    pub fn basis(&self) -> Result<Tensor> {
        if !self.paneled {
            return Ok(self.data.clone());
        }
        rearranged(&self.data, self.dims, Rearrange::FromPanels)?.reshape(self.dims)
    }

    /// [`basis_product`]`(branch, basis)`: `[B, K, N]`, with the same values; gradients
    /// reach `branch` (not the basis). Errors when the branch width is not `K·q`.
    pub fn product(&self, branch: &Tensor) -> Result<Tensor> {
        let (k, q, n) = self.dims;
        let (_, p) = branch.dims2()?;
        if Some(p) != k.checked_mul(q) {
            candle_core::bail!(
                "PanelBasis::product: branch width {p} must equal the basis width {k} × {q} = {}",
                k.saturating_mul(q)
            );
        }
        if !self.paneled {
            return basis_product(branch, &self.data);
        }
        if !crate::ops::fused_cpu(&[branch, &self.data]) {
            // The composite path forced (tests), or a branch of another dtype or device:
            // candle's formula on the basis laid out again (or its dtype error).
            return basis_product(branch, &self.basis()?);
        }
        branch
            .contiguous()?
            .apply_op2(&self.data, PanelProduct { k, q, n })
    }
}

/// [`PanelBasis::product`]'s op on `(branch [B, K·q], panels [K·q·N])`.
#[derive(Debug, Clone, Copy)]
struct PanelProduct {
    k: usize,
    q: usize,
    n: usize,
}

/// `∂branch` from `(panels, ∂out)` (no backward: used inside the backward pass).
#[derive(Debug, Clone, Copy)]
struct PanelBranchGrad {
    k: usize,
    q: usize,
    n: usize,
}

/// `out[b, k, :] = branch_k[b, :] · basis_k`, panel by panel on rayon's threads.
fn panel_forward<T: GemmScalar>(branch: &[T], panels: &[T], sz: Sizes) -> Result<Vec<T>> {
    let (b, k, q, n) = sz;
    let len = checked_len(&[b, k, n])?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let dims = (k, q, n);
    let ranges = panel_ranges(n);
    let blocks: Vec<ColumnBlock<'_, T>> = (0..k)
        .flat_map(|o| ranges.iter().map(move |points| (o, points)))
        .map(|(o, points)| ColumnBlock {
            columns: o * n + points.start..o * n + points.end,
            lhs: coefficients(branch, sz, o),
            rhs: panel(panels, dims, o, points),
        })
        .collect();
    let mut out: Vec<T> = Vec::with_capacity(len);
    let dst = MatMut::uninit(&mut out.spare_capacity_mut()[..len], b, k * n);
    gemm_column_blocks(dst, &blocks, rayon::current_num_threads())?;
    // SAFETY: the blocks cover columns `0..K·N` of every row, and `gemm` overwrites all
    // of each uninitialised block.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// `∂branch[b, k·q + i] = Σ_n ∂out[b, k, n]·basis[k, i, n]`, summed panel by panel.
fn panel_branch_grad<T: GemmScalar>(panels: &[T], grad: &[T], sz: Sizes) -> Result<Vec<T>> {
    let (b, k, q, n) = sz;
    let mut out = vec![T::default(); checked_len(&[b, k, q])?];
    let (threads, ranges) = (rayon::current_num_threads(), panel_ranges(n));
    for o in 0..k {
        for points in &ranges {
            let dst = MatMut::strided_rows(&mut out[o * q..], (b, q), k * q);
            let grad_rows =
                MatRef::strided(&grad[o * n + points.start..], (b, points.len()), (k * n, 1));
            gemm(
                dst,
                grad_rows,
                panel(panels, (k, q, n), o, points).t(),
                true,
                threads,
            )?;
        }
    }
    Ok(out)
}

impl CustomOp2 for PanelProduct {
    fn name(&self) -> &'static str {
        "panel-basis-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, k, q, n) = (self.name(), self.k, self.q, self.n);
        let b = l1.dims().first().copied().unwrap_or(0);
        check_dims(op, "branch", l1.dims(), &[b, k * q])?;
        check_dims(op, "panels", l2.dims(), &[checked_len(&[k, q, n])?])?;
        let sz = (b, k, q, n);
        let out = dispatch2(
            op,
            (s1, l1),
            (s2, l2),
            |br, pa| panel_forward(br, pa, sz),
            |br, pa| panel_forward(br, pa, sz),
        )?;
        Ok((out, Shape::from((b, k, n))))
    }

    fn bwd(
        &self,
        branch: &Tensor,
        panels: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (k, q, n) = (self.k, self.q, self.n);
        // The panels are a detached copy: only the branch can need a gradient.
        let d_branch = if branch.track_op() {
            Some(panels.apply_op2_no_bwd(&grad.contiguous()?, &PanelBranchGrad { k, q, n })?)
        } else {
            None
        };
        Ok((d_branch, None))
    }
}

impl CustomOp2 for PanelBranchGrad {
    fn name(&self) -> &'static str {
        "panel-basis-product-branch-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, k, q, n) = (self.name(), self.k, self.q, self.n);
        let b = l2.dims().first().copied().unwrap_or(0);
        check_dims(op, "panels", l1.dims(), &[checked_len(&[k, q, n])?])?;
        check_dims(op, "output gradient", l2.dims(), &[b, k, n])?;
        let sz = (b, k, q, n);
        let out = dispatch2(
            op,
            (s1, l1),
            (s2, l2),
            |pa, g| panel_branch_grad(pa, g, sz),
            |pa, g| panel_branch_grad(pa, g, sz),
        )?;
        Ok((out, Shape::from((b, k * q))))
    }
}

/// The forward op on `(branch [B, K·q], basis [K, q, N])`.
#[derive(Debug, Clone, Copy)]
struct BasisProduct {
    k: usize,
    q: usize,
}

/// `∂branch` from `(basis, ∂out)` (no backward: used inside the backward pass).
#[derive(Debug, Clone, Copy)]
struct BranchGrad {
    k: usize,
    q: usize,
}

/// `∂basis` from `(branch, ∂out)` (no backward: used inside the backward pass).
#[derive(Debug, Clone, Copy)]
struct BasisGrad {
    k: usize,
    q: usize,
}

/// The sizes `(B, K, q, N)` of one call.
type Sizes = (usize, usize, usize, usize);

/// Branch `k`'s coefficients, `[B, q]` (columns `k·q..` of the `[B, K·q]` branch).
fn coefficients<T>(branch: &[T], (b, k, q, _): Sizes, out: usize) -> MatRef<'_, T> {
    MatRef::strided(&branch[out * q..], (b, q), (k * q, 1))
}

/// Output `k`'s rows of a `[B, K, N]` tensor, `[B, N]`.
fn output_rows<T>(full: &[T], (b, k, _, n): Sizes, out: usize) -> MatRef<'_, T> {
    MatRef::strided(&full[out * n..], (b, n), (k * n, 1))
}

/// `out[b, k, :] = branch_k[b, :] · basis_k` for every output `k`.
fn forward<T: GemmScalar>(branch: &[T], basis: &[T], sz: Sizes) -> Result<Vec<T>> {
    let (b, k, q, n) = sz;
    let len = checked_len(&[b, k, n])?;
    if len == 0 {
        return Ok(Vec::new());
    }
    let threads = rayon::current_num_threads();
    let mut out: Vec<T> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    for o in 0..k {
        let dst = MatMut::uninit_strided_rows(&mut spare[o * n..], (b, n), k * n);
        let basis_k = MatRef::row_major(&basis[o * q * n..], q, n);
        gemm(dst, coefficients(branch, sz, o), basis_k, false, threads)?;
    }
    // SAFETY: the `K` products wrote every row `b` of every output `k`, i.e. all
    // `B·K·N` elements (`gemm` overwrites all of an uninitialised view).
    unsafe { out.set_len(len) };
    Ok(out)
}

/// `∂branch[b, k·q + i] = Σ_n ∂out[b, k, n]·basis[k, i, n]`, computed per output as the
/// transposed product `basis_k · ∂out_kᵀ` (`[q, B]`) and written transposed.
fn branch_grad<T: GemmScalar>(basis: &[T], grad: &[T], sz: Sizes) -> Result<Vec<T>> {
    let (b, k, q, n) = sz;
    let mut out = vec![T::default(); checked_len(&[b, k, q])?];
    if b == 0 || k == 0 || n == 0 {
        // No samples or outputs, or an empty sum at every entry.
        return Ok(out);
    }
    let threads = rayon::current_num_threads();
    let mut transposed: Vec<MaybeUninit<T>> = Vec::with_capacity(q * b);
    // SAFETY: `MaybeUninit` needs no initialisation.
    unsafe { transposed.set_len(q * b) };
    for o in 0..k {
        let basis_k = MatRef::row_major(&basis[o * q * n..], q, n);
        let grad_t = output_rows(grad, sz, o).t();
        gemm(
            MatMut::uninit(&mut transposed, q, b),
            basis_k,
            grad_t,
            false,
            threads,
        )?;
        for (i, row) in transposed.chunks_exact(b).enumerate() {
            for (s, v) in row.iter().enumerate() {
                // SAFETY: `gemm` wrote all `q × B` values.
                out[s * k * q + o * q + i] = unsafe { v.assume_init() };
            }
        }
    }
    Ok(out)
}

/// `∂basis[k, i, n] = Σ_b branch[b, k·q + i]·∂out[b, k, n]`: per output `branch_kᵀ · ∂out_k`.
fn basis_grad<T: GemmScalar>(branch: &[T], grad: &[T], sz: Sizes) -> Result<Vec<T>> {
    let (b, k, q, n) = sz;
    let len = checked_len(&[k, q, n])?;
    if b == 0 || len == 0 {
        // An empty sum over the batch at every entry.
        return Ok(vec![T::default(); len]);
    }
    let threads = rayon::current_num_threads();
    let mut out: Vec<T> = Vec::with_capacity(len);
    let spare = &mut out.spare_capacity_mut()[..len];
    for o in 0..k {
        let dst = MatMut::uninit(&mut spare[o * q * n..(o + 1) * q * n], q, n);
        let coeffs_t = coefficients(branch, sz, o).t();
        gemm(dst, coeffs_t, output_rows(grad, sz, o), false, threads)?;
    }
    // SAFETY: the `K` products overwrote their `q × N` blocks, which tile the buffer.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// The product of `dims`, or an error when it overflows.
fn checked_len(dims: &[usize]) -> Result<usize> {
    dims.iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| candle_core::Error::Msg(format!("basis_product: {dims:?} overflows")))
}

/// Checks `dims` against `expected`, naming the operand.
fn check_dims(op: &str, what: &str, dims: &[usize], expected: &[usize]) -> Result<()> {
    if dims != expected {
        candle_core::bail!("{op}: {what} is {dims:?}, expected {expected:?}");
    }
    Ok(())
}

impl CustomOp2 for BasisProduct {
    fn name(&self) -> &'static str {
        "basis-product"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, k, q) = (self.name(), self.k, self.q);
        let b = l1.dims().first().copied().unwrap_or(0);
        let n = l2.dims().last().copied().unwrap_or(0);
        check_dims(op, "branch", l1.dims(), &[b, k * q])?;
        check_dims(op, "basis", l2.dims(), &[k, q, n])?;
        let sz = (b, k, q, n);
        let out = dispatch2(
            op,
            (s1, l1),
            (s2, l2),
            |br, ba| forward(br, ba, sz),
            |br, ba| forward(br, ba, sz),
        )?;
        Ok((out, Shape::from((b, k, n))))
    }

    fn bwd(
        &self,
        branch: &Tensor,
        basis: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (k, q) = (self.k, self.q);
        // A constant operand (a cached trunk, or a branch of plain tensors) needs no
        // gradient: its product is skipped.
        let d_branch = if branch.track_op() {
            Some(basis.apply_op2_no_bwd(&grad, &BranchGrad { k, q })?)
        } else {
            None
        };
        let d_basis = if basis.track_op() {
            Some(branch.apply_op2_no_bwd(&grad, &BasisGrad { k, q })?)
        } else {
            None
        };
        Ok((d_branch, d_basis))
    }
}

impl CustomOp2 for BranchGrad {
    fn name(&self) -> &'static str {
        "basis-product-branch-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, k, q) = (self.name(), self.k, self.q);
        let n = l1.dims().last().copied().unwrap_or(0);
        let b = l2.dims().first().copied().unwrap_or(0);
        check_dims(op, "basis", l1.dims(), &[k, q, n])?;
        check_dims(op, "output gradient", l2.dims(), &[b, k, n])?;
        let sz = (b, k, q, n);
        let out = dispatch2(
            op,
            (s1, l1),
            (s2, l2),
            |ba, g| branch_grad(ba, g, sz),
            |ba, g| branch_grad(ba, g, sz),
        )?;
        Ok((out, Shape::from((b, k * q))))
    }
}

impl CustomOp2 for BasisGrad {
    fn name(&self) -> &'static str {
        "basis-product-basis-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (op, k, q) = (self.name(), self.k, self.q);
        let b = l1.dims().first().copied().unwrap_or(0);
        let n = l2.dims().last().copied().unwrap_or(0);
        check_dims(op, "branch", l1.dims(), &[b, k * q])?;
        check_dims(op, "output gradient", l2.dims(), &[b, k, n])?;
        let sz = (b, k, q, n);
        let out = dispatch2(
            op,
            (s1, l1),
            (s2, l2),
            |br, g| basis_grad(br, g, sz),
            |br, g| basis_grad(br, g, sz),
        )?;
        Ok((out, Shape::from((k, q, n))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::ops::composite_only;
    use candle_core::{DType, Device, Var};

    fn random(shape: &[usize], seed: f64) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f64> = (0..n).map(|i| ((i as f64 + seed) * 0.917).sin()).collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn composite(branch: &Tensor, basis: &Tensor) -> Result<Tensor> {
        let _guard = composite_only();
        basis_product(branch, basis)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar()
    }

    /// The bits of a tensor, flattened.
    fn bits(t: &Tensor) -> Result<Vec<u32>> {
        Ok(t.flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    }

    #[test]
    fn values_and_gradients_are_candles_bit_for_bit() -> Result<()> {
        // The claim the training runs rest on: the same `gemm` calls as candle's, so the
        // same sums. DeepONet's proportions (q above 64, a long inner dimension), smaller.
        for (b, k, q, n) in [(4, 2, 80, 600), (3, 2, 5, 70), (32, 2, 128, 300)] {
            let branch = Var::from_tensor(&random(&[b, k * q], 0.5)?.to_dtype(DType::F32)?)?;
            let basis = Var::from_tensor(&random(&[k, q, n], 2.0)?.to_dtype(DType::F32)?)?;
            let r = random(&[b, k, n], 7.0)?.to_dtype(DType::F32)?;
            let fused = basis_product(branch.as_tensor(), basis.as_tensor())?;
            let reference = composite(branch.as_tensor(), basis.as_tensor())?;
            assert_eq!(bits(&fused)?, bits(&reference)?, "forward {b}×{k}·{q}→{n}");
            let g_fused = (fused * &r)?.sum_all()?.backward()?;
            let g_ref = (reference * &r)?.sum_all()?.backward()?;
            let grad = |g: &candle_core::backprop::GradStore, v: &Var| -> Result<Vec<u32>> {
                bits(
                    g.get(v.as_tensor())
                        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?,
                )
            };
            assert_eq!(grad(&g_fused, &basis)?, grad(&g_ref, &basis)?, "∂basis");
            // `∂branch` is computed transposed: the same sums wherever the `gemm` crate
            // takes both orientations, which is every CPU where the dot-product kernel is
            // not preferred (it would take the transposed one at small batches).
            if !crate::cpu::row_dot::kernel_preferred() {
                assert_eq!(grad(&g_fused, &branch)?, grad(&g_ref, &branch)?, "∂branch");
            }
        }
        Ok(())
    }

    #[test]
    fn matches_the_candle_formula_forward_and_backward() -> Result<()> {
        // DeepONet-like proportions, small: 3 samples, 2 outputs of 5 functions, 70 points.
        for dtype in [DType::F64, DType::F32] {
            let branch = Var::from_tensor(&random(&[3, 10], 0.5)?.to_dtype(dtype)?)?;
            let basis = Var::from_tensor(&random(&[2, 5, 70], 2.0)?.to_dtype(dtype)?)?;
            let r = random(&[3, 2, 70], 7.0)?.to_dtype(dtype)?;
            let fused = basis_product(branch.as_tensor(), basis.as_tensor())?;
            let reference = composite(branch.as_tensor(), basis.as_tensor())?;
            let tol = if dtype == DType::F64 { 1e-12 } else { 1e-5 };
            assert!(max_abs_diff(&fused, &reference)? < tol);
            let g_fused = (fused * &r)?.sum_all()?.backward()?;
            let g_ref = (reference * &r)?.sum_all()?.backward()?;
            for v in [&branch, &basis] {
                let (a, b) = (g_fused.get(v.as_tensor()), g_ref.get(v.as_tensor()));
                let (Some(a), Some(b)) = (a, b) else {
                    candle_core::bail!("missing gradient");
                };
                assert!(max_abs_diff(a, b)? < tol, "{dtype:?}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let branch = Var::from_tensor(&random(&[2, 6], 0.1)?)?;
        let basis = Var::from_tensor(&random(&[3, 2, 9], 4.0)?)?;
        let r = random(&[2, 3, 9], 9.0)?;
        let (br, ba) = (branch.clone(), basis.clone());
        let report = check_gradients(
            move || (basis_product(br.as_tensor(), ba.as_tensor())? * &r)?.sum_all(),
            &[branch, basis],
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    #[test]
    fn a_constant_basis_gets_no_gradient_and_a_strided_branch_is_accepted() -> Result<()> {
        let branch = Var::from_tensor(&random(&[3, 4], 0.3)?)?;
        let basis = random(&[1, 4, 6], 1.0)?;
        // The branch given as a transposed view of a `[K·q, B]` matrix.
        let strided = branch.as_tensor().t()?.contiguous()?.t()?;
        let out = basis_product(&strided, &basis)?;
        let grads = out.sum_all()?.backward()?;
        assert!(grads.get(&basis).is_none());
        assert!(grads.get(branch.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn result_does_not_depend_on_the_thread_count() -> Result<()> {
        let branch = Var::from_tensor(&random(&[33, 256], 0.2)?.to_dtype(DType::F32)?)?;
        let basis = Var::from_tensor(&random(&[2, 128, 3000], 1.7)?.to_dtype(DType::F32)?)?;
        let r = random(&[33, 2, 3000], 5.0)?.to_dtype(DType::F32)?;
        let run = |threads: usize| -> Result<Vec<Vec<f32>>> {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
            pool.install(|| {
                let out = basis_product(branch.as_tensor(), basis.as_tensor())?;
                let grads = (&out * &r)?.sum_all()?.backward()?;
                let mut all = vec![out.flatten_all()?.to_vec1()?];
                for v in [&branch, &basis] {
                    let g = grads
                        .get(v.as_tensor())
                        .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
                    all.push(g.flatten_all()?.to_vec1()?);
                }
                Ok(all)
            })
        };
        let (one, three) = (run(1)?, run(3)?);
        for (a, b) in one.iter().zip(&three) {
            assert!(a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits()));
        }
        Ok(())
    }

    #[test]
    fn an_empty_batch_has_an_empty_output_and_zero_basis_gradient() -> Result<()> {
        let branch = Var::from_tensor(&random(&[0, 6], 0.0)?)?;
        let basis = Var::from_tensor(&random(&[2, 3, 5], 0.0)?)?;
        let out = basis_product(branch.as_tensor(), basis.as_tensor())?;
        assert_eq!(out.dims(), &[0, 2, 5]);
        let grads = out.sum_all()?.backward()?;
        let g = grads
            .get(basis.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))?;
        assert_eq!(g.dims(), &[2, 3, 5]);
        assert_eq!(g.abs()?.sum_all()?.to_scalar::<f64>()?, 0.0);
        Ok(())
    }

    /// Sizes that reach every case of the panels: one panel (`N` below two panels' worth),
    /// a remainder in the last panel, exact panels, one sample (the `gemm` crate's
    /// matrix-vector path), more than 64 samples, and more than 512 basis functions (where
    /// the crate's small-matrix path would cut the inner dimension differently).
    const PANEL_SIZES: [(usize, usize, usize, usize); 8] = [
        (3, 2, 5, 70),
        (1, 2, 70, 300),
        (4, 1, 9, 256),
        (5, 2, 16, 257),
        (32, 2, 40, 383),
        (2, 2, 600, 260),
        (66, 1, 20, 300),
        (1, 3, 33, 1),
    ];

    #[test]
    fn panels_give_the_bits_of_the_whole_width_product_on_any_thread_count() -> Result<()> {
        for dtype in [DType::F32, DType::F64] {
            for (b, k, q, n) in PANEL_SIZES {
                let branch = random(&[b, k * q], 0.5)?.to_dtype(dtype)?;
                let basis = random(&[k, q, n], 2.0)?.to_dtype(dtype)?;
                let whole = basis_product(&branch, &basis)?;
                let panels = PanelBasis::new(&basis)?;
                assert_eq!(panels.dims(), (k, q, n));
                let expected = bits64(&whole)?;
                for threads in [1, 3] {
                    let pool = rayon::ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .build()
                        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
                    let out = pool.install(|| panels.product(&branch))?;
                    assert_eq!(out.dims(), &[b, k, n]);
                    assert_eq!(
                        bits64(&out)?,
                        expected,
                        "{dtype:?} {b}×{k}·{q}→{n}, {threads} threads"
                    );
                }
            }
        }
        Ok(())
    }

    /// The bits of a tensor, flattened, as `f64` (exact for `f32` values).
    fn bits64(t: &Tensor) -> Result<Vec<u64>> {
        Ok(t.flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .iter()
            .map(|v| v.to_bits())
            .collect())
    }

    #[test]
    fn panels_lay_out_again_to_the_same_basis() -> Result<()> {
        for (_, k, q, n) in PANEL_SIZES {
            let basis = random(&[k, q, n], 1.3)?.to_dtype(DType::F32)?;
            let again = PanelBasis::new(&basis)?.basis()?;
            assert_eq!(again.dims(), basis.dims());
            assert_eq!(bits64(&again)?, bits64(&basis)?);
        }
        Ok(())
    }

    #[test]
    fn panel_branch_gradient_matches_finite_differences_and_the_whole_width_one() -> Result<()> {
        // Two panels with a remainder, so the gradient sums over panels.
        let branch = Var::from_tensor(&random(&[2, 6], 0.1)?)?;
        let basis = random(&[3, 2, 300], 4.0)?;
        let r = random(&[2, 3, 300], 9.0)?;
        let panels = PanelBasis::new(&basis)?;
        let (br, pa, rr) = (branch.clone(), panels.clone(), r.clone());
        let report = check_gradients(
            move || (pa.product(br.as_tensor())? * &rr)?.sum_all(),
            std::slice::from_ref(&branch),
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
        let grad_of = |out: Tensor| -> Result<Tensor> {
            let grads = (out * &r)?.sum_all()?.backward()?;
            grads
                .get(branch.as_tensor())
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg("no gradient".into()))
        };
        let from_panels = grad_of(panels.product(branch.as_tensor())?)?;
        let whole = grad_of(basis_product(branch.as_tensor(), &basis)?)?;
        assert!(max_abs_diff(&from_panels, &whole)? < 1e-12);
        Ok(())
    }

    #[test]
    fn panels_on_the_composite_path_give_candles_formula() -> Result<()> {
        let branch = random(&[3, 10], 0.5)?;
        let basis = random(&[2, 5, 300], 2.0)?;
        let panels = PanelBasis::new(&basis)?;
        let fused = panels.product(&branch)?;
        let composite = {
            let _guard = composite_only();
            panels.product(&branch)?
        };
        assert!(max_abs_diff(&fused, &composite)? < 1e-12);
        // Built on the composite path, the basis is kept as it is.
        let kept = {
            let _guard = composite_only();
            PanelBasis::new(&basis)?
        };
        assert!(max_abs_diff(&kept.product(&branch)?, &fused)? < 1e-12);
        Ok(())
    }

    #[test]
    fn panels_take_an_empty_batch_and_refuse_a_branch_of_the_wrong_width() -> Result<()> {
        let panels = PanelBasis::new(&random(&[2, 3, 300], 0.0)?)?;
        assert_eq!(panels.product(&random(&[0, 6], 0.0)?)?.dims(), &[0, 2, 300]);
        let e = panels
            .product(&random(&[2, 7], 0.0)?)
            .unwrap_err()
            .to_string();
        assert!(e.contains("branch width 7"), "{e}");
        assert!(PanelBasis::new(&random(&[6, 300], 0.0)?).is_err());
        Ok(())
    }

    #[test]
    fn a_branch_of_the_wrong_width_is_an_error() -> Result<()> {
        let e = basis_product(&random(&[2, 7], 0.0)?, &random(&[2, 3, 5], 0.0)?)
            .unwrap_err()
            .to_string();
        assert!(e.contains("branch width 7"), "{e}");
        Ok(())
    }
}
