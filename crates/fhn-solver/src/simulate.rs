//! The 1D solve: parameters + scheme + resolution + stimulus → (input, v, w) on the output grid.

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::grid::{nodes, FineGrid, OutputGrid, Resolution};
use crate::imex::{Forcing, Scheme, Stepper};
use crate::implicit::Line;
use crate::params::FhnParams;
use crate::sbdf2_line::Sbdf2Line;
use crate::stimulus::Stimulus;

/// Everything about a solve except the stimulus and the output grid.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SolverConfig {
    /// Model parameters.
    #[serde(default)]
    pub params: FhnParams,
    /// Time-stepping scheme.
    #[serde(default)]
    pub scheme: Scheme,
    /// Fine-grid resolution.
    #[serde(default)]
    pub resolution: Resolution,
}

impl SolverConfig {
    /// Validates the parameters (the resolution is checked against an output grid).
    pub fn validate(&self) -> Result<()> {
        self.params.validate()
    }
}

/// A 1D solution sampled on the output grid; every array is shaped [nt, nx], axis order (t, x).
#[derive(Debug, Clone, PartialEq)]
pub struct Solution1d {
    /// The applied current I at the output nodes.
    pub input: Array2<f64>,
    /// The membrane potential v.
    pub v: Array2<f64>,
    /// The recovery variable w.
    pub w: Array2<f64>,
    /// The output grid.
    pub grid: OutputGrid,
}

/// A 1D solver for one (config, output grid): the fine grid is derived and the implicit
/// operator checked once; [`Solver1d::solve`] may be called for many stimuli (from many
/// threads).
#[derive(Debug, Clone)]
pub struct Solver1d {
    config: SolverConfig,
    out: OutputGrid,
    fine: FineGrid,
    line: Line,
    fine_x: Vec<f64>,
}

impl Solver1d {
    /// Validates the config and grid and derives the fine grid.
    pub fn new(config: &SolverConfig, out: &OutputGrid) -> Result<Self> {
        config.validate()?;
        let fine = FineGrid::new(out, &config.resolution)?;
        let line = Line {
            n: fine.nx,
            h: fine.dx,
        };
        Ok(Self {
            config: *config,
            out: *out,
            fine,
            line,
            fine_x: nodes(fine.nx, out.length),
        })
    }

    /// The fine grid in use.
    pub fn fine_grid(&self) -> &FineGrid {
        &self.fine
    }

    /// Solves for one stimulus.
    pub fn solve(&self, stimulus: &Stimulus) -> Result<Solution1d> {
        let mut v = Array2::zeros((self.out.nt, self.out.nx));
        let mut w = Array2::zeros((self.out.nt, self.out.nx));
        self.solve_into(stimulus, |k, vs, ws| {
            v.row_mut(k).assign(&ndarray::ArrayView1::from(vs));
            w.row_mut(k).assign(&ndarray::ArrayView1::from(ws));
        })?;
        Ok(Solution1d {
            input: stimulus.on_output_grid(&self.out),
            v,
            w,
            grid: self.out,
        })
    }

    /// Solves and hands each output time `k` to `record(k, v_k, w_k)` (rows of length nx).
    ///
    /// SBDF2 runs on the partitioned, segment-interleaved stepper (see `sbdf2_line.rs`);
    /// the other schemes on the generic [`crate::imex`] stepper.
    pub fn solve_into(
        &self,
        stimulus: &Stimulus,
        record: impl FnMut(usize, &[f64], &[f64]),
    ) -> Result<()> {
        stimulus.validate_on(self.out.length, self.out.t_end)?;
        if self.config.scheme == Scheme::Sbdf2 {
            self.solve_partitioned(stimulus, record)
        } else {
            self.solve_generic(stimulus, record)
        }
    }

    /// The generic stepper (any scheme).
    pub(crate) fn solve_generic(
        &self,
        stimulus: &Stimulus,
        mut record: impl FnMut(usize, &[f64], &[f64]),
    ) -> Result<()> {
        let fine = &self.fine;
        let forcing = Forcing::new(&stimulus.pulses, fine.nx, fine.dt, |k, i| {
            stimulus.pulses[k].node_space_factor(self.fine_x[i], fine.dx, self.out.length)
        });
        let mut stepper = Stepper::new(self.config.params, self.config.scheme, fine.dt, &self.line);
        let mut vs = vec![0.0; self.out.nx];
        let mut ws = vec![0.0; self.out.nx];
        let r = fine.refine_x;
        record(0, &vs, &ws);
        for k in 1..self.out.nt {
            for s in 0..fine.refine_t {
                let n = (k - 1) * fine.refine_t + s;
                stepper.step(self.out.t_end * n as f64 / fine.steps as f64, &forcing)?;
            }
            for j in 0..self.out.nx {
                vs[j] = stepper.v[j * r];
                ws[j] = stepper.w[j * r];
            }
            record(k, &vs, &ws);
        }
        Ok(())
    }

    /// SBDF2 on the partitioned stepper, state kept interleaved; the forcing profile is laid
    /// out the same way.
    fn solve_partitioned(
        &self,
        stimulus: &Stimulus,
        mut record: impl FnMut(usize, &[f64], &[f64]),
    ) -> Result<()> {
        let fine = &self.fine;
        let mut stepper = Sbdf2Line::new(self.config.params, fine.dt, fine.nx, fine.dx);
        let layout = stepper.layout();
        let forcing = Forcing::new(&stimulus.pulses, layout.padded_len(), fine.dt, |k, slot| {
            let i = layout.node(slot);
            if i < fine.nx {
                stimulus.pulses[k].node_space_factor(self.fine_x[i], fine.dx, self.out.length)
            } else {
                0.0
            }
        });
        let mut vs = vec![0.0; self.out.nx];
        let mut ws = vec![0.0; self.out.nx];
        let samples = stepper.sample_points(fine.refine_x, self.out.nx);
        record(0, &vs, &ws);
        for k in 1..self.out.nt {
            for s in 0..fine.refine_t {
                let n = (k - 1) * fine.refine_t + s;
                stepper.step(self.out.t_end * n as f64 / fine.steps as f64, &forcing)?;
            }
            // Each step checks the state the previous one left; this covers the last.
            if k + 1 == self.out.nt {
                stepper.check_finite()?;
            }
            stepper.sample(&samples, &mut vs, &mut ws);
            record(k, &vs, &ws);
        }
        Ok(())
    }
}

/// Solves the 1D model for one stimulus and samples it on `out`.
///
/// ```
/// use fhn_solver::{simulate_1d, BoxPulse, OutputGrid, SolverConfig, Stimulus};
/// let stim = Stimulus::single(BoxPulse::benchmark(0.5, 1.0, 1.0));
/// let sol = simulate_1d(&SolverConfig::default(), &stim, &OutputGrid::default())?;
/// assert_eq!(sol.v.dim(), (100, 100));
/// # Ok::<(), fhn_solver::SolverError>(())
/// ```
pub fn simulate_1d(
    config: &SolverConfig,
    stimulus: &Stimulus,
    out: &OutputGrid,
) -> Result<Solution1d> {
    Solver1d::new(config, out)?.solve(stimulus)
}
