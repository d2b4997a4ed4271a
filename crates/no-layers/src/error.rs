//! The error type of `no-layers`.

use thiserror::Error;

/// Everything that can go wrong when building or running a layer.
#[derive(Debug, Error)]
pub enum LayerError {
    /// A configuration value is out of range or inconsistent.
    #[error("invalid configuration of {layer}: {reason}")]
    InvalidConfig {
        /// The layer being configured.
        layer: &'static str,
        /// What was wrong and what was expected.
        reason: String,
    },
    /// An input tensor does not have the shape the layer expects.
    #[error("{layer}: input shape {got:?} does not match the expected {expected}")]
    Shape {
        /// The layer that received the input.
        layer: &'static str,
        /// The shape that arrived.
        got: Vec<usize>,
        /// A description of the expected shape.
        expected: String,
    },
    /// A tensor operation failed inside candle.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl From<LayerError> for candle_core::Error {
    fn from(e: LayerError) -> Self {
        match e {
            LayerError::Candle(c) => c,
            other => candle_core::Error::Msg(other.to_string()),
        }
    }
}

/// Result alias of the crate.
pub type Result<T> = std::result::Result<T, LayerError>;
