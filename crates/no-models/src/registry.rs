//! An open registry of architectures: the name in a configuration's `"model"` tag → a
//! builder that makes the model from that configuration.
//!
//! [`Registry::builtin`] (also [`Registry::default`]) knows the seven built-in
//! architectures; [`Registry::register`] adds a user's own, after which a checkpoint of
//! that model loads through [`crate::Checkpoint::load_model_with`] like a built-in one.
//!
//! ```
//! use candle_core::{DType, Device};
//! use no_layers::init::SeededVarMap;
//! use no_models::Registry;
//!
//! # fn main() -> no_models::Result<()> {
//! let mut registry = Registry::builtin();
//! // A user architecture: here simply an alias of the built-in FNO.
//! registry.register("my_fno", |config, vb| {
//!     let mut config = config.clone();
//!     config["model"] = "fno".into();
//!     Registry::builtin().build(&config, vb)
//! })?;
//! assert!(registry.register("my_fno", |_, _| unreachable!()).is_err());
//!
//! let vars = SeededVarMap::new(0);
//! let config = serde_json::json!({"model": "my_fno", "n_modes": [4, 4], "hidden_channels": 4});
//! let model = registry.build(&config, vars.var_builder(DType::F32, &Device::Cpu))?;
//! assert_eq!(model.architecture(), "fno");
//!
//! let err = registry
//!     .build(&serde_json::json!({"model": "unet"}), vars.var_builder(DType::F32, &Device::Cpu))
//!     .err()
//!     .unwrap();
//! assert!(err.to_string().contains("unet"));
//! # Ok(())
//! # }
//! ```

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::operator::NeuralOperator;
use candle_nn::VarBuilder;
use std::collections::BTreeMap;
use std::sync::Arc;

/// A builder: makes a model from its tagged JSON configuration over the variables of a
/// [`VarBuilder`] (creating them, or reading them when loading a checkpoint).
pub type Builder =
    Arc<dyn Fn(&serde_json::Value, VarBuilder) -> Result<Box<dyn NeuralOperator>> + Send + Sync>;

/// The names of the seven built-in architectures, as their configurations tag them.
pub const BUILTIN_ARCHITECTURES: [&str; 8] = [
    "cno", "don", "don_cnn", "pod_don", "fno", "tfno", "local_no", "causal",
];

/// Architecture name → builder. Cheap to clone (builders are shared).
#[derive(Clone)]
pub struct Registry {
    builders: BTreeMap<String, Builder>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("architectures", &self.names())
            .finish()
    }
}

impl Default for Registry {
    /// The registry of the seven built-in architectures ([`Registry::builtin`]).
    fn default() -> Self {
        Self::builtin()
    }
}

impl Registry {
    /// A registry that knows no architecture.
    pub fn empty() -> Self {
        Self {
            builders: BTreeMap::new(),
        }
    }

    /// A registry of the seven built-in architectures ([`BUILTIN_ARCHITECTURES`]), each
    /// built from its [`ModelConfig`] through [`crate::build`].
    pub fn builtin() -> Self {
        let mut r = Self::empty();
        for name in BUILTIN_ARCHITECTURES {
            let builder: Builder = Arc::new(|json: &serde_json::Value, vb: VarBuilder| {
                crate::config::build(&ModelConfig::from_json(json)?, vb)
            });
            r.builders.insert(name.to_string(), builder);
        }
        r
    }

    /// Adds the architecture `name` with its builder; an error if the name is already
    /// registered (built-in names included): a registry never silently replaces a builder.
    pub fn register<F>(&mut self, name: impl Into<String>, builder: F) -> Result<()>
    where
        F: Fn(&serde_json::Value, VarBuilder) -> Result<Box<dyn NeuralOperator>>
            + Send
            + Sync
            + 'static,
    {
        let name = name.into();
        if self.builders.contains_key(&name) {
            return Err(ModelError::DuplicateArchitecture { name });
        }
        self.builders.insert(name, Arc::new(builder));
        Ok(())
    }

    /// Whether `name` is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.builders.contains_key(name)
    }

    /// The registered names, sorted.
    pub fn names(&self) -> Vec<&str> {
        self.builders.keys().map(String::as_str).collect()
    }

    /// Builds the model `config` describes, dispatching on its `"model"` tag; an error if
    /// the tag is missing or names an architecture this registry does not know.
    pub fn build(
        &self,
        config: &serde_json::Value,
        vb: VarBuilder,
    ) -> Result<Box<dyn NeuralOperator>> {
        let name = architecture_of(config)?;
        let builder = self
            .builders
            .get(name)
            .ok_or_else(|| ModelError::UnknownArchitecture {
                name: name.to_string(),
                known: self.names().join(", "),
            })?;
        builder(config, vb)
    }
}

/// The `"model"` tag of a configuration; an error if `config` is not a JSON object with a
/// string `"model"` field.
pub fn architecture_of(config: &serde_json::Value) -> Result<&str> {
    config
        .get("model")
        .and_then(serde_json::Value::as_str)
        .ok_or_else(|| ModelError::UntaggedConfig {
            found: truncate(config.to_string(), 120),
        })
}

fn truncate(mut s: String, n: usize) -> String {
    if s.len() > n {
        let mut cut = n;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};
    use no_layers::init::SeededVarMap;

    #[test]
    fn builtin_knows_the_seven() {
        let r = Registry::builtin();
        let mut expected: Vec<&str> = BUILTIN_ARCHITECTURES.to_vec();
        expected.sort();
        assert_eq!(r.names(), expected);
    }

    #[test]
    fn unknown_names_the_known_ones() {
        let r = Registry::builtin();
        let vars = SeededVarMap::new(0);
        let err = r
            .build(
                &serde_json::json!({"model": "resnet"}),
                vars.var_builder(DType::F32, &Device::Cpu),
            )
            .err()
            .expect("unknown architecture must fail");
        let msg = err.to_string();
        assert!(msg.contains("`resnet`"), "{msg}");
        assert!(msg.contains("fno") && msg.contains("local_no"), "{msg}");
    }

    #[test]
    fn untagged_config_is_an_error() {
        let r = Registry::builtin();
        let vars = SeededVarMap::new(0);
        let err = r
            .build(
                &serde_json::json!({"n_modes": [4, 4]}),
                vars.var_builder(DType::F32, &Device::Cpu),
            )
            .err()
            .expect("untagged config must fail");
        assert!(matches!(err, ModelError::UntaggedConfig { .. }), "{err}");
    }

    #[test]
    fn duplicate_registration_is_an_error() {
        let mut r = Registry::builtin();
        let err = r
            .register("fno", |_, _| Err(ModelError::NotImplemented("x")))
            .expect_err("duplicate must fail");
        assert!(err.to_string().contains("`fno`"), "{err}");
        r.register("mine", |_, _| Err(ModelError::NotImplemented("mine")))
            .expect("a new name registers");
        assert!(r.contains("mine"));
        assert!(r.register("mine", |_, _| unreachable!()).is_err());
    }
}
