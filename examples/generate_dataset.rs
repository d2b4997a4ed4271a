//! Generates a benchmark dataset: `train.safetensors`, `val.safetensors`,
//! `test.safetensors` and `protocol.json` in `--out`.
//!
//! ```text
//! cargo run --release --example generate_dataset -- --protocol default --out data/default
//! ```
//! `--protocol` is `default`, `quick` or a JSON file; `--split` restricts to one split;
//! `--shard i/n` writes only the i-th of n slices (files `train.shard-i-of-n.safetensors`, for
//! cluster job arrays); `--threads` sets the rayon pool; `--npy` also writes `.npy` folders;
//! `--no-progress` hides the bars.
//!
//! Every file is written atomically (a temporary sibling renamed into place), and every
//! safetensors file carries the CRC-32 of each tensor (checked on load).
//!
//! A whole run (all splits, no `--shard`) is staged in a hidden sibling directory and renamed
//! to `--out` only once every file is written, so `--out` holds one complete dataset or is
//! untouched (an interrupted run leaves at most a `.NAME.staging-*` sibling, never a partial
//! `--out`). `--out` must not exist or must be empty; `--replace` replaces a directory that
//! already holds files, once the new dataset is complete.
//!
//! Partial runs (`--shard` or `--split`, e.g. the jobs of an array) write into a shared
//! `--out`: each file atomically; `protocol.json` is written only if absent, and if present
//! it must hold this run's protocol (an error otherwise).
//!
//! A long run shows progress bars and stops on Ctrl-C, leaving earlier files as they were.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fhn_solver::{generate_into_dir, DirOptions, Protocol, Shard, Split};

#[derive(Parser, Debug)]
#[command(about = "Generate the FitzHugh-Nagumo translation benchmark datasets")]
struct Args {
    /// default, quick, or a protocol JSON file.
    #[arg(long, default_value = "default")]
    protocol: String,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Only this split (train, val, test).
    #[arg(long)]
    split: Option<Split>,
    /// Only the i-th of n slices of each split, e.g. 0/4.
    #[arg(long)]
    shard: Option<Shard>,
    /// Worker threads (default: all cores).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    threads: Option<u16>,
    /// Also write .npy files in OUT/<split>/.
    #[arg(long)]
    npy: bool,
    /// Hide progress bars.
    #[arg(long)]
    no_progress: bool,
    /// Replace an output directory that already holds files (whole runs only), once the
    /// new dataset is complete.
    #[arg(long)]
    replace: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(usize::from(n))
            .build_global()
            .context("building the thread pool")?;
    }
    let protocol = Protocol::by_name_or_path(&args.protocol)?;
    let splits = args.split.map_or(Split::ALL.to_vec(), |s| vec![s]);
    let options = DirOptions {
        shard: args.shard,
        npy: args.npy,
        progress: !args.no_progress,
        replace_existing: args.replace,
    };
    let start = Instant::now();
    let written = generate_into_dir(&protocol, &splits, &args.out, options)?;
    let mut total = 0;
    for w in &written {
        total += w.samples;
        println!(
            "{}: {} samples -> {}",
            w.split.name(),
            w.samples,
            w.path.display()
        );
    }
    println!(
        "generated {total} samples in {:.2} s on {} threads",
        start.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    Ok(())
}
