//! The main job: generate the data, train the models, evaluate them and write `results/`.
//!
//! ```text
//! cargo run --release --example benchmark                       # quick protocol, all models
//! cargo run --release --example benchmark -- --protocol default # the full-size study
//! cargo run --release --example benchmark -- --models fno,cno --out results-fno-cno
//! cargo run --release --example benchmark -- --remedies none    # paper setting only
//! cargo run --release --features cuda --example benchmark -- --device cuda
//! ```
//!
//! `--protocol` takes `quick` (the embedded default), `default` (the paper-sized study) or a
//! JSON file holding a `no_eval::study::StudyConfig` (or only an `fhn_solver::Protocol`,
//! used with the quick models). The run's full configuration is written to
//! `OUT/study.json`, so any run can be edited and replayed with `--protocol OUT/study.json`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use fhn_neural_operators::cli::{open_device, positive_finite, DeviceArg};
use no_eval::report::Variant;
use no_eval::study::{run, StudyConfig};

/// Which of the two remedies beside the paper's setting to run.
#[derive(Debug, Clone, Copy, PartialEq, ValueEnum)]
enum Remedies {
    /// Models without absolute positional inputs and delay augmentation.
    All,
    /// Only models without absolute positional inputs.
    NoPositional,
    /// Only delay augmentation.
    Augmentation,
    /// The paper's setting only.
    None,
}

#[derive(Debug, Parser)]
#[command(about = "Train and evaluate the seven neural operators on the FHN translation benchmark")]
struct Args {
    /// `quick`, `default`, or a study/protocol JSON file.
    #[arg(long, default_value = "quick")]
    protocol: String,
    /// Comma-separated model labels or architectures (cno, don, don_cnn, pod_don, fno, tfno,
    /// local_no, fno-nopos, fno+aug, don+aug); all when absent.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    /// Where the models run.
    #[arg(long, value_enum, default_value = "cpu")]
    device: DeviceArg,
    /// Output directory.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// Which remedies to run beside the paper's setting.
    #[arg(long, value_enum, default_value = "all")]
    remedies: Remedies,
    /// Multiply every model's epoch budget by this factor (e.g. 0.2 for a smoke run).
    #[arg(long)]
    epoch_scale: Option<f64>,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    // candle allocates per op; keep freed buffers instead of re-faulting them (see docs).
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    let start = Instant::now();
    let mut cfg = StudyConfig::by_name_or_path(&args.protocol)
        .with_context(|| format!("reading --protocol {}", args.protocol))?;
    match args.remedies {
        Remedies::All => {}
        Remedies::NoPositional => cfg.models.retain(|m| m.variant != Variant::Augmented),
        Remedies::Augmentation => cfg.models.retain(|m| m.variant != Variant::NoPositional),
        Remedies::None => cfg.paper_only(),
    }
    if let Some(names) = &args.models {
        cfg.restrict(names)?;
    }
    if cfg.models.is_empty() {
        bail!(
            "no model left to train with --remedies {:?} and --models {}",
            args.remedies,
            args.models.as_deref().unwrap_or_default().join(",")
        );
    }
    if let Some(f) = args.epoch_scale {
        positive_finite("epoch-scale", f)?;
        for m in &mut cfg.models {
            m.train.epochs = ((m.train.epochs as f64 * f).round() as usize).max(1);
            if let no_models::train::Schedule::Cosine { t_max, .. } = &mut m.train.schedule {
                *t_max = m.train.epochs;
            }
        }
    }
    let dev = open_device(args.device)?;
    let name = std::path::Path::new(&args.protocol)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("custom")
        .to_string();
    let results = run(&cfg, &name, &dev, &args.out, !args.quiet)?;
    let secs = start.elapsed().as_secs_f64();
    println!("{}", no_eval::report::markdown::ranking_paragraph(&results));
    println!(
        "Wrote {} ({} models) in {:.1} s ({:.1} min).",
        args.out.join("report.md").display(),
        results.models.len(),
        secs,
        secs / 60.0
    );
    Ok(())
}
