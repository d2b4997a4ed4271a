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
//! POD-DeepONet's grid taken from the data. `--train-config` is a `TrainConfig` JSON; the
//! flags override it. OUT receives `last.safetensors`, `best.safetensors` and `log.jsonl`.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device};
use clap::Parser;
use no_layers::init::SeededVarMap;
use no_models::pod::{PodBasis, PodDeepOnet};
use no_models::train::{TrainConfig, Trainer};
use no_models::{build, ModelConfig, NeuralOperator, Normalizers, TensorDataset};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Train a neural operator on FHN data")]
struct Args {
    /// cno, don, don_cnn, pod_don, fno, tfno or local_no.
    #[arg(long)]
    model: String,
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
    /// Seed of the weights and the shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Continue from a checkpoint written by a previous run.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Hide the progress bar.
    #[arg(long)]
    quiet: bool,
}

fn model_config(args: &Args, train: &TensorDataset) -> Result<ModelConfig> {
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
    obj.entry("model")
        .or_insert_with(|| args.model.clone().into());
    let dims = train.inputs().dims();
    let (nt, nx) = (dims[2], dims[3]);
    if args.config.is_none() {
        match args.model.as_str() {
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
    if cfg.name() != args.model {
        bail!(
            "--model {} but the config describes {}",
            args.model,
            cfg.name()
        );
    }
    Ok(cfg)
}

fn main() -> Result<()> {
    // candle allocates per op; keep freed buffers instead of re-faulting them (see docs).
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    let device = Device::Cpu;
    let splits = TensorDataset::load_splits(&args.data)?;
    let mut tcfg: TrainConfig = match &args.train_config {
        Some(p) => serde_json::from_str(&std::fs::read_to_string(p)?)?,
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
    tcfg.seed = args.seed;
    tcfg.progress = !args.quiet;

    let mut trainer = match &args.resume {
        Some(ckpt) => Trainer::resume(ckpt, &device, Some(tcfg.clone()))?,
        None => {
            let cfg = model_config(&args, &splits.train)?;
            let vars = SeededVarMap::new(args.seed);
            let vb = vars.var_builder(DType::F32, &device);
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
            Trainer::new(model, vars, tcfg.clone(), &device)?
        }
    };
    let summary = trainer.fit(&splits.train, &splits.val, Some(&args.out))?;
    for r in &summary.history {
        println!(
            "epoch {:4}  train {:.5}  val {:.5}  lr {:.2e}  {:.1} s  {:.1} samples/s",
            r.epoch, r.train_loss, r.val_loss, r.lr, r.wall_s, r.samples_per_s
        );
    }
    if let Some(test) = &splits.test {
        println!(
            "test relative L2 (last weights): {:.5}",
            trainer.evaluate(test)?
        );
    }
    println!(
        "best validation {:.5} at epoch {:?}{}; checkpoints in {}",
        summary.best_val.unwrap_or(f64::NAN),
        summary.best_epoch,
        if summary.stopped_early {
            " (early stop)"
        } else {
            ""
        },
        args.out.display()
    );
    Ok(())
}
