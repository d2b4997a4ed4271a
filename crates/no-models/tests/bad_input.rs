//! Bad input through the public API: oversized configurations and array headers, typos and
//! out-of-range values in configurations, non-finite weights, normalisers and inputs,
//! corrupt checkpoints, and writes that fail. Each is an error that says what was wrong;
//! nothing is allocated for an absurd size.

use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_models::checkpoint::{self, Checkpoint};
use no_models::data::{Normalizer, NormalizerKind};
use no_models::fno::FnoConfig;
use no_models::inference::npy;
use no_models::{build, ModelConfig, ModelError, Normalizers, Registry};
use serde_json::json;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

type R<T> = no_models::Result<T>;

fn tiny_fno() -> ModelConfig {
    ModelConfig::Fno(FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 4,
        n_layers: 1,
        ..FnoConfig::default()
    })
}

fn message<T>(r: R<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

fn build_json(config: serde_json::Value) -> R<Box<dyn no_models::NeuralOperator>> {
    let vars = SeededVarMap::new(0);
    Registry::builtin().build(&config, vars.var_builder(DType::F32, &Device::Cpu))
}

/// A checkpoint of the tiny FNO, with `edit` applied before saving.
fn save_with(path: &Path, edit: impl FnOnce(&mut Checkpoint)) -> R<()> {
    let vars = SeededVarMap::new(1);
    let model = build(&tiny_fno(), vars.var_builder(DType::F32, &Device::Cpu))?;
    let mut ckpt = Checkpoint::from_model(model.as_ref(), vars.varmap())?;
    edit(&mut ckpt);
    ckpt.save(path)
}

#[test]
fn oversized_configs_are_memory_errors_before_allocation() -> R<()> {
    let t0 = Instant::now();
    for (field, value) in [
        ("hidden_channels", json!(100000)),
        ("n_layers", json!(1_000_000_000u64)),
    ] {
        let mut config = json!({"model": "fno", "n_modes": [16, 16], "hidden_channels": 32});
        config[field] = value;
        let err = build_json(config)
            .err()
            .expect("an oversized model must fail");
        assert!(matches!(err, ModelError::TooLarge { .. }), "{field}: {err}");
        assert!(err.to_string().contains("GiB"), "{err}");
    }
    for config in [
        json!({"model": "fno", "n_modes": [usize::MAX, 4]}),
        json!({"model": "cno", "n_layers": 16, "channel_multiplier": usize::MAX / 2}),
        json!({"model": "don", "grid": [usize::MAX, usize::MAX]}),
        json!({"model": "don_cnn", "grid": [1u64 << 40, 1u64 << 40]}),
        json!({"model": "pod_don", "grid": [1u64 << 40, 1u64 << 40], "modes": [4, 4]}),
        json!({"model": "local_no", "hidden_channels": 1u64 << 20, "default_in_shape": [1u64 << 30, 1u64 << 30], "n_modes": [4, 4]}),
    ] {
        let err = build_json(config.clone()).err().expect("must fail");
        assert!(
            matches!(err, ModelError::TooLarge { .. }),
            "{config}: {err}"
        );
    }
    // The same through a checkpoint's metadata.
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("big.safetensors");
    save_with(&path, |c| c.config["hidden_channels"] = json!(100000))?;
    let err = checkpoint::load(&path, &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(matches!(err, ModelError::TooLarge { .. }), "{err}");
    eprintln!("{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    Ok(())
}

/// Writes an `.npy` file with the given header dictionary and `data_len` zero data bytes.
fn npy_file(path: &Path, dict: &str, data_len: usize) {
    let mut header = dict.to_string();
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
    header.push('\n');
    let mut f = std::fs::File::create(path).expect("create");
    f.write_all(b"\x93NUMPY\x01\x00").expect("write");
    f.write_all(&(header.len() as u16).to_le_bytes())
        .expect("write");
    f.write_all(header.as_bytes()).expect("write");
    f.write_all(&vec![0u8; data_len]).expect("write");
}

#[test]
fn npy_headers_are_checked_before_allocation() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("x.npy");
    let t0 = Instant::now();
    for shape in [
        "(4611686018427387904, 1, 2, 2)",
        "(1000000, 1, 1000, 1000)",
        "(18446744073709551615, 2)",
    ] {
        npy_file(
            &path,
            &format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}"),
            16,
        );
        let msg = message(npy::read(&path, &Device::Cpu));
        assert!(
            msg.contains("the header claims shape") && msg.contains("holds 16 bytes"),
            "{msg}"
        );
        eprintln!("{msg}");
    }
    npy_file(
        &path,
        "{'descr': '>f4', 'fortran_order': False, 'shape': (2, 2), }",
        16,
    );
    let msg = message(npy::read(&path, &Device::Cpu));
    assert!(
        msg.contains("big-endian float32 ('>f4'); expected little-endian '<f4' or '<f8'"),
        "{msg}"
    );
    // A (sparse) file as long as its header claims, larger than the memory: refused by size.
    let huge: u64 = 1 << 42;
    npy_file(
        &path,
        "{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776,), }",
        0,
    );
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .expect("open");
    let header_len = f.metadata().expect("meta").len();
    if f.set_len(header_len + huge).is_ok() {
        let err = npy::read(&path, &Device::Cpu).expect_err("must fail");
        assert!(matches!(err, ModelError::TooLarge { .. }), "{err}");
    }
    assert!(t0.elapsed() < Duration::from_secs(5));
}

#[test]
fn npy_round_trip_and_failed_write_keeps_the_previous_file() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("y.npy");
    for dtype in [DType::F32, DType::F64] {
        let t = Tensor::arange(0f32, 24.0, &Device::Cpu)?
            .reshape((2, 3, 4))?
            .to_dtype(dtype)?;
        npy::write(&t, &path)?;
        let back = npy::read(&path, &Device::Cpu)?;
        assert_eq!(back.dtype(), dtype);
        assert_eq!(back.dims(), t.dims());
        let back = back.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?;
        assert_eq!(back, (0..24).map(f64::from).collect::<Vec<_>>());
    }
    let before = std::fs::read(&path).expect("read");
    // A target that cannot be replaced (a non-empty directory): the rename fails.
    let blocked = dir.path().join("blocked");
    std::fs::create_dir_all(blocked.join("inside")).expect("mkdir");
    let t = Tensor::zeros((1, 2), DType::F32, &Device::Cpu)?;
    assert!(npy::write(&t, &blocked).is_err());
    assert!(npy::write(&t, &dir.path().join("missing/y.npy")).is_err());
    assert_eq!(std::fs::read(&path).expect("read"), before);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "a temporary file was left behind: {names:?}"
    );
    Ok(())
}

#[test]
fn unknown_fields_suggest_the_valid_name_for_every_architecture() {
    for (model, typo, meant) in [
        ("fno", "hiden_channels", "hidden_channels"),
        ("tfno", "n_mode", "n_modes"),
        ("local_no", "disco_kernel_shap", "disco_kernel_shape"),
        ("cno", "channel_multipler", "channel_multiplier"),
        ("don", "branch_hiden", "branch_hidden"),
        ("don_cnn", "conv_chanels", "conv_channels"),
        ("pod_don", "branch_activaton", "branch_activation"),
    ] {
        let config = json!({"model": model, typo: 3});
        let msg = message(ModelConfig::from_json(&config));
        let want = format!("unknown field `{typo}` in the {model} config; did you mean `{meant}`?");
        assert!(msg.contains(&want), "{msg}");
        let msg = message(build_json(config));
        assert!(msg.contains(&want), "{msg}");
    }
    eprintln!(
        "{}",
        message(ModelConfig::from_json(
            &json!({"model": "fno", "hiden_channels": 3})
        ))
    );
}

#[test]
fn unknown_fields_in_a_checkpoint_config_are_errors() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("typo.safetensors");
    save_with(&path, |c| c.config["n_layer"] = json!(2))?;
    let msg = message(checkpoint::load(&path, &Device::Cpu));
    assert!(msg.contains("did you mean `n_layers`?"), "{msg}");
    Ok(())
}

#[test]
fn layer_configs_refuse_unknown_fields() {
    use no_layers::layers::{
        cno_activation::CnoActivationConfig, embedding::GridEmbeddingConfig,
        local::disco::DiscoConfig, local::finite_difference::FiniteDifferenceConfig,
        mlp::ChannelMlpConfig, padding::DomainPaddingConfig, skip::SkipConfig,
        spectral::conv::SpectralConvConfig,
    };
    fn refuses<T: serde::de::DeserializeOwned>(what: &str) {
        let err = serde_json::from_str::<T>(r#"{"no_such_field": 1}"#)
            .err()
            .unwrap_or_else(|| panic!("{what} accepted an unknown field"));
        assert!(
            err.to_string().contains("unknown field `no_such_field`"),
            "{what}: {err}"
        );
    }
    refuses::<CnoActivationConfig>("cno_activation");
    refuses::<GridEmbeddingConfig>("embedding");
    refuses::<DiscoConfig>("disco");
    refuses::<FiniteDifferenceConfig>("finite_difference");
    refuses::<ChannelMlpConfig>("mlp");
    refuses::<DomainPaddingConfig>("padding");
    refuses::<SkipConfig>("skip");
    refuses::<SpectralConvConfig>("spectral conv");
}

#[test]
fn out_of_range_values_are_refused() {
    for (config, needle) in [
        (
            json!({"model": "fno", "domain_padding": -0.5}),
            "domain_padding",
        ),
        (json!({"model": "fno", "n_modes": [0, 4]}), "n_modes"),
        (
            json!({"model": "fno", "hidden_channels": 0}),
            "hidden_channels",
        ),
        (json!({"model": "tfno", "n_layers": 0}), "n_layers"),
        (json!({"model": "tfno", "rank": {"fraction": 0.0}}), "rank"),
        (
            json!({"model": "local_no", "n_modes": [200, 4]}),
            "n_modes[0]",
        ),
        (
            json!({"model": "local_no", "domain_length": [0.0, 2.0]}),
            "domain_length",
        ),
        (
            json!({"model": "local_no", "radius_cutoff": -1.0}),
            "radius_cutoff",
        ),
        (json!({"model": "cno", "kernel_size": 4}), "kernel_size"),
        (json!({"model": "cno", "upsampling": 0}), "upsampling"),
        (json!({"model": "don", "n_basis": 0}), "n_basis"),
        (json!({"model": "don", "grid": [0, 10]}), "grid"),
    ] {
        let msg = message(build_json(config.clone()));
        assert!(msg.contains(needle), "{config}: {msg}");
    }
    let nan = ModelConfig::Cno(no_models::cno::CnoConfig {
        negative_slope: f64::NAN,
        ..Default::default()
    });
    let vars = SeededVarMap::new(0);
    let msg = message(build(&nan, vars.var_builder(DType::F32, &Device::Cpu)));
    assert!(msg.contains("negative_slope"), "{msg}");
}

#[test]
fn non_finite_weights_and_bad_normalisers_are_refused_on_load() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("nan.safetensors");
    save_with(&path, |c| {
        let (name, w) = c.weights.iter_mut().next().expect("a weight");
        let mut values = w
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("values");
        values[1] = f32::NAN;
        *w = Tensor::from_vec(values, w.dims(), &Device::Cpu).expect("tensor");
        eprintln!("poisoned {name}");
    })?;
    let err = checkpoint::load(&path, &Device::Cpu)
        .err()
        .expect("must fail");
    assert!(matches!(err, ModelError::NonFinite { .. }), "{err}");
    eprintln!("{err}");
    for (shift, scale) in [
        (0.0, 0.0),
        (f64::NAN, 1.0),
        (0.0, -1.0),
        (0.0, f64::INFINITY),
    ] {
        save_with(&path, |c| {
            c.normalizers = Some(Normalizers {
                input: Normalizer::identity(1),
                output: Normalizer {
                    kind: NormalizerKind::Gaussian,
                    shift: vec![0.0, shift],
                    scale: vec![1.0, scale],
                },
            })
        })?;
        let msg = message(checkpoint::load(&path, &Device::Cpu));
        // JSON has no NaN or infinity: those are written as null and refused as such.
        let named =
            msg.contains("output normaliser of channel 1") || msg.contains("bad `normalizers`");
        assert!(named, "{msg}");
    }
    Ok(())
}

#[test]
fn non_finite_inputs_are_refused_naming_sample_and_index() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.safetensors");
    save_with(&path, |_| {})?;
    let loaded = checkpoint::load(&path, &Device::Cpu)?;
    let mut values = vec![0.5f32; 2 * 8 * 8];
    values[64 + 8 * 3 + 5] = f32::NAN;
    let x = Tensor::from_vec(values, (2, 1, 8, 8), &Device::Cpu)?;
    let msg = message(loaded.predict_physical(&x));
    assert!(msg.contains("input sample 1 at index [0, 3, 5]"), "{msg}");
    eprintln!("{msg}");
    Ok(())
}

#[test]
fn a_flipped_data_byte_is_detected() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("flip.safetensors");
    save_with(&path, |_| {})?;
    let mut bytes = std::fs::read(&path).expect("read");
    let last = bytes.len() - 3;
    bytes[last] ^= 0x10;
    std::fs::write(&path, &bytes).expect("write");
    let msg = message(checkpoint::load(&path, &Device::Cpu));
    assert!(msg.contains("fails its checksum"), "{msg}");
    eprintln!("{msg}");
    Ok(())
}

#[test]
fn an_f64_checkpoint_predicts_from_f32_input() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("f64.safetensors");
    let vars = SeededVarMap::new(2);
    let model = build(&tiny_fno(), vars.var_builder(DType::F64, &Device::Cpu))?;
    Checkpoint::from_model(model.as_ref(), vars.varmap())?.save(&path)?;
    let loaded = checkpoint::load(&path, &Device::Cpu)?;
    let x = Tensor::ones((1, 1, 8, 8), DType::F32, &Device::Cpu)?;
    let y = loaded.predict_physical(&x)?;
    assert_eq!(y.dtype(), DType::F64);
    let want = model.forward(&x.to_dtype(DType::F64)?)?;
    assert_eq!(
        y.flatten_all()?.to_vec1::<f64>()?,
        want.flatten_all()?.to_vec1::<f64>()?
    );
    Ok(())
}

#[test]
fn failed_checkpoint_save_leaves_the_previous_file_and_no_temporary() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("m.safetensors");
    save_with(&path, |_| {})?;
    let before = std::fs::read(&path).expect("read");
    assert!(save_with(&path, |c| {
        c.weights.insert(
            "optimizer/x".into(),
            Tensor::zeros(1, DType::F32, &Device::Cpu).expect("t"),
        );
    })
    .is_err());
    let blocked = dir.path().join("dir.safetensors");
    std::fs::create_dir_all(blocked.join("inside")).expect("mkdir");
    assert!(save_with(&blocked, |_| {}).is_err());
    assert_eq!(std::fs::read(&path).expect("read"), before);
    assert_eq!(std::fs::read_dir(dir.path()).expect("ls").count(), 2);
    Ok(())
}
