//! Non-periodic shifts of space–time fields, equivariance errors, and their curves.
//!
//! The FHN domain is not periodic, so a translation cannot be a `roll`. The physics fixes
//! what a shift means instead:
//! - a **delay** by `k` output steps moves every row `t` to `t + k`; the first `k` rows are
//!   the rest state (v = w = 0, no current), exactly, because nothing happens before the
//!   stimulus; rows pushed past the end of the window are dropped;
//! - a **space shift** by `j` output nodes moves column `x` to `x + j`; the columns uncovered
//!   at the trailing edge are unknown (the wave there came from outside the old window), so
//!   they are excluded from every comparison, as are the columns dropped at the far edge.
//!
//! For a shift `s`, with `S_s` this operator, the equivariance error of a map `M` (a model or
//! the solver) on an input `I` is
//!
//! `E(s) = ‖M(S_s I) − S_s M(I)‖_W / (‖S_s M(I)‖_W + ε)`
//!
//! per output channel, where `‖·‖_W` is the discrete L2 norm over the common window `W` of
//! the grid on which `S_s M(I)` is known (all rows for a delay, the columns that stayed in
//! the window for a space shift). A model equivariant on this data scores the same as the
//! solver, whose own curve is the ground truth: the solver is exactly equivariant to delays
//! (up to the rasterisation of the stimulus) but not to space shifts near the zero-flux
//! boundaries, which reflect nothing yet bound the domain.

use std::ops::Range;

use ndarray::{s, Array4, ArrayView4};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::metrics::{summarize, Summary, EPS};

/// A translation by whole output-grid steps: `t` rows later (delay) and `x` columns to the
/// right (towards larger x). Negative values shift the other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shift {
    /// Steps in time (positive: delay).
    pub t: isize,
    /// Steps in space (positive: towards larger x).
    pub x: isize,
}

impl Shift {
    /// A pure delay of `k` steps.
    pub fn time(k: isize) -> Self {
        Shift { t: k, x: 0 }
    }

    /// A pure space shift of `j` steps.
    pub fn space(j: isize) -> Self {
        Shift { t: 0, x: j }
    }
}

/// Which axis a curve sweeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShiftAxis {
    /// Delays of the stimulus.
    Time,
    /// Translations of the stimulus in x.
    Space,
}

impl ShiftAxis {
    /// The shift of `k` steps along this axis.
    pub fn shift(self, k: isize) -> Shift {
        match self {
            ShiftAxis::Time => Shift::time(k),
            ShiftAxis::Space => Shift::space(k),
        }
    }
}

/// The part of an `nt × nx` grid on which a shifted field is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Rows (times) compared.
    pub t: Range<usize>,
    /// Columns (positions) compared.
    pub x: Range<usize>,
}

/// The common window of a shift on an `nt × nx` grid; an error when it would be empty.
///
/// A delay keeps every row (the rows before it are the known rest state); an advance loses
/// its last `|t|` rows. A space shift by `j` keeps the columns `j..nx` (or `0..nx−|j|`).
pub fn common_window(nt: usize, nx: usize, s: Shift) -> Result<Window> {
    let t = if s.t >= 0 {
        0..nt
    } else {
        0..nt.saturating_sub(s.t.unsigned_abs())
    };
    let j = s.x.unsigned_abs();
    let x = if s.x >= 0 {
        j.min(nx)..nx
    } else {
        0..nx.saturating_sub(j)
    };
    if t.is_empty() || x.is_empty() {
        return Err(EvalError::invalid(
            format!("shift {s:?} on a {nt}×{nx} grid"),
            "empty window",
            "shifts smaller than the grid",
        ));
    }
    Ok(Window { t, x })
}

/// Applies `s` to the last two axes (t, x) of a batch `[B, C, nt, nx]`: entries moved in
/// from outside the grid take the value `fill` (0 = the rest state and no current).
pub fn shift_batch(a: ArrayView4<f32>, s: Shift, fill: f32) -> Array4<f32> {
    let (nt, nx) = (a.shape()[2], a.shape()[3]);
    let mut out = Array4::from_elem(a.raw_dim(), fill);
    // Destination range [lo, hi) and source offset along one axis.
    let span = |k: isize, n: usize| -> Option<(usize, usize, usize)> {
        let m = k.unsigned_abs();
        if m >= n {
            return None;
        }
        Some(if k >= 0 { (m, n, 0) } else { (0, n - m, m) })
    };
    if let (Some((t0, t1, ts)), Some((x0, x1, xs))) = (span(s.t, nt), span(s.x, nx)) {
        let src = a.slice(s![.., .., ts..ts + (t1 - t0), xs..xs + (x1 - x0)]);
        out.slice_mut(s![.., .., t0..t1, x0..x1]).assign(&src);
    }
    out
}

/// `E(s)` of every sample and channel: `result[b][c]`, from the outputs on the original
/// inputs (`base = M(I)`) and on the shifted inputs (`shifted = M(S_s I)`), both
/// `[B, C, nt, nx]`.
pub fn equivariance_errors(
    base: ArrayView4<f32>,
    shifted: ArrayView4<f32>,
    s: Shift,
) -> Result<Vec<Vec<f64>>> {
    if base.shape() != shifted.shape() {
        return Err(EvalError::shape(
            "equivariance_errors (shifted output)",
            shifted.shape(),
            format!("{:?} like the base output", base.shape()),
        ));
    }
    let (nt, nx) = (base.shape()[2], base.shape()[3]);
    let w = common_window(nt, nx, s)?;
    let reference = shift_batch(base, s, 0.0);
    let r = reference.slice(s![.., .., w.t.clone(), w.x.clone()]);
    let m = shifted.slice(s![.., .., w.t.clone(), w.x.clone()]);
    Ok(r.outer_iter()
        .zip(m.outer_iter())
        .map(|(rb, mb)| {
            rb.outer_iter()
                .zip(mb.outer_iter())
                .map(|(rc, mc)| {
                    let (mut num, mut den) = (0.0f64, 0.0f64);
                    for (&y, &p) in rc.iter().zip(mc.iter()) {
                        let (y, p) = (f64::from(y), f64::from(p));
                        num += (p - y) * (p - y);
                        den += y * y;
                    }
                    num.sqrt() / (den.sqrt() + EPS)
                })
                .collect()
        })
        .collect())
}

/// One point of an equivariance curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePoint {
    /// The shift in output-grid steps along the curve's axis.
    pub steps: isize,
    /// The same shift in physical units (time or length).
    pub shift: f64,
    /// Per output channel (v, w): the summary of `E(s)` over the samples.
    pub channels: Vec<Summary>,
}

/// `E(s)` as a function of the shift along one axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EquivarianceCurve {
    /// The axis swept.
    pub axis: ShiftAxis,
    /// One point per shift, in the order given.
    pub points: Vec<CurvePoint>,
}

impl EquivarianceCurve {
    /// The point at `steps`, if the curve has one.
    pub fn at(&self, steps: isize) -> Option<&CurvePoint> {
        self.points.iter().find(|p| p.steps == steps)
    }
}

/// Builds the curve of a map `apply` (inputs `[B, C_in, nt, nx]` → outputs
/// `[B, C_out, nt, nx]`) over `steps` along `axis`, on the inputs `inputs`. `h` is the grid
/// spacing along `axis`, to report shifts in physical units. The inputs are shifted with the
/// rest fill (no current), so a delay or a space shift of a stimulus that stays inside the
/// window is exactly the translated stimulus on the grid.
pub fn curve<F>(
    mut apply: F,
    inputs: ArrayView4<f32>,
    axis: ShiftAxis,
    steps: &[isize],
    h: f64,
) -> Result<EquivarianceCurve>
where
    F: FnMut(ArrayView4<f32>) -> Result<Array4<f32>>,
{
    let base = apply(inputs)?;
    let points = steps
        .iter()
        .map(|&k| {
            let s = axis.shift(k);
            let shifted_in = shift_batch(inputs, s, 0.0);
            let shifted_out = apply(shifted_in.view())?;
            point_from_outputs(base.view(), shifted_out.view(), s, k, k as f64 * h)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(EquivarianceCurve { axis, points })
}

/// One curve point from outputs computed elsewhere (the solver's ground truth solves the
/// translated stimulus itself rather than a shifted raster).
pub fn point_from_outputs(
    base: ArrayView4<f32>,
    shifted: ArrayView4<f32>,
    s: Shift,
    steps: isize,
    shift: f64,
) -> Result<CurvePoint> {
    let errs = equivariance_errors(base, shifted, s)?;
    let channels = (0..base.shape()[1])
        .map(|c| summarize(&errs.iter().map(|e| e[c]).collect::<Vec<_>>()))
        .collect::<Result<Vec<_>>>()?;
    Ok(CurvePoint {
        steps,
        shift,
        channels,
    })
}

/// Delays every sample of a batch `[B, C, nt, nx]` by its own number of steps (rest fill,
/// tail dropped): exact data augmentation for the FHN problem, whose solution before the
/// stimulus is the rest state.
pub fn delay_each(a: ArrayView4<f32>, delays: &[usize]) -> Result<Array4<f32>> {
    if delays.len() != a.shape()[0] {
        return Err(EvalError::invalid(
            "number of delays",
            delays.len(),
            format!("one per sample ({})", a.shape()[0]),
        ));
    }
    let mut out = Array4::zeros(a.raw_dim());
    for (b, &k) in delays.iter().enumerate() {
        let one = a.slice(s![b..b + 1, .., .., ..]);
        let k = isize::try_from(k)
            .map_err(|_| EvalError::invalid("delay", k, "a delay that fits in isize"))?;
        out.slice_mut(s![b..b + 1, .., .., ..])
            .assign(&shift_batch(one, Shift::time(k), 0.0));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::Array4;

    fn ramp(nt: usize, nx: usize) -> Array4<f32> {
        Array4::from_shape_fn((1, 1, nt, nx), |(_, _, t, x)| (10 * t + x + 1) as f32)
    }

    #[test]
    fn delay_fills_rest_and_drops_the_tail() {
        let a = ramp(3, 2); // rows [1,2], [11,12], [21,22]
        let d = shift_batch(a.view(), Shift::time(1), 0.0);
        assert_eq!(
            d.into_raw_vec_and_offset().0,
            vec![0., 0., 1., 2., 11., 12.]
        );
    }

    #[test]
    fn space_shift_both_directions() {
        let a = ramp(1, 4); // [1, 2, 3, 4]
        assert_eq!(
            shift_batch(a.view(), Shift::space(1), -1.0)
                .into_raw_vec_and_offset()
                .0,
            vec![-1., 1., 2., 3.]
        );
        assert_eq!(
            shift_batch(a.view(), Shift::space(-2), 0.0)
                .into_raw_vec_and_offset()
                .0,
            vec![3., 4., 0., 0.]
        );
        assert_eq!(
            shift_batch(a.view(), Shift::space(9), 0.0)
                .into_raw_vec_and_offset()
                .0,
            vec![0.; 4]
        );
    }

    #[test]
    fn windows_follow_the_physics() {
        assert_eq!(
            common_window(10, 8, Shift::time(3)).unwrap(),
            Window { t: 0..10, x: 0..8 }
        );
        assert_eq!(
            common_window(10, 8, Shift::time(-3)).unwrap(),
            Window { t: 0..7, x: 0..8 }
        );
        assert_eq!(
            common_window(10, 8, Shift::space(2)).unwrap(),
            Window { t: 0..10, x: 2..8 }
        );
        assert_eq!(
            common_window(10, 8, Shift::space(-2)).unwrap(),
            Window { t: 0..10, x: 0..6 }
        );
        assert!(common_window(10, 8, Shift::space(8)).is_err());
    }

    #[test]
    fn an_equivariant_map_scores_zero_and_a_positional_one_does_not() {
        // Pointwise maps commute with shifts that fill with a fixed point (f(0) = 0).
        let inputs = Array4::from_shape_fn((2, 1, 12, 10), |(b, _, t, x)| {
            if (3..5).contains(&t) && x == 4 + b {
                1.0
            } else {
                0.0
            }
        });
        let square = |i: ArrayView4<f32>| Ok(i.mapv(|v| v * v));
        for axis in [ShiftAxis::Time, ShiftAxis::Space] {
            let c = curve(square, inputs.view(), axis, &[0, 1, 3], 0.5).unwrap();
            for p in &c.points {
                assert_eq!(p.channels[0].max, 0.0, "{axis:?} {p:?}");
            }
            assert_eq!(c.at(3).unwrap().shift, 1.5);
        }
        // Adding the absolute x coordinate breaks equivariance in space but not in time.
        let positional = |i: ArrayView4<f32>| {
            let mut o = i.to_owned();
            o.indexed_iter_mut()
                .for_each(|((_, _, _, x), v)| *v += x as f32 * (*v));
            Ok(o)
        };
        let c = curve(positional, inputs.view(), ShiftAxis::Space, &[0, 2], 1.0).unwrap();
        assert_eq!(c.at(0).unwrap().channels[0].max, 0.0);
        // Sample 0: base value at x=4 is 1+4 = 5 → shifted reference 5 at x=6; model gives 1+6 = 7.
        assert_relative_eq!(c.at(2).unwrap().channels[0].max, 2.0 / 5.0, epsilon = 1e-6);
        let c = curve(positional, inputs.view(), ShiftAxis::Time, &[2], 1.0).unwrap();
        assert_eq!(c.at(2).unwrap().channels[0].max, 0.0);
    }

    #[test]
    fn errors_are_measured_on_the_common_window_only() {
        // The shifted output differs from the reference only in column 0, which a shift by
        // +1 in x uncovers (unknown), so the error is zero.
        let base = ramp(2, 3);
        let mut shifted = shift_batch(base.view(), Shift::space(1), 0.0);
        shifted[[0, 0, 0, 0]] = 100.0;
        let e = equivariance_errors(base.view(), shifted.view(), Shift::space(1)).unwrap();
        assert_eq!(e[0][0], 0.0);
        shifted[[0, 0, 1, 2]] += 1.0; // inside the window: reference there is 12
        let e = equivariance_errors(base.view(), shifted.view(), Shift::space(1)).unwrap();
        let den = (1f64 + 4.0 + 121.0 + 144.0).sqrt();
        assert_relative_eq!(e[0][0], 1.0 / den, epsilon = 1e-7);
    }

    #[test]
    fn delay_each_delays_samples_independently() {
        let a = Array4::from_shape_fn((2, 1, 3, 1), |(_, _, t, _)| (t + 1) as f32);
        let d = delay_each(a.view(), &[0, 2]).unwrap();
        assert_eq!(d.into_raw_vec_and_offset().0, vec![1., 2., 3., 0., 0., 1.]);
        assert!(delay_each(a.view(), &[1]).is_err());
    }
}
