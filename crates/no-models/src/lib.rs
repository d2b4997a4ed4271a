//! Seven neural operators behind one trait.
//!
//! CNO, DeepONet, DeepONet with a CNN branch, POD-DeepONet, FNO, TFNO and LocalNO map the
//! applied current `[B, 1, nt, nx]` to the fields `[B, 2, nt, nx]` (v, w). Each is built
//! from a serde [`ModelConfig`] through [`build`] (or from its tagged JSON through a
//! [`Registry`]), implements [`NeuralOperator`], saves to
//! and loads from safetensors checkpoints, and trains with the shared trainer.
//!
//! The trait is open: a [`Registry`] maps the `"model"` tag of a configuration to a
//! builder, knows the seven built-in architectures, and accepts a user's own
//! ([`Registry::register`]), whose checkpoints then load through
//! [`Checkpoint::load_model_with`] (`examples/custom_model.rs` does it end to end).
//!
//! # Example
//!
//! Build a model from its JSON configuration, run it, save it and load it back:
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use no_layers::init::SeededVarMap;
//! use no_models::{checkpoint, Checkpoint, Registry};
//!
//! # fn main() -> no_models::Result<()> {
//! let config = serde_json::json!({
//!     "model": "fno", "n_modes": [4, 4], "hidden_channels": 8, "n_layers": 2
//! });
//! let registry = Registry::builtin();
//! let vars = SeededVarMap::new(0);
//! let model = registry.build(&config, vars.var_builder(DType::F32, &Device::Cpu))?;
//!
//! // The applied current [B, 1, nt, nx] -> the fields (v, w) [B, 2, nt, nx].
//! let input = Tensor::randn(0f32, 1.0, (1, 1, 16, 16), &Device::Cpu)?;
//! let output = model.predict(&input)?;
//! assert_eq!(output.dims(), &[1, 2, 16, 16]);
//!
//! let dir = std::env::temp_dir().join(format!("no-models-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).expect("temp dir");
//! let path = dir.join("fno.safetensors");
//! checkpoint::save_model(&path, model.as_ref(), vars.varmap())?;
//! let loaded = Checkpoint::load_model_with(&path, &registry, &Device::Cpu)?;
//! assert_eq!(loaded.model.architecture(), "fno");
//! let again = loaded.model.predict(&input)?;
//! let diff = (output - again)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
//! assert_eq!(diff, 0.0);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(())
//! # }
//! ```

pub mod causal;
pub mod checkpoint;
pub mod checksum;
pub mod cno;
pub mod config;
pub mod data;
pub mod deeponet;
pub mod error;
pub mod fourier;
pub mod import;
pub mod inference;
pub mod operator;
/// POD-DeepONet (its home is [`deeponet::pod`]; this path is kept).
pub use deeponet::pod;
pub mod registry;
pub mod train;

pub use checkpoint::{Checkpoint, LoadedModel};
pub use config::{build, ModelConfig};
pub use data::{NormalizerKind, Normalizers, TensorDataset};
pub use error::{ModelError, Result};
pub use fourier::{fno, local_no};
pub use inference::inference_twin;
pub use operator::{NeuralOperator, ParamCount};
pub use registry::Registry;
pub use train::{TrainConfig, Trainer};
