//! In-memory datasets of `[N, C, nt, nx]` fields, per-channel normalisers and seeded batching.
//!
//! `no-models` knows nothing of the solver: it reads the `fhn-solver` dataset files
//! (safetensors holding `input`, `v` and `w` as `[N, nt, nx]`) by tensor name with the
//! `safetensors` crate, or takes any `[N, C, nt, nx]` tensors directly. A split of a
//! dataset directory is one file `SPLIT.safetensors` or the shards
//! `SPLIT.shard-I-of-N.safetensors` written by `generate_dataset --shard` (see
//! [`TensorDataset::load_split`]); checksums in the `tensor_crc32` metadata are verified.
//!
//! Normalisers are **per channel** (one shift and one scale per channel, reduced over
//! samples, time and space) rather than pointwise as in neuraloperator's
//! `UnitGaussianNormalizer`: a pointwise mean would imprint the training set's spatial
//! layout on every input and break the translation equivariance the study measures.
//! They are fitted on the training set only and travel inside checkpoints.

use crate::error::{ModelError, Result};
use crate::train::TrainError;
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Inputs and targets of a supervised operator-learning dataset, on the CPU in f32 (as
/// PyTorch's `TensorDataset`; the solver's on-disk samples are `fhn_solver::Dataset`).
#[derive(Debug, Clone)]
pub struct TensorDataset {
    inputs: Tensor,
    outputs: Tensor,
}

impl TensorDataset {
    /// Wraps inputs `[N, C_in, nt, nx]` and outputs `[N, C_out, nt, nx]` (same N, nt, nx).
    pub fn new(inputs: Tensor, outputs: Tensor) -> Result<Self> {
        let (i, o) = (inputs.dims(), outputs.dims());
        if i.len() != 4 {
            return Err(shape_err("dataset inputs", i, "[N, C_in, nt, nx]"));
        }
        if o.len() != 4 || o[0] != i[0] || o[2] != i[2] || o[3] != i[3] {
            return Err(shape_err(
                "dataset outputs",
                o,
                &format!("[{}, C_out, {}, {}] to match the inputs", i[0], i[2], i[3]),
            ));
        }
        let inputs = inputs
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        let outputs = outputs
            .to_device(&Device::Cpu)?
            .to_dtype(DType::F32)?
            .contiguous()?;
        Ok(Self { inputs, outputs })
    }

    /// Loads an `fhn-solver` dataset file: `input` becomes the one input channel, `v` and
    /// `w` the two output channels. Each tensor is `[N, nt, nx]` (or already `[N, 1, nt, nx]`)
    /// in f32 or f64.
    pub fn from_fhn_file(path: impl AsRef<Path>) -> Result<Self> {
        Self::from_safetensors(path, &["input"], &["v", "w"])
    }

    /// Loads any safetensors file, stacking the named tensors as channels.
    /// A `tensor_crc32` checksum in the metadata is verified first.
    pub fn from_safetensors(
        path: impl AsRef<Path>,
        input_keys: &[&str],
        output_keys: &[&str],
    ) -> Result<Self> {
        Ok(read_file(path.as_ref(), input_keys, output_keys)?.0)
    }
}

/// Reads a dataset file (verifying its checksums) and returns it with its metadata.
fn read_file(
    path: &Path,
    input_keys: &[&str],
    output_keys: &[&str],
) -> Result<(TensorDataset, HashMap<String, String>)> {
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
    let st = safetensors::SafeTensors::deserialize(&buf).map_err(|e| file_err(path, e))?;
    crate::checksum::verify(
        &st,
        meta.get(crate::checksum::METADATA_KEY).map(String::as_str),
    )
    .map_err(|e| file_err(path, e))?;
    let stack = |keys: &[&str]| -> Result<Tensor> {
        let mut chans = Vec::with_capacity(keys.len());
        for key in keys {
            chans.push(read_channel(&st, path, key)?);
        }
        Ok(Tensor::cat(&chans, 1)?)
    };
    let (inputs, outputs) = (stack(input_keys)?, stack(output_keys)?);
    let data = TensorDataset::new(inputs, outputs).map_err(|e| file_err(path, e))?;
    data.check_finite(&path.display().to_string())?;
    Ok((data, meta))
}

impl TensorDataset {
    /// Loads `train`, `val` and (if present) `test` from a directory written by
    /// `generate_dataset`, each by [`Self::load_split`].
    pub fn load_splits(dir: impl AsRef<Path>) -> Result<Splits> {
        let dir = dir.as_ref();
        let need = |split: &str| -> Result<Self> {
            Self::load_split(dir, split)?.ok_or_else(|| ModelError::File {
                path: dir.to_path_buf(),
                reason: format!(
                    "no {split} split: expected {split}.safetensors or the shards {split}.shard-I-of-N.safetensors (I = 0..N-1)"
                ),
            })
        };
        let train = need("train")?;
        let val = need("val")?;
        let test = Self::load_split(dir, "test")?;
        Ok(Splits { train, val, test })
    }

    /// Loads one split of a dataset directory: `SPLIT.safetensors`, or else every
    /// `SPLIT.shard-I-of-N.safetensors` (I = 0..N-1) concatenated in shard order, after
    /// checking that they form one dataset (one N, every shard once, identical `protocol`
    /// metadata, contiguous `first_index`, and `shard`/`n_total` metadata where present).
    /// `None` when no file of the split exists. A whole file beside shards, a missing,
    /// duplicate or mixed shard, or only files whose name starts with the split name but
    /// follows neither pattern, are errors saying what was found and what was expected.
    pub fn load_split(dir: impl AsRef<Path>, split: &str) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        let files = split_files(dir, split)?;
        let whole = files
            .whole
            .then(|| dir.join(format!("{split}.safetensors")));
        match (whole, files.shards.is_empty()) {
            (Some(w), true) => Ok(Some(Self::from_fhn_file(w)?)),
            (Some(w), false) => Err(file_err(
                &w,
                format!(
                    "a whole {split} file beside shard files ({}): expected one or the other; remove the stale one",
                    names(&files.shards)
                ),
            )),
            (None, false) => load_shards(dir, split, &files.shards).map(Some),
            (None, true) if files.other.is_empty() => Ok(None),
            (None, true) => Err(ModelError::File {
                path: dir.to_path_buf(),
                reason: format!(
                    "found {} but expected {split}.safetensors or {split}.shard-I-of-N.safetensors",
                    files.other.join(", ")
                ),
            }),
        }
    }

    /// Errors on the first NaN or infinity among the inputs and targets, naming `split`,
    /// the sample and the index within it.
    pub fn check_finite(&self, split: &str) -> Result<()> {
        for (tensor, t) in [("input", &self.inputs), ("target", &self.outputs)] {
            let values = t.flatten_all()?.to_vec1::<f32>()?;
            if let Some(flat) = values.iter().position(|v| !v.is_finite()) {
                let dims = t.dims();
                let per_sample = dims[1..].iter().product::<usize>().max(1);
                let (sample, rest) = (flat / per_sample, flat % per_sample);
                let (c, r) = (rest / (dims[2] * dims[3]), rest % (dims[2] * dims[3]));
                return Err(TrainError::NonFiniteData {
                    split: split.to_string(),
                    tensor,
                    sample,
                    index: vec![c, r / dims[3], r % dims[3]],
                    value: values[flat],
                }
                .into());
            }
        }
        Ok(())
    }

    /// Number of samples.
    pub fn len(&self) -> usize {
        self.inputs.dims()[0]
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// All inputs `[N, C_in, nt, nx]`.
    pub fn inputs(&self) -> &Tensor {
        &self.inputs
    }

    /// All outputs `[N, C_out, nt, nx]`.
    pub fn outputs(&self) -> &Tensor {
        &self.outputs
    }

    /// The first `n` samples (all of them if there are fewer).
    pub fn take(&self, n: usize) -> Result<Self> {
        let n = n.min(self.len());
        Self::new(self.inputs.narrow(0, 0, n)?, self.outputs.narrow(0, 0, n)?)
    }

    /// The samples at `indices`, moved to `device`.
    pub fn batch(&self, indices: &[usize], device: &Device) -> Result<(Tensor, Tensor)> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.len()) {
            return Err(ModelError::Shape {
                context: format!("batch index {bad}"),
                got: vec![bad],
                expected: format!("an index below {}", self.len()),
            });
        }
        let idx: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
        let idx = Tensor::from_vec(idx, indices.len(), &Device::Cpu)?;
        let x = self.inputs.index_select(&idx, 0)?.to_device(device)?;
        let y = self.outputs.index_select(&idx, 0)?.to_device(device)?;
        Ok((x, y))
    }

    /// The mini-batches of one epoch: a permutation drawn from `(seed, epoch)` when
    /// `shuffle`, else the natural order, cut into chunks of `batch_size` (the last one
    /// may be smaller). The permutation depends only on the seed and the epoch, so a
    /// resumed run sees the same batches as an uninterrupted one.
    pub fn epoch_batches(
        &self,
        batch_size: usize,
        shuffle: bool,
        seed: u64,
        epoch: usize,
    ) -> Vec<Vec<usize>> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        if shuffle {
            let mut rng = no_layers::init::rng_for(seed, &format!("shuffle/epoch{epoch}"));
            order.shuffle(&mut rng);
        }
        order
            .chunks(batch_size.max(1))
            .map(|c| c.to_vec())
            .collect()
    }
}

/// The splits of a dataset directory.
#[derive(Debug, Clone)]
pub struct Splits {
    /// Training samples (normalisers are fitted on these only).
    pub train: TensorDataset,
    /// Validation samples (model selection, early stopping).
    pub val: TensorDataset,
    /// Held-out test samples, if the directory has them.
    pub test: Option<TensorDataset>,
}

/// Which normalisation law to fit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NormalizerKind {
    /// Identity.
    None,
    /// `(x - mean) / std` per channel.
    #[default]
    Gaussian,
    /// `(x - min) / (max - min)` per channel, onto [0, 1].
    MinMax,
}

/// A per-channel affine map `x -> (x - shift) / scale`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizer {
    /// The law it was fitted with.
    pub kind: NormalizerKind,
    /// Per-channel shift (mean or minimum).
    pub shift: Vec<f64>,
    /// Per-channel scale (standard deviation or range); never zero.
    pub scale: Vec<f64>,
}

/// Scales below this are replaced by 1 so that a constant channel stays finite.
const MIN_SCALE: f64 = 1e-12;

impl Normalizer {
    /// The identity on `channels` channels.
    pub fn identity(channels: usize) -> Self {
        Self {
            kind: NormalizerKind::None,
            shift: vec![0.0; channels],
            scale: vec![1.0; channels],
        }
    }

    /// Fits `kind` on `data` `[N, C, ...]`, one shift and scale per channel.
    pub fn fit(kind: NormalizerKind, data: &Tensor) -> Result<Self> {
        let dims = data.dims();
        if dims.len() < 2 || dims[0] == 0 {
            return Err(shape_err("normaliser fit", dims, "[N >= 1, C, ...]"));
        }
        let c = dims[1];
        // [C, N * rest] in f64 for exact-enough statistics.
        let flat = data
            .to_dtype(DType::F64)?
            .transpose(0, 1)?
            .contiguous()?
            .reshape((c, ()))?;
        let (shift, scale) = match kind {
            NormalizerKind::None => return Ok(Self::identity(c)),
            NormalizerKind::Gaussian => {
                let mean = flat.mean_keepdim(1)?;
                let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
                (
                    mean.flatten_all()?.to_vec1::<f64>()?,
                    var.sqrt()?.flatten_all()?.to_vec1::<f64>()?,
                )
            }
            NormalizerKind::MinMax => {
                let min = flat.min_keepdim(1)?.flatten_all()?.to_vec1::<f64>()?;
                let max = flat.max_keepdim(1)?.flatten_all()?.to_vec1::<f64>()?;
                let range = max.iter().zip(&min).map(|(a, b)| a - b).collect();
                (min, range)
            }
        };
        let scale = scale
            .into_iter()
            .map(|s: f64| {
                if s.is_finite() && s > MIN_SCALE {
                    s
                } else {
                    1.0
                }
            })
            .collect();
        Ok(Self { kind, shift, scale })
    }

    /// Number of channels.
    pub fn channels(&self) -> usize {
        self.shift.len()
    }

    fn coeffs(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let dims = x.dims();
        if dims.len() < 2 || dims[1] != self.channels() {
            return Err(shape_err(
                "normaliser input",
                dims,
                &format!("[B, {} channels, ...]", self.channels()),
            ));
        }
        let mut shape = vec![1usize; dims.len()];
        shape[1] = self.channels();
        let f = |v: &[f64]| -> Result<Tensor> {
            Ok(Tensor::from_slice(v, shape.as_slice(), x.device())?.to_dtype(x.dtype())?)
        };
        Ok((f(&self.shift)?, f(&self.scale)?))
    }

    /// `(x - shift) / scale`, differentiable.
    pub fn encode(&self, x: &Tensor) -> Result<Tensor> {
        if self.kind == NormalizerKind::None {
            return Ok(x.clone());
        }
        let (shift, scale) = self.coeffs(x)?;
        Ok(x.broadcast_sub(&shift)?.broadcast_div(&scale)?)
    }

    /// `x * scale + shift`, differentiable.
    pub fn decode(&self, x: &Tensor) -> Result<Tensor> {
        if self.kind == NormalizerKind::None {
            return Ok(x.clone());
        }
        let (shift, scale) = self.coeffs(x)?;
        Ok(x.broadcast_mul(&scale)?.broadcast_add(&shift)?)
    }
}

/// The input and output normalisers of a trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalizers {
    /// Applied to the model input.
    pub input: Normalizer,
    /// Inverted on the model output.
    pub output: Normalizer,
}

impl Normalizers {
    /// Fits both on a training set.
    pub fn fit(kind: NormalizerKind, train: &TensorDataset) -> Result<Self> {
        Ok(Self {
            input: Normalizer::fit(kind, train.inputs())?,
            output: Normalizer::fit(kind, train.outputs())?,
        })
    }

    /// Identities for the given channel counts.
    pub fn identity(c_in: usize, c_out: usize) -> Self {
        Self {
            input: Normalizer::identity(c_in),
            output: Normalizer::identity(c_out),
        }
    }
}

fn read_channel(st: &safetensors::SafeTensors<'_>, path: &Path, key: &str) -> Result<Tensor> {
    use candle_core::safetensors::Load;
    let view = st.tensor(key).map_err(|_| ModelError::File {
        path: path.to_path_buf(),
        reason: format!("no tensor named `{key}` (found: {:?})", st.names()),
    })?;
    if !matches!(
        view.dtype(),
        safetensors::Dtype::F32 | safetensors::Dtype::F64
    ) {
        return Err(file_err(
            path,
            format!(
                "tensor `{key}` has dtype {:?}, expected F32 or F64",
                view.dtype()
            ),
        ));
    }
    let t = view.load(&Device::Cpu)?.to_dtype(DType::F32)?;
    match t.dims() {
        [_, _, _] => Ok(t.unsqueeze(1)?),
        [_, 1, _, _] => Ok(t),
        d => Err(file_err(
            path,
            format!("tensor `{key}` has shape {d:?}, expected [N, nt, nx] or [N, 1, nt, nx]"),
        )),
    }
}

/// The files of one split in a directory.
struct SplitFiles {
    /// `SPLIT.safetensors` exists.
    whole: bool,
    /// `(I, N, file name)` of every `SPLIT.shard-I-of-N.safetensors`.
    shards: Vec<(usize, usize, String)>,
    /// Other `.safetensors` files whose name starts with the split name.
    other: Vec<String>,
}

fn split_files(dir: &Path, split: &str) -> Result<SplitFiles> {
    let io = |source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut found = SplitFiles {
        whole: false,
        shards: Vec::new(),
        other: Vec::new(),
    };
    let mut entries: Vec<String> = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let name = entry.map_err(io)?.file_name();
        if let Some(name) = name.to_str() {
            entries.push(name.to_string());
        }
    }
    entries.sort();
    for name in entries {
        if !name.starts_with(split) || !name.ends_with(".safetensors") {
            continue;
        }
        if name == format!("{split}.safetensors") {
            found.whole = true;
        } else if let Some((i, n)) = parse_shard_name(&name, split) {
            found.shards.push((i, n, name));
        } else {
            found.other.push(name);
        }
    }
    found.shards.sort();
    Ok(found)
}

/// `(I, N)` of `SPLIT.shard-I-of-N.safetensors` written canonically (no leading zeros).
fn parse_shard_name(name: &str, split: &str) -> Option<(usize, usize)> {
    let rest = name
        .strip_prefix(split)?
        .strip_prefix(".shard-")?
        .strip_suffix(".safetensors")?;
    let (i, n) = rest.split_once("-of-")?;
    let (i, n): (usize, usize) = (i.parse().ok()?, n.parse().ok()?);
    (format!("{split}.shard-{i}-of-{n}.safetensors") == name).then_some((i, n))
}

fn names(shards: &[(usize, usize, String)]) -> String {
    shards
        .iter()
        .map(|(_, _, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks that the shard file names form one complete set `0..N` of one `N`.
fn check_shard_set(dir: &Path, split: &str, shards: &[(usize, usize, String)]) -> Result<()> {
    let err = |reason: String| ModelError::File {
        path: dir.to_path_buf(),
        reason,
    };
    let count = shards[0].1;
    if let Some((_, n, name)) = shards.iter().find(|(_, n, _)| *n != count) {
        return Err(err(format!(
            "mixed shard counts: {} is one of {n} but {} is one of {count}; expected all {split} shards of one generation",
            name, shards[0].2
        )));
    }
    for pair in shards.windows(2) {
        if pair[0].0 == pair[1].0 {
            return Err(err(format!("shard {} of {split} appears twice", pair[0].0)));
        }
    }
    if let Some((i, _, name)) = shards.iter().find(|(i, _, _)| *i >= count) {
        return Err(err(format!(
            "{name}: shard index {i} is not below the shard count {count}"
        )));
    }
    let missing: Vec<String> = (0..count)
        .filter(|i| !shards.iter().any(|(j, _, _)| j == i))
        .map(|i| format!("{split}.shard-{i}-of-{count}.safetensors"))
        .collect();
    if !missing.is_empty() {
        return Err(err(format!(
            "missing {}: found only {} (expected shards 0..{count})",
            missing.join(", "),
            names(shards)
        )));
    }
    Ok(())
}

/// Reads the shards in order, checks their metadata agree and concatenates them.
fn load_shards(
    dir: &Path,
    split: &str,
    shards: &[(usize, usize, String)],
) -> Result<TensorDataset> {
    check_shard_set(dir, split, shards)?;
    let mut parts: Vec<TensorDataset> = Vec::with_capacity(shards.len());
    let mut first: Option<(PathBuf, HashMap<String, String>)> = None;
    let mut next_index = 0usize;
    for (i, n, name) in shards {
        let path = dir.join(name);
        let (data, meta) = read_file(&path, &["input"], &["v", "w"])?;
        check_shard_meta(&path, (*i, *n), &meta, first.as_ref(), next_index)?;
        next_index = next_index
            .checked_add(data.len())
            .ok_or_else(|| file_err(&path, "sample count overflows"))?;
        if first.is_none() {
            first = Some((path.clone(), meta));
        }
        parts.push(data);
    }
    if let Some((path, meta)) = &first {
        if let Some(total) = meta.get("n_total") {
            if total.parse::<usize>().ok() != Some(next_index) {
                return Err(file_err(
                    path,
                    format!(
                        "metadata `n_total` is {total} but the {} shards hold {next_index} samples",
                        shards.len()
                    ),
                ));
            }
        }
    }
    concat(&parts, dir)
}

/// One shard's metadata against its file name and the first shard's.
fn check_shard_meta(
    path: &Path,
    (i, n): (usize, usize),
    meta: &HashMap<String, String>,
    first: Option<&(PathBuf, HashMap<String, String>)>,
    expected_first_index: usize,
) -> Result<()> {
    if let Some(s) = meta.get("shard") {
        if *s != format!("{i}/{n}") {
            return Err(file_err(
                path,
                format!("metadata `shard` is {s:?} but the file name says {i}/{n}"),
            ));
        }
    }
    let first_index = meta
        .get("first_index")
        .ok_or_else(|| {
            file_err(
                path,
                "shard without `first_index` metadata: expected a file written by generate_dataset --shard",
            )
        })?
        .parse::<usize>()
        .map_err(|e| file_err(path, format!("metadata `first_index`: {e}")))?;
    if first_index != expected_first_index {
        return Err(file_err(
            path,
            format!(
                "metadata `first_index` is {first_index}, expected {expected_first_index} (the samples before it, from the shards before it): the shards do not form one contiguous dataset"
            ),
        ));
    }
    if let Some((first_path, first_meta)) = first {
        for key in ["protocol", "n_total"] {
            if meta.get(key) != first_meta.get(key) {
                return Err(file_err(
                    path,
                    format!(
                        "metadata `{key}` differs from {}'s: the shards come from different generations",
                        first_path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Concatenates datasets along the samples, checking the memory need first.
fn concat(parts: &[TensorDataset], dir: &Path) -> Result<TensorDataset> {
    let per_sample = |t: &Tensor| t.dims()[1..].iter().product::<usize>();
    // The concatenation copies every shard once more: check its size is addressable.
    parts
        .iter()
        .try_fold(0usize, |bytes, p| {
            (per_sample(p.inputs()) + per_sample(p.outputs()))
                .checked_mul(p.len())?
                .checked_mul(std::mem::size_of::<f32>())?
                .checked_add(bytes)
        })
        .ok_or_else(|| {
            file_err(
                dir,
                "the shards together need more memory than can be addressed",
            )
        })?;
    let cat = |f: fn(&TensorDataset) -> &Tensor| -> Result<Tensor> {
        let ts: Vec<&Tensor> = parts.iter().map(f).collect();
        Tensor::cat(&ts, 0).map_err(|e| {
            file_err(
                dir,
                format!("shards with different channel or grid sizes: {e}"),
            )
        })
    };
    TensorDataset::new(cat(TensorDataset::inputs)?, cat(TensorDataset::outputs)?)
}

fn shape_err(context: &str, got: &[usize], expected: &str) -> ModelError {
    ModelError::Shape {
        context: context.to_string(),
        got: got.to_vec(),
        expected: expected.to_string(),
    }
}

fn file_err(path: &Path, reason: impl std::fmt::Display) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Result<TensorDataset> {
        let x =
            Tensor::arange(0f32, (n * 2 * 3 * 4) as f32, &Device::Cpu)?.reshape((n, 2, 3, 4))?;
        let y = (x.narrow(1, 0, 1)? * 3.0)?;
        TensorDataset::new(x, y)
    }

    #[test]
    fn gaussian_normaliser_gives_zero_mean_unit_std_and_inverts() -> Result<()> {
        let ds = toy(5)?;
        let n = Normalizer::fit(NormalizerKind::Gaussian, ds.inputs())?;
        let e = n.encode(ds.inputs())?;
        let per_c = e.transpose(0, 1)?.contiguous()?.reshape((2, ()))?;
        let mean = per_c.mean(1)?.to_vec1::<f32>()?;
        let std = per_c.sqr()?.mean(1)?.sqrt()?.to_vec1::<f32>()?;
        for c in 0..2 {
            assert!(mean[c].abs() < 1e-5, "mean {mean:?}");
            assert!((std[c] - 1.0).abs() < 1e-5, "std {std:?}");
        }
        let back = n.decode(&e)?;
        let err = (back - ds.inputs())?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-3, "round trip error {err}");
        Ok(())
    }

    #[test]
    fn min_max_maps_training_range_onto_unit_interval() -> Result<()> {
        let ds = toy(4)?;
        let n = Normalizer::fit(NormalizerKind::MinMax, ds.outputs())?;
        let e = n.encode(ds.outputs())?;
        assert_eq!(e.min_all()?.to_scalar::<f32>()?, 0.0);
        assert!((e.max_all()?.to_scalar::<f32>()? - 1.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn constant_channel_does_not_divide_by_zero() -> Result<()> {
        let x = Tensor::ones((3, 1, 2, 2), DType::F32, &Device::Cpu)?;
        let n = Normalizer::fit(NormalizerKind::Gaussian, &x)?;
        assert_eq!(n.scale, vec![1.0]);
        assert!(n.encode(&x)?.abs()?.max_all()?.to_scalar::<f32>()? < 1e-7);
        Ok(())
    }

    #[test]
    fn batches_are_seeded_permutations_covering_every_sample() {
        let ds = toy(10).unwrap();
        let a = ds.epoch_batches(3, true, 7, 0);
        assert_eq!(a, ds.epoch_batches(3, true, 7, 0));
        assert_ne!(a, ds.epoch_batches(3, true, 7, 1));
        assert_eq!(a.iter().map(Vec::len).collect::<Vec<_>>(), vec![3, 3, 3, 1]);
        let mut all: Vec<usize> = a.concat();
        all.sort();
        assert_eq!(all, (0..10).collect::<Vec<_>>());
        assert_eq!(ds.epoch_batches(4, false, 7, 0)[0], vec![0, 1, 2, 3]);
    }

    #[test]
    fn mismatched_shapes_are_rejected() -> Result<()> {
        let x = Tensor::zeros((2, 1, 3, 4), DType::F32, &Device::Cpu)?;
        let y = Tensor::zeros((2, 2, 3, 5), DType::F32, &Device::Cpu)?;
        assert!(matches!(
            TensorDataset::new(x, y),
            Err(ModelError::Shape { .. })
        ));
        Ok(())
    }

    #[test]
    fn reads_fhn_layout_and_reports_missing_tensor() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| file_err(Path::new("tmp"), e))?;
        let path = dir.path().join("train.safetensors");
        let t = |v: f32| Tensor::full(v, (3, 4, 5), &Device::Cpu);
        let (i, v, w) = (t(1.0)?, t(2.0)?, t(3.0)?);
        candle_core::safetensors::save(
            &[
                ("input".to_string(), i),
                ("v".to_string(), v),
                ("w".to_string(), w.clone()),
            ]
            .into_iter()
            .collect(),
            &path,
        )?;
        let ds = TensorDataset::from_fhn_file(&path)?;
        assert_eq!(ds.inputs().dims(), &[3, 1, 4, 5]);
        assert_eq!(ds.outputs().dims(), &[3, 2, 4, 5]);
        assert_eq!(
            ds.outputs()
                .narrow(1, 1, 1)?
                .max_all()?
                .to_scalar::<f32>()?,
            3.0
        );
        let bad = dir.path().join("bad.safetensors");
        candle_core::safetensors::save(&[("w".to_string(), w)].into_iter().collect(), &bad)?;
        let err = TensorDataset::from_fhn_file(&bad).unwrap_err().to_string();
        assert!(err.contains("input"), "{err}");
        Ok(())
    }
}
