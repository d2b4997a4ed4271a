//! Seven neural operators behind one trait.
//!
//! CNO, DeepONet, DeepONet with a CNN branch, POD-DeepONet, FNO, TFNO and LocalNO map the
//! applied current `[B, 1, nt, nx]` to the fields `[B, 2, nt, nx]` (v, w). Each is built
//! from a serde [`ModelConfig`] through [`build`], implements [`NeuralOperator`], saves to
//! and loads from safetensors checkpoints, and trains with the shared trainer.

pub mod checkpoint;
pub mod cno;
pub mod config;
pub mod data;
pub mod deeponet;
pub mod error;
pub mod fourier;
pub mod import;
pub mod inference;
pub mod operator;
pub mod pod;
pub mod train;

pub use checkpoint::{Checkpoint, LoadedModel};
pub use config::{build, ModelConfig};
pub use data::{Dataset, NormalizerKind, Normalizers};
pub use error::{ModelError, Result};
pub use fourier::{fno, local_no};
pub use inference::inference_twin;
pub use operator::{NeuralOperator, ParamCount};
pub use train::{TrainConfig, Trainer};
