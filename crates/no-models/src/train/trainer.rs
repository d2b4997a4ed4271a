//! The training loop shared by all seven architectures.
//!
//! One epoch: seeded shuffle, mini-batches, forward on normalised inputs, decode the
//! prediction to physical units, relative L2 against the physical target, AdamW step.
//! Then validation (same error, no step), the per-epoch log line, `last.safetensors`
//! (weights, normalisers, training state and optimiser moments) and, on improvement,
//! `best.safetensors`. Every source of randomness is a function of the seed and the
//! epoch, so a run resumed from `last.safetensors` takes exactly the steps an
//! uninterrupted run would.

use super::error::TrainError;
use super::loss::{relative_l2_per_channel, LossKind};
use super::optim::{AdamW, AdamWParams};
use super::resume::{self, ResumeRequest, Resumed};
use super::schedule::Schedule;
use crate::checkpoint::{snapshot, Checkpoint, TrainingMeta};
use crate::data::{NormalizerKind, Normalizers, TensorDataset};
use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_core::Device;
use indicatif::{ProgressBar, ProgressStyle};
use no_layers::init::SeededVarMap;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Format of the per-epoch log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// One JSON object per line (`log.jsonl`).
    #[default]
    JsonLines,
    /// Comma-separated values with a header (`log.csv`).
    Csv,
}

/// Settings of a training run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Total number of epochs (a resumed run continues up to this).
    pub epochs: usize,
    /// Mini-batch size.
    pub batch_size: usize,
    /// AdamW hyper-parameters (`lr` is the base rate of the schedule).
    pub optimizer: AdamWParams,
    /// Learning-rate schedule, stepped per epoch.
    pub schedule: Schedule,
    /// Stop after this many epochs without validation improvement.
    pub early_stopping_patience: Option<usize>,
    /// Normalisation law fitted on the training set.
    pub normalizer: NormalizerKind,
    /// Seed of the shuffling.
    pub seed: u64,
    /// Shuffle the training set every epoch.
    pub shuffle: bool,
    /// Show a progress bar on stderr.
    pub progress: bool,
    /// Format of the per-epoch log.
    pub log_format: LogFormat,
    /// The loss minimised (validation and evaluation always report the per-sample
    /// relative L2, whatever is minimised).
    pub loss: LossKind,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 100,
            batch_size: 16,
            optimizer: AdamWParams::default(),
            schedule: Schedule::Step {
                step_size: 100,
                gamma: 0.5,
            },
            early_stopping_patience: None,
            normalizer: NormalizerKind::Gaussian,
            seed: 0,
            shuffle: true,
            progress: false,
            log_format: LogFormat::JsonLines,
            loss: LossKind::default(),
        }
    }
}

/// One line of the training log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean training relative L2 over the epoch's samples.
    pub train_loss: f64,
    /// Validation relative L2.
    pub val_loss: f64,
    /// Learning rate used during the epoch.
    pub lr: f64,
    /// Wall time of the epoch (training and validation), seconds.
    pub wall_s: f64,
    /// Training throughput, samples per second.
    pub samples_per_s: f64,
}

/// What a call to [`Trainer::fit`] did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The epochs run by this call.
    pub history: Vec<EpochRecord>,
    /// Best validation error of the whole run (resumed parts included).
    pub best_val: Option<f64>,
    /// Its epoch.
    pub best_epoch: Option<usize>,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
}

/// Trains one model.
pub struct Trainer {
    model: Box<dyn NeuralOperator>,
    vars: SeededVarMap,
    cfg: TrainConfig,
    opt: AdamW,
    normalizers: Option<Normalizers>,
    meta: TrainingMeta,
    device: Device,
    /// Set from outside (a signal handler) to stop at the next batch.
    stop: Option<Arc<AtomicBool>>,
}

impl Trainer {
    /// A trainer for a freshly built model whose variables live in `vars` on `device`;
    /// every setting of `cfg` is checked first ([`TrainConfig::validate`]).
    pub fn new(
        model: Box<dyn NeuralOperator>,
        vars: SeededVarMap,
        cfg: TrainConfig,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        let opt = AdamW::new(vars.varmap(), cfg.optimizer)?;
        Ok(Self {
            model,
            vars,
            cfg,
            opt,
            normalizers: None,
            meta: TrainingMeta::default(),
            device: device.clone(),
            stop: None,
        })
    }

    /// Continues a run from a checkpoint written by [`Trainer::fit`] (`last.safetensors`)
    /// with its stored training configuration. A `cfg` given must agree with it except for
    /// `epochs` (to train longer) and `progress` (see [`super::resume`]); any other
    /// difference is a [`TrainError::ResumeConflict`].
    pub fn resume(
        path: impl AsRef<Path>,
        device: &Device,
        cfg: Option<TrainConfig>,
    ) -> Result<Self> {
        Self::resume_with(path, &crate::Registry::builtin(), device, cfg)
    }

    /// [`Trainer::resume`] for a model of any architecture `registry` knows (a user
    /// model's checkpoint).
    pub fn resume_with(
        path: impl AsRef<Path>,
        registry: &crate::Registry,
        device: &Device,
        cfg: Option<TrainConfig>,
    ) -> Result<Self> {
        let request = ResumeRequest {
            train_config: cfg,
            ..ResumeRequest::default()
        };
        Ok(Self::resume_request(path, registry, device, &request)?.trainer)
    }

    /// Continues a run from `path` as `train --resume` does: the stored configuration,
    /// with the changes `request` may make (longer training); a request contradicting the
    /// stored run (another architecture, learning rate, batch size, ...) is an error naming
    /// both values. The notes say what was changed.
    pub fn resume_request(
        path: impl AsRef<Path>,
        registry: &crate::Registry,
        device: &Device,
        request: &ResumeRequest,
    ) -> Result<Resumed> {
        let path = path.as_ref();
        let ckpt = Checkpoint::read(path, device)?;
        let architecture = ckpt.architecture()?.to_string();
        let had_norm = ckpt.normalizers.is_some();
        let loaded = ckpt.into_model_with(registry, device, path)?;
        let meta = loaded
            .training
            .clone()
            .ok_or_else(|| file_err(path, "no training state to resume from"))?;
        let stored = meta
            .train_config
            .clone()
            .map(super::validate::train_config_from_value)
            .transpose()
            .map_err(|e| file_err(path, format!("stored training configuration: {e}")))?
            .ok_or_else(|| file_err(path, "no training configuration stored"))?;
        let (cfg, notes) = resume::resolve(&stored, &architecture, meta.epochs_completed, request)?;
        let state = loaded
            .optimizer
            .clone()
            .ok_or_else(|| file_err(path, "no optimizer state to resume from"))?;
        let opt = AdamW::with_state(loaded.vars.varmap(), state)
            .map_err(|e| file_err(path, e.to_string()))?;
        let trainer = Self {
            model: loaded.model,
            vars: loaded.vars,
            cfg,
            opt,
            normalizers: had_norm.then_some(loaded.normalizers),
            meta,
            device: device.clone(),
            stop: None,
        };
        Ok(Resumed { trainer, notes })
    }

    /// Stops training at the next batch once `flag` is set (by a signal handler, say):
    /// [`Trainer::fit`] then returns [`TrainError::Interrupted`]. The epoch under way is
    /// abandoned rather than checkpointed half-done, so that a run resumed from the last
    /// checkpoint reaches the same weights as one never interrupted.
    pub fn set_stop_flag(&mut self, flag: Arc<AtomicBool>) {
        self.stop = Some(flag);
    }

    /// Changes the total number of epochs (to continue a run in stages).
    pub fn set_epochs(&mut self, epochs: usize) {
        self.cfg.epochs = epochs;
    }

    /// The training configuration.
    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// The model being trained.
    pub fn model(&self) -> &dyn NeuralOperator {
        self.model.as_ref()
    }

    /// Its variables.
    pub fn vars(&self) -> &SeededVarMap {
        &self.vars
    }

    /// The normalisers (fitted at the start of [`Trainer::fit`]).
    pub fn normalizers(&self) -> Option<&Normalizers> {
        self.normalizers.as_ref()
    }

    /// Training progress so far.
    pub fn meta(&self) -> &TrainingMeta {
        &self.meta
    }

    /// A checkpoint of the current state (weights, normalisers, training state, optimiser).
    pub fn checkpoint(&self) -> Result<Checkpoint> {
        let mut meta = self.meta.clone();
        meta.train_config = Some(serde_json::to_value(&self.cfg)?);
        Ok(Checkpoint {
            config: self.model.config_json(),
            weights: snapshot(self.vars.varmap())?,
            normalizers: self.normalizers.clone(),
            training: Some(meta),
            optimizer: Some(self.opt.snapshot()?),
        })
    }

    /// Trains up to `cfg.epochs` epochs (from where a resumed run stopped). With `out_dir`,
    /// writes `last.safetensors` every epoch, `best.safetensors` on improvement and the log.
    ///
    /// Errors before any step: an empty set ([`TrainError::EmptySplit`]), a NaN or infinite
    /// input or target ([`TrainError::NonFiniteData`]). During training: a non-finite loss
    /// or validation error ([`TrainError::NonFiniteValidation`]); the checkpoints then keep
    /// the last good epoch.
    pub fn fit(
        &mut self,
        train: &TensorDataset,
        val: &TensorDataset,
        out_dir: Option<&Path>,
    ) -> Result<TrainSummary> {
        for (split, data) in [("training", train), ("validation", val)] {
            if data.is_empty() {
                return Err(TrainError::EmptySplit {
                    split: split.to_string(),
                }
                .into());
            }
            data.check_finite(split)?;
        }
        if self.normalizers.is_none() {
            self.normalizers = Some(Normalizers::fit(self.cfg.normalizer, train)?);
        }
        if let Some(dir) = out_dir {
            std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let start = self.meta.epochs_completed;
        let steps_per_epoch = train.len().div_ceil(self.cfg.batch_size);
        let bar = self.progress_bar(start, steps_per_epoch);
        let mut summary = TrainSummary {
            history: Vec::new(),
            best_val: self.meta.best_val,
            best_epoch: self.meta.best_epoch,
            stopped_early: false,
        };
        for epoch in start..self.cfg.epochs {
            if let Some(p) = self.cfg.early_stopping_patience {
                if self.meta.epochs_since_improvement >= p {
                    summary.stopped_early = true;
                    break;
                }
            }
            let record = self.run_epoch(epoch, train, val, &bar)?;
            self.after_epoch(&record, out_dir)?;
            summary.history.push(record);
        }
        bar.finish_and_clear();
        summary.best_val = self.meta.best_val;
        summary.best_epoch = self.meta.best_epoch;
        if let Some(p) = self.cfg.early_stopping_patience {
            summary.stopped_early |= self.meta.epochs_since_improvement >= p
                && self.meta.epochs_completed < self.cfg.epochs;
        }
        Ok(summary)
    }

    fn run_epoch(
        &mut self,
        epoch: usize,
        train: &TensorDataset,
        val: &TensorDataset,
        bar: &ProgressBar,
    ) -> Result<EpochRecord> {
        let t0 = Instant::now();
        let lr = self.cfg.schedule.lr(self.cfg.optimizer.lr, epoch);
        self.opt.set_lr(lr);
        let norm = self
            .normalizers
            .clone()
            .ok_or_else(|| invalid("normalisers not fitted"))?;
        let (mut sum, mut count) = (0.0f64, 0usize);
        for (b, idx) in train
            .epoch_batches(self.cfg.batch_size, self.cfg.shuffle, self.cfg.seed, epoch)
            .iter()
            .enumerate()
        {
            if self
                .stop
                .as_ref()
                .is_some_and(|f| f.load(Ordering::Relaxed))
            {
                return Err(TrainError::Interrupted {
                    epoch,
                    epochs_completed: self.meta.epochs_completed,
                }
                .into());
            }
            let (x, y) = train.batch(idx, &self.device)?;
            let (model, loss_fn, opt) = (&self.model, &self.cfg.loss, &mut self.opt);
            // On the CPU the whole step runs on a pool thread, so that its ops fork there
            // (`no_layers::threads`).
            let value = no_layers::threads::on_worker_for(&self.device, || -> Result<f64> {
                let pred = norm
                    .output
                    .decode(&model.forward_t(&norm.input.encode(&x)?, true)?)?;
                let loss = loss_fn.compute(&pred, &y)?;
                let value = loss.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
                if !value.is_finite() {
                    return Err(ModelError::NonFiniteLoss {
                        epoch,
                        batch: b,
                        loss: value,
                    });
                }
                opt.backward_step(&loss)?;
                Ok(value)
            })?;
            self.meta.steps += 1;
            sum += value * idx.len() as f64;
            count += idx.len();
            bar.set_message(format!("epoch {epoch} loss {:.4}", sum / count as f64));
            bar.inc(1);
        }
        let train_secs = t0.elapsed().as_secs_f64();
        let val_loss = self.evaluate(val)?;
        if !val_loss.is_finite() {
            return Err(TrainError::NonFiniteValidation {
                epoch,
                value: val_loss,
            }
            .into());
        }
        Ok(EpochRecord {
            epoch,
            train_loss: sum / count.max(1) as f64,
            val_loss,
            lr,
            wall_s: t0.elapsed().as_secs_f64(),
            samples_per_s: count as f64 / train_secs.max(1e-9),
        })
    }

    fn after_epoch(&mut self, record: &EpochRecord, out_dir: Option<&Path>) -> Result<()> {
        self.meta.epochs_completed = record.epoch + 1;
        self.meta.last_val = Some(record.val_loss);
        let improved = self.meta.best_val.is_none_or(|b| record.val_loss < b);
        if improved {
            self.meta.best_val = Some(record.val_loss);
            self.meta.best_epoch = Some(record.epoch);
            self.meta.epochs_since_improvement = 0;
        } else {
            self.meta.epochs_since_improvement += 1;
        }
        let Some(dir) = out_dir else {
            return Ok(());
        };
        self.append_log(dir, record)?;
        let ckpt = self.checkpoint()?;
        if improved {
            let best = Checkpoint {
                optimizer: None,
                ..ckpt.clone()
            };
            best.save(dir.join("best.safetensors"))?;
        }
        ckpt.save(dir.join("last.safetensors"))
    }

    /// Mean relative L2 (over samples and output channels) in physical units, no update.
    /// An empty set is an error (its mean would be NaN).
    pub fn evaluate(&self, data: &TensorDataset) -> Result<f64> {
        if data.is_empty() {
            return Err(TrainError::EmptySplit {
                split: "evaluated".to_string(),
            }
            .into());
        }
        let norm = self
            .normalizers
            .clone()
            .unwrap_or_else(|| Normalizers::identity(0, 0));
        let mut sum = 0.0;
        for idx in data.epoch_batches(self.cfg.batch_size, false, 0, 0) {
            let (x, y) = data.batch(&idx, &self.device)?;
            let pred = norm
                .output
                .decode(&self.model.predict(&norm.input.encode(&x)?)?)?;
            let per = relative_l2_per_channel(&pred, &y)?.mean(1)?;
            sum += per
                .to_dtype(candle_core::DType::F64)?
                .sum_all()?
                .to_scalar::<f64>()?;
        }
        Ok(sum / data.len() as f64)
    }

    fn append_log(&self, dir: &Path, r: &EpochRecord) -> Result<()> {
        let (path, line, header): (PathBuf, String, &str) = match self.cfg.log_format {
            LogFormat::JsonLines => (dir.join("log.jsonl"), serde_json::to_string(r)?, ""),
            LogFormat::Csv => (
                dir.join("log.csv"),
                format!(
                    "{},{},{},{},{},{}",
                    r.epoch, r.train_loss, r.val_loss, r.lr, r.wall_s, r.samples_per_s
                ),
                "epoch,train_loss,val_loss,lr,wall_s,samples_per_s\n",
            ),
        };
        let io = |source| ModelError::Io {
            path: path.clone(),
            source,
        };
        let fresh = !path.exists();
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io)?;
        if fresh {
            f.write_all(header.as_bytes()).map_err(io)?;
        }
        writeln!(f, "{line}").map_err(io)
    }

    fn progress_bar(&self, start: usize, steps_per_epoch: usize) -> ProgressBar {
        if !self.cfg.progress {
            return ProgressBar::hidden();
        }
        let total = (self.cfg.epochs.saturating_sub(start)).saturating_mul(steps_per_epoch) as u64;
        let bar = ProgressBar::new(total);
        let style = ProgressStyle::with_template(
            "{bar:30} {pos}/{len} steps [{elapsed_precise}<{eta_precise}] {per_sec} {msg}",
        );
        if let Ok(style) = style {
            bar.set_style(style);
        }
        bar
    }
}

fn invalid(reason: &str) -> ModelError {
    ModelError::InvalidConfig {
        model: "trainer",
        reason: reason.to_string(),
    }
}

fn file_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::File {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}
