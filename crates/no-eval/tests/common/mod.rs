//! The tiny study the integration tests share.
#![allow(dead_code)]

use fhn_solver::{OutputGrid, Protocol, Resolution};
use no_eval::latency::LatencyConfig;
use no_eval::report::Variant;
use no_eval::study::{budget, EvalConfig, ModelSpec, StudyConfig};
use no_models::cno::CnoConfig;
use no_models::deeponet::DeepOnetConfig;
use no_models::fno::FnoConfig;
use no_models::ModelConfig;

/// A study small enough for a test: a 20 × 20 grid, 8/6/6 samples, an FNO, a DeepONet
/// with augmentation and a CNO, 1–2 epochs each, one seed.
pub fn tiny() -> StudyConfig {
    let mut protocol = Protocol::quick();
    protocol.output = OutputGrid::with_size(20, 20);
    protocol.resolution = Resolution::Auto {
        max_dx: 1.0 / 95.0,
        max_dt: 0.1,
    };
    protocol.train.n_samples = 8;
    protocol.validation.n_samples = 6;
    protocol.test.n_samples = 6;
    let fno = FnoConfig {
        n_modes: vec![6, 6],
        hidden_channels: 6,
        n_layers: 1,
        ..FnoConfig::default()
    };
    let don = DeepOnetConfig {
        grid: [20, 20],
        branch_hidden: vec![12],
        trunk_hidden: vec![12],
        n_basis: 8,
        ..DeepOnetConfig::default()
    };
    let models = vec![
        ModelSpec {
            label: "fno".into(),
            variant: Variant::Paper,
            config: ModelConfig::Fno(fno.clone()),
            train: budget(2, 4, 1e-3, 1),
            seeds: None,
            input_sampling: None,
        },
        ModelSpec {
            label: "don+aug".into(),
            variant: Variant::Augmented,
            config: ModelConfig::Don(don),
            train: budget(2, 4, 1e-3, 1),
            seeds: None,
            input_sampling: None,
        },
        ModelSpec {
            label: "cno".into(),
            variant: Variant::Paper,
            config: ModelConfig::Cno(CnoConfig {
                n_layers: 1,
                n_res: 1,
                n_res_neck: 1,
                channel_multiplier: 4,
                latent_lift_proj_dim: 8,
                ..CnoConfig::default()
            }),
            train: budget(1, 4, 1e-3, 1),
            seeds: None,
            input_sampling: None,
        },
    ];
    let eval = EvalConfig {
        equivariance_samples: 3,
        time_shifts: vec![0.0, 4.0],
        space_shifts: vec![0.0, 0.1],
        fixed_time_shift: 4.0,
        fixed_space_shift: 0.1,
        latency: LatencyConfig {
            batch_sizes: vec![1, 32],
            warmup: 0,
            repeats: 1,
        },
        map_samples: 1,
        fine_grid: Some([39, 39]),
        fine_samples: 2,
        eval_batch: 4,
        ..EvalConfig::quick()
    };
    StudyConfig {
        protocol,
        models,
        eval,
        augment_max_delay: 10.0,
        seed: 3,
        seeds: 1,
    }
}
