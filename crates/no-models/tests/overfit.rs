//! Each Fourier-family model, on a tiny config, overfits 8 samples of the quick FHN
//! dataset to under 5% relative L2 within a bounded number of optimiser steps.
//!
//! The samples come from `fhn_solver` (a dev-dependency only: the library itself reads
//! files), written to a safetensors file and read back through `Dataset::from_fhn_file`,
//! then subsampled 4× in t and x (25 × 25) to keep the test fast on two cores.

use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_layers::tucker::TuckerRank;
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::train::{Schedule, TrainConfig, Trainer};
use no_models::{build, Dataset, ModelConfig};

type R<T> = no_models::Result<T>;

/// Optimiser steps allowed (one full batch of 8 per epoch).
const MAX_STEPS: usize = 300;
const TARGET: f64 = 0.05;
/// Subsampling of the 100 × 100 quick grid in t and x.
const STRIDE: usize = 4;

fn quick_samples() -> R<Dataset> {
    let mut protocol = fhn_solver::Protocol::quick();
    protocol.train.n_samples = 8;
    let data = fhn_solver::generate(&protocol, fhn_solver::Split::Train, None, false)
        .expect("generate quick samples");
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("train.safetensors");
    data.save(&path).expect("save quick samples");
    let full = Dataset::from_fhn_file(&path)?;
    let every_other = |n: usize| {
        Tensor::from_vec(
            (0..n as u32).step_by(STRIDE).collect::<Vec<_>>(),
            n.div_ceil(STRIDE),
            &Device::Cpu,
        )
    };
    let sub = |t: &Tensor| -> R<Tensor> {
        let (nt, nx) = (t.dim(2)?, t.dim(3)?);
        Ok(t.index_select(&every_other(nt)?, 2)?
            .index_select(&every_other(nx)?, 3)?)
    };
    Dataset::new(sub(full.inputs())?, sub(full.outputs())?)
}

fn overfit(cfg: ModelConfig, lr: f64) -> R<()> {
    let t0 = std::time::Instant::now();
    let data = quick_samples()?;
    assert_eq!(data.len(), 8);
    let steps: usize = std::env::var("OVERFIT_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(MAX_STEPS);
    eprintln!("data {:?}", t0.elapsed());
    let vars = SeededVarMap::new(0);
    let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    let mut tcfg = TrainConfig {
        epochs: steps,
        batch_size: 8,
        schedule: Schedule::Cosine {
            t_max: steps,
            eta_min: lr * 0.01,
        },
        ..TrainConfig::default()
    };
    tcfg.optimizer.lr = lr;
    tcfg.optimizer.weight_decay = 0.0;
    let mut trainer = Trainer::new(model, vars, tcfg, &Device::Cpu)?;
    // Train in stages of 25 steps (the run continues exactly) and stop once the target is met.
    let mut history = Vec::new();
    let mut best = f64::INFINITY;
    for stage in 1..=steps.div_ceil(25) {
        trainer.set_epochs((25 * stage).min(steps));
        let summary = trainer.fit(&data, &data, None)?;
        history.extend(summary.history);
        best = summary.best_val.expect("at least one epoch");
        if best < TARGET {
            break;
        }
    }
    eprintln!(
        "{} trained {} steps in {:?}",
        cfg.name(),
        history.len(),
        t0.elapsed()
    );
    let first = history[0].train_loss;
    if std::env::var("OVERFIT_VERBOSE").is_ok() {
        for r in history.iter().step_by(10) {
            eprintln!(
                "{} epoch {} train {:.4} val {:.4}",
                cfg.name(),
                r.epoch,
                r.train_loss,
                r.val_loss
            );
        }
    }
    assert!(
        best < TARGET,
        "{}: best relative L2 {best:.4} after {steps} steps (started at {first:.4})",
        cfg.name()
    );
    Ok(())
}

fn tiny_fno() -> FnoConfig {
    FnoConfig {
        n_modes: vec![8, 8],
        hidden_channels: 8,
        n_layers: 2,
        ..FnoConfig::default()
    }
}

#[test]
fn fno_overfits_eight_quick_samples() -> R<()> {
    overfit(ModelConfig::Fno(tiny_fno()), 2e-2)
}

#[test]
fn tfno_overfits_eight_quick_samples() -> R<()> {
    overfit(
        ModelConfig::Tfno(FnoConfig {
            rank: Some(TuckerRank::Fraction(1.0)),
            n_modes: vec![12, 12],
            hidden_channels: 16,
            ..tiny_fno()
        }),
        2e-2,
    )
}

#[test]
fn local_no_overfits_eight_quick_samples() -> R<()> {
    let cfg = LocalNoConfig {
        n_modes: vec![8, 8],
        hidden_channels: 8,
        n_layers: 2,
        default_in_shape: [25, 25],
        ..LocalNoConfig::default()
    };
    overfit(ModelConfig::LocalNo(cfg), 2e-2)
}
