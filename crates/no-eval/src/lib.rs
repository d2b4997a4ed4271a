//! Evaluation of neural operators on FitzHugh–Nagumo data.
//!
//! This is the one crate that joins the physics (`fhn-solver`) and the models
//! (`no-models`):
//! - [`metrics`]: per-sample, per-field relative L2/L1/H1 and max errors, and their
//!   aggregates (mean, median, quantiles);
//! - [`translation`]: the non-periodic shifts the physics implies and the equivariance
//!   error `E(s) = ‖M(S_s I) − S_s M(I)‖ / ‖S_s M(I)‖` as a curve over shifts, for models and
//!   for the solver's ground truth;
//! - [`study`]: protocol → data → training → evaluation → [`report`], as a list of jobs
//!   (model × seed) that one process runs whole or a cluster runs in slices and merges;
//! - [`report::spread`]: medians, ranges and bootstrap intervals over seeds, and the orders
//!   they allow;
//! - [`resolution`]: zero-shot evaluation on a finer output grid;
//! - [`host`]: the CPU a job ran on, as one line for its record and the report;
//! - [`latency`]: timed forwards with device synchronisation, percentiles, throughput and
//!   peak memory.
//!
//! The definitions are in docs/evaluation.md.
//!
//! # Example
//!
//! The per-field errors of a prediction against its truth, batch `[N, C, nt, nx]`:
//!
//! ```
//! use ndarray::Array4;
//! use no_eval::metrics::{batch_errors, summarize, Spacing};
//!
//! # fn main() -> no_eval::Result<()> {
//! let truth = Array4::from_shape_fn((2, 2, 8, 8), |(n, c, t, x)| {
//!     (1 + n + c) as f32 * ((t as f32 * 0.3).sin() + (x as f32 * 0.2).cos())
//! });
//! let pred = truth.mapv(|v| 1.01 * v); // 1 % too large everywhere
//! let spacing = Spacing { dt: 0.4, dx: 0.1 };
//! let errors = batch_errors(pred.view(), truth.view(), spacing)?;
//! assert_eq!((errors.len(), errors[0].len()), (2, 2)); // samples × fields (v, w)
//! let rel_l2: Vec<f64> = errors.iter().map(|e| e[0].rel_l2).collect();
//! let summary = summarize(&rel_l2)?;
//! assert!((summary.mean - 0.01).abs() < 1e-6);
//! assert!(errors[0][0].max_abs > 0.0);
//! # Ok(())
//! # }
//! ```
#![warn(missing_docs)]

pub mod error;
pub mod host;
pub mod latency;
pub mod metrics;
pub mod report;
pub mod resolution;
pub mod strict;
pub mod study;
pub mod translation;

pub use error::{EvalError, Result};
