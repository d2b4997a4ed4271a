//! Per-sample, per-field error metrics and their aggregates.
//!
//! Every metric compares one predicted field with its truth on the output grid `[nt, nx]`
//! (axis order (t, x)). The relative errors follow the conventions of the anchors (see
//! docs/evaluation.md): the norms are discrete sums over the nodes (uniform quadrature
//! weights cancel in a ratio), and the relative H1 error sums the squared function values
//! and their first finite-difference derivatives in t and in x, as neuraloperator's
//! `H1Loss` does, but with non-periodic differences since the FHN domain is not periodic.

use ndarray::{ArrayView2, ArrayView4, Axis};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};

/// Added to every denominator, as neuraloperator's `LpLoss` does, so a zero truth gives a
/// large but finite relative error instead of a NaN.
pub const EPS: f64 = 1e-8;

/// The names of the output fields, in channel order.
pub const FIELDS: [&str; 2] = ["v", "w"];

/// The errors of one predicted field against its truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldErrors {
    /// ‖p − y‖₂ / (‖y‖₂ + ε).
    pub rel_l2: f64,
    /// ‖p − y‖₁ / (‖y‖₁ + ε).
    pub rel_l1: f64,
    /// Relative H1: √(Σ ‖Δ‖² over the field, ∂t and ∂x) / (√(Σ ‖y_term‖²) + ε).
    pub rel_h1: f64,
    /// max |p − y| (absolute, in the field's units).
    pub max_abs: f64,
}

/// The spacings of the output grid, used by the derivative terms of the H1 error.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Spacing {
    /// Time between output rows.
    pub dt: f64,
    /// Distance between output columns.
    pub dx: f64,
}

impl Spacing {
    /// Checks both spacings are finite and positive.
    pub fn validate(&self) -> Result<()> {
        for (what, h) in [("spacing.dt", self.dt), ("spacing.dx", self.dx)] {
            if !(h.is_finite() && h > 0.0) {
                return Err(EvalError::invalid(
                    what,
                    h,
                    "a finite, positive grid spacing",
                ));
            }
        }
        Ok(())
    }
}

/// Finite-difference derivative along `axis` with spacing `h`: central differences inside,
/// first-order one-sided differences at the two ends (NumPy's `gradient` with `edge_order=1`).
/// An axis of length 1 has derivative 0.
pub fn derivative(a: ArrayView2<f64>, axis: usize, h: f64) -> ndarray::Array2<f64> {
    let n = a.len_of(Axis(axis));
    let mut d = ndarray::Array2::<f64>::zeros(a.raw_dim());
    if n < 2 {
        return d;
    }
    for k in 0..n {
        let (lo, hi, span) = if k == 0 {
            (0, 1, h)
        } else if k == n - 1 {
            (n - 2, n - 1, h)
        } else {
            (k - 1, k + 1, 2.0 * h)
        };
        let diff = &a.index_axis(Axis(axis), hi) - &a.index_axis(Axis(axis), lo);
        d.index_axis_mut(Axis(axis), k).assign(&(diff / span));
    }
    d
}

/// The errors of `pred` against `truth`, two fields of the same shape `[nt, nx]`.
pub fn field_errors(
    pred: ArrayView2<f32>,
    truth: ArrayView2<f32>,
    spacing: Spacing,
) -> Result<FieldErrors> {
    if pred.shape() != truth.shape() {
        return Err(EvalError::shape(
            "field_errors (prediction)",
            pred.shape(),
            format!("{:?} like the truth", truth.shape()),
        ));
    }
    if pred.is_empty() {
        return Err(EvalError::shape(
            "field_errors",
            pred.shape(),
            "a non-empty [nt, nx] field",
        ));
    }
    spacing.validate()?;
    let p = pred.mapv(f64::from);
    let y = truth.mapv(f64::from);
    let e = &p - &y;
    let sq = |a: &ndarray::Array2<f64>| a.iter().map(|v| v * v).sum::<f64>();
    let l1 = |a: &ndarray::Array2<f64>| a.iter().map(|v| v.abs()).sum::<f64>();
    let rel_l2 = sq(&e).sqrt() / (sq(&y).sqrt() + EPS);
    let rel_l1 = l1(&e) / (l1(&y) + EPS);
    let (et, ex) = (
        derivative(e.view(), 0, spacing.dt),
        derivative(e.view(), 1, spacing.dx),
    );
    let (yt, yx) = (
        derivative(y.view(), 0, spacing.dt),
        derivative(y.view(), 1, spacing.dx),
    );
    let rel_h1 = (sq(&e) + sq(&et) + sq(&ex)).sqrt() / ((sq(&y) + sq(&yt) + sq(&yx)).sqrt() + EPS);
    let max_abs = e.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    Ok(FieldErrors {
        rel_l2,
        rel_l1,
        rel_h1,
        max_abs,
    })
}

/// The errors of one sample: one [`FieldErrors`] per output channel (v, then w).
pub type SampleErrors = Vec<FieldErrors>;

/// Errors of every sample and channel of a batch `[N, C, nt, nx]`; `result[n][c]`.
pub fn batch_errors(
    pred: ArrayView4<f32>,
    truth: ArrayView4<f32>,
    spacing: Spacing,
) -> Result<Vec<SampleErrors>> {
    if pred.shape() != truth.shape() {
        return Err(EvalError::shape(
            "batch_errors (prediction)",
            pred.shape(),
            format!("{:?} like the truth", truth.shape()),
        ));
    }
    pred.outer_iter()
        .zip(truth.outer_iter())
        .map(|(p, y)| {
            p.outer_iter()
                .zip(y.outer_iter())
                .map(|(pc, yc)| field_errors(pc, yc, spacing))
                .collect()
        })
        .collect()
}

/// Location and spread of a set of per-sample values.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Number of values.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: f64,
    /// Median (the 0.5 quantile).
    pub median: f64,
    /// 0.05 quantile.
    pub q05: f64,
    /// 0.25 quantile.
    pub q25: f64,
    /// 0.75 quantile.
    pub q75: f64,
    /// 0.95 quantile.
    pub q95: f64,
    /// Largest value.
    pub max: f64,
}

/// The `q`-quantile of sorted values with linear interpolation between order statistics
/// (NumPy's default, "type 7"): position `q·(n−1)`.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Result<f64> {
    if sorted.is_empty() {
        return Err(EvalError::invalid(
            "quantile input length",
            0,
            "at least one value",
        ));
    }
    if !(0.0..=1.0).contains(&q) {
        return Err(EvalError::invalid("quantile level", q, "a level in [0, 1]"));
    }
    let pos = q * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    Ok(sorted[lo] + (pos - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Summarises `values`; NaNs are an error (they would silently poison the ranking).
pub fn summarize(values: &[f64]) -> Result<Summary> {
    if values.is_empty() {
        return Err(EvalError::invalid(
            "number of values to summarise",
            0,
            "at least one",
        ));
    }
    if let Some(i) = values.iter().position(|v| v.is_nan()) {
        return Err(EvalError::invalid(
            format!("value #{i} to summarise"),
            "NaN",
            "a number",
        ));
    }
    let mut s = values.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    Ok(Summary {
        n: s.len(),
        mean: s.iter().sum::<f64>() / s.len() as f64,
        median: quantile_sorted(&s, 0.5)?,
        q05: quantile_sorted(&s, 0.05)?,
        q25: quantile_sorted(&s, 0.25)?,
        q75: quantile_sorted(&s, 0.75)?,
        q95: quantile_sorted(&s, 0.95)?,
        max: s[s.len() - 1],
    })
}

/// Aggregates of every metric of one field over a set of samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FieldSummary {
    /// Relative L2.
    pub rel_l2: Summary,
    /// Relative L1.
    pub rel_l1: Summary,
    /// Relative H1.
    pub rel_h1: Summary,
    /// Max absolute error.
    pub max_abs: Summary,
}

/// Summarises channel `channel` of per-sample errors.
pub fn summarize_field(errors: &[SampleErrors], channel: usize) -> Result<FieldSummary> {
    let pick = |f: fn(&FieldErrors) -> f64| -> Result<Vec<f64>> {
        errors
            .iter()
            .enumerate()
            .map(|(i, e)| {
                e.get(channel).map(f).ok_or_else(|| {
                    EvalError::invalid(
                        format!("channel of sample {i}"),
                        channel,
                        format!("< {}", e.len()),
                    )
                })
            })
            .collect()
    };
    Ok(FieldSummary {
        rel_l2: summarize(&pick(|e| e.rel_l2)?)?,
        rel_l1: summarize(&pick(|e| e.rel_l1)?)?,
        rel_h1: summarize(&pick(|e| e.rel_h1)?)?,
        max_abs: summarize(&pick(|e| e.max_abs)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;
    use ndarray::{array, Array4};

    const UNIT: Spacing = Spacing { dt: 1.0, dx: 1.0 };

    #[test]
    fn relative_norms_match_hand_computation() {
        // y = [[3, 0], [0, 4]], p = y + [[1, 0], [0, -2]]: ‖e‖₂ = √5, ‖y‖₂ = 5; ‖e‖₁ = 3, ‖y‖₁ = 7.
        let y = array![[3.0f32, 0.0], [0.0, 4.0]];
        let p = array![[4.0f32, 0.0], [0.0, 2.0]];
        let e = field_errors(p.view(), y.view(), UNIT).unwrap();
        assert_relative_eq!(e.rel_l2, 5f64.sqrt() / 5.0, epsilon = 1e-9);
        assert_relative_eq!(e.rel_l1, 3.0 / 7.0, epsilon = 1e-9);
        assert_relative_eq!(e.max_abs, 2.0, epsilon = 1e-12);
    }

    #[test]
    fn h1_matches_hand_computation() {
        // Truth y = [[0, 1, 2]] (one time row, x-derivative 1 everywhere, t-derivative 0).
        // Error e = [[1, 1, 1]] (constant: both derivatives 0).
        // ‖y‖² = 5, ‖∂x y‖² = 3 (h = 1) → denominator √8; numerator √3.
        let y = array![[0.0f32, 1.0, 2.0]];
        let p = array![[1.0f32, 2.0, 3.0]];
        let e = field_errors(p.view(), y.view(), UNIT).unwrap();
        assert_relative_eq!(e.rel_h1, 3f64.sqrt() / (8f64.sqrt() + EPS), epsilon = 1e-12);
        // With dx = 0.5 the x-derivative doubles: ‖∂x y‖² = 12 → denominator √17.
        let e = field_errors(p.view(), y.view(), Spacing { dt: 1.0, dx: 0.5 }).unwrap();
        assert_relative_eq!(
            e.rel_h1,
            3f64.sqrt() / (17f64.sqrt() + EPS),
            epsilon = 1e-12
        );
    }

    #[test]
    fn derivative_is_central_inside_and_one_sided_at_ends() {
        let a = array![[0.0, 1.0, 4.0, 9.0]];
        let d = derivative(a.view(), 1, 1.0);
        assert_eq!(d, array![[1.0, 2.0, 4.0, 5.0]]);
        let d = derivative(a.t(), 0, 2.0);
        assert_eq!(d.column(0).to_vec(), vec![0.5, 1.0, 2.0, 2.5]);
    }

    #[test]
    fn exact_prediction_has_zero_error_and_zero_truth_stays_finite() {
        let y = array![[1.0f32, -2.0], [0.5, 0.25]];
        let e = field_errors(y.view(), y.view(), UNIT).unwrap();
        assert_eq!(
            (e.rel_l2, e.rel_l1, e.rel_h1, e.max_abs),
            (0.0, 0.0, 0.0, 0.0)
        );
        let z = ndarray::Array2::<f32>::zeros((2, 2));
        let e = field_errors(y.view(), z.view(), UNIT).unwrap();
        assert!(e.rel_l2.is_finite() && e.rel_l2 > 1e7);
    }

    #[test]
    fn shape_mismatch_and_bad_spacing_are_errors() {
        let a = ndarray::Array2::<f32>::zeros((2, 3));
        let b = ndarray::Array2::<f32>::zeros((3, 2));
        assert!(matches!(
            field_errors(a.view(), b.view(), UNIT),
            Err(EvalError::Shape { .. })
        ));
        assert!(matches!(
            field_errors(a.view(), a.view(), Spacing { dt: 0.0, dx: 1.0 }),
            Err(EvalError::Invalid { .. })
        ));
    }

    #[test]
    fn batch_errors_index_samples_then_channels() {
        let mut y = Array4::<f32>::ones((2, 2, 1, 2));
        let p = y.clone();
        y[[1, 0, 0, 0]] = 3.0; // sample 1, channel v: p = [1, 1], y = [3, 1]
        let e = batch_errors(p.view(), y.view(), UNIT).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0][0].rel_l2, 0.0);
        assert_eq!(e[1][1].rel_l2, 0.0);
        assert_relative_eq!(e[1][0].rel_l2, 2.0 / 10f64.sqrt(), epsilon = 1e-7);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4], [0.25, 0.5, 0.95]) = [1.75, 2.5, 3.85]
        let s = summarize(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_relative_eq!(s.q25, 1.75, epsilon = 1e-12);
        assert_relative_eq!(s.median, 2.5, epsilon = 1e-12);
        assert_relative_eq!(s.q95, 3.85, epsilon = 1e-12);
        assert_relative_eq!(s.q05, 1.15, epsilon = 1e-12);
        assert_eq!((s.n, s.mean, s.max), (4, 2.5, 4.0));
        let odd = summarize(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!(odd.median, 3.0);
    }

    #[test]
    fn summaries_reject_empty_and_nan() {
        assert!(summarize(&[]).is_err());
        assert!(summarize(&[1.0, f64::NAN]).is_err());
        assert!(quantile_sorted(&[1.0], 1.5).is_err());
    }

    #[test]
    fn field_summary_picks_the_channel() {
        let mk = |l2: f64| FieldErrors {
            rel_l2: l2,
            rel_l1: 0.0,
            rel_h1: 0.0,
            max_abs: 0.0,
        };
        let errs = vec![vec![mk(1.0), mk(10.0)], vec![mk(3.0), mk(30.0)]];
        assert_eq!(summarize_field(&errs, 0).unwrap().rel_l2.mean, 2.0);
        assert_eq!(summarize_field(&errs, 1).unwrap().rel_l2.mean, 20.0);
        assert!(summarize_field(&errs, 2).is_err());
    }
}
