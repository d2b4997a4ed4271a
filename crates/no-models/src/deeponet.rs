//! DeepONet and DeepONet with a CNN branch (placeholder until implemented).

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Configuration of DeepONet.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeepOnetConfig {}

/// Configuration of DeepONet with a CNN branch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DeepOnetCnnConfig {}

/// Builds DeepONet.
pub fn build_don(_config: &DeepOnetConfig, _vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Err(ModelError::NotImplemented("DeepONet"))
}

/// Builds DeepONet with a CNN branch.
pub fn build_don_cnn(_config: &DeepOnetCnnConfig, _vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    Err(ModelError::NotImplemented("DeepONet-CNN"))
}
