//! The study as a deterministic list of independent jobs (model × seed), run in slices.
//!
//! [`StudyConfig::jobs`] lists them: every model of the study once per seed, the first seed
//! of every model before the second. A process runs all of them, a slice of them
//! ([`JobOptions::shard`], `i/n` takes the jobs whose index is `i` modulo `n`, so that
//! every slice gets a mix of cheap and costly models), or a single one
//! ([`JobOptions::only`]). Each finished job writes its record,
//! `OUT/jobs/LABEL/seed-S.json` ([`JobRecord`]), atomically; [`super::merge`] joins the
//! records of one or several output directories into the report.
//!
//! A job's checkpoints live in `OUT/models/LABEL/seed-S/`. A job cut off (a signal, a
//! preempted cluster job, a crash) resumes from its last completed epoch when it is run
//! again with the same study, and reaches the same weights as an uninterrupted run; a job
//! whose record exists is not run again.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device};
use fhn_solver::dataset::Shard;
use ndarray::Array2;
use no_layers::init::SeededVarMap;
use no_models::{ModelConfig, NeuralOperator};
use serde::{Deserialize, Serialize};

use super::data::{prepare_data, to_no_dataset, Data};
use super::evaluate::{build_model, measure_latency, run_job, training_arrays};
use super::{model_dir, say, StudyConfig};
use crate::error::{EvalError, Result};
use crate::report::ModelResult;
use crate::strict::{parse_strict, write_atomic};

/// One training run of the study: a model and a seed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Job {
    /// Position in [`StudyConfig::jobs`].
    pub index: usize,
    /// Index of the model in [`StudyConfig::models`].
    pub model: usize,
    /// The model's label.
    pub label: String,
    /// Which run of this model (0-based).
    pub replicate: usize,
    /// Seed of the initial weights and of the augmentation draws: the study's `seed` plus
    /// the replicate (the shuffling seed is the model's `train.seed` plus the replicate).
    pub seed: u64,
}

impl Job {
    /// `fno seed 8 (job 12)`.
    pub fn describe(&self) -> String {
        format!("{} seed {} (job {})", self.label, self.seed, self.index)
    }
}

/// How [`run_jobs`] runs. The default runs every job, quietly, measuring each job's
/// latency right after it.
#[derive(Debug, Clone)]
pub struct JobOptions {
    /// Only this slice of the job list.
    pub shard: Option<Shard>,
    /// Only the job of this index (exclusive with `shard`).
    pub only: Option<usize>,
    /// Progress lines on stderr.
    pub progress: bool,
    /// Discard an existing output of another study configuration in the output directory
    /// (its job records and checkpoints) instead of refusing to run.
    pub fresh: bool,
    /// Measure each job's latency right after its training. Off when several jobs share
    /// the machine (the figures would time the contention); they are then measured later
    /// by [`measure_pending_latency`].
    pub measure_latency: bool,
    /// Set (by a signal handler) to stop at the next training batch; the job under way
    /// returns [`EvalError::Interrupted`] and resumes when run again.
    pub stop: Option<Arc<AtomicBool>>,
    /// The study's name in the report (`quick`, `default`, a file name), kept in each
    /// record so that a merge of the records can title the report.
    pub name: String,
}

impl Default for JobOptions {
    fn default() -> Self {
        Self {
            shard: None,
            only: None,
            progress: false,
            fresh: false,
            measure_latency: true,
            stop: None,
            name: String::new(),
        }
    }
}

/// What a finished job leaves: `OUT/jobs/LABEL/seed-S.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRecord {
    /// [`study_digest`] of the study the job belongs to.
    pub study_digest: String,
    /// The job.
    pub job: Job,
    /// Its figures (`None` when the job failed or was skipped, see `skipped`).
    pub result: Option<ModelResult>,
    /// Why the job has no figures: its model is not built into this binary, or its
    /// training diverged (a NaN or infinite loss). Such a job counts as done.
    pub skipped: Option<String>,
    /// The predicted v `[nt][nx]` of the test samples drawn as maps (first seed only).
    pub map_predictions: Vec<Vec<Vec<f32>>>,
    /// Wall time of the job in this process (training and evaluation), seconds.
    pub wall_s: f64,
    /// The device it ran on.
    pub device: String,
    /// Threads of the process (`RAYON_NUM_THREADS` or the cores).
    pub threads: usize,
    /// Epochs an earlier, interrupted run of the job had completed.
    pub resumed_from_epoch: Option<usize>,
    /// The CPU of the machine this process ran on ([`crate::host::cpu_description`]);
    /// absent from records written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    /// The study's name ([`JobOptions::name`]).
    #[serde(default)]
    pub protocol_name: String,
}

/// What [`run_jobs`] did with each job of its slice.
#[derive(Debug, Clone, PartialEq)]
pub enum JobStatus {
    /// Trained and measured now.
    Ran,
    /// Its record existed already: skipped.
    AlreadyDone,
}

impl StudyConfig {
    /// How many seeds model `k` is trained with: its own `seeds`, else the study's.
    pub fn seeds_of(&self, k: usize) -> usize {
        self.models
            .get(k)
            .and_then(|m| m.seeds)
            .unwrap_or(self.seeds)
    }

    /// The study's jobs, in order: the first seed of every model, then the second seed of
    /// every model that has one, and so on.
    pub fn jobs(&self) -> Vec<Job> {
        let most = (0..self.models.len())
            .map(|k| self.seeds_of(k))
            .max()
            .unwrap_or(0);
        let mut jobs = Vec::new();
        for replicate in 0..most {
            for (k, m) in self.models.iter().enumerate() {
                if replicate < self.seeds_of(k) {
                    jobs.push(Job {
                        index: jobs.len(),
                        model: k,
                        label: m.label.clone(),
                        replicate,
                        seed: self.seed.wrapping_add(replicate as u64),
                    });
                }
            }
        }
        jobs
    }

    /// The jobs of slice `shard` (`index` modulo `count`).
    pub fn shard_jobs(&self, shard: Shard) -> Result<Vec<Job>> {
        let jobs = self.jobs();
        if shard.count > jobs.len() {
            return Err(EvalError::invalid(
                "shard",
                format!("{}/{}", shard.index, shard.count),
                format!(
                    "at most {} slices: the study has {} jobs ({} models × their seeds)",
                    jobs.len(),
                    jobs.len(),
                    self.models.len()
                ),
            ));
        }
        Ok(jobs
            .into_iter()
            .filter(|j| j.index % shard.count == shard.index)
            .collect())
    }
}

/// A short fingerprint of a study configuration (CRC-32 of its JSON, hex): job records
/// carry it, so that records of another configuration are never merged.
pub fn study_digest(cfg: &StudyConfig) -> Result<String> {
    let text = serde_json::to_string(cfg)?;
    Ok(format!("{:08x}", crc32fast::hash(text.as_bytes())))
}

/// Where a job's record lives.
pub fn record_path(out: &Path, label: &str, seed: u64) -> PathBuf {
    out.join("jobs")
        .join(label)
        .join(format!("seed-{seed}.json"))
}

/// Reads a job record (`None` when absent). A record of another study, or of another job
/// than the path says, is an error.
pub fn read_record(out: &Path, job: &Job, digest: &str) -> Result<Option<JobRecord>> {
    let path = record_path(out, &job.label, job.seed);
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| EvalError::Config {
        what: format!("job record {}", path.display()),
        reason: format!("not JSON: {e}"),
    })?;
    let record: JobRecord = parse_strict(&value, &format!("job record {}", path.display()))?;
    if record.study_digest != digest || record.job != *job {
        return Err(EvalError::Config {
            what: format!("job record {}", path.display()),
            reason: format!(
                "it records {} of study {}, but this directory's study.json lists {} with digest {digest}; \
                 remove the record (or run with --fresh) to run the job again",
                record.job.describe(),
                record.study_digest,
                job.describe()
            ),
        });
    }
    if let Some(r) = &record.result {
        r.check_finite()?;
    }
    Ok(Some(record))
}

/// The first place where two JSON values differ, as a path (`models[2].train.epochs`).
pub(super) fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
            keys.sort();
            keys.dedup();
            keys.into_iter().find_map(|k| match (x.get(k), y.get(k)) {
                (Some(u), Some(v)) => first_difference(u, v).map(|p| join_path(k, &p)),
                _ => Some(k.clone()),
            })
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            x.iter().zip(y).enumerate().find_map(|(i, (u, v))| {
                first_difference(u, v).map(|p| join_path(&format!("[{i}]"), &p))
            })
        }
        _ if a == b => None,
        _ => Some(String::new()),
    }
}

fn join_path(head: &str, rest: &str) -> String {
    match (
        head.starts_with('['),
        rest.is_empty(),
        rest.starts_with('['),
    ) {
        (_, true, _) => head.to_string(),
        (_, false, true) => format!("{head}{rest}"),
        _ => format!("{head}.{rest}"),
    }
}

/// Reads `dir/study.json`.
pub fn read_study(dir: &Path) -> Result<StudyConfig> {
    let path = dir.join("study.json");
    if !path.exists() {
        return Err(EvalError::invalid(
            "benchmark output directory",
            dir.display(),
            "a directory written by the benchmark (it has no study.json)",
        ));
    }
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
    StudyConfig::from_json(&text).map_err(|e| EvalError::Config {
        what: format!("{}", path.display()),
        reason: e.to_string(),
    })
}

/// Makes `out` ready for `cfg`'s jobs: writes `study.json` if absent; if present, it must
/// be the same study (then its finished jobs are kept and its interrupted ones resume),
/// unless `fresh`, which discards the other study's records and checkpoints.
pub fn prepare_out(cfg: &StudyConfig, out: &Path, fresh: bool) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let path = out.join("study.json");
    let text = serde_json::to_string_pretty(cfg)?;
    if path.exists() {
        let existing = read_study(out);
        let same = matches!(&existing, Ok(c) if c == cfg);
        if same {
            return Ok(());
        }
        if !fresh {
            let what = match &existing {
                Ok(other) => {
                    first_difference(&serde_json::to_value(other)?, &serde_json::to_value(cfg)?)
                        .map_or_else(String::new, |p| format!(" (they differ at `{p}`)"))
                }
                Err(e) => format!(" (it cannot be read: {e})"),
            };
            return Err(EvalError::invalid(
                "output directory",
                out.display(),
                format!(
                    "a directory of this study or a new one: it holds another study{what}; run the same \
                     configuration to resume it, choose another --out, or pass --fresh to discard its results"
                ),
            ));
        }
        discard_results(out)?;
        return write_atomic(&path, text.as_bytes());
    }
    if out.join("jobs").exists() {
        if !fresh {
            return Err(EvalError::invalid(
                "output directory",
                out.display(),
                "a directory with a study.json beside its jobs/ (it has job records but no study.json; \
                 pass --fresh to discard them)",
            ));
        }
        discard_results(out)?;
    }
    // Shards of one study may start at once on a shared file system: the first writes the
    // file, the others find it and compare.
    fhn_solver::atomic::write_file_if_absent(&path, |w| {
        use std::io::Write;
        w.write_all(text.as_bytes())
    })?;
    match read_study(out)? {
        c if c == *cfg => Ok(()),
        _ => Err(EvalError::invalid(
            "output directory",
            out.display(),
            "a directory of one study: another process wrote a different study.json into it at the same time",
        )),
    }
}

/// Removes the job records and checkpoints of `out` (`--fresh`).
fn discard_results(out: &Path) -> Result<()> {
    for sub in ["jobs", "models"] {
        let d = out.join(sub);
        if d.exists() {
            std::fs::remove_dir_all(&d).map_err(|e| EvalError::io(&d, e))?;
        }
    }
    Ok(())
}

/// The number of threads this process computes with.
pub fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Runs the jobs of `opts`'s slice (all jobs by default) into `out`, skipping those with
/// a record and resuming interrupted ones. Returns each job with what was done.
pub fn run_jobs(
    cfg: &StudyConfig,
    device: &Device,
    out: &Path,
    opts: &JobOptions,
) -> Result<Vec<(Job, JobStatus)>> {
    cfg.validate()?;
    let jobs = match (opts.shard, opts.only) {
        (Some(_), Some(_)) => {
            return Err(EvalError::invalid(
                "job selection",
                "a shard and a job index",
                "one of the two",
            ))
        }
        (Some(shard), None) => cfg.shard_jobs(shard)?,
        (None, Some(k)) => {
            let all = cfg.jobs();
            let n = all.len();
            vec![all.into_iter().nth(k).ok_or_else(|| {
                EvalError::invalid("job", k, format!("an index below {n} (the study's jobs)"))
            })?]
        }
        (None, None) => cfg.jobs(),
    };
    prepare_out(cfg, out, opts.fresh)?;
    let digest = study_digest(cfg)?;
    let mut todo = Vec::new();
    let mut done = Vec::new();
    for job in jobs {
        match read_record(out, &job, &digest)? {
            Some(_) => done.push((job, JobStatus::AlreadyDone)),
            None => todo.push(job),
        }
    }
    if todo.is_empty() {
        return Ok(done);
    }
    say(opts.progress, "generating the data");
    let data = prepare_data(cfg, opts.progress)?;
    let total = todo.len();
    for (k, job) in todo.into_iter().enumerate() {
        let spec = &cfg.models[job.model];
        say(
            opts.progress,
            &format!(
                "job {}/{total}: training {} ({}, {} epochs)",
                k + 1,
                job.describe(),
                spec.variant.label(),
                spec.train.epochs
            ),
        );
        let start = Instant::now();
        let record = match run_job(cfg, &job, &data, device, out, opts) {
            Ok(outcome) => {
                outcome.result.check_finite()?;
                JobRecord {
                    study_digest: digest.clone(),
                    map_predictions: if job.replicate == 0 {
                        outcome.map_predictions.iter().map(rows_of).collect()
                    } else {
                        Vec::new()
                    },
                    result: Some(outcome.result),
                    skipped: None,
                    job: job.clone(),
                    wall_s: start.elapsed().as_secs_f64(),
                    device: format!("{device:?}"),
                    threads: threads(),
                    resumed_from_epoch: outcome.resumed_from_epoch,
                    cpu: Some(crate::host::cpu_description()),
                    protocol_name: opts.name.clone(),
                }
            }
            Err(e) => {
                let Some(reason) = skip_reason(&e) else {
                    return Err(e);
                };
                say(opts.progress, &format!("  {}: {reason}", job.describe()));
                JobRecord {
                    study_digest: digest.clone(),
                    map_predictions: Vec::new(),
                    result: None,
                    skipped: Some(reason),
                    job: job.clone(),
                    wall_s: start.elapsed().as_secs_f64(),
                    device: format!("{device:?}"),
                    threads: threads(),
                    resumed_from_epoch: None,
                    cpu: Some(crate::host::cpu_description()),
                    protocol_name: opts.name.clone(),
                }
            }
        };
        write_record(out, &record)?;
        say(opts.progress, &one_line_summary(&record));
        done.push((job, JobStatus::Ran));
    }
    done.sort_by_key(|(j, _)| j.index);
    Ok(done)
}

/// Why a job that failed with `e` is reported as skipped rather than stopping the study:
/// its model is not built into this binary, or its training diverged (reported as failed,
/// with the reason, never with a number).
fn skip_reason(e: &EvalError) -> Option<String> {
    use no_models::train::TrainError;
    use no_models::ModelError;
    match e {
        EvalError::Model(ModelError::NotImplemented(what)) => {
            Some(format!("skipped: {what} is not implemented in this build"))
        }
        EvalError::Model(e @ ModelError::NonFiniteLoss { .. })
        | EvalError::Model(e @ ModelError::Training(TrainError::NonFiniteValidation { .. })) => {
            Some(format!("failed: training diverged: {e}"))
        }
        _ => None,
    }
}

fn rows_of(a: &Array2<f32>) -> Vec<Vec<f32>> {
    a.outer_iter().map(|r| r.to_vec()).collect()
}

/// Writes a job record atomically.
pub fn write_record(out: &Path, record: &JobRecord) -> Result<()> {
    let path = record_path(out, &record.job.label, record.job.seed);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| EvalError::io(parent, e))?;
    }
    write_atomic(&path, serde_json::to_string(record)?.as_bytes())
}

/// The progress line printed after a job: size, errors and times.
fn one_line_summary(r: &JobRecord) -> String {
    let Some(m) = &r.result else {
        return format!(
            "  {}: {}",
            r.job.describe(),
            r.skipped.as_deref().unwrap_or("no result")
        );
    };
    format!(
        "  {}: {} params, val rel L2 {:.4}, test v {:.4}, trained in {:.1} s ({:.1} s with evaluation)",
        r.job.describe(),
        m.params.numel,
        m.validation.iter().map(|s| s.rel_l2.mean).sum::<f64>() / m.validation.len().max(1) as f64,
        m.test.first().map_or(f64::NAN, |s| s.rel_l2.mean),
        m.train_wall_s,
        r.wall_s
    )
}

/// Measures the latency of every job in `out` whose record has none (jobs run with
/// [`JobOptions::measure_latency`] off), one after the other, and rewrites its record.
/// Returns how many were measured.
///
/// The model is the job's final checkpoint. Where the checkpoint is gone (checkpoints stay
/// out of a repository, so records committed from one machine reach another without
/// them), the job's architecture is built afresh from its configuration and seed instead:
/// a forward's cost depends on the shapes, not on the weights' values, so the figures
/// time the same computation. The progress line says which was used.
pub fn measure_pending_latency(
    cfg: &StudyConfig,
    device: &Device,
    out: &Path,
    progress: bool,
) -> Result<usize> {
    let digest = study_digest(cfg)?;
    let mut measured = 0;
    // Generated only if a POD-DeepONet (whose basis comes from the training data) must be
    // built afresh.
    let mut data = None;
    for job in cfg.jobs() {
        let Some(mut record) = read_record(out, &job, &digest)? else {
            continue;
        };
        let Some(result) = &mut record.result else {
            continue;
        };
        if !result.latency.points.is_empty() || cfg.eval.latency.batch_sizes.is_empty() {
            continue;
        }
        let path = model_dir(out, &job.label, job.seed).join("last.safetensors");
        let twin = if path.exists() {
            say(progress, &format!("latency of {}", job.describe()));
            let loaded = no_models::checkpoint::Checkpoint::load_model(&path, device)?;
            no_models::inference_twin(loaded.model.as_ref(), loaded.vars.varmap())?
        } else {
            say(
                progress,
                &format!(
                    "latency of {}: no checkpoint at {}, timing the architecture built afresh",
                    job.describe(),
                    path.display()
                ),
            );
            fresh_twin(cfg, &job, device, &mut data)?
        };
        result.latency = measure_latency(cfg, twin.as_ref(), device)?;
        result.check_finite()?;
        write_record(out, &record)?;
        measured += 1;
    }
    Ok(measured)
}

/// The inference twin of `job`'s model as training starts it: built from its
/// configuration with its seed. `data` is generated on the first call that needs it (a
/// POD-DeepONet's basis comes from its training split).
fn fresh_twin(
    cfg: &StudyConfig,
    job: &Job,
    device: &Device,
    data: &mut Option<Data>,
) -> Result<Box<dyn NeuralOperator>> {
    let spec = &cfg.models[job.model];
    let vars = SeededVarMap::new(job.seed);
    let model = match &spec.config {
        ModelConfig::PodDon(_) => {
            let data = match data {
                Some(d) => &*d,
                None => data.insert(prepare_data(cfg, false)?),
            };
            let (train_in, train_out) = training_arrays(cfg, spec, job, data)?;
            build_model(spec, &vars, device, &to_no_dataset(&train_in, &train_out)?)?
        }
        other => no_models::build(other, vars.var_builder(DType::F32, device))?,
    };
    Ok(no_models::inference_twin(model.as_ref(), vars.varmap())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skipped_record(cpu: Option<String>) -> JobRecord {
        JobRecord {
            study_digest: "0000abcd".into(),
            job: Job {
                index: 3,
                model: 1,
                label: "fno".into(),
                replicate: 0,
                seed: 7,
            },
            result: None,
            skipped: Some("diverged".into()),
            map_predictions: Vec::new(),
            wall_s: 1.5,
            device: "Cpu".into(),
            threads: 2,
            resumed_from_epoch: None,
            cpu,
            protocol_name: "default".into(),
        }
    }

    /// Records written before the CPU was recorded (the full study's first ones) still read,
    /// with no CPU; a record without one is written without the field, and one with it
    /// keeps it.
    #[test]
    fn records_without_a_cpu_line_read_and_write_as_before() {
        let old = serde_json::to_string(&skipped_record(None)).unwrap();
        assert!(!old.contains("\"cpu\""), "{old}");
        let back: JobRecord = serde_json::from_str(&old).unwrap();
        assert_eq!(back, skipped_record(None));
        let new = skipped_record(Some("Xeon; 2 logical CPUs".into()));
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<JobRecord>(&text).unwrap(), new);
        // Unknown fields stay errors.
        let bad = old.replacen('{', "{\"cpus\":1,", 1);
        assert!(serde_json::from_str::<JobRecord>(&bad).is_err());
    }
}
