//! A stiff IMEX finite-difference solver for the FitzHugh–Nagumo reaction–diffusion model,
//! in 1D and 2D, and the translation benchmark datasets built on it.
//!
//! ∂v/∂t = D ∂²v/∂x² + b·v(v−β)(δ−v) − c·w + I(t,x),  ∂w/∂t = e·(v − γ·w),
//! zero-flux boundaries, rest state v = w = 0 at t = 0.
//!
//! - [`FhnParams`]: the model (Default = the benchmark's values), [`FhnParams::validate`].
//! - [`Stimulus`]: sums of [`BoxPulse`] / [`GaussianPulse`], [`Stimulus::translated`].
//! - [`OutputGrid`] (default 100 × 100 over (t, x) ∈ [0, 40] × [0, 1]) and [`Resolution`]
//!   (how fine the solver grid is; its nodes always contain the output nodes).
//! - [`simulate_1d`] / [`Solver1d`] and [`simulate_2d`], with [`Scheme`] ∈ {SBDF1, SBDF2,
//!   ARS(2,2,2)}.
//! - [`Protocol`], [`generate`], [`Dataset`]: the benchmark's datasets (see docs/protocol.md).
//! - [`partition::Partitioned`]: the exact partitioned tridiagonal solve (segments in SIMD
//!   lanes) that the 1D SBDF2 solve runs on (see docs/solver.md, "Speed").
//!
//! ```
//! use fhn_solver::{simulate_1d, BoxPulse, OutputGrid, Scheme, SolverConfig, Stimulus};
//!
//! let config = SolverConfig { scheme: Scheme::Sbdf2, ..SolverConfig::default() };
//! let stimulus = Stimulus::single(BoxPulse::benchmark(0.5, 1.0, 1.5));
//! let sol = simulate_1d(&config, &stimulus, &OutputGrid::default())?;
//! // [nt, nx] = [100, 100], axis order (t, x); a supra-threshold pulse excites the tissue.
//! assert_eq!(sol.v.dim(), (100, 100));
//! assert!(sol.v.iter().cloned().fold(f64::MIN, f64::max) > 0.8);
//! // The same pulse 5 time units later and 0.1 to the right:
//! let moved = simulate_1d(&config, &stimulus.translated(5.0, 0.1), &OutputGrid::default())?;
//! assert_eq!(moved.input.dim(), (100, 100));
//! # Ok::<(), fhn_solver::SolverError>(())
//! ```
#![warn(missing_docs)]

pub mod atomic;
pub mod dataset;
pub mod error;
pub mod grid;
pub mod imex;
pub mod implicit;
mod lanes;
pub mod limits;
pub mod params;
pub mod partition;
pub mod protocol;
mod sbdf2_line;
pub mod simulate;
pub mod simulate2d;
pub mod stimulus;
mod suggest;

pub use dataset::{generate, generate_into_dir, Dataset, DirOptions, Shard, WrittenSplit};
pub use error::{Result, SolverError};
pub use grid::{FineGrid, OutputGrid, Resolution};
pub use imex::Scheme;
pub use params::FhnParams;
pub use protocol::{Law, Protocol, SampleParams, Split, SplitSpec};
pub use simulate::{simulate_1d, Solution1d, Solver1d, SolverConfig};
pub use simulate2d::{simulate_2d, OutputGrid2d, Pulse2d, Solution2d, Stimulus2d};
pub use stimulus::{BoxPulse, GaussianPulse, InputSampling, Pulse, Stimulus};
