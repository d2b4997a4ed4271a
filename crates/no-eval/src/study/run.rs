//! A whole study in one process ([`run`]), and the join of job records into the report
//! ([`merge`]), which a one-process run also goes through: a merged sharded run and a
//! one-process run produce their report from the same records by the same code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use ndarray::Array2;

use super::data::{fixed_shifts, prepare_data, sample_maps, solver_curves};
use super::jobs::{
    first_difference, prepare_out, read_record, read_study, run_jobs, study_digest, Job,
    JobOptions, JobRecord,
};
use super::{say, StudyConfig};
use crate::error::{EvalError, Result};
use crate::report::plots::FigureData;
use crate::report::{JobRun, StudyResults};

/// Runs the whole study in this process and writes `out/` (report, CSV/JSON, figures,
/// per-job records, checkpoints and logs). Jobs already recorded in `out` by an earlier
/// run of the same study are kept; interrupted ones resume (see [`super::jobs`]).
/// Returns the results.
pub fn run(
    cfg: &StudyConfig,
    protocol_name: &str,
    device: &Device,
    out: &Path,
    progress: bool,
) -> Result<StudyResults> {
    let opts = JobOptions {
        progress,
        measure_latency: true,
        name: protocol_name.to_string(),
        ..JobOptions::default()
    };
    run_with(cfg, protocol_name, device, out, &opts)
}

/// [`run`] with every option of [`JobOptions`] (a stop flag, `fresh`); `shard` and `only`
/// must be unset (a slice of the study has no report of its own: [`merge`] the slices).
pub fn run_with(
    cfg: &StudyConfig,
    protocol_name: &str,
    device: &Device,
    out: &Path,
    opts: &JobOptions,
) -> Result<StudyResults> {
    if opts.shard.is_some() || opts.only.is_some() {
        return Err(EvalError::invalid(
            "job selection",
            "a slice of the study",
            "none for a whole run (run the slices with run_jobs, then merge them)",
        ));
    }
    cfg.validate()?;
    say(
        opts.progress,
        &format!(
            "{} protocol: {} jobs ({} models, {} seeds each unless the model sets its own)",
            protocol_name,
            cfg.jobs().len(),
            cfg.models.len(),
            cfg.seeds
        ),
    );
    run_jobs(cfg, device, out, opts)?;
    merge(
        &[out.to_path_buf()],
        out,
        Some(protocol_name),
        opts.progress,
    )
}

/// The record of every job of `cfg`, looked up in `dirs` in order (the first record of a
/// job found is used), and the jobs without one. Without `allow_missing` any missing job is
/// an error that lists them; with it (a partial report) the missing jobs are returned beside
/// the records, and only a merge with no record at all is an error.
fn collect_records(
    cfg: &StudyConfig,
    dirs: &[PathBuf],
    allow_missing: bool,
) -> Result<(Vec<JobRecord>, Vec<Job>)> {
    let digest = study_digest(cfg)?;
    let mut records = Vec::new();
    let mut missing: Vec<Job> = Vec::new();
    for job in cfg.jobs() {
        let mut found = None;
        for d in dirs {
            if let Some(r) = read_record(d, &job, &digest)? {
                found = Some(r);
                break;
            }
        }
        match found {
            Some(r) => records.push(r),
            None => missing.push(job),
        }
    }
    let total = cfg.jobs().len();
    if missing.is_empty() || (allow_missing && !records.is_empty()) {
        return Ok((records, missing));
    }
    let list: Vec<String> = missing.iter().map(Job::describe).collect();
    Err(EvalError::MissingJobs {
        missing: missing.len(),
        total,
        list: list.join(", "),
    })
}

/// One study configuration for all of `dirs`: their `study.json` must be equal.
fn common_study(dirs: &[PathBuf]) -> Result<StudyConfig> {
    let Some(first) = dirs.first() else {
        return Err(EvalError::invalid(
            "directories to merge",
            "none",
            "at least one benchmark output directory",
        ));
    };
    let cfg = read_study(first)?;
    for d in &dirs[1..] {
        let other = read_study(d)?;
        if other != cfg {
            let at = first_difference(&serde_json::to_value(&cfg)?, &serde_json::to_value(&other)?)
                .unwrap_or_default();
            return Err(EvalError::Config {
                what: format!("{}/study.json", d.display()),
                reason: format!(
                    "it is another study than {}/study.json (they differ at `{at}`): only the parts of one \
                     study can be merged",
                    first.display()
                ),
            });
        }
    }
    Ok(cfg)
}

/// Joins the job records of `dirs` (the output directories of the slices of one study,
/// or one directory holding them all) into the report, CSV, JSON and figures in `out`.
/// The directories must hold one study configuration, and every job must have a record
/// (the error lists the missing ones). The data are generated again (deterministically
/// from the protocol) for the solver's equivariance curves and the drawn samples. The
/// report is titled `protocol_name`, or else the name the jobs recorded.
pub fn merge(
    dirs: &[PathBuf],
    out: &Path,
    protocol_name: Option<&str>,
    progress: bool,
) -> Result<StudyResults> {
    merge_records(dirs, out, protocol_name, progress, false)
}

/// [`merge`] for a study still running: the jobs without a record are listed in the
/// report (and in [`StudyResults::skipped`]) as not run yet instead of refusing, so a long
/// study (the full-size one runs for days) can be read while it runs. Rankings, aggregates
/// and verdicts then cover the finished jobs only, and say over how many seeds. Refuses
/// when no job has a record.
pub fn merge_partial(
    dirs: &[PathBuf],
    out: &Path,
    protocol_name: Option<&str>,
    progress: bool,
) -> Result<StudyResults> {
    merge_records(dirs, out, protocol_name, progress, true)
}

fn merge_records(
    dirs: &[PathBuf],
    out: &Path,
    protocol_name: Option<&str>,
    progress: bool,
    allow_missing: bool,
) -> Result<StudyResults> {
    let cfg = common_study(dirs)?;
    let (records, missing) = collect_records(&cfg, dirs, allow_missing)?;
    // The report goes beside a study.json of the same study (written if absent), never
    // over the report of another.
    prepare_out(&cfg, out, false)?;
    let mut phases = Vec::new();

    say(progress, "report: generating the data of the figures");
    let t = Instant::now();
    let data = prepare_data(&cfg, false)?;
    phases.push(("data generation".to_string(), t.elapsed().as_secs_f64()));
    let t = Instant::now();
    let (solver_time_curve, solver_space_curve) = solver_curves(&cfg, &data)?;
    phases.push((
        "solver equivariance curves".to_string(),
        t.elapsed().as_secs_f64(),
    ));
    let jobs_s: f64 = records.iter().map(|r| r.wall_s).sum();
    phases.push((
        format!(
            "jobs: training and evaluation (sum over {} jobs)",
            records.len()
        ),
        jobs_s,
    ));

    say(progress, "report: writing the report and figures");
    let t = Instant::now();
    let p = &cfg.protocol;
    let mut models = Vec::new();
    let mut skipped = Vec::new();
    let mut map_predictions = vec![Vec::new(); data.map_indices.len()];
    // Records in model order, then seed order: the table's and the CSV's order.
    let mut ordered: Vec<&JobRecord> = records.iter().collect();
    ordered.sort_by_key(|r| (r.job.model, r.job.replicate));
    for r in ordered {
        match &r.result {
            Some(m) => models.push(m.clone()),
            None => skipped.push((
                format!("{} seed {}", r.job.label, r.job.seed),
                r.skipped.clone().unwrap_or_default(),
            )),
        }
        if r.job.replicate == 0 && r.result.is_some() {
            for (slot, rows) in map_predictions.iter_mut().zip(&r.map_predictions) {
                slot.push((
                    r.job.label.clone(),
                    field_of(rows, (p.output.nt, p.output.nx))?,
                ));
            }
        }
    }
    let total = cfg.jobs().len();
    for job in &missing {
        skipped.push((
            format!("{} seed {}", job.label, job.seed),
            format!(
                "not run yet: this report is partial, {} of the study's {total} jobs have a record",
                records.len()
            ),
        ));
    }
    let mut devices: Vec<String> = records
        .iter()
        .map(|r| {
            let per = if r.threads == 1 { "thread" } else { "threads" };
            format!("{} ({} {per} per job)", r.device, r.threads)
        })
        .collect();
    devices.sort_unstable();
    devices.dedup();
    let protocol_name = protocol_name
        .map(str::to_string)
        .or_else(|| records.first().map(|r| r.protocol_name.clone()))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "custom".to_string());
    let mut results = StudyResults {
        protocol_name,
        study_config: serde_json::to_value(&cfg)?,
        device: devices.join(", "),
        grid: (p.output.nt, p.output.nx),
        samples: (
            data.train_out.shape()[0],
            data.val_out.shape()[0],
            data.test_out.shape()[0],
        ),
        fixed_shifts: fixed_shifts(&cfg),
        solver_time_curve,
        solver_space_curve,
        models,
        aggregates: Vec::new(),
        skipped,
        phases,
        jobs: job_runs(&records),
    }
    .with_aggregates();
    let figures = FigureData {
        maps: sample_maps(&data, map_predictions),
        t_end: p.output.t_end,
        length: p.output.length,
    };
    results
        .phases
        .push(("report".to_string(), t.elapsed().as_secs_f64()));
    results.write_all(out, &figures)?;
    Ok(results)
}

/// The report's "Jobs" table: one entry per record, in job order.
fn job_runs(records: &[JobRecord]) -> Vec<JobRun> {
    let mut runs: Vec<JobRun> = records
        .iter()
        .map(|r| JobRun {
            index: r.job.index,
            label: r.job.label.clone(),
            seed: r.job.seed,
            device: r.device.clone(),
            threads: r.threads,
            cpu: r.cpu.clone(),
            epochs: r.result.as_ref().map_or(0, |m| m.epochs.len()),
            train_wall_s: r.result.as_ref().map(|m| m.train_wall_s),
            process_wall_s: r.wall_s,
            resumed_from_epoch: r.resumed_from_epoch,
            skipped: r.skipped.clone(),
        })
        .collect();
    runs.sort_by_key(|j| j.index);
    runs
}

/// A `[nt][nx]` field from a job record, checked against the study's grid.
fn field_of(rows: &[Vec<f32>], (nt, nx): (usize, usize)) -> Result<Array2<f32>> {
    let got = [rows.len(), rows.first().map_or(0, Vec::len)];
    if got != [nt, nx] || rows.iter().any(|r| r.len() != nx) {
        return Err(EvalError::shape(
            "a job record's predicted map",
            &got,
            format!("[{nt}, {nx}], the study's grid"),
        ));
    }
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Array2::from_shape_vec((nt, nx), flat)
        .map_err(|e| EvalError::invalid("predicted map", e, "a full grid"))
}
