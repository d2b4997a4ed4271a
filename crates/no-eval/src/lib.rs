//! Evaluation of neural operators on FitzHugh–Nagumo data.
//!
//! This is the one crate that joins the physics (`fhn-solver`) and the models
//! (`no-models`):
//! - [`metrics`]: per-sample, per-field relative L2/L1/H1 and max errors, and their
//!   aggregates (mean, median, quantiles);
//! - [`translation`]: the non-periodic shifts the physics implies and the equivariance
//!   error `E(s) = ‖M(S_s I) − S_s M(I)‖ / ‖S_s M(I)‖` as a curve over shifts, for models and
//!   for the solver's ground truth;
//! - [`study`]: protocol → data → training → evaluation → [`report`];
//! - [`resolution`]: zero-shot evaluation on a finer output grid;
//! - [`latency`]: timed forwards with device synchronisation, percentiles, throughput and
//!   peak memory.
//!
//! The definitions are in docs/evaluation.md.
#![warn(missing_docs)]

pub mod error;
pub mod latency;
pub mod metrics;
pub mod report;
pub mod resolution;
pub mod study;
pub mod translation;

pub use error::{EvalError, Result};
