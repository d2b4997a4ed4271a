//! One model trained and measured: building it, its training inputs (augmented or not),
//! and every figure of its [`ModelResult`].

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device};
use ndarray::{s, Array2, Array4, ArrayView4, Axis};
use no_layers::init::SeededVarMap;
use no_models::data::{Normalizers, TensorDataset};
use no_models::pod::{PodBasis, PodDeepOnet};
use no_models::train::{LogFormat, ResumeRequest, TrainConfig, TrainError, Trainer};
use no_models::{ModelConfig, NeuralOperator};
use rand::{Rng, SeedableRng};

use super::data::{from_tensor, to_no_dataset, to_tensor, Data};
use super::jobs::{Job, JobOptions};
use super::{model_dir, say, ModelSpec, StudyConfig};
use crate::error::{EvalError, Result};
use crate::latency;
use crate::metrics::{batch_errors, summarize_field, FieldSummary, Spacing};
use crate::report::{EpochRecord, ModelResult, OnsetError, Variant};
use crate::translation::{curve, EquivarianceCurve, ShiftAxis};

/// A trained model with its normalisers, applied batch by batch in physical units.
pub struct Predictor<'a> {
    /// The model.
    pub model: &'a dyn NeuralOperator,
    /// Its input/output normalisers.
    pub norm: &'a Normalizers,
    /// Where it runs.
    pub device: &'a Device,
    /// Samples per forward.
    pub batch: usize,
}

impl Predictor<'_> {
    /// Outputs `[N, C_out, nt, nx]` for inputs `[N, C_in, nt, nx]`.
    pub fn predict(&self, inputs: ArrayView4<f32>) -> Result<Array4<f32>> {
        let n = inputs.shape()[0];
        let mut parts = Vec::new();
        for start in (0..n).step_by(self.batch.max(1)) {
            let end = (start + self.batch.max(1)).min(n);
            let x = to_tensor(inputs.slice(s![start..end, .., .., ..]), self.device)?;
            let y = self
                .norm
                .output
                .decode(&self.model.predict(&self.norm.input.encode(&x)?)?)?;
            parts.push(from_tensor(&y)?);
        }
        let views: Vec<_> = parts.iter().map(|p| p.view()).collect();
        ndarray::concatenate(Axis(0), &views)
            .map_err(|e| EvalError::invalid("prediction batches", e, "equal shapes"))
    }
}

/// Builds a model (POD-DeepONet takes its basis from the normalised training outputs).
pub(super) fn build_model(
    spec: &ModelSpec,
    vars: &SeededVarMap,
    device: &Device,
    train: &TensorDataset,
) -> Result<Box<dyn NeuralOperator>> {
    let vb = vars.var_builder(DType::F32, device);
    Ok(match &spec.config {
        ModelConfig::PodDon(c) => {
            let norm = Normalizers::fit(spec.train.normalizer, train)?;
            let basis = PodBasis::fit(&norm.output.encode(train.outputs())?, c.criterion)?;
            Box::new(PodDeepOnet::from_basis(c, &basis, vb)?)
        }
        other => no_models::build(other, vb)?,
    })
}

/// Per-field summaries, per-sample errors and the predictions of one split.
pub(super) type Evaluated = (
    Vec<FieldSummary>,
    Vec<crate::metrics::SampleErrors>,
    Array4<f32>,
);

/// A job's trainer: resumed from the checkpoint of an interrupted run of the same job when
/// one exists (the stored configuration must equal this job's), else a freshly built model.
/// Returns it with the number of epochs already completed.
fn trainer_for(
    spec: &ModelSpec,
    job: &Job,
    train_cfg: &TrainConfig,
    train_ds: &TensorDataset,
    device: &Device,
    dir: &Path,
) -> Result<(Trainer, usize)> {
    let last = dir.join("last.safetensors");
    if last.exists() {
        let request = ResumeRequest {
            model: Some(spec.config.name().to_string()),
            train_config: Some(train_cfg.clone()),
            ..ResumeRequest::default()
        };
        let resumed =
            Trainer::resume_request(&last, &no_models::Registry::builtin(), device, &request)
                .map_err(|e| EvalError::Resume {
                    job: job.describe(),
                    path: last.clone(),
                    reason: e.to_string(),
                })?;
        let done = resumed.trainer.meta().epochs_completed;
        return Ok((resumed.trainer, done));
    }
    let vars = SeededVarMap::new(job.seed);
    let model = build_model(spec, &vars, device, train_ds)?;
    Ok((Trainer::new(model, vars, train_cfg.clone(), device)?, 0))
}

/// What a job leaves beside its [`ModelResult`].
pub(super) struct JobOutcome {
    /// The figures.
    pub(super) result: ModelResult,
    /// The predicted v of the samples drawn as maps.
    pub(super) map_predictions: Vec<Array2<f32>>,
    /// Epochs that an earlier, interrupted run of this job had completed.
    pub(super) resumed_from_epoch: Option<usize>,
}

/// Trains one job (resuming an interrupted run of it) and measures every figure; the
/// latency sweep only with `measure_latency` (an empty report otherwise, to be measured
/// later on a quiet machine, [`super::jobs::measure_pending_latency`]).
pub(super) fn run_job(
    cfg: &StudyConfig,
    job: &Job,
    data: &Data,
    device: &Device,
    out: &Path,
    opts: &JobOptions,
) -> Result<JobOutcome> {
    let spec = &cfg.models[job.model];
    let (train_in, train_out) = training_arrays(cfg, spec, job, data)?;
    let train_ds = to_no_dataset(&train_in, &train_out)?;
    let train_cfg = job_train_config(spec, job, opts.progress);
    let dir = model_dir(out, &spec.label, job.seed);
    let (mut trainer, done) = trainer_for(spec, job, &train_cfg, &train_ds, device, &dir)?;
    if done > 0 {
        say(
            opts.progress,
            &format!(
                "  {}: resuming from epoch {done} of {}",
                job.describe(),
                train_cfg.epochs
            ),
        );
    }
    if let Some(flag) = &opts.stop {
        trainer.set_stop_flag(flag.clone());
    }
    let start = Instant::now();
    let val_ds = &data.inputs_of(spec, &cfg.protocol)?.val_ds;
    let fitted = trainer.fit(&train_ds, val_ds, Some(&dir));
    let this_run_s = start.elapsed().as_secs_f64();
    if let Err(no_models::ModelError::Training(TrainError::Interrupted {
        epochs_completed, ..
    })) = &fitted
    {
        return Err(EvalError::Interrupted {
            job: job.describe(),
            epochs_completed: *epochs_completed,
        });
    }
    fitted?;
    let epochs = read_epoch_log(&dir, trainer.meta().epochs_completed)?;
    let earlier_s: f64 = epochs.iter().take(done).map(|e| e.wall_s).sum();
    let train_wall_s = earlier_s + this_run_s;
    let norm = trainer
        .normalizers()
        .cloned()
        .ok_or_else(|| EvalError::invalid("normalisers", "none", "fitted by training"))?;
    // Evaluation and latency run through the inference twin: no autograd graph, so each
    // intermediate is freed once used (as PyTorch under `torch.no_grad()`).
    let twin = no_models::inference_twin(trainer.model(), trainer.vars().varmap())?;
    let model = twin.as_ref();
    let pred = Predictor {
        model,
        norm: &norm,
        device,
        batch: cfg.eval.eval_batch,
    };
    let evaluated = evaluate(cfg, spec, data, &pred, opts.progress)?;
    let latency = if opts.measure_latency {
        say(opts.progress, &format!("  {}: latency", job.describe()));
        measure_latency(cfg, model, device)?
    } else {
        latency::LatencyReport::default()
    };
    let map_predictions = data
        .map_indices
        .iter()
        .map(|&i| evaluated.test_pred.slice(s![i, 0, .., ..]).to_owned())
        .collect();
    let result = ModelResult {
        label: spec.label.clone(),
        architecture: spec.config.name().to_string(),
        variant: spec.variant,
        input_sampling: spec.input_sampling,
        replicate: job.replicate,
        seed: job.seed,
        config: model.config_json(),
        params: model.param_count(),
        train: evaluated.train,
        validation: evaluated.validation,
        test: evaluated.test,
        test_by_onset: evaluated.test_by_onset,
        fine_grid: evaluated.fine_grid,
        time_curve: evaluated.time_curve,
        space_curve: evaluated.space_curve,
        train_wall_s,
        epochs,
        latency,
    };
    Ok(JobOutcome {
        result,
        map_predictions,
        resumed_from_epoch: (done > 0).then_some(done),
    })
}

/// The latency sweep of the study's evaluation on `model` (the study's grid and channels).
pub(super) fn measure_latency(
    cfg: &StudyConfig,
    model: &dyn NeuralOperator,
    device: &Device,
) -> Result<latency::LatencyReport> {
    let p = &cfg.protocol;
    // The study's input is the applied current: one channel.
    latency::measure(
        model,
        device,
        1,
        p.output.nt,
        p.output.nx,
        &cfg.eval.latency,
    )
}

/// The training configuration of a job: the model's, with the shuffling seed moved by the
/// replicate, the study's per-epoch log in JSON lines (read back for the report) and the
/// progress bar as asked.
pub(super) fn job_train_config(spec: &ModelSpec, job: &Job, progress: bool) -> TrainConfig {
    let mut t = spec.train.clone();
    t.seed = t.seed.wrapping_add(job.replicate as u64);
    t.log_format = LogFormat::JsonLines;
    t.progress = progress;
    t
}

/// The epoch records of a job's run from its `log.jsonl`, for the first `completed`
/// epochs. A run interrupted between writing an epoch's log line and its checkpoint logs
/// that epoch twice; the later line (the epoch as finally run) is kept.
fn read_epoch_log(dir: &Path, completed: usize) -> Result<Vec<EpochRecord>> {
    let path = dir.join("log.jsonl");
    let text = std::fs::read_to_string(&path).map_err(|e| EvalError::io(&path, e))?;
    let mut by_epoch: Vec<Option<EpochRecord>> = vec![None; completed];
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let r: no_models::train::EpochRecord =
            serde_json::from_str(line).map_err(|e| EvalError::Config {
                what: format!("training log {} line {}", path.display(), n + 1),
                reason: e.to_string(),
            })?;
        if let Some(slot) = by_epoch.get_mut(r.epoch) {
            *slot = Some(EpochRecord {
                epoch: r.epoch,
                train_loss: r.train_loss,
                val_error: Some(r.val_loss),
                lr: r.lr,
                wall_s: r.wall_s,
                samples_per_s: r.samples_per_s,
            });
        }
    }
    by_epoch
        .into_iter()
        .enumerate()
        .map(|(e, r)| {
            r.ok_or_else(|| EvalError::Config {
                what: format!("training log {}", path.display()),
                reason: format!(
                    "no record of epoch {e}, though the checkpoint has {completed} epochs completed"
                ),
            })
        })
        .collect()
}

/// The training inputs and targets of `spec`: the training split, or for the augmented
/// variant each sample delayed by its own seeded random whole number of output steps.
pub(super) fn training_arrays(
    cfg: &StudyConfig,
    spec: &ModelSpec,
    job: &Job,
    data: &Data,
) -> Result<(Array4<f32>, Array4<f32>)> {
    let train_in = &data.inputs_of(spec, &cfg.protocol)?.train;
    if spec.variant != Variant::Augmented {
        return Ok((train_in.clone(), data.train_out.clone()));
    }
    let max = (cfg.augment_max_delay / cfg.protocol.output.dt())
        .round()
        .max(0.0) as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(job.seed ^ 0xA11C);
    let delays: Vec<usize> = (0..train_in.shape()[0])
        .map(|_| rng.random_range(0..=max))
        .collect();
    Ok((
        crate::translation::delay_each(train_in.view(), &delays)?,
        crate::translation::delay_each(data.train_out.view(), &delays)?,
    ))
}

/// What one trained model scores: per-split summaries, the test errors by onset, the
/// equivariance curves and the finer-grid error.
pub(super) struct Evaluation {
    train: Vec<FieldSummary>,
    validation: Vec<FieldSummary>,
    test: Vec<FieldSummary>,
    test_pred: Array4<f32>,
    test_by_onset: Vec<OnsetError>,
    time_curve: EquivarianceCurve,
    space_curve: EquivarianceCurve,
    fine_grid: Option<Vec<FieldSummary>>,
}

pub(super) fn evaluate(
    cfg: &StudyConfig,
    spec: &ModelSpec,
    data: &Data,
    pred: &Predictor,
    progress: bool,
) -> Result<Evaluation> {
    let p = &cfg.protocol;
    let spacing = Spacing {
        dt: p.output.dt(),
        dx: p.output.dx(),
    };
    let summarise = |inputs: &Array4<f32>, truth: &Array4<f32>| -> Result<Evaluated> {
        let y = pred.predict(inputs.view())?;
        let errs = batch_errors(y.view(), truth.view(), spacing)?;
        let sums = (0..truth.shape()[1])
            .map(|c| summarize_field(&errs, c))
            .collect::<Result<Vec<_>>>()?;
        Ok((sums, errs, y))
    };
    let inputs = data.inputs_of(spec, p)?;
    let (train, _, _) = summarise(&inputs.train, &data.train_out)?;
    let (validation, _, _) = summarise(&inputs.val, &data.val_out)?;
    let (test, test_errs, test_pred) = summarise(&inputs.test, &data.test_out)?;

    say(progress, &format!("  {}: equivariance curves", spec.label));
    let apply = |x: ArrayView4<f32>| pred.predict(x);
    let time_curve = curve(
        apply,
        inputs.eq.view(),
        ShiftAxis::Time,
        &data.time_steps,
        p.output.dt(),
    )?;
    let space_curve = curve(
        apply,
        inputs.eq.view(),
        ShiftAxis::Space,
        &data.space_steps,
        p.output.dx(),
    )?;
    let fine_grid = match (&inputs.fine, pred.model.accepts_other_resolutions()) {
        (Some(set), true) => Some(crate::resolution::evaluate(|x| pred.predict(x), set)?),
        _ => None,
    };
    Ok(Evaluation {
        train,
        validation,
        test,
        test_pred,
        test_by_onset: errors_by_onset(&test_errs, &data.test_meta),
        time_curve,
        space_curve,
        fine_grid,
    })
}

/// Each test sample's v and w errors beside its stimulus (onset, place, amplitude).
pub(super) fn errors_by_onset(
    errs: &[crate::metrics::SampleErrors],
    meta: &fhn_solver::dataset::Dataset,
) -> Vec<OnsetError> {
    errs.iter()
        .enumerate()
        .map(|(i, e)| OnsetError {
            t0: f64::from(meta.t0[i]),
            x0: f64::from(meta.x0[i]),
            amplitude: f64::from(meta.amplitude[i]),
            rel_l2_v: e[0].rel_l2,
            rel_l2_w: e.get(1).map_or(f64::NAN, |f| f.rel_l2),
        })
        .collect()
}
