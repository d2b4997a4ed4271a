//! A model defined outside `no-models` trains with the `Trainer`, checkpoints, and loads
//! back through a `Registry` with identical predictions; unknown and duplicate
//! architecture names are clear errors.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use no_layers::init::SeededVarMap;
use no_models::checkpoint::{self, Checkpoint};
use no_models::train::{TrainConfig, Trainer};
use no_models::{ModelError, NeuralOperator, ParamCount, Registry, TensorDataset};

type R<T> = no_models::Result<T>;

const NAME: &str = "test_pointwise";

/// A point-wise channel map `[B, 1, nt, nx] -> [B, 2, nt, nx]` with one hidden layer.
struct Pointwise {
    hidden: usize,
    fc1: Conv2d,
    fc2: Conv2d,
}

impl Pointwise {
    fn new(hidden: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        let cfg = Conv2dConfig::default();
        Ok(Self {
            hidden,
            fc1: candle_nn::conv2d(1, hidden, 1, cfg, vb.pp("fc1"))?,
            fc2: candle_nn::conv2d(hidden, 2, 1, cfg, vb.pp("fc2"))?,
        })
    }

    fn build(json: &serde_json::Value, vb: VarBuilder) -> R<Box<dyn NeuralOperator>> {
        let hidden = json
            .get("hidden")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| ModelError::InvalidConfig {
                model: NAME,
                reason: format!("expected an integer `hidden`, got {json}"),
            })?;
        Ok(Box::new(Self::new(hidden as usize, vb)?))
    }
}

impl NeuralOperator for Pointwise {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        self.fc2.forward(&self.fc1.forward(input)?.tanh()?)
    }
    fn architecture(&self) -> &str {
        NAME
    }
    fn config_json(&self) -> serde_json::Value {
        serde_json::json!({"model": NAME, "hidden": self.hidden})
    }
    fn rebuild(&self, vb: VarBuilder) -> R<Box<dyn NeuralOperator>> {
        Ok(Box::new(Self::new(self.hidden, vb)?))
    }
    fn param_count(&self) -> ParamCount {
        let numel = 2 * self.hidden + self.hidden * 2 + 2;
        ParamCount { numel, real: numel }
    }
    fn accepts_other_resolutions(&self) -> bool {
        true
    }
}

fn registry() -> R<Registry> {
    let mut r = Registry::builtin();
    r.register(NAME, Pointwise::build)?;
    Ok(r)
}

fn synthetic(n: usize, seed: u64) -> R<TensorDataset> {
    let z = Tensor::zeros((n, 1, 6, 6), DType::F32, &Device::Cpu)?;
    let x = no_layers::gradcheck::random_like(&z, seed)?;
    let y = Tensor::cat(&[(&x * 0.5)?, x.sqr()?], 1)?;
    TensorDataset::new(x, y)
}

fn bits(t: &Tensor) -> R<Vec<u32>> {
    Ok(t.flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .map(|v| v.to_bits())
        .collect())
}

#[test]
fn user_model_trains_checkpoints_and_reloads_identically() -> R<()> {
    let registry = registry()?;
    let vars = SeededVarMap::new(5);
    let model = registry.build(
        &serde_json::json!({"model": NAME, "hidden": 8}),
        vars.var_builder(DType::F32, &Device::Cpu),
    )?;
    let cfg = TrainConfig {
        epochs: 3,
        batch_size: 4,
        seed: 2,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, vars, cfg, &Device::Cpu)?;
    let (train, val) = (synthetic(8, 1)?, synthetic(4, 2)?);
    let dir = tempfile::tempdir().expect("temp dir");
    let summary = trainer.fit(&train, &val, Some(dir.path()))?;
    assert_eq!(summary.history.len(), 3);

    let last = dir.path().join("last.safetensors");
    let ckpt = Checkpoint::read(&last, &Device::Cpu)?;
    assert_eq!(ckpt.architecture()?, NAME);
    assert_eq!(ckpt.config, serde_json::json!({"model": NAME, "hidden": 8}));
    assert!(ckpt.model_config().is_err(), "not a built-in model");

    let loaded = Checkpoint::load_model_with(&last, &registry, &Device::Cpu)?;
    assert_eq!(loaded.model.architecture(), NAME);
    let x = val.inputs();
    let norms = trainer.normalizers().expect("fitted normalisers");
    let direct = norms
        .output
        .decode(&trainer.model().predict(&norms.input.encode(x)?)?)?;
    assert_eq!(bits(&loaded.predict_physical(x)?)?, bits(&direct)?);
    let twin = loaded.inference()?;
    assert_eq!(
        bits(&loaded.predict_physical_with(twin.as_ref(), x)?)?,
        bits(&direct)?
    );

    // Training resumes through the registry too.
    let mut resumed = Trainer::resume_with(&last, &registry, &Device::Cpu, None)?;
    resumed.set_epochs(4);
    assert_eq!(resumed.fit(&train, &val, None)?.history.len(), 1);

    // The built-in registry alone names the unknown architecture and the known ones.
    match checkpoint::load(&last, &Device::Cpu) {
        Err(e @ ModelError::UnknownArchitecture { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(NAME) && msg.contains("fno"), "{msg}");
        }
        other => panic!("expected an unknown architecture, got {:?}", other.err()),
    }
    Ok(())
}

#[test]
fn duplicate_and_unknown_names_are_errors() -> R<()> {
    let mut registry = registry()?;
    match registry.register(NAME, Pointwise::build) {
        Err(ModelError::DuplicateArchitecture { name }) => assert_eq!(name, NAME),
        other => panic!("expected a duplicate error, got {other:?}"),
    }
    assert!(registry.register("fno", Pointwise::build).is_err());
    let vars = SeededVarMap::new(0);
    match registry.build(
        &serde_json::json!({"model": "transformer"}),
        vars.var_builder(DType::F32, &Device::Cpu),
    ) {
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.contains("`transformer`"), "{msg}");
            assert!(msg.contains(NAME) && msg.contains("local_no"), "{msg}");
        }
        Ok(_) => panic!("an unknown architecture built"),
    }
    Ok(())
}
