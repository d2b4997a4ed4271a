//! Output grids, fine solver grids, and exact sampling of one onto the other.
//!
//! The output grid has `nt × nx` nodes over `[0, t_end] × [0, length]`, endpoints included,
//! axis order (t, x) as the research code uses. The fine grid refines each output interval
//! by integer factors in space and time, so every output node *is* a fine node: sampling is
//! exact (no interpolation).

use serde::{Deserialize, Serialize};

use crate::error::{check_positive, Result, SolverError};
use crate::limits::{check_memory, to_count, BYTES_PER_FINE_NODE, MAX_NODE_STEPS, MAX_STEPS};

/// The grid on which solutions are returned: `nt` times × `nx` positions, endpoints included.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputGrid {
    /// Number of output times (≥ 2), t = 0 and t = `t_end` included.
    pub nt: usize,
    /// Number of output positions (≥ 2), x = 0 and x = `length` included.
    pub nx: usize,
    /// Final time.
    pub t_end: f64,
    /// Domain length.
    pub length: f64,
}

impl Default for OutputGrid {
    /// 100 × 100 over (t, x) ∈ [0, 40] × [0, 1].
    fn default() -> Self {
        Self {
            nt: 100,
            nx: 100,
            t_end: 40.0,
            length: 1.0,
        }
    }
}

impl OutputGrid {
    /// A grid with `nt × nx` nodes over the default domain [0, 40] × [0, 1].
    pub fn with_size(nt: usize, nx: usize) -> Self {
        Self {
            nt,
            nx,
            ..Self::default()
        }
    }

    /// Checks sizes (≥ 2 nodes per axis, and a solution on the grid fits in memory) and
    /// extents (finite, > 0).
    pub fn validate(&self) -> Result<()> {
        if self.nt < 2 {
            return Err(SolverError::invalid(
                "output.nt",
                self.nt,
                "at least 2 output times",
            ));
        }
        if self.nx < 2 {
            return Err(SolverError::invalid(
                "output.nx",
                self.nx,
                "at least 2 output nodes",
            ));
        }
        check_positive("output.t_end", self.t_end)?;
        check_positive("output.length", self.length)?;
        // A solution holds three fields (input, v, w) of f64 on this grid.
        let (nt, nx) = (self.nt, self.nx);
        check_memory(
            || format!("the output grid {nt} × {nx} (input, v and w in f64)"),
            3.0 * 8.0 * nt as f64 * nx as f64,
        )
    }

    /// Spacing between output times.
    pub fn dt(&self) -> f64 {
        self.t_end / (self.nt - 1) as f64
    }

    /// Spacing between output positions.
    pub fn dx(&self) -> f64 {
        self.length / (self.nx - 1) as f64
    }

    /// The output times `t_k = k·t_end/(nt−1)`.
    pub fn times(&self) -> Vec<f64> {
        (0..self.nt)
            .map(|k| self.t_end * k as f64 / (self.nt - 1) as f64)
            .collect()
    }

    /// The output positions `x_j = j·length/(nx−1)`.
    pub fn positions(&self) -> Vec<f64> {
        nodes(self.nx, self.length)
    }
}

/// `n` equispaced nodes over `[0, length]`, computed as `length·j/(n−1)` so that nodes of
/// nested grids coincide bit for bit.
pub fn nodes(n: usize, length: f64) -> Vec<f64> {
    (0..n).map(|j| length * j as f64 / (n - 1) as f64).collect()
}

/// How fine the solver grid is: either bounds on the spacings (the fine grid is then the
/// coarsest refinement of the output grid that meets them) or an explicit node count and dt.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Resolution {
    /// Refine each output interval by the smallest integers giving `h ≤ max_dx`, `dt ≤ max_dt`.
    Auto {
        /// Largest allowed fine spacing.
        max_dx: f64,
        /// Largest allowed time step.
        max_dt: f64,
    },
    /// An explicit fine grid; it must contain the output grid's nodes.
    Explicit {
        /// Fine nodes in x (endpoints included).
        nx: usize,
        /// Time step.
        dt: f64,
    },
}

impl Default for Resolution {
    /// h ≤ 1/396 and dt ≤ 0.04: on the default output grid, 397 nodes and 990 steps of
    /// 40/990. Halving both changes v by < 1% relative L2 (see docs/solver.md).
    fn default() -> Self {
        Resolution::Auto {
            max_dx: 1.0 / 396.0,
            max_dt: 0.0405,
        }
    }
}

/// A fine solver grid aligned with an output grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineGrid {
    /// Fine nodes in x.
    pub nx: usize,
    /// Fine spacing.
    pub dx: f64,
    /// Number of time steps to `t_end`.
    pub steps: usize,
    /// Time step.
    pub dt: f64,
    /// Fine intervals per output interval in x.
    pub refine_x: usize,
    /// Time steps per output interval.
    pub refine_t: usize,
}

impl FineGrid {
    /// The fine grid for `out` at `resolution`; an error if it does not contain `out`'s nodes,
    /// if it would not fit in memory, or if it takes an absurd number of time steps.
    pub fn new(out: &OutputGrid, resolution: &Resolution) -> Result<Self> {
        out.validate()?;
        let (refine_x, refine_t) = match *resolution {
            Resolution::Auto { max_dx, max_dt } => {
                check_positive("resolution.max_dx", max_dx)?;
                check_positive("resolution.max_dt", max_dt)?;
                let refine_x = ceil_ratio(out.dx(), max_dx);
                check_fine_nodes(out, refine_x)?;
                let refine_t = ceil_ratio(out.dt(), max_dt);
                check_steps(out, refine_x, refine_t, "resolution.max_dt", "raise max_dt")?;
                (refine_x, refine_t)
            }
            Resolution::Explicit { nx, dt } => explicit_refinement(out, nx, dt)?,
        };
        let refine_x = to_count("resolution", refine_x, f64::MAX, "a finite refinement")?;
        let refine_t = to_count("resolution", refine_t, f64::MAX, "a finite refinement")?;
        // Both products were bounded above (memory, MAX_STEPS), so they cannot wrap.
        let nx = (out.nx - 1) * refine_x + 1;
        let steps = (out.nt - 1) * refine_t;
        Ok(Self {
            nx,
            dx: out.length / (nx - 1) as f64,
            steps,
            dt: out.t_end / steps as f64,
            refine_x,
            refine_t,
        })
    }
}

/// The refinements (as integral floats) of an explicit fine grid, checked for size first
/// and then for containing the output nodes.
fn explicit_refinement(out: &OutputGrid, nx: usize, dt: f64) -> Result<(f64, f64)> {
    if nx < 3 {
        return Err(SolverError::invalid(
            "resolution.nx",
            nx,
            "at least 3 fine nodes",
        ));
    }
    check_positive("resolution.dt", dt)?;
    check_memory(
        || format!("the fine grid of {nx} nodes"),
        nx as f64 * BYTES_PER_FINE_NODE,
    )?;
    if !(nx - 1).is_multiple_of(out.nx - 1) {
        return Err(SolverError::GridMismatch(format!(
            "fine nx = {nx}: nx − 1 must be a multiple of output nx − 1 = {}",
            out.nx - 1
        )));
    }
    let refine_x = ((nx - 1) / (out.nx - 1)) as f64;
    let ratio = out.dt() / dt;
    let q = ratio.round();
    check_steps(out, refine_x, q, "resolution.dt", "raise dt")?;
    if q < 1.0 || (ratio - q).abs() > 1e-9 * ratio {
        return Err(SolverError::GridMismatch(format!(
            "dt = {dt}: the output spacing {} must be an integer multiple of dt",
            out.dt()
        )));
    }
    Ok((refine_x, q))
}

/// Refuses a fine grid (output intervals × `refine_x` + 1 nodes) that does not fit in memory.
fn check_fine_nodes(out: &OutputGrid, refine_x: f64) -> Result<()> {
    let nodes = (out.nx - 1) as f64 * refine_x + 1.0;
    check_memory(
        || {
            format!(
                "the fine grid of {nodes:.4e} nodes ({} output nodes refined {refine_x:e} times)",
                out.nx
            )
        },
        nodes * BYTES_PER_FINE_NODE,
    )
}

/// Refuses a step count above [`MAX_STEPS`] or a total work above [`MAX_NODE_STEPS`]; `name`
/// is the field that sets the step and `fix` says how to change it.
fn check_steps(
    out: &OutputGrid,
    refine_x: f64,
    refine_t: f64,
    name: &str,
    fix: &str,
) -> Result<()> {
    let steps = (out.nt - 1) as f64 * refine_t;
    let nodes = (out.nx - 1) as f64 * refine_x + 1.0;
    if steps > MAX_STEPS || steps * nodes > MAX_NODE_STEPS || !steps.is_finite() {
        return Err(SolverError::invalid(
            name,
            format!("{:e}", out.dt() / refine_t.max(1.0)),
            &format!(
                "a step that reaches t_end = {} in at most {MAX_STEPS:e} steps and \
                 {MAX_NODE_STEPS:e} node updates; this one takes {steps:e} steps on \
                 {nodes:e} fine nodes ({fix}, or lower output.nt)",
                out.t_end
            ),
        ));
    }
    Ok(())
}

/// The smallest integer `r ≥ 1` with `coarse / r ≤ fine` (up to rounding), as a float: the
/// caller checks its size before converting it.
fn ceil_ratio(coarse: f64, fine: f64) -> f64 {
    let r = coarse / fine;
    let rounded = r.round();
    if (r - rounded).abs() <= 1e-9 * r {
        rounded.max(1.0)
    } else {
        r.ceil().max(1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_fine_grid_contains_output_nodes() {
        let out = OutputGrid::default();
        let fine = FineGrid::new(&out, &Resolution::default()).unwrap();
        assert_eq!(fine.nx, 397);
        assert_eq!(fine.steps, 990);
        let xf = nodes(fine.nx, out.length);
        for (j, x) in out.positions().iter().enumerate() {
            assert_eq!(xf[j * fine.refine_x], *x);
        }
    }

    #[test]
    fn explicit_grid_must_contain_output() {
        let out = OutputGrid::default();
        let bad = FineGrid::new(
            &out,
            &Resolution::Explicit {
                nx: 400,
                dt: 40.0 / 990.0,
            },
        );
        assert!(matches!(bad, Err(SolverError::GridMismatch(_))));
        let bad_dt = FineGrid::new(&out, &Resolution::Explicit { nx: 397, dt: 0.03 });
        assert!(matches!(bad_dt, Err(SolverError::GridMismatch(_))));
        let neg = FineGrid::new(&out, &Resolution::Explicit { nx: 397, dt: -1.0 });
        assert!(matches!(neg, Err(SolverError::InvalidParameter { .. })));
        let ok = FineGrid::new(
            &out,
            &Resolution::Explicit {
                nx: 199,
                dt: 40.0 / 198.0,
            },
        )
        .unwrap();
        assert_eq!((ok.refine_x, ok.refine_t), (2, 2));
    }

    #[test]
    fn too_few_nodes_is_an_error() {
        let out = OutputGrid::with_size(1, 100);
        assert!(FineGrid::new(&out, &Resolution::default()).is_err());
    }
}
