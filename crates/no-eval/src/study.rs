//! The whole study: protocol → data → training of every selected model → evaluation →
//! report.
//!
//! [`StudyConfig`] holds everything that defines a run (the data protocol, each model's
//! architecture and training budget, what is evaluated), is serde JSON, and has two
//! built-in values: [`StudyConfig::quick`] (the main job's embedded default, sized to run
//! in about a quarter of an hour on a 2-core CPU) and [`StudyConfig::full`] (the paper's
//! sizes). [`run`] executes it and writes the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use fhn_solver::{simulate_1d, Protocol, Split};
use ndarray::{s, Array2, Array4, ArrayView4, Axis};
use no_layers::init::SeededVarMap;
use no_models::causal::CausalConfig;
use no_models::cno::CnoConfig;
use no_models::data::{Normalizers, TensorDataset};
use no_models::deeponet::{DeepOnetCnnConfig, DeepOnetConfig};
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::pod::{PodBasis, PodDeepOnet, PodDeepOnetConfig};
use no_models::train::{LossKind, Schedule, TrainConfig, Trainer};
use no_models::{ModelConfig, NeuralOperator, NormalizerKind};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::latency::{self, LatencyConfig};
use crate::metrics::{batch_errors, summarize_field, FieldSummary, Spacing};
use crate::report::plots::{FigureData, SampleMaps};
use crate::report::{EpochRecord, FixedShifts, ModelResult, OnsetError, StudyResults, Variant};
use crate::strict::{parse_strict, write_atomic};
use crate::translation::{
    curve, point_from_outputs, shift_batch, CurvePoint, EquivarianceCurve, ShiftAxis,
};

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
    /// Seed of the weights and of the augmentation draws.
    pub seed: u64,
}

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

impl StudyConfig {
    /// The main job's default: the quick protocol's laws and sample counts (128 train, 32
    /// validation, 64 translated test) on a 50 × 50 output grid, the seven architectures at
    /// reduced widths with per-model epoch budgets (docs/benchmark.md lists them), plus the
    /// two remedies on FNO (no positional embedding; delay augmentation), delay
    /// augmentation on DeepONet, and the causal operator (delay-equivariant by construction).
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
        ];
        Self {
            protocol,
            models,
            eval: EvalConfig::quick(),
            augment_max_delay: 19.0,
            seed,
        }
    }

    /// The full-size study: the default protocol (1000/100/200 samples) and the
    /// architectures at their default (paper-sized) configurations, 100+ epochs each.
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

/// A solver dataset as model arrays: inputs `[N, 1, nt, nx]`, outputs `[N, 2, nt, nx]`.
fn to_arrays(d: &fhn_solver::dataset::Dataset) -> Result<(Array4<f32>, Array4<f32>)> {
    let inputs = d.input.clone().insert_axis(Axis(1));
    let outputs = ndarray::concatenate(
        Axis(1),
        &[
            d.v.view().insert_axis(Axis(1)),
            d.w.view().insert_axis(Axis(1)),
        ],
    )
    .map_err(|e| EvalError::invalid("dataset fields", e, "v and w of equal shape"))?;
    Ok((inputs, outputs))
}

fn to_tensor(a: ArrayView4<f32>, device: &Device) -> Result<Tensor> {
    let shape = a.shape().to_vec();
    let data: Vec<f32> = a.iter().copied().collect();
    Ok(Tensor::from_vec(data, shape, device)?)
}

fn from_tensor(t: &Tensor) -> Result<Array4<f32>> {
    let dims = t.dims().to_vec();
    if dims.len() != 4 {
        return Err(EvalError::shape("model output", &dims, "[B, C, nt, nx]"));
    }
    let data = t
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), data)
        .map_err(|e| EvalError::invalid("model output", e, "a contiguous tensor"))
}

fn to_no_dataset(inputs: &Array4<f32>, outputs: &Array4<f32>) -> Result<TensorDataset> {
    Ok(TensorDataset::new(
        to_tensor(inputs.view(), &Device::Cpu)?,
        to_tensor(outputs.view(), &Device::Cpu)?,
    )?)
}

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

fn steps_of(shifts: &[f64], h: f64, fixed: f64) -> Vec<isize> {
    let mut k: Vec<isize> = shifts
        .iter()
        .chain(std::iter::once(&fixed))
        .map(|s| (s / h).round() as isize)
        .collect();
    k.sort_unstable();
    k.dedup();
    k
}

/// The solver's own E(s) curve: every shifted input is solved as the translated stimulus.
fn solver_curve(
    p: &Protocol,
    idx: &[usize],
    base: ArrayView4<f32>,
    axis: ShiftAxis,
    steps: &[isize],
) -> Result<EquivarianceCurve> {
    let (dt, dx) = (p.output.dt(), p.output.dx());
    let cfg = p.solver_config();
    let points = steps
        .iter()
        .map(|&k| {
            let (st, sx) = match axis {
                ShiftAxis::Time => (k as f64 * dt, 0.0),
                ShiftAxis::Space => (0.0, k as f64 * dx),
            };
            let mut shifted = Array4::<f32>::zeros(base.raw_dim());
            for (b, &i) in idx.iter().enumerate() {
                let stim = p
                    .stimulus(&p.sample_params(Split::Validation, i))
                    .translated(st, sx);
                let sol = simulate_1d(&cfg, &stim, &p.output)?;
                shifted
                    .slice_mut(s![b, 0, .., ..])
                    .assign(&sol.v.mapv(|v| v as f32));
                shifted
                    .slice_mut(s![b, 1, .., ..])
                    .assign(&sol.w.mapv(|v| v as f32));
            }
            let h = if axis == ShiftAxis::Time { dt } else { dx };
            point_from_outputs(base, shifted.view(), axis.shift(k), k, k as f64 * h)
        })
        .collect::<Result<Vec<CurvePoint>>>()?;
    Ok(EquivarianceCurve { axis, points })
}

/// Builds a model (POD-DeepONet takes its basis from the normalised training outputs).
fn build_model(
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
type Evaluated = (
    Vec<FieldSummary>,
    Vec<crate::metrics::SampleErrors>,
    Array4<f32>,
);

/// Everything kept from one model beyond its [`ModelResult`]: the predicted v of the
/// samples drawn as maps.
struct Trained {
    result: ModelResult,
    map_predictions: Vec<Array2<f32>>,
}

fn train_and_evaluate(
    cfg: &StudyConfig,
    spec: &ModelSpec,
    data: &Data,
    device: &Device,
    out: &Path,
    progress: bool,
) -> Result<Trained> {
    let (train_in, train_out) = training_arrays(cfg, spec, data)?;
    let train_ds = to_no_dataset(&train_in, &train_out)?;
    let vars = SeededVarMap::new(cfg.seed);
    let model = build_model(spec, &vars, device, &train_ds)?;
    let mut train_cfg = spec.train.clone();
    train_cfg.progress = progress;
    let mut trainer = Trainer::new(model, vars, train_cfg, device)?;
    let dir = model_dir(out, &spec.label);
    let start = Instant::now();
    let summary = trainer.fit(&train_ds, &data.val_ds, Some(&dir))?;
    let train_wall_s = start.elapsed().as_secs_f64();
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
    let evaluated = evaluate(cfg, spec, data, &pred, progress)?;

    say(progress, &format!("  {}: latency", spec.label));
    let p = &cfg.protocol;
    let c_in = data.train_in.shape()[1];
    let latency = latency::measure(
        model,
        device,
        c_in,
        p.output.nt,
        p.output.nx,
        &cfg.eval.latency,
    )?;
    let map_predictions = data
        .map_indices
        .iter()
        .map(|&i| evaluated.test_pred.slice(s![i, 0, .., ..]).to_owned())
        .collect();
    let result = ModelResult {
        label: spec.label.clone(),
        architecture: spec.config.name().to_string(),
        variant: spec.variant,
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
        epochs: epoch_records(&summary.history),
        latency,
    };
    Ok(Trained {
        result,
        map_predictions,
    })
}

/// The training inputs and targets of `spec`: the training split, or for the augmented
/// variant each sample delayed by its own seeded random whole number of output steps.
fn training_arrays(
    cfg: &StudyConfig,
    spec: &ModelSpec,
    data: &Data,
) -> Result<(Array4<f32>, Array4<f32>)> {
    if spec.variant != Variant::Augmented {
        return Ok((data.train_in.clone(), data.train_out.clone()));
    }
    let max = (cfg.augment_max_delay / cfg.protocol.output.dt())
        .round()
        .max(0.0) as usize;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(cfg.seed ^ 0xA11C);
    let delays: Vec<usize> = (0..data.train_in.shape()[0])
        .map(|_| rng.random_range(0..=max))
        .collect();
    Ok((
        crate::translation::delay_each(data.train_in.view(), &delays)?,
        crate::translation::delay_each(data.train_out.view(), &delays)?,
    ))
}

/// What one trained model scores: per-split summaries, the test errors by onset, the
/// equivariance curves and the finer-grid error.
struct Evaluation {
    train: Vec<FieldSummary>,
    validation: Vec<FieldSummary>,
    test: Vec<FieldSummary>,
    test_pred: Array4<f32>,
    test_by_onset: Vec<OnsetError>,
    time_curve: EquivarianceCurve,
    space_curve: EquivarianceCurve,
    fine_grid: Option<Vec<FieldSummary>>,
}

fn evaluate(
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
    let (train, _, _) = summarise(&data.train_in, &data.train_out)?;
    let (validation, _, _) = summarise(&data.val_in, &data.val_out)?;
    let (test, test_errs, test_pred) = summarise(&data.test_in, &data.test_out)?;

    say(progress, &format!("  {}: equivariance curves", spec.label));
    let apply = |x: ArrayView4<f32>| pred.predict(x);
    let time_curve = curve(
        apply,
        data.eq_in.view(),
        ShiftAxis::Time,
        &data.time_steps,
        p.output.dt(),
    )?;
    let space_curve = curve(
        apply,
        data.eq_in.view(),
        ShiftAxis::Space,
        &data.space_steps,
        p.output.dx(),
    )?;
    let fine_grid = match (&data.fine, pred.model.accepts_other_resolutions()) {
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
fn errors_by_onset(
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

/// The trainer's history as the report's epoch records.
fn epoch_records(history: &[no_models::train::EpochRecord]) -> Vec<EpochRecord> {
    history
        .iter()
        .map(|e| EpochRecord {
            epoch: e.epoch,
            train_loss: e.train_loss,
            val_error: Some(e.val_loss),
            lr: e.lr,
            wall_s: e.wall_s,
            samples_per_s: e.samples_per_s,
        })
        .collect()
}

/// The data of a run, in the shapes the evaluation needs.
struct Data {
    train_in: Array4<f32>,
    train_out: Array4<f32>,
    val_in: Array4<f32>,
    val_out: Array4<f32>,
    val_ds: TensorDataset,
    test_in: Array4<f32>,
    test_out: Array4<f32>,
    test_meta: fhn_solver::dataset::Dataset,
    /// Validation samples used for E(s), and their inputs.
    eq_idx: Vec<usize>,
    eq_in: Array4<f32>,
    time_steps: Vec<isize>,
    space_steps: Vec<isize>,
    map_indices: Vec<usize>,
    fine: Option<crate::resolution::FineSet>,
}

/// Test samples to draw: supra-threshold ones at the earliest, middle and latest onsets.
fn pick_maps(test: &fhn_solver::dataset::Dataset, n: usize) -> Vec<usize> {
    let mut excited: Vec<usize> = (0..test.len())
        .filter(|&i| test.v.slice(s![i, .., ..]).iter().any(|&v| v > 0.5))
        .collect();
    if excited.is_empty() {
        excited = (0..test.len()).collect();
    }
    excited.sort_by(|&a, &b| test.t0[a].total_cmp(&test.t0[b]));
    if n == 0 || excited.is_empty() {
        return Vec::new();
    }
    let m = excited.len();
    let mut picks: Vec<usize> = (0..n)
        .map(|k| excited[if n == 1 { 0 } else { k * (m - 1) / (n - 1) }])
        .collect();
    picks.dedup();
    picks
}

fn prepare_data(cfg: &StudyConfig, progress: bool) -> Result<Data> {
    let p = &cfg.protocol;
    let train = fhn_solver::dataset::generate(p, Split::Train, None, progress)?;
    let val = fhn_solver::dataset::generate(p, Split::Validation, None, progress)?;
    let test = fhn_solver::dataset::generate(p, Split::Test, None, progress)?;
    let (train_in, train_out) = to_arrays(&train)?;
    let (val_in, val_out) = to_arrays(&val)?;
    let (test_in, test_out) = to_arrays(&test)?;
    let (lo, hi) = cfg.eval.equivariance_x0_range;
    let mut eq_idx: Vec<usize> = (0..val.len())
        .filter(|&i| (lo..=hi).contains(&f64::from(val.x0[i])))
        .collect();
    if eq_idx.is_empty() {
        eq_idx = (0..val.len()).collect();
    }
    eq_idx.truncate(cfg.eval.equivariance_samples.max(1));
    let eq_in = val_in.select(Axis(0), &eq_idx);
    let fine = match cfg.eval.fine_grid {
        Some(grid) if cfg.eval.fine_samples > 0 => Some(crate::resolution::solve_fine(
            p,
            Split::Test,
            cfg.eval.fine_samples.min(test.len()),
            grid,
        )?),
        _ => None,
    };
    let val_ds = to_no_dataset(&val_in, &val_out)?;
    let time_steps = steps_of(
        &cfg.eval.time_shifts,
        p.output.dt(),
        cfg.eval.fixed_time_shift,
    );
    let space_steps = steps_of(
        &cfg.eval.space_shifts,
        p.output.dx(),
        cfg.eval.fixed_space_shift,
    );
    let map_indices = pick_maps(&test, cfg.eval.map_samples);
    Ok(Data {
        train_in,
        train_out,
        val_in,
        val_out,
        val_ds,
        test_in,
        test_out,
        test_meta: test,
        eq_idx,
        eq_in,
        time_steps,
        space_steps,
        map_indices,
        fine,
    })
}

/// Runs the study and writes `out/` (report, CSV/JSON, figures, per-model checkpoints and
/// logs). Returns the results.
pub fn run(
    cfg: &StudyConfig,
    protocol_name: &str,
    device: &Device,
    out: &Path,
    progress: bool,
) -> Result<StudyResults> {
    cfg.validate()?;
    std::fs::create_dir_all(out).map_err(|e| EvalError::io(out, e))?;
    let mut phases = Vec::new();

    say(
        progress,
        &format!("phase 1/4: generating data ({} protocol)", protocol_name),
    );
    let t = Instant::now();
    let data = prepare_data(cfg, progress)?;
    phases.push(("data generation".to_string(), t.elapsed().as_secs_f64()));

    say(
        progress,
        "phase 2/4: ground-truth equivariance curves from the solver",
    );
    let t = Instant::now();
    let (solver_time_curve, solver_space_curve) = solver_curves(cfg, &data)?;
    phases.push((
        "solver equivariance curves".to_string(),
        t.elapsed().as_secs_f64(),
    ));

    let t = Instant::now();
    let trained = train_all(cfg, &data, device, out, progress)?;
    phases.push((
        "training and evaluation".to_string(),
        t.elapsed().as_secs_f64(),
    ));

    say(progress, "phase 4/4: writing the report and figures");
    let t = Instant::now();
    let p = &cfg.protocol;
    let mut results = StudyResults {
        protocol_name: protocol_name.to_string(),
        study_config: serde_json::to_value(cfg)?,
        device: format!("{device:?}"),
        grid: (p.output.nt, p.output.nx),
        samples: (
            data.train_in.shape()[0],
            data.val_in.shape()[0],
            data.test_in.shape()[0],
        ),
        fixed_shifts: fixed_shifts(cfg),
        solver_time_curve,
        solver_space_curve,
        models: trained.models,
        skipped: trained.skipped,
        phases,
    };
    let figures = FigureData {
        maps: sample_maps(&data, trained.map_predictions),
        t_end: p.output.t_end,
        length: p.output.length,
    };
    // The report lists the phases, so the writing phase is timed up to the figures.
    results
        .phases
        .push(("report".to_string(), t.elapsed().as_secs_f64()));
    // Every file of the report is written at the end, each atomically, so that a run that
    // fails midway leaves the previous run's files as they were, not a mix of two runs.
    let study_json = out.join("study.json");
    write_atomic(&study_json, serde_json::to_string_pretty(cfg)?.as_bytes())?;
    results.write_all(out, &figures)?;
    Ok(results)
}

/// The solver's own E(delay) and E(space) curves on the equivariance samples: the ground
/// truth the models' curves are read against.
fn solver_curves(cfg: &StudyConfig, data: &Data) -> Result<(EquivarianceCurve, EquivarianceCurve)> {
    let p = &cfg.protocol;
    let eq_idx = &data.eq_idx;
    let eq_base = data.val_out.select(Axis(0), eq_idx);
    let time = solver_curve(p, eq_idx, eq_base.view(), ShiftAxis::Time, &data.time_steps)?;
    let space = solver_curve(
        p,
        eq_idx,
        eq_base.view(),
        ShiftAxis::Space,
        &data.space_steps,
    )?;
    Ok((time, space))
}

/// The results of every model of a study, and the predicted v of the drawn samples.
struct AllTrained {
    models: Vec<ModelResult>,
    /// Models not built in this build, with the reason.
    skipped: Vec<(String, String)>,
    /// Per drawn sample, each model's predicted v (label, field).
    map_predictions: Vec<Vec<(String, Array2<f32>)>>,
}

/// Phase 3: trains and evaluates every model of `cfg` in turn.
fn train_all(
    cfg: &StudyConfig,
    data: &Data,
    device: &Device,
    out: &Path,
    progress: bool,
) -> Result<AllTrained> {
    let mut all = AllTrained {
        models: Vec::new(),
        skipped: Vec::new(),
        map_predictions: vec![Vec::new(); data.map_indices.len()],
    };
    for (k, spec) in cfg.models.iter().enumerate() {
        say(
            progress,
            &format!(
                "phase 3/4: model {}/{}: training {} ({}, {} epochs)",
                k + 1,
                cfg.models.len(),
                spec.label,
                spec.variant.label(),
                spec.train.epochs
            ),
        );
        let tm = Instant::now();
        let trained = match train_and_evaluate(cfg, spec, data, device, out, progress) {
            Err(EvalError::Model(no_models::ModelError::NotImplemented(what))) => {
                say(
                    progress,
                    &format!(
                        "  {}: skipped ({what} is not implemented in this build)",
                        spec.label
                    ),
                );
                all.skipped
                    .push((spec.label.clone(), format!("{what} is not implemented")));
                continue;
            }
            // A model whose training diverged is reported as failed, with the reason,
            // never with a number.
            Err(EvalError::Model(e @ no_models::ModelError::NonFiniteLoss { .. })) => {
                say(progress, &format!("  {}: failed ({e})", spec.label));
                all.skipped.push((
                    spec.label.clone(),
                    format!("failed: training diverged: {e}"),
                ));
                continue;
            }
            other => other?,
        };
        trained.result.check_finite()?;
        for (slot, v) in all.map_predictions.iter_mut().zip(trained.map_predictions) {
            slot.push((spec.label.clone(), v));
        }
        say(
            progress,
            &one_line_summary(&trained.result, tm.elapsed().as_secs_f64()),
        );
        all.models.push(trained.result);
    }
    Ok(all)
}

/// The progress line printed after a model: size, mean errors and times.
fn one_line_summary(r: &ModelResult, with_evaluation_s: f64) -> String {
    format!(
        "  {}: {} params, val rel L2 {:.4}, test v {:.4}, trained in {:.1} s ({:.1} s with evaluation)",
        r.label,
        r.params.numel,
        r.validation.iter().map(|s| s.rel_l2.mean).sum::<f64>() / r.validation.len().max(1) as f64,
        r.test.first().map_or(f64::NAN, |s| s.rel_l2.mean),
        r.train_wall_s,
        with_evaluation_s
    )
}

/// The fixed shifts of the translated-test columns, rounded to whole grid steps.
fn fixed_shifts(cfg: &StudyConfig) -> FixedShifts {
    let (dt, dx) = (cfg.protocol.output.dt(), cfg.protocol.output.dx());
    FixedShifts {
        time_steps: (cfg.eval.fixed_time_shift / dt).round() as isize,
        time: (cfg.eval.fixed_time_shift / dt).round() * dt,
        space_steps: (cfg.eval.fixed_space_shift / dx).round() as isize,
        space: (cfg.eval.fixed_space_shift / dx).round() * dx,
    }
}

/// The drawn test samples with their current, true v and every model's predicted v.
fn sample_maps(data: &Data, predictions: Vec<Vec<(String, Array2<f32>)>>) -> Vec<SampleMaps> {
    data.map_indices
        .iter()
        .zip(predictions)
        .map(|(&i, predictions)| SampleMaps {
            index: i,
            t0: f64::from(data.test_meta.t0[i]),
            x0: f64::from(data.test_meta.x0[i]),
            amplitude: f64::from(data.test_meta.amplitude[i]),
            current: data.test_in.slice(s![i, 0, .., ..]).to_owned(),
            truth_v: data.test_out.slice(s![i, 0, .., ..]).to_owned(),
            predictions,
        })
        .collect()
}

/// Where [`run`] puts a model's checkpoints and log.
pub fn model_dir(out: &Path, label: &str) -> PathBuf {
    out.join("models").join(label)
}

/// Shifts inputs by whole steps with the rest fill (re-exported for examples).
pub fn shift_inputs(a: ArrayView4<f32>, s: crate::translation::Shift) -> Array4<f32> {
    shift_batch(a, s, 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fhn_solver::OutputGrid;

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
            let m = cfg
                .models
                .iter()
                .find(|m| m.variant == Variant::Causal)
                .expect("both studies run the causal variant");
            assert_eq!(m.label, "causal");
            // A shift would move the rest state off zero (docs/benchmark.md).
            assert_eq!(m.train.normalizer, NormalizerKind::None);
            let ModelConfig::Causal(c) = &m.config else {
                panic!("the causal variant must be the causal operator");
            };
            assert!(c.time_receptive_field() >= cfg.protocol.output.nt);
        }
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
