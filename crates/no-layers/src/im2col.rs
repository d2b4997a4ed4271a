//! Patch gather (im2col, "unfold") and its adjoint scatter (col2im, "fold") for 2-D
//! convolutions, on plain slices: [`crate::conv2d`] builds on them.
//!
//! A patch matrix holds, for a group of `n` samples, one row per `(channel, kernel row,
//! kernel column)` and one column per `(sample, output position)`: `[C·kh·kw, n·Ho·Wo]`.
//! Each row of one sample is a zero fill of the columns that read the padding plus one
//! contiguous copy (stride 1) or strided gather of the in-range columns, so there is no
//! per-element branch.

use rayon::prelude::*;

/// Sizes of one convolution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Geometry {
    /// Input channels.
    pub(crate) c: usize,
    /// Input height.
    pub(crate) h: usize,
    /// Input width.
    pub(crate) w: usize,
    /// Kernel height.
    pub(crate) kh: usize,
    /// Kernel width.
    pub(crate) kw: usize,
    /// Zero padding on every side.
    pub(crate) padding: usize,
    /// Step on both axes.
    pub(crate) stride: usize,
    /// Output height.
    pub(crate) ho: usize,
    /// Output width.
    pub(crate) wo: usize,
}

impl Geometry {
    /// The geometry of a `kh × kw` kernel over `c × h × w` inputs; the caller has checked
    /// that the padded input is at least the kernel and that `stride > 0`.
    pub(crate) fn new(
        c: usize,
        h: usize,
        w: usize,
        kh: usize,
        kw: usize,
        padding: usize,
        stride: usize,
    ) -> Self {
        Self {
            c,
            h,
            w,
            kh,
            kw,
            padding,
            stride,
            ho: (h + 2 * padding - kh) / stride + 1,
            wo: (w + 2 * padding - kw) / stride + 1,
        }
    }

    /// Elements of one input plane.
    pub(crate) fn plane(&self) -> usize {
        self.h * self.w
    }

    /// Elements of one input sample.
    pub(crate) fn sample(&self) -> usize {
        self.c * self.plane()
    }

    /// Output positions `Ho·Wo` (the columns one sample contributes to a patch matrix).
    pub(crate) fn positions(&self) -> usize {
        self.ho * self.wo
    }

    /// Rows of a patch matrix, `C·kh·kw`.
    pub(crate) fn patch_rows(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// The input index read by kernel offset `k` at output index `o` (or `None` in the
    /// padding), along an axis of length `n`.
    fn source(&self, o: usize, k: usize, n: usize) -> Option<usize> {
        (o * self.stride + k)
            .checked_sub(self.padding)
            .filter(|&s| s < n)
    }

    /// The output indices `lo..hi` (of `n_out`) whose source for kernel offset `k` lies
    /// inside an axis of length `n`: `0 ≤ o·stride + k − padding < n`.
    fn inside(&self, k: usize, n: usize, n_out: usize) -> (usize, usize) {
        let s = self.stride;
        let lo = self.padding.saturating_sub(k).div_ceil(s).min(n_out);
        let hi = if n + self.padding > k {
            ((n + self.padding - k - 1) / s + 1).min(n_out)
        } else {
            0
        };
        (lo, hi.max(lo))
    }
}

/// Fills the patch row of kernel offset `(i, j)` of one input plane (`row`: `Ho·Wo` values).
fn unfold_tap<T: Copy + Default>(g: &Geometry, plane: &[T], (i, j): (usize, usize), row: &mut [T]) {
    let (lo, hi) = g.inside(j, g.w, g.wo);
    for oh in 0..g.ho {
        let out = &mut row[oh * g.wo..(oh + 1) * g.wo];
        let Some(y) = g.source(oh, i, g.h) else {
            out.fill(T::default());
            continue;
        };
        let line = &plane[y * g.w..(y + 1) * g.w];
        out[..lo].fill(T::default());
        out[hi..].fill(T::default());
        if lo < hi {
            // The first source column; `inside` guarantees it is in range.
            let x0 = lo * g.stride + j - g.padding;
            let inner = &mut out[lo..hi];
            match g.stride {
                1 => inner.copy_from_slice(&line[x0..x0 + inner.len()]),
                2 => gather_every_second(&line[x0..], inner),
                s => {
                    for (o, &v) in inner.iter_mut().zip(line[x0..].iter().step_by(s)) {
                        *o = v;
                    }
                }
            }
        }
    }
}

/// `out[k] = src[2k]`: pairs of a fixed-size chunk, which the compiler turns into vector
/// shuffles (a `step_by(2)` iterator stays scalar).
fn gather_every_second<T: Copy>(src: &[T], out: &mut [T]) {
    let Some(last) = out.len().checked_sub(1) else {
        return;
    };
    for (o, pair) in out[..last].iter_mut().zip(src.chunks_exact(2)) {
        *o = pair[0];
    }
    out[last] = src[2 * last];
}

/// Adds the patch row of kernel offset `(i, j)` (`row`: `Ho·Wo` values) back into the
/// input plane it was gathered from.
fn fold_tap<T: Copy + std::ops::AddAssign>(
    g: &Geometry,
    row: &[T],
    (i, j): (usize, usize),
    plane: &mut [T],
) {
    let (lo, hi) = g.inside(j, g.w, g.wo);
    if lo >= hi {
        return;
    }
    let x0 = lo * g.stride + j - g.padding;
    for oh in 0..g.ho {
        let Some(y) = g.source(oh, i, g.h) else {
            continue;
        };
        let line = &mut plane[y * g.w..(y + 1) * g.w];
        let inner = &row[oh * g.wo + lo..oh * g.wo + hi];
        if g.stride == 1 {
            for (d, &v) in line[x0..x0 + inner.len()].iter_mut().zip(inner) {
                *d += v;
            }
        } else {
            for (d, &v) in line[x0..].iter_mut().step_by(g.stride).zip(inner) {
                *d += v;
            }
        }
    }
}

/// Gathers the patch matrix `cols` `[C·kh·kw, n·Ho·Wo]` of the `n` samples in `x`
/// `[n, C, H, W]` (column block `s` for sample `s`), rows on rayon's threads when
/// `parallel` (the values do not depend on it).
pub(crate) fn unfold_samples<T: Copy + Default + Send + Sync>(
    g: &Geometry,
    x: &[T],
    cols: &mut [T],
    parallel: bool,
) {
    let (l, plane) = (g.positions(), g.plane());
    let width = x.len() / g.sample().max(1) * l;
    let fill_row = |(r, row): (usize, &mut [T])| {
        let (c, tap) = (r / (g.kh * g.kw), (r / g.kw % g.kh, r % g.kw));
        for (s, segment) in row.chunks_exact_mut(l.max(1)).enumerate() {
            let start = s * g.sample() + c * plane;
            unfold_tap(g, &x[start..start + plane], tap, segment);
        }
    };
    if parallel {
        cols.par_chunks_exact_mut(width.max(1))
            .enumerate()
            .for_each(fill_row);
    } else {
        cols.chunks_exact_mut(width.max(1))
            .enumerate()
            .for_each(fill_row);
    }
}

/// Writes into `x` `[n, C, H, W]` the adjoint of [`unfold_samples`] applied to `cols`
/// `[C·kh·kw, n·Ho·Wo]`: every patch value added back where it was read from, the taps of
/// each plane in a fixed order; planes on rayon's threads when `parallel`.
pub(crate) fn fold_samples<T: Copy + Default + std::ops::AddAssign + Send + Sync>(
    g: &Geometry,
    cols: &[T],
    x: &mut [T],
    parallel: bool,
) {
    let (l, taps) = (g.positions(), g.kh * g.kw);
    let width = x.len() / g.sample().max(1) * l;
    let fold_plane = |(p, plane): (usize, &mut [T])| {
        let (s, c) = (p / g.c, p % g.c);
        plane.fill(T::default());
        for t in 0..taps {
            let row = &cols[(c * taps + t) * width..][..width];
            fold_tap(g, &row[s * l..(s + 1) * l], (t / g.kw, t % g.kw), plane);
        }
    };
    if parallel {
        x.par_chunks_exact_mut(g.plane().max(1))
            .enumerate()
            .for_each(fold_plane);
    } else {
        x.chunks_exact_mut(g.plane().max(1))
            .enumerate()
            .for_each(fold_plane);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 + 1.0) * seed).sin()).collect()
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), y> = <x, fold(y)> for random x, y; paddings wider than some kernel
        // offsets reach (empty rows) and strides that skip the last column included.
        for (c, h, w, k, p, s) in [
            (2, 6, 5, 3, 1, 2),
            (1, 4, 2, 5, 3, 3),
            (2, 7, 9, 3, 0, 1),
            (1, 5, 6, 5, 4, 2),
            (3, 3, 4, 1, 0, 1),
        ] {
            let g = Geometry::new(c, h, w, k, k, p, s);
            let n = 2;
            let x = values(n * g.sample(), 0.7);
            let y = values(g.patch_rows() * n * g.positions(), 1.3);
            let mut ux = vec![0.0; y.len()];
            unfold_samples(&g, &x, &mut ux, false);
            let mut fy = vec![0.0; x.len()];
            fold_samples(&g, &y, &mut fy, true);
            let lhs: f64 = ux.iter().zip(&y).map(|(a, b)| a * b).sum();
            let rhs: f64 = x.iter().zip(&fy).map(|(a, b)| a * b).sum();
            assert!(
                (lhs - rhs).abs() < 1e-12 * lhs.abs().max(1.0),
                "{g:?}: {lhs} vs {rhs}"
            );
        }
    }

    #[test]
    fn unfold_reads_the_right_input_or_zero() {
        // One channel 3×3, kernel 2×2, padding 1, stride 2: output 2×2; check every entry
        // against the definition.
        let g = Geometry::new(1, 3, 3, 2, 2, 1, 2);
        let x: Vec<f64> = (1..=9).map(f64::from).collect();
        let mut cols = vec![f64::NAN; g.patch_rows() * g.positions()];
        unfold_samples(&g, &x, &mut cols, true);
        for (r, row) in cols.chunks(g.positions()).enumerate() {
            let (i, j) = (r / 2, r % 2);
            for (p, &v) in row.iter().enumerate() {
                let (y, xx) = ((p / 2 * 2 + i) as isize - 1, (p % 2 * 2 + j) as isize - 1);
                let expected = if (0..3).contains(&y) && (0..3).contains(&xx) {
                    x[(y * 3 + xx) as usize]
                } else {
                    0.0
                };
                assert_eq!(v, expected, "row {r} position {p}");
            }
        }
    }
}
