//! The crate's error type.
//!
//! Every failure a user can cause (a bad parameter, a blown-up solve, a foreign or truncated
//! file) is a [`SolverError`] variant that says what was wrong and what was expected.

use std::path::PathBuf;

/// Everything that can go wrong in `fhn-solver`.
#[derive(Debug, thiserror::Error)]
pub enum SolverError {
    /// A parameter is out of its valid range (or not finite).
    #[error("invalid parameter `{name}` = {value}: expected {expected}")]
    InvalidParameter {
        /// The parameter's name (a field path such as `params.d`).
        name: String,
        /// The offending value, as text.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },
    /// The output grid's nodes are not nodes of the fine solver grid.
    #[error("output grid not contained in the fine grid: {0}")]
    GridMismatch(String),
    /// The solution became NaN or infinite.
    #[error("non-finite value in `{field}` at step {step} (t = {time}): the solve diverged (try a smaller dt)")]
    NonFinite {
        /// Which field (`v` or `w`) held the value.
        field: &'static str,
        /// The time step (1-based: the step that produced the value).
        step: usize,
        /// The time reached by that step.
        time: f64,
    },
    /// Reading or writing a file failed.
    #[error("i/o error on {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A dataset or protocol file is malformed, truncated or not ours.
    #[error("bad file {path}: {reason}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// A request needs more memory than this machine has (or than an address can hold).
    #[error("{what} needs {}; {}", crate::limits::human_bytes(*needed_bytes), crate::limits::availability(*available_bytes))]
    TooLarge {
        /// What would be allocated, with its sizes (e.g. "the output grid 100 × 100").
        what: String,
        /// Bytes it would need (a float: the count may exceed any integer type).
        needed_bytes: f64,
        /// Bytes this machine has available (`MemAvailable`), if known.
        available_bytes: Option<u64>,
    },
    /// An array has the wrong shape.
    #[error("shape mismatch for `{name}`: expected {expected:?}, got {got:?}")]
    Shape {
        /// The array's name.
        name: String,
        /// The expected shape.
        expected: Vec<usize>,
        /// The actual shape.
        got: Vec<usize>,
    },
}

/// Shorthand for `Result<T, SolverError>`.
pub type Result<T> = std::result::Result<T, SolverError>;

impl SolverError {
    /// Builds an [`SolverError::InvalidParameter`].
    pub fn invalid(name: &str, value: impl std::fmt::Display, expected: &str) -> Self {
        SolverError::InvalidParameter {
            name: name.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// Checks that `value` is finite and strictly positive.
pub(crate) fn check_positive(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(SolverError::invalid(name, value, "a finite value > 0"))
    }
}

/// Checks that `value` is finite and non-negative.
pub(crate) fn check_non_negative(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value >= 0.0 {
        Ok(())
    } else {
        Err(SolverError::invalid(name, value, "a finite value >= 0"))
    }
}

/// Checks that `value` is finite.
pub(crate) fn check_finite(name: &str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(SolverError::invalid(name, value, "a finite value"))
    }
}
