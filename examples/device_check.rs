//! Checks a GPU back end against the CPU for all seven operators, then times it.
//!
//! ```text
//! cargo run --release --features cuda --example device_check -- --device cuda
//! cargo run --release --features cuda --example device_check -- --device cuda --models fno,cno --grid 64
//! ```
//!
//! For each model, built twice from the same seed (the weights are drawn on the CPU by a
//! seeded Rust generator, so both copies are identical), it compares on one seeded input:
//! - the forward pass, the inference twin (no autograd graph) and a checkpoint written on
//!   the CPU and loaded onto the device, each against the CPU forward;
//! - the gradient of an MSE loss for every variable;
//! - the variables after one AdamW step.
//!
//! Each comparison is the largest absolute difference divided by the largest absolute CPU
//! value (of that output or variable). A model passes when the forward differences stay
//! under `--tol-forward` and the gradient and update differences under `--tol-grad`; the
//! program exits with an error if any model fails. Then it times, on the device, the
//! forward at batch 1 and 32, the inference twin at batch 1 and a training step at batch
//! 32 (fastest of `--repeats`, each ending with `Device::synchronize`). Built without a
//! GPU feature, `--device cuda` fails with a message saying which feature to enable.

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use fhn_neural_operators::cli::{open_device, seeded_randn, DeviceArg};
use no_layers::init::SeededVarMap;
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet};
use no_models::train::{AdamW, AdamWParams};
use no_models::{build, ModelConfig, NeuralOperator};
use std::time::Instant;

#[derive(Debug, Parser)]
#[command(about = "Compare a GPU back end with the CPU for every model, then time it")]
struct Args {
    /// The back end to check (`cpu` is a dry run: the CPU against itself).
    #[arg(long, value_enum, default_value = "cuda")]
    device: DeviceArg,
    /// Comma-separated architectures; all seven when absent.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cno,don,don_cnn,pod_don,fno,tfno,local_no"
    )]
    models: Vec<String>,
    /// Grid size (nt = nx); the DeepONet-family defaults are built for 100 only.
    #[arg(long, default_value_t = 100)]
    grid: usize,
    /// Batch of the comparisons.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Largest relative difference allowed for forward passes.
    #[arg(long, default_value_t = 1e-4)]
    tol_forward: f64,
    /// Largest relative difference allowed for gradients and updated variables.
    #[arg(long, default_value_t = 1e-3)]
    tol_grad: f64,
    /// Timed repeats (fastest reported); 0 skips the timings.
    #[arg(long, default_value_t = 20)]
    repeats: usize,
}

/// One model and its variables on one device.
struct Built {
    model: Box<dyn NeuralOperator>,
    vars: SeededVarMap,
}

fn build_on(cfg: &ModelConfig, grid: usize, dev: &Device) -> Result<Built> {
    let vars = SeededVarMap::new(0);
    let vb = vars.var_builder(DType::F32, dev);
    let model: Box<dyn NeuralOperator> = match cfg {
        // Fitted on the CPU from the same seeded outputs for both devices.
        ModelConfig::PodDon(pod) if pod.modes.is_empty() => {
            let outputs = seeded_randn((128, 2, grid, grid), "pod-outputs")?;
            let basis = PodBasis::fit(&outputs, PodCriterion::Count(64))?;
            Box::new(PodDeepOnet::from_basis(pod, &basis, vb)?)
        }
        _ => build(cfg, vb)?,
    };
    Ok(Built { model, vars })
}

/// max |a − b| / max |a|, with `a` the CPU reference.
fn rel_diff(reference: &Tensor, other: &Tensor) -> Result<f64> {
    let other = other.to_device(&Device::Cpu)?;
    let scale = reference.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    let diff = (reference - other)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
    Ok(diff / scale.max(f64::MIN_POSITIVE))
}

/// The variables by name, sorted, for pairing the two copies.
fn sorted_vars(vars: &SeededVarMap) -> Result<Vec<(String, Var)>> {
    let data = vars
        .varmap()
        .data()
        .lock()
        .map_err(|_| anyhow::anyhow!("variable map lock poisoned"))?;
    let mut all: Vec<(String, Var)> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(all)
}

/// The worst relative difference over all variables' gradients and the variable holding it.
fn worst_gradient(
    cpu: &Built,
    dev: &Built,
    x: (&Tensor, &Tensor),
    y: (&Tensor, &Tensor),
) -> Result<(f64, String)> {
    let loss = |b: &Built, x: &Tensor, y: &Tensor| -> Result<Tensor> {
        Ok((b.model.forward_t(x, true)? - y)?.sqr()?.mean_all()?)
    };
    let g_cpu = loss(cpu, x.0, y.0)?.backward()?;
    let g_dev = loss(dev, x.1, y.1)?.backward()?;
    let mut worst = (0.0, String::new());
    for ((name, v_cpu), (_, v_dev)) in sorted_vars(&cpu.vars)?
        .iter()
        .zip(sorted_vars(&dev.vars)?.iter())
    {
        let (Some(a), Some(b)) = (g_cpu.get(v_cpu.as_tensor()), g_dev.get(v_dev.as_tensor()))
        else {
            if g_cpu.get(v_cpu.as_tensor()).is_some() != g_dev.get(v_dev.as_tensor()).is_some() {
                bail!("`{name}` has a gradient on one device only");
            }
            continue;
        };
        let d = rel_diff(a, b)?;
        if d > worst.0 || worst.1.is_empty() {
            worst = (d, name.clone());
        }
    }
    Ok(worst)
}

/// The worst relative difference over all variables after one AdamW step on each copy.
fn worst_update(
    cpu: &Built,
    dev: &Built,
    x: (&Tensor, &Tensor),
    y: (&Tensor, &Tensor),
) -> Result<f64> {
    for (b, x, y) in [(cpu, x.0, y.0), (dev, x.1, y.1)] {
        let mut opt = AdamW::new(b.vars.varmap(), AdamWParams::default())?;
        let loss = (b.model.forward_t(x, true)? - y)?.sqr()?.mean_all()?;
        opt.backward_step(&loss)?;
    }
    let mut worst: f64 = 0.0;
    for ((_, a), (_, b)) in sorted_vars(&cpu.vars)?
        .iter()
        .zip(sorted_vars(&dev.vars)?.iter())
    {
        worst = worst.max(rel_diff(a.as_tensor(), b.as_tensor())?);
    }
    Ok(worst)
}

/// Fastest of `repeats` runs of `work`, in ms, each ending with a device synchronisation.
fn fastest(dev: &Device, repeats: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    work()?;
    dev.synchronize()?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats {
        let start = Instant::now();
        work()?;
        dev.synchronize()?;
        best = best.min(start.elapsed().as_secs_f64() * 1e3);
    }
    Ok(best)
}

fn timings(cfg: &ModelConfig, grid: usize, dev: &Device, repeats: usize) -> Result<String> {
    let b = build_on(cfg, grid, dev)?;
    let x1 = seeded_randn((1, 1, grid, grid), "x1")?.to_device(dev)?;
    let x32 = seeded_randn((32, 1, grid, grid), "x32")?.to_device(dev)?;
    let y32 = seeded_randn((32, 2, grid, grid), "y32")?.to_device(dev)?;
    let twin = no_models::inference_twin(b.model.as_ref(), b.vars.varmap())?;
    let fwd1 = fastest(dev, repeats, || {
        b.model.forward(&x1)?;
        Ok(())
    })?;
    let inf1 = fastest(dev, repeats, || {
        twin.forward(&x1)?;
        Ok(())
    })?;
    let fwd32 = fastest(dev, repeats, || {
        b.model.forward(&x32)?;
        Ok(())
    })?;
    let mut opt = AdamW::new(b.vars.varmap(), AdamWParams::default())?;
    let train32 = fastest(dev, repeats, || {
        let loss = (b.model.forward_t(&x32, true)? - &y32)?.sqr()?.mean_all()?;
        Ok(opt.backward_step(&loss)?)
    })?;
    Ok(format!("{fwd1:9.2} {inf1:9.2} {fwd32:9.2} {train32:9.2}"))
}

fn check(cfg: &ModelConfig, args: &Args, dev: &Device, dir: &std::path::Path) -> Result<bool> {
    let name = cfg.name();
    let cpu = build_on(cfg, args.grid, &Device::Cpu)?;
    let gpu = build_on(cfg, args.grid, dev)?;
    let x = seeded_randn((args.batch, 1, args.grid, args.grid), "x")?;
    let y = seeded_randn((args.batch, 2, args.grid, args.grid), "y")?;
    let (xd, yd) = (x.to_device(dev)?, y.to_device(dev)?);
    let reference = cpu.model.forward(&x)?;
    let forward = rel_diff(&reference, &gpu.model.forward(&xd)?)?;
    let twin = no_models::inference_twin(gpu.model.as_ref(), gpu.vars.varmap())?;
    let inference = rel_diff(&reference, &twin.forward(&xd)?)?;
    let path = dir.join(format!("{name}.safetensors"));
    no_models::checkpoint::save_model(&path, cpu.model.as_ref(), cpu.vars.varmap())?;
    let loaded = no_models::checkpoint::load(&path, dev)
        .with_context(|| format!("loading the {name} checkpoint onto {dev:?}"))?;
    let checkpoint = rel_diff(&reference, &loaded.model.forward(&xd)?)?;
    let (grad, grad_var) = worst_gradient(&cpu, &gpu, (&x, &xd), (&y, &yd))?;
    let update = worst_update(&cpu, &gpu, (&x, &xd), (&y, &yd))?;
    let ok = forward.max(inference).max(checkpoint) <= args.tol_forward
        && grad.max(update) <= args.tol_grad;
    println!(
        "{name:9} forward {forward:.1e}  inference {inference:.1e}  checkpoint {checkpoint:.1e}  \
         gradient {grad:.1e} ({grad_var})  AdamW step {update:.1e}  {}",
        if ok { "ok" } else { "FAILED" }
    );
    Ok(ok)
}

fn main() -> Result<()> {
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    if args.batch == 0 || args.grid < 2 {
        bail!("--batch must be positive and --grid at least 2");
    }
    let dev = open_device(args.device)?;
    let configs: Vec<ModelConfig> = args
        .models
        .iter()
        .map(|m| {
            serde_json::from_str(&format!("{{\"model\": \"{m}\"}}"))
                .with_context(|| format!("unknown model `{m}`"))
        })
        .collect::<Result<_>>()?;
    let dir = std::env::temp_dir().join(format!("device-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "{:?} against the CPU, batch {} on {}×{} (relative to the largest CPU value):",
        dev, args.batch, args.grid, args.grid
    );
    let mut failed = Vec::new();
    for cfg in &configs {
        if !check(cfg, &args, &dev, &dir)? {
            failed.push(cfg.name().to_string());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    if args.repeats > 0 {
        println!(
            "\n{:?} timings, ms (fastest of {}):\n{:9} {:>9} {:>9} {:>9} {:>9}",
            dev, args.repeats, "model", "fwd b1", "infer b1", "fwd b32", "train b32"
        );
        for cfg in &configs {
            println!(
                "{:9} {}",
                cfg.name(),
                timings(cfg, args.grid, &dev, args.repeats)?
            );
        }
    }
    if !failed.is_empty() {
        bail!("outside the tolerances on {dev:?}: {}", failed.join(", "));
    }
    Ok(())
}
