//! Runs any checkpoint on a `[B, C_in, nt, nx]` array and writes the prediction.
//!
//! ```text
//! cargo run --release --example infer -- --checkpoint MODEL.safetensors --input X.npy --out Y.npy
//! ```
//!
//! The input is in physical units (f32 or f64 `.npy`); the checkpoint's normalisers are
//! applied on the way in and inverted on the way out. A `[C_in, nt, nx]` array is taken
//! as one sample.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Predict with a trained neural operator")]
struct Args {
    /// Checkpoint written by the trainer or by import_neuralop.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Input array (.npy), [B, C_in, nt, nx].
    #[arg(long)]
    input: PathBuf,
    /// Output array (.npy), [B, C_out, nt, nx], f32.
    #[arg(long)]
    out: PathBuf,
    /// Samples per forward pass.
    #[arg(long, default_value_t = 16)]
    batch_size: usize,
}

fn main() -> Result<()> {
    // candle allocates per op; keep freed buffers instead of re-faulting them (see docs).
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    let device = Device::Cpu;
    let loaded = no_models::checkpoint::load(&args.checkpoint, &device)?;
    let x = Tensor::read_npy(&args.input)
        .with_context(|| format!("reading {}", args.input.display()))?
        .to_dtype(DType::F32)?;
    let x = if x.rank() == 3 { x.unsqueeze(0)? } else { x };
    anyhow::ensure!(
        x.rank() == 4,
        "input must be [B, C_in, nt, nx], got {:?}",
        x.dims()
    );
    let n = x.dim(0)?;
    let mut parts = Vec::new();
    let t0 = std::time::Instant::now();
    // No autograd graph: the model rebuilt over detached views of its weights.
    let twin = loaded.inference()?;
    for start in (0..n).step_by(args.batch_size.max(1)) {
        let len = args.batch_size.max(1).min(n - start);
        parts.push(loaded.predict_physical_with(twin.as_ref(), &x.narrow(0, start, len)?)?);
    }
    let y = Tensor::cat(&parts, 0)?;
    y.write_npy(&args.out)
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!(
        "{}: {:?} -> {:?} in {:.3} s, written to {}",
        loaded.model.architecture(),
        x.dims(),
        y.dims(),
        t0.elapsed().as_secs_f64(),
        args.out.display()
    );
    Ok(())
}
