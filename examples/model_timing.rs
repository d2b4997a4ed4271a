//! Times one model's forward pass or training step in a plain loop, for profiling.
//!
//! ```text
//! cargo run --release --example model_timing -- --model fno --work train --batch 32 --grid 100
//! cargo run --release --example model_timing -- --config cno.json --work forward --batch 8 --grid 50
//! perf record -g target/release/examples/model_timing --model fno --work train --repeats 3
//! ```
//!
//! Builds the model from its default configuration (`--model`) or a `ModelConfig` JSON
//! file (`--config`, e.g. one entry of a benchmark's `study.json`), draws a seeded random
//! input `[B, C_in, grid, grid]` and target, runs one untimed warm-up, then prints each
//! timed repeat and the fastest. `train` is forward + MSE + backward + the trainer's AdamW
//! step, the work of the criterion benches. The criterion benches (`cargo bench --bench
//! models`) are the reference figures; this program is for quick looks and for `perf`.
//! POD-DON needs a basis fitted on training outputs: here, as in the bench, 64 modes per
//! output fitted on 128 seeded random output fields.

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::{Parser, ValueEnum};
use fhn_neural_operators::cli::{
    at_least, ensure_fits, mem_available_bytes, seeded_randn, tensor_bytes,
};
use no_layers::init::SeededVarMap;
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet};
use no_models::train::{mse_loss, AdamW, AdamWParams};
use no_models::{build, ModelConfig, NeuralOperator};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Work {
    /// One forward pass.
    Forward,
    /// One inference call (`NeuralOperator::predict`: DeepONets reuse their trunk).
    Predict,
    /// One forward through the inference twin (`no_models::inference_twin`: no autograd
    /// graph, the work PyTorch does under `torch.no_grad()`; DeepONets reuse their trunk
    /// from the warm-up on).
    Infer,
    /// Forward, MSE loss, backward and one AdamW step.
    Train,
}

#[derive(Parser, Debug)]
#[command(about = "Time a model's forward pass or training step")]
struct Args {
    /// Architecture at its default configuration (cno, don, don_cnn, pod_don, fno, tfno,
    /// local_no); ignored when --config is given.
    #[arg(long, default_value = "fno")]
    model: String,
    /// A `ModelConfig` JSON file (with its `"model"` tag).
    #[arg(long)]
    config: Option<PathBuf>,
    /// What to time.
    #[arg(long, value_enum, default_value = "train")]
    work: Work,
    /// Batch size.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Grid size (nt = nx); must match the grid a DeepONet-family config was built for.
    #[arg(long, default_value_t = 100)]
    grid: usize,
    /// Input channels of the model (the study: 1, the applied current).
    #[arg(long, default_value_t = 1)]
    in_channels: usize,
    /// Output channels of the model (the study: 2, v and w).
    #[arg(long, default_value_t = 2)]
    out_channels: usize,
    /// Timed repeats after the warm-up.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
}

fn config(args: &Args) -> Result<ModelConfig> {
    if let Some(path) = &args.config {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        return serde_json::from_str(&text)
            .with_context(|| format!("{} is not a model configuration", path.display()));
    }
    let tagged = format!("{{\"model\": \"{}\"}}", args.model);
    serde_json::from_str(&tagged).with_context(|| format!("unknown model `{}`", args.model))
}

fn main() -> Result<()> {
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    at_least("batch", args.batch, 1)?;
    at_least("grid", args.grid, 2)?;
    at_least("repeats", args.repeats, 1)?;
    at_least("in-channels", args.in_channels, 1)?;
    at_least("out-channels", args.out_channels, 1)?;
    // The input and target, and POD-DON's 128 fitted outputs: a lower bound of the memory
    // the timing needs, computed before anything is allocated.
    let what = format!("--batch {} --grid {}", args.batch, args.grid);
    let (b, g, c) = (args.batch, args.grid, args.in_channels + args.out_channels);
    let bytes = tensor_bytes(&what, &[&[b, c, g, g], &[128, args.out_channels, g, g]], 4)?;
    ensure_fits(&what, bytes, mem_available_bytes())?;
    let cfg = config(&args)?;
    let vars = SeededVarMap::new(0);
    let vb = vars.var_builder(DType::F32, &Device::Cpu);
    let (c_in, c_out) = (args.in_channels, args.out_channels);
    let model: Box<dyn NeuralOperator> = match &cfg {
        ModelConfig::PodDon(pod) if pod.modes.is_empty() => {
            let outputs = seeded_randn((128, c_out, args.grid, args.grid), "pod-outputs")?;
            let basis = PodBasis::fit(&outputs, PodCriterion::Count(64))?;
            Box::new(PodDeepOnet::from_basis(pod, &basis, vb)?)
        }
        _ => build(&cfg, vb)?,
    };
    let x = seeded_randn((args.batch, c_in, args.grid, args.grid), "x")?;
    let y = seeded_randn((args.batch, c_out, args.grid, args.grid), "y")?;
    let twin = no_models::inference_twin(model.as_ref(), vars.varmap())?;
    let mut opt = AdamW::new(vars.varmap(), AdamWParams::default())?;
    let mut run = || -> Result<()> {
        match args.work {
            Work::Forward => drop(model.forward(&x)?),
            Work::Predict => drop(model.predict(&x)?),
            Work::Infer => drop(twin.forward(&x)?),
            // On a pool thread, as `Trainer` runs its steps (`no_layers::threads`).
            Work::Train => no_layers::threads::on_worker_for(x.device(), || -> Result<()> {
                let loss = mse_loss(&model.forward_t(&x, true)?, &y)?;
                opt.backward_step(&loss)?;
                Ok(())
            })?,
        }
        Ok(())
    };
    let start = Instant::now();
    run()?;
    println!("warm-up: {:.3} ms", start.elapsed().as_secs_f64() * 1e3);
    let mut best = f64::INFINITY;
    for r in 0..args.repeats {
        let start = Instant::now();
        run()?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        best = best.min(ms);
        println!("repeat {r}: {ms:.3} ms");
    }
    println!(
        "{:?} at batch {} on {}×{}: fastest {best:.3} ms ({} parameters)",
        args.work,
        args.batch,
        args.grid,
        args.grid,
        model.param_count().numel
    );
    Ok(())
}
