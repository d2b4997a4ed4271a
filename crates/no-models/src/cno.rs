//! CNO (placeholder until implemented).

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of CNO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CnoConfig {}

/// Builds CNO.
pub fn build(_config: &CnoConfig, _vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Err(ModelError::NotImplemented("CNO"))
}
