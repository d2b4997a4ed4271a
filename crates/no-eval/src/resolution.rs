//! Zero-shot evaluation on a finer output grid.
//!
//! A model that says it accepts other resolutions (the Fourier family and CNO) is run,
//! unchanged, on samples the solver computes directly on a finer output grid of the same
//! domain and physics, and scored with the same metrics (with the fine grid's spacings). The
//! solver's sample `i` on the fine grid has exactly the stimulus of sample `i` on the study
//! grid, so the only thing that changes is the resolution.

use fhn_solver::{OutputGrid, Protocol, Split};
use ndarray::{s, Array4, ArrayView4};

use crate::error::{EvalError, Result};
use crate::metrics::{batch_errors, summarize_field, FieldSummary, Spacing};

/// Samples of one split solved on a finer grid: inputs `[N, 1, nt, nx]`, truth
/// `[N, 2, nt, nx]` (v, w) and the grid's spacings.
#[derive(Debug, Clone)]
pub struct FineSet {
    /// The applied current.
    pub inputs: Array4<f32>,
    /// v and w from the solver.
    pub truth: Array4<f32>,
    /// Spacings of the fine grid.
    pub spacing: Spacing,
}

/// Solves the first `n` samples of `split` of `protocol` on an `nt × nx` output grid over the
/// protocol's domain.
pub fn solve_fine(
    protocol: &Protocol,
    split: Split,
    n: usize,
    [nt, nx]: [usize; 2],
) -> Result<FineSet> {
    if n == 0 {
        return Err(EvalError::invalid(
            "fine-grid samples",
            0,
            "at least one sample",
        ));
    }
    let grid = OutputGrid {
        nt,
        nx,
        ..protocol.output
    };
    grid.validate()?;
    let mut inputs = Array4::<f32>::zeros((n, 1, nt, nx));
    let mut truth = Array4::<f32>::zeros((n, 2, nt, nx));
    for i in 0..n {
        let sol = protocol.solve_sample_on(split, i, &grid)?;
        inputs
            .slice_mut(s![i, 0, .., ..])
            .assign(&sol.input.mapv(|v| v as f32));
        truth
            .slice_mut(s![i, 0, .., ..])
            .assign(&sol.v.mapv(|v| v as f32));
        truth
            .slice_mut(s![i, 1, .., ..])
            .assign(&sol.w.mapv(|v| v as f32));
    }
    Ok(FineSet {
        inputs,
        truth,
        spacing: Spacing {
            dt: grid.dt(),
            dx: grid.dx(),
        },
    })
}

/// Per-field summaries of `predict` on the fine set.
pub fn evaluate<F>(predict: F, set: &FineSet) -> Result<Vec<FieldSummary>>
where
    F: Fn(ArrayView4<f32>) -> Result<Array4<f32>>,
{
    let y = predict(set.inputs.view())?;
    let errs = batch_errors(y.view(), set.truth.view(), set.spacing)?;
    (0..set.truth.shape()[1])
        .map(|c| summarize_field(&errs, c))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhn_solver::Resolution;

    fn protocol() -> Protocol {
        let mut p = Protocol::quick();
        p.output = OutputGrid::with_size(10, 10);
        p.resolution = Resolution::Auto {
            max_dx: 1.0 / 54.0,
            max_dt: 0.1,
        };
        p
    }

    #[test]
    fn fine_samples_restrict_to_the_study_grid() {
        // Every other node of the 19 × 19 solve is a node of the 10 × 10 study grid, and the
        // solver resolves both on fine grids of the same spacing bounds: the fields agree.
        let p = protocol();
        let fine = solve_fine(&p, Split::Test, 2, [19, 19]).unwrap();
        assert_eq!(fine.inputs.dim(), (2, 1, 19, 19));
        let coarse = fhn_solver::generate(&p, Split::Test, None, false).unwrap();
        let sub = fine.truth.slice(s![1, 0, ..;2, ..;2]);
        let c = coarse.v.slice(s![1, .., ..]);
        let err = (&sub - &c).mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        let scale = c.mapv(f32::abs).fold(0f32, |m, &v| m.max(v));
        assert!(
            err <= 0.05 * scale,
            "max difference {err} against max |v| {scale}"
        );
        assert!(solve_fine(&p, Split::Test, 0, [19, 19]).is_err());
    }

    #[test]
    fn exact_predictor_scores_zero() {
        let fine = solve_fine(&protocol(), Split::Test, 1, [19, 19]).unwrap();
        let truth = fine.truth.clone();
        let sums = evaluate(|_| Ok(truth.clone()), &fine).unwrap();
        assert_eq!(sums.len(), 2);
        assert_eq!(sums[0].rel_l2.max, 0.0);
    }
}
