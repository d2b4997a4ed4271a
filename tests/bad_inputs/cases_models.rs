//! `infer`, `train` and `import_neuralop` from the command line, with damaged checkpoints,
//! arrays, datasets and configurations.

use super::files::{self, edit_meta_json, edit_safe, npy_bytes, poke_f32, restamp, set_meta};
use super::fixtures::GRID;
use super::harness::{merge_args, Case, Ctx};
use serde_json::json;

const INFER: &[&str] = &[
    "--checkpoint",
    "{ckpt}",
    "--input",
    "{input}",
    "--out",
    "{tmp}/y.npy",
];

fn infer_err(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    Case::err(class, name, "infer", &merge_args(INFER, extra), mentions)
}

fn infer_ok(class: &'static str, name: &str, extra: &[&str]) -> Case {
    Case::ok(
        class,
        name,
        "infer",
        &merge_args(INFER, extra),
        &["{tmp}/y.npy"],
    )
}

/// `infer` on `{tmp}/x.npy` made of the given raw bytes.
fn npy_case(class: &'static str, name: &str, bytes: Vec<u8>, mentions: &[&'static str]) -> Case {
    infer_err(class, name, &["--input", "{tmp}/x.npy"], mentions)
        .setup(move |c| std::fs::write(c.path("x.npy"), &bytes).expect("npy file"))
}

/// `infer` on the fixture checkpoint edited by `edit`, saved as `{tmp}/c.safetensors`.
fn ckpt_case(
    class: &'static str,
    name: &str,
    edit: impl Fn(&mut files::SafeParts) + Send + Sync + 'static,
    mentions: &[&'static str],
) -> Case {
    infer_err(
        class,
        name,
        &["--checkpoint", "{tmp}/c.safetensors"],
        mentions,
    )
    .setup(move |c| edit_safe(&c.fx.checkpoint, &c.path("c.safetensors"), &edit))
}

fn config_edit(
    edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
) -> impl Fn(&mut files::SafeParts) + Send + Sync {
    move |p| edit_meta_json(p, "config", &edit)
}

fn valid_input_f32(n: usize, c: usize, nt: usize, nx: usize) -> Vec<u8> {
    let values: Vec<f32> = (0..n * c * nt * nx).map(files::smooth).collect();
    npy_bytes(
        "<f4",
        &files::shape_tuple(&[n, c, nt, nx]),
        &files::f32_le(&values),
    )
}

/// `.npy` inputs: headers that lie, wrong dtypes and ranks, non-finite values.
fn infer_arrays() -> Vec<Case> {
    let g = GRID;
    let four = |v: f32| {
        let mut values: Vec<f32> = (0..g * g).map(files::smooth).collect();
        values[5] = v;
        npy_bytes(
            "<f4",
            &files::shape_tuple(&[1, 1, g, g]),
            &files::f32_le(&values),
        )
    };
    let data16 = files::f32_le(&vec![0.25; g * g]);
    vec![
        npy_case(
            "size",
            "npy-header-1e6x1x1000x1000",
            npy_bytes("<f4", "(1000000, 1, 1000, 1000)", &data16),
            &["memory|size|large|bytes|truncated|length"],
        ),
        npy_case(
            "size",
            "npy-header-2^62x1x2x2",
            npy_bytes("<f4", "(4611686018427387904, 1, 2, 2)", &data16),
            &["memory|size|large|bytes|truncated|length|overflow"],
        ),
        npy_case(
            "size",
            "npy-header-overflowing-product",
            npy_bytes("<f4", "(4294967296, 4294967296, 2, 2)", &data16),
            &["memory|size|large|bytes|overflow"],
        ),
        npy_case(
            "size",
            "npy-header-dim-beyond-u64",
            npy_bytes("<f4", "(99999999999999999999999, 1, 2, 2)", &data16),
            &["shape|header|too large"],
        ),
        npy_case("nan", "input-with-NaN", four(f32::NAN), &["nan|finite"]),
        npy_case(
            "nan",
            "input-with-inf",
            four(f32::INFINITY),
            &["inf|finite"],
        ),
        npy_case(
            "nan",
            "input-with-minus-inf",
            four(f32::NEG_INFINITY),
            &["inf|finite"],
        ),
        npy_case(
            "small",
            "big-endian-f4",
            npy_bytes(">f4", &files::shape_tuple(&[1, 1, g, g]), &data16),
            &["big-endian|>f4"],
        ),
        npy_case(
            "small",
            "big-endian-f8",
            npy_bytes(
                ">f8",
                &files::shape_tuple(&[1, 1, g, g]),
                &files::f64_le(&vec![0.5; g * g]),
            ),
            &["big-endian|>f8"],
        ),
        npy_case(
            "user",
            "int32-dtype",
            npy_bytes(
                "<i4",
                &files::shape_tuple(&[1, 1, g, g]),
                &vec![0u8; 4 * g * g],
            ),
            &["i4|int|dtype"],
        ),
        npy_case(
            "user",
            "int64-dtype",
            npy_bytes(
                "<i8",
                &files::shape_tuple(&[1, 1, g, g]),
                &vec![0u8; 8 * g * g],
            ),
            &["i8|int|dtype"],
        ),
        npy_case(
            "user",
            "f16-dtype",
            npy_bytes(
                "<f2",
                &files::shape_tuple(&[1, 1, g, g]),
                &vec![0u8; 2 * g * g],
            ),
            &["f2|f16|dtype"],
        ),
        npy_case(
            "user",
            "bool-dtype",
            npy_bytes("|b1", &files::shape_tuple(&[1, 1, g, g]), &vec![0u8; g * g]),
            &["b1|bool|dtype"],
        ),
        npy_case(
            "user",
            "unknown-dtype",
            npy_bytes(
                "<c8",
                &files::shape_tuple(&[1, 1, g, g]),
                &vec![0u8; 8 * g * g],
            ),
            &["c8|complex|dtype"],
        ),
        npy_case(
            "user",
            "fortran-order",
            {
                let mut b = npy_bytes("<f4", &files::shape_tuple(&[1, 1, g, g]), &data16);
                let at = b.windows(5).position(|w| w == b"False").expect("header");
                b[at..at + 5].copy_from_slice(b"True ");
                b
            },
            &["fortran"],
        ),
        npy_case(
            "user",
            "rank-2",
            npy_bytes("<f4", &files::shape_tuple(&[g, g]), &data16),
            &["rank|dims|[B, C_in"],
        ),
        npy_case(
            "user",
            "rank-1",
            npy_bytes("<f4", &files::shape_tuple(&[g * g]), &data16),
            &["rank|dims|[B, C_in"],
        ),
        npy_case(
            "user",
            "rank-0-scalar",
            npy_bytes("<f4", "()", &files::f32_le(&[1.0])),
            &["rank|dims|[B, C_in"],
        ),
        npy_case(
            "user",
            "rank-5",
            npy_bytes("<f4", &files::shape_tuple(&[1, 1, 1, g, g]), &data16),
            &["rank|dims|[B, C_in"],
        ),
        npy_case(
            "user",
            "three-channels",
            valid_input_f32(1, 3, g, g),
            &["channel"],
        ),
        npy_case(
            "user",
            "zero-channels",
            npy_bytes("<f4", &files::shape_tuple(&[1, 0, g, g]), &[]),
            &["channel|empty"],
        ),
        npy_case(
            "small",
            "empty-batch",
            npy_bytes("<f4", &files::shape_tuple(&[0, 1, g, g]), &[]),
            &["empty|no samples|0 samples"],
        ),
        npy_case(
            "user",
            "zero-width-grid",
            npy_bytes("<f4", &files::shape_tuple(&[1, 1, g, 0]), &[]),
            &["empty|grid|nx|size"],
        ),
        npy_case(
            "user",
            "truncated-data",
            npy_bytes("<f4", &files::shape_tuple(&[2, 1, g, g]), &data16),
            &["truncated|length|bytes|size|short"],
        ),
        npy_case(
            "user",
            "trailing-garbage",
            {
                let mut b = valid_input_f32(1, 1, g, g);
                b.extend_from_slice(b"junk");
                b
            },
            &["trailing|length|bytes|size"],
        ),
        npy_case(
            "user",
            "garbage-bytes",
            b"this is not an npy file at all".to_vec(),
            &["x.npy"],
        ),
        npy_case("user", "empty-file", Vec::new(), &["x.npy"]),
        npy_case("user", "magic-only", b"\x93NUMPY".to_vec(), &["x.npy"]),
        npy_case(
            "user",
            "header-not-a-dict",
            {
                let mut b = b"\x93NUMPY\x01\x00".to_vec();
                let h = b"garbage header                                        \n";
                b.extend_from_slice(&(h.len() as u16).to_le_bytes());
                b.extend_from_slice(h);
                b
            },
            &["header|x.npy"],
        ),
        npy_case(
            "user",
            "header-length-beyond-file",
            {
                let mut b = b"\x93NUMPY\x01\x00".to_vec();
                b.extend_from_slice(&60000u16.to_le_bytes());
                b.extend_from_slice(b"{'descr': '<f4'");
                b
            },
            &["header|truncated|x.npy"],
        ),
        npy_case(
            "user",
            "npy-version-9",
            {
                let mut b = valid_input_f32(1, 1, g, g);
                b[6] = 9;
                b
            },
            &["version|x.npy"],
        ),
        infer_ok("valid", "f64-input", &["--input", "{tmp}/x.npy"]).setup(|c| {
            files::write_npy_f64(&c.path("x.npy"), &[2, 1, GRID, GRID], |i| {
                files::smooth(i) as f64
            })
        }),
        infer_ok("valid", "single-sample-rank-3", &["--input", "{tmp}/x.npy"])
            .setup(|c| files::write_npy_f32(&c.path("x.npy"), &[1, GRID, GRID], files::smooth)),
        infer_ok("valid", "one-sample-batch", &["--input", "{tmp}/x.npy"])
            .setup(|c| files::write_npy_f32(&c.path("x.npy"), &[1, 1, GRID, GRID], files::smooth)),
        infer_ok(
            "valid",
            "non-square-grid-12x10",
            &["--input", "{tmp}/x.npy"],
        )
        .setup(|c| files::write_npy_f32(&c.path("x.npy"), &[3, 1, 12, 10], files::smooth)),
        infer_ok("valid", "constant-zero-input", &["--input", "{tmp}/x.npy"])
            .setup(|c| files::write_npy_f32(&c.path("x.npy"), &[1, 1, GRID, GRID], |_| 0.0)),
        infer_ok("valid", "batch-size-1", &["--batch-size", "1"]),
        infer_ok("valid", "batch-size-huge", &["--batch-size", "1000000000"]),
        infer_err(
            "numbers",
            "batch-size-0",
            &["--batch-size", "0"],
            &["batch"],
        ),
        infer_err(
            "numbers",
            "batch-size-negative",
            &["--batch-size=-1"],
            &["batch"],
        ),
        infer_err(
            "numbers",
            "batch-size-NaN",
            &["--batch-size", "NaN"],
            &["batch"],
        ),
        infer_err(
            "user",
            "input-missing",
            &["--input", "{tmp}/nope.npy"],
            &["nope.npy"],
        ),
        infer_err(
            "user",
            "input-is-directory",
            &["--input", "{tmp}"],
            &["directory|is a dir"],
        ),
        infer_err("user", "unknown-flag", &["--device", "cuda"], &["--device"]),
        Case::err(
            "user",
            "no-arguments",
            "infer",
            &[] as &[&str],
            &["--checkpoint"],
        ),
        infer_err(
            "user",
            "out-in-missing-directory",
            &["--out", "{tmp}/nodir/y.npy"],
            &["nodir"],
        ),
        infer_err(
            "user",
            "out-parent-is-a-file",
            &["--out", "{tmp}/file/y.npy"],
            &["file"],
        )
        .setup(|c| std::fs::write(c.path("file"), b"x").expect("file")),
        infer_err(
            "user",
            "out-is-a-directory",
            &["--out", "{tmp}"],
            &["directory|is a dir"],
        ),
        infer_err(
            "atomic",
            "out-unwritable-proc",
            &["--out", "/proc/fhn-y.npy"],
            &["/proc/fhn-y.npy"],
        ),
        infer_err(
            "atomic",
            "out-unwritable-sys",
            &["--out", "/sys/fhn-y.npy"],
            &["/sys/fhn-y.npy"],
        ),
    ]
}

/// Damaged checkpoints given to `infer`.
fn infer_checkpoints() -> Vec<Case> {
    vec![
        infer_err(
            "user",
            "checkpoint-missing",
            &["--checkpoint", "{tmp}/nope.safetensors"],
            &["nope.safetensors"],
        ),
        infer_err(
            "user",
            "checkpoint-is-directory",
            &["--checkpoint", "{tmp}"],
            &["directory|is a dir"],
        ),
        infer_err(
            "user",
            "checkpoint-empty-file",
            &["--checkpoint", "{tmp}/c.safetensors"],
            &["c.safetensors"],
        )
        .setup(|c| std::fs::write(c.path("c.safetensors"), b"").expect("file")),
        infer_err(
            "user",
            "checkpoint-garbage",
            &["--checkpoint", "{tmp}/c.safetensors"],
            &["c.safetensors"],
        )
        .setup(|c| {
            std::fs::write(
                c.path("c.safetensors"),
                b"\xff\xff\xff\xff\xff\xff\xff\x7fgarbage",
            )
            .expect("file")
        }),
        infer_err(
            "user",
            "checkpoint-truncated-half",
            &["--checkpoint", "{tmp}/c.safetensors"],
            &["c.safetensors"],
        )
        .setup(|c| {
            let b = std::fs::read(&c.fx.checkpoint).expect("fixture");
            std::fs::write(c.path("c.safetensors"), &b[..b.len() / 2]).expect("file")
        }),
        infer_err(
            "user",
            "checkpoint-truncated-last-byte",
            &["--checkpoint", "{tmp}/c.safetensors"],
            &["c.safetensors"],
        )
        .setup(|c| {
            let b = std::fs::read(&c.fx.checkpoint).expect("fixture");
            std::fs::write(c.path("c.safetensors"), &b[..b.len() - 1]).expect("file")
        }),
        infer_err(
            "user",
            "checkpoint-is-a-dataset",
            &["--checkpoint", "{data}/train.safetensors"],
            &["checkpoint|format"],
        ),
        infer_err(
            "user",
            "checkpoint-is-an-npy",
            &["--checkpoint", "{input}"],
            &["input.npy"],
        ),
        ckpt_case(
            "corrupt",
            "flipped-byte-in-weights",
            |p| {
                let name = files::first_tensor(p, "optimizer");
                let r = files::tensor_range(p, &name);
                p.data[r.start + 1] ^= 0x40;
            },
            &["checksum|crc|corrupt"],
        ),
        ckpt_case(
            "corrupt",
            "flipped-byte-in-last-tensor",
            |p| {
                let names = files::tensor_names(p);
                let r = files::tensor_range(p, names.last().expect("a tensor"));
                p.data[r.end - 1] ^= 0x01;
            },
            &["checksum|crc|corrupt"],
        ),
        ckpt_case(
            "corrupt",
            "checksum-key-malformed",
            |p| set_meta(p, "tensor_crc32", "not json"),
            &["tensor_crc32|checksum"],
        ),
        ckpt_case(
            "nan",
            "NaN-weight",
            |p| {
                let name = files::first_tensor(p, "optimizer");
                poke_f32(p, &name, 0, f32::NAN);
                restamp(p);
            },
            &["nan|finite"],
        ),
        ckpt_case(
            "nan",
            "inf-weight",
            |p| {
                let names = files::tensor_names(p);
                let name = names
                    .iter()
                    .find(|n| !n.starts_with("optimizer"))
                    .expect("weight")
                    .clone();
                poke_f32(p, &name, 0, f32::INFINITY);
                restamp(p);
            },
            &["inf|finite"],
        ),
        ckpt_case(
            "size",
            "config-hidden_channels-100000",
            config_edit(|c| c["hidden_channels"] = json!(100000)),
            &["hidden_channels"],
        ),
        ckpt_case(
            "size",
            "config-n_layers-1e9",
            config_edit(|c| c["n_layers"] = json!(1_000_000_000u64)),
            &["n_layers"],
        ),
        ckpt_case(
            "size",
            "config-n_modes-huge",
            config_edit(|c| c["n_modes"] = json!([1u64 << 40, 2])),
            &["n_modes"],
        ),
        ckpt_case(
            "size",
            "config-lifting-ratio-1e12",
            config_edit(|c| c["lifting_channel_ratio"] = json!(1e12)),
            &["lifting_channel_ratio"],
        ),
        ckpt_case(
            "typo",
            "config-unknown-key",
            config_edit(|c| c["hiden_channels"] = json!(4)),
            &["hiden_channels"],
        ),
        ckpt_case(
            "typo",
            "config-domain_padding-negative",
            config_edit(|c| c["domain_padding"] = json!(-0.5)),
            &["domain_padding|DomainPadding"],
        ),
        ckpt_case(
            "typo",
            "config-unknown-model",
            config_edit(|c| c["model"] = json!("unet")),
            &["unet"],
        ),
        ckpt_case(
            "typo",
            "config-not-json",
            |p| set_meta(p, "config", "{not json"),
            &["config"],
        ),
        ckpt_case(
            "typo",
            "config-missing",
            |p| {
                p.header["__metadata__"]
                    .as_object_mut()
                    .expect("meta")
                    .remove("config");
            },
            &["config"],
        ),
        ckpt_case(
            "user",
            "format-tag-wrong",
            |p| set_meta(p, "format", "pytorch"),
            &["format"],
        ),
        ckpt_case(
            "user",
            "format-version-newer",
            |p| set_meta(p, "format_version", "99"),
            &["version"],
        ),
        ckpt_case(
            "user",
            "format-version-garbage",
            |p| set_meta(p, "format_version", "one"),
            &["format_version"],
        ),
        ckpt_case(
            "nan",
            "normaliser-scale-0",
            |p| edit_meta_json(p, "normalizers", |n| n["input"]["scale"] = json!([0.0])),
            &["scale|normali"],
        ),
        ckpt_case(
            "nan",
            "normaliser-scale-negative",
            |p| {
                edit_meta_json(p, "normalizers", |n| {
                    n["output"]["scale"] = json!([-1.0, 1.0])
                })
            },
            &["scale|normali"],
        ),
        ckpt_case(
            "nan",
            "normaliser-shift-NaN-string",
            |p| edit_meta_json(p, "normalizers", |n| n["input"]["shift"] = json!(["NaN"])),
            &["normali"],
        ),
        ckpt_case(
            "small",
            "normaliser-channel-count-wrong",
            |p| edit_meta_json(p, "normalizers", |n| n["output"]["scale"] = json!([1.0])),
            &["normali|channel"],
        ),
        ckpt_case(
            "user",
            "weight-missing",
            |p| {
                let name = files::first_tensor(p, "optimizer");
                p.header.as_object_mut().expect("header").remove(&name);
                restamp(p);
            },
            &["missing|not found|cannot find|weight|tensor"],
        ),
        ckpt_case(
            "user",
            "weight-wrong-shape",
            |p| {
                // A weight of rank >= 2 flattened (flattening a bias would change nothing).
                let name = files::first_tensor_of_rank(p, "optimizer", 2);
                let r = files::tensor_range(p, &name);
                p.header[&name]["shape"] = json!([(r.end - r.start) / 4]);
                restamp(p);
            },
            &["shape"],
        ),
        ckpt_case(
            "user",
            "weight-dtype-i32",
            |p| {
                let name = files::first_tensor(p, "optimizer");
                p.header[&name]["dtype"] = json!("I32");
                restamp(p);
            },
            &["dtype|I32|u32|i32"],
        ),
        ckpt_case(
            "size",
            "weight-header-claims-huge-shape",
            |p| {
                let name = files::first_tensor(p, "optimizer");
                p.header[&name]["shape"] = json!([1u64 << 40, 1u64 << 20]);
            },
            &["c.safetensors"],
        ),
        infer_ok(
            "small",
            "model-stored-in-f64",
            &["--checkpoint", "{tmp}/c.safetensors"],
        )
        .setup(|c| {
            edit_safe(
                &c.fx.checkpoint,
                &c.path("c.safetensors"),
                files::widen_to_f64,
            )
        }),
        infer_ok(
            "valid",
            "checkpoint-without-checksums",
            &["--checkpoint", "{tmp}/c.safetensors"],
        )
        .setup(|c| {
            edit_safe(&c.fx.checkpoint, &c.path("c.safetensors"), |p| {
                if let Some(m) = p.header["__metadata__"].as_object_mut() {
                    m.remove("tensor_crc32");
                }
            })
        }),
        infer_ok(
            "valid",
            "best-checkpoint",
            &["--checkpoint", "{tmp}/../fixtures/run/best.safetensors"],
        ),
    ]
}

pub fn infer() -> Vec<Case> {
    let mut v = infer_arrays();
    v.extend(infer_checkpoints());
    v
}

const TRAIN: &[&str] = &[
    "--model",
    "fno",
    "--data",
    "{data}",
    "--out",
    "{tmp}/run",
    "--config",
    "{model_cfg}",
    "--epochs",
    "1",
    "--batch-size",
    "2",
    "--quiet",
];
const TRAIN_TIMEOUT: u64 = 150;

fn train_err(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    Case::err(class, name, "train", &merge_args(TRAIN, extra), mentions).timeout_s(TRAIN_TIMEOUT)
}

fn train_ok(class: &'static str, name: &str, extra: &[&str]) -> Case {
    Case::ok(
        class,
        name,
        "train",
        &merge_args(TRAIN, extra),
        &["{tmp}/run/last.safetensors"],
    )
    .timeout_s(TRAIN_TIMEOUT)
}

/// Writes JSON `value` to `{tmp}/name`.
fn write_json(c: &Ctx, name: &str, value: &serde_json::Value) {
    std::fs::write(c.path(name), value.to_string()).expect("json file");
}

fn model_cfg_case(
    class: &'static str,
    name: &str,
    edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    mentions: &[&'static str],
) -> Case {
    train_err(class, name, &["--config", "{tmp}/m.json"], mentions).setup(move |c| {
        let mut cfg = super::fixtures::tiny_fno();
        edit(&mut cfg);
        write_json(c, "m.json", &cfg);
    })
}

fn train_cfg_case(
    class: &'static str,
    name: &str,
    value: serde_json::Value,
    mentions: &[&'static str],
) -> Case {
    train_err(class, name, &["--train-config", "{tmp}/t.json"], mentions)
        .setup(move |c| write_json(c, "t.json", &value))
}

/// Copies the fixture dataset to `{tmp}/d`, editing `split`'s file.
fn dataset_with(c: &Ctx, split: &str, edit: &dyn Fn(&mut files::SafeParts)) {
    let d = c.path("d");
    std::fs::create_dir_all(&d).expect("dir");
    for s in ["train", "val", "test"] {
        let src = c.fx.data.join(format!("{s}.safetensors"));
        let dst = d.join(format!("{s}.safetensors"));
        if s == split {
            edit_safe(&src, &dst, edit);
        } else {
            std::fs::copy(&src, &dst).expect("copy");
        }
    }
}

fn data_case(
    class: &'static str,
    name: &str,
    split: &'static str,
    edit: impl Fn(&mut files::SafeParts) + Send + Sync + 'static,
    mentions: &[&'static str],
) -> Case {
    train_err(class, name, &["--data", "{tmp}/d"], mentions)
        .setup(move |c| dataset_with(c, split, &edit))
}

/// Runs `generate_dataset --shard i/n` for each listed shard into `{tmp}/d` (plus `val`).
fn make_shards(c: &Ctx, shards: &[&str], samples: usize) {
    let d = c.path("d");
    super::cases_solver::write_protocol(c, &|p| p["train"]["n_samples"] = json!(samples));
    let bin = super::harness::example("generate_dataset");
    for shard in shards {
        let status = std::process::Command::new(&bin)
            .args([
                "--protocol",
                &c.path("p.json").to_string_lossy(),
                "--out",
                &d.to_string_lossy(),
            ])
            .args(["--split", "train", "--shard", shard, "--no-progress"])
            .env("RAYON_NUM_THREADS", "1")
            .output()
            .expect("running generate_dataset");
        assert!(
            status.status.success(),
            "shard fixture {shard}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
    }
    std::fs::copy(c.fx.data.join("val.safetensors"), d.join("val.safetensors")).expect("val");
}

fn shard_case(
    name: &str,
    shards: &'static [&'static str],
    after: fn(&Ctx),
    mentions: &[&'static str],
) -> Case {
    train_err("shards", name, &["--data", "{tmp}/d"], mentions).setup(move |c| {
        make_shards(c, shards, 6);
        after(c);
    })
}

fn poison_train(c: &Ctx, file: &str) {
    let path = c.path("d").join(file);
    edit_safe(&path, &path, |p| {
        poke_f32(p, "v", 3, f32::NAN);
        restamp(p);
    });
}

/// `train`: flags, configs, datasets, shards, resume.
pub fn train() -> Vec<Case> {
    let mut v = vec![
        train_ok("valid", "tiny-fno-one-epoch", &[]),
        train_ok(
            "valid",
            "batch-size-larger-than-dataset",
            &["--batch-size", "64"],
        ),
        train_ok("valid", "seed-u64-max", &["--seed", "18446744073709551615"]),
        train_err("nan", "lr-NaN", &["--lr", "NaN"], &["lr"]),
        train_err("nan", "lr-negative", &["--lr=-0.001"], &["lr"]),
        train_err("nan", "lr-inf", &["--lr", "inf"], &["lr"]),
        train_err("nan", "lr-0", &["--lr", "0"], &["lr"]),
        train_err(
            "numbers",
            "batch-size-0",
            &["--batch-size", "0"],
            &["batch"],
        ),
        train_err(
            "numbers",
            "batch-size-negative",
            &["--batch-size=-2"],
            &["batch"],
        ),
        train_err("numbers", "epochs-negative", &["--epochs=-1"], &["epochs"]),
        train_err(
            "numbers",
            "epochs-huge-float",
            &["--epochs", "1e9"],
            &["epochs"],
        ),
        train_err("numbers", "seed-negative", &["--seed=-1"], &["seed"]),
        train_err("user", "model-unknown", &["--model", "unet"], &["unet"]),
        train_err(
            "user",
            "model-contradicts-config",
            &["--model", "cno"],
            &["cno"],
        ),
        train_err(
            "user",
            "data-missing",
            &["--data", "{tmp}/nodata"],
            &["nodata"],
        ),
        train_err(
            "user",
            "data-is-a-file",
            &["--data", "{input}"],
            &["input.npy"],
        ),
        train_err(
            "user",
            "data-empty-directory",
            &["--data", "{tmp}/empty"],
            &["train"],
        )
        .setup(|c| std::fs::create_dir_all(c.path("empty")).expect("dir")),
        train_err(
            "user",
            "out-parent-is-a-file",
            &["--out", "{tmp}/file/run"],
            &["file"],
        )
        .setup(|c| std::fs::write(c.path("file"), b"x").expect("file")),
        train_err(
            "atomic",
            "out-unwritable-proc",
            &["--out", "/proc/fhn-run"],
            &["/proc/fhn-run"],
        ),
        train_err(
            "user",
            "unknown-flag",
            &["--learning-rate", "0.1"],
            &["--learning-rate"],
        ),
        train_err(
            "user",
            "config-missing-file",
            &["--config", "{tmp}/nope.json"],
            &["nope.json"],
        ),
        train_err(
            "user",
            "config-empty-file",
            &["--config", "{tmp}/e.json"],
            &["e.json"],
        )
        .setup(|c| std::fs::write(c.path("e.json"), b"").expect("file")),
        train_err(
            "user",
            "config-not-an-object",
            &["--config", "{tmp}/a.json"],
            &["object"],
        )
        .setup(|c| std::fs::write(c.path("a.json"), b"[1,2]").expect("file")),
        train_err(
            "user",
            "train-config-missing-file",
            &["--train-config", "{tmp}/nope.json"],
            &["nope.json"],
        ),
        train_err(
            "user",
            "train-config-garbage",
            &["--train-config", "{tmp}/t.json"],
            &["t.json"],
        )
        .setup(|c| std::fs::write(c.path("t.json"), b"\x00\x01garbage").expect("file")),
        model_cfg_case(
            "size",
            "config-hidden_channels-100000",
            |c| c["hidden_channels"] = json!(100000),
            &["hidden_channels"],
        ),
        model_cfg_case(
            "size",
            "config-n_layers-1e9",
            |c| c["n_layers"] = json!(1_000_000_000u64),
            &["n_layers"],
        ),
        model_cfg_case(
            "size",
            "config-n_modes-2^40",
            |c| c["n_modes"] = json!([1u64 << 40, 1u64 << 40]),
            &["n_modes"],
        ),
        model_cfg_case(
            "numbers",
            "config-hidden_channels-0",
            |c| c["hidden_channels"] = json!(0),
            &["hidden_channels|hidden"],
        ),
        model_cfg_case(
            "numbers",
            "config-n_layers-0",
            |c| c["n_layers"] = json!(0),
            &["n_layers"],
        ),
        model_cfg_case(
            "numbers",
            "config-n_modes-empty",
            |c| c["n_modes"] = json!([]),
            &["n_modes"],
        ),
        model_cfg_case(
            "numbers",
            "config-n_modes-zero",
            |c| c["n_modes"] = json!([0, 0]),
            &["n_modes"],
        ),
        model_cfg_case(
            "numbers",
            "config-in_channels-2-for-1-channel-data",
            |c| c["in_channels"] = json!(2),
            &["channel"],
        ),
        model_cfg_case(
            "typo",
            "config-domain_padding-negative",
            |c| c["domain_padding"] = json!(-0.5),
            &["domain_padding|DomainPadding"],
        ),
        model_cfg_case(
            "typo",
            "config-domain_padding-huge",
            |c| c["domain_padding"] = json!(1e9),
            &["domain_padding|DomainPadding"],
        ),
        model_cfg_case(
            "typo",
            "config-unknown-key",
            |c| c["hiden_channels"] = json!(4),
            &["hiden_channels"],
        ),
        model_cfg_case(
            "typo",
            "config-channel_mlp_expansion-NaN-string",
            |c| c["channel_mlp_expansion"] = json!("NaN"),
            &["invalid|channel_mlp_expansion"],
        ),
        model_cfg_case(
            "typo",
            "config-lifting_channel_ratio-negative",
            |c| c["lifting_channel_ratio"] = json!(-2.0),
            &["lifting_channel_ratio"],
        ),
        model_cfg_case(
            "typo",
            "config-wrong-type",
            |c| c["hidden_channels"] = json!("four"),
            &["invalid"],
        ),
        train_cfg_case(
            "nan",
            "train-config-eps-0-beta2-1",
            json!({"optimizer": {"eps": 0.0, "beta2": 1.0}}),
            &["eps|beta2"],
        ),
        train_cfg_case(
            "nan",
            "train-config-beta1-1",
            json!({"optimizer": {"beta1": 1.0}}),
            &["beta1"],
        ),
        train_cfg_case(
            "nan",
            "train-config-beta2-negative",
            json!({"optimizer": {"beta2": -0.1}}),
            &["beta2"],
        ),
        train_cfg_case(
            "nan",
            "train-config-weight_decay-negative",
            json!({"optimizer": {"weight_decay": -1.0}}),
            &["weight_decay"],
        ),
        train_cfg_case(
            "nan",
            "train-config-lr-NaN-string",
            json!({"optimizer": {"lr": "NaN"}}),
            &["invalid|lr"],
        ),
        train_cfg_case(
            "typo",
            "train-config-unknown-key",
            json!({"learning_rate": 0.1}),
            &["learning_rate"],
        ),
        train_cfg_case(
            "typo",
            "train-config-unknown-optimizer-key",
            json!({"optimizer": {"momentum": 0.9}}),
            &["momentum"],
        ),
        train_cfg_case(
            "typo",
            "train-config-schedule-unknown",
            json!({"schedule": {"kind": "exponential"}}),
            &["exponential"],
        ),
        train_cfg_case(
            "numbers",
            "train-config-step_size-0",
            json!({"schedule": {"kind": "step", "step_size": 0, "gamma": 0.5}}),
            &["step_size"],
        ),
        train_cfg_case(
            "typo",
            "train-config-not-an-object",
            json!([1, 2]),
            &["invalid|object|map"],
        ),
        data_case(
            "nan",
            "NaN-in-validation-targets",
            "val",
            |p| {
                poke_f32(p, "v", 0, f32::NAN);
                restamp(p);
            },
            &["nan|finite"],
        ),
        data_case(
            "nan",
            "NaN-in-training-inputs",
            "train",
            |p| {
                poke_f32(p, "input", 7, f32::NAN);
                restamp(p);
            },
            &["nan|finite"],
        ),
        data_case(
            "nan",
            "inf-in-training-targets",
            "train",
            |p| {
                poke_f32(p, "w", 1, f32::INFINITY);
                restamp(p);
            },
            &["inf|finite"],
        ),
        data_case(
            "corrupt",
            "flipped-byte-in-train-data",
            "train",
            |p| {
                let r = files::tensor_range(p, "v");
                p.data[r.start + 2] ^= 0x10;
            },
            &["checksum|crc|corrupt"],
        ),
        data_case(
            "corrupt",
            "flipped-byte-in-val-data",
            "val",
            |p| {
                let r = files::tensor_range(p, "input");
                p.data[r.end - 2] ^= 0x04;
            },
            &["checksum|crc|corrupt"],
        ),
        data_case(
            "small",
            "empty-train-split",
            "train",
            |p| {
                for name in files::tensor_names(p) {
                    let shape = p.header[&name]["shape"].as_array().expect("shape").clone();
                    let mut s = shape;
                    s[0] = json!(0);
                    p.header[&name]["shape"] = json!(s);
                    p.header[&name]["data_offsets"] = json!([0, 0]);
                }
                p.data.clear();
                restamp(p);
            },
            &["empty|no samples|0 samples"],
        ),
        data_case(
            "user",
            "train-missing-tensor-w",
            "train",
            |p| {
                // Renamed, so the data stay consistent and only the name is missing.
                let header = p.header.as_object_mut().expect("header");
                let entry = header.remove("w").expect("tensor w");
                header.insert("w_renamed".into(), entry);
                restamp(p);
            },
            &["`w`|'w'|\"w\"|tensor w"],
        ),
        data_case(
            "user",
            "train-tensor-f16",
            "train",
            |p| {
                p.header["v"]["dtype"] = json!("F16");
                let r = files::tensor_range(p, "v");
                let shape = p.header["v"]["shape"].as_array().expect("shape").clone();
                let mut s = shape;
                let last = s.len() - 1;
                s[last] = json!(s[last].as_u64().unwrap() * 2);
                p.header["v"]["shape"] = json!(s);
                let _ = r;
                restamp(p);
            },
            &["dtype|f16"],
        ),
        data_case(
            "user",
            "train-file-garbage",
            "train",
            |p| {
                p.header = json!({"__metadata__": {"format": "nothing"}});
                p.data = b"garbage".to_vec();
            },
            &["train.safetensors"],
        ),
    ];
    v.push(
        train_ok(
            "shards",
            "stray-train-small-is-ignored",
            &["--data", "{tmp}/d"],
        )
        .setup(|c| {
            dataset_with(c, "none", &|_| {});
            let d = c.path("d");
            edit_safe(
                &d.join("train.safetensors"),
                &d.join("train-small.safetensors"),
                |p| {
                    poke_f32(p, "v", 0, f32::NAN);
                    restamp(p);
                },
            );
        }),
    );
    v.extend(shards_and_resume());
    v.push(epochs_zero());
    v
}

fn shards_and_resume() -> Vec<Case> {
    vec![
        train_ok("shards", "three-shards", &["--data", "{tmp}/d"])
            .setup(|c| make_shards(c, &["0/3", "1/3", "2/3"], 6)),
        shard_case(
            "nan-in-middle-shard-is-seen",
            &["0/3", "1/3", "2/3"],
            |c| poison_train(c, "train.shard-1-of-3.safetensors"),
            &["nan|finite"],
        ),
        shard_case(
            "nan-in-last-shard-is-seen",
            &["0/3", "1/3", "2/3"],
            |c| poison_train(c, "train.shard-2-of-3.safetensors"),
            &["nan|finite"],
        ),
        shard_case("missing-shard", &["0/3", "2/3"], |_| {}, &["shard"]),
        shard_case("missing-first-shard", &["1/3", "2/3"], |_| {}, &["shard"]),
        shard_case(
            "duplicate-shard",
            &["0/2", "1/2"],
            |c| {
                let d = c.path("d");
                std::fs::copy(
                    d.join("train.shard-0-of-2.safetensors"),
                    d.join("train.shard-1-of-2.safetensors"),
                )
                .expect("copy");
            },
            &["shard"],
        ),
        shard_case("mixed-counts", &["0/2", "1/3", "2/3"], |_| {}, &["shard"]),
        shard_case(
            "whole-file-beside-shards",
            &["0/2", "1/2"],
            |c| {
                std::fs::copy(
                    c.fx.data.join("train.safetensors"),
                    c.path("d").join("train.safetensors"),
                )
                .expect("copy");
            },
            &["shard|train.safetensors"],
        ),
        shard_case(
            "shard-index-beyond-count",
            &["0/2", "1/2"],
            |c| {
                let d = c.path("d");
                std::fs::rename(
                    d.join("train.shard-1-of-2.safetensors"),
                    d.join("train.shard-5-of-2.safetensors"),
                )
                .expect("rename");
            },
            &["shard"],
        ),
        train_ok(
            "resume",
            "resume-without-flags-continues",
            &["--resume", "{ckpt}", "--epochs", "2"],
        )
        .setup(|_| {}),
        Case::ok(
            "resume",
            "resume-minimal-flags",
            "train",
            &[
                "--model",
                "fno",
                "--data",
                "{data}",
                "--out",
                "{tmp}/run",
                "--resume",
                "{ckpt}",
                "--quiet",
            ],
            // The stored run already completed its epochs: nothing is trained and nothing
            // is written (the program says so), which is success.
            &[],
        )
        .timeout_s(TRAIN_TIMEOUT),
        train_err(
            "resume",
            "resume-model-cno-on-fno",
            &[
                "--resume",
                "{ckpt}",
                "--model",
                "cno",
                "--config",
                "{tmp}/none",
            ],
            &["cno"],
        ),
        train_err(
            "resume",
            "resume-other-lr",
            &["--resume", "{ckpt}", "--lr", "0.5"],
            &["lr"],
        ),
        train_err(
            "resume",
            "resume-other-batch-size",
            &["--resume", "{ckpt}", "--batch-size", "3"],
            &["batch"],
        ),
        train_err(
            "resume",
            "resume-other-config",
            &["--resume", "{ckpt}", "--config", "{tmp}/m.json"],
            &["config|hidden_channels"],
        )
        .setup(|c| {
            let mut cfg = super::fixtures::tiny_fno();
            cfg["hidden_channels"] = json!(8);
            write_json(c, "m.json", &cfg);
        }),
        train_err(
            "resume",
            "resume-missing-checkpoint",
            &["--resume", "{tmp}/nope.safetensors"],
            &["nope.safetensors"],
        ),
        train_err(
            "resume",
            "resume-from-dataset-file",
            &["--resume", "{data}/train.safetensors"],
            &["checkpoint|format"],
        ),
        train_err(
            "resume",
            "resume-from-corrupt-checkpoint",
            &["--resume", "{tmp}/c.safetensors"],
            &["checksum|crc|corrupt"],
        )
        .setup(|c| {
            edit_safe(&c.fx.checkpoint, &c.path("c.safetensors"), |p| {
                let name = files::first_tensor(p, "optimizer");
                let r = files::tensor_range(p, &name);
                p.data[r.start] ^= 0x80;
            })
        }),
    ]
}

/// `--epochs 0` may succeed or fail cleanly, but must not claim checkpoints it never wrote.
fn epochs_zero() -> Case {
    Case::custom(
        "small",
        "train/epochs-0-claims-nothing",
        Box::new(|c: &Ctx| {
            let args: Vec<String> = merge_args(TRAIN, &["--epochs", "0"])
                .iter()
                .map(|a| c.expand(a))
                .collect();
            let f = super::harness::run_program(
                &super::harness::example("train"),
                &args,
                &c.dir,
                std::time::Duration::from_secs(TRAIN_TIMEOUT),
                None,
            );
            if f.timed_out {
                return Err(("hang", "killed after the time limit".into()));
            }
            if f.signal.is_some() {
                return Err(("abort", format!("signal {:?}", f.signal)));
            }
            if f.code == Some(101) || f.stderr.contains("panicked at") {
                return Err(("panic", f.stderr.clone()));
            }
            let written = c.path("run").join("last.safetensors").exists()
                || c.path("run").join("best.safetensors").exists();
            let claims =
                f.stdout.contains("checkpoints in") || f.stdout.contains("best validation");
            match f.code {
                Some(0) if claims && !written => Err((
                    "silent-wrong",
                    format!("claims checkpoints it never wrote: {}", f.stdout.trim()),
                )),
                Some(0) | Some(1) | Some(2) => Ok(()),
                other => Err(("abort", format!("exit {other:?}"))),
            }
        }),
    )
    .timeout_s(TRAIN_TIMEOUT)
}

/// `import_neuralop` on files that are not a neuraloperator state dict.
pub fn import_neuralop() -> Vec<Case> {
    let args = |sd: &str, cfg: &str| -> Vec<String> {
        vec![
            "--state-dict".into(),
            sd.into(),
            "--config".into(),
            cfg.into(),
            "--out".into(),
            "{tmp}/m.safetensors".into(),
        ]
    };
    let fno_cfg = json!({"model": "FNO", "n_modes": [4, 4], "in_channels": 1, "out_channels": 2, "hidden_channels": 4, "n_layers": 1});
    let with_cfg =
        move |name: &str, value: serde_json::Value, sd: &str, mentions: &[&'static str]| {
            Case::err(
                "user",
                name,
                "import_neuralop",
                &args(sd, "{tmp}/c.json"),
                mentions,
            )
            .setup(move |c| write_json(c, "c.json", &value))
        };
    let mut big = fno_cfg.clone();
    big["hidden_channels"] = json!(100000);
    let mut typo = fno_cfg.clone();
    typo["n_modez"] = json!([4, 4]);
    let mut nan = fno_cfg.clone();
    nan["domain_padding"] = json!("NaN");
    vec![
        Case::err(
            "user",
            "state-dict-missing",
            "import_neuralop",
            &args("{tmp}/nope.safetensors", "{tmp}/c.json"),
            &["nope.safetensors"],
        )
        .setup({
            let v = fno_cfg.clone();
            move |c| write_json(c, "c.json", &v)
        }),
        with_cfg(
            "state-dict-garbage",
            fno_cfg.clone(),
            "{tmp}/c.json",
            &["c.json"],
        ),
        with_cfg(
            "state-dict-is-a-dataset",
            fno_cfg.clone(),
            "{data}/train.safetensors",
            &["missing|not found|expected|lacks|key|shape"],
        ),
        with_cfg(
            "state-dict-is-a-checkpoint",
            fno_cfg.clone(),
            "{ckpt}",
            &["missing|not found|expected|lacks|key|shape"],
        ),
        with_cfg(
            "state-dict-is-a-directory",
            fno_cfg.clone(),
            "{tmp}",
            &["directory|is a dir"],
        ),
        with_cfg(
            "config-unknown-class",
            json!({"model": "UNet"}),
            "{ckpt}",
            &["UNet"],
        ),
        with_cfg(
            "config-not-json",
            json!("just a string"),
            "{ckpt}",
            &["c.json|config"],
        ),
        with_cfg(
            "config-hidden_channels-100000",
            big,
            "{ckpt}",
            &["hidden_channels"],
        ),
        with_cfg("config-unknown-key", typo, "{ckpt}", &["n_modez"]),
        with_cfg(
            "config-domain_padding-NaN-string",
            nan,
            "{ckpt}",
            &["domain_padding|invalid"],
        ),
        Case::err(
            "user",
            "config-missing",
            "import_neuralop",
            &args("{ckpt}", "{tmp}/nope.json"),
            &["nope.json"],
        ),
        Case::err(
            "user",
            "no-arguments",
            "import_neuralop",
            &[] as &[&str],
            &["--state-dict"],
        ),
    ]
}
