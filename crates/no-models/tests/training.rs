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

    // Sample 4 becomes huge (finite, so the data check passes, but the forward overflows);
    // the normalisers come from the checkpoint, so they stay finite.
    let mut x = train.inputs().clone();
    let nan = Tensor::full(f32::MAX, (1, 1, 12, 12), &Device::Cpu)?;
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
    // A learning rate far below f32 resolution leaves the weights, hence the validation
    // error, unchanged after the first epoch (a zero rate is refused).
    let mut cfg = train_cfg(20);
    cfg.optimizer.lr = 1e-30;
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

#[test]
fn invalid_settings_are_refused_naming_the_field() -> R<()> {
    let build_with = |cfg: TrainConfig| {
        let vars = SeededVarMap::new(1);
        let model = build(&model_cfg(), vars.var_builder(DType::F32, &Device::Cpu))?;
        Trainer::new(model, vars, cfg, &Device::Cpu).map(|_| ())
    };
    let mut nan_lr = train_cfg(1);
    nan_lr.optimizer.lr = f64::NAN;
    let err = build_with(nan_lr).unwrap_err().to_string();
    assert_eq!(
        err,
        "invalid training setting `optimizer.lr` = NaN: expected a finite number > 0"
    );
    let mut eps = train_cfg(1);
    (eps.optimizer.eps, eps.optimizer.beta2) = (0.0, 1.0);
    let err = build_with(eps).unwrap_err().to_string();
    assert!(err.contains("optimizer.beta2"), "{err}");
    Ok(())
}

#[test]
fn non_finite_data_and_validation_are_errors() -> R<()> {
    let (train, val) = (synthetic(5, 1)?, synthetic(3, 2)?);
    // A NaN target in the validation set: named by split, sample and index.
    let mut ys = val.outputs().flatten_all()?.to_vec1::<f32>()?;
    let per_sample = 2 * 12 * 12;
    ys[per_sample + 12 * 12 + 3 * 12 + 5] = f32::NAN;
    let poisoned = TensorDataset::new(
        val.inputs().clone(),
        Tensor::from_vec(ys, (3, 2, 12, 12), &Device::Cpu)?,
    )?;
    let err = trainer(1)?
        .fit(&train, &poisoned, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the validation set holds a non-finite target value NaN at sample 1, index [1, 3, 5] (channel, t, x); every input and target must be finite"
    );
    // Weights that overflow give an infinite validation error: refused, naming the epoch.
    let mut t = trainer(1)?;
    let big = Tensor::full(1e30f32, (3, 1, 12, 12), &Device::Cpu)?;
    let huge_val = TensorDataset::new(big, val.outputs().clone())?;
    match t.fit(&train, &huge_val, None) {
        Err(ModelError::Training(no_models::train::TrainError::NonFiniteValidation {
            epoch,
            ..
        })) => assert_eq!(epoch, 0),
        other => panic!(
            "expected a non-finite validation error, got {:?}",
            other.map(|s| s.best_val)
        ),
    }
    Ok(())
}

#[test]
fn empty_split_message() -> R<()> {
    let empty = synthetic(2, 1)?.take(0)?;
    let err = trainer(1)?
        .fit(&synthetic(3, 1)?, &empty, None)
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        "the validation set is empty: it needs at least one sample"
    );
    assert!(trainer(1)?.evaluate(&empty).is_err());
    Ok(())
}
