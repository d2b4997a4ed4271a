//! Forward parity with DeepXDE 1.15 (PyTorch backend, float64) for DeepONet and POD-DeepONet,
//! and of the POD basis with NumPy. Fixtures: `tools/parity/make_deepxde_fixtures.py`.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use no_models::deeponet::{DeepOnet, DeepOnetConfig};
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnetConfig};
use no_models::{build, ModelConfig, NeuralOperator};
use std::collections::HashMap;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn fixture(name: &str) -> candle_core::Result<HashMap<String, Tensor>> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    candle_core::safetensors::load(path, &Device::Cpu)
}

fn max_rel(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
    let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
    let scale = b.abs()?.max_all()?.to_scalar::<f64>()?;
    Ok(diff / scale)
}

#[test]
fn deeponet_matches_deepxde_cartesian_prod_split_both() -> TestResult {
    let t = fixture("deepxde_don.safetensors")?;
    let cfg = DeepOnetConfig {
        grid: [6, 5],
        branch_hidden: vec![16, 16],
        trunk_hidden: vec![16, 16],
        n_basis: 8,
        ..Default::default()
    };
    let vb = VarBuilder::from_tensors(t.clone(), DType::F64, &Device::Cpu);
    let model = DeepOnet::new(&cfg, vb)?;
    let rel = max_rel(&model.forward(&t["u"])?, &t["y"])?;
    assert!(rel < 1e-12, "grid output differs by {rel}");
    let rel = max_rel(&model.forward_at(&t["u"], &t["coords"])?, &t["y_at"])?;
    assert!(rel < 1e-12, "query-point output differs by {rel}");
    Ok(())
}

#[test]
fn pod_deeponet_matches_deepxde_and_numpy() -> TestResult {
    let t = fixture("deepxde_pod.safetensors")?;
    // The basis computed here agrees with NumPy's (covariance + eigh, same sign rule).
    let basis = PodBasis::fit(&t["y_train"], PodCriterion::Count(4))?;
    for k in 0..2 {
        let ours = Tensor::from_vec(basis.fields[k].modes.clone(), (30, 4), &Device::Cpu)?;
        let rel = max_rel(&ours, &t[&format!("pod.basis{k}")])?;
        assert!(rel < 1e-9, "field {k}: basis differs from NumPy by {rel}");
    }
    // Forward with the stored basis equals DeepXDE's PODDeepONet plus the mean.
    let cfg = ModelConfig::PodDon(PodDeepOnetConfig {
        grid: [6, 5],
        branch_hidden: vec![16, 16],
        modes: vec![4, 4],
        ..Default::default()
    });
    let model = build(
        &cfg,
        VarBuilder::from_tensors(t.clone(), DType::F64, &Device::Cpu),
    )?;
    let rel = max_rel(&model.forward(&t["u"])?, &t["y"])?;
    assert!(rel < 1e-12, "output differs by {rel}");
    Ok(())
}
