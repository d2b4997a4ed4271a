//! A two-layer GELU channel MLP as one fused CPU op, forward and backward.
//!
//! `y = W2·gelu(W1·x + b1) + b2` at every point of `x` `[B, C_in, …]`: FNO's lifting
//! (`3 → 64 → 32` for the study) and projection (`32 → 64 → 2`). Their hidden layer is
//! the widest tensor of the model (64 channels: 82 MB at batch 32), and as candle ops it
//! was written, activated, read and, in the backward, differentiated as full tensors.
//! Here the points are cut into tiles of [`crate::ops::fno_block_tail::TILE`] points of one sample; a tile's hidden
//! values live only in cache. The backward recomputes them (one small product and a GELU
//! per tile) instead of storing them.
//!
//! The weights travel as one flat vector `[W1 | b1 | W2 | b2]`; weight gradients are summed
//! per fixed group of tiles and the groups' sums added in order, so results do not depend
//! on the thread count. `f32` and `f64` on the CPU; [`crate::layers::mlp::ChannelMlp`] runs its
//! layers separately elsewhere (the same function).

use crate::cpu::gemm_view::{gemm, MatMut, MatRef};
use crate::cpu::lane_sum::lane_sum;
use crate::cpu::map::contiguous;
use crate::cpu::point_tiles::{
    add_or_set, as_uninit, fill_rows, mul_into, sum_in_order, tile_view, tiles, PointScalar,
    SharedRows, TILE, TILES_PER_GROUP,
};
use crate::cpu::scratch::PoolBuf;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// `W2·gelu(W1·x + b1) + b2` per point of `x` `[B, C_in, …]` with `w1` `[H, C_in]` (or
/// `[H, C_in, 1]`), `b1` `[H]`, `w2` `[C_out, H]` (or `[C_out, H, 1]`), `b2` `[C_out]`.
///
/// One fused CPU op (the hidden layer stays in cache) where [`crate::ops::fused_cpu`]
/// says so; elsewhere the composite form of candle matmuls and `gelu_erf`, with candle's
/// gradients. Differentiable in all five arguments.
pub fn two_layer_gelu_mlp(
    x: &Tensor,
    w1: &Tensor,
    b1: &Tensor,
    w2: &Tensor,
    b2: &Tensor,
) -> Result<Tensor> {
    let (h, co) = (w1.dim(0)?, w2.dim(0)?);
    let ci = if x.rank() >= 2 { x.dim(1)? } else { 0 };
    let fits = x.rank() >= 2
        && w1.elem_count() == h * ci
        && b1.elem_count() == h
        && w2.elem_count() == co * h
        && b2.elem_count() == co;
    if !fits {
        candle_core::bail!(
            "channel MLP: input {:?} and weights w1 {:?}, b1 {:?}, w2 {:?}, b2 {:?} do not fit (expected [B, C_in, …], [H, C_in], [H], [C_out, H], [C_out])",
            x.dims(),
            w1.dims(),
            b1.dims(),
            w2.dims(),
            b2.dims()
        );
    }
    if !crate::ops::fused_cpu(&[x, w1, b1, w2, b2]) {
        return composite(x, w1, b1, w2, b2);
    }
    let flat = Tensor::cat(
        &[
            w1.flatten_all()?,
            b1.flatten_all()?,
            w2.flatten_all()?,
            b2.flatten_all()?,
        ],
        0,
    )?;
    x.contiguous()?.apply_op2(&flat, Mlp { ci, h, co })
}

/// [`two_layer_gelu_mlp`] from candle ops (every device; the specification of the fused
/// op): `[B, C_in, P]` points, two batched matmuls with the bias added between.
fn composite(x: &Tensor, w1: &Tensor, b1: &Tensor, w2: &Tensor, b2: &Tensor) -> Result<Tensor> {
    let dims = x.dims();
    let (b, ci) = (dims[0], dims[1]);
    let (h, co) = (w1.dim(0)?, w2.dim(0)?);
    let points: usize = dims[2..].iter().product();
    let xs = x.contiguous()?.reshape((b, ci, points))?;
    let hidden = w1
        .reshape((h, ci))?
        .broadcast_matmul(&xs)?
        .broadcast_add(&b1.reshape((h, 1))?)?;
    let hidden = crate::ops::gelu::gelu_composite(&hidden)?;
    let y = w2
        .reshape((co, h))?
        .broadcast_matmul(&hidden)?
        .broadcast_add(&b2.reshape((co, 1))?)?;
    let mut out = dims.to_vec();
    out[1] = co;
    y.reshape(out)
}

/// The op: input, hidden and output widths (also the MLP inside
/// [`crate::ops::fno_block_tail`], which reuses the tile functions below).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mlp {
    pub(crate) ci: usize,
    pub(crate) h: usize,
    pub(crate) co: usize,
}

/// The weights inside the flat vector `[W1 | b1 | W2 | b2]`.
pub(crate) struct MlpWeights<'a, T> {
    w1: &'a [T],
    b1: &'a [T],
    w2: &'a [T],
    b2: &'a [T],
}

impl<'a, T> MlpWeights<'a, T> {
    /// The output bias `b2`.
    pub(crate) fn b2(&self) -> &'a [T] {
        self.b2
    }
}

/// Per-thread tile buffers: the hidden layer and the backward's intermediates; after
/// [`Mlp::backward_tile`], `dx` holds the tile's input gradient.
pub(crate) struct MlpScratch<T: PointScalar> {
    hpre: PoolBuf<T>,
    hid: PoolBuf<T>,
    dh: PoolBuf<T>,
    dhpre: PoolBuf<T>,
    pub(crate) dx: PoolBuf<T>,
    /// Whether `hpre` holds `gelu'(hpre)` (after [`Mlp::hidden`] for the backward).
    hpre_is_derivative: bool,
}

impl<T: PointScalar> MlpScratch<T> {
    pub(crate) fn new(op: &Mlp) -> Self {
        let v = |r: usize| PoolBuf::new(r * TILE);
        Self {
            hpre: v(op.h),
            hid: v(op.h),
            dh: v(op.h),
            dhpre: v(op.h),
            dx: v(op.ci),
            hpre_is_derivative: false,
        }
    }
}

impl Mlp {
    /// Length of the flat weight vector.
    pub(crate) fn n_params(&self) -> usize {
        self.h * self.ci + self.h + self.co * self.h + self.co
    }

    /// The weights inside a flat vector (an error when its length does not fit).
    pub(crate) fn split<'a, T>(&self, p: &'a [T]) -> Result<MlpWeights<'a, T>> {
        if p.len() != self.n_params() {
            candle_core::bail!(
                "channel MLP: {} weights for {self:?}, expected {}",
                p.len(),
                self.n_params()
            );
        }
        let (w1, p) = p.split_at(self.h * self.ci);
        let (b1, p) = p.split_at(self.h);
        let (w2, b2) = p.split_at(self.co * self.h);
        Ok(MlpWeights { w1, b1, w2, b2 })
    }

    /// `(B, N)` of a `[B, C_in, …]` layout.
    fn batch_points(&self, l: &Layout) -> Result<(usize, usize)> {
        let dims = l.dims();
        if dims.len() < 2 || dims[1] != self.ci {
            candle_core::bail!("channel MLP: expected [B, {}, …], got {dims:?}", self.ci);
        }
        Ok((dims[0], dims[2..].iter().product()))
    }

    /// The hidden layer of a tile into the scratch: `hpre = W1·x + b1`, `hid = gelu(hpre)`;
    /// `for_backward` then replaces `hpre` by `gelu'(hpre)`, which is all
    /// [`Self::backward_tile`] needs of it (one `erf` for both).
    pub(crate) fn hidden<T: PointScalar>(
        &self,
        w: &MlpWeights<T>,
        x: MatRef<T>,
        len: usize,
        sc: &mut MlpScratch<T>,
        for_backward: bool,
    ) -> Result<()> {
        let (hpre, hid) = (&mut sc.hpre[..self.h * len], &mut sc.hid[..self.h * len]);
        fill_rows(hpre, w.b1, len);
        gemm(
            MatMut::row_major(hpre, self.h, len),
            MatRef::row_major(w.w1, self.h, self.ci),
            x,
            true,
            1,
        )?;
        if for_backward {
            T::gelu_with_derivative(hpre, as_uninit(hid));
        } else {
            T::gelu(hpre, as_uninit(hid));
        }
        sc.hpre_is_derivative = for_backward;
        Ok(())
    }

    /// `y += W2·hid` for a tile `y` `[C_out, len]` (after [`Self::hidden`]); the caller
    /// fills `y` with what the product is added to (`b2`, plus the gate term in a block).
    pub(crate) fn add_product<T: PointScalar>(
        &self,
        w: &MlpWeights<T>,
        sc: &MlpScratch<T>,
        len: usize,
        y: &mut [T],
    ) -> Result<()> {
        gemm(
            MatMut::row_major(&mut y[..self.co * len], self.co, len),
            MatRef::row_major(w.w2, self.co, self.h),
            MatRef::row_major(&sc.hid[..self.h * len], self.h, len),
            true,
            1,
        )
    }

    /// The chain rule back through a tile whose hidden layer is in the scratch
    /// ([`Self::hidden`] on the same `x`), for the output gradient `g` `[C_out, len]`:
    /// weight gradients into `dw` (added when `accumulate`, written otherwise), the input
    /// gradient into `sc.dx`.
    pub(crate) fn backward_tile<T: PointScalar>(
        &self,
        w: &MlpWeights<T>,
        (x, g): (MatRef<T>, MatRef<T>),
        len: usize,
        sc: &mut MlpScratch<T>,
        (dw, accumulate): (&mut [T], bool),
    ) -> Result<()> {
        let (ci, h, co) = (self.ci, self.h, self.co);
        let (d_w1, rest) = dw.split_at_mut(h * ci);
        let (d_b1, rest) = rest.split_at_mut(h);
        let (d_w2, d_b2) = rest.split_at_mut(co * h);
        for (ch, d) in d_b2.iter_mut().enumerate() {
            let sum = lane_sum(g.row(ch));
            add_or_set(d, sum, accumulate);
        }
        let hid = MatRef::row_major(&sc.hid[..h * len], h, len);
        gemm(MatMut::row_major(d_w2, co, h), g, hid.t(), accumulate, 1)?;
        let dh = &mut sc.dh[..h * len];
        gemm(
            MatMut::row_major(dh, h, len),
            MatRef::row_major(w.w2, co, h).t(),
            g,
            false,
            1,
        )?;
        let dhpre = &mut sc.dhpre[..h * len];
        if !sc.hpre_is_derivative {
            candle_core::bail!(
                "channel MLP: the tile's hidden layer was not computed for the backward"
            );
        }
        mul_into(&sc.hpre[..h * len], dh, dhpre);
        for (ch, row) in dhpre.chunks_exact(len).enumerate() {
            let sum = lane_sum(row);
            add_or_set(&mut d_b1[ch], sum, accumulate);
        }
        let dhpre = MatRef::row_major(&sc.dhpre[..h * len], h, len);
        gemm(MatMut::row_major(d_w1, h, ci), dhpre, x.t(), accumulate, 1)?;
        gemm(
            MatMut::row_major(&mut sc.dx[..ci * len], ci, len),
            MatRef::row_major(w.w1, h, ci).t(),
            dhpre,
            false,
            1,
        )
    }
}

/// Forward on slices.
fn forward<T: PointScalar>(op: &Mlp, x: &[T], p: &[T], (b, n): (usize, usize)) -> Result<Vec<T>> {
    let w = op.split(p)?;
    let total = b * op.co * n;
    let mut out: Vec<T> = Vec::with_capacity(total);
    let rows = SharedRows::new(&mut out.spare_capacity_mut()[..total]);
    tiles(b, n).par_chunks(1).try_for_each_init(
        || (MlpScratch::new(op), PoolBuf::new(op.co * TILE)),
        |(sc, y), group| {
            for &t in group {
                op.hidden(&w, tile_view(x, t, op.ci, n), t.len, sc, false)?;
                let y = &mut y[..op.co * t.len];
                fill_rows(y, w.b2, t.len);
                op.add_product(&w, sc, t.len, y)?;
                rows.write_tile(t, op.co, n, y);
            }
            Ok::<(), candle_core::Error>(())
        },
    )?;
    // SAFETY: the tiles partition every `(b, c, p)` of the buffer and each wrote its rows.
    unsafe { out.set_len(total) };
    Ok(out)
}

/// Backward on slices: `∂x` and the flat weight gradient.
fn backward<T: PointScalar>(
    op: &Mlp,
    (x, p, g): (&[T], &[T], &[T]),
    (b, n): (usize, usize),
) -> Result<(Vec<T>, Vec<T>)> {
    let w = op.split(p)?;
    let total = b * op.ci * n;
    let mut dx: Vec<T> = Vec::with_capacity(total);
    let rows = SharedRows::new(&mut dx.spare_capacity_mut()[..total]);
    let partials: Vec<Vec<T>> = tiles(b, n)
        .par_chunks(TILES_PER_GROUP)
        .map_init(
            || MlpScratch::new(op),
            |sc, group| {
                let mut dw = vec![T::default(); op.n_params()];
                for (i, &t) in group.iter().enumerate() {
                    let views = (tile_view(x, t, op.ci, n), tile_view(g, t, op.co, n));
                    op.hidden(&w, views.0, t.len, sc, true)?;
                    op.backward_tile(&w, views, t.len, sc, (&mut dw, i > 0))?;
                    rows.write_tile(t, op.ci, n, &sc.dx[..op.ci * t.len]);
                }
                Ok(dw)
            },
        )
        .collect::<Result<_>>()?;
    // SAFETY: the tiles partition every `(b, c, p)` of the buffer and each wrote its rows.
    unsafe { dx.set_len(total) };
    Ok((dx, sum_in_order(&partials, op.n_params())))
}

impl CustomOp2 for Mlp {
    fn name(&self) -> &'static str {
        "channel-mlp-fused"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        p: &CpuStorage,
        pl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bn = self.batch_points(xl)?;
        let name = self.name();
        let out = match (x, p) {
            (CpuStorage::F32(x), CpuStorage::F32(p)) => CpuStorage::F32(forward(
                self,
                contiguous(name, x, xl)?,
                contiguous(name, p, pl)?,
                bn,
            )?),
            (CpuStorage::F64(x), CpuStorage::F64(p)) => CpuStorage::F64(forward(
                self,
                contiguous(name, x, xl)?,
                contiguous(name, p, pl)?,
                bn,
            )?),
            _ => candle_core::bail!(
                "{name}: expected f32 or f64 storages of one dtype, got {:?} and {:?}",
                x.dtype(),
                p.dtype()
            ),
        };
        let mut dims = xl.dims().to_vec();
        dims[1] = self.co;
        Ok((out, Shape::from(dims)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        p: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let (xs, xl) = x.storage_and_layout();
        let (ps, pl) = p.storage_and_layout();
        let (gs, gl) = grad.storage_and_layout();
        let bn = self.batch_points(xl)?;
        let name = self.name();
        macro_rules! run {
            ($x:expr, $p:expr, $g:expr) => {{
                let slices = (
                    contiguous(name, $x, xl)?,
                    contiguous(name, $p, pl)?,
                    contiguous(name, $g, gl)?,
                );
                let (dx, dw) = backward(self, slices, bn)?;
                (
                    Tensor::from_vec(dx, xl.shape(), x.device())?,
                    Tensor::from_vec(dw, pl.shape(), x.device())?,
                )
            }};
        }
        let (dx, dw) = match (&*xs, &*ps, &*gs) {
            (
                Storage::Cpu(CpuStorage::F32(x)),
                Storage::Cpu(CpuStorage::F32(p)),
                Storage::Cpu(CpuStorage::F32(g)),
            ) => run!(x, p, g),
            (
                Storage::Cpu(CpuStorage::F64(x)),
                Storage::Cpu(CpuStorage::F64(p)),
                Storage::Cpu(CpuStorage::F64(g)),
            ) => run!(x, p, g),
            _ => candle_core::bail!(
                "{name}: backward expects CPU f32 or f64 tensors of one dtype, got {:?} on {:?}",
                x.dtype(),
                x.device().location()
            ),
        };
        Ok((Some(dx), Some(dw)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::single_threaded;
    use crate::cpu::point_tiles::output_and_gradients;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use crate::layers::mlp::pointwise_linear;
    use crate::ops::gelu::gelu;
    use candle_core::{DType, Device, Var};

    fn vars(shape: &[usize], h: usize, co: usize, dtype: DType, seed: u64) -> Result<Vec<Var>> {
        let ci = shape[1];
        let shapes: [&[usize]; 5] = [shape, &[h, ci, 1], &[h], &[co, h, 1], &[co]];
        shapes
            .iter()
            .enumerate()
            .map(|(k, s)| {
                let t = random_like(
                    &Tensor::zeros(*s, DType::F64, &Device::Cpu)?,
                    seed * 10 + k as u64,
                )?;
                Var::from_tensor(&t.to_dtype(dtype)?)
            })
            .collect()
    }

    fn fused(v: &[Var]) -> Result<Tensor> {
        two_layer_gelu_mlp(
            v[0].as_tensor(),
            v[1].as_tensor(),
            v[2].as_tensor(),
            v[3].as_tensor(),
            v[4].as_tensor(),
        )
    }

    fn composite(v: &[Var]) -> Result<Tensor> {
        let hid = gelu(&pointwise_linear(
            v[0].as_tensor(),
            v[1].as_tensor(),
            Some(v[2].as_tensor()),
        )?)?;
        pointwise_linear(&hid, v[3].as_tensor(), Some(v[4].as_tensor()))
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    /// Values and all gradients equal the separate layers', inside one tile and across
    /// several tiles and groups (partial last ones), narrowing and widening.
    #[test]
    fn equals_the_separate_layers_with_all_gradients() -> Result<()> {
        let cases: [(&[usize], usize, usize); 3] = [
            (&[2, 3, 4, 5], 6, 2),
            (&[3, 2, 2 * TILE + 41], 5, 4),
            (&[1, 4, 7], 3, 4),
        ];
        for (k, (shape, h, co)) in cases.into_iter().enumerate() {
            let v = vars(shape, h, co, DType::F64, k as u64)?;
            let (y, y_ref) = (fused(&v)?, composite(&v)?);
            assert_eq!(y.dims(), y_ref.dims());
            assert!(max_diff(&y, &y_ref)? < 1e-13, "{shape:?}");
            let r = random_like(&y, 5)?;
            let g = (y * &r)?.sum_all()?.backward()?;
            let g_ref = (y_ref * &r)?.sum_all()?.backward()?;
            for (i, var) in v.iter().enumerate() {
                let (a, b) = match (g.get(var), g_ref.get(var)) {
                    (Some(a), Some(b)) => (a, b),
                    _ => panic!("variable {i} has no gradient"),
                };
                let scale = 1.0 + b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                assert!(max_diff(a, b)? < 1e-12 * scale, "{shape:?}: variable {i}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let v = vars(&[2, 3, 3, 4], 4, 2, DType::F64, 3)?;
        let vs = v.clone();
        let report = check_gradients(move || fused(&vs), &v, &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    #[test]
    fn result_and_gradients_do_not_depend_on_the_thread_count() -> Result<()> {
        let v = vars(&[3, 3, 3 * TILE * TILES_PER_GROUP + 9], 8, 2, DType::F32, 4)?;
        let run = || -> Result<Vec<Vec<f32>>> {
            let vars: Vec<&Var> = v.iter().collect();
            output_and_gradients(&fused(&v)?, &vars)
        };
        assert_eq!(single_threaded(run)?, run()?);
        Ok(())
    }

    #[test]
    fn weights_that_do_not_fit_are_errors() -> Result<()> {
        let v = vars(&[2, 3, 5], 4, 2, DType::F32, 1)?;
        let bad = Tensor::zeros((4, 2, 1), DType::F32, &Device::Cpu)?;
        let err = two_layer_gelu_mlp(
            v[0].as_tensor(),
            &bad,
            v[2].as_tensor(),
            v[3].as_tensor(),
            v[4].as_tensor(),
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("do not fit"), "{err}");
        let flat = Tensor::zeros(7, DType::F32, &Device::Cpu)?;
        assert!(two_layer_gelu_mlp(
            &flat,
            v[1].as_tensor(),
            v[2].as_tensor(),
            v[3].as_tensor(),
            v[4].as_tensor()
        )
        .is_err());
        Ok(())
    }
}
