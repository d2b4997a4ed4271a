//! Trains one model on a dataset directory written by `generate_dataset`.
//!
//! ```text
//! cargo run --release --example train -- --model fno --data DIR --out DIR \
//!     [--config model.json] [--train-config train.json] [--epochs N] [--batch-size B] \
//!     [--lr LR] [--seed S] [--resume OUT/last.safetensors]
//! ```
//!
//! `--config` is a `ModelConfig` JSON (its `"model"` tag may be omitted: `--model` fills
//! it); without it the model's defaults are used, with LocalNO's `default_in_shape` and
//! POD-DeepONet's grid taken from the data. `--train-config` is a `TrainConfig` JSON (an
//! unknown field is an error naming the closest valid one); the flags override it. Every
//! setting is range-checked before anything is built. OUT receives `last.safetensors`,
//! `best.safetensors` and `log.jsonl`. DATA holds `SPLIT.safetensors` or the shards
//! `SPLIT.shard-I-of-N.safetensors` of `generate_dataset --shard` for each split.
//!
//! `--resume CKPT` continues the run stored in CKPT exactly: its model, training
//! configuration, optimiser state, schedule position and best-so-far. A flag not given
//! keeps the stored value; `--model`, `--batch-size`, `--lr`, `--seed` or a
//! `--train-config` field that contradicts the stored run is an error naming both values
//! (start a new run to change them), and so is a `--config` that differs from the stored
//! model configuration (an identical one is accepted). The only changes allowed are `--epochs` (a new total, at least the epochs
//! already done; reported) and `--quiet`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use fhn_neural_operators::cli::StopSignals;
use no_layers::init::SeededVarMap;
use no_models::data::Splits;
use no_models::pod::{PodBasis, PodDeepOnet};
use no_models::train::{parse_train_config, ResumeRequest, TrainConfig, TrainError, Trainer};
use no_models::{build, ModelConfig, NeuralOperator, Normalizers, Registry, TensorDataset};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Train a neural operator on FHN data")]
struct Args {
    /// cno, don, don_cnn, pod_don, fno, tfno or local_no (with --resume: optional, must
    /// match the checkpoint).
    #[arg(long, required_unless_present = "resume")]
    model: Option<String>,
    /// Directory with train*.safetensors and val*.safetensors.
    #[arg(long)]
    data: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Model configuration JSON.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Training configuration JSON.
    #[arg(long)]
    train_config: Option<PathBuf>,
    /// Number of epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Mini-batch size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Base learning rate.
    #[arg(long)]
    lr: Option<f64>,
    /// Seed of the weights and the shuffling (default: the training config's, else 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Continue from a checkpoint written by a previous run.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn model_config(args: &Args, model: &str, train: &TensorDataset) -> Result<ModelConfig> {
    let mut json = match &args.config {
        Some(p) => serde_json::from_str(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => serde_json::json!({}),
    };
    let obj = json
        .as_object_mut()
        .context("the model config must be a JSON object")?;
    obj.entry("model").or_insert_with(|| model.into());
    let dims = train.inputs().dims();
    let (nt, nx) = (dims[2], dims[3]);
    if args.config.is_none() {
        match model {
            "local_no" => {
                obj.insert("default_in_shape".into(), serde_json::json!([nt, nx]));
            }
            "pod_don" | "don" => {
                obj.insert("grid".into(), serde_json::json!([nt, nx]));
            }
            _ => {}
        }
    }
    let cfg: ModelConfig = serde_json::from_value(json).context("invalid model configuration")?;
    if cfg.name() != model {
        bail!("--model {model} but the config describes {}", cfg.name());
    }
    Ok(cfg)
}

/// The training configuration of a new run: the file (if any) with the flags applied.
fn new_run_config(args: &Args) -> Result<TrainConfig> {
    let mut tcfg = match &args.train_config {
        Some(p) => parse_train_config(
            &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
        )
        .with_context(|| format!("parsing {}", p.display()))?,
        None => TrainConfig::default(),
    };
    if let Some(e) = args.epochs {
        tcfg.epochs = e;
    }
    if let Some(b) = args.batch_size {
        tcfg.batch_size = b;
    }
    if let Some(lr) = args.lr {
        tcfg.optimizer.lr = lr;
    }
    if let Some(seed) = args.seed {
        tcfg.seed = seed;
    }
    tcfg.progress = !args.quiet;
    tcfg.validate()?;
    Ok(tcfg)
}

/// A trainer continuing `ckpt` under the resume rule (see the module documentation).
fn resumed_trainer(
    args: &Args,
    ckpt: &std::path::Path,
    splits: &Splits,
    device: &Device,
) -> Result<Trainer> {
    let train_config = match &args.train_config {
        Some(p) => Some(
            parse_train_config(
                &std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?,
            )
            .with_context(|| format!("parsing {}", p.display()))?,
        ),
        None => None,
    };
    let request = ResumeRequest {
        model: args.model.clone(),
        train_config,
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        seed: args.seed,
        progress: Some(!args.quiet),
    };
    let resumed = Trainer::resume_request(ckpt, &Registry::builtin(), device, &request)?;
    if let Some(path) = &args.config {
        // A --config equal to the stored one is no change; any other is a contradiction.
        let stored = resumed.trainer.model().config_json();
        let name = stored["model"].as_str().unwrap_or_default().to_string();
        let requested = model_config(args, &name, &splits.train)?.to_json();
        if requested != stored {
            bail!(
                "--config {}: the model configuration differs from the one stored in {}; \
                 a resumed run keeps its stored configuration (stored {stored}, requested \
                 {requested}); start a new run to change it",
                path.display(),
                ckpt.display()
            );
        }
    }
    let done = resumed.trainer.meta().epochs_completed;
    eprintln!(
        "resuming {} after {done} epochs with its stored configuration",
        ckpt.display()
    );
    for note in &resumed.notes {
        eprintln!("  changed: {note}");
    }
    Ok(resumed.trainer)
}

/// A freshly initialised trainer for a new run.
fn new_trainer(args: &Args, splits: &Splits, device: &Device) -> Result<Trainer> {
    let tcfg = new_run_config(args)?;
    let name = args.model.as_deref().context("--model is required")?;
    let cfg = model_config(args, name, &splits.train)?;
    let vars = SeededVarMap::new(tcfg.seed);
    let vb = vars.var_builder(DType::F32, device);
    let model: Box<dyn NeuralOperator> = match &cfg {
        // The POD basis is fitted on the (normalised) training outputs.
        ModelConfig::PodDon(c) => {
            let norm = Normalizers::fit(tcfg.normalizer, &splits.train)?;
            let y = norm.output.encode(splits.train.outputs())?;
            let basis = PodBasis::fit(&y, c.criterion)?;
            Box::new(PodDeepOnet::from_basis(c, &basis, vb)?)
        }
        _ => build(&cfg, vb)?,
    };
    let p = model.param_count();
    eprintln!(
        "{}: {} parameters ({} real numbers)",
        cfg.name(),
        p.numel,
        p.real
    );
    Ok(Trainer::new(model, vars, tcfg, device)?)
}

fn main() -> Result<()> {
    // candle allocates per op; keep freed buffers instead of re-faulting them (see docs).
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    let device = Device::Cpu;
    let splits = TensorDataset::load_splits(&args.data)?;
    let mut trainer = match &args.resume {
        Some(ckpt) => resumed_trainer(&args, ckpt, &splits, &device)?,
        None => new_trainer(&args, &splits, &device)?,
    };
    let signals = StopSignals::install()?;
    trainer.set_stop_flag(signals.stop.clone());
    let summary = match trainer.fit(&splits.train, &splits.val, Some(&args.out)) {
        Err(no_models::ModelError::Training(e @ TrainError::Interrupted { .. })) => {
            eprintln!("train: {e}");
            if trainer.meta().epochs_completed > 0 {
                eprintln!(
                    "train: stopped by a signal; continue with --resume {}",
                    args.out.join("last.safetensors").display()
                );
            } else {
                eprintln!("train: stopped by a signal before the first epoch ended; nothing saved");
            }
            std::process::exit(signals.exit_status());
        }
        other => other?,
    };
    for r in &summary.history {
        println!(
            "epoch {:4}  train {:.5}  val {:.5}  lr {:.2e}  {:.1} s  {:.1} samples/s",
            r.epoch, r.train_loss, r.val_loss, r.lr, r.wall_s, r.samples_per_s
        );
    }
    if summary.history.is_empty() {
        println!(
            "nothing trained: the run already has {} of {} epochs{}; no checkpoint written",
            trainer.meta().epochs_completed,
            trainer.config().epochs,
            if summary.stopped_early {
                " (early stop)"
            } else {
                ""
            },
        );
        return Ok(());
    }
    if let Some(test) = &splits.test {
        test.check_finite("test")?;
        println!(
            "test relative L2 (last weights): {:.5}",
            trainer.evaluate(test)?
        );
    }
    let (Some(best_val), Some(best_epoch)) = (summary.best_val, summary.best_epoch) else {
        bail!("training ran but recorded no best validation error");
    };
    println!(
        "best validation {best_val:.5} at epoch {best_epoch}{}; checkpoints in {}",
        if summary.stopped_early {
            " (early stop)"
        } else {
            ""
        },
        args.out.display()
    );
    Ok(())
}
