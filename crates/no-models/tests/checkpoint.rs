//! Checkpoints: bit-exact round trips for the three Fourier-family models, and clear
//! errors for every way a file can be wrong.

use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_models::checkpoint::{self, Checkpoint};
use no_models::data::{Normalizer, NormalizerKind};
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::{build, ModelConfig, ModelError, Normalizers};
use std::path::Path;

type R<T> = no_models::Result<T>;
/// Variable name and its values.
type Weights = Vec<(String, Vec<f32>)>;

fn tiny_configs() -> Vec<ModelConfig> {
    let fno = FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 6,
        n_layers: 2,
        ..FnoConfig::default()
    };
    vec![
        ModelConfig::Fno(fno.clone()),
        ModelConfig::Tfno(fno),
        ModelConfig::LocalNo(LocalNoConfig {
            n_modes: vec![4, 4],
            hidden_channels: 4,
            n_layers: 2,
            default_in_shape: [12, 12],
            ..LocalNoConfig::default()
        }),
    ]
}

fn sample_input() -> R<Tensor> {
    let z = Tensor::zeros((2, 1, 12, 12), DType::F32, &Device::Cpu)?;
    Ok(no_layers::gradcheck::random_like(&z, 9)?)
}

fn normalizers() -> Normalizers {
    Normalizers {
        input: Normalizer {
            kind: NormalizerKind::Gaussian,
            shift: vec![0.25],
            scale: vec![1.5],
        },
        output: Normalizer {
            kind: NormalizerKind::MinMax,
            shift: vec![-0.5, 0.0],
            scale: vec![2.0, 0.3],
        },
    }
}

fn save_tiny(cfg: &ModelConfig, path: &Path) -> R<(Tensor, Weights)> {
    let vars = SeededVarMap::new(3);
    let model = build(cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    let mut ckpt = Checkpoint::from_model(model.as_ref(), vars.varmap())?;
    ckpt.normalizers = Some(normalizers());
    ckpt.save(path)?;
    let out = model.forward(&sample_input()?)?;
    let weights = ckpt
        .weights
        .iter()
        .map(|(k, t)| Ok((k.clone(), t.flatten_all()?.to_vec1::<f32>()?)))
        .collect::<R<Vec<_>>>()?;
    Ok((out, weights))
}

#[test]
fn round_trip_is_bit_exact_for_every_fourier_model() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    for cfg in tiny_configs() {
        let path = dir.path().join(format!("{}.safetensors", cfg.name()));
        let (out, weights) = save_tiny(&cfg, &path)?;
        let loaded = checkpoint::load(&path, &Device::Cpu)?;
        assert_eq!(
            no_models::ModelConfig::from_model(loaded.model.as_ref())?,
            cfg
        );
        assert_eq!(loaded.normalizers, normalizers());
        let again = Checkpoint::from_model(loaded.model.as_ref(), loaded.vars.varmap())?;
        assert_eq!(again.weights.len(), weights.len());
        for (name, values) in &weights {
            let got = again.weights[name].flatten_all()?.to_vec1::<f32>()?;
            assert!(
                got.iter()
                    .zip(values)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{}: `{name}` differs after the round trip",
                cfg.name()
            );
        }
        let out2 = loaded.model.forward(&sample_input()?)?;
        assert_eq!(
            out.flatten_all()?.to_vec1::<f32>()?,
            out2.flatten_all()?.to_vec1::<f32>()?
        );
    }
    Ok(())
}

fn expect_file_error(path: &Path, needle: &str) {
    match checkpoint::load(path, &Device::Cpu) {
        Ok(_) => panic!(
            "{} loaded, expected an error mentioning {needle:?}",
            path.display()
        ),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                matches!(e, ModelError::File { .. }),
                "wrong error kind: {msg}"
            );
            assert!(
                msg.contains(needle),
                "error {msg:?} should mention {needle:?}"
            );
        }
    }
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_named() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = tiny_configs().remove(0);
    let good = dir.path().join("good.safetensors");
    save_tiny(&cfg, &good)?;

    let mut ckpt = Checkpoint::read(&good, &Device::Cpu)?;
    let removed = "projection.fcs.1.bias".to_string();
    assert!(ckpt.weights.remove(&removed).is_some());
    let missing = dir.path().join("missing.safetensors");
    ckpt.save(&missing)?;
    expect_file_error(&missing, "missing tensor `projection.fcs.1.bias`");

    let mut ckpt = Checkpoint::read(&good, &Device::Cpu)?;
    ckpt.weights.insert(
        "stray.weight".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu)?,
    );
    let extra = dir.path().join("extra.safetensors");
    ckpt.save(&extra)?;
    expect_file_error(&extra, "unexpected tensor `stray.weight`");

    let mut ckpt = Checkpoint::read(&good, &Device::Cpu)?;
    let mut config = ckpt.model_config()?;
    if let ModelConfig::Fno(c) = &mut config {
        c.hidden_channels = 5;
    }
    ckpt.config = config.to_json();
    let shape = dir.path().join("shape.safetensors");
    ckpt.save(&shape)?;
    expect_file_error(&shape, "the model expects");
    Ok(())
}

#[test]
fn truncated_foreign_and_garbage_files_are_clear_errors() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.safetensors");
    save_tiny(&tiny_configs().remove(1), &good)?;
    let bytes = std::fs::read(&good).expect("read");

    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() * 2 / 3]).expect("write");
    expect_file_error(&truncated, "truncated");

    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a checkpoint").expect("write");
    expect_file_error(&garbage, "not a readable safetensors file");

    let foreign = dir.path().join("foreign.safetensors");
    let t = Tensor::zeros((2, 2), DType::F32, &Device::Cpu)?;
    candle_core::safetensors::save(&[("w".to_string(), t)].into_iter().collect(), &foreign)?;
    expect_file_error(&foreign, "not a no-models checkpoint");

    match checkpoint::load(dir.path().join("absent.safetensors"), &Device::Cpu) {
        Err(ModelError::Io { .. }) => {}
        other => panic!("expected an I/O error, got {:?}", other.err()),
    }
    Ok(())
}

#[test]
fn loaded_model_predicts_in_physical_units() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let cfg = tiny_configs().remove(0);
    let path = dir.path().join("m.safetensors");
    save_tiny(&cfg, &path)?;
    let loaded = checkpoint::load(&path, &Device::Cpu)?;
    let x = sample_input()?;
    let n = normalizers();
    let by_hand = n
        .output
        .decode(&loaded.model.forward(&n.input.encode(&x)?)?)?;
    let got = loaded.predict_physical(&x)?;
    assert_eq!(
        got.flatten_all()?.to_vec1::<f32>()?,
        by_hand.flatten_all()?.to_vec1::<f32>()?
    );
    // The normalisers are not the identity, so this differs from the raw forward.
    let raw = loaded.model.forward(&x)?;
    assert!((got - raw)?.abs()?.max_all()?.to_scalar::<f32>()? > 1e-3);
    Ok(())
}
