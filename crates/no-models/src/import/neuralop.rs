//! Weights trained in neuraloperator 2.x (`FNO`, `TFNO`, `LocalNO`) into this crate.
//!
//! The exchange format (`safetensors.torch.save_file` refuses neuraloperator's
//! `state_dict` as it is):
//! - a safetensors file with the `state_dict`'s tensor entries only (no `_metadata`),
//!   complex tensors stored as `torch.view_as_real` (trailing dimension 2), under
//!   neuraloperator's key names;
//! - a JSON object with the class name under `"model"` (`"FNO"`, `"TFNO"`, `"LocalNO"`)
//!   and the constructor arguments under their neuraloperator names.
//!
//! The models here name their variables after neuraloperator's keys, so the mapping is
//! the identity except for LocalNO's finite-difference weight, which neuraloperator
//! registers twice (`differential.i.weight` and `differential.i.conv.weight`); the
//! duplicate is checked equal and dropped. Constructor arguments this crate does not
//! implement are refused unless they hold neuraloperator's default value, so an import
//! never silently changes the model. `docs/checkpoints.md` lists the mapping.

use crate::checkpoint::{fill_vars, Checkpoint, LoadedModel};
use crate::config::{build, ModelConfig};
use crate::data::Normalizers;
use crate::error::{ModelError, Result};
use crate::fno::FnoConfig;
use crate::local_no::LocalNoConfig;
use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_layers::layers::local::conv::PaddingMode;
use no_layers::layers::local::disco::BasisEvaluation;
use no_layers::layers::skip::SkipKind;
use no_layers::layers::spectral::conv::TuckerImplementation;
use no_layers::layers::spectral::tucker::TuckerRank;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// Arguments that are accepted only with these (neuraloperator default) values.
const FIXED_DEFAULTS: &[(&str, &str)] = &[
    ("non_linearity", "null"),
    ("norm", "null"),
    ("preactivation", "false"),
    ("complex_data", "false"),
    ("separable", "false"),
    ("fno_block_precision", "\"full\""),
    ("local_no_block_precision", "\"full\""),
    ("stabilizer", "null"),
    ("resolution_scaling_factor", "null"),
    ("channel_mlp_dropout", "0"),
    ("enforce_hermitian_symmetry", "true"),
    ("conv_bias_kernel", "1"),
    ("fixed_rank_modes", "false"),
    ("decomposition_kwargs", "{}"),
    ("max_n_modes", "null"),
    ("domain_padding_mode", "\"symmetric\""),
];

/// Translates neuraloperator's class name and constructor arguments into a [`ModelConfig`].
pub fn config_from_json(spec: &Value) -> Result<ModelConfig> {
    let obj = spec
        .as_object()
        .ok_or_else(|| bad("the config must be a JSON object"))?;
    let class = obj
        .get("model")
        .and_then(Value::as_str)
        .ok_or_else(|| bad("missing `model` (the class name: FNO, TFNO or LocalNO)"))?;
    let mut args = obj.clone();
    args.remove("model");
    check_fixed_defaults(&mut args)?;
    let cfg = match class {
        "FNO" | "TFNO" => {
            let (cfg, tucker) = fno_config(&mut args, class == "TFNO")?;
            if tucker {
                ModelConfig::Tfno(cfg)
            } else {
                ModelConfig::Fno(cfg)
            }
        }
        "LocalNO" => ModelConfig::LocalNo(local_no_config(&mut args)?),
        other => {
            return Err(bad(format!(
                "unsupported class `{other}` (expected FNO, TFNO or LocalNO)"
            )))
        }
    };
    if let Some(k) = args.keys().next() {
        return Err(bad(format!(
            "unsupported constructor argument `{k}` for {class}"
        )));
    }
    Ok(cfg)
}

/// Reads a neuraloperator state_dict (import convention) as variable name → tensor,
/// on the CPU in f32.
pub fn read_state_dict(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    use candle_core::safetensors::Load;
    let buf = std::fs::read(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| ModelError::File {
        path: path.to_path_buf(),
        reason: format!("not a readable safetensors state_dict: {e}"),
    })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.iter() {
        let t = view.load(&Device::Cpu)?.to_dtype(DType::F32)?;
        // A NaN weight would only show as all-NaN predictions later.
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
        out.insert(name.to_string(), t);
    }
    Ok(out)
}

/// Renames neuraloperator keys to this crate's variable names (drops the duplicate
/// LocalNO finite-difference weight after checking it equals the kept one).
pub fn map_keys(mut sd: BTreeMap<String, Tensor>, path: &Path) -> Result<BTreeMap<String, Tensor>> {
    sd.remove("_metadata");
    let dupes: Vec<String> = sd
        .keys()
        .filter(|k| {
            k.contains(".differential.") && k.ends_with(".weight") && !k.ends_with(".conv.weight")
        })
        .cloned()
        .collect();
    for key in dupes {
        let twin = format!("{}.conv.weight", key.trim_end_matches(".weight"));
        let (Some(a), Some(b)) = (sd.get(&key), sd.get(&twin)) else {
            continue;
        };
        let same = a.dims() == b.dims() && (a - b)?.abs()?.max_all()?.to_scalar::<f32>()? == 0.0;
        if !same {
            return Err(ModelError::File {
                path: path.to_path_buf(),
                reason: format!("`{key}` and `{twin}` should be the same tensor"),
            });
        }
        sd.remove(&key);
    }
    Ok(sd)
}

/// Builds the model a neuraloperator config describes and loads the state_dict into it.
pub fn import(
    state_dict: impl AsRef<Path>,
    config_json: impl AsRef<Path>,
    device: &Device,
) -> Result<LoadedModel> {
    let (sd_path, cfg_path) = (state_dict.as_ref(), config_json.as_ref());
    let text = std::fs::read_to_string(cfg_path).map_err(|source| ModelError::Io {
        path: cfg_path.to_path_buf(),
        source,
    })?;
    let spec: Value = serde_json::from_str(&text).map_err(|e| ModelError::File {
        path: cfg_path.to_path_buf(),
        reason: format!("invalid JSON: {e}"),
    })?;
    let config = config_from_json(&spec).map_err(|e| ModelError::File {
        path: cfg_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let weights = map_keys(read_state_dict(sd_path)?, sd_path)?;
    let vars = SeededVarMap::new(0);
    let model = build(&config, vars.var_builder(DType::F32, device))?;
    fill_vars(vars.varmap(), &weights, sd_path)?;
    Ok(LoadedModel {
        model,
        vars,
        normalizers: Normalizers::identity(0, 0),
        training: None,
        optimizer: None,
    })
}

/// Converts a neuraloperator state_dict + config into a project checkpoint at `out`.
pub fn convert(
    state_dict: impl AsRef<Path>,
    config_json: impl AsRef<Path>,
    out: impl AsRef<Path>,
) -> Result<LoadedModel> {
    let loaded = import(state_dict, config_json, &Device::Cpu)?;
    Checkpoint::from_model(loaded.model.as_ref(), loaded.vars.varmap())?.save(out)?;
    Ok(loaded)
}

fn fno_config(args: &mut Map<String, Value>, is_tfno: bool) -> Result<(FnoConfig, bool)> {
    let d = FnoConfig::default();
    let factorization = take_opt_str(args, "factorization")?;
    let tucker = match factorization.as_deref() {
        None => is_tfno,
        Some(f) if f.eq_ignore_ascii_case("tucker") => true,
        Some(f) => {
            return Err(bad(format!(
                "factorization `{f}` is not supported (Tucker or none)"
            )))
        }
    };
    let rank = take_f64(args, "rank")?;
    let implementation = take_implementation(args)?;
    let cfg = FnoConfig {
        n_modes: take_usizes(args, "n_modes")?.ok_or_else(|| bad("missing `n_modes`"))?,
        in_channels: take_usize(args, "in_channels")?
            .ok_or_else(|| bad("missing `in_channels`"))?,
        out_channels: take_usize(args, "out_channels")?
            .ok_or_else(|| bad("missing `out_channels`"))?,
        hidden_channels: take_usize(args, "hidden_channels")?
            .ok_or_else(|| bad("missing `hidden_channels`"))?,
        n_layers: take_usize(args, "n_layers")?.unwrap_or(d.n_layers),
        lifting_channel_ratio: take_f64(args, "lifting_channel_ratio")?
            .unwrap_or(d.lifting_channel_ratio),
        projection_channel_ratio: take_f64(args, "projection_channel_ratio")?
            .unwrap_or(d.projection_channel_ratio),
        positional_embedding: take_embedding(args)?,
        use_channel_mlp: take_bool(args, "use_channel_mlp")?.unwrap_or(d.use_channel_mlp),
        channel_mlp_expansion: take_f64(args, "channel_mlp_expansion")?
            .unwrap_or(d.channel_mlp_expansion),
        channel_mlp_skip: take_skip(args, "channel_mlp_skip")?.unwrap_or(d.channel_mlp_skip),
        fno_skip: take_skip(args, "fno_skip")?.unwrap_or(d.fno_skip),
        domain_padding: take_padding(args)?,
        // `ModelConfig::Tfno` (chosen below when `tucker`) implies the Tucker factorization.
        factorization: None,
        // neuraloperator's FNO default rank is 1.0; TFNO sets 0.1.
        rank: tucker.then(|| TuckerRank::Fraction(rank.unwrap_or(if is_tfno { 0.1 } else { 1.0 }))),
        implementation: implementation.unwrap_or(TuckerImplementation::Factorized),
        transform: d.transform,
    };
    Ok((cfg, tucker))
}

fn local_no_config(args: &mut Map<String, Value>) -> Result<LocalNoConfig> {
    let d = LocalNoConfig::default();
    if let Some(f) = take_opt_str(args, "factorization")? {
        return Err(bad(format!(
            "LocalNO with factorization `{f}` is not supported"
        )));
    }
    let _ = take_f64(args, "rank")?;
    let _ = take_implementation(args)?;
    let pair_usize =
        |v: Option<Vec<usize>>, name: &str, default: [usize; 2]| -> Result<[usize; 2]> {
            match v {
                None => Ok(default),
                Some(v) if v.len() == 2 => Ok([v[0], v[1]]),
                Some(v) => Err(bad(format!("`{name}` must have 2 entries, got {v:?}"))),
            }
        };
    let default_in_shape = take_usizes(args, "default_in_shape")?;
    let disco_kernel_shape = take_usizes(args, "disco_kernel_shape")?;
    let domain_length = match args.remove("domain_length") {
        None | Some(Value::Null) => d.domain_length,
        Some(v) => {
            let l: Vec<f64> = serde_json::from_value(v)?;
            if l.len() != 2 {
                return Err(bad(format!(
                    "`domain_length` must have 2 entries, got {l:?}"
                )));
            }
            [l[0], l[1]]
        }
    };
    Ok(LocalNoConfig {
        n_modes: take_usizes(args, "n_modes")?.ok_or_else(|| bad("missing `n_modes`"))?,
        in_channels: take_usize(args, "in_channels")?
            .ok_or_else(|| bad("missing `in_channels`"))?,
        out_channels: take_usize(args, "out_channels")?
            .ok_or_else(|| bad("missing `out_channels`"))?,
        hidden_channels: take_usize(args, "hidden_channels")?
            .ok_or_else(|| bad("missing `hidden_channels`"))?,
        default_in_shape: pair_usize(default_in_shape, "default_in_shape", d.default_in_shape)?,
        n_layers: take_usize(args, "n_layers")?.unwrap_or(d.n_layers),
        disco_layers: take_layer_flags(args, "disco_layers")?.unwrap_or(d.disco_layers),
        disco_kernel_shape: pair_usize(
            disco_kernel_shape,
            "disco_kernel_shape",
            d.disco_kernel_shape,
        )?,
        domain_length,
        disco_groups: take_usize(args, "disco_groups")?.unwrap_or(d.disco_groups),
        disco_bias: take_bool(args, "disco_bias")?.unwrap_or(d.disco_bias),
        radius_cutoff: take_f64(args, "radius_cutoff")?,
        // The anchor's equidistant DISCO always zero-pads, and evaluates its basis in f32.
        disco_padding: PaddingMode::Zeros,
        disco_evaluation: BasisEvaluation::AnchorF32,
        diff_layers: take_layer_flags(args, "diff_layers")?.unwrap_or(d.diff_layers),
        fin_diff_kernel_size: take_usize(args, "fin_diff_kernel_size")?
            .unwrap_or(d.fin_diff_kernel_size),
        mix_derivatives: take_bool(args, "mix_derivatives")?.unwrap_or(d.mix_derivatives),
        conv_padding_mode: match take_opt_str(args, "conv_padding_mode")?.as_deref() {
            None | Some("periodic") | Some("circular") => PaddingMode::Periodic,
            Some("zeros") => PaddingMode::Zeros,
            Some(other) => {
                return Err(bad(format!("conv_padding_mode `{other}` is not supported")))
            }
        },
        lifting_channel_ratio: take_f64(args, "lifting_channel_ratio")?
            .unwrap_or(d.lifting_channel_ratio),
        projection_channel_ratio: take_f64(args, "projection_channel_ratio")?
            .unwrap_or(d.projection_channel_ratio),
        positional_embedding: take_embedding(args)?,
        use_channel_mlp: take_bool(args, "use_channel_mlp")?.unwrap_or(d.use_channel_mlp),
        channel_mlp_expansion: take_f64(args, "channel_mlp_expansion")?
            .unwrap_or(d.channel_mlp_expansion),
        channel_mlp_skip: take_skip(args, "channel_mlp_skip")?.unwrap_or(d.channel_mlp_skip),
        local_no_skip: take_skip(args, "local_no_skip")?.unwrap_or(d.local_no_skip),
        domain_padding: take_padding(args)?,
        transform: d.transform,
    })
}

fn check_fixed_defaults(args: &mut Map<String, Value>) -> Result<()> {
    for (key, default) in FIXED_DEFAULTS {
        if let Some(v) = args.remove(*key) {
            let want: Value = serde_json::from_str(default)?;
            let same = v == want || (v.as_f64().is_some() && v.as_f64() == want.as_f64());
            if !same {
                return Err(bad(format!(
                    "`{key}` = {v} is not supported (only {default})"
                )));
            }
        }
    }
    Ok(())
}

fn take_usize(a: &mut Map<String, Value>, k: &str) -> Result<Option<usize>> {
    match a.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .map(|x| Some(x as usize))
            .ok_or_else(|| bad(format!("`{k}` must be a non-negative integer, got {v}"))),
    }
}

fn take_usizes(a: &mut Map<String, Value>, k: &str) -> Result<Option<Vec<usize>>> {
    match a.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone()).map(Some).map_err(|_| {
            bad(format!(
                "`{k}` must be a list of non-negative integers, got {v}"
            ))
        }),
    }
}

fn take_f64(a: &mut Map<String, Value>, k: &str) -> Result<Option<f64>> {
    match a.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| bad(format!("`{k}` must be a number, got {v}"))),
    }
}

fn take_bool(a: &mut Map<String, Value>, k: &str) -> Result<Option<bool>> {
    match a.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| bad(format!("`{k}` must be true or false, got {v}"))),
    }
}

fn take_opt_str(a: &mut Map<String, Value>, k: &str) -> Result<Option<String>> {
    match a.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(v) => Err(bad(format!("`{k}` must be a string or null, got {v}"))),
    }
}

/// A bool, or a per-layer list of identical bools.
fn take_layer_flags(a: &mut Map<String, Value>, k: &str) -> Result<Option<bool>> {
    match a.remove(k) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(b)),
        Some(Value::Array(v)) => {
            let flags: Vec<bool> = v.iter().filter_map(Value::as_bool).collect();
            if flags.len() == v.len() && !flags.is_empty() && flags.iter().all(|&f| f == flags[0]) {
                Ok(Some(flags[0]))
            } else {
                Err(bad(format!(
                    "`{k}` per layer must be all true or all false here"
                )))
            }
        }
        Some(v) => Err(bad(format!("`{k}` must be a bool, got {v}"))),
    }
}

fn take_embedding(a: &mut Map<String, Value>) -> Result<bool> {
    match a.remove("positional_embedding") {
        None => Ok(true),
        Some(Value::Null) => Ok(false),
        Some(Value::String(s)) if s == "grid" => Ok(true),
        Some(v) => Err(bad(format!(
            "positional_embedding {v} is not supported (\"grid\" or null)"
        ))),
    }
}

fn take_skip(a: &mut Map<String, Value>, k: &str) -> Result<Option<SkipKind>> {
    match take_opt_str(a, k)?.as_deref() {
        None => Ok(None),
        Some("linear") => Ok(Some(SkipKind::Linear)),
        Some("identity") => Ok(Some(SkipKind::Identity)),
        Some("soft-gating") => Ok(Some(SkipKind::SoftGating)),
        Some(other) => Err(bad(format!("`{k}` = `{other}` is not supported"))),
    }
}

fn take_padding(a: &mut Map<String, Value>) -> Result<Option<f64>> {
    match a.remove("domain_padding") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(Value::Array(v)) => {
            let p: Vec<f64> = v.iter().filter_map(Value::as_f64).collect();
            if p.len() == v.len() && !p.is_empty() && p.iter().all(|&x| x == p[0]) {
                Ok(Some(p[0]))
            } else {
                Err(bad(
                    "per-axis domain_padding must be the same on every axis here",
                ))
            }
        }
        Some(v) => Err(bad(format!("domain_padding must be a number, got {v}"))),
    }
}

fn take_implementation(a: &mut Map<String, Value>) -> Result<Option<TuckerImplementation>> {
    match take_opt_str(a, "implementation")?.as_deref() {
        None => Ok(None),
        Some("factorized") => Ok(Some(TuckerImplementation::Factorized)),
        Some("reconstructed") => Ok(Some(TuckerImplementation::Reconstructed)),
        Some(other) => Err(bad(format!("implementation `{other}` is not supported"))),
    }
}

fn bad(reason: impl Into<String>) -> ModelError {
    ModelError::InvalidConfig {
        model: "neuraloperator import",
        reason: reason.into(),
    }
}
