//! The forward of a 3×3, stride-1 convolution by Winograd's minimal filtering
//! F(2×2, 3×3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).
//!
//! Every 2×2 block of outputs comes from the 4×4 input patch under it. With the filter
//! `g` transformed once to `U = G·g·Gᵀ` and the patch `d` to `V = Bᵀ·d·B` (4×4 each), the
//! block is `Aᵀ·(Σ_c U ⊙ V)·A`. Summed over the input channels, the sixteen element-wise
//! products are sixteen matrix products `M_ξ = U_ξ · V_ξ` (`[O, C] · [C, tiles]`), so
//! the products cost `16·O·C` multiplications per four outputs, where the patch matrix
//! (im2col) of [`crate::ops::conv2d`] costs `9·O·C` per output: 2.25 times fewer. The
//! transforms are additions (and halvings of the filter), cheap beside the products.
//!
//! The transforms are exact in real arithmetic; in floating point F(2×2, 3×3) adds a
//! rounding error of a few units in the last place (its matrices hold only 0, ±1 and
//! ±½), which the tests bound against the direct product.
//!
//! Work is cut into tasks of whole tile rows of one sample, sized by the geometry alone;
//! each task runs its products on one thread, so results do not depend on the thread
//! count. Only the forward is here: the backward (weight and input gradients) stays with
//! the patch-matrix kernels of [`crate::ops::conv2d`], which are exact adjoints of the
//! convolution this computes up to that rounding.

use crate::cpu::gemm_view::{gemm, GemmScalar, MatMut, MatRef};
use crate::cpu::im2col::Geometry;
use crate::cpu::point_tiles::{SharedRows, Tile};
use crate::cpu::scratch::PoolBuf;
use candle_core::Result;
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, Mul, Sub};

/// Tiles (2×2 output blocks) a task aims at: its transformed input and products,
/// `2 · 16 · C · tiles` values, stay within a 1 MB L2 cache at 32 channels of `f32`.
const TARGET_TILES: usize = 512;

/// Fewest tasks a call is cut into: at batch 1 a 100 × 100 plane made five tasks of
/// [`TARGET_TILES`], so one core ran the fifth alone (a sixth of a batch-1 LocalNO forward
/// had one core idle there in `perf`). Eight share out evenly over two or four threads.
const MIN_TASKS: usize = 8;

/// Fewest input and output channels: the sixteen products have `C` as their inner size,
/// and below 32 they run too far below the machine's peak to gain on the patch matrix of
/// [`crate::ops::conv2d`] (measured on the 2-core dev machine: 8 → 8 channels on 100 × 100
/// planes lost 25 %, 16 → 16 on 50 × 50 broke even, 32 → 32 on 100 × 100 gained 28 %).
const MIN_CHANNELS: usize = 32;

/// Fewest tiles per sample (a 32 × 32 output): tasks hold one sample's tiles, and the
/// products of smaller planes (CNO's coarse levels) are too narrow for the `gemm` crate,
/// where the patch matrix multiplies several samples at once (32 channels on 25 × 25
/// planes lost 30 % at batch 1).
const MIN_TILES: usize = 256;

/// The element types of the transforms.
pub(crate) trait WinogradScalar:
    GemmScalar + Add<Output = Self> + Sub<Output = Self> + Mul<Output = Self>
{
    /// One half (the filter transform's only non-unit factor).
    const HALF: Self;
}

impl WinogradScalar for f32 {
    const HALF: Self = 0.5;
}

impl WinogradScalar for f64 {
    const HALF: Self = 0.5;
}

/// Whether the convolution of geometry `g` with `out_channels` outputs runs here: a 3×3
/// kernel, stride 1, at least [`MIN_CHANNELS`] input and output channels and at least
/// [`MIN_TILES`] output tiles per sample.
pub(crate) fn applies(g: &Geometry, out_channels: usize) -> bool {
    g.kh == 3
        && g.kw == 3
        && g.stride == 1
        && g.c >= MIN_CHANNELS
        && out_channels >= MIN_CHANNELS
        && g.ho.div_ceil(2) * g.wo.div_ceil(2) >= MIN_TILES
}

/// The cross-correlation of `x` `[B, C, H, W]` with `w` `[O, C, 3, 3]` (zero padding of
/// `g`), written into `out` `[B, O, Ho, Wo]`, every element of which it writes.
pub(crate) fn forward<T: WinogradScalar>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    out_channels: usize,
    out: &mut [MaybeUninit<T>],
) -> Result<()> {
    let o = out_channels;
    let sample_in = g.c * g.h * g.w;
    let sample_out = o * g.ho * g.wo;
    if w.len() != o * g.c * 9 || sample_in == 0 || !x.len().is_multiple_of(sample_in) {
        candle_core::bail!(
            "winograd conv: weight of {} values for [{o}, {}, 3, 3], input of {} values for [B, {}, {}, {}]",
            w.len(),
            g.c,
            x.len(),
            g.c,
            g.h,
            g.w
        );
    }
    let batch = x.len() / sample_in;
    if out.len() != batch * sample_out {
        candle_core::bail!(
            "winograd conv: output of {} values, expected [{batch}, {o}, {}, {}]",
            out.len(),
            g.ho,
            g.wo
        );
    }
    let u = transform_weights(w, o, g.c);
    let tiling = Tiling::new(g, batch);
    let rows = SharedRows::new(out);
    let tasks: Vec<(usize, usize)> = (0..batch)
        .flat_map(|s| (0..tiling.blocks()).map(move |k| (s, k)))
        .collect();
    tasks.par_iter().try_for_each_init(
        || TaskScratch::new(g, o, &tiling),
        |scratch, &(s, k)| {
            let (t0, t1) = tiling.block(k);
            let xs = &x[s * sample_in..][..sample_in];
            transform_input(g, &tiling, xs, (t0, t1), &mut scratch.v, &mut scratch.rows);
            let tiles = (t1 - t0) * tiling.tw;
            multiply(&u, &scratch.v, &mut scratch.m, (o, g.c, tiles))?;
            transform_output(
                g,
                &tiling,
                (&scratch.m, &mut scratch.out),
                (s, o, t0, t1),
                &rows,
            );
            Ok(())
        },
    )
}

/// [`forward`] into a new vector `[B, O, Ho, Wo]`.
pub(crate) fn forward_to_vec<T: WinogradScalar>(
    g: &Geometry,
    x: &[T],
    w: &[T],
    out_channels: usize,
) -> Result<Vec<T>> {
    let sample_in = (g.c * g.h * g.w).max(1);
    let total = x.len() / sample_in * out_channels * g.ho * g.wo;
    let mut out = Vec::with_capacity(total);
    forward(
        g,
        x,
        w,
        out_channels,
        &mut out.spare_capacity_mut()[..total],
    )?;
    // SAFETY: `forward` wrote every element of the slice it was given (or returned the
    // error above), and that slice is the first `total` elements of the capacity.
    unsafe { out.set_len(total) };
    Ok(out)
}

/// `U[ξ]` (`ξ = 4a + b`, each `[O, C]` row-major) `= (G·g·Gᵀ)[a][b]` for every filter `g`
/// of `w` `[O, C, 3, 3]`, with `G = [[1, 0, 0], [½, ½, ½], [½, −½, ½], [0, 0, 1]]`.
fn transform_weights<T: WinogradScalar>(w: &[T], o: usize, c: usize) -> Vec<T> {
    let plane = o * c;
    let mut u = vec![T::default(); 16 * plane];
    let h = T::HALF;
    let spread = |(v0, v1, v2): (T, T, T)| [v0, (v0 + v1 + v2) * h, (v0 - v1 + v2) * h, v2];
    for (oc, f) in w.chunks_exact(9).enumerate() {
        // `G·g` column by column: `[4, 3]`.
        let cols: [[T; 4]; 3] = std::array::from_fn(|j| spread((f[j], f[3 + j], f[6 + j])));
        for a in 0..4 {
            let row = spread((cols[0][a], cols[1][a], cols[2][a]));
            for (b, &v) in row.iter().enumerate() {
                u[(4 * a + b) * plane + oc] = v;
            }
        }
    }
    u
}

/// How the output is cut into 2×2 tiles and the tile rows into tasks.
struct Tiling {
    /// Tiles per tile row (`⌈Wo/2⌉`).
    tw: usize,
    /// Tile rows (`⌈Ho/2⌉`).
    th: usize,
    /// Tile rows per task.
    per_task: usize,
}

impl Tiling {
    /// Tasks of about [`TARGET_TILES`] tiles, smaller where the batch would give fewer
    /// than [`MIN_TASKS`] of them. The split depends on the geometry and the batch alone;
    /// each output column of a task's products is summed in the same order whatever the
    /// task's width, so it changes no value.
    fn new(g: &Geometry, batch: usize) -> Self {
        let (tw, th) = (g.wo.div_ceil(2), g.ho.div_ceil(2));
        let mut per_task = (TARGET_TILES / tw.max(1)).clamp(1, th.max(1));
        let per_sample = MIN_TASKS.div_ceil(batch.max(1));
        if th.div_ceil(per_task) < per_sample {
            per_task = th.div_ceil(per_sample).max(1);
        }
        Self { tw, th, per_task }
    }

    /// Tasks per sample.
    fn blocks(&self) -> usize {
        self.th.div_ceil(self.per_task)
    }

    /// The tile rows `t0..t1` of task `k`.
    fn block(&self, k: usize) -> (usize, usize) {
        let t0 = k * self.per_task;
        (t0, (t0 + self.per_task).min(self.th))
    }

    /// Length of a padded input row covering a tile row (`2·tw + 2` columns).
    fn span(&self) -> usize {
        2 * self.tw + 2
    }
}

/// A task's buffers: transformed input `V` `[16, C, tiles]`, products `M` `[16, O,
/// tiles]`, the input rows of one tile row with their even and odd columns, and the
/// output transform's rows.
struct TaskScratch<T: WinogradScalar> {
    v: PoolBuf<T>,
    m: PoolBuf<T>,
    rows: PoolBuf<T>,
    out: PoolBuf<T>,
}

impl<T: WinogradScalar> TaskScratch<T> {
    fn new(g: &Geometry, o: usize, tiling: &Tiling) -> Self {
        let tiles = tiling.per_task * tiling.tw;
        Self {
            v: PoolBuf::new(16 * g.c * tiles),
            m: PoolBuf::new(16 * o * tiles),
            rows: PoolBuf::new(tiling.span() + 16 * (tiling.tw + 1)),
            out: PoolBuf::new(6 * tiling.tw),
        }
    }
}

/// Fills `v` `[16, C, tiles]` with `Bᵀ·d·B` of every tile of rows `t0..t1` of one sample
/// `xs` `[C, H, W]`, `Bᵀ = [[1, 0, −1, 0], [0, 1, 1, 0], [0, −1, 1, 0], [0, 1, 0, −1]]`.
///
/// Per tile row: the four padded input rows, split into even and odd columns (so that
/// both passes run on contiguous slices), the vertical pass `Bᵀ·d` on each half, then the
/// horizontal pass `(Bᵀ·d)·B`, whose tile `t` reads columns `2t .. 2t + 3`: even `t`,
/// `t + 1` and odd `t`, `t + 1`.
fn transform_input<T: WinogradScalar>(
    g: &Geometry,
    tiling: &Tiling,
    xs: &[T],
    (t0, t1): (usize, usize),
    v: &mut [T],
    rows: &mut [T],
) {
    let (tw, span) = (tiling.tw, tiling.span());
    let tiles = (t1 - t0) * tw;
    let half = tw + 1;
    let (row, parts) = rows.split_at_mut(span);
    let (split, passed) = parts.split_at_mut(8 * half);
    for c in 0..g.c {
        let plane = &xs[c * g.h * g.w..][..g.h * g.w];
        for ty in t0..t1 {
            // split[(2a + k)·half ..]: row a's even (k = 0) or odd (k = 1) columns.
            for a in 0..4 {
                padded_row(g, plane, (2 * ty + a) as isize - g.padding as isize, row);
                let (ev, od) = split[2 * a * half..][..2 * half].split_at_mut(half);
                for ((e, o), pair) in ev.iter_mut().zip(od.iter_mut()).zip(row.chunks_exact(2)) {
                    *e = pair[0];
                    *o = pair[1];
                }
            }
            // The vertical pass, on even and odd halves alike: passed[(2a + k)·half ..].
            for k in 0..2 {
                let r = |a: usize| &split[(2 * a + k) * half..][..half];
                let (d0, d1, d2, d3) = (r(0), r(1), r(2), r(3));
                let mut dst = passed.chunks_exact_mut(half).skip(k).step_by(2);
                let mut next = || dst.next().unwrap_or_default();
                let (p0, p1, p2, p3) = (next(), next(), next(), next());
                for j in 0..half {
                    p0[j] = d0[j] - d2[j];
                    p1[j] = d1[j] + d2[j];
                    p2[j] = d2[j] - d1[j];
                    p3[j] = d1[j] - d3[j];
                }
            }
            // The horizontal pass into the tiles of this row.
            let base = (ty - t0) * tw;
            for a in 0..4 {
                let e = &passed[2 * a * half..][..half];
                let od = &passed[(2 * a + 1) * half..][..half];
                let at = |b: usize| (4 * a + b) * g.c * tiles + c * tiles + base;
                horizontal(e, od, &mut v[at(0)..][..tw], 0);
                horizontal(e, od, &mut v[at(1)..][..tw], 1);
                horizontal(e, od, &mut v[at(2)..][..tw], 2);
                horizontal(e, od, &mut v[at(3)..][..tw], 3);
            }
        }
    }
}

/// Column `b` of `(Bᵀ·d)·B` for every tile of a row, from the vertical pass's even
/// columns `e` and odd columns `od` (each one longer than `dst`).
#[inline(always)]
fn horizontal<T: WinogradScalar>(e: &[T], od: &[T], dst: &mut [T], b: usize) {
    let n = dst.len();
    let (e0, e1, o0, o1) = (&e[..n], &e[1..=n], &od[..n], &od[1..=n]);
    match b {
        0 => dst
            .iter_mut()
            .zip(e0.iter().zip(e1))
            .for_each(|(d, (&x, &y))| *d = x - y),
        1 => dst
            .iter_mut()
            .zip(o0.iter().zip(e1))
            .for_each(|(d, (&x, &y))| *d = x + y),
        2 => dst
            .iter_mut()
            .zip(e1.iter().zip(o0))
            .for_each(|(d, (&x, &y))| *d = x - y),
        _ => dst
            .iter_mut()
            .zip(o0.iter().zip(o1))
            .for_each(|(d, (&x, &y))| *d = x - y),
    }
}

/// Input row `iy` of `plane` `[H, W]` on the padded grid: `row[j]` is `x[iy, j − padding]`,
/// zero outside the input.
fn padded_row<T: WinogradScalar>(g: &Geometry, plane: &[T], iy: isize, row: &mut [T]) {
    if iy < 0 || iy as usize >= g.h {
        row.fill(T::default());
        return;
    }
    let src = &plane[iy as usize * g.w..][..g.w];
    let lo = g.padding.min(row.len());
    let hi = (g.padding + g.w).min(row.len());
    row[..lo].fill(T::default());
    row[lo..hi].copy_from_slice(&src[..hi - lo]);
    row[hi..].fill(T::default());
}

/// `m[ξ] = u[ξ] · v[ξ]` for the sixteen `ξ`: `[O, C] · [C, tiles]`, on this thread.
fn multiply<T: WinogradScalar>(
    u: &[T],
    v: &[T],
    m: &mut [T],
    (o, c, tiles): (usize, usize, usize),
) -> Result<()> {
    for xi in 0..16 {
        gemm(
            MatMut::row_major(&mut m[xi * o * tiles..][..o * tiles], o, tiles),
            MatRef::row_major(&u[xi * o * c..][..o * c], o, c),
            MatRef::row_major(&v[xi * c * tiles..][..c * tiles], c, tiles),
            false,
            1,
        )?;
    }
    Ok(())
}

/// Writes output rows `2·t0 .. min(2·t1, Ho)` of every channel of sample `s` from the
/// products `m` `[16, O, tiles]`: each tile's `Aᵀ·M·A`, `Aᵀ = [[1, 1, 1, 0], [0, 1, −1,
/// −1]]`. `work` holds six rows of `tw` values.
fn transform_output<T: WinogradScalar>(
    g: &Geometry,
    tiling: &Tiling,
    (m, work): (&[T], &mut [T]),
    (s, o, t0, t1): (usize, usize, usize, usize),
    rows: &SharedRows<T>,
) {
    let tw = tiling.tw;
    let tiles = (t1 - t0) * tw;
    let plane = g.ho * g.wo;
    let (q, y) = work[..6 * tw].split_at_mut(4 * tw);
    let (y0, y1) = y.split_at_mut(tw);
    for ch in 0..o {
        for ty in t0..t1 {
            let base = ch * tiles + (ty - t0) * tw;
            let mm: [&[T]; 16] = std::array::from_fn(|xi| &m[xi * o * tiles + base..][..tw]);
            for i in 0..2 {
                let oy = 2 * ty + i;
                if oy >= g.ho {
                    break;
                }
                // Row `i` of `Aᵀ·M`, column by column, then its product with `A`.
                for (b, qb) in q.chunks_exact_mut(tw).enumerate() {
                    if i == 0 {
                        combine(qb, (mm[b], mm[4 + b], mm[8 + b]), false);
                    } else {
                        combine(qb, (mm[4 + b], mm[8 + b], mm[12 + b]), true);
                    }
                }
                let (q0, rest) = q.split_at(tw);
                let (q1, rest) = rest.split_at(tw);
                let (q2, q3) = rest.split_at(tw);
                combine(y0, (q0, q1, q2), false);
                combine(y1, (q1, q2, q3), true);
                let row = Tile {
                    b: s,
                    p0: oy * g.wo,
                    len: g.wo,
                };
                rows.fill_row((row, ch), (o, plane), |dst| interleave(y0, y1, dst));
            }
        }
    }
}

/// `dst = a + b + c`, or `a − b − c` when `subtract`.
#[inline(always)]
fn combine<T: WinogradScalar>(dst: &mut [T], (a, b, c): (&[T], &[T], &[T]), subtract: bool) {
    let n = dst.len();
    let (a, b, c) = (&a[..n], &b[..n], &c[..n]);
    if subtract {
        for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
            *d = a - b - c;
        }
    } else {
        for (((d, &a), &b), &c) in dst.iter_mut().zip(a).zip(b).zip(c) {
            *d = a + b + c;
        }
    }
}

/// `dst[2t] = even[t]`, `dst[2t + 1] = odd[t]`, as far as `dst` reaches.
fn interleave<T: Copy>(even: &[T], odd: &[T], dst: &mut [MaybeUninit<T>]) {
    let tail = even.get(dst.len() / 2).copied();
    let mut pairs = dst.chunks_exact_mut(2);
    for (pair, (&e, &o)) in (&mut pairs).zip(even.iter().zip(odd)) {
        pair[0].write(e);
        pair[1].write(o);
    }
    if let ([last], Some(e)) = (pairs.into_remainder(), tail) {
        last.write(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::random_like;
    use candle_core::{Device, Tensor};

    /// The direct cross-correlation in `f64`.
    fn direct(g: &Geometry, x: &[f64], w: &[f64], o: usize) -> Vec<f64> {
        let batch = x.len() / (g.c * g.h * g.w);
        let mut out = vec![0.0; batch * o * g.ho * g.wo];
        for s in 0..batch {
            for oc in 0..o {
                for oy in 0..g.ho {
                    for ox in 0..g.wo {
                        let mut acc = 0.0;
                        for c in 0..g.c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy + ky) as isize - g.padding as isize;
                                    let ix = (ox + kx) as isize - g.padding as isize;
                                    if iy < 0 || ix < 0 || iy as usize >= g.h || ix as usize >= g.w
                                    {
                                        continue;
                                    }
                                    let xv =
                                        x[((s * g.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    acc += xv * w[((oc * g.c + c) * 3 + ky) * 3 + kx];
                                }
                            }
                        }
                        out[((s * o + oc) * g.ho + oy) * g.wo + ox] = acc;
                    }
                }
            }
        }
        out
    }

    fn values(n: usize, seed: u64) -> Vec<f64> {
        let t = Tensor::zeros(n, candle_core::DType::F64, &Device::Cpu).unwrap();
        random_like(&t, seed).unwrap().to_vec1().unwrap()
    }

    fn run<T: WinogradScalar>(g: &Geometry, x: &[T], w: &[T], o: usize) -> Vec<T> {
        let batch = x.len() / (g.c * g.h * g.w);
        let mut out = vec![MaybeUninit::uninit(); batch * o * g.ho * g.wo];
        forward(g, x, w, o, &mut out).unwrap();
        // SAFETY: `forward` writes every element (the test would read garbage otherwise,
        // which the comparison with the direct product catches).
        out.into_iter()
            .map(|v| unsafe { v.assume_init() })
            .collect()
    }

    /// Odd and even sizes, paddings 0, 1 and 2, several tasks per sample with a short
    /// last one: equal to the direct product to rounding in f64, and in f32 to the f32
    /// rounding of the direct product's size.
    #[test]
    fn equals_the_direct_convolution() {
        for (c, o, h, w, padding) in [
            (8, 9, 7, 5, 1),
            (9, 8, 6, 6, 0),
            (8, 8, 5, 9, 2),
            (12, 10, 40, 300, 1),
            (8, 8, 3, 3, 1),
        ] {
            // `forward` itself takes any size; `applies` only keeps small planes away.
            let g = Geometry::new(c, h, w, 3, 3, padding, 1);
            let batch = 2;
            let x = values(batch * c * h * w, 1);
            let k = values(o * c * 9, 2);
            let reference = direct(&g, &x, &k, o);
            let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs()));
            let ours = run(&g, &x, &k, o);
            let err = ours
                .iter()
                .zip(&reference)
                .fold(0f64, |m, (a, b)| m.max((a - b).abs()));
            assert!(err <= 1e-13 * scale, "f64 {c}x{h}x{w} p{padding}: {err}");
            let (x32, k32): (Vec<f32>, Vec<f32>) = (
                x.iter().map(|&v| v as f32).collect(),
                k.iter().map(|&v| v as f32).collect(),
            );
            let ours32 = run(&g, &x32, &k32, o);
            let err32 = ours32
                .iter()
                .zip(&reference)
                .fold(0f64, |m, (&a, b)| m.max((a as f64 - b).abs()));
            assert!(err32 <= 2e-5 * scale, "f32 {c}x{h}x{w} p{padding}: {err32}");
        }
    }

    /// A batch of one is cut into more, smaller tasks than the same plane in a batch of
    /// four (eight against five at 100 × 100): the values are the same bits.
    #[test]
    fn task_size_changes_no_value() {
        let (c, o) = (32, 32);
        let g = Geometry::new(c, 100, 100, 3, 3, 1, 1);
        assert_eq!(Tiling::new(&g, 1).blocks(), 8);
        assert_eq!(Tiling::new(&g, 4).blocks(), 5);
        let x: Vec<f32> = values(4 * c * 100 * 100, 3)
            .iter()
            .map(|&v| v as f32)
            .collect();
        let w: Vec<f32> = values(o * c * 9, 4).iter().map(|&v| v as f32).collect();
        let batch = run(&g, &x, &w, o);
        let plane = o * 100 * 100;
        for s in 0..4 {
            let alone = run(&g, &x[s * c * 10_000..][..c * 10_000], &w, o);
            assert!(alone == batch[s * plane..][..plane], "sample {s}");
        }
    }

    #[test]
    fn small_or_strided_convolutions_do_not_apply() {
        assert!(applies(&Geometry::new(32, 32, 32, 3, 3, 1, 1), 32));
        assert!(!applies(&Geometry::new(32, 30, 32, 3, 3, 1, 1), 32));
        assert!(!applies(&Geometry::new(16, 32, 32, 3, 3, 1, 1), 32));
        assert!(!applies(&Geometry::new(32, 32, 32, 3, 3, 1, 1), 16));
        assert!(!applies(&Geometry::new(32, 64, 64, 3, 3, 1, 2), 32));
        assert!(!applies(&Geometry::new(32, 32, 32, 5, 5, 2, 1), 32));
    }

    #[test]
    fn wrong_sizes_are_errors() {
        let g = Geometry::new(8, 4, 4, 3, 3, 1, 1);
        let x = vec![0f64; 8 * 16];
        let mut out = vec![MaybeUninit::uninit(); 8 * 16];
        assert!(forward(&g, &x, &[0.0; 10], 8, &mut out).is_err());
        let mut short = vec![MaybeUninit::uninit(); 7];
        assert!(forward(&g, &x, &vec![0.0; 8 * 8 * 9], 8, &mut short).is_err());
    }
}
