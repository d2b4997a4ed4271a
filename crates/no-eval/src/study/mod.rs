//! The whole study: protocol → data → training of every selected model → evaluation →
//! report.
//!
//! [`StudyConfig`] holds everything that defines a run (the data protocol, each model's
//! architecture and training budget, the seeds, what is evaluated), is serde JSON, and has
//! two built-in values: [`StudyConfig::quick`] (the main job's embedded default, 3 seeds,
//! sized to run within a quarter of an hour on a 2-core CPU) and [`StudyConfig::full`]
//! (the paper's sizes).
//!
//! A study is a list of independent jobs, one per model and seed ([`jobs`]). [`run`]
//! executes them all in this process and writes the report; [`run_jobs`] executes a slice
//! of them (a cluster job) and [`merge`] joins the slices' records into the same report.

mod data;
mod evaluate;
pub mod jobs;
mod run;

use std::path::{Path, PathBuf};

use fhn_solver::{InputSampling, Protocol};
use ndarray::{Array4, ArrayView4};
use no_models::causal::CausalConfig;
use no_models::cno::CnoConfig;
use no_models::deeponet::{DeepOnetCnnConfig, DeepOnetConfig};
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::pod::PodDeepOnetConfig;
use no_models::train::{LossKind, Schedule, TrainConfig};
use no_models::{ModelConfig, NormalizerKind};
use serde::{Deserialize, Serialize};

pub use evaluate::Predictor;
pub use jobs::{measure_pending_latency, run_jobs, Job, JobOptions, JobRecord, JobStatus};
pub use run::{merge, merge_partial, run, run_with};

use crate::error::{EvalError, Result};
use crate::latency::LatencyConfig;
use crate::report::Variant;
use crate::strict::parse_strict;
use crate::translation::shift_batch;

/// One model of the study: what to build and how long to train it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Label in the report (unique).
    pub label: String,
    /// Paper setting or a remedy.
    pub variant: Variant,
    /// The architecture and its sizes.
    pub config: ModelConfig,
    /// The training budget.
    pub train: TrainConfig,
    /// Seeds this model is trained with, when not the study's `seeds` (the full study
    /// gives its cheap models more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seeds: Option<usize>,
    /// How this model reads the current, when not as the protocol's `input_sampling` says
    /// (`"point"` or `"cell_average"`). Only the model's input changes: the samples, the
    /// targets and every measurement are the study's. The quick study's `causal-cells` row
    /// is the causal operator reading cell averages (docs/benchmark.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sampling: Option<InputSampling>,
}

impl ModelSpec {
    /// How this model's input is sampled in a study on `protocol`.
    pub fn sampling(&self, protocol: &Protocol) -> InputSampling {
        self.input_sampling.unwrap_or(protocol.input_sampling)
    }
}

/// What is measured after training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Validation samples (training distribution) whose inputs are shifted for E(s).
    pub equivariance_samples: usize,
    /// Only samples whose pulse centre lies in this interval are used for E(s), so that
    /// the largest space shift keeps the pulse inside the domain.
    pub equivariance_x0_range: (f64, f64),
    /// Delays of the E(s) curve, time units (rounded to output steps).
    pub time_shifts: Vec<f64>,
    /// Space shifts of the E(s) curve, length units (rounded to output steps).
    pub space_shifts: Vec<f64>,
    /// The delay the table reports.
    pub fixed_time_shift: f64,
    /// The space shift the table reports.
    pub fixed_space_shift: f64,
    /// Latency sweep.
    pub latency: LatencyConfig,
    /// Test samples drawn as space–time maps.
    pub map_samples: usize,
    /// Finer output grid `[nt, nx]` for the zero-shot resolution test (`None`: skip).
    pub fine_grid: Option<[usize; 2]>,
    /// Test samples solved on the finer grid.
    pub fine_samples: usize,
    /// Batch size of evaluation forwards.
    pub eval_batch: usize,
}

/// A whole run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyConfig {
    /// The data.
    pub protocol: Protocol,
    /// The models, trained in this order.
    pub models: Vec<ModelSpec>,
    /// The measurements.
    pub eval: EvalConfig,
    /// Largest delay (time units) of the augmentation remedy; delays are uniform on the
    /// output steps in `[0, augment_max_delay]`.
    pub augment_max_delay: f64,
    /// Seed of the weights and of the augmentation draws of each model's first run; run
    /// `r` uses `seed + r` (and its model's `train.seed + r` for the shuffling).
    pub seed: u64,
    /// How many times each model is trained, each time with the next seed (a model's own
    /// `seeds` overrides it). The data stay those of the protocol's seed.
    #[serde(default = "one_seed")]
    pub seeds: usize,
}

fn one_seed() -> usize {
    1
}

/// At most this many seeds per model.
pub const MAX_SEEDS: usize = 1000;

/// A training budget: `epochs` at `batch_size`, AdamW at `lr` with a cosine decay to 1% of it,
/// minimising the pooled relative L2 ([`LossKind::PooledRelativeL2`]).
pub fn budget(epochs: usize, batch_size: usize, lr: f64, seed: u64) -> TrainConfig {
    let mut t = TrainConfig {
        epochs,
        batch_size,
        seed,
        progress: true,
        ..TrainConfig::default()
    };
    t.optimizer.lr = lr;
    // One ratio per channel over the batch: with the per-sample ratio the few
    // sub-threshold samples (no wave, targets ~20× smaller in norm) dominate the gradient;
    // measured on the quick study, the pooled loss halves FNO's and CNO's validation
    // medians at the same budget (docs/benchmark.md).
    t.loss = LossKind::PooledRelativeL2;
    t.schedule = Schedule::Cosine {
        t_max: epochs,
        eta_min: lr * 0.01,
    };
    t
}

fn spec(label: &str, variant: Variant, config: ModelConfig, train: TrainConfig) -> ModelSpec {
    ModelSpec {
        label: label.into(),
        variant,
        config,
        train,
        seeds: None,
        input_sampling: None,
    }
}

/// The quick study's causal operator: 6 blocks dilated 1, 2, …, 32 in time and space
/// (a receptive field of 127 rows in time, more than the 50-row window).
fn quick_causal() -> CausalConfig {
    CausalConfig {
        hidden_channels: 24,
        n_layers: 6,
        dilation_cycle: 6,
        ..CausalConfig::default()
    }
}

/// The delay-equivariant variant: the causal operator, trained on the fixed-onset split
/// without augmentation and without normalisation (a normaliser's shift would move the
/// rest state off zero; docs/benchmark.md).
fn causal_spec(config: CausalConfig, mut train: TrainConfig) -> ModelSpec {
    train.normalizer = NormalizerKind::None;
    spec(
        "causal",
        Variant::Causal,
        ModelConfig::Causal(config),
        train,
    )
}

/// The causal operator reading the current as cell averages: with point values a test
/// onset between two output rows can give an input the fixed-onset training split never
/// shows (a pulse covering one row more), which no delay-equivariant model can read right;
/// cell averages move the charge continuously with the onset (docs/benchmark.md, "Where
/// the 1.49× comes from").
fn causal_cells_spec(config: CausalConfig, train: TrainConfig) -> ModelSpec {
    ModelSpec {
        label: "causal-cells".into(),
        input_sampling: Some(InputSampling::CellAverage),
        ..causal_spec(config, train)
    }
}

impl StudyConfig {
    /// The main job's default: 3 seeds of every model; the quick protocol's laws and sample
    /// counts (128 train, 32 validation, 64 translated test) on a 50 × 50 output grid, the seven architectures at
    /// reduced widths with per-model epoch budgets (docs/benchmark.md lists them), plus the
    /// two remedies on FNO (no positional embedding; delay augmentation), delay
    /// augmentation on DeepONet, and the causal operator (delay-equivariant by construction)
    /// reading the current as point values, as every other model does, and as cell averages
    /// (`causal-cells`).
    pub fn quick() -> Self {
        let mut protocol = Protocol::quick();
        // A 50 × 50 output grid (every other node of the 99 × 99 grid): a quarter of the
        // work per sample, which is what fits seven models in the 15-minute budget.
        protocol.output.nt = 50;
        protocol.output.nx = 50;
        let grid = [protocol.output.nt, protocol.output.nx];
        let seed = 7;
        let fno = FnoConfig {
            n_modes: vec![12, 12],
            hidden_channels: 16,
            n_layers: 4,
            ..FnoConfig::default()
        };
        let fno_nopos = FnoConfig {
            positional_embedding: false,
            ..fno.clone()
        };
        let local = LocalNoConfig {
            n_modes: vec![12, 12],
            hidden_channels: 16,
            n_layers: 2,
            default_in_shape: grid,
            ..LocalNoConfig::default()
        };
        let don = DeepOnetConfig {
            grid,
            branch_hidden: vec![128, 128],
            trunk_hidden: vec![128, 128],
            n_basis: 128,
            ..DeepOnetConfig::default()
        };
        let don_cnn = DeepOnetCnnConfig {
            grid,
            conv_channels: vec![16, 32, 48, 64],
            branch_hidden: vec![64, 64],
            trunk_hidden: vec![64, 64, 64],
            n_basis: 256,
            ..DeepOnetCnnConfig::default()
        };
        let pod = PodDeepOnetConfig {
            grid,
            branch_hidden: vec![128, 128],
            ..PodDeepOnetConfig::default()
        };
        let cno = CnoConfig {
            n_layers: 2,
            n_res: 1,
            n_res_neck: 1,
            channel_multiplier: 8,
            latent_lift_proj_dim: 16,
            ..CnoConfig::default()
        };
        let models = vec![
            spec(
                "cno",
                Variant::Paper,
                ModelConfig::Cno(cno),
                budget(35, 8, 3e-3, seed),
            ),
            spec(
                "don",
                Variant::Paper,
                ModelConfig::Don(don.clone()),
                budget(300, 16, 1e-3, seed),
            ),
            spec(
                "don_cnn",
                Variant::Paper,
                ModelConfig::DonCnn(don_cnn),
                budget(150, 16, 1e-3, seed),
            ),
            spec(
                "pod_don",
                Variant::Paper,
                ModelConfig::PodDon(pod),
                budget(300, 16, 1e-3, seed),
            ),
            spec(
                "fno",
                Variant::Paper,
                ModelConfig::Fno(fno.clone()),
                budget(45, 8, 3e-3, seed),
            ),
            spec(
                "tfno",
                Variant::Paper,
                ModelConfig::Tfno(fno.clone()),
                budget(45, 8, 3e-3, seed),
            ),
            spec(
                "local_no",
                Variant::Paper,
                ModelConfig::LocalNo(local),
                budget(25, 8, 3e-3, seed),
            ),
            spec(
                "fno-nopos",
                Variant::NoPositional,
                ModelConfig::Fno(fno_nopos),
                budget(45, 8, 3e-3, seed),
            ),
            spec(
                "fno+aug",
                Variant::Augmented,
                ModelConfig::Fno(fno),
                budget(45, 8, 3e-3, seed),
            ),
            spec(
                "don+aug",
                Variant::Augmented,
                ModelConfig::Don(don),
                budget(300, 16, 1e-3, seed),
            ),
            causal_spec(quick_causal(), budget(40, 8, 3e-3, seed)),
            causal_cells_spec(quick_causal(), budget(40, 8, 3e-3, seed)),
        ];
        Self {
            protocol,
            models,
            eval: EvalConfig::quick(),
            augment_max_delay: 19.0,
            seed,
            seeds: 3,
        }
    }

    /// The full-size study: the default protocol (1000/100/200 samples) and the
    /// architectures at their default (paper-sized) configurations, 100+ epochs each; one
    /// seed per model, three for the DeepONet family (cheap at any size).
    pub fn full() -> Self {
        let protocol = Protocol::default_protocol();
        let grid = [protocol.output.nt, protocol.output.nx];
        let seed = 7;
        let fno = FnoConfig::default();
        let models = vec![
            spec(
                "cno",
                Variant::Paper,
                ModelConfig::Cno(CnoConfig::default()),
                budget(100, 16, 1e-3, seed),
            ),
            spec(
                "don",
                Variant::Paper,
                ModelConfig::Don(DeepOnetConfig {
                    grid,
                    ..DeepOnetConfig::default()
                }),
                budget(300, 32, 1e-3, seed),
            ),
            spec(
                "don_cnn",
                Variant::Paper,
                ModelConfig::DonCnn(DeepOnetCnnConfig {
                    grid,
                    ..DeepOnetCnnConfig::default()
                }),
                budget(200, 32, 1e-3, seed),
            ),
            spec(
                "pod_don",
                Variant::Paper,
                ModelConfig::PodDon(PodDeepOnetConfig {
                    grid,
                    ..PodDeepOnetConfig::default()
                }),
                budget(300, 32, 1e-3, seed),
            ),
            spec(
                "fno",
                Variant::Paper,
                ModelConfig::Fno(fno.clone()),
                budget(100, 16, 1e-3, seed),
            ),
            spec(
                "tfno",
                Variant::Paper,
                ModelConfig::Tfno(fno.clone()),
                budget(100, 16, 1e-3, seed),
            ),
            spec(
                "local_no",
                Variant::Paper,
                ModelConfig::LocalNo(LocalNoConfig {
                    default_in_shape: grid,
                    ..LocalNoConfig::default()
                }),
                budget(100, 16, 1e-3, seed),
            ),
            spec(
                "fno-nopos",
                Variant::NoPositional,
                ModelConfig::Fno(FnoConfig {
                    positional_embedding: false,
                    ..fno.clone()
                }),
                budget(100, 16, 1e-3, seed),
            ),
            spec(
                "fno+aug",
                Variant::Augmented,
                ModelConfig::Fno(fno),
                budget(100, 16, 1e-3, seed),
            ),
            spec(
                "don+aug",
                Variant::Augmented,
                ModelConfig::Don(DeepOnetConfig {
                    grid,
                    ..DeepOnetConfig::default()
                }),
                budget(300, 32, 1e-3, seed),
            ),
            causal_spec(CausalConfig::default(), budget(100, 16, 1e-3, seed)),
        ];
        // The DeepONets train in minutes even at full size: three seeds each.
        let mut models = models;
        for m in &mut models {
            if matches!(
                m.config,
                ModelConfig::Don(_) | ModelConfig::DonCnn(_) | ModelConfig::PodDon(_)
            ) {
                m.seeds = Some(3);
            }
        }
        Self {
            protocol,
            models,
            eval: EvalConfig {
                equivariance_samples: 32,
                map_samples: 3,
                fine_grid: Some([199, 199]),
                fine_samples: 16,
                latency: LatencyConfig {
                    batch_sizes: vec![1, 8, 32],
                    warmup: 2,
                    repeats: 10,
                },
                ..EvalConfig::quick()
            },
            augment_max_delay: 19.0,
            seed,
            seeds: 1,
        }
    }

    /// `quick`, `default` (the full study), or a JSON file holding a [`StudyConfig`]
    /// (or only a `fhn_solver::Protocol`, then used with the quick models and evaluation).
    /// The result is validated ([`StudyConfig::validate`]).
    pub fn by_name_or_path(s: &str) -> Result<Self> {
        match s {
            "quick" => Ok(Self::quick()),
            "default" | "full" => Ok(Self::full()),
            path => {
                let text = std::fs::read_to_string(path).map_err(|e| EvalError::io(path, e))?;
                Self::from_json(&text).map_err(|e| match e {
                    EvalError::Config { what, reason } => EvalError::Config {
                        what: format!("{what} in {path}"),
                        reason,
                    },
                    other => other,
                })
            }
        }
    }

    /// A study from JSON text: a whole [`StudyConfig`], or only a `fhn_solver::Protocol`
    /// (used with the quick models and evaluation). Which of the two the text is meant to
    /// be is read from its keys (`models`, `eval`, `protocol` or `augment_max_delay` make it
    /// a study), so that an error names the field of that type that is wrong, with the
    /// closest valid name for a typo. The result is validated.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| EvalError::Config {
                what: "study file".into(),
                reason: format!("not JSON: {e}"),
            })?;
        let Some(object) = value.as_object() else {
            return Err(EvalError::Config {
                what: "study file".into(),
                reason: "expected a JSON object (a StudyConfig or a Protocol)".into(),
            });
        };
        const STUDY_KEYS: [&str; 4] = ["models", "eval", "protocol", "augment_max_delay"];
        if STUDY_KEYS.iter().any(|k| object.contains_key(*k)) {
            let cfg = parse_study(&value)?;
            cfg.validate()?;
            return Ok(cfg);
        }
        let protocol: Protocol = parse_strict(&value, "Protocol")?;
        protocol.validate()?;
        Ok(Self::quick().with_protocol(protocol))
    }

    /// Checks every field: the protocol (and that each split has samples), the model list
    /// (at least one, unique non-empty labels, at least one epoch and a batch of at least
    /// one each), the evaluation and the augmentation delay.
    pub fn validate(&self) -> Result<()> {
        self.protocol.validate()?;
        for (name, split) in [
            ("protocol.train", &self.protocol.train),
            ("protocol.validation", &self.protocol.validation),
            ("protocol.test", &self.protocol.test),
        ] {
            if split.n_samples == 0 {
                return Err(config_error(
                    name,
                    "n_samples = 0: every split needs at least 1 sample",
                ));
            }
        }
        if self.models.is_empty() {
            return Err(config_error(
                "StudyConfig",
                "`models` is empty: expected at least one model",
            ));
        }
        let mut labels = std::collections::HashSet::new();
        for (k, m) in self.models.iter().enumerate() {
            let at = format!("ModelSpec at `models[{k}]` ({})", m.label);
            if m.label.trim().is_empty() {
                return Err(config_error(&at, "`label` is empty"));
            }
            if let Some(reason) = label_problem(&m.label) {
                return Err(config_error(&at, reason));
            }
            if m.seeds.is_some_and(|n| n == 0 || n > MAX_SEEDS) {
                return Err(config_error(
                    &at,
                    format!(
                        "`seeds` = {}: expected 1 to {MAX_SEEDS} (or absent for the study's)",
                        m.seeds.unwrap_or(0)
                    ),
                ));
            }
            if !labels.insert(m.label.as_str()) {
                return Err(config_error(
                    &at,
                    format!("`label` {:?} is used twice: labels must be unique", m.label),
                ));
            }
            if m.train.epochs == 0 || m.train.batch_size == 0 {
                return Err(config_error(
                    &at,
                    format!(
                        "train.epochs = {} and train.batch_size = {}: both must be at least 1",
                        m.train.epochs, m.train.batch_size
                    ),
                ));
            }
            m.train
                .validate()
                .map_err(|e| config_error(&at, format!("train: {e}")))?;
        }
        if self.seeds == 0 || self.seeds > MAX_SEEDS {
            return Err(config_error(
                "StudyConfig",
                format!("`seeds` = {}: expected 1 to {MAX_SEEDS}", self.seeds),
            ));
        }
        self.eval.validate()?;
        if !(self.augment_max_delay.is_finite() && self.augment_max_delay >= 0.0) {
            return Err(config_error(
                "StudyConfig",
                format!(
                    "`augment_max_delay` = {}: expected a finite delay ≥ 0",
                    self.augment_max_delay
                ),
            ));
        }
        Ok(())
    }

    /// The same models and evaluation on another protocol (DeepONet grids follow it).
    pub fn with_protocol(mut self, protocol: Protocol) -> Self {
        let grid = [protocol.output.nt, protocol.output.nx];
        for m in &mut self.models {
            match &mut m.config {
                ModelConfig::Don(c) => c.grid = grid,
                ModelConfig::DonCnn(c) => c.grid = grid,
                ModelConfig::PodDon(c) => c.grid = grid,
                ModelConfig::LocalNo(c) => c.default_in_shape = grid,
                _ => {}
            }
        }
        self.protocol = protocol;
        self
    }

    /// Keeps only the models whose label or architecture name is in `names`.
    pub fn restrict(&mut self, names: &[String]) -> Result<()> {
        let known: Vec<String> = self.models.iter().map(|m| m.label.clone()).collect();
        for n in names {
            if !self
                .models
                .iter()
                .any(|m| &m.label == n || m.config.name() == n)
            {
                return Err(EvalError::invalid(
                    "model",
                    n,
                    format!("one of {}", known.join(", ")),
                ));
            }
        }
        self.models
            .retain(|m| names.iter().any(|n| n == &m.label || n == m.config.name()));
        Ok(())
    }

    /// Drops the remedy variants (keeps the paper setting only).
    pub fn paper_only(&mut self) {
        self.models.retain(|m| m.variant == Variant::Paper);
    }
}

impl EvalConfig {
    /// Checks every field: at least one equivariance sample, a finite x₀ range with
    /// lo ≤ hi, finite shifts, a valid latency sweep, a finer grid of at least 2 × 2 and an
    /// evaluation batch of at least 1.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(config_error("EvalConfig at `eval`", reason));
        if self.equivariance_samples == 0 {
            return bad("`equivariance_samples` = 0: expected at least 1".into());
        }
        let (lo, hi) = self.equivariance_x0_range;
        if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
            return bad(format!(
                "`equivariance_x0_range` = ({lo}, {hi}): expected finite bounds with lo ≤ hi"
            ));
        }
        for (name, shifts) in [
            ("time_shifts", &self.time_shifts),
            ("space_shifts", &self.space_shifts),
        ] {
            if let Some(s) = shifts.iter().find(|s| !s.is_finite()) {
                return bad(format!("`{name}` holds {s}: expected finite shifts"));
            }
        }
        for (name, s) in [
            ("fixed_time_shift", self.fixed_time_shift),
            ("fixed_space_shift", self.fixed_space_shift),
        ] {
            if !s.is_finite() {
                return bad(format!("`{name}` = {s}: expected a finite shift"));
            }
        }
        if let Some([nt, nx]) = self.fine_grid {
            if nt < 2 || nx < 2 {
                return bad(format!(
                    "`fine_grid` = [{nt}, {nx}]: expected at least 2 × 2 (or null to skip)"
                ));
            }
        }
        if self.eval_batch == 0 {
            return bad("`eval_batch` = 0: expected a batch of at least 1".into());
        }
        self.latency
            .validate()
            .map_err(|reason| config_error("LatencyConfig at `eval.latency`", reason))
    }

    /// 8 samples for E(s), delays up to 15 time units, shifts up to ±0.2, latency at batch
    /// 1 and 32 (3 timed forwards), three maps, four samples on a 99 × 99 grid (twice the
    /// quick study's resolution; use 199 × 199 for the default protocol's 100 × 100).
    pub fn quick() -> Self {
        Self {
            equivariance_samples: 8,
            equivariance_x0_range: (0.3, 0.7),
            time_shifts: vec![0.0, 5.0, 10.0, 15.0],
            space_shifts: vec![-0.2, -0.1, 0.0, 0.1, 0.2],
            fixed_time_shift: 10.0,
            fixed_space_shift: 0.1,
            latency: LatencyConfig {
                batch_sizes: vec![1, 32],
                warmup: 1,
                repeats: 3,
            },
            map_samples: 3,
            fine_grid: Some([99, 99]),
            fine_samples: 4,
            eval_batch: 16,
        }
    }
}

/// Why `label` cannot name a model's directories (`models/LABEL/`, `jobs/LABEL/`), if it
/// cannot: a path separator, a leading dot, or a control character.
fn label_problem(label: &str) -> Option<String> {
    if label.starts_with('.') || label.contains(['/', '\\']) || label.chars().any(char::is_control)
    {
        Some(format!(
            "`label` {label:?} cannot name a directory: no `/`, `\\`, leading `.` or control characters"
        ))
    } else {
        None
    }
}

/// An [`EvalError::Config`] from its parts.
fn config_error(what: &str, reason: impl Into<String>) -> EvalError {
    EvalError::Config {
        what: what.to_string(),
        reason: reason.into(),
    }
}

/// A [`StudyConfig`] from JSON. On an error, each part is parsed on its own so that the
/// message names the part at fault (``EvalConfig at `eval` ``, ``ModelSpec at
/// `models[2]` ``, ...), not only the whole.
fn parse_study(value: &serde_json::Value) -> Result<StudyConfig> {
    let whole = match serde_json::from_value::<StudyConfig>(value.clone()) {
        Ok(cfg) => return Ok(cfg),
        Err(e) => e,
    };
    let part = |pointer: &str| value.pointer(pointer);
    if let Some(v) = part("/protocol") {
        parse_strict::<Protocol>(v, "Protocol at `protocol`")?;
    }
    if let Some(v) = part("/eval/latency") {
        parse_strict::<LatencyConfig>(v, "LatencyConfig at `eval.latency`")?;
    }
    if let Some(v) = part("/eval") {
        parse_strict::<EvalConfig>(v, "EvalConfig at `eval`")?;
    }
    if let Some(models) = part("/models").and_then(|m| m.as_array()) {
        for (k, m) in models.iter().enumerate() {
            if let Some(c) = m.get("config") {
                parse_strict::<ModelConfig>(c, &format!("ModelConfig at `models[{k}].config`"))?;
            }
            if let Some(t) = m.get("train") {
                parse_strict::<TrainConfig>(t, &format!("TrainConfig at `models[{k}].train`"))?;
            }
            parse_strict::<ModelSpec>(m, &format!("ModelSpec at `models[{k}]`"))?;
        }
    }
    Err(config_error(
        "StudyConfig",
        crate::strict::suggest_field(&whole.to_string()),
    ))
}

/// Prints one progress line (phases are coarse: a line each is enough).
fn say(progress: bool, msg: &str) {
    if progress {
        eprintln!("[benchmark] {msg}");
    }
}

/// Where a job puts its checkpoints and training log: `out/models/LABEL/seed-SEED/`.
pub fn model_dir(out: &Path, label: &str, seed: u64) -> PathBuf {
    out.join("models").join(label).join(format!("seed-{seed}"))
}

/// Shifts inputs by whole steps with the rest fill (re-exported for examples).
pub fn shift_inputs(a: ArrayView4<f32>, s: crate::translation::Shift) -> Array4<f32> {
    shift_batch(a, s, 0.0)
}

#[cfg(test)]
mod tests {
    use super::data::{pick_maps, steps_of};
    use super::*;
    use fhn_solver::{OutputGrid, Split};

    #[test]
    fn built_in_studies_round_trip_through_json_and_keep_grids_consistent() {
        for cfg in [StudyConfig::quick(), StudyConfig::full()] {
            let back: StudyConfig =
                serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
            assert_eq!(back, cfg);
            let grid = [cfg.protocol.output.nt, cfg.protocol.output.nx];
            for m in &cfg.models {
                match &m.config {
                    ModelConfig::Don(c) => assert_eq!(c.grid, grid),
                    ModelConfig::DonCnn(c) => assert_eq!(c.grid, grid),
                    ModelConfig::PodDon(c) => assert_eq!(c.grid, grid),
                    ModelConfig::LocalNo(c) => assert_eq!(c.default_in_shape, grid),
                    _ => {}
                }
            }
            // The finer grid nests the study grid (every other node).
            let [fnt, fnx] = cfg.eval.fine_grid.unwrap();
            assert_eq!((fnt - 1, fnx - 1), (2 * (grid[0] - 1), 2 * (grid[1] - 1)));
        }
        assert_eq!(
            StudyConfig::by_name_or_path("quick").unwrap(),
            StudyConfig::quick()
        );
        assert!(StudyConfig::by_name_or_path("/nonexistent/study.json").is_err());
    }

    #[test]
    fn restrict_accepts_labels_and_architectures_and_rejects_unknown_names() {
        let mut cfg = StudyConfig::quick();
        cfg.restrict(&["fno".into(), "cno".into()]).unwrap();
        let labels: Vec<&str> = cfg.models.iter().map(|m| m.label.as_str()).collect();
        assert_eq!(labels, ["cno", "fno", "fno-nopos", "fno+aug"]);
        cfg.paper_only();
        assert_eq!(cfg.models.len(), 2);
        assert!(StudyConfig::quick().restrict(&["gpt".into()]).is_err());
    }

    #[test]
    fn causal_variant_is_unnormalised_and_sees_the_whole_window() {
        for cfg in [StudyConfig::quick(), StudyConfig::full()] {
            let causal: Vec<&ModelSpec> = cfg
                .models
                .iter()
                .filter(|m| m.variant == Variant::Causal)
                .collect();
            assert_eq!(
                causal[0].label, "causal",
                "both studies run the causal variant"
            );
            for m in causal {
                // A shift would move the rest state off zero (docs/benchmark.md).
                assert_eq!(m.train.normalizer, NormalizerKind::None);
                let ModelConfig::Causal(c) = &m.config else {
                    panic!("the causal variant must be the causal operator");
                };
                assert!(c.time_receptive_field() >= cfg.protocol.output.nt);
            }
        }
    }

    #[test]
    fn only_the_quick_causal_cells_row_reads_cell_averages() {
        let quick = StudyConfig::quick();
        let own: Vec<(&str, InputSampling)> = quick
            .models
            .iter()
            .filter_map(|m| m.input_sampling.map(|s| (m.label.as_str(), s)))
            .collect();
        assert_eq!(own, [("causal-cells", InputSampling::CellAverage)]);
        assert_eq!(quick.protocol.input_sampling, InputSampling::Point);
        let cells = quick.models.iter().find(|m| m.label == "causal-cells");
        let causal = quick.models.iter().find(|m| m.label == "causal");
        let (cells, causal) = (cells.unwrap(), causal.unwrap());
        assert_eq!(
            (&cells.config, &cells.train),
            (&causal.config, &causal.train)
        );
        // The full study's records predate the field: none of its entries may set it.
        assert!(StudyConfig::full()
            .models
            .iter()
            .all(|m| m.input_sampling.is_none()));
    }

    #[test]
    fn shift_steps_include_the_fixed_shift_once() {
        assert_eq!(
            steps_of(&[0.0, 5.0, 10.0], 40.0 / 49.0, 10.0),
            vec![0, 6, 12]
        );
        assert_eq!(steps_of(&[-0.2, 0.0], 1.0 / 49.0, 0.1), vec![-10, 0, 5]);
    }

    #[test]
    fn map_samples_are_spread_over_onsets() {
        let p = {
            let mut p = Protocol::quick();
            p.output = OutputGrid::with_size(12, 12);
            p.resolution = fhn_solver::Resolution::Auto {
                max_dx: 1.0 / 55.0,
                max_dt: 0.1,
            };
            p.test.n_samples = 6;
            p
        };
        let test = fhn_solver::dataset::generate(&p, Split::Test, None, false).unwrap();
        let picks = pick_maps(&test, 2);
        assert_eq!(picks.len(), 2);
        assert!(test.t0[picks[0]] < test.t0[picks[1]]);
        assert!(pick_maps(&test, 0).is_empty());
    }
}
