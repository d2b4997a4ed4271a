//! Checkpoints: one safetensors file that is enough to rebuild a trained model anywhere.
//!
//! Layout (format version [`FORMAT_VERSION`]):
//! - tensors: every model variable under its variable name; with training state also
//!   `optimizer/m/<name>` and `optimizer/v/<name>` (AdamW moments), so that a resumed run
//!   continues exactly where it stopped;
//! - metadata (string → string): `format` = [`FORMAT_NAME`], `format_version`, `config`
//!   (the model's tagged JSON, [`NeuralOperator::config_json`]: `{"model": name, ...}`; for
//!   the built-in architectures the [`ModelConfig`] JSON), `normalizers` (JSON, optional), `training` (JSON,
//!   optional), `optimizer` (JSON of the step count and hyper-parameters, optional).
//!
//! Loading builds the model from the config through a [`Registry`] (the built-in one unless
//! given another, so a user architecture loads once registered), then fills every variable from the file,
//! failing clearly on a missing tensor, a shape mismatch, an unexpected tensor, a
//! truncated file or a file that is not a checkpoint. Values are stored in their own
//! dtype, so a save/load round trip is bit-exact. Files are written to a temporary
//! sibling and renamed, so an interrupted save never destroys the previous checkpoint.

use crate::config::ModelConfig;
use crate::data::Normalizers;
use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use crate::registry::Registry;
use crate::train::optim::AdamWState;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarMap;
use no_layers::init::SeededVarMap;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// The value of the `format` metadata key.
pub const FORMAT_NAME: &str = "fhn-neural-operators/no-models checkpoint";
/// The current format version; files from newer versions are refused.
pub const FORMAT_VERSION: u32 = 1;
const OPT_M: &str = "optimizer/m/";
const OPT_V: &str = "optimizer/v/";

/// Where training stood when the checkpoint was written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TrainingMeta {
    /// Epochs fully completed.
    pub epochs_completed: usize,
    /// Optimiser steps taken.
    pub steps: u64,
    /// Best validation error so far.
    pub best_val: Option<f64>,
    /// Epoch (0-based) of the best validation error.
    pub best_epoch: Option<usize>,
    /// Epochs since the validation error last improved (early stopping counter).
    pub epochs_since_improvement: usize,
    /// Validation error of the last completed epoch.
    pub last_val: Option<f64>,
    /// The training configuration (JSON), for the record and for resuming.
    pub train_config: Option<serde_json::Value>,
}

/// Everything a checkpoint file holds, in memory.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    /// The architecture and its settings: the tagged JSON `{"model": name, ...}` of
    /// [`NeuralOperator::config_json`] ([`Self::model_config`] parses a built-in one).
    pub config: serde_json::Value,
    /// The model variables by name.
    pub weights: BTreeMap<String, Tensor>,
    /// Input/output normalisers, if the model was trained with them.
    pub normalizers: Option<Normalizers>,
    /// Training progress, if written by the trainer.
    pub training: Option<TrainingMeta>,
    /// Optimiser state, if written by the trainer.
    pub optimizer: Option<AdamWState>,
}

/// A model rebuilt from a checkpoint, with its variables (trainable) and normalisers.
pub struct LoadedModel {
    /// The model.
    pub model: Box<dyn NeuralOperator>,
    /// Its variables, for further training.
    pub vars: SeededVarMap,
    /// Normalisers (identities if the checkpoint had none).
    pub normalizers: Normalizers,
    /// Training progress, if any.
    pub training: Option<TrainingMeta>,
    /// Optimiser state, if any.
    pub optimizer: Option<AdamWState>,
}

impl LoadedModel {
    /// Prediction in physical units: encode the input with the input normaliser, run the
    /// model ([`NeuralOperator::predict`], which works in normalised space), decode the
    /// output. The input is cast to the model's dtype; a NaN or infinity in the input or the
    /// output is an error naming the sample and index. For repeated calls build an [`crate::inference_twin`] once (see
    /// [`Self::inference`]) and use [`Self::predict_physical_with`].
    pub fn predict_physical(&self, input: &Tensor) -> Result<Tensor> {
        self.predict_physical_with(self.model.as_ref(), input)
    }

    /// The model rebuilt over detached views of its variables ([`crate::inference`]): the
    /// same outputs without an autograd graph.
    pub fn inference(&self) -> Result<Box<dyn NeuralOperator>> {
        crate::inference_twin(self.model.as_ref(), self.vars.varmap())
    }

    /// [`Self::predict_physical`] through another model of the same weights (e.g.
    /// [`Self::inference`]).
    pub fn predict_physical_with(
        &self,
        model: &dyn NeuralOperator,
        input: &Tensor,
    ) -> Result<Tensor> {
        crate::inference::ensure_finite_batch(input, "input")?;
        let input = match self.vars.varmap().all_vars().first().map(|v| v.dtype()) {
            Some(dtype) if dtype != input.dtype() => input.to_dtype(dtype)?,
            _ => input.clone(),
        };
        let x = self.normalizers.input.encode(&input)?;
        let y = model.predict(&x)?;
        let y = self.normalizers.output.decode(&y)?;
        crate::inference::ensure_finite_batch(&y, "output")?;
        Ok(y)
    }
}

impl Checkpoint {
    /// Reads `path` and rebuilds its built-in model on `device` (same as [`load`]).
    pub fn load_model(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel> {
        load(path, device)
    }

    /// Reads `path` and rebuilds its model through `registry` on `device` (same as
    /// [`load_with`]): how a checkpoint of a user architecture loads.
    pub fn load_model_with(
        path: impl AsRef<Path>,
        registry: &Registry,
        device: &Device,
    ) -> Result<LoadedModel> {
        load_with(path, registry, device)
    }

    /// Captures a model's current weights and its [`NeuralOperator::config_json`]; works
    /// for any architecture, built-in or not.
    pub fn from_model(model: &dyn NeuralOperator, vars: &VarMap) -> Result<Self> {
        let config = model.config_json();
        crate::registry::architecture_of(&config)?;
        Ok(Self {
            config,
            weights: snapshot(vars)?,
            normalizers: None,
            training: None,
            optimizer: None,
        })
    }

    /// Writes the checkpoint (atomically: temporary file, then rename).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT_NAME.to_string());
        meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        meta.insert("config".to_string(), serde_json::to_string(&self.config)?);
        if let Some(n) = &self.normalizers {
            meta.insert("normalizers".to_string(), serde_json::to_string(n)?);
        }
        if let Some(t) = &self.training {
            meta.insert("training".to_string(), serde_json::to_string(t)?);
        }
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (name, t) in &self.weights {
            if name.starts_with("optimizer/") {
                return Err(file_err(
                    path,
                    format!("variable name `{name}` is reserved"),
                ));
            }
            tensors.push((name.clone(), t.contiguous()?));
        }
        if let Some(opt) = &self.optimizer {
            meta.insert("optimizer".to_string(), serde_json::to_string(&opt.meta())?);
            for (name, t) in &opt.m {
                tensors.push((format!("{OPT_M}{name}"), t.contiguous()?));
            }
            for (name, t) in &opt.v {
                tensors.push((format!("{OPT_V}{name}"), t.contiguous()?));
            }
        }
        let data: Vec<(&str, Vec<u8>)> = tensors
            .iter()
            .map(|(n, t)| (n.as_str(), safetensors::View::data(t).into_owned()))
            .collect();
        meta.insert(
            crate::checksum::METADATA_KEY.to_string(),
            crate::checksum::metadata_value(data.iter().map(|(n, d)| (*n, d.as_slice()))),
        );
        drop(data);
        let bytes =
            safetensors::serialize(tensors.iter().map(|(n, t)| (n.as_str(), t)), Some(meta))
                .map_err(|e| file_err(path, format!("cannot serialise checkpoint: {e}")))?;
        write_atomic(path, &bytes)
    }

    /// Reads a checkpoint file, placing its tensors on `device`.
    pub fn read(path: impl AsRef<Path>, device: &Device) -> Result<Self> {
        use candle_core::safetensors::Load;
        let path = path.as_ref();
        let buf = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (_, header) = safetensors::SafeTensors::read_metadata(&buf).map_err(|e| {
            file_err(
                path,
                format!("not a readable safetensors file (truncated or corrupt?): {e}"),
            )
        })?;
        let meta = header.metadata().clone().unwrap_or_default();
        let field = |key: &str| meta.get(key).map(String::as_str);
        match field("format") {
            Some(FORMAT_NAME) => {}
            other => {
                return Err(file_err(
                    path,
                    format!("not a no-models checkpoint (metadata `format` is {other:?}, expected {FORMAT_NAME:?})"),
                ))
            }
        }
        let version: u32 = field("format_version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| file_err(path, "missing or malformed `format_version`"))?;
        if version > FORMAT_VERSION {
            return Err(file_err(
                path,
                format!("format version {version} is newer than this library's {FORMAT_VERSION}"),
            ));
        }
        let json_field = |key: &str| -> Result<Option<serde_json::Value>> {
            field(key)
                .map(|s| {
                    serde_json::from_str(s)
                        .map_err(|e| file_err(path, format!("bad `{key}` metadata: {e}")))
                })
                .transpose()
        };
        let config = match json_field("config")? {
            Some(v) => {
                crate::registry::architecture_of(&v)
                    .map_err(|e| file_err(path, format!("bad `config`: {e}")))?;
                v
            }
            None => return Err(file_err(path, "missing `config` metadata")),
        };
        let parse = |key: &str| -> Result<Option<serde_json::Value>> { json_field(key) };
        let normalizers = parse("normalizers")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| file_err(path, format!("bad `normalizers`: {e}")))?;
        let training = parse("training")?
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| file_err(path, format!("bad `training`: {e}")))?;
        let st = safetensors::SafeTensors::deserialize(&buf)
            .map_err(|e| file_err(path, format!("corrupt tensor data: {e}")))?;
        crate::checksum::verify(&st, field(crate::checksum::METADATA_KEY))
            .map_err(|reason| file_err(path, reason))?;
        if let Some(n) = &normalizers {
            check_normalizers(n, path)?;
        }
        let mut weights = BTreeMap::new();
        let (mut m, mut v) = (BTreeMap::new(), BTreeMap::new());
        for (name, view) in st.iter() {
            let t = view.load(device)?;
            if let Some((flat, value)) = crate::inference::first_non_finite(&t)? {
                return Err(ModelError::NonFinite {
                    context: format!(
                        "{}: tensor `{name}` at index {:?}",
                        path.display(),
                        crate::inference::unravel(flat, t.dims())
                    ),
                    value,
                });
            }
            if let Some(rest) = name.strip_prefix(OPT_M) {
                m.insert(rest.to_string(), t);
            } else if let Some(rest) = name.strip_prefix(OPT_V) {
                v.insert(rest.to_string(), t);
            } else {
                weights.insert(name.to_string(), t);
            }
        }
        let optimizer = match parse("optimizer")? {
            Some(j) => {
                let meta = serde_json::from_value(j)
                    .map_err(|e| file_err(path, format!("bad `optimizer`: {e}")))?;
                Some(AdamWState::from_parts(meta, m, v))
            }
            None => None,
        };
        Ok(Self {
            config,
            weights,
            normalizers,
            training,
            optimizer,
        })
    }

    /// The architecture's name (the config's `"model"` tag).
    pub fn architecture(&self) -> Result<&str> {
        crate::registry::architecture_of(&self.config)
    }

    /// The configuration as a built-in [`ModelConfig`]; an error naming the architecture
    /// if it is a user model (read [`Self::config`] instead) or does not parse.
    pub fn model_config(&self) -> Result<ModelConfig> {
        ModelConfig::from_json(&self.config)
    }

    /// Rebuilds a built-in model on `device` and fills its variables from the checkpoint
    /// ([`Self::into_model_with`] with [`Registry::builtin`]). `path` only labels errors.
    pub fn into_model(self, device: &Device, path: &Path) -> Result<LoadedModel> {
        self.into_model_with(&Registry::builtin(), device, path)
    }

    /// Rebuilds the model through `registry` on `device` and fills its variables from the
    /// checkpoint. `path` only labels errors.
    pub fn into_model_with(
        self,
        registry: &Registry,
        device: &Device,
        path: &Path,
    ) -> Result<LoadedModel> {
        let dtype = self
            .weights
            .values()
            .next()
            .map(Tensor::dtype)
            .unwrap_or(DType::F32);
        let vars = SeededVarMap::new(0);
        let model = registry.build(&self.config, vars.var_builder(dtype, device))?;
        fill_vars(vars.varmap(), &self.weights, path)?;
        // Identity normalisers short-circuit, so their channel count does not matter.
        let normalizers = self
            .normalizers
            .unwrap_or_else(|| Normalizers::identity(0, 0));
        Ok(LoadedModel {
            model,
            vars,
            normalizers,
            training: self.training,
            optimizer: self.optimizer,
        })
    }
}

/// Reads `path` and rebuilds its (built-in) model on `device`; [`load_with`] for a user
/// architecture.
pub fn load(path: impl AsRef<Path>, device: &Device) -> Result<LoadedModel> {
    load_with(path, &Registry::builtin(), device)
}

/// Reads `path` and rebuilds its model through `registry` on `device`.
pub fn load_with(
    path: impl AsRef<Path>,
    registry: &Registry,
    device: &Device,
) -> Result<LoadedModel> {
    let path = path.as_ref();
    Checkpoint::read(path, device)?.into_model_with(registry, device, path)
}

/// Saves a bare model (no normalisers, no training state).
pub fn save_model(path: impl AsRef<Path>, model: &dyn NeuralOperator, vars: &VarMap) -> Result<()> {
    Checkpoint::from_model(model, vars)?.save(path)
}

/// Copies of all variables, by name.
pub fn snapshot(vars: &VarMap) -> Result<BTreeMap<String, Tensor>> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    data.iter()
        .map(|(k, v)| Ok((k.clone(), v.as_tensor().copy()?.detach())))
        .collect()
}

/// Sets every variable of `vars` from `weights`, checking names and shapes both ways.
pub fn fill_vars(vars: &VarMap, weights: &BTreeMap<String, Tensor>, path: &Path) -> Result<()> {
    let data = vars
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let var = &data[name];
        let t = weights.get(name).ok_or_else(|| {
            file_err(
                path,
                format!("missing tensor `{name}` (shape {:?})", var.dims()),
            )
        })?;
        if t.dims() != var.dims() {
            return Err(file_err(
                path,
                format!(
                    "tensor `{name}` has shape {:?}, the model expects {:?}",
                    t.dims(),
                    var.dims()
                ),
            ));
        }
        var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
    }
    if let Some(extra) = weights.keys().find(|k| !data.contains_key(*k)) {
        return Err(file_err(
            path,
            format!(
                "unexpected tensor `{extra}`: the model built from the config has no such variable"
            ),
        ));
    }
    Ok(())
}

/// An error unless every shift and scale of the normalisers is finite and every scale > 0.
fn check_normalizers(n: &Normalizers, path: &Path) -> Result<()> {
    for (which, norm) in [("input", &n.input), ("output", &n.output)] {
        if norm.shift.len() != norm.scale.len() {
            return Err(file_err(
                path,
                format!(
                    "the {which} normaliser has {} shifts but {} scales",
                    norm.shift.len(),
                    norm.scale.len()
                ),
            ));
        }
        for (channel, (&shift, &scale)) in norm.shift.iter().zip(&norm.scale).enumerate() {
            if !(shift.is_finite() && scale.is_finite() && scale > 0.0) {
                return Err(file_err(
                    path,
                    format!(
                        "the {which} normaliser of channel {channel} has shift {shift} and scale {scale}; expected a finite shift and a finite scale > 0"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// A new temporary file in `dir` with the permissions of an ordinary new file (`0o666`
/// less the umask) instead of `tempfile`'s owner-only `0o600`: it is renamed over its
/// target and keeps its mode, so checkpoints stay readable by the user's group. (The same
/// rule as `fhn_solver::atomic`, which this crate does not depend on.)
pub(crate) fn temp_file_in(dir: &Path) -> std::io::Result<tempfile::NamedTempFile> {
    let mut builder = tempfile::Builder::new();
    builder.prefix(".tmp");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    builder.tempfile_in(dir)
}

/// Writes `bytes` to a unique temporary sibling of `path`, syncs it and renames it over
/// `path`; on any error the temporary is removed and a previous `path` is left intact.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let io = |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = temp_file_in(parent).map_err(|source| ModelError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    tmp.write_all(bytes).map_err(io)?;
    tmp.as_file().sync_all().map_err(io)?;
    tmp.persist(path).map_err(|e| io(e.error))?;
    Ok(())
}

fn file_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A checkpoint written atomically has the mode `File::create` would give it (the umask
    /// applied to 0o666), not the temporary's owner-only 0o600.
    #[cfg(unix)]
    #[test]
    fn atomic_writes_have_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::File::create(&plain).unwrap();
        let written = dir.path().join("model.safetensors");
        write_atomic(&written, b"bytes").unwrap();
        assert_eq!(std::fs::read(&written).unwrap(), b"bytes");
        assert_eq!(mode(&written), mode(&plain));
    }
}
