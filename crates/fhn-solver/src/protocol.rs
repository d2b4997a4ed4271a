//! The dataset [`Protocol`]: model, grids, sample counts, seed and the laws of the stimuli.
//!
//! Each sample's random draws come from a ChaCha8 stream keyed by (seed, split, sample index)
//! (never by thread or order of generation), so a sample is the same whether it is made
//! alone, in a shard, or in a parallel run on any number of threads.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{check_finite, check_positive, Result, SolverError};
use crate::grid::{OutputGrid, Resolution};
use crate::imex::Scheme;
use crate::params::FhnParams;
use crate::simulate::{Solution1d, Solver1d, SolverConfig};
use crate::stimulus::{BoxPulse, InputSampling, Stimulus};

/// The most samples a split may hold: the sample index fills the low 48 bits of the RNG
/// stream (the split the bits above), so larger indices would repeat other streams.
pub const MAX_SAMPLES: u64 = 1 << 48;

/// A law for one stimulus parameter.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "law", rename_all = "snake_case", deny_unknown_fields)]
pub enum Law {
    /// Always `value`.
    Fixed {
        /// The value.
        value: f64,
    },
    /// Uniform on `[low, high)`.
    Uniform {
        /// Lower bound.
        low: f64,
        /// Upper bound (> low).
        high: f64,
    },
}

impl Law {
    /// Draws one value. Always consumes exactly one `u64` of `rng` (also for `Fixed`), so the
    /// draws of the other parameters do not depend on which laws are fixed.
    pub fn sample(&self, rng: &mut ChaCha8Rng) -> f64 {
        let u: f64 = rng.random();
        match *self {
            Law::Fixed { value } => value,
            Law::Uniform { low, high } => low + (high - low) * u,
        }
    }

    /// Checks that the law's values are finite, that a uniform law has `low < high`, and
    /// that every value it can draw lies in `[lo, hi]` (`[lo, hi)` if `!hi_inclusive`);
    /// `range` says what that interval means, for the message.
    fn validate_within(
        &self,
        name: &str,
        (lo, hi, hi_inclusive): (f64, f64, bool),
        range: &str,
    ) -> Result<()> {
        self.validate(name)?;
        let (low, high, text) = match *self {
            Law::Fixed { value } => (value, value, value.to_string()),
            Law::Uniform { low, high } => (low, high, format!("[{low}, {high})")),
        };
        // A uniform law never draws `high` itself, so `high == hi` is fine for either end.
        let high_ok = match self {
            Law::Fixed { .. } if !hi_inclusive => high < hi,
            _ => high <= hi,
        };
        if low < lo || !high_ok {
            return Err(SolverError::invalid(name, text, range));
        }
        Ok(())
    }

    fn validate(&self, name: &str) -> Result<()> {
        match *self {
            Law::Fixed { value } => check_finite(name, value),
            Law::Uniform { low, high } => {
                check_finite(name, low)?;
                check_finite(name, high)?;
                if high <= low {
                    return Err(SolverError::invalid(
                        name,
                        format!("[{low}, {high})"),
                        "low < high",
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The three splits of a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Training samples (onset fixed in the default protocol).
    Train,
    /// Validation samples (same law as training).
    Validation,
    /// Translated test samples (onset drawn too).
    Test,
}

impl Split {
    /// All splits in file order.
    pub const ALL: [Split; 3] = [Split::Train, Split::Validation, Split::Test];

    /// The short name used in file names: `train`, `val`, `test`.
    pub fn name(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "val",
            Split::Test => "test",
        }
    }

    /// The split's field name in a protocol file: `train`, `validation`, `test`.
    pub fn field_name(&self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Validation => "validation",
            Split::Test => "test",
        }
    }

    /// The split's RNG stream key.
    fn key(&self) -> u64 {
        match self {
            Split::Train => 0,
            Split::Validation => 1,
            Split::Test => 2,
        }
    }
}

impl std::str::FromStr for Split {
    type Err = SolverError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "train" => Ok(Split::Train),
            "val" | "validation" => Ok(Split::Validation),
            "test" => Ok(Split::Test),
            _ => Err(SolverError::invalid("split", s, "train, val or test")),
        }
    }
}

/// How one split is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitSpec {
    /// Number of samples.
    pub n_samples: usize,
    /// Law of the pulse centre.
    pub x0: Law,
    /// Law of the pulse onset.
    pub t0: Law,
    /// Law of the pulse amplitude.
    pub amplitude: Law,
}

/// The drawn parameters of one sample.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SampleParams {
    /// Pulse centre.
    pub x0: f64,
    /// Pulse onset.
    pub t0: f64,
    /// Pulse amplitude.
    pub amplitude: f64,
}

/// A dataset's full description. See docs/protocol.md.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protocol {
    /// A name (`default`, `quick`, or the user's).
    pub name: String,
    /// Model parameters.
    pub params: FhnParams,
    /// Time-stepping scheme.
    pub scheme: Scheme,
    /// Fine-grid resolution.
    pub resolution: Resolution,
    /// The grid the data are sampled on.
    pub output: OutputGrid,
    /// Master seed.
    pub seed: u64,
    /// Box width of every pulse.
    pub pulse_width: f64,
    /// Duration of every pulse.
    pub pulse_duration: f64,
    /// How the current is written on the output grid (the models' input): point values
    /// (the default, the paper's data) or cell averages. Left out of the JSON when `point`,
    /// so protocols written before it existed read and hash as before.
    #[serde(default, skip_serializing_if = "InputSampling::is_point")]
    pub input_sampling: InputSampling,
    /// Training split.
    pub train: SplitSpec,
    /// Validation split.
    pub validation: SplitSpec,
    /// Translated test split.
    pub test: SplitSpec,
}

impl Default for Protocol {
    fn default() -> Self {
        Self::default_protocol()
    }
}

impl Protocol {
    /// The benchmark: train 1000 and validation 100 with onset t0 = 1, test 200 with
    /// t0 ~ U[1, 20]; x0 ~ U[0.1, 0.9], A ~ U[0.5, 2.0], width 0.04, duration 1.0; 100 × 100
    /// output grid over [0, 40] × [0, 1]; SBDF2 at the default resolution; seed 2026.
    pub fn default_protocol() -> Self {
        let x0 = Law::Uniform {
            low: 0.1,
            high: 0.9,
        };
        let amplitude = Law::Uniform {
            low: 0.5,
            high: 2.0,
        };
        let fixed = SplitSpec {
            n_samples: 1000,
            x0,
            t0: Law::Fixed { value: 1.0 },
            amplitude,
        };
        Self {
            name: "default".into(),
            params: FhnParams::default(),
            scheme: Scheme::Sbdf2,
            resolution: Resolution::default(),
            output: OutputGrid::default(),
            seed: 2026,
            pulse_width: 0.04,
            pulse_duration: 1.0,
            input_sampling: InputSampling::Point,
            train: fixed,
            validation: SplitSpec {
                n_samples: 100,
                ..fixed
            },
            test: SplitSpec {
                n_samples: 200,
                t0: Law::Uniform {
                    low: 1.0,
                    high: 20.0,
                },
                ..fixed
            },
        }
    }

    /// The same laws with fewer samples: train 128, validation 32, test 64.
    pub fn quick() -> Self {
        let mut p = Self::default_protocol();
        p.name = "quick".into();
        p.train.n_samples = 128;
        p.validation.n_samples = 32;
        p.test.n_samples = 64;
        p
    }

    /// `default`, `quick`, or a path to a JSON protocol file.
    pub fn by_name_or_path(s: &str) -> Result<Self> {
        match s {
            "default" => Ok(Self::default_protocol()),
            "quick" => Ok(Self::quick()),
            path => Self::from_json_file(path),
        }
    }

    /// Reads and validates a JSON protocol. An unknown field is an error that names the
    /// closest valid field ("unknown field `n_sample` (line 5, column 18); did you mean
    /// `n_samples`?").
    pub fn from_json_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| SolverError::Io {
            path: path.into(),
            source,
        })?;
        let p: Self = serde_json::from_str(&text).map_err(|e| SolverError::Format {
            path: path.into(),
            reason: format!(
                "not a protocol JSON: {}",
                crate::suggest::explain_json_error(&e)
            ),
        })?;
        p.validate()?;
        Ok(p)
    }

    /// Writes the protocol as pretty JSON, atomically (a temporary sibling renamed over
    /// `path`, so a failed write leaves the previous file).
    pub fn to_json_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let json = self.to_json();
        crate::atomic::write_file(path.as_ref(), |w| {
            std::io::Write::write_all(w, json.as_bytes())
        })
    }

    /// Writes the protocol to `path` unless the file exists; if it does, it must hold this
    /// protocol (for shards of one dataset written by several jobs into one directory).
    pub fn write_or_check_json_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let json = self.to_json();
        let wrote = crate::atomic::write_file_if_absent(path, |w| {
            std::io::Write::write_all(w, json.as_bytes())
        })?;
        if wrote {
            return Ok(());
        }
        let existing = Self::from_json_file(path)?;
        if existing != *self {
            return Err(SolverError::Format {
                path: path.into(),
                reason: format!(
                    "holds protocol `{}` (seed {}), which differs from this run's protocol `{}` \
                     (seed {}): write into another directory",
                    existing.name, existing.seed, self.name, self.seed
                ),
            });
        }
        Ok(())
    }

    /// The protocol as pretty JSON.
    pub fn to_json(&self) -> String {
        // A struct of numbers, strings and enums always serialises.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        self.params.validate()?;
        self.output.validate()?;
        crate::grid::FineGrid::new(&self.output, &self.resolution)?;
        check_positive("pulse_width", self.pulse_width)?;
        check_positive("pulse_duration", self.pulse_duration)?;
        for split in Split::ALL {
            self.validate_split(split)?;
        }
        Ok(())
    }

    /// Checks one split: a sample count in `1..=MAX_SAMPLES`, pulse centres inside the
    /// domain, onsets that start the pulse inside the time window, finite amplitudes.
    fn validate_split(&self, split: Split) -> Result<()> {
        let s = self.split(split);
        let name = split.field_name();
        if s.n_samples == 0 || s.n_samples as u64 > MAX_SAMPLES {
            return Err(SolverError::invalid(
                &format!("{name}.n_samples"),
                s.n_samples,
                &format!("1 to {MAX_SAMPLES} samples (the sample index keys a 48-bit RNG stream)"),
            ));
        }
        let (length, t_end) = (self.output.length, self.output.t_end);
        s.x0.validate_within(
            &format!("{name}.x0"),
            (0.0, length, true),
            &format!("pulse centres inside the domain [0, {length}]"),
        )?;
        s.t0.validate_within(
            &format!("{name}.t0"),
            (0.0, t_end, false),
            &format!(
                "onsets inside the time window [0, {t_end}) (a pulse starting at or after \
                 t_end never acts)"
            ),
        )?;
        s.amplitude.validate(&format!("{name}.amplitude"))
    }

    /// The spec of one split.
    pub fn split(&self, split: Split) -> &SplitSpec {
        match split {
            Split::Train => &self.train,
            Split::Validation => &self.validation,
            Split::Test => &self.test,
        }
    }

    /// The solver configuration the protocol prescribes.
    pub fn solver_config(&self) -> SolverConfig {
        SolverConfig {
            params: self.params,
            scheme: self.scheme,
            resolution: self.resolution,
        }
    }

    /// The RNG of sample `index` of `split`: ChaCha8 seeded by `seed`, stream (split, index).
    pub fn sample_rng(&self, split: Split, index: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream((split.key() << 48) | index as u64);
        rng
    }

    /// The drawn parameters of sample `index` of `split` (draw order: x0, t0, amplitude).
    pub fn sample_params(&self, split: Split, index: usize) -> SampleParams {
        let spec = self.split(split);
        let mut rng = self.sample_rng(split, index);
        let x0 = spec.x0.sample(&mut rng);
        let t0 = spec.t0.sample(&mut rng);
        let amplitude = spec.amplitude.sample(&mut rng);
        SampleParams { x0, t0, amplitude }
    }

    /// The stimulus of given parameters (one box pulse of the protocol's width and duration).
    pub fn stimulus(&self, s: &SampleParams) -> Stimulus {
        Stimulus::single(BoxPulse {
            x0: s.x0,
            width: self.pulse_width,
            t0: s.t0,
            duration: self.pulse_duration,
            amplitude: s.amplitude,
        })
    }

    /// The stimulus written on `grid` as the protocol's `input_sampling` says: a sample's
    /// input tensor.
    pub fn input_on(&self, stimulus: &Stimulus, grid: &OutputGrid) -> ndarray::Array2<f64> {
        stimulus.on_output_grid_sampled(grid, self.input_sampling)
    }

    /// Solves sample `index` of `split` on another output grid (same domain and physics), e.g.
    /// 200 × 200 for zero-shot resolution tests. The fine grid obeys the protocol's resolution
    /// bounds (with [`Resolution::Explicit`], its `nx` and `dt` are used as bounds).
    pub fn solve_sample_on(
        &self,
        split: Split,
        index: usize,
        grid: &OutputGrid,
    ) -> Result<Solution1d> {
        let resolution = match self.resolution {
            Resolution::Explicit { nx, dt } => Resolution::Auto {
                max_dx: self.output.length / (nx - 1).max(1) as f64,
                max_dt: dt,
            },
            auto => auto,
        };
        let config = SolverConfig {
            resolution,
            ..self.solver_config()
        };
        let stim = self.stimulus(&self.sample_params(split, index));
        let mut solution = Solver1d::new(&config, grid)?.solve(&stim)?;
        solution.input = self.input_on(&stim, grid);
        Ok(solution)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_protocol_matches_the_paper() {
        let p = Protocol::default_protocol();
        p.validate().unwrap();
        assert_eq!(
            (p.train.n_samples, p.validation.n_samples, p.test.n_samples),
            (1000, 100, 200)
        );
        let q = Protocol::quick();
        assert_eq!(
            (q.train.n_samples, q.validation.n_samples, q.test.n_samples),
            (128, 32, 64)
        );
        assert_eq!(q.output, p.output);
        for i in 0..50 {
            let s = p.sample_params(Split::Train, i);
            assert_eq!(s.t0, 1.0);
            assert!((0.1..0.9).contains(&s.x0) && (0.5..2.0).contains(&s.amplitude));
            let t = p.sample_params(Split::Test, i);
            assert!((1.0..20.0).contains(&t.t0));
        }
    }

    #[test]
    fn json_round_trip_and_rejection() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        let p = Protocol::quick();
        p.to_json_file(&path).unwrap();
        assert_eq!(Protocol::from_json_file(&path).unwrap(), p);
        std::fs::write(&path, p.to_json().replace("\"b\": 5.0", "\"b\": -5.0")).unwrap();
        assert!(matches!(
            Protocol::from_json_file(&path),
            Err(SolverError::InvalidParameter { .. })
        ));
        std::fs::write(&path, "{\"name\": 3}").unwrap();
        assert!(matches!(
            Protocol::from_json_file(&path),
            Err(SolverError::Format { .. })
        ));
    }

    #[test]
    fn input_sampling_is_optional_in_json_and_checked() {
        let point = Protocol::quick();
        assert!(
            !point.to_json().contains("input_sampling"),
            "the default is left out, so older protocols hash as before"
        );
        let mut cells = Protocol::quick();
        cells.input_sampling = InputSampling::CellAverage;
        let json = cells.to_json();
        assert!(
            json.contains("\"input_sampling\": \"cell_average\""),
            "{json}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.json");
        std::fs::write(&path, &json).unwrap();
        assert_eq!(Protocol::from_json_file(&path).unwrap(), cells);
        std::fs::write(&path, json.replace("cell_average", "cells")).unwrap();
        let err = Protocol::from_json_file(&path).unwrap_err().to_string();
        assert!(
            err.contains("cells") && err.contains("cell_average"),
            "{err}"
        );
    }

    #[test]
    fn samples_take_their_input_as_the_protocol_says() {
        let mut p = Protocol::quick();
        let grid = OutputGrid::with_size(12, 9);
        let point = p.solve_sample_on(Split::Test, 3, &grid).unwrap();
        p.input_sampling = InputSampling::CellAverage;
        let cells = p.solve_sample_on(Split::Test, 3, &grid).unwrap();
        let stim = p.stimulus(&p.sample_params(Split::Test, 3));
        assert_eq!(point.input, stim.on_output_grid(&grid));
        assert_eq!(
            cells.input,
            stim.on_output_grid_sampled(&grid, InputSampling::CellAverage)
        );
        assert_eq!(
            (point.v, point.w),
            (cells.v, cells.w),
            "the physics is the same"
        );
    }

    #[test]
    fn samples_do_not_depend_on_each_other() {
        let p = Protocol::default_protocol();
        let a = p.sample_params(Split::Validation, 7);
        let _ = p.sample_params(Split::Validation, 3);
        assert_eq!(p.sample_params(Split::Validation, 7), a);
        assert_ne!(p.sample_params(Split::Train, 7), a);
    }
}
