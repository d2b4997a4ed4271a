//! Your own neural operator, end to end: a small model defined here (not in `no-models`)
//! implements [`NeuralOperator`], is registered in a [`Registry`], trains with the
//! workspace's [`Trainer`] on a small FitzHugh–Nagumo dataset generated with `fhn_solver`,
//! is saved to a checkpoint, reloaded through the registry, checked to predict exactly
//! the same values, and evaluated with `no_eval::metrics`.
//!
//! ```text
//! cargo run --release --example custom_model
//! ```
//!
//! The model ("pointwise_conv"): a two-layer point-wise channel MLP with a learned 3×3
//! convolution between its layers,
//! `y = W₂ · (h + gelu(conv₃ₓ₃(h))) + b₂` with `h = gelu(W₁ · u + b₁)`.

use anyhow::{ensure, Context};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, VarBuilder};
use fhn_solver::{OutputGrid, Protocol, Split};
use ndarray::Array4;
use no_layers::init::SeededVarMap;
use no_models::train::{Schedule, TrainConfig, Trainer};
use no_models::{Checkpoint, NeuralOperator, ParamCount, Registry, TensorDataset};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The architecture's registered name: the `"model"` tag of its configuration.
const NAME: &str = "pointwise_conv";

/// The model's settings (the tagged JSON adds `"model": NAME`). Unknown fields are
/// refused, so a typo in a configuration is an error, not a silently ignored setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointwiseConvConfig {
    in_channels: usize,
    out_channels: usize,
    hidden_channels: usize,
}

/// The model itself: three candle convolutions (1×1, 3×3, 1×1).
struct PointwiseConv {
    config: PointwiseConvConfig,
    lift: Conv2d,
    mix: Conv2d,
    project: Conv2d,
}

impl PointwiseConv {
    fn new(config: PointwiseConvConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let c = &config;
        let one = Conv2dConfig::default();
        let three = Conv2dConfig {
            padding: 1,
            ..Conv2dConfig::default()
        };
        let lift = candle_nn::conv2d(c.in_channels, c.hidden_channels, 1, one, vb.pp("lift"))?;
        let mix = candle_nn::conv2d(c.hidden_channels, c.hidden_channels, 3, three, vb.pp("mix"))?;
        let project =
            candle_nn::conv2d(c.hidden_channels, c.out_channels, 1, one, vb.pp("project"))?;
        Ok(Self {
            config,
            lift,
            mix,
            project,
        })
    }

    /// The registry's builder: parses the tagged JSON (without its tag) and builds.
    fn build(
        json: &serde_json::Value,
        vb: VarBuilder,
    ) -> no_models::Result<Box<dyn NeuralOperator>> {
        let mut fields = json.clone();
        if let Some(map) = fields.as_object_mut() {
            map.remove("model");
        }
        let config: PointwiseConvConfig =
            serde_json::from_value(fields).map_err(|e| no_models::ModelError::InvalidConfig {
                model: NAME,
                reason: format!("{e} (expected in_channels, out_channels, hidden_channels)"),
            })?;
        Ok(Box::new(Self::new(config, vb)?))
    }
}

impl NeuralOperator for PointwiseConv {
    fn forward_t(&self, input: &Tensor, _train: bool) -> candle_core::Result<Tensor> {
        let h = self.lift.forward(input)?.gelu_erf()?;
        let h = (&h + self.mix.forward(&h)?.gelu_erf()?)?;
        self.project.forward(&h)
    }

    fn architecture(&self) -> &str {
        NAME
    }

    fn config_json(&self) -> serde_json::Value {
        let mut json = serde_json::to_value(&self.config).unwrap_or_default();
        if let Some(map) = json.as_object_mut() {
            map.insert("model".into(), NAME.into());
        }
        json
    }

    fn rebuild(&self, vb: VarBuilder) -> no_models::Result<Box<dyn NeuralOperator>> {
        Ok(Box::new(Self::new(self.config.clone(), vb)?))
    }

    fn param_count(&self) -> ParamCount {
        let c = &self.config;
        let (i, h, o) = (c.in_channels, c.hidden_channels, c.out_channels);
        let numel = (i * h + h) + (9 * h * h + h) + (h * o + o);
        ParamCount { numel, real: numel }
    }

    fn accepts_other_resolutions(&self) -> bool {
        true
    }
}

/// One split of a small protocol on a 32 × 32 output grid, as a `no_models::TensorDataset`.
fn split(
    protocol: &Protocol,
    which: Split,
    dir: &std::path::Path,
) -> anyhow::Result<TensorDataset> {
    let data = fhn_solver::generate(protocol, which, None, false)?;
    let path = dir.join(format!("{}.safetensors", which.name()));
    data.save(&path)?;
    Ok(TensorDataset::from_fhn_file(&path)?)
}

/// A tensor `[N, C, nt, nx]` as an ndarray, for `no_eval`.
fn to_array(t: &Tensor) -> anyhow::Result<Array4<f32>> {
    let (n, c, nt, nx) = t.dims4()?;
    Ok(Array4::from_shape_vec(
        (n, c, nt, nx),
        t.flatten_all()?.to_vec1::<f32>()?,
    )?)
}

fn main() -> anyhow::Result<()> {
    // The example takes no flags: refuse any rather than run something else than asked.
    if let Some(arg) = std::env::args().nth(1) {
        anyhow::bail!("unexpected argument `{arg}`: custom_model takes no arguments");
    }
    let start = Instant::now();
    let device = Device::Cpu;
    let dir = tempfile_dir()?;

    // 1. A small dataset from the solver: the quick protocol's laws on a 32 × 32 grid.
    let mut protocol = Protocol::quick();
    protocol.output = OutputGrid::with_size(32, 32);
    protocol.train.n_samples = 24;
    protocol.validation.n_samples = 8;
    protocol.test.n_samples = 8;
    let train = split(&protocol, Split::Train, &dir)?;
    let val = split(&protocol, Split::Validation, &dir)?;
    let test = split(&protocol, Split::Test, &dir)?;
    println!(
        "dataset: {} / {} / {} samples of {:?} -> {:?} ({:.1} s)",
        train.len(),
        val.len(),
        test.len(),
        train.inputs().dims(),
        train.outputs().dims(),
        start.elapsed().as_secs_f64()
    );

    // 2. Register the architecture next to the seven built-in ones and build it from JSON.
    let mut registry = Registry::builtin();
    registry.register(NAME, PointwiseConv::build)?;
    let config = serde_json::json!({
        "model": NAME, "in_channels": 1, "out_channels": 2, "hidden_channels": 16
    });
    let vars = SeededVarMap::new(7);
    let model = registry.build(&config, vars.var_builder(DType::F32, &device))?;
    println!(
        "model `{}`: {} parameters; registry knows {:?}",
        model.architecture(),
        model.param_count().numel,
        registry.names()
    );

    // 3. Train with the workspace's trainer (writes last/best checkpoints into `dir`).
    let cfg = TrainConfig {
        epochs: 15,
        batch_size: 8,
        schedule: Schedule::Constant,
        seed: 3,
        ..TrainConfig::default()
    };
    let mut trainer = Trainer::new(model, vars, cfg, &device)?;
    let summary = trainer.fit(&train, &val, Some(dir.as_path()))?;
    let first = summary.history.first().context("no epoch ran")?;
    let last = summary.history.last().context("no epoch ran")?;
    println!(
        "trained {} epochs: train loss {:.4} -> {:.4}, best validation error {:.4}",
        summary.history.len(),
        first.train_loss,
        last.train_loss,
        summary.best_val.unwrap_or(f64::NAN)
    );
    ensure!(
        last.train_loss < first.train_loss,
        "the training loss did not decrease"
    );

    // 4. Save the current state, reload it through the registry, compare predictions.
    let path = dir.join(format!("{NAME}.safetensors"));
    trainer.checkpoint()?.save(&path)?;
    let loaded = Checkpoint::load_model_with(&path, &registry, &device)?;
    ensure!(loaded.model.architecture() == NAME, "wrong architecture");
    let norms = trainer
        .normalizers()
        .context("the trainer fits normalisers")?;
    let direct = norms.output.decode(
        &trainer
            .model()
            .predict(&norms.input.encode(test.inputs())?)?,
    )?;
    let reloaded = loaded.predict_physical(test.inputs())?;
    let max_diff = (&direct - &reloaded)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    ensure!(
        max_diff == 0.0,
        "the reloaded model differs by up to {max_diff}"
    );
    println!(
        "saved {} and reloaded it through the registry: predictions identical (max |diff| = {max_diff})",
        path.display()
    );
    // Without the registration the checkpoint is refused with a clear error.
    match Checkpoint::load_model(&path, &device) {
        Err(e) => println!("the built-in registry alone refuses it: {e}"),
        Ok(_) => anyhow::bail!("the built-in registry loaded a user model"),
    }

    // 5. Evaluate on the test split with no-eval's metrics (physical units).
    let out = protocol.output;
    let spacing = no_eval::metrics::Spacing {
        dt: out.t_end / (out.nt - 1) as f64,
        dx: out.length / (out.nx - 1) as f64,
    };
    let errors = no_eval::metrics::batch_errors(
        to_array(&reloaded)?.view(),
        to_array(test.outputs())?.view(),
        spacing,
    )?;
    for (c, field) in no_eval::metrics::FIELDS.iter().enumerate() {
        let rel_l2: Vec<f64> = errors.iter().map(|e| e[c].rel_l2).collect();
        let s = no_eval::metrics::summarize(&rel_l2)?;
        println!(
            "test relative L2 of {field}: mean {:.3}, median {:.3}, max {:.3} over {} samples",
            s.mean, s.median, s.max, s.n
        );
    }
    println!("done in {:.1} s", start.elapsed().as_secs_f64());
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// A fresh scratch directory under the system's temporary directory.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("custom_model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
