//! Errors of the training loop, its settings and `train --resume` (wrapped in
//! [`crate::ModelError::Training`]).

use thiserror::Error;

/// What can go wrong when configuring, resuming or running training.
#[derive(Debug, Error)]
pub enum TrainError {
    /// A training setting is out of its valid range.
    #[error("invalid training setting `{field}` = {value}: expected {expected}")]
    Setting {
        /// The setting, as written in a `TrainConfig` JSON (`optimizer.lr`, `batch_size`, ...).
        field: &'static str,
        /// The value given.
        value: String,
        /// The valid range.
        expected: String,
    },
    /// A training configuration names a field (or variant) that does not exist.
    #[error("training configuration: unknown {what} `{name}`{hint}; valid: {valid} ({location})")]
    UnknownField {
        /// `field` or `variant`.
        what: &'static str,
        /// The name found.
        name: String,
        /// ` (did you mean `x`?)`, or empty when nothing is close.
        hint: String,
        /// The valid names, comma-separated.
        valid: String,
        /// Where in the JSON text (serde's line and column).
        location: String,
    },
    /// A dataset holds a NaN or an infinity.
    #[error("the {split} set holds a non-finite {tensor} value {value} at sample {sample}, index {index:?} (channel, t, x); every input and target must be finite")]
    NonFiniteData {
        /// Which split (`training`, `validation`, `test`).
        split: String,
        /// `input` or `target`.
        tensor: &'static str,
        /// The sample (0-based).
        sample: usize,
        /// The index within the sample, `[channel, t, x]`.
        index: Vec<usize>,
        /// The offending value.
        value: f32,
    },
    /// The validation error came out NaN or infinite.
    #[error("non-finite validation error {value} at epoch {epoch}: the model's predictions are not finite; the checkpoints keep the last good epoch")]
    NonFiniteValidation {
        /// The epoch (0-based).
        epoch: usize,
        /// The value.
        value: f64,
    },
    /// A split has no samples.
    #[error("the {split} set is empty: it needs at least one sample")]
    EmptySplit {
        /// Which split.
        split: String,
    },
    /// A resumed run was asked to change its stored configuration.
    #[error("cannot resume with {setting} = {requested}: the checkpoint's run has {stored}; a resumed run keeps its stored configuration (only `epochs` may grow), start a new run to change it")]
    ResumeConflict {
        /// The flag or configuration field.
        setting: String,
        /// The value stored in the checkpoint.
        stored: String,
        /// The value requested.
        requested: String,
    },
    /// Training was asked to stop (a signal, through [`super::Trainer::set_stop_flag`]).
    /// The epoch under way was abandoned; the checkpoints hold the last completed epoch, so
    /// resuming from them gives the same final weights as an uninterrupted run.
    #[error("training interrupted during epoch {epoch} (after {epochs_completed} completed epochs); the last checkpoint holds the completed epochs, resume from it to continue")]
    Interrupted {
        /// The epoch abandoned (0-based).
        epoch: usize,
        /// Epochs completed and checkpointed.
        epochs_completed: usize,
    },
}
