//! The causal operator is delay-equivariant by construction: delaying its input by whole
//! grid steps delays its output by the same steps (the first rows the rest state, rows past
//! the window's end dropped), untrained and after a brief training, to rounding. The control,
//! an FNO with its positional embedding, fails the same check.

mod quick;

use candle_core::{DType, Device, Tensor};
use no_layers::init::SeededVarMap;
use no_models::causal::CausalConfig;
use no_models::fno::FnoConfig;
use no_models::train::{Schedule, TrainConfig, Trainer};
use no_models::{build, checkpoint, Checkpoint, ModelConfig, NeuralOperator, NormalizerKind};
use no_models::{Registry, TensorDataset};

/// Delays of the check, in grid steps.
const DELAYS: [usize; 3] = [1, 4, 9];
/// Largest relative deviation accepted as rounding.
const ROUNDING: f64 = 1e-5;
/// The control must deviate by more than this.
const CONTROL_FAILS: f64 = 1e-2;

/// `x` `[B, C, nt, nx]` delayed by `k` rows: zeros (the rest state) first, the last `k`
/// rows dropped.
fn delay(x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
    let nt = x.dim(2)?;
    x.narrow(2, 0, nt - k)?.pad_with_zeros(2, k, 0)
}

/// The largest `|M(S x) − S M(x)|` over all rows, relative to the largest `|M(x)|`.
fn delay_deviation(model: &dyn NeuralOperator, x: &Tensor, k: usize) -> candle_core::Result<f64> {
    let out = model.predict(x)?;
    let of_delayed = model.predict(&delay(x, k)?)?;
    let delayed_out = delay(&out, k)?;
    let max = |t: &Tensor| -> candle_core::Result<f64> {
        t.abs()?
            .flatten_all()?
            .max(0)?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()
    };
    Ok(max(&(of_delayed - delayed_out)?)? / max(&out)?.max(1e-30))
}

fn worst_deviation(model: &dyn NeuralOperator, x: &Tensor) -> candle_core::Result<f64> {
    DELAYS
        .iter()
        .map(|&k| delay_deviation(model, x, k))
        .try_fold(0.0f64, |m, d| Ok(m.max(d?)))
}

fn tiny_causal() -> ModelConfig {
    ModelConfig::Causal(CausalConfig {
        hidden_channels: 8,
        n_layers: 4,
        dilation_cycle: 4,
        ..CausalConfig::default()
    })
}

fn tiny_fno_with_positions() -> ModelConfig {
    ModelConfig::Fno(FnoConfig {
        n_modes: vec![8, 8],
        hidden_channels: 8,
        n_layers: 2,
        positional_embedding: true,
        ..FnoConfig::default()
    })
}

/// An input that is zero (rest) for its first rows, then a localised pulse, as the
/// protocol's currents are.
fn pulse_input() -> candle_core::Result<Tensor> {
    let (nt, nx) = (25usize, 25usize);
    let mut v = vec![0f32; nt * nx];
    for t in 3..8 {
        for x in 8..14 {
            v[t * nx + x] = 0.6 + 0.05 * (x as f32 - 10.0);
        }
    }
    Tensor::from_vec(v, (1, 1, nt, nx), &Device::Cpu)
}

fn untrained(cfg: &ModelConfig) -> no_models::Result<Box<dyn NeuralOperator>> {
    let vars = SeededVarMap::new(3);
    build(cfg, vars.var_builder(DType::F32, &Device::Cpu))
}

/// Trains `cfg` for 30 full-batch steps on the 8 quick samples (25 × 25) without
/// normalisation (the causal operator's rest state must stay zero).
fn briefly_trained(cfg: &ModelConfig, data: &TensorDataset) -> no_models::Result<Trainer> {
    let vars = SeededVarMap::new(3);
    let model = build(cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    let steps = 30;
    let mut tcfg = TrainConfig {
        epochs: steps,
        batch_size: data.len(),
        schedule: Schedule::Cosine {
            t_max: steps,
            eta_min: 1e-4,
        },
        normalizer: NormalizerKind::None,
        ..TrainConfig::default()
    };
    tcfg.optimizer.lr = 1e-2;
    let mut trainer = Trainer::new(model, vars, tcfg, &Device::Cpu)?;
    trainer.fit(data, data, None)?;
    Ok(trainer)
}

#[test]
fn untrained_causal_operator_delays_with_its_input() -> no_models::Result<()> {
    let model = untrained(&tiny_causal())?;
    let x = pulse_input()?;
    let dev = worst_deviation(model.as_ref(), &x)?;
    assert!(
        dev <= ROUNDING,
        "causal operator: relative deviation {dev:e}"
    );
    // The rest input maps to the rest state exactly.
    let rest = model.predict(&x.zeros_like()?)?;
    let peak = rest.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert_eq!(peak, 0.0, "the rest input must map to exactly zero");
    Ok(())
}

#[test]
fn untrained_fno_with_positional_embedding_fails_the_check() -> no_models::Result<()> {
    let model = untrained(&tiny_fno_with_positions())?;
    let dev = worst_deviation(model.as_ref(), &pulse_input()?)?;
    assert!(dev > CONTROL_FAILS, "the control passed: deviation {dev:e}");
    Ok(())
}

#[test]
fn briefly_trained_causal_operator_stays_delay_equivariant() -> no_models::Result<()> {
    let data = quick::samples()?;
    let trainer = briefly_trained(&tiny_causal(), &data)?;
    let first = data.inputs().narrow(0, 0, 2)?;
    let dev = worst_deviation(trainer.model(), &first)?;
    assert!(
        dev <= ROUNDING,
        "trained causal operator: deviation {dev:e}"
    );

    let control = briefly_trained(&tiny_fno_with_positions(), &data)?;
    let dev = worst_deviation(control.model(), &first)?;
    assert!(dev > CONTROL_FAILS, "the trained control passed: {dev:e}");
    Ok(())
}

#[test]
fn causal_operator_round_trips_through_a_checkpoint_and_the_registry() -> no_models::Result<()> {
    let vars = SeededVarMap::new(5);
    let cfg = tiny_causal();
    let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    assert_eq!(model.architecture(), "causal");
    assert_eq!(ModelConfig::from_model(model.as_ref())?, cfg);
    let dir = tempfile::tempdir().map_err(|e| no_models::ModelError::Io {
        path: "temporary directory".into(),
        source: e,
    })?;
    let path = dir.path().join("causal.safetensors");
    checkpoint::save_model(&path, model.as_ref(), vars.varmap())?;
    let loaded = Checkpoint::load_model_with(&path, &Registry::builtin(), &Device::Cpu)?;
    let x = pulse_input()?;
    let diff = (model.predict(&x)? - loaded.model.predict(&x)?)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    assert_eq!(diff, 0.0);
    Ok(())
}

#[test]
fn unknown_causal_config_fields_are_errors() {
    let json = serde_json::json!({"model": "causal", "hidden_channel": 8});
    let err = ModelConfig::from_json(&json).expect_err("a misspelt field must fail");
    assert!(err.to_string().contains("hidden_channel"), "{err}");
}
