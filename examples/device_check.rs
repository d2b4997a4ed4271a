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
//!
//! The comparisons run on the square `--grid` and again on the non-square `--grid2`
//! (default 100 × 51: sides of different parity, where candle's own strided `conv2d`
//! backward fails, which DeepONet-CNN's stride-2 convolutions would hit); the
//! DeepONet-family models are built for each grid. With `--composite` the CPU reference
//! runs on the composite path (`no_layers::ops::composite_only`: what a GPU runs), so
//! `--device cpu --composite` compares the fused CPU kernels with the composite forms for
//! all seven models on a machine without a GPU:
//!
//! ```text
//! cargo run --release --example device_check -- --device cpu --composite --dtype f64 --repeats 1
//! ```

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor, Var};
use clap::Parser;
use fhn_neural_operators::cli::{
    at_least, ensure_fits, mem_available_bytes, open_device, positive_finite, seeded_randn,
    tensor_bytes, DeviceArg,
};
use no_layers::init::SeededVarMap;
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet};
use no_models::train::{mse_loss, AdamW, AdamWParams};
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
    /// A second, non-square grid `NT,NX` compared too (sides of different parity by
    /// default); `0,0` skips it.
    #[arg(long, value_delimiter = ',', default_values_t = [100, 51])]
    grid2: Vec<usize>,
    /// Run the CPU reference on the composite path (what a GPU runs) instead of the
    /// fused CPU kernels.
    #[arg(long)]
    composite: bool,
    /// Precision of the comparisons. With `--composite` on the CPU, `f64` separates a wrong
    /// composite form from f32 rounding: one AdamW step moves each weight by about ±lr
    /// whatever the size of its gradient, so in f32 a near-zero gradient whose rounding
    /// differs between two summation orders can flip an update.
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Precision,
}

/// The floating-point type the models are built in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Precision {
    F32,
    F64,
}

impl Precision {
    fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::F64 => DType::F64,
        }
    }
}

/// The composite-path guard when `--composite` asks for it (the CPU reference runs
/// while it lives).
fn reference_path(composite: bool) -> Option<no_layers::ops::CompositeOnly> {
    composite.then(no_layers::ops::composite_only)
}

/// `cfg` with its grid set to `grid` (the DeepONet family is tied to its grid; LocalNO's
/// default input shape follows it).
fn on_grid(cfg: &ModelConfig, grid: [usize; 2]) -> ModelConfig {
    let mut cfg = cfg.clone();
    match &mut cfg {
        ModelConfig::Don(c) => c.grid = grid,
        ModelConfig::DonCnn(c) => c.grid = grid,
        ModelConfig::PodDon(c) => c.grid = grid,
        ModelConfig::LocalNo(c) => c.default_in_shape = grid,
        ModelConfig::Cno(_)
        | ModelConfig::Fno(_)
        | ModelConfig::Tfno(_)
        | ModelConfig::Causal(_) => {}
    }
    cfg
}

/// One model and its variables on one device.
struct Built {
    model: Box<dyn NeuralOperator>,
    vars: SeededVarMap,
}

fn build_on(cfg: &ModelConfig, grid: [usize; 2], dev: &Device, dtype: DType) -> Result<Built> {
    let cfg = &on_grid(cfg, grid);
    let vars = SeededVarMap::new(0);
    let vb = vars.var_builder(dtype, dev);
    let model: Box<dyn NeuralOperator> = match cfg {
        // Fitted on the CPU from the same seeded outputs for both devices.
        ModelConfig::PodDon(pod) if pod.modes.is_empty() => {
            let outputs =
                seeded_randn((128, 2, grid[0], grid[1]), "pod-outputs")?.to_dtype(dtype)?;
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
    let largest = |t: &Tensor| -> Result<f64> {
        Ok(t.abs()?
            .max_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    };
    let scale = largest(reference)?;
    let diff = largest(&(reference - other)?)?;
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
    composite: bool,
) -> Result<(f64, String)> {
    let loss = |b: &Built, x: &Tensor, y: &Tensor| -> Result<Tensor> {
        Ok(mse_loss(&b.model.forward_t(x, true)?, y)?)
    };
    let g_cpu = {
        let _path = reference_path(composite);
        loss(cpu, x.0, y.0)?.backward()?
    };
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
    composite: bool,
) -> Result<f64> {
    for (b, x, y, reference) in [(cpu, x.0, y.0, true), (dev, x.1, y.1, false)] {
        let _path = reference_path(composite && reference);
        let mut opt = AdamW::new(b.vars.varmap(), AdamWParams::default())?;
        let loss = mse_loss(&b.model.forward_t(x, true)?, y)?;
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
    let b = build_on(cfg, [grid, grid], dev, DType::F32)?;
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
        let loss = mse_loss(&b.model.forward_t(&x32, true)?, &y32)?;
        Ok(opt.backward_step(&loss)?)
    })?;
    Ok(format!("{fwd1:9.2} {inf1:9.2} {fwd32:9.2} {train32:9.2}"))
}

fn check(
    cfg: &ModelConfig,
    grid: [usize; 2],
    args: &Args,
    dev: &Device,
    dir: &std::path::Path,
) -> Result<bool> {
    let name = cfg.name();
    let dtype = args.dtype.dtype();
    let cpu = build_on(cfg, grid, &Device::Cpu, dtype)?;
    let gpu = build_on(cfg, grid, dev, dtype)?;
    let x = seeded_randn((args.batch, 1, grid[0], grid[1]), "x")?.to_dtype(dtype)?;
    let y = seeded_randn((args.batch, 2, grid[0], grid[1]), "y")?.to_dtype(dtype)?;
    let (xd, yd) = (x.to_device(dev)?, y.to_device(dev)?);
    let reference = {
        let _path = reference_path(args.composite);
        cpu.model.forward(&x)?
    };
    let forward = rel_diff(&reference, &gpu.model.forward(&xd)?)?;
    let twin = no_models::inference_twin(gpu.model.as_ref(), gpu.vars.varmap())?;
    let inference = rel_diff(&reference, &twin.forward(&xd)?)?;
    let path = dir.join(format!("{name}.safetensors"));
    no_models::checkpoint::save_model(&path, cpu.model.as_ref(), cpu.vars.varmap())?;
    let loaded = no_models::checkpoint::load(&path, dev)
        .with_context(|| format!("loading the {name} checkpoint onto {dev:?}"))?;
    let checkpoint = rel_diff(&reference, &loaded.model.forward(&xd)?)?;
    let (grad, grad_var) = worst_gradient(&cpu, &gpu, (&x, &xd), (&y, &yd), args.composite)?;
    let update = worst_update(&cpu, &gpu, (&x, &xd), (&y, &yd), args.composite)?;
    let ok = forward.max(inference).max(checkpoint) <= args.tol_forward
        && grad.max(update) <= args.tol_grad;
    println!(
        "{name:9} forward {forward:.1e}  inference {inference:.1e}  checkpoint {checkpoint:.1e}  \
         gradient {grad:.1e} ({grad_var})  AdamW step {update:.1e}  {}",
        if ok { "ok" } else { "FAILED" }
    );
    Ok(ok)
}

/// The grids to compare on, after checking every flag: batch and grids at least 1 and 2,
/// finite positive tolerances, and sizes whose tensors fit in the memory available
/// (computed with checked arithmetic before anything is allocated).
fn checked_grids(args: &Args) -> Result<Vec<[usize; 2]>> {
    at_least("batch", args.batch, 1)?;
    at_least("grid", args.grid, 2)?;
    positive_finite("tol-forward", args.tol_forward)?;
    positive_finite("tol-grad", args.tol_grad)?;
    let mut grids = vec![[args.grid, args.grid]];
    match args.grid2[..] {
        [0, 0] => {}
        [nt, nx] if nt >= 2 && nx >= 2 => grids.push([nt, nx]),
        _ => bail!(
            "--grid2 {}: expected NT,NX (each at least 2), or 0,0 to skip it",
            args.grid2
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
    let value_bytes = args.dtype.dtype().size_in_bytes();
    let available = mem_available_bytes();
    for (flag, [nt, nx]) in [("--grid", grids[0])]
        .into_iter()
        .chain(grids.get(1).map(|g| ("--grid2", *g)))
    {
        // The comparison's input and target, the POD basis's 128 fitted outputs and the
        // timings' batch-32 input and target, each on this grid: a lower bound of the
        // memory the check needs (the models' activations come on top).
        let what = format!("{flag} {nt},{nx} at batch {}", args.batch);
        let bytes = tensor_bytes(
            &what,
            &[
                &[args.batch, 3, nt, nx],
                &[128, 2, nt, nx],
                &[32, 3, nt, nx],
            ],
            value_bytes,
        )?;
        ensure_fits(&what, bytes, available)?;
    }
    Ok(grids)
}

fn main() -> Result<()> {
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    let grids = checked_grids(&args)?;
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
    let reference = if args.composite {
        "the CPU's composite path"
    } else {
        "the CPU"
    };
    let mut failed = Vec::new();
    for grid in grids {
        println!(
            "{:?} against {reference}, batch {} on {}×{} (relative to the largest reference value):",
            dev, args.batch, grid[0], grid[1]
        );
        for cfg in &configs {
            if !check(cfg, grid, &args, &dev, &dir)? {
                failed.push(format!("{} ({}×{})", cfg.name(), grid[0], grid[1]));
            }
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
