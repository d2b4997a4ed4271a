//! The trainer: resume equals an uninterrupted run, non-finite losses stop with the
//! last good checkpoint kept, logs, best checkpoints and early stopping.

use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_models::checkpoint::{self, Checkpoint};
use no_models::fno::FnoConfig;
use no_models::train::{LogFormat, Schedule, TrainConfig, Trainer};
use no_models::{build, ModelConfig, ModelError, TensorDataset};
use std::path::Path;

type R<T> = no_models::Result<T>;

/// A smooth synthetic operator: the output channels are the input and a shifted,
/// squared copy of it.
fn synthetic(n: usize, seed: u64) -> R<TensorDataset> {
    let z = Tensor::zeros((n, 1, 12, 12), DType::F32, &Device::Cpu)?;
    let x = no_layers::gradcheck::random_like(&z, seed)?;
    let y1 = x.sqr()?;
    let y = Tensor::cat(&[(&x * 0.5)?, y1], 1)?;
    TensorDataset::new(x, y)
}

fn model_cfg() -> ModelConfig {
    ModelConfig::Fno(FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 6,
        n_layers: 2,
        ..FnoConfig::default()
    })
}

fn train_cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 3,
        schedule: Schedule::Step {
            step_size: 2,
            gamma: 0.5,
        },
        seed: 11,
        ..TrainConfig::default()
    }
}

fn trainer(epochs: usize) -> R<Trainer> {
    let vars = SeededVarMap::new(1);
    let model = build(&model_cfg(), vars.var_builder(DType::F32, &Device::Cpu))?;
    Trainer::new(model, vars, train_cfg(epochs), &Device::Cpu)
}

fn weights_bits(t: &Trainer) -> R<Vec<(String, Vec<u32>)>> {
    let ck = t.checkpoint()?;
    ck.weights
        .iter()
        .map(|(k, v)| {
            Ok((
                k.clone(),
                v.flatten_all()?
                    .to_vec1::<f32>()?
                    .iter()
                    .map(|x| x.to_bits())
                    .collect(),
            ))
        })
        .collect()
}

#[test]
fn resumed_run_equals_uninterrupted_run() -> R<()> {
    let (train, val) = (synthetic(7, 1)?, synthetic(3, 2)?);
    let dir = tempfile::tempdir().expect("temp dir");

    let mut full = trainer(4)?;
    let full_summary = full.fit(&train, &val, None)?;

    let mut first = trainer(2)?;
    first.fit(&train, &val, Some(dir.path()))?;
    let mut resumed = Trainer::resume(
        dir.path().join("last.safetensors"),
        &Device::Cpu,
        Some(train_cfg(4)),
    )?;
    assert_eq!(resumed.meta().epochs_completed, 2);
    let rest = resumed.fit(&train, &val, Some(dir.path()))?;

    assert_eq!(rest.history.len(), 2);
    for (a, b) in full_summary.history[2..].iter().zip(&rest.history) {
        assert_eq!(
            (a.epoch, a.train_loss, a.val_loss, a.lr),
            (b.epoch, b.train_loss, b.val_loss, b.lr)
        );
    }
    assert_eq!(weights_bits(&full)?, weights_bits(&resumed)?);
    assert_eq!(full.meta().steps, resumed.meta().steps);
    // Training did something.
    let h = &full_summary.history;
    assert!(h[3].train_loss < h[0].train_loss, "{h:?}");
    Ok(())
}

#[test]
fn non_finite_loss_names_epoch_and_batch_and_keeps_last_checkpoint() -> R<()> {
    let (train, val) = (synthetic(7, 1)?, synthetic(3, 2)?);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut t = trainer(1)?;
    t.fit(&train, &val, Some(dir.path()))?;
    let last = dir.path().join("last.safetensors");
    let before = std::fs::read(&last).expect("read last");

    // Sample 4 becomes NaN; the normalisers come from the checkpoint, so they stay finite.
    let mut x = train.inputs().clone();
    let nan = Tensor::full(f32::NAN, (1, 1, 12, 12), &Device::Cpu)?;
    x = Tensor::cat(&[x.narrow(0, 0, 4)?, nan, x.narrow(0, 5, 2)?], 0)?;
    let poisoned = TensorDataset::new(x, train.outputs().clone())?;
    let expected_batch = poisoned
        .epoch_batches(3, true, 11, 1)
        .iter()
        .position(|b| b.contains(&4))
        .expect("sample 4 is in some batch");

    let mut resumed = Trainer::resume(&last, &Device::Cpu, Some(train_cfg(3)))?;
    match resumed.fit(&poisoned, &val, Some(dir.path())) {
        Err(ModelError::NonFiniteLoss { epoch, batch, loss }) => {
            assert_eq!((epoch, batch), (1, expected_batch));
            assert!(!loss.is_finite());
        }
        other => panic!(
            "expected a non-finite loss error, got {:?}",
            other.map(|s| s.history)
        ),
    }
    assert_eq!(
        std::fs::read(&last).expect("read last"),
        before,
        "last checkpoint was modified"
    );
    let kept = checkpoint::load(&last, &Device::Cpu)?;
    assert_eq!(kept.training.map(|m| m.epochs_completed), Some(1));
    Ok(())
}

#[test]
fn logs_best_checkpoint_and_csv_header() -> R<()> {
    let (train, val) = (synthetic(6, 3)?, synthetic(2, 4)?);
    let dir = tempfile::tempdir().expect("temp dir");
    let vars = SeededVarMap::new(1);
    let model = build(&model_cfg(), vars.var_builder(DType::F32, &Device::Cpu))?;
    let cfg = TrainConfig {
        log_format: LogFormat::Csv,
        ..train_cfg(3)
    };
    let mut t = Trainer::new(model, vars, cfg, &Device::Cpu)?;
    let summary = t.fit(&train, &val, Some(dir.path()))?;
    let log = std::fs::read_to_string(dir.path().join("log.csv")).expect("log");
    let lines: Vec<&str> = log.lines().collect();
    assert_eq!(
        lines[0],
        "epoch,train_loss,val_loss,lr,wall_s,samples_per_s"
    );
    assert_eq!(lines.len(), 4);
    let best = Checkpoint::read(dir.path().join("best.safetensors"), &Device::Cpu)?;
    let meta = best.training.expect("training metadata");
    assert_eq!(meta.best_val, summary.best_val);
    assert!(best.optimizer.is_none() && best.normalizers.is_some());
    // The best checkpoint reproduces the best validation error.
    let loaded = checkpoint::load(dir.path().join("best.safetensors"), &Device::Cpu)?;
    let pred = loaded.predict_physical(val.inputs())?;
    let err = no_models::train::relative_l2_per_channel(&pred, val.outputs())?
        .mean(1)?
        .mean_all()?
        .to_scalar::<f32>()? as f64;
    let best_val = summary.best_val.expect("best val");
    assert!(
        (err - best_val).abs() < 1e-5 * best_val.max(1.0),
        "{err} vs {best_val}"
    );
    Ok(())
}

#[test]
fn early_stopping_stops_when_validation_stalls() -> R<()> {
    let (train, val) = (synthetic(4, 5)?, synthetic(2, 6)?);
    let vars = SeededVarMap::new(1);
    let model = build(&model_cfg(), vars.var_builder(DType::F32, &Device::Cpu))?;
    // A zero learning rate never improves on the first epoch's validation error.
    let mut cfg = train_cfg(20);
    cfg.optimizer.lr = 0.0;
    cfg.early_stopping_patience = Some(2);
    let mut t = Trainer::new(model, vars, cfg, &Device::Cpu)?;
    let s = t.fit(&train, &val, None)?;
    assert!(s.stopped_early);
    assert_eq!(s.history.len(), 3);
    assert_eq!(s.best_epoch, Some(0));
    Ok(())
}

#[test]
fn empty_sets_and_zero_batch_are_errors() -> R<()> {
    let vars = SeededVarMap::new(1);
    let model = build(&model_cfg(), vars.var_builder(DType::F32, &Device::Cpu))?;
    let cfg = TrainConfig {
        batch_size: 0,
        ..train_cfg(1)
    };
    assert!(Trainer::new(model, vars, cfg, &Device::Cpu).is_err());
    let mut t = trainer(1)?;
    let empty = synthetic(2, 1)?.take(0)?;
    assert!(t.fit(&empty, &synthetic(2, 1)?, None::<&Path>).is_err());
    Ok(())
}
