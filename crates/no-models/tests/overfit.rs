//! Each Fourier-family model, on a tiny config, overfits 8 samples of the quick FHN
//! dataset to under 5% relative L2 within a bounded number of optimiser steps.
//!
//! The samples and the training run are shared with the part-2 models (`quick`): 8 quick
//! training samples, subsampled 4× in t and x (25 × 25), trained with the library's
//! `Trainer` (full batch, AdamW, cosine decay, Gaussian normalisation).

mod quick;

use candle_core::{DType, Device};
use no_layers::init::SeededVarMap;
use no_layers::layers::spectral::tucker::TuckerRank;
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::{build, ModelConfig, NormalizerKind};

/// Optimiser steps allowed (one full batch of 8 per step).
const MAX_STEPS: usize = 300;

fn overfit(cfg: ModelConfig, lr: f64) -> quick::R<()> {
    let data = quick::samples()?;
    let vars = SeededVarMap::new(0);
    let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    let outcome = quick::overfit(model, vars, &data, lr, MAX_STEPS, NormalizerKind::Gaussian)?;
    quick::assert_overfits(cfg.name(), outcome, MAX_STEPS);
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
fn fno_overfits_eight_quick_samples() -> quick::R<()> {
    overfit(ModelConfig::Fno(tiny_fno()), 2e-2)
}

#[test]
fn tfno_overfits_eight_quick_samples() -> quick::R<()> {
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
fn local_no_overfits_eight_quick_samples() -> quick::R<()> {
    let cfg = LocalNoConfig {
        n_modes: vec![8, 8],
        hidden_channels: 8,
        n_layers: 2,
        default_in_shape: quick::GRID,
        ..LocalNoConfig::default()
    };
    overfit(ModelConfig::LocalNo(cfg), 2e-2)
}
