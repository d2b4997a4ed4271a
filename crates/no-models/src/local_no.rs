//! LocalNO (placeholder until implemented).

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of LocalNO.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LocalNoConfig {}

/// Builds LocalNO.
pub fn build(_config: &LocalNoConfig, _vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Err(ModelError::NotImplemented("LocalNO"))
}
