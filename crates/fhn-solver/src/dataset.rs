//! Parallel, sharded dataset generation and its files (safetensors, with `.npy` export).
//!
//! A file holds `input`, `v`, `w` as f32 `[N, nt, nx]` (axis order (t, x)), the per-sample
//! stimulus parameters `x0`, `t0`, `amplitude` as f32 `[N]`, and in its metadata the protocol
//! JSON, the split, the index of its first sample, the shard (`i/n`, `0/1` for a whole
//! split), the split's total sample count `n_total`, a format tag, and under `tensor_crc32`
//! the CRC-32 of every tensor's data bytes (checked by [`Dataset::load`]). Shards of one
//! split are contiguous index ranges, so their files concatenate ([`Dataset::concat`]).
//! Every file is written atomically (a temporary sibling renamed into place).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use indicatif::{ProgressBar, ProgressStyle};
use ndarray::{Array1, Array3};
use rayon::prelude::*;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::error::{Result, SolverError};
use crate::protocol::{Protocol, Split};
use crate::simulate::Solver1d;

/// The metadata value of `format` in our files.
pub const FORMAT_TAG: &str = "fhn-dataset/1";

/// The metadata key holding the CRC-32 of every tensor's data (the same format as the
/// checkpoints of `no-models`): a JSON object, keys sorted, tensor name → 8 lowercase hex
/// digits of the CRC-32 (IEEE) of its raw little-endian bytes.
pub const CHECKSUM_KEY: &str = "tensor_crc32";

/// One slice `index` of `count` of a split (`--shard index/count`, 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// Which slice, `0 ≤ index < count`.
    pub index: usize,
    /// How many slices.
    pub count: usize,
}

impl Shard {
    /// Checks `index < count`.
    pub fn new(index: usize, count: usize) -> Result<Self> {
        if count == 0 || index >= count {
            return Err(SolverError::invalid(
                "shard",
                format!("{index}/{count}"),
                "i/n with 0 <= i < n",
            ));
        }
        Ok(Self { index, count })
    }

    /// The whole split, as one shard (`0/1`).
    pub const WHOLE: Shard = Shard { index: 0, count: 1 };

    /// The sample indices of this shard among `n`: `[index·n/count, (index+1)·n/count)`
    /// (computed in 128 bits, so no product wraps).
    pub fn range(&self, n: usize) -> std::ops::Range<usize> {
        let bound = |i: usize| (i as u128 * n as u128 / self.count as u128) as usize;
        bound(self.index)..bound(self.index + 1)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Shard {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || SolverError::invalid("shard", s, "i/n with 0 <= i < n, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        Self::new(
            i.trim().parse().map_err(|_| bad())?,
            n.trim().parse().map_err(|_| bad())?,
        )
    }
}

/// Samples of one split (or a shard of it), as stored on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// Applied current on the output grid, `[N, nt, nx]`.
    pub input: Array3<f32>,
    /// Membrane potential, `[N, nt, nx]`.
    pub v: Array3<f32>,
    /// Recovery variable, `[N, nt, nx]`.
    pub w: Array3<f32>,
    /// Pulse centres, `[N]`.
    pub x0: Vec<f32>,
    /// Pulse onsets, `[N]`.
    pub t0: Vec<f32>,
    /// Pulse amplitudes, `[N]`.
    pub amplitude: Vec<f32>,
    /// The protocol the samples were drawn from.
    pub protocol: Protocol,
    /// Which split.
    pub split: Split,
    /// Index (within the split) of the first sample.
    pub first_index: usize,
    /// Which shard of the split this is ([`Shard::WHOLE`] for the whole split).
    pub shard: Shard,
    /// The split's total number of samples (over all shards).
    pub n_total: usize,
}

/// One generated sample: input, v, w flattened [nt·nx] and (x0, t0, amplitude).
type SampleData = (Vec<f32>, Vec<f32>, Vec<f32>, [f32; 3]);

/// Generates `split` of `protocol` (or only `shard` of it) in parallel over samples.
/// Bit-identical for a protocol whatever the number of threads.
pub fn generate(
    protocol: &Protocol,
    split: Split,
    shard: Option<Shard>,
    progress: bool,
) -> Result<Dataset> {
    protocol.validate()?;
    let n_total = protocol.split(split).n_samples;
    let shard = shard.unwrap_or(Shard::WHOLE);
    if shard.count > n_total {
        // Some shards would be empty files; a job array that large is a mistake.
        return Err(SolverError::invalid(
            "shard",
            format!("{}/{}", shard.index, shard.count),
            &format!(
                "at most {n_total} shards: the {} split has {n_total} samples",
                split.name()
            ),
        ));
    }
    let range = shard.range(n_total);
    let out = protocol.output;
    // Generation holds each sample's vectors and then the stacked arrays: twice the data.
    crate::limits::check_memory(
        || {
            format!(
                "the {} split's {} samples of {} × {} (input, v and w in f32, held twice while \
                 stacking)",
                split.name(),
                range.len(),
                out.nt,
                out.nx
            )
        },
        2.0 * 3.0 * 4.0 * range.len() as f64 * out.nt as f64 * out.nx as f64,
    )?;
    let solver = Solver1d::new(&protocol.solver_config(), &out)?;
    let bar = progress_bar(progress, range.len() as u64, split);
    let plane = out.nt * out.nx;
    let samples: Vec<SampleData> = range
        .clone()
        .into_par_iter()
        .map(|i| {
            let sp = protocol.sample_params(split, i);
            let stim = protocol.stimulus(&sp);
            let (mut v, mut w) = (Vec::with_capacity(plane), Vec::with_capacity(plane));
            solver.solve_into(&stim, |_, vs, ws| {
                v.extend(vs.iter().map(|&x| x as f32));
                w.extend(ws.iter().map(|&x| x as f32));
            })?;
            let input = protocol
                .input_on(&stim, &out)
                .iter()
                .map(|&x| x as f32)
                .collect();
            bar.inc(1);
            Ok((
                input,
                v,
                w,
                [sp.x0 as f32, sp.t0 as f32, sp.amplitude as f32],
            ))
        })
        .collect::<Result<_>>()?;
    bar.finish_and_clear();
    let n = samples.len();
    let mut flat = [
        Vec::with_capacity(n * plane),
        Vec::with_capacity(n * plane),
        Vec::with_capacity(n * plane),
    ];
    let (mut x0, mut t0, mut amplitude) = (Vec::new(), Vec::new(), Vec::new());
    for (i, v, w, p) in samples {
        flat[0].extend(i);
        flat[1].extend(v);
        flat[2].extend(w);
        x0.push(p[0]);
        t0.push(p[1]);
        amplitude.push(p[2]);
    }
    let [input, v, w] = flat.map(|f| Array3::from_shape_vec((n, out.nt, out.nx), f));
    let shape_err =
        |e: ndarray::ShapeError| SolverError::invalid("dataset", e, "consistent sample shapes");
    Ok(Dataset {
        input: input.map_err(shape_err)?,
        v: v.map_err(shape_err)?,
        w: w.map_err(shape_err)?,
        x0,
        t0,
        amplitude,
        protocol: protocol.clone(),
        split,
        first_index: range.start,
        shard,
        n_total,
    })
}

fn progress_bar(show: bool, n: u64, split: Split) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(n);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:>5} [{bar:40}] {pos}/{len} samples ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(split.name());
    bar
}

fn f32_bytes(x: &[f32]) -> Vec<u8> {
    x.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The CRC-32 of `bytes` as 8 lowercase hex digits.
fn crc32_hex(bytes: &[u8]) -> String {
    format!("{:08x}", crc32fast::hash(bytes))
}

/// Checks every tensor of `st` against the checksums in `stored` (the metadata value under
/// [`CHECKSUM_KEY`]; `None` for files written before checksums, which load unverified).
fn verify_checksums(
    st: &SafeTensors<'_>,
    stored: Option<&String>,
) -> std::result::Result<(), String> {
    let Some(stored) = stored else {
        return Ok(());
    };
    let expected: BTreeMap<String, String> = serde_json::from_str(stored).map_err(|e| {
        format!("metadata `{CHECKSUM_KEY}` is not a JSON object of tensor name -> CRC-32: {e}")
    })?;
    for name in st.names() {
        if !expected.contains_key(name) {
            return Err(format!(
                "tensor `{name}` has no checksum in `{CHECKSUM_KEY}`"
            ));
        }
    }
    for (name, want) in &expected {
        let view = st
            .tensor(name)
            .map_err(|_| format!("`{CHECKSUM_KEY}` lists tensor `{name}`, which the file lacks"))?;
        let got = crc32_hex(view.data());
        if &got != want {
            return Err(format!(
                "tensor `{name}` fails its checksum (CRC-32 {got}, expected {want}): the file is corrupt"
            ));
        }
    }
    Ok(())
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.x0.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.x0.is_empty()
    }

    /// Writes a safetensors file, atomically (a temporary sibling renamed over `path`, so a
    /// failed write leaves the previous file), with the CRC-32 of every tensor in its metadata.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let n = self.len();
        let (nt, nx) = (self.protocol.output.nt, self.protocol.output.nx);
        for (name, a) in [("t0", &self.t0), ("amplitude", &self.amplitude)] {
            if a.len() != n {
                return Err(SolverError::Shape {
                    name: name.into(),
                    expected: vec![n],
                    got: vec![a.len()],
                });
            }
        }
        for (name, a) in [("input", &self.input), ("v", &self.v), ("w", &self.w)] {
            if a.dim() != (n, nt, nx) {
                let got = a.shape().to_vec();
                return Err(SolverError::Shape {
                    name: name.into(),
                    expected: vec![n, nt, nx],
                    got,
                });
            }
        }
        let fmt_err = |e: safetensors::SafeTensorError| SolverError::Format {
            path: path.into(),
            reason: e.to_string(),
        };
        let fields: Vec<(&str, Vec<u8>, Vec<usize>)> = vec![
            (
                "input",
                f32_bytes(&self.input.iter().copied().collect::<Vec<_>>()),
                vec![n, nt, nx],
            ),
            (
                "v",
                f32_bytes(&self.v.iter().copied().collect::<Vec<_>>()),
                vec![n, nt, nx],
            ),
            (
                "w",
                f32_bytes(&self.w.iter().copied().collect::<Vec<_>>()),
                vec![n, nt, nx],
            ),
            ("x0", f32_bytes(&self.x0), vec![n]),
            ("t0", f32_bytes(&self.t0), vec![n]),
            ("amplitude", f32_bytes(&self.amplitude), vec![n]),
        ];
        let mut views = Vec::new();
        for (name, bytes, shape) in &fields {
            views.push((
                *name,
                TensorView::new(Dtype::F32, shape.clone(), bytes).map_err(fmt_err)?,
            ));
        }
        let checksums: BTreeMap<&str, String> = fields
            .iter()
            .map(|(name, bytes, _)| (*name, crc32_hex(bytes)))
            .collect();
        let checksums = serde_json::to_string(&checksums).map_err(|e| SolverError::Format {
            path: path.into(),
            reason: format!("checksums: {e}"),
        })?;
        let meta = HashMap::from([
            ("format".to_string(), FORMAT_TAG.to_string()),
            ("protocol".to_string(), self.protocol.to_json()),
            ("split".to_string(), self.split.name().to_string()),
            ("first_index".to_string(), self.first_index.to_string()),
            ("shard".to_string(), self.shard.to_string()),
            ("n_total".to_string(), self.n_total.to_string()),
            (CHECKSUM_KEY.to_string(), checksums),
        ]);
        crate::atomic::write_file_via_path(path, |temp| {
            let io_err = |source| SolverError::Io {
                path: path.into(),
                source,
            };
            safetensors::serialize_to_file(views, Some(meta), temp).map_err(|e| match e {
                safetensors::SafeTensorError::IoError(source) => io_err(source),
                other => fmt_err(other),
            })?;
            canonicalise_header(temp).map_err(io_err)
        })
    }

    /// Reads a file written by [`Dataset::save`], checking its metadata, dtypes and shapes.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| SolverError::Io {
            path: path.into(),
            source,
        })?;
        let bad = |reason: String| SolverError::Format {
            path: path.into(),
            reason,
        };
        let (_, header) = SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file or truncated: {e}")))?;
        let meta = header.metadata().clone().unwrap_or_default();
        match meta.get("format") {
            Some(tag) if tag == FORMAT_TAG => {}
            other => {
                return Err(bad(format!(
                    "metadata `format` is {other:?}, expected {FORMAT_TAG:?}"
                )))
            }
        }
        let field = |k: &str| {
            meta.get(k)
                .ok_or_else(|| bad(format!("metadata lacks `{k}`")))
        };
        let protocol: Protocol = serde_json::from_str(field("protocol")?)
            .map_err(|e| bad(format!("metadata `protocol` is not a protocol: {e}")))?;
        let split = field("split")?.parse::<Split>()?;
        let first_index = field("first_index")?
            .parse::<usize>()
            .map_err(|e| bad(format!("first_index: {e}")))?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| bad(format!("truncated or corrupt tensors: {e}")))?;
        verify_checksums(&st, meta.get(CHECKSUM_KEY)).map_err(bad)?;
        let read = |name: &str| -> Result<(Vec<usize>, Vec<f32>)> {
            let t = st
                .tensor(name)
                .map_err(|_| bad(format!("missing tensor `{name}`")))?;
            if t.dtype() != Dtype::F32 {
                return Err(bad(format!(
                    "tensor `{name}` is {:?}, expected F32",
                    t.dtype()
                )));
            }
            let data = t
                .data()
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Ok((t.shape().to_vec(), data))
        };
        let (xs, x0) = read("x0")?;
        let n = x0.len();
        let expect = |name: &str, got: &[usize], want: Vec<usize>| {
            if got == want.as_slice() {
                Ok(())
            } else {
                Err(SolverError::Shape {
                    name: name.into(),
                    expected: want,
                    got: got.to_vec(),
                })
            }
        };
        expect("x0", &xs, vec![n])?;
        let mut scalars = Vec::new();
        for name in ["t0", "amplitude"] {
            let (s, d) = read(name)?;
            expect(name, &s, vec![n])?;
            scalars.push(d);
        }
        let (nt, nx) = (protocol.output.nt, protocol.output.nx);
        let mut fields = Vec::new();
        for name in ["input", "v", "w"] {
            let (s, d) = read(name)?;
            expect(name, &s, vec![n, nt, nx])?;
            if let Some(i) = d.iter().position(|x| !x.is_finite()) {
                let per_sample = (nt * nx).max(1);
                let (sample, r) = (i / per_sample, i % per_sample);
                return Err(bad(format!(
                    "tensor `{name}` holds {} at sample {sample}, index [{}, {}] (t, x); every value must be finite",
                    d[i],
                    r / nx.max(1),
                    r % nx.max(1)
                )));
            }
            fields.push(Array3::from_shape_vec((n, nt, nx), d).map_err(|e| bad(e.to_string()))?);
        }
        let w = fields.pop().unwrap_or_default();
        let v = fields.pop().unwrap_or_default();
        let input = fields.pop().unwrap_or_default();
        let amplitude = scalars.pop().unwrap_or_default();
        let t0 = scalars.pop().unwrap_or_default();
        // Files written before these keys existed: a whole split.
        let shard = match meta.get("shard") {
            Some(text) => text.parse::<Shard>()?,
            None => Shard::WHOLE,
        };
        let n_total = match meta.get("n_total") {
            Some(text) => text
                .parse::<usize>()
                .map_err(|e| bad(format!("n_total: {e}")))?,
            None => first_index + n,
        };
        if first_index.checked_add(n).is_none_or(|end| end > n_total) {
            return Err(bad(format!(
                "samples {first_index}..{first_index}+{n} lie outside the split's n_total = {n_total}"
            )));
        }
        Ok(Self {
            input,
            v,
            w,
            x0,
            t0,
            amplitude,
            protocol,
            split,
            first_index,
            shard,
            n_total,
        })
    }

    /// Writes `input.npy`, `v.npy`, `w.npy` (f32 `[N, nt, nx]`), `x0.npy`, `t0.npy`,
    /// `amplitude.npy` (f32 `[N]`) and `protocol.json` into `dir` (created if needed), each
    /// file atomically and through a buffer.
    pub fn save_npy(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|source| SolverError::Io {
            path: dir.into(),
            source,
        })?;
        for (name, a) in [("input", &self.input), ("v", &self.v), ("w", &self.w)] {
            write_npy_atomic(&dir.join(format!("{name}.npy")), a)?;
        }
        for (name, a) in [
            ("x0", &self.x0),
            ("t0", &self.t0),
            ("amplitude", &self.amplitude),
        ] {
            write_npy_atomic(&dir.join(format!("{name}.npy")), &Array1::from(a.clone()))?;
        }
        self.protocol.to_json_file(dir.join("protocol.json"))
    }

    /// Joins shards of one split, in order; an error if protocols or splits differ or the
    /// index ranges are not contiguous.
    pub fn concat(parts: &[Dataset]) -> Result<Self> {
        let first = parts
            .first()
            .ok_or_else(|| SolverError::invalid("parts", 0, "at least one dataset"))?;
        let mut next = first.first_index;
        for p in parts {
            if p.protocol != first.protocol
                || p.split != first.split
                || p.first_index != next
                || p.n_total != first.n_total
            {
                return Err(SolverError::invalid(
                    "parts",
                    format!("{} samples from {}", p.len(), p.first_index),
                    &format!(
                        "contiguous shards of one split and protocol, next starting at {next}"
                    ),
                ));
            }
            next += p.len();
        }
        let cat = |f: fn(&Dataset) -> &Array3<f32>| -> Result<Array3<f32>> {
            let views: Vec<_> = parts.iter().map(|p| f(p).view()).collect();
            ndarray::concatenate(ndarray::Axis(0), &views)
                .map_err(|e| SolverError::invalid("parts", e, "equal shapes"))
        };
        let flat = |f: fn(&Dataset) -> &Vec<f32>| {
            parts.iter().flat_map(|p| f(p).iter().copied()).collect()
        };
        Ok(Self {
            input: cat(|d| &d.input)?,
            v: cat(|d| &d.v)?,
            w: cat(|d| &d.w)?,
            x0: flat(|d| &d.x0),
            t0: flat(|d| &d.t0),
            amplitude: flat(|d| &d.amplitude),
            protocol: first.protocol.clone(),
            split: first.split,
            first_index: first.first_index,
            shard: if first.first_index == 0 && next == first.n_total {
                Shard::WHOLE
            } else {
                first.shard
            },
            n_total: first.n_total,
        })
    }
}

/// Writes an array as `.npy` atomically, through a buffered writer.
pub fn write_npy_atomic<A, D>(path: &Path, array: &ndarray::ArrayBase<A, D>) -> Result<()>
where
    A: ndarray::Data,
    A::Elem: ndarray_npy::WritableElement,
    D: ndarray::Dimension,
{
    use ndarray_npy::WriteNpyExt;
    crate::atomic::write_file(path, |w| array.write_npy(w).map_err(std::io::Error::other))
}

/// How [`generate_into_dir`] writes.
#[derive(Debug, Clone, Copy, Default)]
pub struct DirOptions {
    /// Only this slice of each split (files `SPLIT.shard-i-of-n.safetensors`).
    pub shard: Option<Shard>,
    /// Also write `.npy` folders `OUT/<stem>/`.
    pub npy: bool,
    /// Show progress bars.
    pub progress: bool,
    /// For a whole run into a directory that already holds files: replace it (once the new
    /// dataset is complete) instead of refusing.
    pub replace_existing: bool,
}

/// One split written by [`generate_into_dir`].
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenSplit {
    /// The split.
    pub split: Split,
    /// Samples written.
    pub samples: usize,
    /// The safetensors file, at its final place.
    pub path: PathBuf,
}

/// Generates `splits` of `protocol` into the directory `out`: `protocol.json` and one
/// safetensors file per split (and `.npy` folders on request).
///
/// A whole run (all splits, no shard) builds the dataset in a staging directory next to
/// `out` and renames it into place only when every file is written: `out` ends up complete
/// or untouched. `out` must not exist or be empty, unless [`DirOptions::replace_existing`].
/// A partial run (a shard or a subset of the splits, e.g. one job of an array) writes into
/// the shared `out`: each file atomically, `protocol.json` only if absent, and if present it
/// must hold this protocol.
pub fn generate_into_dir(
    protocol: &Protocol,
    splits: &[Split],
    out: &Path,
    options: DirOptions,
) -> Result<Vec<WrittenSplit>> {
    protocol.validate()?;
    let whole = options.shard.is_none() && Split::ALL.iter().all(|s| splits.contains(s));
    if whole {
        let written = crate::atomic::write_dir(out, options.replace_existing, |staging| {
            protocol.to_json_file(staging.join("protocol.json"))?;
            write_splits(protocol, splits, staging, options)
        })?;
        // Report the final paths, not the staging ones.
        let final_path = |p: &Path| out.join(p.file_name().unwrap_or_default());
        return Ok(written
            .into_iter()
            .map(|w| WrittenSplit {
                path: final_path(&w.path),
                ..w
            })
            .collect());
    }
    std::fs::create_dir_all(out).map_err(|source| SolverError::Io {
        path: out.into(),
        source,
    })?;
    protocol.write_or_check_json_file(out.join("protocol.json"))?;
    write_splits(protocol, splits, out, options)
}

/// Generates and saves each split into `dir`.
fn write_splits(
    protocol: &Protocol,
    splits: &[Split],
    dir: &Path,
    options: DirOptions,
) -> Result<Vec<WrittenSplit>> {
    let mut written = Vec::new();
    for &split in splits {
        let data = generate(protocol, split, options.shard, options.progress)?;
        let stem = match options.shard {
            Some(s) => format!("{}.shard-{}-of-{}", split.name(), s.index, s.count),
            None => split.name().to_string(),
        };
        let path = dir.join(format!("{stem}.safetensors"));
        data.save(&path)?;
        if options.npy {
            data.save_npy(dir.join(&stem))?;
        }
        written.push(WrittenSplit {
            split,
            samples: data.len(),
            path,
        });
    }
    Ok(written)
}

/// Rewrites the JSON header of a safetensors file with every object's keys sorted, in
/// place and at the same length, so that a file's bytes depend only on its content:
/// safetensors writes the metadata from a `HashMap`, in an order that changes from run to
/// run. A header that would not keep its length (it always does: same strings, same compact
/// format) is left as it was.
fn canonicalise_header(path: &Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)?;
    let len = usize::try_from(u64::from_le_bytes(len)).map_err(std::io::Error::other)?;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header)?;
    let value: serde_json::Value =
        serde_json::from_slice(&header).map_err(std::io::Error::other)?;
    let mut sorted = serde_json::to_vec(&sort_keys(value)).map_err(std::io::Error::other)?;
    if sorted.len() > len {
        return Ok(());
    }
    sorted.resize(len, b' ');
    if sorted != header {
        file.seek(SeekFrom::Start(8))?;
        file.write_all(&sorted)?;
    }
    Ok(())
}

/// The value with every object's keys in sorted order (whatever map serde_json uses).
fn sort_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}
