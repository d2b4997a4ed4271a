//! Writing and inspecting `.npy` and safetensors files byte by byte, so that the suite can
//! make malformed ones that no well-behaved writer would produce.

use std::path::Path;

/// An `.npy` file (version 1.0) with a free-form header dictionary and raw data.
pub fn npy_bytes(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut header = dict.into_bytes();
    // Pad so that magic (6) + version (2) + length (2) + header ends on a 64-byte boundary.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(b' ');
    }
    header.push(b'\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(data);
    out
}

/// Little-endian f32 bytes.
pub fn f32_le(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Little-endian f64 bytes.
pub fn f64_le(values: &[f64]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Writes an f32 `.npy` of the given shape, filled by `f(i)`.
pub fn write_npy_f32(path: &Path, shape: &[usize], f: impl Fn(usize) -> f32) {
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(f).collect();
    std::fs::write(
        path,
        npy_bytes("<f4", &shape_tuple(shape), &f32_le(&values)),
    )
    .expect("writing npy");
}

/// Writes an f64 `.npy` of the given shape, filled by `f(i)`.
pub fn write_npy_f64(path: &Path, shape: &[usize], f: impl Fn(usize) -> f64) {
    let n: usize = shape.iter().product();
    let values: Vec<f64> = (0..n).map(f).collect();
    std::fs::write(
        path,
        npy_bytes("<f8", &shape_tuple(shape), &f64_le(&values)),
    )
    .expect("writing npy");
}

/// `(a, b, c)` or `(a,)` for a shape.
pub fn shape_tuple(shape: &[usize]) -> String {
    match shape {
        [] => "()".into(),
        [a] => format!("({a},)"),
        _ => format!(
            "({})",
            shape
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// A smooth, valid input value for sample/position `i`.
pub fn smooth(i: usize) -> f32 {
    ((i % 17) as f32 * 0.37).sin() * 0.5
}

/// The parts of a safetensors file: its header JSON and its data section.
pub struct SafeParts {
    /// The header (tensor entries and `__metadata__`).
    pub header: serde_json::Value,
    /// The bytes after the header.
    pub data: Vec<u8>,
}

/// Splits a safetensors file into header and data.
pub fn read_safe(path: &Path) -> SafeParts {
    let bytes = std::fs::read(path).expect("reading a safetensors fixture");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header = serde_json::from_slice(&bytes[8..8 + n]).expect("a fixture's header is JSON");
    SafeParts {
        header,
        data: bytes[8 + n..].to_vec(),
    }
}

/// Writes header and data back as a safetensors file (header padded to 8 bytes).
pub fn write_safe(path: &Path, parts: &SafeParts) {
    let mut header = serde_json::to_vec(&parts.header).expect("header serialises");
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&parts.data);
    std::fs::write(path, out).expect("writing a safetensors file");
}

/// Copies `src` to `dst` with its header or data changed by `edit`.
pub fn edit_safe(src: &Path, dst: &Path, edit: impl FnOnce(&mut SafeParts)) {
    let mut parts = read_safe(src);
    edit(&mut parts);
    write_safe(dst, &parts);
}

/// Edits a JSON document stored as a string in the `__metadata__` key `key`.
pub fn edit_meta_json(parts: &mut SafeParts, key: &str, edit: impl FnOnce(&mut serde_json::Value)) {
    let meta = parts.header["__metadata__"]
        .as_object_mut()
        .expect("metadata");
    let text = meta[key].as_str().expect("a JSON string").to_string();
    let mut value: serde_json::Value = serde_json::from_str(&text).expect("metadata JSON");
    edit(&mut value);
    meta.insert(key.into(), serde_json::Value::String(value.to_string()));
}

/// Sets a plain string in the `__metadata__`.
pub fn set_meta(parts: &mut SafeParts, key: &str, value: &str) {
    let meta = parts.header["__metadata__"]
        .as_object_mut()
        .expect("metadata");
    meta.insert(key.into(), serde_json::Value::String(value.into()));
}

/// The byte range of tensor `name` in the data section.
pub fn tensor_range(parts: &SafeParts, name: &str) -> std::ops::Range<usize> {
    let offs = &parts.header[name]["data_offsets"];
    let a = offs[0].as_u64().expect("offset") as usize;
    let b = offs[1].as_u64().expect("offset") as usize;
    a..b
}

/// The name of the first (sorted) tensor whose name does not start with `skip`.
pub fn first_tensor(parts: &SafeParts, skip: &str) -> String {
    let mut names: Vec<&String> = parts
        .header
        .as_object()
        .expect("header object")
        .keys()
        .filter(|k| *k != "__metadata__" && !k.starts_with(skip))
        .collect();
    names.sort();
    names[0].clone()
}

/// The alphabetically first tensor of rank at least `rank` whose name does not start with
/// `skip`.
pub fn first_tensor_of_rank(parts: &SafeParts, skip: &str, rank: usize) -> String {
    let header = parts.header.as_object().expect("header object");
    let mut names: Vec<&String> = header
        .iter()
        .filter(|(k, v)| {
            *k != "__metadata__"
                && !k.starts_with(skip)
                && v["shape"].as_array().is_some_and(|s| s.len() >= rank)
        })
        .map(|(k, _)| k)
        .collect();
    names.sort();
    names[0].clone()
}

/// Writes f32 `value` into element `index` of tensor `name` (f32 tensors only).
pub fn poke_f32(parts: &mut SafeParts, name: &str, index: usize, value: f32) {
    let r = tensor_range(parts, name);
    let at = r.start + 4 * index;
    parts.data[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

/// Checks that an output file exists and holds finite numbers (`.npy`, `.safetensors`),
/// valid JSON (`.json`), or is a non-empty file/directory.
pub fn check_finite_file(path: &Path) -> Result<(), String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    if !path.exists() {
        return Err(format!("{} was not written", path.display()));
    }
    match ext {
        "npy" => check_npy(path),
        "safetensors" => check_safetensors(path),
        "json" => {
            let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
            serde_json::from_str::<serde_json::Value>(&text)
                .map(|_| ())
                .map_err(|e| format!("{} is not JSON: {e}", path.display()))
        }
        _ => Ok(()),
    }
}

fn check_values(path: &Path, descr: &str, data: &[u8]) -> Result<(), String> {
    let finite = match descr {
        "<f4" | "F32" => data
            .chunks_exact(4)
            .all(|c| f32::from_le_bytes(c.try_into().unwrap()).is_finite()),
        "<f8" | "F64" => data
            .chunks_exact(8)
            .all(|c| f64::from_le_bytes(c.try_into().unwrap()).is_finite()),
        _ => true,
    };
    if finite {
        Ok(())
    } else {
        Err(format!("{} holds non-finite values", path.display()))
    }
}

fn check_npy(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err(format!("{} is not an .npy file", path.display()));
    }
    let (hlen, start) = if bytes[6] == 1 {
        (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10)
    } else {
        (
            u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize,
            12,
        )
    };
    let header = String::from_utf8_lossy(&bytes[start..start + hlen]).to_string();
    let descr = if header.contains("'<f4'") {
        "<f4"
    } else if header.contains("'<f8'") {
        "<f8"
    } else {
        "?"
    };
    let shape_txt = header
        .split("'shape':")
        .nth(1)
        .unwrap_or("")
        .split(')')
        .next()
        .unwrap_or("");
    let numel: usize = shape_txt
        .trim_start_matches([' ', '('])
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .product();
    let data = &bytes[start + hlen..];
    let width = if descr == "<f8" { 8 } else { 4 };
    if data.len() != numel * width {
        return Err(format!(
            "{}: {} data bytes for {numel} elements",
            path.display(),
            data.len()
        ));
    }
    if numel == 0 {
        return Err(format!("{} is empty", path.display()));
    }
    check_values(path, descr, data)
}

fn check_safetensors(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    for (name, view) in st.tensors() {
        let descr = format!("{:?}", view.dtype());
        check_values(path, &descr, view.data()).map_err(|e| format!("{e} (tensor {name})"))?;
    }
    Ok(())
}

/// Recomputes the `tensor_crc32` metadata (if the file has it) after a deliberate edit, so
/// that the edit, not the checksum, is what a reader must catch.
pub fn restamp(parts: &mut SafeParts) {
    let has_key = parts.header["__metadata__"]
        .get(no_models::checksum::METADATA_KEY)
        .is_some();
    if !has_key {
        return;
    }
    let names: Vec<String> = tensor_names(parts);
    let mut map = serde_json::Map::new();
    for name in names {
        let r = tensor_range(parts, &name);
        map.insert(name, no_models::checksum::crc32_hex(&parts.data[r]).into());
    }
    set_meta(
        parts,
        no_models::checksum::METADATA_KEY,
        &serde_json::Value::Object(map).to_string(),
    );
}

/// The names of all tensors, in data order.
pub fn tensor_names(parts: &SafeParts) -> Vec<String> {
    let mut names: Vec<String> = parts
        .header
        .as_object()
        .expect("header object")
        .keys()
        .filter(|k| *k != "__metadata__")
        .cloned()
        .collect();
    names.sort_by_key(|n| tensor_range(parts, n).start);
    names
}

/// Converts every F32 tensor to F64 (the values exactly), keeping the metadata.
pub fn widen_to_f64(parts: &mut SafeParts) {
    let mut data = Vec::new();
    for name in tensor_names(parts) {
        let r = tensor_range(parts, &name);
        let bytes = parts.data[r].to_vec();
        let entry = &mut parts.header[&name];
        let wide: Vec<u8> = if entry["dtype"] == "F32" {
            entry["dtype"] = "F64".into();
            bytes
                .chunks_exact(4)
                .flat_map(|c| {
                    (f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).to_le_bytes()
                })
                .collect()
        } else {
            bytes
        };
        let start = data.len();
        data.extend_from_slice(&wide);
        entry["data_offsets"] = serde_json::json!([start, data.len()]);
    }
    parts.data = data;
    restamp(parts);
}
