//! The error type of `no-models`.

use std::path::PathBuf;
use thiserror::Error;

/// Everything that can go wrong when building, training, saving or loading a model.
#[derive(Debug, Error)]
pub enum ModelError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid {model} configuration: {reason}")]
    InvalidConfig {
        /// The architecture.
        model: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// The architecture exists in the config enum but is not built yet.
    #[error("the {0} architecture is not implemented yet")]
    NotImplemented(&'static str),
    /// A configuration names an architecture the registry does not know.
    #[error("unknown architecture `{name}`: the registry knows {known}; register a builder for it with `Registry::register`")]
    UnknownArchitecture {
        /// The name in the configuration's `"model"` tag.
        name: String,
        /// The registered names, comma-separated.
        known: String,
    },
    /// An architecture name was registered twice.
    #[error("architecture `{name}` is already registered; pick another name")]
    DuplicateArchitecture {
        /// The name.
        name: String,
    },
    /// A model configuration is not a JSON object with a string `"model"` tag.
    #[error("a model configuration must be a JSON object with a string `\"model\"` tag naming the architecture, got {found}")]
    UntaggedConfig {
        /// The configuration found (possibly shortened).
        found: String,
    },
    /// A tensor or array has the wrong shape.
    #[error("shape mismatch in {context}: got {got:?}, expected {expected}")]
    Shape {
        /// Where the mismatch was found.
        context: String,
        /// The shape found.
        got: Vec<usize>,
        /// What was expected.
        expected: String,
    },
    /// A checkpoint or dataset file is missing, truncated, foreign or inconsistent.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        reason: String,
    },
    /// Training produced a non-finite loss.
    #[error(
        "non-finite loss {loss} at epoch {epoch}, batch {batch}; the last good checkpoint is kept"
    )]
    NonFiniteLoss {
        /// The epoch (0-based).
        epoch: usize,
        /// The batch within the epoch (0-based).
        batch: usize,
        /// The loss value.
        loss: f64,
    },
    /// A training setting, resume request, dataset value or validation result is unusable.
    #[error(transparent)]
    Training(#[from] crate::train::TrainError),
    /// A configuration, file header or flag asks for more memory than the machine has (or
    /// for a size that overflows the address space); nothing was allocated.
    #[error("{what} would need {}, {}", crate::inference::describe_bytes(*bytes), crate::inference::describe_available(*available))]
    TooLarge {
        /// What was asked for (the model and its parameter count, the array and its shape).
        what: String,
        /// The bytes it would need (`None`: more than `u128` can count).
        bytes: Option<u128>,
        /// The bytes available (MemAvailable of /proc/meminfo; `None` where unknown).
        available: Option<u64>,
    },
    /// A weight, normaliser entry, input or output holds NaN or an infinity.
    #[error("non-finite value {value} in {context}")]
    NonFinite {
        /// Where: the file, tensor or sample and the index of the first bad value.
        context: String,
        /// The value found.
        value: f64,
    },
    /// An I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A JSON (de)serialisation error.
    #[error("JSON error: {0}")]
    Json(#[from] serde_json::Error),
    /// An error from a layer.
    #[error(transparent)]
    Layer(#[from] no_layers::LayerError),
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, ModelError>;

/// Turns a model error met inside a forward into candle's error type (the
/// [`crate::NeuralOperator`] trait's): a candle error as it was, anything else as its
/// message.
pub(crate) fn to_candle(e: ModelError) -> candle_core::Error {
    match e {
        ModelError::Candle(c) => c,
        other => candle_core::Error::Msg(other.to_string()),
    }
}
