//! Converts a neuraloperator 2.x FNO, TFNO or LocalNO into a project checkpoint.
//!
//! ```text
//! cargo run --release --example import_neuralop -- --state-dict SD.safetensors --config FNO.json --out MODEL.safetensors
//! ```
//!
//! `SD.safetensors`: the model's `state_dict` tensors, complex ones as
//! `torch.view_as_real`, neuraloperator's key names (see docs/checkpoints.md for the
//! three lines of Python). `FNO.json`: `{"model": "FNO", "n_modes": [16, 16], ...}` with
//! the constructor arguments under their neuraloperator names.

use anyhow::Result;
use clap::Parser;
use no_models::import::neuralop;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(about = "Import a neuraloperator FNO/TFNO/LocalNO")]
struct Args {
    /// The state_dict as safetensors.
    #[arg(long)]
    state_dict: PathBuf,
    /// Class name and constructor arguments (JSON).
    #[arg(long)]
    config: PathBuf,
    /// The checkpoint to write.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let loaded = neuralop::convert(&args.state_dict, &args.config, &args.out)?;
    let p = loaded.model.param_count();
    println!(
        "{}: {} parameters ({} real numbers) written to {}",
        loaded.model.architecture(),
        p.numel,
        p.real,
        args.out.display()
    );
    Ok(())
}
