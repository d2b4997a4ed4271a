//! Applied currents I(t, x): box pulses, Gaussian pulses, their sums, and translation.
//!
//! Every pulse is separable, `I(t, x) = A·T(t)·X(x)`, which lets the solver precompute the
//! spatial profile once and scale it by one number per step.

use serde::{Deserialize, Serialize};

use crate::error::{check_finite, check_positive, Result, SolverError};

/// Nodes within this distance of a box edge count as inside: `0.52 − 0.5` is not `0.02` in
/// floating point, and an edge that falls on a node should not depend on rounding.
const EDGE_TOL: f64 = 1e-12;

/// A box pulse: amplitude `A` on `|x − x0| ≤ width/2` during `t0 ≤ t < t0 + duration`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoxPulse {
    /// Centre in space.
    pub x0: f64,
    /// Width in space (the box is closed: both edges belong to it).
    pub width: f64,
    /// Onset time.
    pub t0: f64,
    /// Duration (the pulse is on over `[t0, t0 + duration)`).
    pub duration: f64,
    /// Amplitude.
    pub amplitude: f64,
}

impl BoxPulse {
    /// The benchmark's pulse: width 0.04, duration 1.
    pub fn benchmark(x0: f64, t0: f64, amplitude: f64) -> Self {
        Self {
            x0,
            width: 0.04,
            t0,
            duration: 1.0,
            amplitude,
        }
    }
}

/// A smooth pulse: `A·exp(−(x−x0)²/(2σx²))·exp(−(t−t0)²/(2σt²))`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GaussianPulse {
    /// Centre in space.
    pub x0: f64,
    /// Spatial standard deviation.
    pub sigma_x: f64,
    /// Centre in time.
    pub t0: f64,
    /// Temporal standard deviation.
    pub sigma_t: f64,
    /// Peak amplitude.
    pub amplitude: f64,
}

/// One pulse of either kind.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Pulse {
    /// A box pulse.
    Box(BoxPulse),
    /// A Gaussian pulse.
    Gaussian(GaussianPulse),
}

impl From<BoxPulse> for Pulse {
    fn from(p: BoxPulse) -> Self {
        Pulse::Box(p)
    }
}

impl From<GaussianPulse> for Pulse {
    fn from(p: GaussianPulse) -> Self {
        Pulse::Gaussian(p)
    }
}

impl Pulse {
    /// Checks the pulse's fields (finite; widths and durations > 0).
    pub fn validate(&self) -> Result<()> {
        match self {
            Pulse::Box(p) => {
                check_finite("pulse.x0", p.x0)?;
                check_positive("pulse.width", p.width)?;
                check_finite("pulse.t0", p.t0)?;
                check_positive("pulse.duration", p.duration)?;
                check_finite("pulse.amplitude", p.amplitude)
            }
            Pulse::Gaussian(p) => {
                check_finite("pulse.x0", p.x0)?;
                check_positive("pulse.sigma_x", p.sigma_x)?;
                check_finite("pulse.t0", p.t0)?;
                check_positive("pulse.sigma_t", p.sigma_t)?;
                check_finite("pulse.amplitude", p.amplitude)
            }
        }
    }

    /// [`Pulse::validate`], and checks that the pulse acts on `[0, t_end] × [0, length]`:
    /// its centre lies in `[0, length]` and it starts before `t_end` (a Gaussian: its centre
    /// lies within 3 σ of `[0, t_end]`) and, for a box, ends after 0. A pulse outside would
    /// give an all-zero stimulus without a word.
    pub fn validate_on(&self, length: f64, t_end: f64) -> Result<()> {
        self.validate()?;
        let (x0, t0) = match self {
            Pulse::Box(p) => (p.x0, p.t0),
            Pulse::Gaussian(p) => (p.x0, p.t0),
        };
        if !(0.0..=length).contains(&x0) {
            return Err(SolverError::invalid(
                "pulse.x0",
                x0,
                &format!("a centre inside the domain [0, {length}]"),
            ));
        }
        let acts = match self {
            Pulse::Box(p) => t0 < t_end && t0 + p.duration > 0.0,
            Pulse::Gaussian(p) => t0 >= -3.0 * p.sigma_t && t0 <= t_end + 3.0 * p.sigma_t,
        };
        if !acts {
            return Err(SolverError::invalid(
                "pulse.t0",
                t0,
                &format!("a pulse that is on during the time window [0, {t_end}]"),
            ));
        }
        Ok(())
    }

    /// Amplitude times the temporal factor at `t`.
    #[inline]
    pub fn time_factor(&self, t: f64) -> f64 {
        match self {
            Pulse::Box(p) => {
                if t >= p.t0 && t < p.t0 + p.duration {
                    p.amplitude
                } else {
                    0.0
                }
            }
            Pulse::Gaussian(p) => {
                let z = (t - p.t0) / p.sigma_t;
                p.amplitude * (-0.5 * z * z).exp()
            }
        }
    }

    /// The spatial factor at `x` (1 at the centre).
    #[inline]
    pub fn space_factor(&self, x: f64) -> f64 {
        match self {
            Pulse::Box(p) => {
                if (x - p.x0).abs() <= 0.5 * p.width + EDGE_TOL {
                    1.0
                } else {
                    0.0
                }
            }
            Pulse::Gaussian(p) => {
                let z = (x - p.x0) / p.sigma_x;
                (-0.5 * z * z).exp()
            }
        }
    }

    /// The temporal factor the solver applies in the step centred at `t`: the mean of
    /// `A·T` over `[t − dt/2, t + dt/2]` for a box (so the delivered charge is exact and
    /// varies continuously with the onset), the point value for a Gaussian (second order).
    #[inline]
    pub fn step_time_factor(&self, t: f64, dt: f64) -> f64 {
        self.window_time_factor(t, (t - 0.5 * dt, t + 0.5 * dt), dt)
    }

    /// Amplitude times the mean of the temporal factor over the output cell of time `t`
    /// (spacing `dt`, clipped to `[0, t_end]`) for a box; the point value for a Gaussian.
    #[inline]
    pub fn cell_time_factor(&self, t: f64, dt: f64, t_end: f64) -> f64 {
        let (lo, hi) = ((t - 0.5 * dt).max(0.0), (t + 0.5 * dt).min(t_end));
        self.window_time_factor(t, (lo, hi), hi - lo)
    }

    /// A box's `A·T` integrated over the window `[lo, hi]` and divided by `length` (the
    /// window's length, passed so that a step divides by exactly `dt`); a Gaussian's point
    /// value at `t`.
    #[inline]
    fn window_time_factor(&self, t: f64, (lo, hi): (f64, f64), length: f64) -> f64 {
        match self {
            Pulse::Box(p) => p.amplitude * overlap(lo, hi, p.t0, p.t0 + p.duration) / length,
            Pulse::Gaussian(_) => self.time_factor(t),
        }
    }

    /// The spatial factor the solver applies at node `x` of spacing `h` on `[0, length]`:
    /// for a box, the covered fraction of the node's control volume (clipped at the walls);
    /// for a Gaussian, the point value.
    #[inline]
    pub fn node_space_factor(&self, x: f64, h: f64, length: f64) -> f64 {
        match self {
            Pulse::Box(p) => cell_fraction(x, h, length, p.x0, p.width),
            Pulse::Gaussian(_) => self.space_factor(x),
        }
    }

    /// [`Pulse::node_space_factor`] along a second axis (2D), centred at `y0` with `width`.
    #[inline]
    pub(crate) fn node_space_factor_with(
        &self,
        y: f64,
        h: f64,
        length: f64,
        y0: f64,
        width: f64,
    ) -> f64 {
        match self {
            Pulse::Box(_) => cell_fraction(y, h, length, y0, width),
            Pulse::Gaussian(_) => self.space_factor_with(y, y0, width),
        }
    }

    /// The spatial factor along a second axis, for 2D: the same shape as along x, centred
    /// at `y0`, with `width` the box width or the Gaussian σ.
    #[inline]
    pub(crate) fn space_factor_with(&self, y: f64, y0: f64, width: f64) -> f64 {
        match self {
            Pulse::Box(_) => {
                if (y - y0).abs() <= 0.5 * width + EDGE_TOL {
                    1.0
                } else {
                    0.0
                }
            }
            Pulse::Gaussian(_) => {
                let z = (y - y0) / width;
                (-0.5 * z * z).exp()
            }
        }
    }

    /// The pulse moved by `dt` in time and `dx` in space.
    pub fn translated(&self, dt: f64, dx: f64) -> Self {
        match *self {
            Pulse::Box(p) => Pulse::Box(BoxPulse {
                x0: p.x0 + dx,
                t0: p.t0 + dt,
                ..p
            }),
            Pulse::Gaussian(p) => Pulse::Gaussian(GaussianPulse {
                x0: p.x0 + dx,
                t0: p.t0 + dt,
                ..p
            }),
        }
    }

    /// The value `I(t, x)`.
    pub fn eval(&self, t: f64, x: f64) -> f64 {
        self.time_factor(t) * self.space_factor(x)
    }
}

/// Length of `[a, b] ∩ [c, d]`.
fn overlap(a: f64, b: f64, c: f64, d: f64) -> f64 {
    (b.min(d) - a.max(c)).max(0.0)
}

/// Fraction of the control volume of node `x` (spacing `h`, clipped to `[0, length]`) covered
/// by the box of centre `x0` and width `width`.
fn cell_fraction(x: f64, h: f64, length: f64, x0: f64, width: f64) -> f64 {
    let (lo, hi) = ((x - 0.5 * h).max(0.0), (x + 0.5 * h).min(length));
    overlap(lo, hi, x0 - 0.5 * width, x0 + 0.5 * width) / (hi - lo)
}

/// How the applied current is written on the output grid: the model's input.
///
/// A box pulse whose duration is not a whole number of output steps covers a number of
/// output rows that depends on where its onset falls between two rows. Point values then
/// give the same input for every onset in an interval up to one step long, and a different
/// row count for others (see docs/protocol.md, "Input sampling"); cell averages keep the
/// delivered charge and move continuously with the onset, as the solver's own forcing does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputSampling {
    /// `I(t_k, x_j)`, the current's value at each node (the paper's data; the default).
    #[default]
    Point,
    /// The mean of `I` over each node's cell `[t_k − dt/2, t_k + dt/2] × [x_j − dx/2, x_j + dx/2]`
    /// clipped to the domain, for box pulses; Gaussian pulses keep their point values.
    CellAverage,
}

impl InputSampling {
    /// True for [`InputSampling::Point`] (the default, left out of serialised protocols).
    pub fn is_point(&self) -> bool {
        *self == InputSampling::Point
    }
}

/// A stimulus: the sum of its pulses (empty = no current).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stimulus {
    /// The pulses, summed.
    pub pulses: Vec<Pulse>,
}

impl Stimulus {
    /// A stimulus made of one pulse.
    pub fn single(pulse: impl Into<Pulse>) -> Self {
        Self {
            pulses: vec![pulse.into()],
        }
    }

    /// The stimulus with one more pulse.
    pub fn with(mut self, pulse: impl Into<Pulse>) -> Self {
        self.pulses.push(pulse.into());
        self
    }

    /// Checks every pulse.
    pub fn validate(&self) -> Result<()> {
        self.pulses.iter().try_for_each(Pulse::validate)
    }

    /// Checks every pulse and that each acts on `[0, t_end] × [0, length]` (see
    /// [`Pulse::validate_on`]).
    pub fn validate_on(&self, length: f64, t_end: f64) -> Result<()> {
        self.pulses
            .iter()
            .try_for_each(|p| p.validate_on(length, t_end))
    }

    /// The stimulus moved by `dt` in time and `dx` in space: `I'(t, x) = I(t − dt, x − dx)`.
    pub fn translated(&self, dt: f64, dx: f64) -> Self {
        Self {
            pulses: self.pulses.iter().map(|p| p.translated(dt, dx)).collect(),
        }
    }

    /// The value `I(t, x)`.
    pub fn eval(&self, t: f64, x: f64) -> f64 {
        self.pulses.iter().map(|p| p.eval(t, x)).sum()
    }

    /// `I` on the nodes `times × positions`, shaped [times.len(), positions.len()].
    ///
    /// Each pulse is separable (`time factor × space factor`), so this evaluates the factors
    /// once per axis and sums outer products, skipping times where a pulse is off (the
    /// same values as [`Self::eval`] pointwise, up to the sign of zero).
    pub fn on_grid(&self, times: &[f64], positions: &[f64]) -> ndarray::Array2<f64> {
        let mut out = ndarray::Array2::zeros((times.len(), positions.len()));
        let mut space = vec![0.0; positions.len()];
        for pulse in &self.pulses {
            for (s, x) in space.iter_mut().zip(positions) {
                *s = pulse.space_factor(*x);
            }
            for (mut row, t) in out.rows_mut().into_iter().zip(times) {
                let a = pulse.time_factor(*t);
                if a == 0.0 {
                    continue;
                }
                for (o, s) in row.iter_mut().zip(&space) {
                    *o += a * s;
                }
            }
        }
        out
    }

    /// `I` on an output grid, shaped [nt, nx].
    pub fn on_output_grid(&self, grid: &crate::grid::OutputGrid) -> ndarray::Array2<f64> {
        self.on_grid(&grid.times(), &grid.positions())
    }

    /// `I` on an output grid as `sampling` says, shaped [nt, nx].
    pub fn on_output_grid_sampled(
        &self,
        grid: &crate::grid::OutputGrid,
        sampling: InputSampling,
    ) -> ndarray::Array2<f64> {
        match sampling {
            InputSampling::Point => self.on_output_grid(grid),
            InputSampling::CellAverage => self.cell_averages(grid),
        }
    }

    /// The mean of `I` over each output node's cell (see [`InputSampling::CellAverage`]).
    fn cell_averages(&self, grid: &crate::grid::OutputGrid) -> ndarray::Array2<f64> {
        let (dt, dx) = (grid.dt(), grid.dx());
        let mut out = ndarray::Array2::zeros((grid.nt, grid.nx));
        let mut space = vec![0.0; grid.nx];
        for pulse in &self.pulses {
            for (s, x) in space.iter_mut().zip(grid.positions()) {
                *s = pulse.node_space_factor(x, dx, grid.length);
            }
            for (mut row, t) in out.rows_mut().into_iter().zip(grid.times()) {
                let a = pulse.cell_time_factor(t, dt, grid.t_end);
                if a == 0.0 {
                    continue;
                }
                for (o, s) in row.iter_mut().zip(&space) {
                    *o += a * s;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn box_pulse_edges() {
        let p = Pulse::from(BoxPulse {
            x0: 0.5,
            width: 0.04,
            t0: 1.0,
            duration: 1.0,
            amplitude: 2.0,
        });
        assert_eq!(p.eval(1.0, 0.5), 2.0);
        assert_eq!(p.eval(0.999, 0.5), 0.0);
        assert_eq!(p.eval(2.0, 0.5), 0.0);
        assert_eq!(p.eval(1.5, 0.52), 2.0);
        assert_eq!(p.eval(1.5, 0.521), 0.0);
    }

    #[test]
    fn translation_shifts_the_field() {
        let s = Stimulus::single(GaussianPulse {
            x0: 0.3,
            sigma_x: 0.05,
            t0: 2.0,
            sigma_t: 0.5,
            amplitude: 1.0,
        })
        .with(BoxPulse::benchmark(0.7, 1.0, 1.5));
        let moved = s.translated(3.0, 0.1);
        for &(t, x) in &[(4.2, 0.41), (5.0, 0.8), (1.0, 0.2)] {
            assert!((moved.eval(t, x) - s.eval(t - 3.0, x - 0.1)).abs() < 1e-12);
        }
    }

    #[test]
    fn discrete_box_delivers_the_exact_charge() {
        let p = Pulse::from(BoxPulse {
            x0: 0.4123,
            width: 0.04,
            t0: 1.37,
            duration: 1.0,
            amplitude: 2.0,
        });
        // Space: Σ h·X_i over a grid equals the width; time: Σ dt·T_n equals A·duration.
        let (n, h) = (301, 1.0 / 300.0);
        let sx: f64 = (0..n)
            .map(|i| {
                let cell = if i == 0 || i == n - 1 { 0.5 * h } else { h };
                cell * p.node_space_factor(i as f64 * h, h, 1.0)
            })
            .sum();
        assert!((sx - 0.04).abs() < 1e-12, "{sx}");
        let dt = 0.0404;
        let st: f64 = (0..200)
            .map(|k| dt * p.step_time_factor(k as f64 * dt, dt))
            .sum();
        assert!((st - 2.0).abs() < 1e-12, "{st}");
    }

    #[test]
    fn invalid_pulse_is_rejected() {
        let p = Pulse::from(BoxPulse {
            x0: f64::NAN,
            width: 0.04,
            t0: 1.0,
            duration: 1.0,
            amplitude: 1.0,
        });
        assert!(p.validate().is_err());
        let q = Pulse::from(GaussianPulse {
            x0: 0.5,
            sigma_x: 0.0,
            t0: 1.0,
            sigma_t: 1.0,
            amplitude: 1.0,
        });
        assert!(q.validate().is_err());
    }

    #[test]
    fn grid_evaluation_matches_pointwise_eval() {
        let stim = Stimulus::single(BoxPulse::benchmark(0.3, 2.0, 1.5))
            .with(GaussianPulse {
                x0: 0.7,
                sigma_x: 0.05,
                t0: 5.0,
                sigma_t: 1.0,
                amplitude: -0.8,
            })
            .with(BoxPulse::benchmark(0.35, 2.5, 0.5));
        let times: Vec<f64> = (0..40).map(|k| k as f64 * 0.25).collect();
        let xs: Vec<f64> = (0..51).map(|j| j as f64 / 50.0).collect();
        let grid = stim.on_grid(&times, &xs);
        for (k, t) in times.iter().enumerate() {
            for (j, x) in xs.iter().enumerate() {
                assert_eq!(grid[[k, j]], stim.eval(*t, *x), "t = {t}, x = {x}");
            }
        }
        assert!(grid.iter().any(|v| *v > 1.0) && grid.iter().any(|v| *v < -0.1));
    }

    fn quick_grid() -> crate::grid::OutputGrid {
        crate::grid::OutputGrid::with_size(50, 50)
    }

    #[test]
    fn point_sampling_is_the_grid_evaluation() {
        let stim = Stimulus::single(BoxPulse::benchmark(0.43, 6.2, 1.3));
        let grid = quick_grid();
        assert_eq!(
            stim.on_output_grid_sampled(&grid, InputSampling::Point),
            stim.on_output_grid(&grid)
        );
    }

    #[test]
    fn cell_averages_deliver_the_pulse_charge() {
        // Sum over the cells of mean × cell area = A × duration × width for a box inside the
        // domain, whatever its onset and centre (the edge cells are half cells).
        let grid = quick_grid();
        let (dt, dx) = (grid.dt(), grid.dx());
        for (x0, t0, a) in [
            (0.5, 1.0, 1.2),
            (0.137, 6.3, 0.8),
            (0.9, 19.71, 2.0),
            (0.02, 0.1, 1.0),
        ] {
            let stim = Stimulus::single(BoxPulse::benchmark(x0, t0, a));
            let cells = stim.on_output_grid_sampled(&grid, InputSampling::CellAverage);
            let mut charge = 0.0;
            for ((k, j), v) in cells.indexed_iter() {
                let wt = if k == 0 || k == grid.nt - 1 { 0.5 } else { 1.0 };
                let wx = if j == 0 || j == grid.nx - 1 { 0.5 } else { 1.0 };
                charge += v * wt * dt * wx * dx;
            }
            let expected = a * 1.0 * 0.04;
            assert!(
                (charge - expected).abs() < 1e-12,
                "x0 {x0}, t0 {t0}: charge {charge}, expected {expected}"
            );
        }
    }

    #[test]
    fn cell_averages_move_with_the_onset() {
        // A whole-step delay moves the rows by whole steps; a fraction of a step moves charge
        // between neighbouring rows continuously, where point values give the same rows.
        let grid = quick_grid();
        let dt = grid.dt();
        let cells = |t0: f64| {
            Stimulus::single(BoxPulse::benchmark(0.5, t0, 1.0))
                .on_output_grid_sampled(&grid, InputSampling::CellAverage)
        };
        let (base, delayed) = (cells(1.0), cells(1.0 + 7.0 * dt));
        for k in 0..grid.nt - 7 {
            for j in 0..grid.nx {
                assert!(
                    (delayed[[k + 7, j]] - base[[k, j]]).abs() < 1e-9,
                    "row {k}, node {j}"
                );
            }
        }
        let (a, b) = (cells(1.0), cells(1.0 + 0.25 * dt));
        let point =
            |t0: f64| Stimulus::single(BoxPulse::benchmark(0.5, t0, 1.0)).on_output_grid(&grid);
        assert_eq!(
            point(1.0),
            point(1.0 + 0.25 * dt),
            "point values hide the quarter step"
        );
        assert!(a != b, "cell averages show it");
        // The charge that moved between rows is at most twice the quarter step's (one edge
        // of the box gives it up, the other takes it): continuous in the onset.
        // As fractions of the charge (the pulse lasts 1 time unit).
        let moved: f64 = (0..grid.nt)
            .map(|k| (b.row(k).sum() - a.row(k).sum()).abs())
            .sum::<f64>()
            / a.iter().sum::<f64>();
        assert!(
            moved > 0.0 && moved <= 2.0 * 0.25 * dt + 1e-12,
            "moved {moved}"
        );
    }

    #[test]
    fn gaussian_pulses_keep_point_values_in_cell_averages() {
        let stim = Stimulus::single(GaussianPulse {
            x0: 0.4,
            sigma_x: 0.05,
            t0: 5.0,
            sigma_t: 1.0,
            amplitude: 0.7,
        });
        let grid = quick_grid();
        assert_eq!(
            stim.on_output_grid_sampled(&grid, InputSampling::CellAverage),
            stim.on_output_grid(&grid)
        );
    }
}
