//! The error type of `no-eval`.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong while evaluating models or writing a report.
#[derive(Debug, Error)]
pub enum EvalError {
    /// Two arrays that must agree in shape do not.
    #[error("shape mismatch in {context}: got {got:?}, expected {expected}")]
    Shape {
        /// Where the mismatch was found.
        context: String,
        /// The shape found.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// An argument is out of range (an empty sample set, a shift larger than the grid...).
    #[error("invalid {what} = {value}: expected {expected}")]
    Invalid {
        /// The argument.
        what: String,
        /// Its value, printed.
        value: String,
        /// What was expected.
        expected: String,
    },
    /// A configuration (study, evaluation, latency...) that cannot be read: an unknown or
    /// missing field, a value of the wrong type, or a value out of range.
    #[error("invalid {what}: {reason}")]
    Config {
        /// Which configuration, and where in the file (``EvalConfig at `eval` ``).
        what: String,
        /// What is wrong, with the closest valid field for a typo.
        reason: String,
    },
    /// A metric came out NaN or infinite: it is not written as a result.
    #[error("model `{model}`: {figure} is not finite ({value})")]
    NonFinite {
        /// The model's label.
        model: String,
        /// The figure (`test rel_l2 mean of v`, `latency p50 at batch 1`, ...).
        figure: String,
        /// The value found.
        value: f64,
    },
    /// A job's checkpoint could not be resumed from.
    #[error("cannot resume {job} from {path}: {reason} (remove that job's model directory, or run with --fresh, to train it from the start)")]
    Resume {
        /// The job (`fno seed 8 (job 12)`).
        job: String,
        /// The checkpoint.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A job was stopped by a signal; it resumes from its last completed epoch when the
    /// same command is run again.
    #[error("{job} interrupted after {epochs_completed} completed epochs; run the same command again to resume it")]
    Interrupted {
        /// The job.
        job: String,
        /// Epochs checkpointed.
        epochs_completed: usize,
    },
    /// Merging found jobs without a record.
    #[error("{missing} of the study's {total} jobs have no record in the merged directories: {list}; run them (the shard that holds job k of n shards is k mod n, or --job k) and merge again")]
    MissingJobs {
        /// How many are missing.
        missing: usize,
        /// How many the study has.
        total: usize,
        /// The missing jobs, described.
        list: String,
    },
    /// An I/O error on a report or data file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// Drawing a figure failed.
    #[error("plotting {path}: {reason}")]
    Plot {
        /// The figure being drawn.
        path: PathBuf,
        /// What plotters reported.
        reason: String,
    },
    /// A JSON (de)serialisation error.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// An error from the solver (data generation, ground-truth solves).
    #[error(transparent)]
    Solver(#[from] fhn_solver::SolverError),
    /// An error from a model (building, training, checkpoints).
    #[error(transparent)]
    Model(#[from] no_models::ModelError),
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl EvalError {
    /// An [`EvalError::Invalid`] from its parts.
    pub fn invalid(
        what: impl Into<String>,
        value: impl std::fmt::Display,
        expected: impl Into<String>,
    ) -> Self {
        EvalError::Invalid {
            what: what.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    /// An [`EvalError::Shape`] from its parts.
    pub fn shape(context: impl Into<String>, got: &[usize], expected: impl Into<String>) -> Self {
        EvalError::Shape {
            context: context.into(),
            got: got.to_vec(),
            expected: expected.into(),
        }
    }

    /// An [`EvalError::Io`] on `path`.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EvalError::Io {
            path: path.into(),
            source,
        }
    }
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, EvalError>;
