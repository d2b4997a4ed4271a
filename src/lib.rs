//! Neural operators on stiff excitable-media dynamics.
//!
//! This root crate re-exports the four crates of the workspace under short names and owns the
//! runnable programs in `examples/` (among them the main job, `benchmark`) and the criterion
//! benches in `benches/`:
//!
//! - [`solver`] (`fhn-solver`): the IMEX FitzHugh–Nagumo solver and the datasets;
//! - [`layers`] (`no-layers`): spectral, Tucker, local and resampling layers on candle;
//! - [`models`] (`no-models`): the seven neural operators, checkpoints and training;
//! - [`eval`] (`no-eval`): metrics, translation tests, latency and the benchmark report.
//!
//! Programs that train or run models should call [`allocator::keep_freed_memory`] first:
//! it stops glibc from handing candle's large buffers back to the kernel after every op.
//!
//! ```
//! use fhn_neural_operators::layers::init::SeededVarMap;
//! use candle_core::{DType, Device};
//!
//! // Every layer and model draws its weights from a seeded map: runs are reproducible.
//! let vars = SeededVarMap::new(0);
//! let _vb = vars.var_builder(DType::F32, &Device::Cpu);
//! ```

pub mod allocator;
pub mod cli;

pub use fhn_solver as solver;
pub use no_eval as eval;
pub use no_layers as layers;
pub use no_models as models;
