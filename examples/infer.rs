//! Runs any checkpoint on a `[B, C_in, nt, nx]` array and writes the prediction.
//!
//! ```text
//! cargo run --release --example infer -- --checkpoint MODEL.safetensors --input X.npy --out Y.npy
//! ```
//!
//! The input is in physical units (little-endian f32 or f64 `.npy`, cast to the model's
//! dtype); the checkpoint's normalisers are applied on the way in and inverted on the way
//! out. A `[C_in, nt, nx]` array is taken as one sample. The header's shape is checked
//! against the file and the available memory before reading; a non-finite input or output
//! value is an error naming the sample and index; the output is written to a temporary
//! sibling and renamed, so a failed run leaves a previous output intact.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use no_models::inference::npy;
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
    check_args(&args)?;
    let device = Device::Cpu;
    let loaded = no_models::checkpoint::load(&args.checkpoint, &device)?;
    // The header is checked against the file's length and the available memory first.
    let x = npy::read(&args.input, &device)?;
    let x = if x.rank() == 3 { x.unsqueeze(0)? } else { x };
    anyhow::ensure!(
        x.rank() == 4,
        "{}: input must be [B, C_in, nt, nx] or [C_in, nt, nx], got shape {:?}",
        args.input.display(),
        x.dims()
    );
    let n = x.dim(0)?;
    anyhow::ensure!(
        n > 0,
        "{}: the input holds no samples (shape {:?}); expected at least one",
        args.input.display(),
        x.dims()
    );
    let t0 = std::time::Instant::now();
    // No autograd graph: the model rebuilt over detached views of its weights.
    let twin = loaded.inference()?;
    let mut parts = Vec::new();
    for start in (0..n).step_by(args.batch_size) {
        let len = args.batch_size.min(n - start);
        let part = loaded
            .predict_physical_with(twin.as_ref(), &x.narrow(0, start, len)?)
            .with_context(|| {
                format!(
                    "samples {start}..{} of {}",
                    start + len,
                    args.input.display()
                )
            })?;
        parts.push(part.to_dtype(DType::F32)?);
    }
    let y = Tensor::cat(&parts, 0)?;
    npy::write(&y, &args.out)?;
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

/// Refuses flags that cannot work before anything is loaded.
fn check_args(args: &Args) -> Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    for (flag, path) in [("--checkpoint", &args.checkpoint), ("--input", &args.input)] {
        anyhow::ensure!(
            !path.is_dir(),
            "{flag} {}: is a directory, expected a file",
            path.display()
        );
        anyhow::ensure!(path.is_file(), "{flag} {}: no such file", path.display());
    }
    let dir = match args.out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    anyhow::ensure!(
        dir.is_dir(),
        "--out {}: the directory {} does not exist",
        args.out.display(),
        dir.display()
    );
    anyhow::ensure!(
        !args.out.is_dir(),
        "--out {} is a directory; expected a file path",
        args.out.display()
    );
    for (flag, path) in [("--input", &args.input), ("--checkpoint", &args.checkpoint)] {
        let same = match (args.out.canonicalize(), path.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        anyhow::ensure!(
            !same,
            "--out {} is the same file as {flag}; write the prediction elsewhere",
            args.out.display()
        );
    }
    Ok(())
}
