//! CNO forward parity with the official simplified 2D CNO (`CNO2d_simplified/CNO2d.py` of
//! camlab-ethz/ConvolutionalNeuralOperator): committed fixtures, made by
//! `tools/parity/make_cno_fixtures.py`, hold the official network's seeded random weights
//! renamed to this project's variable names, this project's config for the same network, a
//! random input and the official outputs. Loading the weights into [`Cno`] must reproduce
//! the outputs within 1e-5 relative in f32 and 1e-10 in f64, without and with batch norm
//! (eval mode with random running statistics, and training mode with batch statistics).
//! No Python needed.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use no_models::cno::{Cno, CnoConfig};
use no_models::NeuralOperator;
use std::collections::HashMap;
use std::path::PathBuf;

type R<T> = Result<T, Box<dyn std::error::Error>>;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// The CNO of fixture `case` in `dtype`, and the fixture's input/output tensors (f64).
fn load(case: &str, dtype: DType) -> R<(Cno, HashMap<String, Tensor>)> {
    let cfg: CnoConfig = serde_json::from_str(&std::fs::read_to_string(fixture(&format!(
        "cno_{case}.json"
    )))?)?;
    let weights = candle_core::safetensors::load(
        fixture(&format!("cno_{case}.weights.safetensors")),
        &Device::Cpu,
    )?;
    let vb = VarBuilder::from_tensors(weights, dtype, &Device::Cpu);
    let model = Cno::new(&cfg, vb)?;
    let io = candle_core::safetensors::load(
        fixture(&format!("cno_{case}.io.safetensors")),
        &Device::Cpu,
    )?;
    Ok((model, io))
}

/// ‖got − expected‖ / ‖expected‖ in f64.
fn relative_error(got: &Tensor, expected: &Tensor) -> R<f64> {
    assert_eq!(got.dims(), expected.dims());
    let got = got.to_dtype(DType::F64)?;
    let err = (&got - expected)?
        .sqr()?
        .sum_all()?
        .sqrt()?
        .to_scalar::<f64>()?;
    let norm = expected.sqr()?.sum_all()?.sqrt()?.to_scalar::<f64>()?;
    Ok(err / norm)
}

/// Runs fixture `case` in `dtype` (eval or train mode) against `output_key`.
fn check(case: &str, dtype: DType, train: bool, output_key: &str, tol: f64) -> R<()> {
    let (model, io) = load(case, dtype)?;
    let x = io["input"].to_dtype(dtype)?;
    let got = model.forward_t(&x, train)?;
    let rel = relative_error(&got, &io[output_key])?;
    eprintln!("cno_{case} {dtype:?} train={train}: relative error {rel:.2e}");
    assert!(
        rel < tol,
        "cno_{case} {dtype:?}: relative error {rel:.2e} ≥ {tol:.0e}"
    );
    Ok(())
}

#[test]
fn cno_matches_the_official_simplified_cno_in_f32() -> R<()> {
    check("plain", DType::F32, false, "output_f32", 1e-5)
}

#[test]
fn cno_matches_the_official_simplified_cno_in_f64() -> R<()> {
    check("plain", DType::F64, false, "output_f64", 1e-10)
}

#[test]
fn cno_with_batch_norm_matches_the_official_code_in_eval_mode() -> R<()> {
    check("bn", DType::F32, false, "output_f32", 1e-5)?;
    check("bn", DType::F64, false, "output_f64", 1e-10)
}

#[test]
fn cno_with_batch_norm_matches_the_official_code_in_training_mode() -> R<()> {
    check("bn", DType::F64, true, "output_train_f64", 1e-10)
}

#[test]
fn fixture_weights_cover_every_parameter_of_the_config() -> R<()> {
    // The renamed state_dict must hold exactly as many trainable numbers as this CNO.
    let (model, _) = load("plain", DType::F64)?;
    let weights =
        candle_core::safetensors::load(fixture("cno_plain.weights.safetensors"), &Device::Cpu)?;
    let total: usize = weights.values().map(|t| t.elem_count()).sum();
    assert_eq!(total, model.param_count().numel);
    Ok(())
}

#[test]
fn padding_option_is_additive_and_validated() -> R<()> {
    use no_layers::init::SeededVarMap;
    // The default (official zero padding) is left out of the serialised config.
    let json = serde_json::to_string(&CnoConfig::default())?;
    assert!(!json.contains("padding"), "{json}");
    let small = |time: &str, space: &str| -> R<CnoConfig> {
        Ok(serde_json::from_value(serde_json::json!({
            "n_layers": 2, "n_res": 1, "n_res_neck": 1, "channel_multiplier": 4,
            "latent_lift_proj_dim": 4, "time_padding": time, "space_padding": space,
        }))?)
    };
    // Other paddings keep the size.
    let x = Tensor::ones((1, 1, 9, 8), DType::F32, &Device::Cpu)?;
    for (time, space) in [("causal", "reflect"), ("replicate", "replicate")] {
        let vars = SeededVarMap::new(0);
        let model = Cno::new(
            &small(time, space)?,
            vars.var_builder(DType::F32, &Device::Cpu),
        )?;
        assert_eq!(model.forward_t(&x, false)?.dims(), &[1, 2, 9, 8]);
    }
    // Causal is for time only.
    let vars = SeededVarMap::new(0);
    let err = Cno::new(
        &small("zeros", "causal")?,
        vars.var_builder(DType::F32, &Device::Cpu),
    )
    .err()
    .ok_or("causal space padding was accepted")?;
    assert!(err.to_string().contains("causal is for time"), "{err}");
    Ok(())
}
