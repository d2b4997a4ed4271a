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

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fhn_solver::{generate, Protocol, Shard, Split};

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
    #[arg(long)]
    threads: Option<usize>,
    /// Also write .npy files in OUT/<split>/.
    #[arg(long)]
    npy: bool,
    /// Hide progress bars.
    #[arg(long)]
    no_progress: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(n) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .context("building the thread pool")?;
    }
    let protocol = Protocol::by_name_or_path(&args.protocol)?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    protocol.to_json_file(args.out.join("protocol.json"))?;
    let splits = args.split.map_or(Split::ALL.to_vec(), |s| vec![s]);
    let start = Instant::now();
    let mut total = 0;
    for split in splits {
        let data = generate(&protocol, split, args.shard, !args.no_progress)?;
        let stem = match args.shard {
            Some(s) => format!("{}.shard-{}-of-{}", split.name(), s.index, s.count),
            None => split.name().to_string(),
        };
        let path = args.out.join(format!("{stem}.safetensors"));
        data.save(&path)?;
        if args.npy {
            data.save_npy(args.out.join(&stem))?;
        }
        total += data.len();
        println!(
            "{}: {} samples -> {}",
            split.name(),
            data.len(),
            path.display()
        );
    }
    println!(
        "generated {total} samples in {:.2} s on {} threads",
        start.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    Ok(())
}
