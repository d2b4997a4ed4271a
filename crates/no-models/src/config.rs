//! The tagged configuration of all seven architectures and the one `build` entry point.

use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Which architecture to build, with its settings. Serialised with an `"model"` tag:
/// `{"model": "fno", "n_modes": [16, 16], ...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "model", rename_all = "snake_case")]
pub enum ModelConfig {
    /// Convolutional neural operator (U-Net with anti-aliased activations).
    Cno(crate::cno::CnoConfig),
    /// DeepONet with MLP branch and trunk.
    Don(crate::deeponet::DeepOnetConfig),
    /// DeepONet with a CNN branch.
    DonCnn(crate::deeponet::DeepOnetCnnConfig),
    /// POD-DeepONet: the trunk is a POD basis of the training outputs.
    PodDon(crate::deeponet::pod::PodDeepOnetConfig),
    /// Fourier neural operator.
    Fno(crate::fno::FnoConfig),
    /// Tucker-factorized FNO: an [`crate::fno::FnoConfig`] whose `factorization` defaults
    /// to Tucker (and whose `rank` to [`crate::fno::TFNO_DEFAULT_RANK`]).
    Tfno(crate::fno::FnoConfig),
    /// Localized neural operator (FNO blocks with differential and DISCO kernels).
    LocalNo(crate::local_no::LocalNoConfig),
    /// Causal dilated convolutions: delay-equivariant by construction.
    Causal(crate::causal::CausalConfig),
}

impl ModelConfig {
    /// The short name used on the command line and in reports (`fno`, `cno`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            ModelConfig::Cno(_) => "cno",
            ModelConfig::Don(_) => "don",
            ModelConfig::DonCnn(_) => "don_cnn",
            ModelConfig::PodDon(_) => "pod_don",
            ModelConfig::Fno(_) => "fno",
            ModelConfig::Tfno(_) => "tfno",
            ModelConfig::LocalNo(_) => "local_no",
            ModelConfig::Causal(_) => "causal",
        }
    }
}

impl ModelConfig {
    /// The tagged JSON form (`{"model": "fno", ...}`), as [`NeuralOperator::config_json`]
    /// returns it.
    pub fn to_json(&self) -> serde_json::Value {
        // A derived `Serialize` of plain fields cannot fail.
        serde_json::to_value(self).expect("a ModelConfig always serialises")
    }

    /// The built-in configuration a tagged JSON describes; an error naming the tag if it
    /// is not one of the seven built-in architectures or the settings do not parse.
    pub fn from_json(json: &serde_json::Value) -> Result<Self> {
        let name = crate::registry::architecture_of(json)?;
        if !crate::registry::BUILTIN_ARCHITECTURES.contains(&name) {
            return Err(ModelError::UnknownArchitecture {
                name: name.to_string(),
                known: crate::registry::BUILTIN_ARCHITECTURES.join(", "),
            });
        }
        serde_json::from_value(json.clone()).map_err(|e| ModelError::InvalidConfig {
            model: "built-in model",
            reason: format!("the `{name}` configuration does not parse: {e}"),
        })
    }

    /// The built-in configuration of `model`; an error for an architecture that is not one
    /// of the seven (a user model: use its [`NeuralOperator::config_json`]).
    pub fn from_model(model: &dyn NeuralOperator) -> Result<Self> {
        Self::from_json(&model.config_json())
    }
}

/// Builds the model a config describes, with its weights taken from (or created in) `vb`.
pub fn build(config: &ModelConfig, vb: VarBuilder) -> Result<Box<dyn NeuralOperator>> {
    match config {
        ModelConfig::Cno(c) => crate::cno::build(c, vb),
        ModelConfig::Don(c) => crate::deeponet::build_don(c, vb),
        ModelConfig::DonCnn(c) => crate::deeponet::build_don_cnn(c, vb),
        ModelConfig::PodDon(c) => crate::deeponet::pod::build(c, vb),
        ModelConfig::Fno(c) => crate::fno::build(c, vb),
        // TFNO is FNO with a factorization, Tucker unless the config names one.
        ModelConfig::Tfno(c) => crate::fno::build(&c.tfno(), vb),
        ModelConfig::LocalNo(c) => crate::local_no::build(c, vb),
        ModelConfig::Causal(c) => crate::causal::build(c, vb),
    }
}
