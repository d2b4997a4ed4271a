//! `train --resume` continues the stored run exactly, for every architecture: N epochs,
//! a stop, and M more from `last.safetensors` give bit-identical weights, optimiser
//! moments, step counts, schedule position, best-so-far and log records to N + M epochs
//! in one go, with a non-default stored configuration (lr 0.05, batch 4) that the resume
//! keeps; a request contradicting it is refused with both values named.

use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_models::cno::CnoConfig;
use no_models::deeponet::{DeepOnetCnnConfig, DeepOnetConfig};
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet, PodDeepOnetConfig};
use no_models::train::{
    AdamWParams, EpochRecord, LossKind, ResumeRequest, Schedule, TrainConfig, TrainError, Trainer,
};
use no_models::{build, Checkpoint, ModelConfig, ModelError, Normalizers, Registry, TensorDataset};
use std::path::Path;

type R<T> = no_models::Result<T>;

const GRID: usize = 8;

fn synthetic(n: usize, seed: u64) -> R<TensorDataset> {
    let z = Tensor::zeros((n, 1, GRID, GRID), DType::F32, &Device::Cpu)?;
    let x = no_layers::gradcheck::random_like(&z, seed)?;
    let y = Tensor::cat(&[(&x * 0.5)?, x.sqr()?], 1)?;
    TensorDataset::new(x, y)
}

/// The stored, non-default configuration a resume must keep.
fn stored_cfg(epochs: usize) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 4,
        optimizer: AdamWParams {
            lr: 0.05,
            ..AdamWParams::default()
        },
        schedule: Schedule::Step {
            step_size: 1,
            gamma: 0.7,
        },
        loss: LossKind::PooledRelativeL2,
        seed: 5,
        ..TrainConfig::default()
    }
}

fn tiny_configs() -> Vec<ModelConfig> {
    let fno = FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 4,
        n_layers: 1,
        ..FnoConfig::default()
    };
    vec![
        ModelConfig::Cno(CnoConfig {
            n_layers: 1,
            n_res: 1,
            n_res_neck: 1,
            channel_multiplier: 2,
            latent_lift_proj_dim: 4,
            ..Default::default()
        }),
        ModelConfig::Don(DeepOnetConfig {
            grid: [GRID, GRID],
            branch_hidden: vec![8],
            trunk_hidden: vec![8],
            n_basis: 6,
            ..Default::default()
        }),
        ModelConfig::DonCnn(DeepOnetCnnConfig {
            grid: [GRID, GRID],
            conv_channels: vec![3, 4],
            branch_hidden: vec![6],
            trunk_hidden: vec![6],
            n_basis: 6,
            ..Default::default()
        }),
        ModelConfig::PodDon(PodDeepOnetConfig {
            grid: [GRID, GRID],
            branch_hidden: vec![8],
            criterion: PodCriterion::Count(3),
            ..Default::default()
        }),
        ModelConfig::Fno(fno.clone()),
        ModelConfig::Tfno(fno),
        ModelConfig::LocalNo(LocalNoConfig {
            n_modes: vec![4, 4],
            hidden_channels: 4,
            n_layers: 1,
            default_in_shape: [GRID, GRID],
            ..LocalNoConfig::default()
        }),
    ]
}

fn new_trainer(cfg: &ModelConfig, train: &TensorDataset, epochs: usize) -> R<Trainer> {
    let tcfg = stored_cfg(epochs);
    let vars = SeededVarMap::new(tcfg.seed);
    let vb = vars.var_builder(DType::F32, &Device::Cpu);
    let model = match cfg {
        ModelConfig::PodDon(c) => {
            let norm = Normalizers::fit(tcfg.normalizer, train)?;
            let basis = PodBasis::fit(&norm.output.encode(train.outputs())?, c.criterion)?;
            Box::new(PodDeepOnet::from_basis(c, &basis, vb)?)
        }
        _ => build(cfg, vb)?,
    };
    Trainer::new(model, vars, tcfg, &Device::Cpu)
}

/// Every tensor of a checkpoint (weights and optimiser moments) as raw bits, by name.
fn state_bits(t: &Trainer) -> R<Vec<(String, Vec<u32>)>> {
    let ck = t.checkpoint()?;
    let opt = ck.optimizer.expect("optimizer state");
    let named = ck
        .weights
        .iter()
        .map(|(k, v)| (format!("w/{k}"), v))
        .chain(opt.m.iter().map(|(k, v)| (format!("m/{k}"), v)))
        .chain(opt.v.iter().map(|(k, v)| (format!("v/{k}"), v)));
    let mut out = Vec::new();
    for (k, v) in named {
        let bits = v
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .map(|x| x.to_bits())
            .collect();
        out.push((k, bits));
    }
    out.push(("opt/step".into(), vec![opt.step as u32]));
    Ok(out)
}

fn numbers(h: &[EpochRecord]) -> Vec<(usize, u64, u64, u64)> {
    h.iter()
        .map(|r| {
            (
                r.epoch,
                r.train_loss.to_bits(),
                r.val_loss.to_bits(),
                r.lr.to_bits(),
            )
        })
        .collect()
}

fn resume_request(epochs: usize) -> ResumeRequest {
    ResumeRequest {
        epochs: Some(epochs),
        lr: Some(0.05),
        ..ResumeRequest::default()
    }
}

fn check_architecture(cfg: &ModelConfig) -> R<()> {
    let (train, val) = (synthetic(6, 1)?, synthetic(3, 2)?);
    let (n, m) = (1, 1);
    let mut full = new_trainer(cfg, &train, n + m)?;
    let full_history = full.fit(&train, &val, None)?.history;

    let dir = tempfile::tempdir().expect("temp dir");
    new_trainer(cfg, &train, n)?.fit(&train, &val, Some(dir.path()))?;
    let last = dir.path().join("last.safetensors");
    let registry = Registry::builtin();
    let resumed = Trainer::resume_request(&last, &registry, &Device::Cpu, &resume_request(n + m))?;
    assert_eq!(
        resumed.notes,
        vec![format!("epochs: {n} -> {} (training extended)", n + m)]
    );
    let mut t = resumed.trainer;
    assert_eq!(
        t.config(),
        &stored_cfg(n + m),
        "{}: stored configuration kept",
        cfg.name()
    );
    let rest = t.fit(&train, &val, Some(dir.path()))?.history;

    let name = cfg.name();
    assert_eq!(
        numbers(&full_history[n..]),
        numbers(&rest),
        "{name}: epoch records"
    );
    assert_eq!(
        state_bits(&full)?,
        state_bits(&t)?,
        "{name}: weights and moments"
    );
    let full_meta = full.checkpoint()?.training;
    assert_eq!(
        full_meta,
        t.checkpoint()?.training,
        "{name}: training state"
    );
    let written = Checkpoint::read(&last, &Device::Cpu)?;
    // Not compared whole: serde_json (without its `float_roundtrip` feature) may parse the
    // stored `best_val` one ulp off; the in-memory states above are compared bit for bit.
    let (w, f) = (written.training.expect("meta"), full_meta.expect("meta"));
    assert_eq!(
        (w.epochs_completed, w.steps),
        (f.epochs_completed, f.steps),
        "{name}"
    );
    Ok(())
}

#[test]
fn resume_is_bit_identical_for_cno_and_deeponets() -> R<()> {
    for cfg in &tiny_configs()[..4] {
        check_architecture(cfg)?;
    }
    Ok(())
}

#[test]
fn resume_is_bit_identical_for_fourier_models() -> R<()> {
    for cfg in &tiny_configs()[4..] {
        check_architecture(cfg)?;
    }
    Ok(())
}

fn checkpoint_of_fno(dir: &Path) -> R<std::path::PathBuf> {
    let train = synthetic(6, 1)?;
    let cfg = &tiny_configs()[4];
    new_trainer(cfg, &train, 1)?.fit(&train, &synthetic(2, 2)?, Some(dir))?;
    Ok(dir.join("last.safetensors"))
}

fn conflict(path: &Path, request: ResumeRequest) -> String {
    match Trainer::resume_request(path, &Registry::builtin(), &Device::Cpu, &request) {
        Err(e @ ModelError::Training(TrainError::ResumeConflict { .. })) => e.to_string(),
        Err(e) => panic!("expected a resume conflict, got {e}"),
        Ok(_) => panic!("expected a resume conflict, the resume was accepted"),
    }
}

#[test]
fn contradicting_requests_are_refused_naming_both_values() -> R<()> {
    let dir = tempfile::tempdir().expect("temp dir");
    let last = checkpoint_of_fno(dir.path())?;
    let err = conflict(
        &last,
        ResumeRequest {
            model: Some("cno".into()),
            ..ResumeRequest::default()
        },
    );
    assert_eq!(
        err,
        "cannot resume with --model = cno: the checkpoint's run has model fno; a resumed run keeps its stored configuration (only `epochs` may grow), start a new run to change it"
    );
    let err = conflict(
        &last,
        ResumeRequest {
            lr: Some(0.001),
            ..ResumeRequest::default()
        },
    );
    assert!(
        err.contains("--lr = 0.001") && err.contains("has 0.05"),
        "{err}"
    );
    let err = conflict(
        &last,
        ResumeRequest {
            batch_size: Some(16),
            ..ResumeRequest::default()
        },
    );
    assert!(
        err.contains("--batch-size = 16") && err.contains("has 4"),
        "{err}"
    );
    let mut other = stored_cfg(3);
    other.loss = LossKind::RelativeL2;
    let err = conflict(
        &last,
        ResumeRequest {
            train_config: Some(other),
            ..ResumeRequest::default()
        },
    );
    assert!(err.contains("train config `loss`"), "{err}");
    // The legacy entry point applies the same rule.
    let mut lr = stored_cfg(3);
    lr.optimizer.lr = 0.001;
    assert!(Trainer::resume(&last, &Device::Cpu, Some(lr)).is_err());
    // Going back before the epochs already done is an error too.
    let err = Trainer::resume_request(
        &last,
        &Registry::builtin(),
        &Device::Cpu,
        &ResumeRequest {
            epochs: Some(0),
            ..ResumeRequest::default()
        },
    )
    .err()
    .expect("epochs 0 refused")
    .to_string();
    assert!(err.contains("`epochs` = 0"), "{err}");
    Ok(())
}
