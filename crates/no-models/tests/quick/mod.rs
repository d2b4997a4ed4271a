//! Shared helpers of the overfitting tests: 8 samples of the quick FHN dataset, and a
//! bounded training run with the library's `Trainer`.
//!
//! The samples come from `fhn_solver` (a dev-dependency only: the library itself reads
//! files), written to a safetensors file and read back through `TensorDataset::from_fhn_file`,
//! then subsampled 4× in t and x (100 × 100 → 25 × 25) to keep the tests fast on two cores.
//!
//! The error is the Trainer's own validation metric (evaluation mode, physical units):
//! the relative L2 `‖pred − y‖ / (‖y‖ + 1e-8)` per sample and per field (v, w), averaged,
//! as the Fourier-family tests use. A sub-threshold sample (stimulus too weak to start a
//! wave) would weigh heavily in it but does not make it ill-posed: its fields are the
//! decaying response to the stimulus, about 20× (v) and 40× (w) smaller in L2 than a
//! wave's (2 of the 128 quick training samples), far above the 1e-8. The first 8 samples
//! all carry a wave (field norms 9.4 to 10.8 on 25 × 25); [`samples`] asserts that
//! every field is clearly non-zero, so a change of protocol cannot make the metric
//! ill-conditioned silently.
#![allow(dead_code)]

use candle_core::{Device, Tensor};
use no_layers::init::SeededVarMap;
use no_models::train::{Schedule, TrainConfig, Trainer};
use no_models::{NeuralOperator, NormalizerKind, TensorDataset};

/// The result type of the tests.
pub type R<T> = no_models::Result<T>;

/// Number of samples the models overfit.
pub const N_SAMPLES: usize = 8;
/// Relative L2 to reach (issue 5: under 5%).
pub const TARGET: f64 = 0.05;
/// Subsampling of the 100 × 100 quick grid in t and x.
pub const STRIDE: usize = 4;
/// The grid after subsampling by [`STRIDE`].
pub const GRID: [usize; 2] = [25, 25];
/// Training runs in stages of this many steps and stops at the first stage that meets
/// the target (the Trainer continues a run exactly across stages).
const STAGE: usize = 25;
/// Per-field L2 norms below this (on the 25 × 25 grid) would make the relative error
/// ill-conditioned.
const MIN_FIELD_NORM: f64 = 1e-2;

/// The first [`N_SAMPLES`] training samples of the quick protocol, subsampled to [`GRID`].
pub fn samples() -> R<TensorDataset> {
    let mut protocol = fhn_solver::Protocol::quick();
    protocol.train.n_samples = N_SAMPLES;
    let data = fhn_solver::generate(&protocol, fhn_solver::Split::Train, None, false)
        .expect("generate quick samples");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("train.safetensors");
    data.save(&path).expect("save quick samples");
    let full = TensorDataset::from_fhn_file(&path)?;
    let every = |n: usize| {
        Tensor::from_vec(
            (0..n as u32).step_by(STRIDE).collect::<Vec<_>>(),
            n.div_ceil(STRIDE),
            &Device::Cpu,
        )
    };
    let sub = |t: &Tensor| -> R<Tensor> {
        let (nt, nx) = (t.dim(2)?, t.dim(3)?);
        Ok(t.index_select(&every(nt)?, 2)?
            .index_select(&every(nx)?, 3)?)
    };
    let data = TensorDataset::new(sub(full.inputs())?, sub(full.outputs())?)?;
    assert_eq!(data.len(), N_SAMPLES);
    assert_eq!(&data.outputs().dims()[2..], &GRID[..]);
    let norms = data
        .outputs()
        .sqr()?
        .flatten_from(2)?
        .sum(2)?
        .sqrt()?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let smallest = norms.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    assert!(
        f64::from(smallest) > MIN_FIELD_NORM,
        "a quick sample has a field of L2 norm {smallest}: relative L2 is ill-conditioned"
    );
    Ok(data)
}

/// What a bounded overfitting run reached.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// Best relative L2 on the training samples (evaluation mode, physical units).
    pub best: f64,
    /// Optimiser steps taken (one full batch per epoch).
    pub steps: usize,
    /// Training loss of the first epoch.
    pub first: f64,
}

/// Trains `model` (its variables in `vars`) on `data` with full batches, AdamW at `lr`
/// (no weight decay, cosine decay to lr/100 over `max_steps`) and the `normalizer` law,
/// stopping at the first stage whose best error is under [`TARGET`]. `OVERFIT_STEPS`
/// overrides `max_steps`, `OVERFIT_VERBOSE` prints the history.
pub fn overfit(
    model: Box<dyn NeuralOperator>,
    vars: SeededVarMap,
    data: &TensorDataset,
    lr: f64,
    max_steps: usize,
    normalizer: NormalizerKind,
) -> R<Outcome> {
    let t0 = std::time::Instant::now();
    let name = model.architecture().to_string();
    let steps: usize = std::env::var("OVERFIT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(max_steps);
    let mut tcfg = TrainConfig {
        epochs: steps,
        batch_size: data.len(),
        schedule: Schedule::Cosine {
            t_max: steps,
            eta_min: lr * 0.01,
        },
        normalizer,
        ..TrainConfig::default()
    };
    tcfg.optimizer.lr = lr;
    tcfg.optimizer.weight_decay = 0.0;
    let mut trainer = Trainer::new(model, vars, tcfg, &Device::Cpu)?;
    let mut history = Vec::new();
    let mut best = f64::INFINITY;
    for stage in 1..=steps.div_ceil(STAGE) {
        trainer.set_epochs((STAGE * stage).min(steps));
        let summary = trainer.fit(data, data, None)?;
        history.extend(summary.history);
        best = summary.best_val.unwrap_or(f64::INFINITY);
        if best < TARGET {
            break;
        }
    }
    if std::env::var("OVERFIT_VERBOSE").is_ok() {
        for r in history.iter().step_by(10) {
            eprintln!(
                "{name} epoch {} train {:.4} val {:.4}",
                r.epoch, r.train_loss, r.val_loss
            );
        }
    }
    let outcome = Outcome {
        best,
        steps: history.len(),
        first: history.first().map_or(f64::NAN, |r| r.train_loss),
    };
    eprintln!(
        "{name}: relative L2 {:.4} after {} steps (from {:.4}) in {:.1?}",
        outcome.best,
        outcome.steps,
        outcome.first,
        t0.elapsed()
    );
    Ok(outcome)
}

/// Asserts that a run met [`TARGET`] within `max_steps`.
pub fn assert_overfits(name: &str, outcome: Outcome, max_steps: usize) {
    assert!(
        outcome.best < TARGET && outcome.steps <= max_steps,
        "{name}: best relative L2 {:.4} after {} steps (limit {max_steps}, started at {:.4})",
        outcome.best,
        outcome.steps,
        outcome.first
    );
}
