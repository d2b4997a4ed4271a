//! `benchmark`, `model_timing`, `device_check` and `custom_model` from the command line.

use super::harness::{merge_args, Case, Ctx};
use serde_json::json;

fn write_json(c: &Ctx, name: &str, value: &serde_json::Value) {
    std::fs::write(c.path(name), value.to_string()).expect("json file");
}

/// The quick study's JSON with the tiny protocol, edited by `edit`.
fn study_json(c: &Ctx, edit: &dyn Fn(&mut serde_json::Value)) -> serde_json::Value {
    let protocol: fhn_solver::Protocol =
        serde_json::from_value(c.fx.protocol_json.clone()).expect("tiny protocol");
    let study = no_eval::study::StudyConfig::quick().with_protocol(protocol);
    let mut v = serde_json::to_value(&study).expect("a study serialises");
    edit(&mut v);
    v
}

const BENCH: &[&str] = &[
    "--protocol",
    "{tmp}/s.json",
    "--out",
    "{tmp}/results",
    "--models",
    "fno",
    "--remedies",
    "none",
    "--quiet",
];

fn bench_study(
    class: &'static str,
    name: &str,
    edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    mentions: &[&'static str],
) -> Case {
    Case::err(class, name, "benchmark", &merge_args(BENCH, &[]), mentions).setup(move |c| {
        let v = study_json(c, &edit);
        write_json(c, "s.json", &v);
    })
}

fn bench_flag(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    Case::err(
        class,
        name,
        "benchmark",
        &merge_args(BENCH, extra),
        mentions,
    )
    .setup(|c| {
        let v = study_json(c, &|_| {});
        write_json(c, "s.json", &v);
    })
}

/// `benchmark`: study and protocol files, flags, output paths.
pub fn benchmark() -> Vec<Case> {
    vec![
        bench_flag(
            "numbers",
            "epoch-scale-0",
            &["--epoch-scale", "0"],
            &["epoch-scale"],
        ),
        bench_flag(
            "numbers",
            "epoch-scale-negative",
            &["--epoch-scale=-1"],
            &["epoch-scale"],
        ),
        bench_flag(
            "numbers",
            "epoch-scale-NaN",
            &["--epoch-scale", "NaN"],
            &["epoch-scale"],
        ),
        bench_flag(
            "numbers",
            "epoch-scale-inf",
            &["--epoch-scale", "inf"],
            &["epoch-scale"],
        ),
        bench_flag(
            "numbers",
            "epoch-scale-1e300",
            &["--epoch-scale", "1e300"],
            &["epoch-scale|epochs"],
        ),
        bench_flag("user", "name-empty", &["--name", ""], &["name is empty"]),
        bench_flag("user", "name-blank", &["--name", "  "], &["name is empty"]),
        bench_flag(
            "user",
            "name-two-lines",
            &["--name", "a\nb"],
            &["control character"],
        ),
        bench_flag("numbers", "seeds-0", &["--seeds", "0"], &["seeds"]),
        bench_flag("numbers", "seeds-huge", &["--seeds", "1000000"], &["seeds"]),
        bench_flag("numbers", "seeds-negative", &["--seeds=-1"], &["seeds"]),
        bench_flag(
            "shards",
            "shard-index-not-below-count",
            &["--shard", "3/3"],
            &["shard"],
        ),
        bench_flag(
            "shards",
            "shard-zero-count",
            &["--shard", "0/0"],
            &["shard"],
        ),
        bench_flag("shards", "shard-garbage", &["--shard", "half"], &["shard"]),
        bench_flag(
            "shards",
            "shard-more-slices-than-jobs",
            &["--shard", "0/50"],
            &["at most 3 slices"],
        ),
        bench_flag("shards", "job-out-of-range", &["--job", "7"], &["job"]),
        bench_flag(
            "user",
            "shard-and-job",
            &["--shard", "0/1", "--job", "0"],
            &["--job|--shard"],
        ),
        bench_flag(
            "user",
            "merge-missing-dir",
            &["--merge", "{tmp}/nowhere"],
            &["nowhere"],
        ),
        bench_flag(
            "user",
            "merge-dir-without-study",
            &["--merge", "{tmp}"],
            &["study.json"],
        ),
        bench_flag(
            "user",
            "merge-without-records",
            &["--merge", "{tmp}/part"],
            &["no record"],
        )
        .setup(|c| {
            std::fs::create_dir_all(c.path("part")).expect("dir");
            let v = study_json(c, &|s| {
                s["models"] = json!([s["models"][4].clone()]);
            });
            write_json(c, "part/study.json", &v);
            write_json(c, "s.json", &v);
        }),
        bench_flag(
            "resume",
            "out-holds-another-study",
            &[],
            &["another study", "--fresh"],
        )
        .setup(|c| {
            std::fs::create_dir_all(c.path("results")).expect("dir");
            let other = study_json(c, &|s| s["augment_max_delay"] = json!(3.0));
            write_json(c, "results/study.json", &other);
            write_json(c, "s.json", &study_json(c, &|_| {}));
        }),
        bench_flag("user", "models-unknown", &["--models", "unet"], &["unet"]),
        bench_flag("user", "models-empty", &["--models", ""], &["model"]),
        bench_flag("user", "device-unknown", &["--device", "tpu"], &["tpu"]),
        bench_flag(
            "user",
            "remedies-unknown",
            &["--remedies", "some"],
            &["some"],
        ),
        bench_flag("user", "unknown-flag", &["--epochs", "3"], &["--epochs"]),
        bench_flag(
            "user",
            "out-parent-is-a-file",
            &["--out", "{tmp}/file/results"],
            &["file"],
        )
        .setup(|c| {
            std::fs::write(c.path("file"), b"x").expect("file");
            write_json(c, "s.json", &study_json(c, &|_| {}));
        }),
        bench_flag(
            "atomic",
            "out-unwritable-proc",
            &["--out", "/proc/fhn-results"],
            &["/proc/fhn-results"],
        ),
        Case::err(
            "user",
            "protocol-missing-file",
            "benchmark",
            &merge_args(BENCH, &["--protocol", "{tmp}/nope.json"]),
            &["nope.json"],
        ),
        Case::err(
            "user",
            "protocol-empty-file",
            "benchmark",
            &merge_args(BENCH, &[]),
            &["s.json"],
        )
        .setup(|c| std::fs::write(c.path("s.json"), b"").expect("file")),
        Case::err(
            "user",
            "protocol-garbage",
            "benchmark",
            &merge_args(BENCH, &[]),
            &["s.json"],
        )
        .setup(|c| std::fs::write(c.path("s.json"), b"\x01\x02 not json").expect("file")),
        Case::err(
            "user",
            "protocol-is-directory",
            "benchmark",
            &merge_args(BENCH, &["--protocol", "{tmp}"]),
            &["directory|is a dir"],
        ),
        Case::err(
            "user",
            "protocol-unknown-name",
            "benchmark",
            &merge_args(BENCH, &["--protocol", "huge"]),
            &["huge"],
        ),
        bench_study(
            "typo",
            "study-bad-field-named",
            |s| s["eval"]["eval_batch"] = json!("many"),
            &["eval_batch"],
        ),
        bench_study(
            "typo",
            "study-unknown-top-key",
            |s| s["sed"] = json!(1),
            &["sed"],
        ),
        bench_study(
            "typo",
            "study-unknown-eval-key",
            |s| s["eval"]["latency_runs"] = json!(3),
            &["latency_runs"],
        ),
        bench_study(
            "typo",
            "study-unknown-model-spec-key",
            |s| s["models"][0]["epochs"] = json!(3),
            &["epochs"],
        ),
        bench_study(
            "typo",
            "study-unknown-model-config-key",
            |s| s["models"][0]["config"]["hiden_channels"] = json!(3),
            &["hiden_channels"],
        ),
        bench_study(
            "typo",
            "study-unknown-train-key",
            |s| s["models"][0]["train"]["learning_rate"] = json!(0.1),
            &["learning_rate"],
        ),
        bench_study(
            "typo",
            "study-unknown-protocol-key",
            |s| s["protocol"]["n_samples"] = json!(3),
            &["n_samples"],
        ),
        bench_study(
            "typo",
            "study-protocol-field-wrong-type",
            |s| s["protocol"]["seed"] = json!("x"),
            &["seed"],
        ),
        bench_study(
            "numbers",
            "study-eval_batch-0",
            |s| s["eval"]["eval_batch"] = json!(0),
            &["eval_batch"],
        ),
        bench_study(
            "numbers",
            "study-augment_max_delay-negative",
            |s| s["augment_max_delay"] = json!(-1.0),
            &["augment_max_delay"],
        ),
        bench_study(
            "numbers",
            "study-fine_grid-huge",
            |s| s["eval"]["fine_grid"] = json!([1u64 << 40, 1u64 << 40]),
            &["fine_grid|memory|size"],
        ),
        bench_study(
            "nan",
            "study-model-lr-negative",
            |s| s["models"][0]["train"]["optimizer"]["lr"] = json!(-1.0),
            &["lr"],
        ),
        bench_study(
            "work",
            "study-n_samples-1e15",
            |s| s["protocol"]["train"]["n_samples"] = json!(1_000_000_000_000_000u64),
            &["n_samples|memory|size"],
        )
        .timeout_s(30),
        bench_study(
            "typo",
            "study-duplicate-labels",
            |s| {
                let first = s["models"][0].clone();
                s["models"].as_array_mut().expect("models").push(first);
            },
            &["label|duplicate"],
        ),
        Case::err(
            "typo",
            "protocol-only-unknown-key",
            "benchmark",
            &merge_args(BENCH, &[]),
            &["n_sampels"],
        )
        .setup(|c| {
            let mut p = c.fx.protocol_json.clone();
            p["train"]["n_sampels"] = json!(3);
            write_json(c, "s.json", &p);
        }),
    ]
}

const TIMING: &[&str] = &[
    "--model",
    "fno",
    "--config",
    "{model_cfg}",
    "--grid",
    "8",
    "--batch",
    "1",
    "--repeats",
    "1",
];

fn timing_err(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    Case::err(
        class,
        name,
        "model_timing",
        &merge_args(TIMING, extra),
        mentions,
    )
}

fn timing_cfg(
    class: &'static str,
    name: &str,
    edit: impl Fn(&mut serde_json::Value) + Send + Sync + 'static,
    mentions: &[&'static str],
) -> Case {
    timing_err(class, name, &["--config", "{tmp}/m.json"], mentions).setup(move |c| {
        let mut cfg = super::fixtures::tiny_fno();
        edit(&mut cfg);
        write_json(c, "m.json", &cfg);
    })
}

/// `model_timing`: sizes, counts, configs.
pub fn model_timing() -> Vec<Case> {
    vec![
        Case::ok(
            "valid",
            "tiny-fno",
            "model_timing",
            &merge_args(TIMING, &[]),
            &[],
        ),
        Case::ok(
            "valid",
            "tiny-fno-forward",
            "model_timing",
            &merge_args(TIMING, &["--work", "forward"]),
            &[],
        ),
        Case::ok(
            "valid",
            "tiny-fno-infer-grid-2",
            "model_timing",
            &merge_args(TIMING, &["--work", "infer", "--grid", "2"]),
            &[],
        ),
        timing_err("numbers", "batch-0", &["--batch", "0"], &["batch"]),
        timing_err("numbers", "batch-negative", &["--batch=-1"], &["batch"]),
        timing_err(
            "size",
            "batch-2^40",
            &["--batch", "1099511627776"],
            &["memory|size|batch"],
        ),
        timing_err("numbers", "grid-0", &["--grid", "0"], &["grid"]),
        timing_err("numbers", "grid-1", &["--grid", "1"], &["grid"]),
        timing_err(
            "size",
            "grid-99999999999",
            &["--grid", "99999999999"],
            &["memory|size|grid"],
        ),
        timing_err("numbers", "grid-NaN", &["--grid", "NaN"], &["grid"]),
        timing_err("numbers", "repeats-0", &["--repeats", "0"], &["repeats"]),
        timing_err(
            "numbers",
            "in-channels-0",
            &["--in-channels", "0"],
            &["in-channels|in_channels"],
        ),
        timing_err(
            "numbers",
            "out-channels-0",
            &["--out-channels", "0"],
            &["out-channels|out_channels"],
        ),
        timing_err(
            "size",
            "in-channels-huge",
            &["--in-channels", "99999999999"],
            &["memory|size|channels"],
        ),
        timing_err(
            "numbers",
            "in-channels-contradicts-config",
            &["--in-channels", "3"],
            &["channel"],
        ),
        timing_err("user", "work-unknown", &["--work", "sleep"], &["sleep"]),
        Case::err(
            "user",
            "model-unknown",
            "model_timing",
            &["--model", "unet", "--grid", "8"],
            &["unet"],
        ),
        timing_err(
            "user",
            "config-missing",
            &["--config", "{tmp}/nope.json"],
            &["nope.json"],
        ),
        timing_err("user", "unknown-flag", &["--threads", "2"], &["--threads"]),
        timing_cfg(
            "size",
            "config-hidden_channels-100000",
            |c| c["hidden_channels"] = json!(100000),
            &["hidden_channels"],
        ),
        timing_cfg(
            "size",
            "config-n_layers-1e9",
            |c| c["n_layers"] = json!(1_000_000_000u64),
            &["n_layers"],
        ),
        timing_cfg(
            "typo",
            "config-unknown-key",
            |c| c["n_layerz"] = json!(2),
            &["n_layerz"],
        ),
        timing_cfg(
            "typo",
            "config-domain_padding-negative",
            |c| c["domain_padding"] = json!(-0.5),
            &["domain_padding"],
        ),
        timing_cfg(
            "typo",
            "config-without-model-tag",
            |c| {
                c.as_object_mut().expect("object").remove("model");
            },
            &["model"],
        ),
    ]
}

const CHECK: &[&str] = &[
    "--device",
    "cpu",
    "--models",
    "fno",
    "--grid",
    "8",
    "--grid2",
    "0,0",
    "--batch",
    "1",
    "--repeats",
    "0",
];

fn check_err(class: &'static str, name: &str, extra: &[&str], mentions: &[&'static str]) -> Case {
    Case::err(
        class,
        name,
        "device_check",
        &merge_args(CHECK, extra),
        mentions,
    )
}

/// `device_check` on the CPU (a dry run) with bad flags.
pub fn device_check() -> Vec<Case> {
    vec![
        Case::ok(
            "valid",
            "cpu-dry-run-fno",
            "device_check",
            &merge_args(CHECK, &[]),
            &[],
        )
        .timeout_s(120),
        Case::err(
            "user",
            "cuda-without-feature",
            "device_check",
            &[
                "--models",
                "fno",
                "--grid",
                "8",
                "--grid2",
                "0,0",
                "--repeats",
                "0",
            ],
            &["cuda"],
        ),
        check_err(
            "size",
            "grid2-99999999999,2",
            &["--grid2", "99999999999,2"],
            &["memory|size|grid2"],
        ),
        check_err(
            "size",
            "grid-99999999999",
            &["--grid", "99999999999"],
            &["memory|size|grid"],
        ),
        check_err(
            "size",
            "batch-2^40",
            &["--batch", "1099511627776"],
            &["memory|size|batch"],
        ),
        check_err("numbers", "grid2-one-number", &["--grid2", "5"], &["grid2"]),
        check_err(
            "numbers",
            "grid2-three-numbers",
            &["--grid2", "5,5,5"],
            &["grid2"],
        ),
        check_err("numbers", "grid2-1,1", &["--grid2", "1,1"], &["grid2"]),
        check_err("numbers", "grid2-negative", &["--grid2=-4,4"], &["grid2"]),
        check_err("numbers", "grid-1", &["--grid", "1"], &["grid"]),
        check_err("numbers", "batch-0", &["--batch", "0"], &["batch"]),
        check_err(
            "numbers",
            "tol-forward-NaN",
            &["--tol-forward", "NaN"],
            &["tol-forward|tol_forward"],
        ),
        check_err(
            "numbers",
            "tol-forward-negative",
            &["--tol-forward=-1"],
            &["tol-forward|tol_forward"],
        ),
        check_err(
            "numbers",
            "tol-grad-inf",
            &["--tol-grad", "inf"],
            &["tol-grad|tol_grad"],
        ),
        check_err(
            "numbers",
            "tol-grad-NaN",
            &["--tol-grad", "NaN"],
            &["tol-grad|tol_grad"],
        ),
        check_err(
            "numbers",
            "repeats-negative",
            &["--repeats=-1"],
            &["repeats"],
        ),
        check_err("user", "models-unknown", &["--models", "unet"], &["unet"]),
        check_err(
            "user",
            "models-empty",
            &["--models", ""],
            &["models|unknown model"],
        ),
        check_err("user", "dtype-f16", &["--dtype", "f16"], &["f16"]),
        check_err("user", "device-unknown", &["--device", "tpu"], &["tpu"]),
        check_err("user", "unknown-flag", &["--bogus"], &["--bogus"]),
    ]
}

/// `custom_model` takes no arguments.
pub fn custom_model() -> Vec<Case> {
    vec![
        Case::ok("valid", "runs", "custom_model", &[] as &[&str], &[]).timeout_s(120),
        Case::err(
            "user",
            "unknown-flag",
            "custom_model",
            &["--bogus"],
            &["--bogus"],
        ),
        Case::err(
            "user",
            "stray-argument",
            "custom_model",
            &["extra"],
            &["extra"],
        ),
    ]
}
