//! `fhn_solve` and `generate_dataset` from the command line.

use super::harness::{merge_args, Case, Ctx};

/// Flags that make `fhn_solve` cheap; a case's own flags come after them (clap takes the
/// last occurrence of a flag).
const SOLVE: &[&str] = &[
    "--out",
    "{tmp}/out",
    "--output-nt",
    "20",
    "--output-nx",
    "20",
];
const SOLVE_OUT: &[&str] = &["{tmp}/out/input.npy", "{tmp}/out/v.npy", "{tmp}/out/w.npy"];

fn solve_args(extra: &[&str]) -> Vec<String> {
    merge_args(SOLVE, extra)
}

fn solve_err(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    Case::err(class, name, "fhn_solve", &solve_args(extra), mentions)
}

fn solve_ok(class: &'static str, name: &str, extra: &[&str]) -> Case {
    Case::ok(class, name, "fhn_solve", &solve_args(extra), SOLVE_OUT)
}

/// Writes a protocol JSON edited by `edit` to `{tmp}/p.json`.
pub fn write_protocol(ctx: &Ctx, edit: &dyn Fn(&mut serde_json::Value)) {
    let mut p = ctx.fx.protocol_json.clone();
    edit(&mut p);
    std::fs::write(ctx.path("p.json"), p.to_string()).expect("protocol file");
}

/// A `generate_dataset` case on the tiny protocol edited by `edit`.
fn gen_proto(
    class: &'static str,
    name: &str,
    edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    mentions: &[&'static str],
) -> Case {
    Case::err(
        class,
        name,
        "generate_dataset",
        &[
            "--protocol",
            "{tmp}/p.json",
            "--out",
            "{tmp}/d",
            "--no-progress",
        ],
        mentions,
    )
    .setup(move |c| write_protocol(c, &edit))
}

fn gen_proto_ok(
    class: &'static str,
    name: &str,
    edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
) -> Case {
    Case::ok(
        class,
        name,
        "generate_dataset",
        &[
            "--protocol",
            "{tmp}/p.json",
            "--out",
            "{tmp}/d",
            "--no-progress",
        ],
        &[
            "{tmp}/d/train.safetensors",
            "{tmp}/d/val.safetensors",
            "{tmp}/d/test.safetensors",
            "{tmp}/d/protocol.json",
        ],
    )
    .setup(move |c| write_protocol(c, &edit))
}

fn gen(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    let args = merge_args(
        &["--protocol", "{proto}", "--out", "{tmp}/d", "--no-progress"],
        extra,
    );
    Case::err(class, name, "generate_dataset", &args, mentions)
}

/// The numeric flags of `fhn_solve` at zero, negative, huge, NaN and infinite values.
fn fhn_solve_numbers() -> Vec<Case> {
    let mut v = Vec::new();
    // (flag, value, expected mention or None for success)
    let table: &[(&str, &str, Option<&'static str>)] = &[
        ("x0", "NaN", Some("x0")),
        ("x0", "inf", Some("x0")),
        ("x0", "-0.5", Some("x0")),
        ("x0", "1.5", Some("x0")),
        ("x0", "1e308", Some("x0")),
        ("t0", "NaN", Some("t0")),
        ("t0", "inf", Some("t0")),
        ("t0", "1000", Some("t0")),
        ("t0", "-inf", Some("t0")),
        ("amplitude", "NaN", Some("amplitude")),
        ("amplitude", "inf", Some("amplitude")),
        ("amplitude", "-inf", Some("amplitude")),
        ("amplitude", "0", None),
        ("width", "0", Some("width")),
        ("width", "-0.04", Some("width")),
        ("width", "NaN", Some("width")),
        ("width", "inf", Some("width")),
        ("duration", "0", Some("duration")),
        ("duration", "-1", Some("duration")),
        ("duration", "NaN", Some("duration")),
        ("duration", "inf", Some("duration")),
        ("nx", "0", Some("nx")),
        ("nx", "1", Some("nx")),
        ("nx", "-1", Some("nx")),
        ("nx", "99e9", Some("nx")),
        ("nx", "100000000006", Some("memory|size|large")),
        ("nx", "18446744073709551600", Some("memory|size|large")),
        ("dt", "0", Some("dt")),
        ("dt", "-0.01", Some("dt")),
        ("dt", "NaN", Some("dt")),
        ("dt", "inf", Some("dt")),
        ("dt", "1e-300", Some("dt")),
        ("dt", "1e-12", Some("steps|dt")),
        ("output-nt", "0", Some("nt")),
        ("output-nt", "1", Some("nt")),
        ("output-nt", "-5", Some("output-nt")),
        (
            "output-nt",
            "4611686018427387904",
            Some("memory|size|large"),
        ),
        ("output-nt", "99999999999", Some("memory|size|large")),
        ("output-nx", "0", Some("nx")),
        ("output-nx", "1", Some("nx")),
        (
            "output-nx",
            "4611686018427387904",
            Some("memory|size|large"),
        ),
        ("output-nx", "NaN", Some("output-nx")),
        ("repeat", "0", Some("repeat")),
        ("repeat", "-1", Some("repeat")),
        ("repeat", "1e3", Some("repeat")),
        ("scheme", "rk4", Some("rk4")),
        ("scheme", "", Some("scheme")),
        ("input-sampling", "cells", Some("cells")),
    ];
    for (flag, value, mention) in table {
        let arg = format!("--{flag}={value}");
        let name = format!("{flag}={value}");
        v.push(match mention {
            Some(m) => solve_err("numbers", &name, &[&arg], &[m]),
            None => solve_ok("valid", &name, &[&arg]),
        });
    }
    v
}

/// `fhn_solve`: every class it can meet.
pub fn fhn_solve() -> Vec<Case> {
    let mut v = fhn_solve_numbers();
    v.extend([
        solve_ok("valid", "defaults", &[]),
        solve_ok("valid", "f32-output", &["--f32"]),
        solve_ok("valid", "sbdf1", &["--scheme", "sbdf1"]),
        solve_ok("valid", "ars222", &["--scheme", "ars222"]),
        solve_ok(
            "valid",
            "cell-average-input",
            &["--input-sampling", "cell-average"],
        ),
        solve_ok(
            "valid",
            "smallest-output-grid-2x2",
            &["--output-nt", "2", "--output-nx", "2"],
        ),
        solve_ok(
            "valid",
            "non-square-7x13",
            &["--output-nt", "7", "--output-nx", "13"],
        ),
        solve_ok(
            "valid",
            "explicit-fine-grid",
            &[
                "--output-nt",
                "21",
                "--output-nx",
                "21",
                "--nx",
                "201",
                "--dt",
                "0.05",
            ],
        ),
        solve_ok("valid", "pulse-at-left-edge", &["--x0", "0"]),
        solve_ok("valid", "pulse-at-right-edge", &["--x0", "1"]),
        solve_ok("valid", "repeat-2", &["--repeat", "2"]),
        solve_err(
            "small",
            "fine-grid-not-containing-output",
            &["--nx", "100", "--dt", "0.05"],
            &["nx"],
        ),
        solve_err("user", "unknown-flag", &["--bogus", "1"], &["--bogus"]),
        Case::err(
            "user",
            "missing-out",
            "fhn_solve",
            &[] as &[&str],
            &["--out"],
        ),
        solve_err(
            "user",
            "out-parent-is-a-file",
            &["--out", "{tmp}/file/out"],
            &["file"],
        )
        .setup(|c| std::fs::write(c.path("file"), b"x").expect("file")),
        solve_err("user", "out-is-a-file", &["--out", "{tmp}/file"], &["file"])
            .setup(|c| std::fs::write(c.path("file"), b"x").expect("file")),
        solve_err(
            "atomic",
            "out-unwritable-proc",
            &["--out", "/proc/fhn-out"],
            &["/proc/fhn-out"],
        ),
    ]);
    v
}

/// `generate_dataset`: flags, protocol files and protocol fields.
pub fn generate_dataset() -> Vec<Case> {
    let mut v = vec![
        gen("user", "threads-0", &["--threads", "0"], &["threads"]),
        gen("user", "threads-negative", &["--threads=-1"], &["threads"]),
        gen(
            "user",
            "threads-huge",
            &["--threads", "99999999999"],
            &["threads"],
        ),
        gen("shards", "shard-3/3", &["--shard", "3/3"], &["shard"]),
        gen("shards", "shard-0/0", &["--shard", "0/0"], &["shard"]),
        gen("shards", "shard-1/0", &["--shard", "1/0"], &["shard"]),
        gen("shards", "shard-no-slash", &["--shard", "2"], &["shard"]),
        gen("shards", "shard-letters", &["--shard", "a/b"], &["shard"]),
        gen("shards", "shard-negative", &["--shard=-1/3"], &["shard"]),
        gen(
            "shards",
            "shard-more-than-samples",
            &["--shard", "0/100"],
            &["shard|sample"],
        ),
        gen(
            "user",
            "split-unknown",
            &["--split", "training"],
            &["training"],
        ),
        gen("user", "unknown-flag", &["--bogus"], &["--bogus"]),
        Case::err(
            "user",
            "protocol-missing-file",
            "generate_dataset",
            &["--protocol", "{tmp}/nope.json", "--out", "{tmp}/d"],
            &["nope.json"],
        ),
        Case::err(
            "user",
            "protocol-is-directory",
            "generate_dataset",
            &["--protocol", "{tmp}", "--out", "{tmp}/d"],
            &["directory|is a dir"],
        ),
        Case::err(
            "user",
            "protocol-empty-file",
            "generate_dataset",
            &["--protocol", "{tmp}/e.json", "--out", "{tmp}/d"],
            &["e.json"],
        )
        .setup(|c| std::fs::write(c.path("e.json"), b"").expect("file")),
        Case::err(
            "user",
            "protocol-garbage",
            "generate_dataset",
            &["--protocol", "{tmp}/g.json", "--out", "{tmp}/d"],
            &["g.json"],
        )
        .setup(|c| std::fs::write(c.path("g.json"), [0xff, 0x00, 0x13, 0x37, b'{']).expect("file")),
        Case::err(
            "user",
            "protocol-truncated",
            "generate_dataset",
            &["--protocol", "{tmp}/t.json", "--out", "{tmp}/d"],
            &["t.json"],
        )
        .setup(|c| {
            let text = c.fx.protocol_json.to_string();
            std::fs::write(c.path("t.json"), &text[..text.len() / 2]).expect("file")
        }),
        Case::err(
            "user",
            "protocol-json-array",
            "generate_dataset",
            &["--protocol", "{tmp}/a.json", "--out", "{tmp}/d"],
            &["a.json"],
        )
        .setup(|c| std::fs::write(c.path("a.json"), b"[1, 2, 3]").expect("file")),
        Case::err(
            "user",
            "protocol-unknown-name",
            "generate_dataset",
            &["--protocol", "fast", "--out", "{tmp}/d"],
            &["fast"],
        ),
        gen(
            "user",
            "out-parent-is-a-file",
            &["--out", "{tmp}/file/d"],
            &["file"],
        )
        .setup(|c| std::fs::write(c.path("file"), b"x").expect("file")),
        gen("user", "out-is-a-file", &["--out", "{tmp}/file"], &["file"])
            .setup(|c| std::fs::write(c.path("file"), b"x").expect("file")),
        gen(
            "atomic",
            "out-unwritable-proc",
            &["--out", "/proc/fhn-data"],
            &["/proc/fhn-data"],
        ),
        Case::ok(
            "valid",
            "tiny-protocol",
            "generate_dataset",
            &["--protocol", "{proto}", "--out", "{tmp}/d", "--no-progress"],
            &[
                "{tmp}/d/train.safetensors",
                "{tmp}/d/val.safetensors",
                "{tmp}/d/test.safetensors",
                "{tmp}/d/protocol.json",
            ],
        ),
        Case::ok(
            "valid",
            "npy-folders",
            "generate_dataset",
            &[
                "--protocol",
                "{proto}",
                "--out",
                "{tmp}/d",
                "--npy",
                "--no-progress",
            ],
            &["{tmp}/d/train.safetensors", "{tmp}/d/train"],
        ),
        Case::ok(
            "valid",
            "one-split",
            "generate_dataset",
            &[
                "--protocol",
                "{proto}",
                "--out",
                "{tmp}/d",
                "--split",
                "val",
                "--no-progress",
            ],
            &["{tmp}/d/val.safetensors"],
        ),
        Case::ok(
            "valid",
            "shard-1/2",
            "generate_dataset",
            &[
                "--protocol",
                "{proto}",
                "--out",
                "{tmp}/d",
                "--shard",
                "1/2",
                "--no-progress",
            ],
            &["{tmp}/d/train.shard-1-of-2.safetensors"],
        ),
        Case::ok(
            "valid",
            "threads-1",
            "generate_dataset",
            &[
                "--protocol",
                "{proto}",
                "--out",
                "{tmp}/d",
                "--threads",
                "1",
                "--no-progress",
            ],
            &["{tmp}/d/train.safetensors"],
        ),
        gen_proto_ok("valid", "one-sample-per-split", |p| {
            for s in ["train", "validation", "test"] {
                p[s]["n_samples"] = 1.into();
            }
        }),
        gen_proto_ok("valid", "non-square-6x10", |p| {
            p["output"]["nt"] = 6.into();
            p["output"]["nx"] = 10.into();
        }),
        gen_proto_ok("valid", "smallest-grid-2x2", |p| {
            p["output"]["nt"] = 2.into();
            p["output"]["nx"] = 2.into();
        }),
    ];
    v.extend(protocol_fields());
    v
}

/// Protocol JSON fields with sizes, non-finite values, typos and contradictions.
fn protocol_fields() -> Vec<Case> {
    use serde_json::json;
    vec![
        gen_proto(
            "work",
            "n_samples-1e15",
            |p| p["train"]["n_samples"] = json!(1_000_000_000_000_000u64),
            &["n_samples|memory|size"],
        )
        .timeout_s(30),
        gen_proto(
            "work",
            "n_samples-u64-max",
            |p| p["test"]["n_samples"] = json!(u64::MAX),
            &["n_samples|memory|size"],
        )
        .timeout_s(30),
        gen_proto(
            "small",
            "n_samples-0-train",
            |p| p["train"]["n_samples"] = json!(0),
            &["n_samples|empty"],
        ),
        gen_proto(
            "small",
            "n_samples-negative",
            |p| p["train"]["n_samples"] = json!(-4),
            &["n_samples|invalid"],
        ),
        gen_proto(
            "small",
            "n_samples-float",
            |p| p["train"]["n_samples"] = json!(4.5),
            &["invalid"],
        ),
        gen_proto(
            "small",
            "n_samples-string",
            |p| p["train"]["n_samples"] = json!("4"),
            &["invalid"],
        ),
        gen_proto(
            "size",
            "max_dx-1e-300",
            |p| p["resolution"] = json!({"kind": "auto", "max_dx": 1e-300, "max_dt": 0.5}),
            &["max_dx|memory|size"],
        )
        .timeout_s(30),
        gen_proto(
            "work",
            "max_dt-1e-300",
            |p| p["resolution"] = json!({"kind": "auto", "max_dx": 0.03, "max_dt": 1e-300}),
            &["max_dt|steps"],
        )
        .timeout_s(30),
        gen_proto(
            "numbers",
            "max_dx-0",
            |p| p["resolution"] = json!({"kind": "auto", "max_dx": 0.0, "max_dt": 0.5}),
            &["max_dx"],
        ),
        gen_proto(
            "numbers",
            "max_dx-negative",
            |p| p["resolution"] = json!({"kind": "auto", "max_dx": -0.1, "max_dt": 0.5}),
            &["max_dx"],
        ),
        gen_proto(
            "numbers",
            "max_dt-negative",
            |p| p["resolution"] = json!({"kind": "auto", "max_dx": 0.03, "max_dt": -0.5}),
            &["max_dt"],
        ),
        gen_proto(
            "size",
            "explicit-nx-huge",
            |p| p["resolution"] = json!({"kind": "explicit", "nx": 99_999_999_999u64, "dt": 0.5}),
            &["memory|size|nx"],
        )
        .timeout_s(30),
        gen_proto(
            "work",
            "explicit-dt-tiny",
            |p| p["resolution"] = json!({"kind": "explicit", "nx": 29, "dt": 1e-300}),
            &["dt|steps"],
        )
        .timeout_s(30),
        gen_proto(
            "size",
            "output-nt-2^62",
            |p| p["output"]["nt"] = json!(1u64 << 62),
            &["memory|size|nt"],
        )
        .timeout_s(30),
        gen_proto(
            "size",
            "output-nx-huge",
            |p| p["output"]["nx"] = json!(99_999_999_999u64),
            &["memory|size|nx"],
        )
        .timeout_s(30),
        gen_proto(
            "numbers",
            "output-nt-0",
            |p| p["output"]["nt"] = json!(0),
            &["nt"],
        ),
        gen_proto(
            "numbers",
            "output-nx-1",
            |p| p["output"]["nx"] = json!(1),
            &["nx"],
        ),
        gen_proto(
            "numbers",
            "t_end-0",
            |p| p["output"]["t_end"] = json!(0.0),
            &["t_end"],
        ),
        gen_proto(
            "numbers",
            "t_end-negative",
            |p| p["output"]["t_end"] = json!(-40.0),
            &["t_end"],
        ),
        gen_proto(
            "numbers",
            "t_end-1e300",
            |p| p["output"]["t_end"] = json!(1e300),
            &["t_end|steps"],
        )
        .timeout_s(30),
        gen_proto(
            "numbers",
            "length-0",
            |p| p["output"]["length"] = json!(0.0),
            &["length"],
        ),
        gen_proto(
            "numbers",
            "length-negative",
            |p| p["output"]["length"] = json!(-1.0),
            &["length"],
        ),
        gen_proto(
            "numbers",
            "pulse_width-0",
            |p| p["pulse_width"] = json!(0.0),
            &["pulse_width|width"],
        ),
        gen_proto(
            "numbers",
            "pulse_width-negative",
            |p| p["pulse_width"] = json!(-0.04),
            &["pulse_width|width"],
        ),
        gen_proto(
            "numbers",
            "pulse_duration-0",
            |p| p["pulse_duration"] = json!(0.0),
            &["pulse_duration|duration"],
        ),
        gen_proto(
            "numbers",
            "pulse_duration-negative",
            |p| p["pulse_duration"] = json!(-1.0),
            &["pulse_duration|duration"],
        ),
        gen_proto(
            "nan",
            "pulse_width-NaN-string",
            |p| p["pulse_width"] = json!("NaN"),
            &["invalid"],
        ),
        gen_proto(
            "nan",
            "amplitude-NaN-string",
            |p| p["train"]["amplitude"] = json!({"law": "fixed", "value": "NaN"}),
            &["invalid"],
        ),
        gen_proto(
            "small",
            "x0-fixed-outside-domain",
            |p| p["train"]["x0"] = json!({"law": "fixed", "value": 1.5}),
            &["x0"],
        ),
        gen_proto(
            "small",
            "x0-uniform-outside-domain",
            |p| p["test"]["x0"] = json!({"law": "uniform", "low": -0.5, "high": 0.2}),
            &["x0"],
        ),
        gen_proto(
            "small",
            "t0-after-t_end",
            |p| p["test"]["t0"] = json!({"law": "fixed", "value": 100.0}),
            &["t0"],
        ),
        gen_proto(
            "small",
            "uniform-low-above-high",
            |p| p["train"]["amplitude"] = json!({"law": "uniform", "low": 2.0, "high": 0.5}),
            &["low|high"],
        ),
        gen_proto(
            "small",
            "law-unknown-variant",
            |p| p["train"]["amplitude"] = json!({"law": "gaussian", "mean": 1.0}),
            &["gaussian"],
        ),
        gen_proto(
            "typo",
            "unknown-top-level-key",
            |p| p["n_sample"] = json!(4),
            &["n_sample"],
        ),
        gen_proto(
            "typo",
            "unknown-split-key",
            |p| p["train"]["n_sampels"] = json!(4),
            &["n_sampels"],
        ),
        gen_proto(
            "typo",
            "unknown-output-key",
            |p| p["output"]["t_final"] = json!(4.0),
            &["t_final"],
        ),
        gen_proto(
            "typo",
            "unknown-params-key",
            |p| p["params"]["epsilon"] = json!(0.1),
            &["epsilon"],
        ),
        gen_proto(
            "typo",
            "missing-field-seed",
            |p| {
                p.as_object_mut().expect("object").remove("seed");
            },
            &["seed"],
        ),
        gen_proto(
            "typo",
            "scheme-unknown",
            |p| p["scheme"] = json!("rk4"),
            &["rk4"],
        ),
        gen_proto(
            "typo",
            "input_sampling-unknown",
            |p| p["input_sampling"] = json!("cells"),
            &["cells"],
        ),
        gen_proto(
            "numbers",
            "seed-negative",
            |p| p["seed"] = json!(-1),
            &["invalid"],
        ),
        gen_proto(
            "numbers",
            "params-d-negative",
            |p| p["params"]["d"] = json!(-1.0),
            &["d"],
        ),
        gen_proto(
            "numbers",
            "params-e-0",
            |p| p["params"]["e"] = json!(0.0),
            &["e"],
        ),
        gen_proto(
            "numbers",
            "params-beta-above-delta",
            |p| p["params"]["beta"] = json!(5.0),
            &["beta|delta"],
        ),
    ]
}
