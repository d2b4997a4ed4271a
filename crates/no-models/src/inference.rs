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
//! Work that does not depend on the input is done once per twin where a model knows it:
//! a DeepONet twin evaluates its trunk once per query grid and reuses it, stored in
//! column panels for the product with the branch
//! ([`crate::deeponet::DeepOnet::forward_at`], [`no_layers::ops::basis_product::PanelBasis`]); the spectral convolutions of the Fourier
//! family keep their weights' per-mode blocks per set of kept modes; CNO keeps its
//! activations' resize matrices per plane size (for the model and its twin alike). The cache lives in the twin, so a new twin
//! starts without it; and because the twin's weights are views of the variables, which an
//! optimiser updates in place, each reuse first checks that the trunk weights are bitwise
//! those the cached value came from (test `twin_equals_the_model_and_follows_updates`).
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
use candle_core::{DType, Tensor};
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

/// `bytes` in words: `"1.50 GiB (1610612736 bytes)"`, or that it overflows.
pub fn describe_bytes(bytes: Option<u128>) -> String {
    match bytes {
        Some(b) => format!("{:.2} GiB ({b} bytes)", b as f64 / GIB),
        None => "more bytes than a 128-bit count holds (the sizes overflow)".into(),
    }
}

/// The available memory in words, for [`ModelError::TooLarge`].
pub fn describe_available(available: Option<u64>) -> String {
    match available {
        Some(a) => format!(
            "more than the {:.2} GiB of available memory",
            a as f64 / GIB
        ),
        None => "more than the address space allows".into(),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// The memory the system can still give (`MemAvailable` of `/proc/meminfo`, in bytes);
/// `None` where that file does not exist or lacks the line.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// An error unless `bytes` (`None`: overflowed while counting) fits in the address space
/// and in the available memory. Called before anything of that size is allocated.
pub fn ensure_fits(what: impl FnOnce() -> String, bytes: Option<u128>) -> Result<()> {
    let available = available_memory();
    let limit = available.map_or(isize::MAX as u128, |a| a as u128);
    match bytes {
        Some(b) if b <= limit && b <= isize::MAX as u128 => Ok(()),
        _ => Err(ModelError::TooLarge {
            what: what(),
            bytes,
            available,
        }),
    }
}

/// The flat index and value of the first NaN or infinity in `t`, if any.
pub fn first_non_finite(t: &Tensor) -> Result<Option<(usize, f64)>> {
    let flat = t.flatten_all()?;
    let found = match flat.dtype() {
        DType::F64 => first_bad(flat.to_vec1::<f64>()?.into_iter()),
        DType::F32 => first_bad(flat.to_vec1::<f32>()?.into_iter().map(f64::from)),
        _ => first_bad(flat.to_dtype(DType::F64)?.to_vec1::<f64>()?.into_iter()),
    };
    Ok(found)
}

fn first_bad(values: impl Iterator<Item = f64>) -> Option<(usize, f64)> {
    values.enumerate().find(|(_, v)| !v.is_finite())
}

/// The multi-index of flat (row-major) index `flat` in an array of shape `dims`.
pub fn unravel(mut flat: usize, dims: &[usize]) -> Vec<usize> {
    let mut index = vec![0; dims.len()];
    for (slot, &d) in index.iter_mut().zip(dims).rev() {
        if d > 0 {
            *slot = flat % d;
            flat /= d;
        }
    }
    index
}

/// An error naming the sample (first axis) and index of the first non-finite value of a
/// batch `t`; `what` is `"input"` or `"output"`.
pub fn ensure_finite_batch(t: &Tensor, what: &str) -> Result<()> {
    let Some((flat, value)) = first_non_finite(t)? else {
        return Ok(());
    };
    let index = unravel(flat, t.dims());
    let (sample, rest) = index.split_first().map_or((0, &[][..]), |(s, r)| (*s, r));
    Err(ModelError::NonFinite {
        context: format!(
            "{what} sample {sample} at index {rest:?} (of shape {:?})",
            t.dims()
        ),
        value,
    })
}

pub mod npy {
    //! Reading and writing `.npy` arrays of little-endian `f32`/`f64`, with the header's
    //! shape checked against the file's length and the available memory before anything
    //! is allocated, and writes that go to a temporary sibling, buffered, then renamed.

    use super::ensure_fits;
    use crate::error::{ModelError, Result};
    use candle_core::{DType, Device, Tensor};
    use std::io::{BufReader, BufWriter, Read, Write};
    use std::path::Path;

    const MAGIC: &[u8] = b"\x93NUMPY";

    fn bad(path: &Path, reason: impl Into<String>) -> ModelError {
        ModelError::File {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }

    fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
        move |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// What an `.npy` header declares.
    #[derive(Debug, Clone, PartialEq)]
    pub struct Header {
        /// The element type (`F32` or `F64`).
        pub dtype: DType,
        /// The array's shape.
        pub shape: Vec<usize>,
        /// Where the data starts in the file.
        pub data_offset: u64,
    }

    /// Reads and checks the header of the `.npy` file at `path`: little-endian `f32` or
    /// `f64`, C order, and a shape whose data is exactly what the file holds.
    pub fn read_header(path: &Path) -> Result<Header> {
        let file = std::fs::File::open(path).map_err(io(path))?;
        let file_len = file.metadata().map_err(io(path))?.len();
        let mut r = BufReader::new(file);
        let mut pre = [0u8; 8];
        r.read_exact(&mut pre)
            .map_err(|_| bad(path, "not an .npy file: shorter than the 8-byte preamble"))?;
        if &pre[..6] != MAGIC {
            return Err(bad(
                path,
                "not an .npy file: the magic string \\x93NUMPY is missing",
            ));
        }
        let (len_bytes, prefix) = match pre[6] {
            1 => (2, 10u64),
            2 | 3 => (4, 12u64),
            v => {
                return Err(bad(
                    path,
                    format!("unsupported .npy version {v}; expected 1, 2 or 3"),
                ))
            }
        };
        let mut len_buf = [0u8; 4];
        r.read_exact(&mut len_buf[..len_bytes])
            .map_err(|_| bad(path, "truncated .npy header"))?;
        let header_len = u32::from_le_bytes(len_buf) as u64;
        if header_len > 1 << 20 || prefix + header_len > file_len {
            return Err(bad(
                path,
                format!("the .npy header claims {header_len} bytes; the file holds {file_len}"),
            ));
        }
        let mut text = vec![0u8; header_len as usize];
        r.read_exact(&mut text)
            .map_err(|_| bad(path, "truncated .npy header"))?;
        let text = String::from_utf8_lossy(&text);
        let dtype = parse_descr(path, &text)?;
        if dict_value(&text, "fortran_order").is_some_and(|v| v.starts_with("True")) {
            return Err(bad(
                path,
                "Fortran-order arrays are not supported; save with C order",
            ));
        }
        let shape = parse_shape(path, &text)?;
        let data_offset = prefix + header_len;
        let bytes = shape
            .iter()
            .try_fold(dtype.size_in_bytes() as u128, |acc, &d| {
                acc.checked_mul(d as u128)
            });
        let held = (file_len - data_offset) as u128;
        if bytes != Some(held) {
            let claimed = bytes.map_or("more than 2^128".to_string(), |b| b.to_string());
            return Err(bad(
                path,
                format!(
                    "the header claims shape {shape:?} of {} ({claimed} bytes of data), but the file holds {held} bytes of data",
                    descr_name(dtype)
                ),
            ));
        }
        Ok(Header {
            dtype,
            shape,
            data_offset,
        })
    }

    fn descr_name(dtype: DType) -> &'static str {
        if dtype == DType::F64 {
            "float64"
        } else {
            "float32"
        }
    }

    /// The text after `'key':` in a header dictionary.
    fn dict_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
        let at = text.find(&format!("'{key}'"))?;
        let rest = &text[at + key.len() + 2..];
        Some(rest.trim_start().strip_prefix(':')?.trim_start())
    }

    fn parse_descr(path: &Path, text: &str) -> Result<DType> {
        let value = dict_value(text, "descr")
            .and_then(|v| v.strip_prefix('\'')?.split('\'').next())
            .ok_or_else(|| bad(path, "the .npy header has no 'descr'"))?;
        let expected = "expected little-endian '<f4' or '<f8'";
        match value {
            "<f4" => Ok(DType::F32),
            "<f8" => Ok(DType::F64),
            ">f4" | ">f8" => Err(bad(
                path,
                format!(
                    "big-endian float{} ('{value}'); {expected}",
                    if value == ">f8" { 64 } else { 32 }
                ),
            )),
            other => Err(bad(path, format!("element type '{other}'; {expected}"))),
        }
    }

    fn parse_shape(path: &Path, text: &str) -> Result<Vec<usize>> {
        let inner = dict_value(text, "shape")
            .and_then(|v| v.strip_prefix('(')?.split(')').next())
            .ok_or_else(|| bad(path, "the .npy header has no 'shape' tuple"))?;
        inner
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>().map_err(|_| {
                    bad(
                        path,
                        format!("shape entry `{s}` is not a non-negative integer"),
                    )
                })
            })
            .collect()
    }

    /// Reads a little-endian `f32`/`f64` `.npy` array onto `device`, after checking that
    /// its header agrees with the file's length and that it fits in memory.
    pub fn read(path: &Path, device: &Device) -> Result<Tensor> {
        let header = read_header(path)?;
        let n: usize = header.shape.iter().product();
        let bytes = (n as u128).checked_mul(header.dtype.size_in_bytes() as u128);
        ensure_fits(
            || format!("{}: an array of shape {:?}", path.display(), header.shape),
            bytes,
        )?;
        let mut data = vec![0u8; n * header.dtype.size_in_bytes()];
        let mut file = std::fs::File::open(path).map_err(io(path))?;
        std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(header.data_offset))
            .map_err(io(path))?;
        file.read_exact(&mut data).map_err(io(path))?;
        let shape = header.shape.as_slice();
        let t = if header.dtype == DType::F64 {
            let v: Vec<f64> = data
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            Tensor::from_vec(v, shape, device)?
        } else {
            let v: Vec<f32> = data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap_or_default()))
                .collect();
            Tensor::from_vec(v, shape, device)?
        };
        Ok(t)
    }

    /// The `.npy` (version 1.0) header of a C-order array.
    fn header_bytes(descr: &str, shape: &[usize]) -> Vec<u8> {
        let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
        let tuple = match dims.len() {
            1 => format!("({},)", dims[0]),
            _ => format!("({})", dims.join(", ")),
        };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple}, }}");
        // Pad with spaces so that the data starts on a 64-byte boundary, newline last.
        let unpadded = MAGIC.len() + 4 + dict.len() + 1;
        dict.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        dict.push('\n');
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
        out.extend_from_slice(dict.as_bytes());
        out
    }

    /// Writes `t` (`f32` or `f64`) as `.npy` to a temporary sibling of `path` through a
    /// buffer, syncs it and renames it over `path`: a failed write leaves any previous
    /// file intact and no temporary behind.
    pub fn write(t: &Tensor, path: &Path) -> Result<()> {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        // Name the target, not only its directory, when the temporary cannot be made.
        let mut tmp = crate::checkpoint::temp_file_in(parent).map_err(io(path))?;
        {
            let mut w = BufWriter::new(tmp.as_file_mut());
            let flat = t.flatten_all()?;
            match t.dtype() {
                DType::F64 => {
                    w.write_all(&header_bytes("<f8", t.dims()))
                        .map_err(io(path))?;
                    for v in flat.to_vec1::<f64>()? {
                        w.write_all(&v.to_le_bytes()).map_err(io(path))?;
                    }
                }
                _ => {
                    w.write_all(&header_bytes("<f4", t.dims()))
                        .map_err(io(path))?;
                    for v in flat.to_dtype(DType::F32)?.to_vec1::<f32>()? {
                        w.write_all(&v.to_le_bytes()).map_err(io(path))?;
                    }
                }
            }
            w.flush().map_err(io(path))?;
        }
        tmp.as_file().sync_all().map_err(io(path))?;
        tmp.persist(path).map_err(|e| ModelError::Io {
            path: path.to_path_buf(),
            source: e.error,
        })?;
        Ok(())
    }
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
    fn deeponet_twins_on_grids_of_several_trunk_panels_equal_the_model() -> Result<()> {
        // 16 × 20 = 320 query points: the twin's cached trunk is stored in two panels
        // (128 and 192 points); the twin, `predict` and the model agree bit for bit.
        let configs = [
            r#"{"model": "don", "grid": [16, 20], "branch_hidden": [8], "trunk_hidden": [8], "n_basis": 6}"#,
            r#"{"model": "don_cnn", "grid": [16, 20], "conv_channels": [3], "branch_hidden": [8], "trunk_hidden": [8], "n_basis": 6}"#,
        ];
        for json in configs {
            let cfg: ModelConfig =
                serde_json::from_str(json).map_err(|e| ModelError::InvalidConfig {
                    model: "test",
                    reason: e.to_string(),
                })?;
            let vars = SeededVarMap::new(5);
            let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
            let twin = inference_twin(model.as_ref(), vars.varmap())?;
            let x = Tensor::arange(0f32, 960.0, &Device::Cpu)?
                .reshape((3, 1, 16, 20))?
                .affine(0.01, 0.0)?
                .sin()?;
            let bits = |t: Tensor| -> Result<Vec<u32>> {
                Ok(t.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|v| v.to_bits())
                    .collect())
            };
            let y = bits(model.forward(&x)?)?;
            assert_eq!(y, bits(twin.forward(&x)?)?, "{json}");
            // A second call reuses the cached panels.
            assert_eq!(y, bits(twin.forward(&x)?)?, "{json}");
            assert_eq!(y, bits(model.predict(&x)?)?, "{json}");
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
