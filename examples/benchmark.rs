//! The main job: generate the data, train the models with several seeds, evaluate them and
//! write `results/`.
//!
//! ```text
//! cargo run --release --example benchmark                       # quick protocol, 3 seeds
//! cargo run --release --example benchmark -- --protocol default # the full-size study
//! cargo run --release --example benchmark -- --models fno,cno --seeds 5 --out results-fno-cno
//! cargo run --release --example benchmark -- --remedies none    # paper setting only
//! cargo run --release --features cuda --example benchmark -- --device cuda
//! ```
//!
//! `--protocol` takes `quick` (the embedded default), `default` (the paper-sized study) or a
//! JSON file holding a `no_eval::study::StudyConfig` (or only an `fhn_solver::Protocol`,
//! used with the quick models). The run's full configuration is written to
//! `OUT/study.json`, so any run can be edited and replayed with `--protocol OUT/study.json`.
//!
//! **Jobs.** The study is a fixed list of jobs, one per model and seed (`--list-jobs`
//! prints it). A whole run trains them with `--workers` processes at once (by default one
//! per core, each single-threaded, on the CPU), measures the latencies afterwards one model
//! at a time, and writes the report. A run cut off (Ctrl-C, SIGTERM) keeps every finished
//! job and the last epoch of the unfinished ones: the same command resumes it.
//!
//! **Clusters.** `--shard i/n` runs the jobs whose index is i modulo n (0 ≤ i < n) into
//! `--out` and writes no report; `--job k` runs job k alone. `--merge DIR... --out DIR`
//! joins the parts' records into the report, checking that they come from one study and
//! saying which jobs are missing. `examples/cluster/` has a Slurm job-array script and a Ray
//! driver.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use candle_core::Device;
use clap::{Parser, ValueEnum};
use fhn_neural_operators::cli::{open_device, positive_finite, DeviceArg, StopSignals};
use no_eval::error::EvalError;
use no_eval::report::{StudyResults, Variant};
use no_eval::study::jobs::{prepare_out, read_record, study_digest};
use no_eval::study::{
    measure_pending_latency, merge, merge_partial, run_jobs, run_with, Job, JobOptions,
    StudyConfig, MAX_SEEDS,
};

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
    /// The study's name in the report's title and the job records (default: the
    /// --protocol value without its directory and extension). Workers get their parent's,
    /// so a report merged again later keeps the name of the run.
    #[arg(long, value_parser = parse_study_name)]
    name: Option<String>,
    /// Comma-separated model labels or architectures (cno, don, don_cnn, pod_don, fno, tfno,
    /// local_no, fno-nopos, fno+aug, don+aug, causal, causal-cells); all when absent.
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
    /// Train every model with this many seeds (1 to 1000; the quick study's default is 3,
    /// the full study's 1, and 3 for its DeepONets).
    #[arg(long)]
    seeds: Option<usize>,
    /// Run only the jobs whose index is i modulo n (`i/n`, 0 ≤ i < n), for a cluster's job
    /// array; writes the jobs' records, no report (see --merge).
    #[arg(long, conflicts_with_all = ["job", "merge"])]
    shard: Option<fhn_solver::dataset::Shard>,
    /// Run only job k (see --list-jobs); writes its record, no report.
    #[arg(long, conflicts_with = "merge")]
    job: Option<usize>,
    /// Join the job records of these output directories (the parts of one study) into the
    /// report in --out.
    #[arg(long, num_args = 1.., value_name = "DIR")]
    merge: Option<Vec<PathBuf>>,
    /// With --merge: report the jobs that have a record and list the others as not run
    /// yet, instead of refusing (to read a long study while it runs).
    #[arg(long, requires = "merge")]
    partial: bool,
    /// Print the study's jobs (index, model, seed) and exit.
    #[arg(long)]
    list_jobs: bool,
    /// Discard the results of another study configuration found in --out instead of
    /// refusing to run.
    #[arg(long)]
    fresh: bool,
    /// Jobs trained at once by separate processes of this program (0 = one per core,
    /// each single-threaded, on the CPU; 1 on a GPU).
    #[arg(long, default_value_t = 0)]
    workers: usize,
    /// Train nothing: measure the inference latency of every job recorded in --out without
    /// one (jobs run by --job, --shard or the workers leave it for a quiet machine), then
    /// exit. A job whose checkpoint is gone is timed on its architecture built afresh.
    #[arg(long, conflicts_with_all = ["job", "shard", "merge", "list_jobs"])]
    latency_only: bool,
    /// (Internal: set for the worker processes.) Leave the latency to the parent process.
    #[arg(long, hide = true)]
    defer_latency: bool,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    // candle allocates per op; keep freed buffers instead of re-faulting them (see docs).
    fhn_neural_operators::allocator::keep_freed_memory();
    let args = Args::parse();
    let signals = StopSignals::install()?;
    let start = Instant::now();
    let dev = open_device(args.device)?;
    if let Some(dirs) = &args.merge {
        let results = if args.partial {
            merge_partial(dirs, &args.out, args.name.as_deref(), !args.quiet)?
        } else {
            merge(dirs, &args.out, args.name.as_deref(), !args.quiet)?
        };
        return finish(&results, &args.out, start);
    }
    let cfg = study_from_args(&args)?;
    let name = study_name(&args);
    if args.list_jobs {
        for j in cfg.jobs() {
            println!("{}\t{}\tseed {}", j.index, j.label, j.seed);
        }
        return Ok(());
    }
    if args.latency_only {
        return latency_only(&cfg, &dev, &args);
    }
    let opts = JobOptions {
        shard: args.shard,
        only: args.job,
        progress: !args.quiet,
        fresh: args.fresh,
        measure_latency: !args.defer_latency,
        stop: Some(signals.stop.clone()),
        name: name.clone(),
    };
    let outcome = if args.shard.is_some() || args.job.is_some() {
        run_part(&cfg, &dev, &args, &opts)
    } else {
        run_whole(&cfg, &dev, &args, &opts, &signals)
    };
    match outcome {
        Err(e) if signals.received().is_some() || is_interrupted(&e) => {
            eprintln!("benchmark: {e:#}");
            eprintln!(
                "benchmark: stopped by a signal; finished jobs are kept in {} and the same command resumes the rest",
                args.out.display()
            );
            std::process::exit(signals.exit_status());
        }
        Err(e) => Err(e),
        Ok(Some(results)) => finish(&results, &args.out, start),
        Ok(None) => Ok(()),
    }
}

fn is_interrupted(e: &anyhow::Error) -> bool {
    matches!(
        e.downcast_ref::<EvalError>(),
        Some(EvalError::Interrupted { .. })
    )
}

/// The study the flags describe: `--protocol`, narrowed by `--remedies` and `--models`,
/// with `--epoch-scale` and `--seeds` applied.
fn study_from_args(args: &Args) -> Result<StudyConfig> {
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
    if let Some(n) = args.seeds {
        if n == 0 || n > MAX_SEEDS {
            bail!("--seeds {n}: expected 1 to {MAX_SEEDS}");
        }
        cfg.seeds = n;
        for m in &mut cfg.models {
            m.seeds = None;
        }
    }
    cfg.validate()?;
    Ok(cfg)
}

/// `--latency-only`: the latency of the jobs recorded in `--out` without one.
fn latency_only(cfg: &StudyConfig, dev: &Device, args: &Args) -> Result<()> {
    let study = args.out.join("study.json");
    if !study.exists() {
        bail!(
            "--latency-only: {} holds no study ({} is missing); expected the --out of a run",
            args.out.display(),
            study.display()
        );
    }
    // Refuses an --out of another study, so nothing is measured against the wrong records.
    prepare_out(cfg, &args.out, false)?;
    let n = measure_pending_latency(cfg, dev, &args.out, !args.quiet)?;
    if !args.quiet {
        eprintln!(
            "[benchmark] latency measured for {n} job(s) in {}; the report: --merge {} --out DIR",
            args.out.display(),
            args.out.display()
        );
    }
    Ok(())
}

/// `--shard` or `--job`: the part's jobs, no report.
fn run_part(
    cfg: &StudyConfig,
    dev: &Device,
    args: &Args,
    opts: &JobOptions,
) -> Result<Option<StudyResults>> {
    let done = run_jobs(cfg, dev, &args.out, opts)?;
    if !args.quiet {
        let ran = done
            .iter()
            .filter(|(_, s)| *s == no_eval::study::JobStatus::Ran)
            .count();
        eprintln!(
            "[benchmark] {} jobs of this part done ({ran} now, {} before); the report: --merge {} ... --out DIR",
            done.len(),
            done.len() - ran,
            args.out.display()
        );
    }
    Ok(None)
}

/// How many worker processes and threads each: `--workers`, or one single-threaded worker
/// per core on the CPU (never more than the jobs left), one worker on a GPU.
fn worker_plan(args: &Args, dev: &Device, pending: usize) -> (usize, usize) {
    let cores = candle_core::utils::get_num_threads().max(1);
    let workers = match (args.workers, dev.is_cpu()) {
        (0, true) => cores,
        (0, false) => 1,
        (n, _) => n,
    }
    .min(pending.max(1));
    (workers, (cores / workers).max(1))
}

/// The whole study: its pending jobs by worker processes (or in this process), the
/// latencies, then the report.
fn run_whole(
    cfg: &StudyConfig,
    dev: &Device,
    args: &Args,
    opts: &JobOptions,
    signals: &StopSignals,
) -> Result<Option<StudyResults>> {
    prepare_out(cfg, &args.out, args.fresh)?;
    let digest = study_digest(cfg)?;
    let mut pending = Vec::new();
    for job in cfg.jobs() {
        if read_record(&args.out, &job, &digest)?.is_none() {
            pending.push(job.index);
        }
    }
    let (workers, threads) = worker_plan(args, dev, pending.len());
    if workers <= 1 {
        // Jobs run earlier with --defer-latency (by --job or by workers) get theirs now.
        measure_pending_latency(cfg, dev, &args.out, !args.quiet)?;
        let opts = JobOptions {
            fresh: false,
            ..opts.clone()
        };
        return Ok(Some(run_with(cfg, &opts.name, dev, &args.out, &opts)?));
    }
    if !args.quiet {
        eprintln!(
            "[benchmark] {} jobs ({} done before), {workers} at a time, {threads} thread(s) each",
            cfg.jobs().len(),
            cfg.jobs().len() - pending.len()
        );
    }
    run_workers(&pending, &cfg.jobs(), workers, threads, args, signals)?;
    measure_pending_latency(cfg, dev, &args.out, !args.quiet)?;
    Ok(Some(merge(
        std::slice::from_ref(&args.out),
        &args.out,
        Some(&opts.name),
        !args.quiet,
    )?))
}

/// Checks a `--name` value: it titles the report, so it must be one line with something
/// visible on it.
fn parse_study_name(value: &str) -> std::result::Result<String, String> {
    if value.trim().is_empty() {
        return Err("the study's name is empty; expected a title such as `default`".into());
    }
    if value.chars().any(char::is_control) {
        return Err(format!(
            "the study's name {value:?} contains a control character (a line break or tab); \
             expected one line of text"
        ));
    }
    Ok(value.to_string())
}

/// The study's name: `--name`, or the `--protocol` value's file stem.
fn study_name(args: &Args) -> String {
    args.name.clone().unwrap_or_else(|| {
        Path::new(&args.protocol)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("custom")
            .to_string()
    })
}

/// Runs each job of `pending` as `benchmark --job K` in a child process, `workers` at a
/// time with `threads` threads each; stops starting new ones at the first failure or
/// signal, and kills the running ones on a signal (their last epochs are checkpointed).
fn run_workers(
    pending: &[usize],
    jobs: &[Job],
    workers: usize,
    threads: usize,
    args: &Args,
    signals: &StopSignals,
) -> Result<()> {
    let exe = std::env::current_exe().context("locating this program to start its workers")?;
    let study = args.out.join("study.json");
    let mut queue: Vec<usize> = pending.to_vec();
    let mut running: Vec<(usize, Child)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    let total = pending.len();
    let mut finished = 0usize;
    loop {
        while running.len() < workers && failed.is_empty() && signals.received().is_none() {
            let Some(k) = next_job(&mut queue, jobs, &args.out) else {
                break;
            };
            let child = Command::new(&exe)
                .arg("--protocol")
                .arg(&study)
                .arg("--out")
                .arg(&args.out)
                .arg("--job")
                .arg(k.to_string())
                .arg("--name")
                .arg(study_name(args))
                .arg("--device")
                .arg(device_flag(args.device))
                .args(["--defer-latency", "--quiet"])
                .env("RAYON_NUM_THREADS", threads.to_string())
                .spawn()
                .with_context(|| format!("starting the worker of job {k}"))?;
            running.push((k, child));
        }
        if running.is_empty() {
            break;
        }
        if signals.received().is_some() {
            for (_, c) in &mut running {
                let _ = c.kill();
            }
        }
        let mut still = Vec::new();
        for (k, mut c) in running {
            match c
                .try_wait()
                .with_context(|| format!("waiting for job {k}"))?
            {
                None => still.push((k, c)),
                Some(status) if status.success() => {
                    finished += 1;
                    if !args.quiet {
                        eprintln!("[benchmark] job {k} done ({finished}/{total})");
                    }
                }
                Some(status) => failed.push(format!("job {k} ({status})")),
            }
        }
        running = still;
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(sig) = signals.received() {
        return Err(anyhow::Error::new(EvalError::Interrupted {
            job: format!("the study (signal {sig})"),
            epochs_completed: 0,
        }));
    }
    if !failed.is_empty() {
        bail!(
            "{} worker(s) failed: {} (their errors are printed above); the finished jobs are kept, run the same command to retry",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}

/// The next job to start, longest first once durations are known: a job whose model has
/// no finished run yet goes first (in list order, so every model's first seed starts
/// early), then the job whose model's finished runs took longest. Starting the longest
/// jobs first keeps a worker from running the costliest job alone at the end.
fn next_job(queue: &mut Vec<usize>, jobs: &[Job], out: &Path) -> Option<usize> {
    let duration = |k: usize| -> Option<f64> {
        let label = &jobs.get(k)?.label;
        let dir = out.join("jobs").join(label);
        std::fs::read_dir(dir)
            .ok()?
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
            .filter_map(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
            .filter_map(|v| v.get("wall_s")?.as_f64())
            .reduce(f64::max)
    };
    let pos = queue
        .iter()
        .position(|&k| duration(k).is_none())
        .or_else(|| {
            (0..queue.len()).max_by(|&a, &b| {
                duration(queue[a])
                    .unwrap_or(0.0)
                    .total_cmp(&duration(queue[b]).unwrap_or(0.0))
            })
        })?;
    Some(queue.remove(pos))
}

fn device_flag(d: DeviceArg) -> &'static str {
    match d {
        DeviceArg::Cpu => "cpu",
        DeviceArg::Cuda => "cuda",
        DeviceArg::Metal => "metal",
    }
}

/// The ranking paragraph and where the report is.
fn finish(results: &StudyResults, out: &Path, start: Instant) -> Result<()> {
    let secs = start.elapsed().as_secs_f64();
    println!("{}", no_eval::report::markdown::ranking_paragraph(results));
    println!(
        "Wrote {} ({} models × seeds) in {:.1} s ({:.1} min).",
        out.join("report.md").display(),
        results.models.len(),
        secs,
        secs / 60.0
    );
    Ok(())
}
