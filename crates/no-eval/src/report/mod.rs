//! The study's results as data, and their writers: `report.md`, `results.csv`,
//! `results.json`, per-epoch logs and PNG figures.
//!
//! [`StudyResults`] is the one value every writer reads, so the Markdown table, the CSV and
//! the JSON always carry the same figures.

pub mod csv;
pub mod markdown;
pub mod plots;
pub mod spread;

use std::collections::BTreeMap;
use std::path::Path;

use fhn_solver::InputSampling;
use no_models::ParamCount;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::latency::LatencyReport;
use crate::metrics::FieldSummary;
use crate::translation::EquivarianceCurve;

/// One epoch of training, as the report shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EpochRecord {
    /// Epoch number (0-based).
    pub epoch: usize,
    /// Mean training loss (relative L2 averaged over v and w, in physical units: the trainer
    /// decodes the prediction before the loss).
    pub train_loss: f64,
    /// Validation relative L2 (mean over samples and fields), if measured.
    pub val_error: Option<f64>,
    /// Learning rate used in the epoch.
    pub lr: f64,
    /// Wall time of the epoch, seconds.
    pub wall_s: f64,
    /// Training samples per second in the epoch.
    pub samples_per_s: f64,
}

/// How the model was trained and fed, beside the paper's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The architecture as the study uses it.
    Paper,
    /// The same architecture without absolute positional inputs.
    NoPositional,
    /// The paper's architecture trained on randomly delayed copies of the training data.
    Augmented,
    /// An architecture that is delay-equivariant by construction (causal in time, no
    /// absolute time, rest maps to rest), trained on the fixed-onset split only.
    Causal,
}

impl Variant {
    /// A short human label.
    pub fn label(self) -> &'static str {
        match self {
            Variant::Paper => "paper setting",
            Variant::NoPositional => "no positional input",
            Variant::Augmented => "delay augmentation",
            Variant::Causal => "delay-equivariant by construction",
        }
    }
}

/// A test sample's error next to its stimulus parameters (for the error-vs-onset figure).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnsetError {
    /// Stimulus onset time.
    pub t0: f64,
    /// Stimulus centre.
    pub x0: f64,
    /// Stimulus amplitude.
    pub amplitude: f64,
    /// Relative L2 error of v.
    pub rel_l2_v: f64,
    /// Relative L2 error of w.
    pub rel_l2_w: f64,
}

/// Everything measured on one trained model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelResult {
    /// The label in tables and figures (`fno`, `fno-nopos`, `don+aug`, ...).
    pub label: String,
    /// The architecture's short name (`fno`, `cno`, ...).
    pub architecture: String,
    /// Paper setting or one of the remedies.
    pub variant: Variant,
    /// The model's own input sampling where its study entry set one (`None`: the
    /// protocol's, which the study's `protocol` records).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_sampling: Option<InputSampling>,
    /// Which training run of this model (0-based): the study trains each model once per
    /// seed.
    #[serde(default)]
    pub replicate: usize,
    /// The seed of the weights' initialisation and of the augmentation draws in this run
    /// (the shuffling seed is the model's `train.seed` plus [`Self::replicate`]).
    #[serde(default)]
    pub seed: u64,
    /// The model's configuration as JSON.
    pub config: serde_json::Value,
    /// Parameter count.
    pub params: ParamCount,
    /// Errors on the training split, one summary per field (v, w).
    pub train: Vec<FieldSummary>,
    /// Errors on the validation split (same distribution as training).
    pub validation: Vec<FieldSummary>,
    /// Errors on the translated test split.
    pub test: Vec<FieldSummary>,
    /// Per-sample translated-test errors with the stimulus parameters.
    pub test_by_onset: Vec<OnsetError>,
    /// Zero-shot errors on a finer output grid, where the model accepts one.
    pub fine_grid: Option<Vec<FieldSummary>>,
    /// E(s) over delays.
    pub time_curve: EquivarianceCurve,
    /// E(s) over space shifts.
    pub space_curve: EquivarianceCurve,
    /// Training wall time, seconds.
    pub train_wall_s: f64,
    /// The per-epoch log.
    pub epochs: Vec<EpochRecord>,
    /// Inference latency sweep.
    pub latency: LatencyReport,
}

/// The fixed shifts at which the report's table reads the equivariance curves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedShifts {
    /// Delay in output steps.
    pub time_steps: isize,
    /// The same in time units.
    pub time: f64,
    /// Space shift in output steps.
    pub space_steps: isize,
    /// The same in length units.
    pub space: f64,
}

/// The whole study's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudyResults {
    /// Name of the protocol (`quick`, `default`, or a file name).
    pub protocol_name: String,
    /// The study configuration as JSON (protocol, models, budgets).
    pub study_config: serde_json::Value,
    /// The device the models ran on.
    pub device: String,
    /// Output grid size (nt, nx).
    pub grid: (usize, usize),
    /// Samples per split (train, validation, test).
    pub samples: (usize, usize, usize),
    /// The shifts the table reports.
    pub fixed_shifts: FixedShifts,
    /// The solver's own E(s) over delays (the ground truth).
    pub solver_time_curve: EquivarianceCurve,
    /// The solver's own E(s) over space shifts.
    pub solver_space_curve: EquivarianceCurve,
    /// One entry per trained model and seed, ordered by model, then by seed.
    pub models: Vec<ModelResult>,
    /// Every figure of [`Row`] over the seeds of each model (filled by
    /// [`StudyResults::write_all`] and [`StudyResults::with_aggregates`]).
    #[serde(default)]
    pub aggregates: Vec<Aggregate>,
    /// Models that could not be built, with the reason.
    #[serde(default)]
    pub skipped: Vec<(String, String)>,
    /// Wall time of each phase, seconds, in order.
    pub phases: Vec<(String, f64)>,
    /// How each job ran (where, how long, whether it resumed), in job order; empty in
    /// results written before it was kept.
    #[serde(default)]
    pub jobs: Vec<JobRun>,
}

/// How one job of the study ran, from its record: the report's "Jobs" table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobRun {
    /// The job's index in the study's job list (`benchmark --list-jobs`).
    pub index: usize,
    /// Its model's label.
    pub label: String,
    /// Its seed.
    pub seed: u64,
    /// The device it trained on.
    pub device: String,
    /// Threads of the process that finished it.
    pub threads: usize,
    /// The CPU of that process's machine ([`crate::host::cpu_description`]), where the
    /// record has it.
    pub cpu: Option<String>,
    /// Epochs in its training log (0 for a skipped job).
    pub epochs: usize,
    /// Training time, seconds: the sum of its epochs' wall times over every process that
    /// trained it, so a job stopped and resumed counts each epoch once
    /// ([`ModelResult::train_wall_s`]); `None` for a skipped job.
    pub train_wall_s: Option<f64>,
    /// Wall time of the process that finished it (training from the epoch it resumed at,
    /// then evaluation), seconds.
    pub process_wall_s: f64,
    /// Epochs an earlier, interrupted process had completed.
    pub resumed_from_epoch: Option<usize>,
    /// Why it has no figures, for a skipped job.
    pub skipped: Option<String>,
}

/// The figures of one table row, computed once so every writer prints the same numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Row {
    /// Model label.
    pub label: String,
    /// Variant label.
    pub variant: String,
    /// Which run of the model ([`ModelResult::replicate`]).
    pub replicate: usize,
    /// Its seed ([`ModelResult::seed`]).
    pub seed: u64,
    /// Parameters (`numel`).
    pub params: usize,
    /// Mean relative L2 on the training split, averaged over v and w.
    pub train_rel_l2: f64,
    /// Mean relative L2 on validation, averaged over v and w.
    pub val_rel_l2: f64,
    /// Mean relative L2 of v on the translated test split.
    pub test_rel_l2_v: f64,
    /// Mean relative L2 of w on the translated test split.
    pub test_rel_l2_w: f64,
    /// Median relative L1 of v on the translated test split (the CNO paper's statistic).
    pub test_median_rel_l1_v: f64,
    /// Median over samples of the relative L2 on the training split, averaged over v and w.
    pub train_median_rel_l2: f64,
    /// Median over samples of the relative L2 on validation, averaged over v and w.
    pub val_median_rel_l2: f64,
    /// Median relative L2 of v on the translated test split.
    pub test_median_rel_l2_v: f64,
    /// Median relative L2 of w on the translated test split.
    pub test_median_rel_l2_w: f64,
    /// Mean E(s) of v at the fixed delay.
    pub equiv_time_v: Option<f64>,
    /// Mean E(s) of v at the fixed space shift.
    pub equiv_space_v: Option<f64>,
    /// Training wall time, seconds.
    pub train_wall_s: f64,
    /// Latency p50 at batch 1, milliseconds.
    pub p50_b1_ms: Option<f64>,
    /// Throughput at batch 32, samples/s.
    pub throughput_b32: Option<f64>,
    /// Zero-shot mean relative L2 of v on the finer grid.
    pub fine_rel_l2_v: Option<f64>,
}

/// The names of the numeric figures of a [`Row`], in table order (the keys of
/// [`Aggregate::figures`] and the columns of `summary.csv`).
pub const FIGURES: [&str; 16] = [
    "train_rel_l2",
    "val_rel_l2",
    "test_rel_l2_v",
    "test_rel_l2_w",
    "test_median_rel_l1_v",
    "train_median_rel_l2",
    "val_median_rel_l2",
    "test_median_rel_l2_v",
    "test_median_rel_l2_w",
    "equiv_time_v",
    "equiv_space_v",
    "train_wall_s",
    "latency_p50_b1_ms",
    "throughput_b32",
    "fine_grid_rel_l2_v",
    "test_over_val",
];

impl Row {
    /// The figure named `name` (one of [`FIGURES`]); `None` when not measured or unknown.
    pub fn figure(&self, name: &str) -> Option<f64> {
        let v = match name {
            "train_rel_l2" => self.train_rel_l2,
            "val_rel_l2" => self.val_rel_l2,
            "test_rel_l2_v" => self.test_rel_l2_v,
            "test_rel_l2_w" => self.test_rel_l2_w,
            "test_median_rel_l1_v" => self.test_median_rel_l1_v,
            "train_median_rel_l2" => self.train_median_rel_l2,
            "val_median_rel_l2" => self.val_median_rel_l2,
            "test_median_rel_l2_v" => self.test_median_rel_l2_v,
            "test_median_rel_l2_w" => self.test_median_rel_l2_w,
            "equiv_time_v" => self.equiv_time_v?,
            "equiv_space_v" => self.equiv_space_v?,
            "train_wall_s" => self.train_wall_s,
            "latency_p50_b1_ms" => self.p50_b1_ms?,
            "throughput_b32" => self.throughput_b32?,
            "fine_grid_rel_l2_v" => self.fine_rel_l2_v?,
            "test_over_val" => self.test_over_val(),
            _ => return None,
        };
        v.is_finite().then_some(v)
    }

    /// The translated-test statistic the report judges by: the median over samples of the
    /// relative L2, averaged over v and w. Medians, not means: a sub-threshold stimulus
    /// gives a target about 20× smaller in norm than a wave, and the few such samples would
    /// otherwise decide the mean (docs/evaluation.md).
    pub fn test_stat(&self) -> f64 {
        0.5 * (self.test_median_rel_l2_v + self.test_median_rel_l2_w)
    }

    /// The in-distribution statistic the report judges by: the median over validation
    /// samples, averaged over v and w.
    pub fn val_stat(&self) -> f64 {
        self.val_median_rel_l2
    }

    /// How many times the in-distribution error the translated-test error is
    /// ([`Self::test_stat`] / [`Self::val_stat`]).
    pub fn test_over_val(&self) -> f64 {
        self.test_stat() / self.val_stat()
    }
}

/// One model's figures over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Aggregate {
    /// Model label.
    pub label: String,
    /// Variant label.
    pub variant: String,
    /// The seeds aggregated, in replicate order.
    pub seeds: Vec<u64>,
    /// Each figure of [`FIGURES`] that was measured, over the seeds.
    pub figures: BTreeMap<String, spread::Spread>,
}

impl Aggregate {
    /// The spread of figure `name`, if measured.
    pub fn get(&self, name: &str) -> Option<&spread::Spread> {
        self.figures.get(name)
    }
}

fn mean_l2(f: &[FieldSummary]) -> f64 {
    if f.is_empty() {
        return f64::NAN;
    }
    f.iter().map(|s| s.rel_l2.mean).sum::<f64>() / f.len() as f64
}

/// The per-field medians of the relative L2, averaged over the fields.
fn median_l2(f: &[FieldSummary]) -> f64 {
    if f.is_empty() {
        return f64::NAN;
    }
    f.iter().map(|s| s.rel_l2.median).sum::<f64>() / f.len() as f64
}

/// The first non-finite figure of `summary`, as (name, value).
fn non_finite_in(summary: &crate::metrics::Summary) -> Option<(&'static str, f64)> {
    [
        ("mean", summary.mean),
        ("median", summary.median),
        ("q05", summary.q05),
        ("q25", summary.q25),
        ("q75", summary.q75),
        ("q95", summary.q95),
        ("max", summary.max),
    ]
    .into_iter()
    .find(|(_, v)| !v.is_finite())
}

impl ModelResult {
    /// The report's variant column: the variant, and the input where the model's own.
    pub fn variant_text(&self) -> String {
        match self.input_sampling {
            None => self.variant.label().to_string(),
            Some(InputSampling::Point) => format!("{}, point-valued input", self.variant.label()),
            Some(InputSampling::CellAverage) => {
                format!("{}, cell-averaged input", self.variant.label())
            }
        }
    }

    /// Refuses a result holding a NaN or infinite accuracy, equivariance or latency figure:
    /// the error names the model and the figure.
    pub fn check_finite(&self) -> Result<()> {
        let fail = |figure: String, value: f64| EvalError::NonFinite {
            model: self.label.clone(),
            figure,
            value,
        };
        let mut splits = vec![
            ("train", &self.train),
            ("validation", &self.validation),
            ("test", &self.test),
        ];
        if let Some(fine) = &self.fine_grid {
            splits.push(("finer-grid", fine));
        }
        for (split, fields) in splits {
            for (c, f) in fields.iter().enumerate() {
                let field = crate::metrics::FIELDS.get(c).copied().unwrap_or("?");
                for (metric, s) in [
                    ("rel_l2", &f.rel_l2),
                    ("rel_l1", &f.rel_l1),
                    ("rel_h1", &f.rel_h1),
                    ("max_abs", &f.max_abs),
                ] {
                    if let Some((stat, v)) = non_finite_in(s) {
                        return Err(fail(format!("{split} {metric} {stat} of {field}"), v));
                    }
                }
            }
        }
        for (axis, c) in [("delay", &self.time_curve), ("space", &self.space_curve)] {
            for p in &c.points {
                for (k, s) in p.channels.iter().enumerate() {
                    if let Some((stat, v)) = non_finite_in(s) {
                        return Err(fail(
                            format!(
                                "equivariance E(s) {stat} over {axis} at shift {} (channel {k})",
                                p.shift
                            ),
                            v,
                        ));
                    }
                }
            }
        }
        for p in &self.latency.points {
            for (name, v) in [
                ("p50", p.p50_ms),
                ("p95", p.p95_ms),
                ("p99", p.p99_ms),
                ("throughput", p.throughput),
            ] {
                if !v.is_finite() {
                    return Err(fail(format!("latency {name} at batch {}", p.batch), v));
                }
            }
        }
        if !self.train_wall_s.is_finite() {
            return Err(fail("training wall time".into(), self.train_wall_s));
        }
        Ok(())
    }
}

impl StudyResults {
    /// The table rows, in the order the models were trained.
    pub fn rows(&self) -> Vec<Row> {
        self.models
            .iter()
            .map(|m| Row {
                label: m.label.clone(),
                variant: m.variant_text(),
                replicate: m.replicate,
                seed: m.seed,
                params: m.params.numel,
                train_rel_l2: mean_l2(&m.train),
                val_rel_l2: mean_l2(&m.validation),
                test_rel_l2_v: m.test.first().map_or(f64::NAN, |s| s.rel_l2.mean),
                test_rel_l2_w: m.test.get(1).map_or(f64::NAN, |s| s.rel_l2.mean),
                test_median_rel_l1_v: m.test.first().map_or(f64::NAN, |s| s.rel_l1.median),
                train_median_rel_l2: median_l2(&m.train),
                val_median_rel_l2: median_l2(&m.validation),
                test_median_rel_l2_v: m.test.first().map_or(f64::NAN, |s| s.rel_l2.median),
                test_median_rel_l2_w: m.test.get(1).map_or(f64::NAN, |s| s.rel_l2.median),
                equiv_time_v: m
                    .time_curve
                    .at(self.fixed_shifts.time_steps)
                    .map(|p| p.channels[0].mean),
                equiv_space_v: m
                    .space_curve
                    .at(self.fixed_shifts.space_steps)
                    .map(|p| p.channels[0].mean),
                train_wall_s: m.train_wall_s,
                p50_b1_ms: m.latency.at(1).map(|p| p.p50_ms),
                throughput_b32: m.latency.at(32).map(|p| p.throughput),
                fine_rel_l2_v: m
                    .fine_grid
                    .as_ref()
                    .and_then(|f| f.first())
                    .map(|s| s.rel_l2.mean),
            })
            .collect()
    }

    /// The rows grouped by model label, in the order the models first appear, each group
    /// in replicate order: one group per table line of the report.
    pub fn grouped_rows(&self) -> Vec<Vec<Row>> {
        let mut groups: Vec<Vec<Row>> = Vec::new();
        for row in self.rows() {
            match groups.iter_mut().find(|g| g[0].label == row.label) {
                Some(g) => g.push(row),
                None => groups.push(vec![row]),
            }
        }
        for g in &mut groups {
            g.sort_by_key(|r| r.replicate);
        }
        groups
    }

    /// Every figure of every model over its seeds.
    pub fn compute_aggregates(&self) -> Vec<Aggregate> {
        self.grouped_rows()
            .iter()
            .map(|g| Aggregate {
                label: g[0].label.clone(),
                variant: g[0].variant.clone(),
                seeds: g.iter().map(|r| r.seed).collect(),
                figures: FIGURES
                    .iter()
                    .filter_map(|&name| {
                        let values: Vec<f64> = g.iter().filter_map(|r| r.figure(name)).collect();
                        spread::Spread::of(&values).map(|s| (name.to_string(), s))
                    })
                    .collect(),
            })
            .collect()
    }

    /// The same results with [`Self::aggregates`] computed.
    pub fn with_aggregates(mut self) -> Self {
        self.aggregates = self.compute_aggregates();
        self
    }

    /// Writes `report.md`, `results.csv` (a row per model and seed), `summary.csv` (each
    /// figure over seeds), `results.json`, `epochs.csv`, `curves.csv` and the figures into
    /// `dir` (created if needed); returns the paths written.
    pub fn write_all(
        &self,
        dir: &Path,
        figures: &plots::FigureData,
    ) -> Result<Vec<std::path::PathBuf>> {
        std::fs::create_dir_all(dir).map_err(|e| EvalError::io(dir, e))?;
        for m in &self.models {
            m.check_finite()?;
        }
        let full = self.clone().with_aggregates();
        let mut written = Vec::new();
        // Each file goes to a temporary sibling first and is renamed into place.
        let mut put = |name: &str, text: String| -> Result<()> {
            let p = dir.join(name);
            crate::strict::write_atomic(&p, text.as_bytes())?;
            written.push(p);
            Ok(())
        };
        put("results.json", serde_json::to_string_pretty(&full)?)?;
        put("results.csv", csv::results_csv(self))?;
        put("summary.csv", csv::summary_csv(&full))?;
        put("epochs.csv", csv::epochs_csv(self))?;
        put("curves.csv", csv::curves_csv(self))?;
        let figs = plots::draw_all(self, figures, dir)?;
        put("report.md", markdown::report(&full, &figs))?;
        written.extend(figs);
        Ok(written)
    }
}
