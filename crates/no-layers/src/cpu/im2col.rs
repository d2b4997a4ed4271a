//! Patch gather (im2col, "unfold") and its adjoint scatter (col2im, "fold") for 2-D
//! convolutions, on plain slices: [`crate::ops::conv2d`] builds on them.
//!
//! A patch matrix holds, for a group of `n` samples, one row per `(channel, kernel row,
//! kernel column)` and one column per `(sample, output position)`: `[C·kh·kw, n·Ho·Wo]`.
//! Each run of a patch row is a zero fill of the columns that read the padding plus one
//! contiguous copy of the in-range columns, so there is no per-element branch. Stride-2
//! gathers read every other input value straight from the row ([`gather_pairs`]: blocks
//! the compiler turns into two-source vector permutes where AVX-512 is enabled). Other
//! strides, and the adjoint's strided adds at every stride, first rewrite each input
//! plane phase by phase ([`split_phases`]: columns `ph, ph + s, ph + 2s, …` side by
//! side), which turns their strided accesses into contiguous runs. Where the output rows
//! are only a few values wide (small planes), a run costs its set-up more than its copy,
//! so those geometries gather and scatter through a table of input offsets built once per
//! call ([`PatchIndex`]); both ways give the same bits.

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

/// Where kernel column `j` reads: output column `ow` takes input column
/// `ow·stride + j − padding`, which in the phase-split layout ([`split_phases`]) is entry
/// `ow + offset` of phase `phase`. Returns `(phase, offset)`.
fn tap_phase(g: &Geometry, j: usize) -> (usize, isize) {
    let q = j as isize - g.padding as isize;
    let s = g.stride as isize;
    (q.rem_euclid(s) as usize, q.div_euclid(s))
}

/// Length of one row of a phase-split plane: `⌈W / stride⌉` (`W` for stride 1).
fn phase_width(g: &Geometry) -> usize {
    g.w.div_ceil(g.stride.max(1))
}

/// Elements of a phase-split plane: `stride × H × ⌈W / stride⌉`.
fn split_len(g: &Geometry) -> usize {
    g.stride * g.h * phase_width(g)
}

/// Rewrites one input plane `[H, W]` phase by phase, `[stride, H, ⌈W/stride⌉]` with entry
/// `(ph, y, t)` = column `t·stride + ph` of row `y` (entries past the row end are zero and
/// never read). A strided convolution then reads every patch row as one contiguous copy
/// instead of a strided gather, and its adjoint adds contiguously.
fn split_phases<T: Copy + Default>(g: &Geometry, plane: &[T], split: &mut Vec<T>) {
    let (s, wp) = (g.stride, phase_width(g));
    // No zero fill per plane: every entry that is ever read is written below; the padding
    // entries keep whatever they held.
    if split.len() != split_len(g) {
        split.clear();
        split.resize(split_len(g), T::default());
    }
    for (y, line) in plane.chunks_exact(g.w).enumerate() {
        for ph in 0..s {
            let dst = &mut split[(ph * g.h + y) * wp..][..wp];
            for (d, &v) in dst.iter_mut().zip(line[ph..].iter().step_by(s)) {
                *d = v;
            }
        }
    }
}

/// The adjoint of [`split_phases`]: writes each phase-split entry back to its column.
fn merge_phases<T: Copy>(g: &Geometry, split: &[T], plane: &mut [T]) {
    let (s, wp) = (g.stride, phase_width(g));
    for (y, line) in plane.chunks_exact_mut(g.w).enumerate() {
        for ph in 0..s {
            let src = &split[(ph * g.h + y) * wp..][..wp];
            if s == 2 {
                let mut pairs = line[ph..].chunks_exact_mut(2);
                let n = pairs.len();
                for (pair, &v) in (&mut pairs).zip(src) {
                    pair[0] = v;
                }
                if let (Some(d), Some(&v)) = (pairs.into_remainder().first_mut(), src.get(n)) {
                    *d = v;
                }
            } else {
                for (d, &v) in line[ph..].iter_mut().step_by(s).zip(src) {
                    *d = v;
                }
            }
        }
    }
}

/// `dst.copy_from_slice(src)` for the short runs of a patch row (often 5–50 values):
/// fixed-size blocks the compiler turns into vector moves, the last block overlapping
/// the one before it (the values it writes twice are the same), so a run of any length
/// of at least 4 takes no scalar loop; a call to `memmove` per run cost more than the
/// copy.
#[inline(always)]
fn copy_run<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    debug_assert_eq!(n, src.len());
    let src = &src[..n];
    if n >= 16 {
        for (d, s) in dst.chunks_exact_mut(16).zip(src.chunks_exact(16)) {
            d.copy_from_slice(s);
        }
        dst[n - 16..].copy_from_slice(&src[n - 16..]);
    } else if n >= 8 {
        dst[..8].copy_from_slice(&src[..8]);
        dst[n - 8..].copy_from_slice(&src[n - 8..]);
    } else if n >= 4 {
        dst[..4].copy_from_slice(&src[..4]);
        dst[n - 4..].copy_from_slice(&src[n - 4..]);
    } else {
        for (d, &s) in dst.iter_mut().zip(src) {
            *d = s;
        }
    }
}

/// `dst[t] = src[2t]` for every `t` of a short run (`src` holds at least `2·len − 1`
/// values): the stride-2 patch run read straight from the input row, with no phase-split
/// copy of the plane first. Fixed-size blocks of `N` outputs from `2N` inputs, the last
/// overlapping the one before it, which the compiler turns into vector shuffles where the
/// caller enables them ([`unfold_plane_pairs`]); the last value alone when the block past
/// it would run off `src`.
#[inline(always)]
fn gather_pairs<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    debug_assert!(n == 0 || src.len() >= 2 * n - 1);
    // The blocks read one value past the run's last; where `src` ends there, the last
    // output is copied on its own.
    let full = if src.len() >= 2 * n { n } else { n - 1 };
    let (head, pairs) = (&mut dst[..full], &src[..2 * full]);
    if full >= 16 {
        let mut at = 0;
        while at + 16 <= full {
            pairs_block::<T, 16, 32>(head, pairs, at);
            at += 16;
        }
        pairs_block::<T, 16, 32>(head, pairs, full - 16);
    } else if full >= 8 {
        pairs_block::<T, 8, 16>(head, pairs, 0);
        pairs_block::<T, 8, 16>(head, pairs, full - 8);
    } else if full >= 4 {
        pairs_block::<T, 4, 8>(head, pairs, 0);
        pairs_block::<T, 4, 8>(head, pairs, full - 4);
    } else {
        for (t, d) in head.iter_mut().enumerate() {
            *d = pairs[2 * t];
        }
    }
    if full < n {
        dst[n - 1] = src[2 * (n - 1)];
    }
}

/// `dst[at + t] = src[2(at + t)]` for `t < N` (`M = 2N`), as array moves of sizes the
/// compiler knows.
#[inline(always)]
fn pairs_block<T: Copy, const N: usize, const M: usize>(dst: &mut [T], src: &[T], at: usize) {
    let d: &mut [T; N] = (&mut dst[at..at + N]).try_into().expect("N values");
    let s: &[T; M] = (&src[2 * at..2 * at + M]).try_into().expect("2N values");
    for (t, v) in d.iter_mut().enumerate() {
        *v = s[2 * t];
    }
}

/// The stride-2 patch row of kernel offset `(i, j)` (`row`: `Ho·Wo` values) read straight
/// from one (unsplit) input plane.
#[inline(always)]
fn unfold_tap_pairs<T: Copy + Default>(
    g: &Geometry,
    src: &[T],
    (i, j): (usize, usize),
    row: &mut [T],
) {
    let wo = g.wo;
    let (a, b) = g.inside(i, g.h, g.ho);
    let (lo, hi) = g.inside(j, g.w, wo);
    row[..a * wo].fill(T::default());
    row[b * wo..].fill(T::default());
    if lo >= hi {
        row[a * wo..b * wo].fill(T::default());
        return;
    }
    // `inside` puts the source columns `2·lo + j − p ..= 2·(hi − 1) + j − p` in the row.
    let x0 = 2 * lo + j - g.padding;
    for (oh, out) in (a..b).zip(row[a * wo..b * wo].chunks_exact_mut(wo)) {
        let y = 2 * oh + i - g.padding;
        if lo > 0 {
            out[..lo].fill(T::default());
        }
        if hi < wo {
            out[hi..].fill(T::default());
        }
        // To the plane's end rather than the row's: the blocks' one read past the run
        // then stays in the plane for every row but the last.
        gather_pairs(&mut out[lo..hi], &src[y * g.w + x0..]);
    }
}

/// Every tap's patch row of one stride-2 plane, row `t` at `rows[t·width + at..]`.
#[inline(always)]
fn unfold_plane_pairs_body<T: Copy + Default>(
    g: &Geometry,
    plane: &[T],
    rows: &mut [T],
    (width, at): (usize, usize),
) {
    let l = g.positions();
    for t in 0..g.kh * g.kw {
        let segment = &mut rows[t * width + at..][..l];
        unfold_tap_pairs(g, plane, (t / g.kw, t % g.kw), segment);
    }
}

/// [`unfold_plane_pairs_body`] compiled for AVX-512F, where the pair blocks become
/// two-source permutes.
///
/// # Safety
/// The CPU must have AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn unfold_plane_pairs_avx512<T: Copy + Default>(
    g: &Geometry,
    plane: &[T],
    rows: &mut [T],
    place: (usize, usize),
) {
    unfold_plane_pairs_body(g, plane, rows, place);
}

/// [`unfold_plane_pairs_body`] with the widest vectors the CPU has (the same copies, so
/// the same values, on every CPU).
fn unfold_plane_pairs<T: Copy + Default>(
    g: &Geometry,
    plane: &[T],
    rows: &mut [T],
    place: (usize, usize),
) {
    #[cfg(target_arch = "x86_64")]
    if crate::cpu::map::has_avx512() {
        // SAFETY: the CPU has AVX-512F (checked just above).
        return unsafe { unfold_plane_pairs_avx512(g, plane, rows, place) };
    }
    unfold_plane_pairs_body(g, plane, rows, place);
}

/// `dst[k] += src[k]` over a short run: blocks of 16, 8 and 4 values the compiler
/// vectorises, then at most three scalar additions (each value is added once, so the
/// sums are those of a plain loop).
#[inline(always)]
fn add_run<T: Copy + std::ops::AddAssign>(dst: &mut [T], src: &[T]) {
    let n = dst.len().min(src.len());
    let (dst, src) = (&mut dst[..n], &src[..n]);
    let mut at = 0;
    for width in [16, 8, 4] {
        while n - at >= width {
            for (d, &s) in dst[at..at + width].iter_mut().zip(&src[at..at + width]) {
                *d += s;
            }
            at += width;
        }
    }
    for (d, &s) in dst[at..].iter_mut().zip(&src[at..]) {
        *d += s;
    }
}

/// Fills the patch row of kernel offset `(i, j)` for output rows `oh0..oh1` (`row`:
/// `(oh1 − oh0)·Wo` values) from one input plane, phase-split when the stride exceeds 1.
fn unfold_tap<T: Copy + Default>(
    g: &Geometry,
    src: &[T],
    (i, j): (usize, usize),
    (oh0, oh1): (usize, usize),
    row: &mut [T],
) {
    let (lo, hi) = g.inside(j, g.w, g.wo);
    let (phase, offset) = tap_phase(g, j);
    let wp = phase_width(g);
    for oh in oh0..oh1 {
        let out = &mut row[(oh - oh0) * g.wo..(oh - oh0 + 1) * g.wo];
        let Some(y) = g.source(oh, i, g.h) else {
            out.fill(T::default());
            continue;
        };
        out[..lo].fill(T::default());
        out[hi..].fill(T::default());
        if lo < hi {
            // `inside` guarantees the source columns of `lo..hi` are in range, hence
            // `lo + offset ≥ 0` and the run ends inside the phase row.
            let t0 = (lo as isize + offset) as usize;
            let line = &src[(phase * g.h + y) * wp..][..wp];
            copy_run(&mut out[lo..hi], &line[t0..t0 + (hi - lo)]);
        }
    }
}

/// Adds the patch row of kernel offset `(i, j)` for output rows `oh0..oh1` (`row`:
/// `(oh1 − oh0)·Wo` values) back into the (phase-split when the stride exceeds 1) plane it
/// was gathered from.
fn fold_tap<T: Copy + std::ops::AddAssign>(
    g: &Geometry,
    row: &[T],
    (i, j): (usize, usize),
    (oh0, oh1): (usize, usize),
    dst: &mut [T],
) {
    let (lo, hi) = g.inside(j, g.w, g.wo);
    if lo >= hi {
        return;
    }
    let (phase, offset) = tap_phase(g, j);
    let wp = phase_width(g);
    let t0 = (lo as isize + offset) as usize;
    for oh in oh0..oh1 {
        let Some(y) = g.source(oh, i, g.h) else {
            continue;
        };
        let line = &mut dst[(phase * g.h + y) * wp..][..wp];
        let at = (oh - oh0) * g.wo;
        let inner = &row[at + lo..at + hi];
        add_run(&mut line[t0..t0 + inner.len()], inner);
    }
}

/// Output rows narrower than this take the index table ([`PatchIndex`]) instead of
/// run copies, for stride 1: a run of a few values costs its loop more than its copy
/// (measured: Wo = 6 gathers 1.5× faster by table, Wo = 12 1.25× slower).
const TABLE_BELOW_WIDTH: usize = 8;

/// The same for strides above 1 (measured on DeepONet-CNN's layers, batch 32, one thread:
/// with the plane split by phase first, Wo = 5 and 11 gathered 3.3× and 1.35× faster by
/// table and folded 2.6× and 1.25× faster, Wo = 24 tied, Wo = 49 was 4× slower; against
/// the direct stride-2 gather ([`gather_pairs`]) the table still gathers Wo = 5 and 11 in
/// 0.33 and 1.18 ms against 0.99 and 1.37 ms, while Wo = 24 and 49 take the direct
/// gather, 2.0 and 0.13 ms against 3.1 and 0.23 ms with the split).
const STRIDED_TABLE_BELOW_WIDTH: usize = 16;

/// For a convolution with narrow output rows (small planes: DeepONet-CNN's 11 × 11 and
/// 24 × 24 inputs at stride 2), where every patch run is a handful of values, the input
/// offset each patch entry reads: `[kh·kw, Ho·Wo]` indices into one plane, the plane's
/// size for an entry in the padding. Built once per call and used for every plane, it
/// turns the gather and its adjoint into one indexed load or add per entry, with no
/// per-run set-up.
struct PatchIndex(Vec<usize>);

impl PatchIndex {
    /// The table of `g`, or `None` when its output rows are wide enough for run copies.
    fn new(g: &Geometry) -> Option<Self> {
        let below = if g.stride > 1 {
            STRIDED_TABLE_BELOW_WIDTH
        } else {
            TABLE_BELOW_WIDTH
        };
        (g.wo < below).then(|| Self::build(g))
    }

    /// The table of `g`, whatever its row width.
    fn build(g: &Geometry) -> Self {
        let mut idx = Vec::with_capacity(g.kh * g.kw * g.positions());
        for i in 0..g.kh {
            for j in 0..g.kw {
                for oh in 0..g.ho {
                    let y = g.source(oh, i, g.h);
                    for ow in 0..g.wo {
                        let x = g.source(ow, j, g.w);
                        idx.push(match (y, x) {
                            (Some(y), Some(x)) => y * g.w + x,
                            _ => g.plane(),
                        });
                    }
                }
            }
        }
        Self(idx)
    }

    /// The patch rows of one plane into `rows`, whose tap `t` row starts at `t·width`:
    /// its `Ho·Wo` values from `at` on.
    fn unfold<T: Copy + Default>(
        &self,
        g: &Geometry,
        plane: &[T],
        rows: &mut [T],
        (width, at): (usize, usize),
    ) {
        for (t, idx) in self.0.chunks_exact(g.positions().max(1)).enumerate() {
            for (d, &k) in rows[t * width + at..].iter_mut().zip(idx) {
                *d = plane.get(k).copied().unwrap_or_default();
            }
        }
    }

    /// Adds the patch rows of `rows` (laid out as [`Self::unfold`] writes them) back into
    /// `plane`, zeroed first, taps in order: the adjoint of [`Self::unfold`], each input
    /// value receiving its terms in the order of the run copies' adjoint.
    fn fold<T: Copy + Default + std::ops::AddAssign>(
        &self,
        g: &Geometry,
        plane: &mut [T],
        rows: &[T],
        (width, at): (usize, usize),
    ) {
        plane.fill(T::default());
        for (t, idx) in self.0.chunks_exact(g.positions().max(1)).enumerate() {
            for (&v, &k) in rows[t * width + at..].iter().zip(idx) {
                if let Some(d) = plane.get_mut(k) {
                    *d += v;
                }
            }
        }
    }
}

/// Gathers the patch matrix `cols` `[C·kh·kw, n·Ho·Wo]` of the `n` samples in `x`
/// `[n, C, H, W]` (column block `s` for sample `s`), channels on rayon's threads when
/// `parallel` (the values do not depend on it).
pub(crate) fn unfold_samples<T: Copy + Default + Send + Sync>(
    g: &Geometry,
    x: &[T],
    cols: &mut [T],
    parallel: bool,
) {
    unfold_samples_by(g, x, cols, parallel, PatchIndex::new(g));
}

/// [`unfold_samples`] by index table or (`None`) by run copies.
fn unfold_samples_by<T: Copy + Default + Send + Sync>(
    g: &Geometry,
    x: &[T],
    cols: &mut [T],
    parallel: bool,
    table: Option<PatchIndex>,
) {
    let (l, plane, taps) = (g.positions(), g.plane(), g.kh * g.kw);
    let width = x.len() / g.sample().max(1) * l;
    let fill_channel = |split: &mut Vec<T>, (c, rows): (usize, &mut [T])| {
        for (s, sample) in x.chunks_exact(g.sample().max(1)).enumerate() {
            let mut src = &sample[c * plane..(c + 1) * plane];
            if let Some(table) = &table {
                table.unfold(g, src, rows, (width, s * l));
                continue;
            }
            if g.stride == 2 {
                unfold_plane_pairs(g, src, rows, (width, s * l));
                continue;
            }
            if g.stride > 1 {
                split_phases(g, src, split);
                src = split;
            }
            for t in 0..taps {
                let segment = &mut rows[t * width + s * l..][..l];
                unfold_tap(g, src, (t / g.kw, t % g.kw), (0, g.ho), segment);
            }
        }
    };
    let rows_per_channel = (taps * width).max(1);
    if parallel {
        cols.par_chunks_exact_mut(rows_per_channel)
            .enumerate()
            .for_each_init(Vec::new, fill_channel);
    } else {
        let mut split = Vec::new();
        cols.chunks_exact_mut(rows_per_channel)
            .enumerate()
            .for_each(|item| fill_channel(&mut split, item));
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
    fold_samples_by(g, cols, x, parallel, PatchIndex::new(g));
}

/// [`fold_samples`] by index table or (`None`) by run additions.
fn fold_samples_by<T: Copy + Default + std::ops::AddAssign + Send + Sync>(
    g: &Geometry,
    cols: &[T],
    x: &mut [T],
    parallel: bool,
    table: Option<PatchIndex>,
) {
    let (l, taps) = (g.positions(), g.kh * g.kw);
    let width = x.len() / g.sample().max(1) * l;
    let fold_plane = |split: &mut Vec<T>, (p, plane): (usize, &mut [T])| {
        let (s, c) = (p / g.c, p % g.c);
        if let Some(table) = &table {
            table.fold(g, plane, &cols[c * taps * width..], (width, s * l));
            return;
        }
        let add_taps = |dst: &mut [T]| {
            for t in 0..taps {
                let row = &cols[(c * taps + t) * width..][..width];
                fold_tap(
                    g,
                    &row[s * l..(s + 1) * l],
                    (t / g.kw, t % g.kw),
                    (0, g.ho),
                    dst,
                );
            }
        };
        if g.stride == 1 {
            plane.fill(T::default());
            add_taps(plane);
        } else {
            split.clear();
            split.resize(split_len(g), T::default());
            add_taps(split);
            merge_phases(g, split, plane);
        }
    };
    if parallel {
        x.par_chunks_exact_mut(g.plane().max(1))
            .enumerate()
            .for_each_init(Vec::new, fold_plane);
    } else {
        let mut split = Vec::new();
        x.chunks_exact_mut(g.plane().max(1))
            .enumerate()
            .for_each(|item| fold_plane(&mut split, item));
    }
}

/// The patch matrix `cols` `[C·kh·kw, (oh1 − oh0)·Wo]` of output rows `oh0..oh1` of one
/// sample `x` `[C, H, W]` (a block of the columns [`unfold_samples`] gathers for it), for
/// stride 1.
pub(crate) fn unfold_rows<T: Copy + Default>(
    g: &Geometry,
    x: &[T],
    (oh0, oh1): (usize, usize),
    cols: &mut [T],
) {
    debug_assert_eq!(g.stride, 1, "unfold_rows reads unsplit planes");
    let (plane, taps, width) = (g.plane(), g.kh * g.kw, (oh1 - oh0) * g.wo);
    for c in 0..g.c {
        let src = &x[c * plane..(c + 1) * plane];
        for t in 0..taps {
            let row = &mut cols[(c * taps + t) * width..][..width];
            unfold_tap(g, src, (t / g.kw, t % g.kw), (oh0, oh1), row);
        }
    }
}

/// Adds into `x` `[C, H, W]` (stride 1) the adjoint of [`unfold_rows`] applied to `cols`
/// `[C·kh·kw, (oh1 − oh0)·Wo]`.
pub(crate) fn fold_rows<T: Copy + std::ops::AddAssign>(
    g: &Geometry,
    cols: &[T],
    (oh0, oh1): (usize, usize),
    x: &mut [T],
) {
    debug_assert_eq!(g.stride, 1, "fold_rows adds into unsplit planes");
    let (plane, taps, width) = (g.plane(), g.kh * g.kw, (oh1 - oh0) * g.wo);
    for c in 0..g.c {
        let dst = &mut x[c * plane..(c + 1) * plane];
        for t in 0..taps {
            let row = &cols[(c * taps + t) * width..][..width];
            fold_tap(g, row, (t / g.kw, t % g.kw), (oh0, oh1), dst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: f64) -> Vec<f64> {
        (0..n).map(|i| ((i as f64 + 1.0) * seed).sin()).collect()
    }

    /// `(c, h, w, k, padding, stride)`: narrow rows (the index table) and wide ones (run
    /// copies, with Wo of 8 to 40) at strides 1 to 3, paddings wider than some kernel
    /// offsets reach (empty rows) and strides that skip the last column.
    const GEOMETRIES: [(usize, usize, usize, usize, usize, usize); 9] = [
        (2, 6, 5, 3, 1, 2),
        (1, 4, 2, 5, 3, 3),
        (2, 7, 9, 3, 0, 1),
        (1, 5, 6, 5, 4, 2),
        (3, 3, 4, 1, 0, 1),
        (2, 5, 40, 3, 1, 2),
        (2, 4, 81, 3, 0, 2),
        (1, 6, 10, 3, 1, 1),
        (2, 5, 50, 5, 2, 3),
    ];

    #[test]
    fn table_and_runs_give_the_same_bits() {
        // Both gathers copy the same entries; both adjoints add each plane's terms in the
        // same order, so the sums agree bit for bit.
        for (c, h, w, k, p, s) in GEOMETRIES {
            let g = Geometry::new(c, h, w, k, k, p, s);
            let n = 3;
            let x = values(n * g.sample(), 0.3);
            let y = values(g.patch_rows() * n * g.positions(), 1.1);
            let mut by_table = vec![f64::NAN; y.len()];
            let mut by_runs = vec![f64::NAN; y.len()];
            unfold_samples_by(&g, &x, &mut by_table, true, Some(PatchIndex::build(&g)));
            unfold_samples_by(&g, &x, &mut by_runs, false, None);
            assert_eq!(by_table, by_runs, "{g:?}");
            let mut fold_table = vec![f64::NAN; x.len()];
            let mut fold_runs = vec![f64::NAN; x.len()];
            fold_samples_by(&g, &y, &mut fold_table, false, Some(PatchIndex::build(&g)));
            fold_samples_by(&g, &y, &mut fold_runs, true, None);
            assert_eq!(fold_table, fold_runs, "{g:?}");
        }
    }

    #[test]
    fn stride_2_gathers_match_the_table_with_and_without_wide_vectors() {
        // The direct stride-2 gather against the index table (built from the definition),
        // both through the dispatch (AVX-512 where the CPU has it) and through the plain
        // body; row widths from 1 to 60 cover every block size of `gather_pairs`, and odd
        // widths without padding make the last row's run end on the plane's last value
        // (the block past it would run off the plane).
        for (w, p) in [
            (3, 0),
            (6, 1),
            (9, 0),
            (13, 1),
            (19, 0),
            (34, 1),
            (49, 0),
            (81, 1),
            (121, 0),
        ] {
            let g = Geometry::new(3, 7, w, 3, 3, p, 2);
            let x = values(2 * g.sample(), 0.9);
            let width = 2 * g.positions();
            let mut by_table = vec![f64::NAN; g.patch_rows() * width];
            unfold_samples_by(&g, &x, &mut by_table, false, Some(PatchIndex::build(&g)));
            let (mut dispatched, mut plain) = (by_table.clone(), by_table.clone());
            dispatched.fill(f64::NAN);
            plain.fill(f64::NAN);
            let taps = g.kh * g.kw;
            for (s, sample) in x.chunks_exact(g.sample()).enumerate() {
                for (c, plane) in sample.chunks_exact(g.plane()).enumerate() {
                    let rows = c * taps * width;
                    let place = (width, s * g.positions());
                    unfold_plane_pairs(&g, plane, &mut dispatched[rows..], place);
                    unfold_plane_pairs_body(&g, plane, &mut plain[rows..], place);
                }
            }
            assert_eq!(dispatched, by_table, "{g:?}");
            assert_eq!(plain, by_table, "{g:?}");
        }
    }

    #[test]
    fn fold_is_the_adjoint_of_unfold() {
        // <unfold(x), y> = <x, fold(y)> for random x, y; paddings wider than some kernel
        // offsets reach (empty rows) and strides that skip the last column included.
        for (c, h, w, k, p, s) in GEOMETRIES {
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
