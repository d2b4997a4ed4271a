//! Solves the FitzHugh–Nagumo model for one box pulse and writes `input.npy`, `v.npy`,
//! `w.npy` ([nt, nx], axis order (t, x)).
//!
//! ```text
//! cargo run --release --example fhn_solve -- --x0 0.5 --t0 1.0 --amplitude 1.0 --out DIR
//! ```
//! Options: `--nx` fine nodes and `--dt` step (they must contain the output grid), `--scheme`
//! sbdf1|sbdf2|ars222, `--f32`, `--output-nt/--output-nx`, and `--repeat N` (1 to 10000) to
//! time the solve (single thread; prints the fastest of N runs).
//!
//! Every size is checked before anything is allocated: a grid that does not fit in memory,
//! or a step that would take more than 10⁹ steps, is an error that says so. The pulse must lie
//! in the domain and start before the end of the time window. Each `.npy` file is written
//! atomically (a temporary sibling renamed into place). A long solve shows a progress bar
//! (one tick per output time) and stops on Ctrl-C.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::Parser;
use fhn_solver::dataset::write_npy_atomic;
use fhn_solver::{
    simulate_1d, BoxPulse, FineGrid, InputSampling, OutputGrid, Resolution, Scheme, Solution1d,
    Solver1d, SolverConfig, Stimulus,
};
use indicatif::{ProgressBar, ProgressStyle};
use ndarray::Array2;

/// Fine-grid node updates above which a solve shows a progress bar.
const PROGRESS_WORK: f64 = 2e8;

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
    /// How input.npy writes the current: point values at the output nodes (as the
    /// default protocol's datasets) or cell averages (`input_sampling: "cell_average"`).
    #[arg(long, value_enum, default_value = "point")]
    input_sampling: Sampling,
    /// Solve this many times and print the fastest wall time.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    repeat: u32,
}

/// `--input-sampling`: the protocol's [`InputSampling`] as a command-line value.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Sampling {
    /// Point values at the output nodes.
    Point,
    /// Cell averages over the output cells.
    CellAverage,
}

impl From<Sampling> for InputSampling {
    fn from(s: Sampling) -> Self {
        match s {
            Sampling::Point => InputSampling::Point,
            Sampling::CellAverage => InputSampling::CellAverage,
        }
    }
}

fn write(dir: &std::path::Path, name: &str, a: &Array2<f64>, f32: bool) -> anyhow::Result<()> {
    let path = dir.join(format!("{name}.npy"));
    if f32 {
        write_npy_atomic(&path, &a.mapv(|x| x as f32))
    } else {
        write_npy_atomic(&path, a)
    }
    .with_context(|| format!("writing {}", path.display()))
}

/// Solves once, with a progress bar (one tick per output time) when the solve is long.
fn solve(solver: &Solver1d, stimulus: &Stimulus, out: &OutputGrid) -> anyhow::Result<Solution1d> {
    let fine = solver.fine_grid();
    if (fine.nx as f64) * (fine.steps as f64) < PROGRESS_WORK {
        return Ok(solver.solve(stimulus)?);
    }
    let bar = ProgressBar::new(out.nt as u64);
    if let Ok(style) =
        ProgressStyle::with_template("solve [{bar:40}] {pos}/{len} output times ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut v = Array2::zeros((out.nt, out.nx));
    let mut w = Array2::zeros((out.nt, out.nx));
    solver.solve_into(stimulus, |k, vs, ws| {
        v.row_mut(k).assign(&ndarray::ArrayView1::from(vs));
        w.row_mut(k).assign(&ndarray::ArrayView1::from(ws));
        bar.inc(1);
    })?;
    bar.finish_and_clear();
    Ok(Solution1d {
        input: stimulus.on_output_grid(out),
        v,
        w,
        grid: *out,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let out = OutputGrid {
        nt: args.output_nt,
        nx: args.output_nx,
        ..OutputGrid::default()
    };
    let resolution = match (args.nx, args.dt) {
        (None, None) => Resolution::default(),
        (nx, dt) => {
            let default_fine = FineGrid::new(&out, &Resolution::default())?;
            Resolution::Explicit {
                nx: nx.unwrap_or(default_fine.nx),
                dt: dt.unwrap_or(default_fine.dt),
            }
        }
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
    stimulus.validate_on(out.length, out.t_end)?;
    let solver = Solver1d::new(&config, &out)?;
    let mut best = f64::INFINITY;
    let mut sol = solve(&solver, &stimulus, &out)?;
    for _ in 0..args.repeat {
        let start = Instant::now();
        sol = simulate_1d(&config, &stimulus, &out)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    sol.input = stimulus.on_output_grid_sampled(&out, args.input_sampling.into());
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    for (name, a) in [("input", &sol.input), ("v", &sol.v), ("w", &sol.w)] {
        write(&args.out, name, a, args.f32)?;
    }
    let fine = solver.fine_grid();
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
