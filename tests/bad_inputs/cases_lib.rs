//! Library cases: the public loaders, configuration parsers and the trainer, called
//! directly. Only inputs that cannot make today's code allocate without bound run here
//! (an abort would take the whole suite down); such inputs run as CLI cases instead.

use super::files::{self, edit_safe, poke_f32, restamp};
use super::harness::{Case, Ctx, Expect};
use candle_core::{DType, Device};
use no_layers::init::SeededVarMap;
use no_models::{build, ModelConfig, TensorDataset, TrainConfig, Trainer};
use serde_json::json;

fn err(mentions: &[&'static str]) -> Expect {
    Expect::Error(mentions.to_vec())
}

fn ok() -> Expect {
    Expect::Success(Vec::new())
}

fn s<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

type Edit = fn(&mut files::SafeParts);

/// Writes the fixture dataset's `train` file edited by `edit` to `{tmp}/t.safetensors`.
fn edited_dataset(c: &Ctx, edit: Edit) -> std::path::PathBuf {
    let path = c.path("t.safetensors");
    edit_safe(&c.fx.data.join("train.safetensors"), &path, edit);
    path
}

fn edited_checkpoint(c: &Ctx, edit: Edit) -> std::path::PathBuf {
    let path = c.path("c.safetensors");
    edit_safe(&c.fx.checkpoint, &path, edit);
    path
}

fn flip_v(p: &mut files::SafeParts) {
    let r = files::tensor_range(p, "v");
    p.data[r.start + 5] ^= 0x20;
}

fn nan_v(p: &mut files::SafeParts) {
    poke_f32(p, "v", 2, f32::NAN);
    restamp(p);
}

fn flip_weight(p: &mut files::SafeParts) {
    let name = files::first_tensor(p, "optimizer");
    let r = files::tensor_range(p, &name);
    p.data[r.start + 3] ^= 0x08;
}

fn truncate(p: &mut files::SafeParts) {
    let n = p.data.len() / 2;
    p.data.truncate(n);
}

fn unchanged(_: &mut files::SafeParts) {}

/// Loader cases over the three readers of safetensors files.
fn loaders() -> Vec<Case> {
    let mut v = Vec::new();
    let dataset_edits: &[(&str, Edit, Option<&'static str>)] = &[
        ("valid", unchanged, None),
        ("flipped-byte", flip_v, Some("checksum|crc|corrupt")),
        ("truncated", truncate, Some("t.safetensors")),
    ];
    for (what, edit, mention) in dataset_edits {
        let edit = *edit;
        let class = if mention.is_some() {
            "corrupt"
        } else {
            "valid"
        };
        let expect = mention.map_or_else(ok, |m| err(&[m]));
        v.push(Case::lib(
            class,
            &format!("Dataset::load/{what}"),
            expect.clone(),
            Box::new(move |c: &Ctx| {
                fhn_solver::Dataset::load(edited_dataset(c, edit))
                    .map(drop)
                    .map_err(s)
            }),
        ));
        v.push(Case::lib(
            class,
            &format!("TensorDataset::from_fhn_file/{what}"),
            expect,
            Box::new(move |c: &Ctx| {
                TensorDataset::from_fhn_file(edited_dataset(c, edit))
                    .map(drop)
                    .map_err(s)
            }),
        ));
    }
    v.push(Case::lib(
        "nan",
        "TensorDataset::from_fhn_file/NaN-target",
        err(&["nan|finite"]),
        Box::new(|c: &Ctx| {
            TensorDataset::from_fhn_file(edited_dataset(c, nan_v))
                .map(drop)
                .map_err(s)
        }),
    ));
    v.push(Case::lib(
        "nan",
        "Dataset::load/NaN-target",
        err(&["nan|finite"]),
        Box::new(|c: &Ctx| {
            fhn_solver::Dataset::load(edited_dataset(c, nan_v))
                .map(drop)
                .map_err(s)
        }),
    ));
    for (what, bytes) in [
        ("empty-file", Vec::new()),
        ("garbage", b"\x08\0\0\0\0\0\0\0{}garbage".to_vec()),
    ] {
        let b1 = bytes.clone();
        v.push(Case::lib(
            "user",
            &format!("Dataset::load/{what}"),
            err(&["x.safetensors"]),
            Box::new(move |c: &Ctx| {
                std::fs::write(c.path("x.safetensors"), &b1).expect("file");
                fhn_solver::Dataset::load(c.path("x.safetensors"))
                    .map(drop)
                    .map_err(s)
            }),
        ));
        v.push(Case::lib(
            "user",
            &format!("Checkpoint::read/{what}"),
            err(&["x.safetensors"]),
            Box::new(move |c: &Ctx| {
                std::fs::write(c.path("x.safetensors"), &bytes).expect("file");
                no_models::Checkpoint::read(c.path("x.safetensors"), &Device::Cpu)
                    .map(drop)
                    .map_err(s)
            }),
        ));
    }
    v.push(Case::lib(
        "user",
        "Dataset::load/directory",
        err(&["directory|is a dir"]),
        Box::new(|c: &Ctx| fhn_solver::Dataset::load(&c.dir).map(drop).map_err(s)),
    ));
    v.push(Case::lib(
        "user",
        "TensorDataset::load_splits/missing-dir",
        err(&["nodir"]),
        Box::new(|c: &Ctx| {
            TensorDataset::load_splits(c.path("nodir"))
                .map(drop)
                .map_err(s)
        }),
    ));
    v.push(Case::lib(
        "valid",
        "TensorDataset::load_splits/fixture",
        ok(),
        Box::new(|c: &Ctx| TensorDataset::load_splits(&c.fx.data).map(drop).map_err(s)),
    ));
    let ckpt_edits: &[(&str, Edit, Option<&'static str>)] = &[
        ("valid", unchanged, None),
        ("flipped-byte", flip_weight, Some("checksum|crc|corrupt")),
        ("truncated", truncate, Some("c.safetensors")),
    ];
    for (what, edit, mention) in ckpt_edits {
        let edit = *edit;
        let class = if mention.is_some() {
            "corrupt"
        } else {
            "valid"
        };
        let expect = mention.map_or_else(ok, |m| err(&[m]));
        v.push(Case::lib(
            class,
            &format!("Checkpoint::read/{what}"),
            expect.clone(),
            Box::new(move |c: &Ctx| {
                no_models::Checkpoint::read(edited_checkpoint(c, edit), &Device::Cpu)
                    .map(drop)
                    .map_err(s)
            }),
        ));
        v.push(Case::lib(
            class,
            &format!("checkpoint::load/{what}"),
            expect,
            Box::new(move |c: &Ctx| {
                no_models::checkpoint::load(edited_checkpoint(c, edit), &Device::Cpu)
                    .map(drop)
                    .map_err(s)
            }),
        ));
    }
    v.push(Case::lib(
        "small",
        "checkpoint::load/f64-model-predicts",
        ok(),
        Box::new(|c: &Ctx| {
            let loaded = no_models::checkpoint::load(
                edited_checkpoint(c, files::widen_to_f64),
                &Device::Cpu,
            )
            .map_err(s)?;
            let x = candle_core::Tensor::ones((1, 1, 8, 8), DType::F32, &Device::Cpu).map_err(s)?;
            let y = loaded.predict_physical(&x).map_err(s)?;
            let values: Vec<f32> = y
                .to_dtype(DType::F32)
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1())
                .map_err(s)?;
            if values.iter().all(|v| v.is_finite()) {
                Ok(())
            } else {
                Err("non-finite prediction".into())
            }
        }),
    ));
    v.push(Case::lib(
        "nan",
        "checkpoint::load/NaN-weight",
        err(&["nan|finite"]),
        Box::new(|c: &Ctx| {
            no_models::checkpoint::load(
                edited_checkpoint(c, |p| {
                    let name = files::first_tensor(p, "optimizer");
                    poke_f32(p, &name, 0, f32::NAN);
                    restamp(p);
                }),
                &Device::Cpu,
            )
            .map(drop)
            .map_err(s)
        }),
    ));
    v
}

/// Writes `value` as `{tmp}/p.json`.
fn json_file(c: &Ctx, value: &serde_json::Value) -> std::path::PathBuf {
    let path = c.path("p.json");
    std::fs::write(&path, value.to_string()).expect("json file");
    path
}

fn protocol_case(
    class: &'static str,
    name: &str,
    edit: fn(&mut serde_json::Value),
    mentions: &[&'static str],
) -> Case {
    Case::lib(
        class,
        &format!("Protocol::from_json_file/{name}"),
        err(mentions),
        Box::new(move |c: &Ctx| {
            let mut p = c.fx.protocol_json.clone();
            edit(&mut p);
            let protocol = fhn_solver::Protocol::from_json_file(json_file(c, &p)).map_err(s)?;
            protocol.validate().map_err(s)
        }),
    )
}

fn model_case(
    class: &'static str,
    name: &str,
    edit: fn(&mut serde_json::Value),
    mentions: &[&'static str],
) -> Case {
    Case::lib(
        class,
        &format!("ModelConfig/{name}"),
        err(mentions),
        Box::new(move |_: &Ctx| {
            let mut cfg = super::fixtures::tiny_fno();
            edit(&mut cfg);
            let cfg = ModelConfig::from_json(&cfg).map_err(s)?;
            let vars = SeededVarMap::new(0);
            build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))
                .map(drop)
                .map_err(s)
        }),
    )
}

fn train_config_case(
    class: &'static str,
    name: &str,
    value: serde_json::Value,
    mentions: &[&'static str],
) -> Case {
    Case::lib(
        class,
        &format!("TrainConfig/{name}"),
        err(mentions),
        Box::new(move |c: &Ctx| {
            let mut cfg: TrainConfig = serde_json::from_value(value.clone()).map_err(s)?;
            cfg.epochs = cfg.epochs.min(1);
            let model_cfg = ModelConfig::from_json(&super::fixtures::tiny_fno()).map_err(s)?;
            let vars = SeededVarMap::new(0);
            let model = build(&model_cfg, vars.var_builder(DType::F32, &Device::Cpu)).map_err(s)?;
            let splits = TensorDataset::load_splits(&c.fx.data).map_err(s)?;
            let mut trainer = Trainer::new(model, vars, cfg, &Device::Cpu).map_err(s)?;
            trainer
                .fit(&splits.train, &splits.val, None)
                .map(drop)
                .map_err(s)
        }),
    )
}

fn study_case(
    class: &'static str,
    name: &str,
    edit: fn(&mut serde_json::Value),
    mentions: &[&'static str],
) -> Case {
    Case::lib(
        class,
        &format!("StudyConfig::by_name_or_path/{name}"),
        err(mentions),
        Box::new(move |c: &Ctx| {
            let protocol: fhn_solver::Protocol =
                serde_json::from_value(c.fx.protocol_json.clone()).map_err(s)?;
            let study = no_eval::study::StudyConfig::quick().with_protocol(protocol);
            let mut v = serde_json::to_value(&study).map_err(s)?;
            edit(&mut v);
            let path = json_file(c, &v);
            no_eval::study::StudyConfig::by_name_or_path(&path.to_string_lossy())
                .map(drop)
                .map_err(s)
        }),
    )
}

/// Configuration parsers and validation.
fn configs() -> Vec<Case> {
    vec![
        protocol_case("typo", "unknown-key", |p| p["seeed"] = json!(1), &["seeed"]),
        protocol_case(
            "work",
            "n_samples-1e15",
            |p| p["train"]["n_samples"] = json!(1_000_000_000_000_000u64),
            &["n_samples|memory|size"],
        ),
        protocol_case(
            "size",
            "max_dx-1e-300",
            |p| p["resolution"] = json!({"kind": "auto", "max_dx": 1e-300, "max_dt": 0.5}),
            &["max_dx|memory|size"],
        ),
        protocol_case(
            "size",
            "output-nt-2^62",
            |p| p["output"]["nt"] = json!(1u64 << 62),
            &["nt|memory|size"],
        ),
        protocol_case(
            "small",
            "x0-outside-domain",
            |p| p["train"]["x0"] = json!({"law": "fixed", "value": -0.2}),
            &["x0"],
        ),
        protocol_case(
            "small",
            "t0-after-t_end",
            |p| p["validation"]["t0"] = json!({"law": "fixed", "value": 41.0}),
            &["t0"],
        ),
        protocol_case(
            "numbers",
            "pulse_width-negative",
            |p| p["pulse_width"] = json!(-1.0),
            &["width"],
        ),
        Case::lib(
            "shards",
            "Shard::new(3,3)",
            err(&["shard"]),
            Box::new(|_: &Ctx| fhn_solver::Shard::new(3, 3).map(drop).map_err(s)),
        ),
        Case::lib(
            "shards",
            "Shard::new(0,0)",
            err(&["shard"]),
            Box::new(|_: &Ctx| fhn_solver::Shard::new(0, 0).map(drop).map_err(s)),
        ),
        Case::lib(
            "shards",
            "Shard-parse-3/3",
            err(&["shard"]),
            Box::new(|_: &Ctx| "3/3".parse::<fhn_solver::Shard>().map(drop).map_err(s)),
        ),
        Case::lib(
            "valid",
            "Shard-parse-2/3",
            ok(),
            Box::new(|_: &Ctx| "2/3".parse::<fhn_solver::Shard>().map(drop).map_err(s)),
        ),
        model_case(
            "typo",
            "unknown-key",
            |c| c["hiden_channels"] = json!(4),
            &["hiden_channels"],
        ),
        model_case(
            "typo",
            "domain_padding-negative",
            |c| c["domain_padding"] = json!(-0.5),
            &["domain_padding"],
        ),
        model_case(
            "numbers",
            "hidden_channels-0",
            |c| c["hidden_channels"] = json!(0),
            &["hidden_channels|hidden"],
        ),
        model_case(
            "numbers",
            "n_modes-empty",
            |c| c["n_modes"] = json!([]),
            &["n_modes"],
        ),
        model_case(
            "numbers",
            "channel_mlp_expansion-negative",
            |c| c["channel_mlp_expansion"] = json!(-1.0),
            &["channel_mlp_expansion"],
        ),
        model_case(
            "typo",
            "unknown-architecture",
            |c| c["model"] = json!("unet"),
            &["unet"],
        ),
        Case::lib(
            "valid",
            "ModelConfig/tiny-fno-builds",
            ok(),
            Box::new(|_: &Ctx| {
                let cfg = ModelConfig::from_json(&super::fixtures::tiny_fno()).map_err(s)?;
                build(
                    &cfg,
                    SeededVarMap::new(0).var_builder(DType::F32, &Device::Cpu),
                )
                .map(drop)
                .map_err(s)
            }),
        ),
        train_config_case(
            "typo",
            "unknown-key",
            json!({"learning_rate": 0.1}),
            &["learning_rate"],
        ),
        train_config_case(
            "typo",
            "unknown-optimizer-key",
            json!({"optimizer": {"lr": 0.001, "momentum": 0.9}}),
            &["momentum"],
        ),
        train_config_case(
            "nan",
            "lr-negative",
            json!({"optimizer": {"lr": -0.001}}),
            &["lr"],
        ),
        train_config_case("nan", "lr-0", json!({"optimizer": {"lr": 0.0}}), &["lr"]),
        train_config_case(
            "nan",
            "eps-0-beta2-1",
            json!({"optimizer": {"eps": 0.0, "beta2": 1.0}}),
            &["eps|beta2"],
        ),
        train_config_case(
            "numbers",
            "batch_size-0",
            json!({"batch_size": 0}),
            &["batch_size"],
        ),
        Case::lib(
            "nan",
            "TrainConfig/lr-NaN-in-struct",
            err(&["lr"]),
            Box::new(|c: &Ctx| {
                let mut cfg = TrainConfig {
                    epochs: 1,
                    ..TrainConfig::default()
                };
                cfg.optimizer.lr = f64::NAN;
                let model_cfg = ModelConfig::from_json(&super::fixtures::tiny_fno()).map_err(s)?;
                let vars = SeededVarMap::new(0);
                let model =
                    build(&model_cfg, vars.var_builder(DType::F32, &Device::Cpu)).map_err(s)?;
                let splits = TensorDataset::load_splits(&c.fx.data).map_err(s)?;
                let mut trainer = Trainer::new(model, vars, cfg, &Device::Cpu).map_err(s)?;
                trainer
                    .fit(&splits.train, &splits.val, None)
                    .map(drop)
                    .map_err(s)
            }),
        ),
        Case::lib(
            "resume",
            "Trainer::resume/other-lr",
            err(&["lr"]),
            Box::new(|c: &Ctx| {
                let ckpt =
                    no_models::Checkpoint::read(&c.fx.checkpoint, &Device::Cpu).map_err(s)?;
                let stored = ckpt.training.as_ref().and_then(|t| t.train_config.clone());
                let mut cfg: TrainConfig = match stored {
                    Some(v) => serde_json::from_value(v).map_err(s)?,
                    None => TrainConfig::default(),
                };
                cfg.optimizer.lr = 0.5;
                cfg.epochs = 2;
                let mut trainer =
                    Trainer::resume(&c.fx.checkpoint, &Device::Cpu, Some(cfg)).map_err(s)?;
                let splits = TensorDataset::load_splits(&c.fx.data).map_err(s)?;
                trainer
                    .fit(&splits.train, &splits.val, None)
                    .map(drop)
                    .map_err(s)
            }),
        ),
        study_case(
            "typo",
            "one-bad-field-is-named",
            |v| v["eval"]["map_samples"] = json!(-3),
            &["map_samples"],
        ),
        study_case(
            "typo",
            "unknown-key-is-named",
            |v| v["eval"]["map_sample"] = json!(3),
            &["map_sample"],
        ),
        study_case(
            "typo",
            "unknown-model-config-key-is-named",
            |v| v["models"][0]["config"]["n_layerz"] = json!(3),
            &["n_layerz"],
        ),
        Case::lib(
            "valid",
            "StudyConfig::by_name_or_path/quick",
            ok(),
            Box::new(|_: &Ctx| {
                no_eval::study::StudyConfig::by_name_or_path("quick")
                    .map(drop)
                    .map_err(s)
            }),
        ),
    ]
}

/// Every library case.
pub fn all() -> Vec<Case> {
    let mut v = loaders();
    v.extend(configs());
    v
}
