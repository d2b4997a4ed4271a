//! Inference twins: a model rebuilt over detached views of its trained weights.
//!
//! candle has no `no_grad` mode: an operation on a variable records its inputs for the
//! backward pass, so a forward through a trainable model keeps every intermediate alive
//! until the output is dropped (a batch-32 CNO forward peaked at 9.7 GB) and writes every
//! result into fresh, cold memory. [`inference_twin`] builds the same architecture from
//! the same configuration over [`Tensor::detach`]ed views of the variables: the views share
//! the variables' storage (no copy, and in-place updates such as the trainer's AdamW step
//! are seen by the twin), but operations on them record nothing, so each intermediate is
//! freed as soon as the next layer has consumed it, like PyTorch under `torch.no_grad()`.
//! The twin's outputs equal the model's (test `twin_equals_the_model_and_follows_updates`).
//!
//! Build the twin after the model's variables exist (after construction, training or
//! loading). A variable *replaced* in the map by a new one (rather than updated in place)
//! is not seen; build a new twin then.
//!
//! ```
//! use candle_core::{DType, Device, Tensor};
//! use no_layers::init::SeededVarMap;
//! use no_models::{build, inference_twin, ModelConfig, NeuralOperator};
//!
//! let cfg: ModelConfig = serde_json::from_str(
//!     r#"{"model": "fno", "n_modes": [4, 4], "hidden_channels": 8, "n_layers": 2}"#,
//! )?;
//! let vars = SeededVarMap::new(0);
//! let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
//! let twin = inference_twin(model.as_ref(), vars.varmap())?;
//! let x = Tensor::ones((1, 1, 12, 12), DType::F32, &Device::Cpu)?;
//! assert_eq!(twin.forward(&x)?.dims(), &[1, 2, 12, 12]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_core::Tensor;
use candle_nn::{VarBuilder, VarMap};
use std::collections::HashMap;

/// Detached views (shared storage, no gradient tracking) of every variable in `vars`.
pub fn detached_weights(vars: &VarMap) -> Result<HashMap<String, Tensor>> {
    let data = vars.data().lock().map_err(|_| ModelError::InvalidConfig {
        model: "inference twin",
        reason: "the variable map's lock is poisoned (a thread panicked while holding it)".into(),
    })?;
    Ok(data
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect())
}

/// `model`'s architecture rebuilt over detached views of `vars` (the map it was built
/// from): same outputs, no autograd graph. Errors if `vars` is empty or lacks a weight the
/// configuration needs.
pub fn inference_twin(
    model: &dyn NeuralOperator,
    vars: &VarMap,
) -> Result<Box<dyn NeuralOperator>> {
    let weights = detached_weights(vars)?;
    let Some(first) = weights.values().next() else {
        return Err(ModelError::InvalidConfig {
            model: "inference twin",
            reason: "the variable map is empty: build the model from it first".into(),
        });
    };
    let (dtype, device) = (first.dtype(), first.device().clone());
    model.rebuild(VarBuilder::from_tensors(weights, dtype, &device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build, ModelConfig};
    use candle_core::{DType, Device};
    use no_layers::init::SeededVarMap;

    fn tiny(name: &str) -> ModelConfig {
        let json = match name {
            "fno" => r#"{"model": "fno", "n_modes": [4, 4], "hidden_channels": 6, "n_layers": 2}"#,
            "cno" => {
                r#"{"model": "cno", "n_layers": 1, "n_res": 1, "n_res_neck": 1, "channel_multiplier": 4, "latent_lift_proj_dim": 4}"#
            }
            _ => {
                r#"{"model": "don", "grid": [8, 8], "branch_hidden": [8], "trunk_hidden": [8], "n_basis": 4}"#
            }
        };
        match serde_json::from_str(json) {
            Ok(c) => c,
            Err(e) => panic!("bad test config {name}: {e}"),
        }
    }

    #[test]
    fn twin_equals_the_model_and_follows_updates() -> Result<()> {
        for name in ["fno", "cno", "don"] {
            let vars = SeededVarMap::new(3);
            let model = build(&tiny(name), vars.var_builder(DType::F64, &Device::Cpu))?;
            let twin = inference_twin(model.as_ref(), vars.varmap())?;
            let x = Tensor::arange(0f64, 64.0, &Device::Cpu)?
                .reshape((1, 1, 8, 8))?
                .sin()?;
            let y = model.forward(&x)?;
            let yt = twin.forward(&x)?;
            assert_eq!(
                y.flatten_all()?.to_vec1::<f64>()?,
                yt.flatten_all()?.to_vec1::<f64>()?,
                "{name}"
            );
            // The twin records no graph.
            assert!(!yt.track_op(), "{name}: the twin's output tracks gradients");
            assert!(y.track_op());
            // An in-place update of the variables (what the trainer's AdamW does) is seen.
            for var in vars.varmap().all_vars() {
                var.set(&(var.as_tensor() * 0.5)?)?;
            }
            let y2 = model.forward(&x)?.flatten_all()?.to_vec1::<f64>()?;
            assert_eq!(
                y2,
                twin.forward(&x)?.flatten_all()?.to_vec1::<f64>()?,
                "{name}"
            );
            assert_ne!(
                y2,
                y.flatten_all()?.to_vec1::<f64>()?,
                "{name}: the update changed nothing"
            );
        }
        Ok(())
    }

    #[test]
    fn an_empty_map_is_an_error() -> Result<()> {
        let vars = SeededVarMap::new(0);
        let model = build(&tiny("fno"), vars.var_builder(DType::F32, &Device::Cpu))?;
        let err = inference_twin(model.as_ref(), &VarMap::new())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("empty"), "{err}");
        Ok(())
    }
}
