//! POD-DeepONet (placeholder until implemented).

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of POD-DeepONet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PodDeepOnetConfig {}

/// Builds POD-DeepONet.
pub fn build(_config: &PodDeepOnetConfig, _vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Err(ModelError::NotImplemented("POD-DeepONet"))
}
