//! The 2D solve on a rectangle `[0, lx] × [0, ly]` with zero-flux walls: the same schemes as
//! in 1D, the 5-point Laplacian, and the implicit solve diagonalised by DCT-I.

use ndarray::Array3;
use serde::{Deserialize, Serialize};

use crate::error::{Result, SolverError};
use crate::grid::{nodes, FineGrid, OutputGrid, Resolution};
use crate::imex::{Forcing, Stepper};
use crate::implicit::Plane;
use crate::limits::{check_memory, BYTES_PER_FINE_NODE};
use crate::simulate::SolverConfig;
use crate::stimulus::Pulse;

/// The 2D output grid: `nt` times × `nx × ny` nodes, endpoints included; arrays are
/// shaped [nt, nx, ny].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputGrid2d {
    /// Output times (≥ 2).
    pub nt: usize,
    /// Output nodes along x (≥ 2).
    pub nx: usize,
    /// Output nodes along y (≥ 2).
    pub ny: usize,
    /// Final time.
    pub t_end: f64,
    /// Extent along x.
    pub lx: f64,
    /// Extent along y.
    pub ly: f64,
}

impl OutputGrid2d {
    /// The x axis as a 1D output grid.
    fn along_x(&self) -> OutputGrid {
        OutputGrid {
            nt: self.nt,
            nx: self.nx,
            t_end: self.t_end,
            length: self.lx,
        }
    }

    /// The y axis as a 1D output grid.
    fn along_y(&self) -> OutputGrid {
        OutputGrid {
            nt: self.nt,
            nx: self.ny,
            t_end: self.t_end,
            length: self.ly,
        }
    }
}

/// A 2D pulse: a 1D [`Pulse`] (its x profile and time course) times the same shape along y,
/// centred at `y0` with `width_y` (the box width or the Gaussian σ).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pulse2d {
    /// The x profile, time course and amplitude.
    pub pulse: Pulse,
    /// Centre along y.
    pub y0: f64,
    /// Width (box) or σ (Gaussian) along y.
    pub width_y: f64,
}

/// A 2D stimulus: the sum of its pulses.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stimulus2d {
    /// The pulses, summed.
    pub pulses: Vec<Pulse2d>,
}

impl Stimulus2d {
    /// `I(t, x, y)`.
    pub fn eval(&self, t: f64, x: f64, y: f64) -> f64 {
        self.pulses
            .iter()
            .map(|p| p.pulse.eval(t, x) * p.pulse.space_factor_with(y, p.y0, p.width_y))
            .sum()
    }

    /// Checks every pulse, and that it acts on the domain of `out` (see
    /// [`Pulse::validate_on`]; its centre y0 must lie in `[0, ly]` too).
    fn validate_on(&self, out: &OutputGrid2d) -> Result<()> {
        for p in &self.pulses {
            p.pulse.validate_on(out.lx, out.t_end)?;
            if !(p.width_y.is_finite() && p.width_y > 0.0) {
                return Err(SolverError::invalid(
                    "pulse2d.width_y",
                    p.width_y,
                    "a finite width_y > 0",
                ));
            }
            if !(0.0..=out.ly).contains(&p.y0) {
                return Err(SolverError::invalid(
                    "pulse2d.y0",
                    p.y0,
                    &format!("a centre inside the domain [0, {}]", out.ly),
                ));
            }
        }
        Ok(())
    }
}

/// A 2D solution on the output grid, arrays shaped [nt, nx, ny].
#[derive(Debug, Clone, PartialEq)]
pub struct Solution2d {
    /// The applied current.
    pub input: Array3<f64>,
    /// The membrane potential.
    pub v: Array3<f64>,
    /// The recovery variable.
    pub w: Array3<f64>,
    /// The output grid.
    pub grid: OutputGrid2d,
}

/// Solves the 2D model. With [`Resolution::Explicit`], `nx` sets the x refinement and y is
/// refined by the same factor.
pub fn simulate_2d(
    config: &SolverConfig,
    stimulus: &Stimulus2d,
    out: &OutputGrid2d,
) -> Result<Solution2d> {
    config.validate()?;
    out.along_y().validate()?;
    stimulus.validate_on(out)?;
    let fx = FineGrid::new(&out.along_x(), &config.resolution)?;
    check_memory(
        || {
            format!(
                "the 2D output grid {} × {} × {} (v and w in f64)",
                out.nt, out.nx, out.ny
            )
        },
        2.0 * 8.0 * out.nt as f64 * out.nx as f64 * out.ny as f64,
    )?;
    let res_y = match config.resolution {
        Resolution::Explicit { dt, .. } => Resolution::Explicit {
            nx: (out.ny - 1) * fx.refine_x + 1,
            dt,
        },
        auto => auto,
    };
    let fy = FineGrid::new(&out.along_y(), &res_y)?;
    check_memory(
        || format!("the 2D fine grid {} × {}", fx.nx, fy.nx),
        fx.nx as f64 * fy.nx as f64 * BYTES_PER_FINE_NODE,
    )?;
    let plane = Plane::new(fx.nx, fy.nx, fx.dx, fy.dx);
    let (xs, ys) = (nodes(fx.nx, out.lx), nodes(fy.nx, out.ly));
    let forcing = Forcing::new(
        &stimulus.pulses.iter().map(|p| p.pulse).collect::<Vec<_>>(),
        fx.nx * fy.nx,
        fx.dt,
        |k, i| {
            let q = &stimulus.pulses[k];
            q.pulse.node_space_factor(xs[i / fy.nx], fx.dx, out.lx)
                * q.pulse
                    .node_space_factor_with(ys[i % fy.nx], fy.dx, out.ly, q.y0, q.width_y)
        },
    );
    let mut stepper = Stepper::new(config.params, config.scheme, fx.dt, &plane);
    let shape = (out.nt, out.nx, out.ny);
    let (mut v, mut w) = (Array3::zeros(shape), Array3::zeros(shape));
    for k in 1..out.nt {
        for s in 0..fx.refine_t {
            let n = (k - 1) * fx.refine_t + s;
            stepper.step(out.t_end * n as f64 / fx.steps as f64, &forcing)?;
        }
        for i in 0..out.nx {
            for j in 0..out.ny {
                let idx = i * fx.refine_x * fy.nx + j * fy.refine_x;
                v[[k, i, j]] = stepper.v[idx];
                w[[k, i, j]] = stepper.w[idx];
            }
        }
    }
    let (ts, xo, yo) = (
        out.along_x().times(),
        nodes(out.nx, out.lx),
        nodes(out.ny, out.ly),
    );
    let input = Array3::from_shape_fn(shape, |(k, i, j)| stimulus.eval(ts[k], xo[i], yo[j]));
    Ok(Solution2d {
        input,
        v,
        w,
        grid: *out,
    })
}
