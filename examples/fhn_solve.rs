//! Solves the FitzHugh–Nagumo model for one box pulse and writes `input.npy`, `v.npy`,
//! `w.npy` ([nt, nx], axis order (t, x)).
//!
//! ```text
//! cargo run --release --example fhn_solve -- --x0 0.5 --t0 1.0 --amplitude 1.0 --out DIR
//! ```
//! Options: `--nx` fine nodes and `--dt` step (they must contain the output grid), `--scheme`
//! sbdf1|sbdf2|ars222, `--f32`, `--output-nt/--output-nx`, and `--repeat N` to time the solve
//! (single thread; prints the fastest of N runs).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fhn_solver::{simulate_1d, BoxPulse, OutputGrid, Resolution, Scheme, SolverConfig, Stimulus};
use ndarray::Array2;

#[derive(Parser, Debug)]
#[command(about = "Solve the FitzHugh-Nagumo model for one box pulse")]
struct Args {
    /// Pulse centre.
    #[arg(long, default_value_t = 0.5)]
    x0: f64,
    /// Pulse onset.
    #[arg(long, default_value_t = 1.0)]
    t0: f64,
    /// Pulse amplitude.
    #[arg(long, default_value_t = 1.0)]
    amplitude: f64,
    /// Pulse width.
    #[arg(long, default_value_t = 0.04)]
    width: f64,
    /// Pulse duration.
    #[arg(long, default_value_t = 1.0)]
    duration: f64,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Fine nodes in x (default: the default resolution).
    #[arg(long)]
    nx: Option<usize>,
    /// Time step (with --nx; default: the default resolution).
    #[arg(long)]
    dt: Option<f64>,
    /// sbdf1, sbdf2 or ars222.
    #[arg(long, default_value = "sbdf2")]
    scheme: Scheme,
    /// Write f32 instead of f64.
    #[arg(long)]
    f32: bool,
    /// Output times.
    #[arg(long, default_value_t = 100)]
    output_nt: usize,
    /// Output positions.
    #[arg(long, default_value_t = 100)]
    output_nx: usize,
    /// Solve this many times and print the fastest wall time.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
}

fn write(dir: &std::path::Path, name: &str, a: &Array2<f64>, f32: bool) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.npy"));
    if f32 {
        ndarray_npy::write_npy(&path, &a.mapv(|x| x as f32))
    } else {
        ndarray_npy::write_npy(&path, a)
    }
    .with_context(|| format!("writing {}", path.display()))
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = OutputGrid {
        nt: args.output_nt,
        nx: args.output_nx,
        ..OutputGrid::default()
    };
    let default_fine = fhn_solver::FineGrid::new(&out, &Resolution::default())?;
    let resolution = match (args.nx, args.dt) {
        (None, None) => Resolution::default(),
        (nx, dt) => Resolution::Explicit {
            nx: nx.unwrap_or(default_fine.nx),
            dt: dt.unwrap_or(default_fine.dt),
        },
    };
    let config = SolverConfig {
        scheme: args.scheme,
        resolution,
        ..SolverConfig::default()
    };
    let stimulus = Stimulus::single(BoxPulse {
        x0: args.x0,
        width: args.width,
        t0: args.t0,
        duration: args.duration,
        amplitude: args.amplitude,
    });
    let mut best = f64::INFINITY;
    let mut sol = simulate_1d(&config, &stimulus, &out)?;
    for _ in 0..args.repeat {
        let start = Instant::now();
        sol = simulate_1d(&config, &stimulus, &out)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, a) in [("input", &sol.input), ("v", &sol.v), ("w", &sol.w)] {
        write(&args.out, name, a, args.f32)?;
    }
    let fine = fhn_solver::FineGrid::new(&out, &config.resolution)?;
    println!(
        "solved {:?} on {} nodes x {} steps (dt = {:.5}); max v = {:.4}; wrote {}",
        config.scheme,
        fine.nx,
        fine.steps,
        fine.dt,
        sol.v.iter().cloned().fold(f64::MIN, f64::max),
        args.out.display()
    );
    println!("solve_seconds {best:.6} (fastest of {})", args.repeat);
    Ok(())
}
