//! Property tests (issue 20): valid checkpoints, `.npy` inputs, dataset files and JSON
//! configurations (model, training, protocol, study) are mutated at random (bytes flipped,
//! inserted, deleted, truncated; header numbers replaced by extreme values; JSON values
//! replaced by extreme numbers, NaN strings or wrong types; keys added or removed) and fed to
//! the loaders. The property: an error or a valid result, never a panic, an abort or a hang.
//!
//! Seeded (a ChaCha8 stream per property) and bounded (`CASES` per property), so CI is fast
//! and a failure reproduces: its message names the case and the mutation. (A hand-rolled
//! generator rather than `proptest`: proptest's `rand` 0.10 changes the features of shared
//! dependencies, which rebuilds candle for every test build.) Loaders that cannot allocate beyond the file's size run in-process
//! under `catch_unwind`; those that build models or read `.npy` headers run as the `infer`
//! example (an abort there must not take the test binary down).

#[path = "bad_inputs/files.rs"]
#[allow(dead_code)]
mod files;
#[path = "bad_inputs/fixtures.rs"]
#[allow(dead_code)]
mod fixtures;
#[path = "bad_inputs/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use candle_core::{DType, Device};
use no_layers::init::SeededVarMap;
use no_models::{build, ModelConfig};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};

/// Cases per in-process property.
const CASES: u32 = 64;
/// Cases per property that runs a program.
const CLI_CASES: u32 = 24;

/// Valid inputs made once: a tiny FNO checkpoint, a tiny dataset file, an input array.
struct Valid {
    _dir: tempfile::TempDir,
    checkpoint: PathBuf,
    dataset: PathBuf,
    npy: Vec<u8>,
}

fn valid() -> &'static Valid {
    static VALID: OnceLock<Valid> = OnceLock::new();
    VALID.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("properties-")
            .tempdir()
            .expect("temp dir");
        let cfg = ModelConfig::from_json(&fixtures::tiny_fno()).expect("tiny fno");
        let vars = SeededVarMap::new(0);
        let model =
            build(&cfg, vars.var_builder(DType::F32, &Device::Cpu)).expect("tiny fno builds");
        let checkpoint = dir.path().join("model.safetensors");
        no_models::checkpoint::save_model(&checkpoint, model.as_ref(), vars.varmap())
            .expect("saving");
        let protocol: fhn_solver::Protocol =
            serde_json::from_value(fixtures::tiny_protocol()).expect("protocol");
        let data = fhn_solver::generate(&protocol, fhn_solver::Split::Validation, None, false)
            .expect("tiny dataset");
        let dataset = dir.path().join("val.safetensors");
        data.save(&dataset).expect("saving the dataset");
        let g = fixtures::GRID;
        let values: Vec<f32> = (0..2 * g * g).map(files::smooth).collect();
        let npy = files::npy_bytes(
            "<f4",
            &files::shape_tuple(&[2, 1, g, g]),
            &files::f32_le(&values),
        );
        Valid {
            _dir: dir,
            checkpoint,
            dataset,
            npy,
        }
    })
}

/// Runs `check` on `cases` mutations drawn by `draw` from a ChaCha8 stream seeded by `seed`;
/// panics (failing the test) with the first failing case and its mutation.
fn property<M: std::fmt::Debug>(
    name: &str,
    cases: u32,
    seed: u64,
    draw: impl Fn(&mut ChaCha8Rng) -> M,
    mut check: impl FnMut(&M) -> Result<(), String>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for case in 0..cases {
        let m = draw(&mut rng);
        if let Err(e) = check(&m) {
            panic!("{name}: case {case} (seed {seed}) failed: {e}\nmutation: {m:?}");
        }
    }
}

/// Numbers a header or config should never be trusted with.
const EXTREME_INTS: [u64; 9] = [0, 1, 2, 255, 1 << 31, 1 << 32, 1 << 53, 1 << 62, u64::MAX];

/// One random edit of a byte string.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

/// A random position or choice (reduced modulo the length where it is used).
fn idx(rng: &mut ChaCha8Rng) -> usize {
    rng.random::<u32>() as usize
}

fn byte_edits(rng: &mut ChaCha8Rng, max: usize) -> Vec<ByteEdit> {
    let n = rng.random_range(1..=max);
    (0..n)
        .map(|_| match rng.random_range(0..4) {
            0 => ByteEdit::Flip(idx(rng), rng.random_range(0..8)),
            1 => ByteEdit::Insert(idx(rng), rng.random()),
            2 => ByteEdit::Delete(idx(rng)),
            _ => ByteEdit::Truncate(idx(rng)),
        })
        .collect()
}

fn apply_bytes(bytes: &mut Vec<u8>, edits: &[ByteEdit]) {
    for e in edits {
        if bytes.is_empty() {
            return;
        }
        let n = bytes.len();
        match *e {
            ByteEdit::Flip(i, bit) => bytes[i % n] ^= 1 << bit,
            ByteEdit::Insert(i, b) => bytes.insert(i % (n + 1), b),
            ByteEdit::Delete(i) => {
                bytes.remove(i % n);
            }
            ByteEdit::Truncate(i) => bytes.truncate(i % n),
        }
    }
}

/// One random edit of a JSON document: a leaf replaced, a key removed, a key added.
#[derive(Debug, Clone)]
enum JsonEdit {
    Replace(usize, usize),
    Remove(usize),
    Add(usize),
}

fn json_edits(rng: &mut ChaCha8Rng) -> Vec<JsonEdit> {
    let n = rng.random_range(1..=3);
    (0..n)
        .map(|_| match rng.random_range(0..6) {
            0 => JsonEdit::Remove(idx(rng)),
            1 => JsonEdit::Add(idx(rng)),
            _ => JsonEdit::Replace(idx(rng), idx(rng)),
        })
        .collect()
}

fn extreme_values() -> Vec<Value> {
    let mut v: Vec<Value> = EXTREME_INTS.iter().map(|&n| json!(n)).collect();
    v.extend([
        json!(-1),
        json!(i64::MIN),
        json!(1e308),
        json!(-1e308),
        json!(1e-300),
        json!(0.5),
        json!(-0.5),
        json!("NaN"),
        json!("inf"),
        json!("-inf"),
        json!(null),
        json!(true),
        json!([]),
        json!({}),
        json!("x"),
        json!([1u64 << 40, 1u64 << 40]),
    ]);
    v
}

/// Paths (as JSON pointers) of every node below the root.
fn pointers(v: &Value, prefix: String, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                let p = format!("{prefix}/{}", k.replace('~', "~0").replace('/', "~1"));
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        Value::Array(a) => {
            for (i, child) in a.iter().enumerate() {
                let p = format!("{prefix}/{i}");
                out.push(p.clone());
                pointers(child, p, out);
            }
        }
        _ => {}
    }
}

fn apply_json(doc: &mut Value, edits: &[JsonEdit]) {
    let extremes = extreme_values();
    for e in edits {
        let mut ptrs = Vec::new();
        pointers(doc, String::new(), &mut ptrs);
        if ptrs.is_empty() {
            return;
        }
        match *e {
            JsonEdit::Replace(i, j) => {
                if let Some(node) = doc.pointer_mut(&ptrs[i % ptrs.len()]) {
                    *node = extremes[j % extremes.len()].clone();
                }
            }
            JsonEdit::Remove(i) => {
                let p = &ptrs[i % ptrs.len()];
                let (parent, key) = p.rsplit_once('/').expect("a pointer has a slash");
                if let Some(Value::Object(m)) = doc.pointer_mut(parent) {
                    m.remove(&key.replace("~1", "/").replace("~0", "~"));
                }
            }
            JsonEdit::Add(i) => {
                let objects: Vec<&String> = ptrs
                    .iter()
                    .filter(|p| doc.pointer(p).is_some_and(Value::is_object))
                    .collect();
                let target = if objects.is_empty() {
                    String::new()
                } else {
                    objects[i % objects.len()].clone()
                };
                if let Some(Value::Object(m)) = doc.pointer_mut(&target) {
                    m.insert("bogus_field".into(), json!(1));
                }
            }
        }
    }
}

/// Runs `f`, turning a panic into the property's failure.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        format!("{what} panicked: {msg}")
    })
}

/// A safetensors file with one header number (a shape dimension or data offset) replaced.
fn edit_safetensors_header(bytes: &[u8], which: usize, value: u64) -> Option<Vec<u8>> {
    let n = u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?) as usize;
    let mut header: Value = serde_json::from_slice(bytes.get(8..8 + n)?).ok()?;
    let mut ptrs = Vec::new();
    pointers(&header, String::new(), &mut ptrs);
    let numbers: Vec<&String> = ptrs
        .iter()
        .filter(|p| {
            (p.contains("/shape/") || p.contains("/data_offsets/"))
                && !p.starts_with("/__metadata__")
        })
        .collect();
    let target = numbers.get(which % numbers.len().max(1))?;
    *header.pointer_mut(target)? = json!(value);
    let mut text = serde_json::to_vec(&header).ok()?;
    while text.len() % 8 != 0 {
        text.push(b' ');
    }
    let mut out = (text.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&text);
    out.extend_from_slice(&bytes[8 + n..]);
    Some(out)
}

/// A mutation of a safetensors file: raw bytes, a header number, or the JSON in a
/// metadata key.
#[derive(Debug, Clone)]
enum SafeEdit {
    Bytes(Vec<ByteEdit>),
    Header(usize, usize),
    Meta(usize, Vec<JsonEdit>),
}

fn safe_edit(rng: &mut ChaCha8Rng) -> SafeEdit {
    match rng.random_range(0..3) {
        0 => SafeEdit::Bytes(byte_edits(rng, 3)),
        1 => SafeEdit::Header(idx(rng), idx(rng)),
        _ => SafeEdit::Meta(idx(rng), json_edits(rng)),
    }
}

fn apply_safe(original: &[u8], edit: &SafeEdit) -> Vec<u8> {
    match edit {
        SafeEdit::Bytes(edits) => {
            let mut b = original.to_vec();
            apply_bytes(&mut b, edits);
            b
        }
        SafeEdit::Header(which, v) => {
            edit_safetensors_header(original, *which, EXTREME_INTS[v % EXTREME_INTS.len()])
                .unwrap_or_else(|| original.to_vec())
        }
        SafeEdit::Meta(key, edits) => {
            let dir = tempfile::tempdir().expect("temp dir");
            let (src, dst) = (dir.path().join("a"), dir.path().join("b"));
            std::fs::write(&src, original).expect("write");
            let mut parts = files::read_safe(&src);
            let keys: Vec<String> = parts.header["__metadata__"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(_, v)| v.as_str().is_some_and(|s| s.starts_with('{')))
                        .map(|(k, _)| k.clone())
                        .collect()
                })
                .unwrap_or_default();
            if keys.is_empty() {
                return original.to_vec();
            }
            let k = keys[key % keys.len()].clone();
            files::edit_meta_json(&mut parts, &k, |v| apply_json(v, edits));
            files::write_safe(&dst, &parts);
            std::fs::read(&dst).expect("read back")
        }
    }
}

#[test]
fn mutated_checkpoints_are_read_or_rejected() {
    let v = valid();
    let original = std::fs::read(&v.checkpoint).expect("checkpoint");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.safetensors");
    property("checkpoint read", CASES, 1, safe_edit, |edit| {
        std::fs::write(&path, apply_safe(&original, edit)).expect("write");
        let read = no_panic("Checkpoint::read", || {
            no_models::Checkpoint::read(&path, &Device::Cpu)
        })?;
        if let Ok(ckpt) = read {
            // A readable checkpoint's configuration parses or is rejected, never panics.
            no_panic("Checkpoint::model_config", || ckpt.model_config().map(drop))?.ok();
        }
        Ok(())
    });
}

/// Runs `infer` and asserts a clean exit: 0 with a finite output, or 1/2.
fn infer_clean(checkpoint: &Path, input: &Path, work: &Path) -> Result<(), String> {
    let out = work.join("y.npy");
    let _ = std::fs::remove_file(&out);
    let args: Vec<String> = [
        "--checkpoint",
        &checkpoint.to_string_lossy(),
        "--input",
        &input.to_string_lossy(),
        "--out",
        &out.to_string_lossy(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let f = harness::run_program(
        &harness::example("infer"),
        &args,
        work,
        Duration::from_secs(60),
        None,
    );
    let tail = f.stderr.lines().last().unwrap_or("").to_string();
    if f.timed_out {
        return Err("infer hung".into());
    }
    if let Some(sig) = f.signal {
        return Err(format!("infer killed by signal {sig}: {tail}"));
    }
    if f.code == Some(101) || f.stderr.contains("panicked at") {
        return Err(format!("infer panicked: {tail}"));
    }
    match f.code {
        Some(0) => files::check_finite_file(&out),
        Some(1) | Some(2) => Ok(()),
        other => Err(format!("infer exited with {other:?}: {tail}")),
    }
}

#[test]
fn mutated_checkpoints_infer_or_fail_cleanly() {
    let v = valid();
    let original = std::fs::read(&v.checkpoint).expect("checkpoint");
    let work = tempfile::tempdir().expect("temp dir");
    let input = work.path().join("input.npy");
    std::fs::write(&input, &v.npy).expect("input");
    let path = work.path().join("m.safetensors");
    property("checkpoint infer", CLI_CASES, 2, safe_edit, |edit| {
        std::fs::write(&path, apply_safe(&original, edit)).expect("write");
        infer_clean(&path, &input, work.path())
    });
}

/// A mutation of an `.npy` file: raw bytes or one shape dimension.
#[derive(Debug, Clone)]
enum NpyEdit {
    Bytes(Vec<ByteEdit>),
    Dim(usize, usize),
    Descr(usize),
}

fn npy_edit(rng: &mut ChaCha8Rng) -> NpyEdit {
    match rng.random_range(0..3) {
        0 => NpyEdit::Bytes(byte_edits(rng, 3)),
        1 => NpyEdit::Dim(rng.random_range(0..4), idx(rng)),
        _ => NpyEdit::Descr(idx(rng)),
    }
}

fn apply_npy(v: &Valid, edit: &NpyEdit) -> Vec<u8> {
    let g = fixtures::GRID;
    let data = v.npy[v.npy.len() - 4 * 2 * g * g..].to_vec();
    match edit {
        NpyEdit::Bytes(edits) => {
            let mut b = v.npy.clone();
            apply_bytes(&mut b, edits);
            b
        }
        NpyEdit::Dim(d, value) => {
            let mut shape: Vec<String> = [2, 1, g, g].iter().map(|n| n.to_string()).collect();
            shape[*d] = EXTREME_INTS[value % EXTREME_INTS.len()].to_string();
            files::npy_bytes("<f4", &format!("({})", shape.join(", ")), &data)
        }
        NpyEdit::Descr(i) => {
            let descrs = [
                "<f4", "<f8", ">f4", "<i4", "<f2", "|u1", "<c8", "|O", "<U3", "garbage",
            ];
            files::npy_bytes(
                descrs[i % descrs.len()],
                &files::shape_tuple(&[2, 1, g, g]),
                &data,
            )
        }
    }
}

#[test]
fn mutated_npy_inputs_infer_or_fail_cleanly() {
    let v = valid();
    let work = tempfile::tempdir().expect("temp dir");
    let input = work.path().join("x.npy");
    property("npy infer", CLI_CASES, 3, npy_edit, |edit| {
        std::fs::write(&input, apply_npy(v, edit)).expect("write");
        infer_clean(&v.checkpoint, &input, work.path())
    });
}

#[test]
fn mutated_dataset_files_are_loaded_or_rejected() {
    let v = valid();
    let original = std::fs::read(&v.dataset).expect("dataset");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("d.safetensors");
    property("dataset load", CASES, 4, safe_edit, |edit| {
        std::fs::write(&path, apply_safe(&original, edit)).expect("write");
        no_panic("fhn_solver::Dataset::load", || {
            fhn_solver::Dataset::load(&path).map(drop)
        })?
        .ok();
        no_panic("TensorDataset::from_fhn_file", || {
            no_models::TensorDataset::from_fhn_file(&path).map(drop)
        })?
        .ok();
        Ok(())
    });
}

/// Applies random JSON edits to `doc` and runs `parse` on the result (a quarter of the
/// documents also get byte edits: broken JSON text).
fn json_property(seed: u64, doc: Value, parse: impl Fn(&Path) -> Result<(), String>) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("c.json");
    let draw = |rng: &mut ChaCha8Rng| {
        let bytes = if rng.random_range(0..4) == 0 {
            byte_edits(rng, 2)
        } else {
            Vec::new()
        };
        (json_edits(rng), bytes)
    };
    property("json config", CASES, seed, draw, |(edits, bytes)| {
        let mut d = doc.clone();
        apply_json(&mut d, edits);
        let mut text = d.to_string().into_bytes();
        apply_bytes(&mut text, bytes);
        std::fs::write(&path, &text).expect("write");
        no_panic("parsing a mutated config", || parse(&path))?.ok();
        Ok(())
    });
}

#[test]
fn mutated_model_configs_parse_or_are_rejected() {
    json_property(5, fixtures::tiny_fno(), |p| {
        let v: Value =
            serde_json::from_str(&std::fs::read_to_string(p).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        ModelConfig::from_json(&v)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn mutated_training_configs_parse_or_are_rejected() {
    let doc = serde_json::to_value(no_models::TrainConfig::default()).expect("serialises");
    json_property(6, doc, |p| {
        let text = std::fs::read_to_string(p).map_err(|e| e.to_string())?;
        serde_json::from_str::<no_models::TrainConfig>(&text)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn mutated_protocols_parse_or_are_rejected() {
    json_property(7, fixtures::tiny_protocol(), |p| {
        let protocol = fhn_solver::Protocol::from_json_file(p).map_err(|e| e.to_string())?;
        protocol.validate().map_err(|e| e.to_string())
    });
}

#[test]
fn mutated_study_configs_parse_or_are_rejected() {
    let protocol: fhn_solver::Protocol =
        serde_json::from_value(fixtures::tiny_protocol()).expect("protocol");
    let doc = serde_json::to_value(no_eval::study::StudyConfig::quick().with_protocol(protocol))
        .expect("serialises");
    json_property(8, doc, |p| {
        no_eval::study::StudyConfig::by_name_or_path(&p.to_string_lossy())
            .map(drop)
            .map_err(|e| e.to_string())
    });
}
