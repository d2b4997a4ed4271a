//! FNO (placeholder until implemented).

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of FNO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FnoConfig {}

/// Builds FNO.
pub fn build(_config: &FnoConfig, _tucker: bool, _vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Err(ModelError::NotImplemented("FNO"))
}
