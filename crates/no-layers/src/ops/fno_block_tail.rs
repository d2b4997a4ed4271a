//! The point-wise part of an FNO block as one fused CPU op, forward and backward.
//!
//! After its spectral convolution `s = K(x)`, neuraloperator's FNO block (and LocalNO's,
//! where `s` also holds the local kernels) is point-wise in space:
//!
//! ```text
//! u = s + W_skip·x                 (linear skip, no bias)
//! a = gelu(u)                      (or u: `inner_activation` off)
//! h = gelu(W1·a + b1)              (channel MLP, hidden width H)
//! z = W2·h + b2 + g ⊙ x            (soft-gating skip of the block input, no bias)
//! y = gelu(z)                      (or z: `outer_activation` off)
//! ```
//!
//! Written with candle ops that is eleven nodes, each a full pass over a `[B, C, N]`
//! tensor (41 MB for the study's batch of 32) with a fresh allocation, and a backward of
//! twice that. Here the points are cut into fixed tiles of [`TILE`] points of one sample;
//! a tile's `C × TILE` values stay in cache through all five lines, so the op reads `x`
//! and `s` once and writes `y` once. The backward recomputes the tile's forward (three
//! small products, cheaper than storing four intermediates of the tensor's size) and runs
//! the chain rule back through it in cache: it reads `x`, `s` and the output gradient once
//! and writes `∂x` and `∂s` once.
//!
//! The weights travel as one flat vector `[W_skip | W1 | b1 | W2 | b2 | g]` (see
//! [`BlockTailWeights::flat`]; candle's concatenation splits its gradient back). Weight
//! gradients are summed per group of [`TILES_PER_GROUP`] tiles in a fixed order and the
//! groups' partial sums are added in order, so results do not depend on the thread count.
//! `f32` and `f64` on the CPU: [`fno_block_tail`] decides with [`crate::ops::fused_cpu`]
//! and runs [`fno_block_tail_composite`] (the same function from candle ops, the op's
//! specification) everywhere else.

use crate::cpu::gemm_view::{gemm, MatMut, MatRef};
use crate::cpu::lane_sum::lane_dot;
use crate::cpu::map::contiguous;
use crate::cpu::point_tiles::{
    add_assign, add_or_set, as_uninit, mul_into, sum_in_order, tile_view, tiles, PointScalar,
    SharedRows,
};
pub use crate::cpu::point_tiles::{TILE, TILES_PER_GROUP};
use crate::cpu::scratch::PoolBuf;
use crate::layers::mlp::pointwise_linear;
use crate::ops::channel_affine::scale_channels;
use crate::ops::channel_mlp::{Mlp, MlpScratch, MlpWeights};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// The weights of the point-wise part of an FNO block.
#[derive(Debug, Clone)]
pub struct BlockTailWeights {
    /// Linear skip `[C, C]` (or `[C, C, 1]`).
    pub skip: Tensor,
    /// First channel-MLP layer `[H, C]` (or `[H, C, 1]`).
    pub w1: Tensor,
    /// Its bias `[H]`.
    pub b1: Tensor,
    /// Second channel-MLP layer `[C, H]` (or `[C, H, 1]`).
    pub w2: Tensor,
    /// Its bias `[C]`.
    pub b2: Tensor,
    /// Soft-gating weight, `C` values in any shape (`[1, C, 1, 1]` in neuraloperator).
    pub gate: Tensor,
}

impl BlockTailWeights {
    /// `(C, H)`, checking that the shapes agree.
    pub fn sizes(&self) -> Result<(usize, usize)> {
        let h = self.w1.dim(0)?;
        let c = self.skip.dim(0)?;
        let fits = self.skip.elem_count() == c * c
            && self.w1.elem_count() == h * c
            && self.b1.elem_count() == h
            && self.w2.dim(0)? == c
            && self.w2.elem_count() == c * h
            && self.b2.elem_count() == c
            && self.gate.elem_count() == c;
        if !fits {
            candle_core::bail!(
                "fno block tail: weights do not fit C = {c}, H = {h}: skip {:?}, w1 {:?}, b1 {:?}, w2 {:?}, b2 {:?}, gate {:?} (expected [C, C], [H, C], [H], [C, H], [C], C values)",
                self.skip.dims(),
                self.w1.dims(),
                self.b1.dims(),
                self.w2.dims(),
                self.b2.dims(),
                self.gate.dims()
            );
        }
        Ok((c, h))
    }

    /// The flat vector `[W_skip | W1 | b1 | W2 | b2 | g]` the op reads.
    pub fn flat(&self) -> Result<Tensor> {
        let parts = [
            &self.skip, &self.w1, &self.b1, &self.w2, &self.b2, &self.gate,
        ]
        .into_iter()
        .map(|t| t.flatten_all())
        .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&parts, 0)
    }
}

/// The point-wise part of an FNO block (module docs) for the block input `x` `[B, C, …]`
/// and the spectral output `s` (same shape): one fused op where [`crate::ops::fused_cpu`]
/// allows it, [`fno_block_tail_composite`] elsewhere.
pub fn fno_block_tail(
    x: &Tensor,
    s: &Tensor,
    weights: &BlockTailWeights,
    inner_activation: bool,
    outer_activation: bool,
) -> Result<Tensor> {
    let (c, h) = weights.sizes()?;
    if x.dims() != s.dims() || x.rank() < 2 || x.dim(1)? != c {
        candle_core::bail!(
            "fno block tail: input {:?} and spectral output {:?} must both be [B, {c}, …]",
            x.dims(),
            s.dims()
        );
    }
    let w = weights;
    if !crate::ops::fused_cpu(&[x, s, &w.skip, &w.w1, &w.b1, &w.w2, &w.b2, &w.gate]) {
        return fno_block_tail_composite(x, s, weights, inner_activation, outer_activation);
    }
    let op = BlockTail {
        c,
        h,
        inner: inner_activation,
        outer: outer_activation,
    };
    x.contiguous()?
        .apply_op3(&s.contiguous()?, &weights.flat()?, op)
}

/// The same function as [`fno_block_tail`] from separate candle ops: the fused op's
/// specification and what every other device runs. The operations are those of the
/// block's separate layers (linear skip, GELU, two-layer channel MLP, soft gate), in
/// their order, so the result is theirs to the bit.
pub fn fno_block_tail_composite(
    x: &Tensor,
    s: &Tensor,
    w: &BlockTailWeights,
    inner_activation: bool,
    outer_activation: bool,
) -> Result<Tensor> {
    let u = (s + pointwise_linear(x, &w.skip, None)?)?;
    let a = if inner_activation {
        crate::ops::gelu::gelu(&u)?
    } else {
        u
    };
    let hid = crate::ops::gelu::gelu(&pointwise_linear(&a, &w.w1, Some(&w.b1))?)?;
    let z = (pointwise_linear(&hid, &w.w2, Some(&w.b2))? + scale_channels(x, &w.gate)?)?;
    if outer_activation {
        crate::ops::gelu::gelu(&z)
    } else {
        Ok(z)
    }
}

/// The op: sizes and which activations are on.
#[derive(Debug, Clone, Copy)]
struct BlockTail {
    c: usize,
    h: usize,
    inner: bool,
    outer: bool,
}

/// The backward's input-side products: `∂x` and `∂s`, then the flat weight gradient.
struct Grads<T> {
    dx: Vec<T>,
    ds: Vec<T>,
    dw: Vec<T>,
}

impl BlockTail {
    /// The channel MLP inside the block (`C → H → C`).
    fn mlp(&self) -> Mlp {
        Mlp {
            ci: self.c,
            h: self.h,
            co: self.c,
        }
    }

    fn n_params(&self) -> usize {
        self.c * self.c + self.mlp().n_params() + self.c
    }

    /// `(B, N)` of a contiguous `[B, C, …]` layout.
    fn batch_points(&self, l: &Layout) -> Result<(usize, usize)> {
        let dims = l.dims();
        if dims.len() < 2 || dims[1] != self.c {
            candle_core::bail!("fno block tail: expected [B, {}, …], got {dims:?}", self.c);
        }
        Ok((dims[0], dims[2..].iter().product()))
    }

    /// The weights inside the flat vector `[W_skip | MLP | g]`.
    fn split<'a, T>(&self, p: &'a [T]) -> Result<Weights<'a, T>> {
        if p.len() != self.n_params() {
            candle_core::bail!(
                "fno block tail: {} weights for C = {}, H = {}, expected {}",
                p.len(),
                self.c,
                self.h,
                self.n_params()
            );
        }
        let (skip, rest) = p.split_at(self.c * self.c);
        let (mlp, gate) = rest.split_at(self.mlp().n_params());
        Ok(Weights {
            skip,
            mlp: self.mlp().split(mlp)?,
            gate,
        })
    }
}

/// The weights inside the flat vector.
struct Weights<'a, T> {
    skip: &'a [T],
    mlp: MlpWeights<'a, T>,
    gate: &'a [T],
}

/// The forward's intermediates for one tile, recomputed by the backward (the MLP's
/// hidden layer lives in its scratch).
struct TileForward<T: PointScalar> {
    u: PoolBuf<T>,
    a: PoolBuf<T>,
    z: PoolBuf<T>,
    mlp: MlpScratch<T>,
}

impl<T: PointScalar> TileForward<T> {
    fn new(op: &BlockTail) -> Self {
        let v = || PoolBuf::new(op.c * TILE);
        Self {
            u: v(),
            a: v(),
            z: v(),
            mlp: MlpScratch::new(&op.mlp()),
        }
    }

    /// Runs the five lines of the module docs on a tile (`z` holds the pre-activation).
    /// `for_backward` leaves the inner activation's and the MLP's derivatives in place of
    /// their pre-activations (`u` holds `gelu'(u)` when the inner activation is on).
    fn run(
        &mut self,
        op: &BlockTail,
        w: &Weights<T>,
        (x, s): (MatRef<T>, MatRef<T>),
        len: usize,
        for_backward: bool,
    ) -> Result<()> {
        let c = op.c;
        let (u, a) = (&mut self.u[..c * len], &mut self.a[..c * len]);
        gemm(
            MatMut::row_major(u, c, len),
            MatRef::row_major(w.skip, c, c),
            x,
            false,
            1,
        )?;
        // `u = W_skip·x + s`: the spectral term is added where the activation reads `u`
        // (no separate copy of `s` into the tile).
        for ((ur, ar), ch) in u
            .chunks_exact_mut(len)
            .zip(a.chunks_exact_mut(len))
            .zip(0..c)
        {
            let sr = s.row(ch);
            match (op.inner, for_backward) {
                (true, true) => T::gelu_with_derivative_of_sum(ur, sr, as_uninit(ar)),
                (true, false) => T::gelu_of_sum(ur, sr, as_uninit(ar)),
                (false, _) => {
                    add_assign(ur, sr);
                    ar.copy_from_slice(ur);
                }
            }
        }
        let mlp = op.mlp();
        let a = MatRef::row_major(a, c, len);
        mlp.hidden(&w.mlp, a, len, &mut self.mlp, for_backward)?;
        // `z = g ⊙ x + b2` in one pass, then `+= W2·hid`.
        let z = &mut self.z[..c * len];
        for (((row, &g), &b2), ch) in z
            .chunks_exact_mut(len)
            .zip(w.gate)
            .zip(w.mlp.b2())
            .zip(0..c)
        {
            for (v, &xv) in row.iter_mut().zip(x.row(ch)) {
                *v = g * xv + b2;
            }
        }
        mlp.add_product(&w.mlp, &self.mlp, len, z)
    }
}

/// Forward on slices.
fn forward<T: PointScalar>(
    op: &BlockTail,
    x: &[T],
    s: &[T],
    p: &[T],
    (b, n): (usize, usize),
) -> Result<Vec<T>> {
    let w = op.split(p)?;
    let c = op.c;
    let total = b * c * n;
    let mut out: Vec<T> = Vec::with_capacity(total);
    let rows = SharedRows::new(&mut out.spare_capacity_mut()[..total]);
    tiles(b, n).par_chunks(1).try_for_each_init(
        || TileForward::new(op),
        |fw, group| {
            for &t in group {
                let views = (tile_view(x, t, c, n), tile_view(s, t, c, n));
                fw.run(op, &w, views, t.len, false)?;
                let z = &fw.z[..c * t.len];
                if op.outer {
                    // The activation writes straight into the output rows.
                    for (ch, zr) in z.chunks_exact(t.len).enumerate() {
                        rows.fill_row((t, ch), (c, n), |dst| T::gelu(zr, dst));
                    }
                } else {
                    rows.write_tile(t, c, n, z);
                }
            }
            Ok::<(), candle_core::Error>(())
        },
    )?;
    // SAFETY: the tiles partition every `(b, c, p)` of the buffer and each wrote its rows.
    unsafe { out.set_len(total) };
    Ok(out)
}

/// Backward on slices: `∂x`, `∂s` and the flat weight gradient.
fn backward<T: PointScalar>(
    op: &BlockTail,
    (x, s, p, g): (&[T], &[T], &[T], &[T]),
    (b, n): (usize, usize),
) -> Result<Grads<T>> {
    let w = op.split(p)?;
    let c = op.c;
    let total = b * c * n;
    let mut dx: Vec<T> = Vec::with_capacity(total);
    let mut ds: Vec<T> = Vec::with_capacity(total);
    let dx_rows = SharedRows::new(&mut dx.spare_capacity_mut()[..total]);
    let ds_rows = SharedRows::new(&mut ds.spare_capacity_mut()[..total]);
    let partials: Vec<Vec<T>> = tiles(b, n)
        .par_chunks(TILES_PER_GROUP)
        .map_init(
            || (TileForward::new(op), TileBackward::new(op)),
            |(fw, bw), group| {
                let mut dw = vec![T::default(); op.n_params()];
                for (i, &t) in group.iter().enumerate() {
                    let views = (tile_view(x, t, c, n), tile_view(s, t, c, n));
                    fw.run(op, &w, views, t.len, true)?;
                    let grad = tile_view(g, t, c, n);
                    bw.run(op, &w, fw, (views.0, grad), t.len, (&mut dw, i > 0))?;
                    dx_rows.write_tile(t, c, n, &bw.dx[..c * t.len]);
                    ds_rows.write_tile(t, c, n, &bw.du[..c * t.len]);
                }
                Ok(dw)
            },
        )
        .collect::<Result<_>>()?;
    // SAFETY: the tiles partition every `(b, c, p)` of both buffers and each wrote its rows.
    unsafe {
        dx.set_len(total);
        ds.set_len(total);
    }
    let dw = sum_in_order(&partials, op.n_params());
    Ok(Grads { dx, ds, dw })
}

/// Per-tile buffers of the backward (the MLP's are in the forward's scratch).
struct TileBackward<T: PointScalar> {
    dz: PoolBuf<T>,
    du: PoolBuf<T>,
    dx: PoolBuf<T>,
}

impl<T: PointScalar> TileBackward<T> {
    fn new(op: &BlockTail) -> Self {
        let v = || PoolBuf::new(op.c * TILE);
        Self {
            dz: v(),
            du: v(),
            dx: v(),
        }
    }

    /// The chain rule back through one tile whose forward is in `fw`; weight gradients go
    /// into `dw` (added to it when `accumulate`, written otherwise).
    fn run(
        &mut self,
        op: &BlockTail,
        w: &Weights<T>,
        fw: &mut TileForward<T>,
        (x, g): (MatRef<T>, MatRef<T>),
        len: usize,
        (dw, accumulate): (&mut [T], bool),
    ) -> Result<()> {
        let c = op.c;
        let mlp = op.mlp();
        let (d_skip, rest) = dw.split_at_mut(c * c);
        let (d_mlp, d_gate) = rest.split_at_mut(mlp.n_params());
        // z → ∂z, and the gate's gradient Σ ∂z·x.
        let dz = &mut self.dz[..c * len];
        for (ch, row) in dz.chunks_exact_mut(len).enumerate() {
            if op.outer {
                T::gelu_grad(&fw.z[ch * len..(ch + 1) * len], g.row(ch), as_uninit(row));
            } else {
                row.copy_from_slice(g.row(ch));
            }
            let sum = lane_dot(row, x.row(ch));
            add_or_set(&mut d_gate[ch], sum, accumulate);
        }
        // Through the channel MLP: ∂a lands in the MLP scratch's `dx`.
        let a = MatRef::row_major(&fw.a[..c * len], c, len);
        let dz = MatRef::row_major(&self.dz[..c * len], c, len);
        mlp.backward_tile(&w.mlp, (a, dz), len, &mut fw.mlp, (d_mlp, accumulate))?;
        let du = &mut self.du[..c * len];
        let da = &fw.mlp.dx[..c * len];
        if op.inner {
            // `u` holds `gelu'(u)` (recomputed for the backward).
            mul_into(&fw.u[..c * len], da, du);
        } else {
            du.copy_from_slice(da);
        }
        let du = MatRef::row_major(&self.du[..c * len], c, len);
        gemm(MatMut::row_major(d_skip, c, c), du, x.t(), accumulate, 1)?;
        // ∂x = W_skipᵀ·∂u + g ⊙ ∂z.
        let dx = &mut self.dx[..c * len];
        for ((row, dzr), &gv) in dx
            .chunks_exact_mut(len)
            .zip(self.dz.chunks_exact(len))
            .zip(w.gate)
        {
            for (d, &v) in row.iter_mut().zip(dzr) {
                *d = v * gv;
            }
        }
        gemm(
            MatMut::row_major(dx, c, len),
            MatRef::row_major(w.skip, c, c).t(),
            du,
            true,
            1,
        )
    }
}

impl CustomOp3 for BlockTail {
    fn name(&self) -> &'static str {
        "fno-block-tail"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        s: &CpuStorage,
        sl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bn = self.batch_points(xl)?;
        if xl.dims() != sl.dims() {
            candle_core::bail!(
                "fno block tail: x {:?} and s {:?} differ",
                xl.dims(),
                sl.dims()
            );
        }
        let name = self.name();
        let out = match (x, s, p) {
            (CpuStorage::F32(x), CpuStorage::F32(s), CpuStorage::F32(p)) => {
                CpuStorage::F32(forward(
                    self,
                    contiguous(name, x, xl)?,
                    contiguous(name, s, sl)?,
                    contiguous(name, p, pl)?,
                    bn,
                )?)
            }
            (CpuStorage::F64(x), CpuStorage::F64(s), CpuStorage::F64(p)) => {
                CpuStorage::F64(forward(
                    self,
                    contiguous(name, x, xl)?,
                    contiguous(name, s, sl)?,
                    contiguous(name, p, pl)?,
                    bn,
                )?)
            }
            _ => candle_core::bail!(
                "{name}: expected f32 or f64 storages of one dtype, got {:?}, {:?}, {:?}",
                x.dtype(),
                s.dtype(),
                p.dtype()
            ),
        };
        Ok((out, xl.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        s: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ss, sl) = s.storage_and_layout();
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let bn = self.batch_points(xl)?;
        let name = self.name();
        macro_rules! run {
            ($x:expr, $s:expr, $p:expr, $g:expr) => {{
                let slices = (
                    contiguous(name, $x, xl)?,
                    contiguous(name, $s, sl)?,
                    contiguous(name, $p, pl)?,
                    contiguous(name, $g, gl)?,
                );
                let r = backward(self, slices, bn)?;
                let dev = x.device();
                (
                    Tensor::from_vec(r.dx, xl.shape(), dev)?,
                    Tensor::from_vec(r.ds, xl.shape(), dev)?,
                    Tensor::from_vec(r.dw, pl.shape(), dev)?,
                )
            }};
        }
        let (dx, ds, dw) = match (&*xs, &*ss, &*ps, &*gs) {
            (
                Storage::Cpu(CpuStorage::F32(x)),
                Storage::Cpu(CpuStorage::F32(s)),
                Storage::Cpu(CpuStorage::F32(p)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => run!(x, s, p, g),
            (
                Storage::Cpu(CpuStorage::F64(x)),
                Storage::Cpu(CpuStorage::F64(s)),
                Storage::Cpu(CpuStorage::F64(p)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => run!(x, s, p, g),
            _ => candle_core::bail!(
                "{name}: backward expects CPU f32 or f64 tensors of one dtype, got {:?} on {:?}",
                x.dtype(),
                x.device().location()
            ),
        };
        Ok((Some(dx), Some(ds), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::single_threaded;
    use crate::cpu::point_tiles::output_and_gradients;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use crate::ops::composite_only;
    use candle_core::{DType, Device, Var};

    /// `x`, `s` and the six weights as variables of `dtype`.
    fn setup(shape: &[usize], h: usize, dtype: DType, seed: u64) -> Result<(Var, Var, Vec<Var>)> {
        let c = shape[1];
        let var = |s: &[usize], k: u64| -> Result<Var> {
            let t = random_like(&Tensor::zeros(s, DType::F64, &Device::Cpu)?, seed * 10 + k)?;
            Var::from_tensor(&t.to_dtype(dtype)?)
        };
        let weights = vec![
            var(&[c, c, 1], 2)?,
            var(&[h, c, 1], 3)?,
            var(&[h], 4)?,
            var(&[c, h, 1], 5)?,
            var(&[c], 6)?,
            var(&[1, c, 1], 7)?,
        ];
        Ok((var(shape, 0)?, var(shape, 1)?, weights))
    }

    fn tail_weights(w: &[Var]) -> BlockTailWeights {
        BlockTailWeights {
            skip: w[0].as_tensor().clone(),
            w1: w[1].as_tensor().clone(),
            b1: w[2].as_tensor().clone(),
            w2: w[3].as_tensor().clone(),
            b2: w[4].as_tensor().clone(),
            gate: w[5].as_tensor().clone(),
        }
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    }

    /// Values and every gradient of the fused op equal the composite form's (forced with
    /// [`composite_only`]), for all four activation settings, in f32 and f64, on odd and
    /// non-square grids inside one tile and on ones spread over several tiles and groups
    /// (with a partial last tile and group), 1-D and 2-D.
    #[test]
    fn equals_the_composite_form_with_all_gradients() -> Result<()> {
        let shapes: [(&[usize], usize); 4] = [
            (&[2, 3, 5, 7], 2),
            (&[3, 4, 2 * TILE + 37], 2),
            (&[1, 5, 9, 4], 3),
            (&[2, 2, 3, TILE + 1], 5),
        ];
        for dtype in [DType::F64, DType::F32] {
            let (tol_y, tol_g) = if dtype == DType::F64 {
                (1e-13, 1e-12)
            } else {
                (1e-5, 1e-4)
            };
            for (k, (shape, h)) in shapes.into_iter().enumerate() {
                for (inner, outer) in [(true, true), (true, false), (false, true), (false, false)] {
                    let (x, s, w) = setup(shape, h, dtype, k as u64)?;
                    let tw = tail_weights(&w);
                    assert!(crate::ops::fused_cpu(&[x.as_tensor()]));
                    let y = fno_block_tail(x.as_tensor(), s.as_tensor(), &tw, inner, outer)?;
                    let y_ref = {
                        let _g = composite_only();
                        fno_block_tail(x.as_tensor(), s.as_tensor(), &tw, inner, outer)?
                    };
                    let explicit =
                        fno_block_tail_composite(x.as_tensor(), s.as_tensor(), &tw, inner, outer)?;
                    let scale = 1.0 + max_diff(&y_ref, &y_ref.zeros_like()?)?;
                    assert!(
                        max_diff(&y, &y_ref)? < tol_y * scale,
                        "{dtype:?} {shape:?} {inner} {outer}"
                    );
                    assert!(max_diff(&explicit, &y_ref)? < tol_y * scale);
                    let r = random_like(&y, 77)?.to_dtype(dtype)?;
                    let g = (y * &r)?.sum_all()?.backward()?;
                    let g_ref = {
                        let _g = composite_only();
                        (y_ref * &r)?.sum_all()?.backward()?
                    };
                    for (i, v) in [&x, &s].into_iter().chain(&w).enumerate() {
                        let (a, b) = match (g.get(v), g_ref.get(v)) {
                            (Some(a), Some(b)) => (a, b),
                            _ => panic!("variable {i} has no gradient"),
                        };
                        let scale = 1.0 + max_diff(b, &b.zeros_like()?)?;
                        assert!(
                            max_diff(a, b)? < tol_g * scale,
                            "{dtype:?} {shape:?} {inner} {outer}: variable {i}"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let (x, s, w) = setup(&[2, 3, 4, 3], 2, DType::F64, 5)?;
        let vars: Vec<Var> = [x.clone(), s.clone()]
            .into_iter()
            .chain(w.clone())
            .collect();
        let f = move || fno_block_tail(x.as_tensor(), s.as_tensor(), &tail_weights(&w), true, true);
        let report = check_gradients(f, &vars, &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    #[test]
    fn result_and_gradients_do_not_depend_on_the_thread_count() -> Result<()> {
        let (x, s, w) = setup(&[3, 4, 3 * TILE * TILES_PER_GROUP + 5], 3, DType::F32, 8)?;
        let run = || -> Result<Vec<Vec<f32>>> {
            let y = fno_block_tail(x.as_tensor(), s.as_tensor(), &tail_weights(&w), true, true)?;
            let vars: Vec<&Var> = [&x, &s].into_iter().chain(&w).collect();
            output_and_gradients(&y, &vars)
        };
        assert_eq!(single_threaded(run)?, run()?);
        Ok(())
    }

    #[test]
    fn mismatched_shapes_and_devices_are_errors() -> Result<()> {
        let (x, s, w) = setup(&[2, 3, 5], 2, DType::F32, 1)?;
        let tw = tail_weights(&w);
        let short = s.as_tensor().narrow(2, 0, 4)?;
        assert!(fno_block_tail(x.as_tensor(), &short, &tw, true, true).is_err());
        let mut bad = tw.clone();
        bad.w2 = Tensor::zeros((3, 3, 1), DType::F32, &Device::Cpu)?;
        let err = fno_block_tail(x.as_tensor(), s.as_tensor(), &bad, true, true)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("do not fit"), "{err}");
        let four = Tensor::zeros((2, 4, 5), DType::F32, &Device::Cpu)?;
        assert!(fno_block_tail(&four, &four, &tw, true, true).is_err());
        Ok(())
    }
}
