//! DeepONet and DeepONet-CNN: gradients, overfitting 8 quick FHN samples, query points,
//! shapes, parameter counts.

mod quick;
mod synthetic;

use candle_core::{DType, Device, Tensor, Var};
use no_layers::gradcheck::{check_gradients, GradCheckConfig};
use no_layers::init::SeededVarMap;
use no_models::deeponet::{
    grid_coordinates, Activation, DeepOnet, DeepOnetCnnConfig, DeepOnetConfig,
};
use no_models::{build, ModelConfig, NeuralOperator, NormalizerKind};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn tiny_don() -> DeepOnetConfig {
    DeepOnetConfig {
        grid: [6, 5],
        branch_hidden: vec![8],
        trunk_hidden: vec![8],
        n_basis: 6,
        ..Default::default()
    }
}

fn tiny_cnn(grid: [usize; 2]) -> DeepOnetCnnConfig {
    DeepOnetCnnConfig {
        grid,
        conv_channels: vec![3, 4],
        branch_hidden: vec![6, 6],
        trunk_hidden: vec![6],
        n_basis: 6,
        ..Default::default()
    }
}

fn grad_check(
    model: &dyn NeuralOperator,
    vars: &SeededVarMap,
    shape: (usize, usize, usize, usize),
) -> TestResult {
    let x = Var::from_tensor(&synthetic::dataset(shape.0, shape.2, shape.3, DType::F64)?.0)?;
    let mut all = vars.varmap().all_vars();
    all.push(x.clone());
    let xs = x.clone();
    let report = check_gradients(
        || model.forward_t(xs.as_tensor(), true),
        &all,
        &GradCheckConfig {
            max_entries_per_var: 12,
            ..Default::default()
        },
    )?;
    assert!(report.passed(), "{report:?}");
    Ok(())
}

#[test]
fn don_gradients_match_finite_differences() -> TestResult {
    let vars = SeededVarMap::new(1);
    let model = DeepOnet::new(&tiny_don(), vars.var_builder(DType::F64, &Device::Cpu))?;
    grad_check(&model, &vars, (2, 1, 6, 5))
}

#[test]
fn don_cnn_gradients_match_finite_differences_on_a_non_square_grid() -> TestResult {
    // 11 × 8 with k3 s2 p0: (11-3)%2 = 0 but (8-3)%2 = 1, the case candle's conv2d backward
    // gets wrong unless the model pads W.
    let vars = SeededVarMap::new(2);
    let model = DeepOnet::new_cnn(
        &tiny_cnn([11, 8]),
        vars.var_builder(DType::F64, &Device::Cpu),
    )?;
    grad_check(&model, &vars, (2, 1, 11, 8))
}

/// Overfitting runs: 8 quick samples on the 25 × 25 grid, Gaussian normalisation, at
/// most this many full-batch AdamW steps.
const OVERFIT_STEPS: usize = 2000;

/// The trunks use ReLU. A tanh trunk on (t, x) ∈ [0, 1]² learns the sharp wave fronts of
/// FHN slowly (spectral bias of smooth coordinate networks): this DON with a tanh trunk is
/// at 0.090 after 3000 steps (0.127 with two hidden layers), with a ReLU trunk under 0.05
/// after 1200. DON-CNN also needs a wider basis: with 64 functions it stalls at 0.056
/// after 1500 steps (lr 3e-3), with 128 it is under 0.05 after 800 (lr 5e-3).
#[test]
fn don_overfits_eight_quick_samples() -> TestResult {
    let data = quick::samples()?;
    let cfg = DeepOnetConfig {
        grid: quick::GRID,
        branch_hidden: vec![64, 64, 64],
        trunk_hidden: vec![64, 64, 64],
        trunk_activation: Activation::Relu,
        n_basis: 64,
        ..Default::default()
    };
    let vars = SeededVarMap::new(3);
    let model = build(
        &ModelConfig::Don(cfg),
        vars.var_builder(DType::F32, &Device::Cpu),
    )?;
    let outcome = quick::overfit(
        model,
        vars,
        &data,
        3e-3,
        OVERFIT_STEPS,
        NormalizerKind::Gaussian,
    )?;
    quick::assert_overfits("don", outcome, OVERFIT_STEPS);
    Ok(())
}

#[test]
fn don_cnn_overfits_eight_quick_samples() -> TestResult {
    let data = quick::samples()?;
    let cfg = DeepOnetCnnConfig {
        grid: quick::GRID,
        conv_channels: vec![8, 16],
        branch_hidden: vec![64, 64],
        trunk_hidden: vec![64, 64, 64],
        trunk_activation: Activation::Relu,
        n_basis: 128,
        ..Default::default()
    };
    let vars = SeededVarMap::new(3);
    let model = build(
        &ModelConfig::DonCnn(cfg),
        vars.var_builder(DType::F32, &Device::Cpu),
    )?;
    let outcome = quick::overfit(
        model,
        vars,
        &data,
        5e-3,
        OVERFIT_STEPS,
        NormalizerKind::Gaussian,
    )?;
    quick::assert_overfits("don_cnn", outcome, OVERFIT_STEPS);
    Ok(())
}

#[test]
fn query_points_on_the_grid_reproduce_the_grid_output() -> TestResult {
    let vars = SeededVarMap::new(5);
    let model = DeepOnet::new(&tiny_don(), vars.var_builder(DType::F64, &Device::Cpu))?;
    let (x, _) = synthetic::dataset(2, 6, 5, DType::F64)?;
    let grid_out = model.forward(&x)?;
    // Node (i, j) = (4, 2) sits at t = 4/5, x = 2/4.
    let q = Tensor::new(&[[0.8f64, 0.5]], &Device::Cpu)?;
    let at = model.forward_at(&x, &q)?;
    let expected = grid_out.narrow(2, 4, 1)?.narrow(3, 2, 1)?.flatten_from(1)?;
    let diff = (at.flatten_from(1)? - expected)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert!(diff < 1e-12, "{diff}");
    // Off-grid points give values between, not errors.
    let off = model.forward_at(
        &x,
        &Tensor::new(&[[0.33f64, 0.71], [0.5, 0.5]], &Device::Cpu)?,
    )?;
    assert_eq!(off.dims(), &[2, 2, 2]);
    Ok(())
}

#[test]
fn grid_coordinates_are_row_major_in_unit_square() -> TestResult {
    let c = grid_coordinates(3, 2, DType::F64, &Device::Cpu)?.to_vec2::<f64>()?;
    assert_eq!(
        c,
        vec![
            vec![0.0, 0.0],
            vec![0.0, 1.0],
            vec![0.5, 0.0],
            vec![0.5, 1.0],
            vec![1.0, 0.0],
            vec![1.0, 1.0]
        ]
    );
    Ok(())
}

#[test]
fn wrong_input_grid_is_an_error_and_resolution_is_fixed() -> TestResult {
    let vars = SeededVarMap::new(6);
    let model = DeepOnet::new(&tiny_don(), vars.var_builder(DType::F32, &Device::Cpu))?;
    assert!(!model.accepts_other_resolutions());
    let err = model
        .forward(&Tensor::zeros((1, 1, 7, 5), DType::F32, &Device::Cpu)?)
        .unwrap_err();
    assert!(err.to_string().contains("[B, 1, 6, 5]"), "{err}");
    let cnn_vars = SeededVarMap::new(9);
    let cnn = DeepOnet::new_cnn(
        &tiny_cnn([12, 12]),
        cnn_vars.var_builder(DType::F32, &Device::Cpu),
    )?;
    assert!(!cnn.accepts_other_resolutions());
    Ok(())
}

#[test]
fn invalid_configs_are_rejected() {
    let vb = || SeededVarMap::new(0).var_builder(DType::F32, &Device::Cpu);
    let odd = DeepOnetConfig {
        n_basis: 7,
        ..tiny_don()
    };
    assert!(DeepOnet::new(&odd, vb()).is_err());
    let mismatched = DeepOnetCnnConfig {
        strides: vec![2, 2, 2],
        ..tiny_cnn([12, 12])
    };
    assert!(DeepOnet::new_cnn(&mismatched, vb()).is_err());
    let too_small = tiny_cnn([3, 3]);
    assert!(DeepOnet::new_cnn(&too_small, vb()).is_err());
}

#[test]
fn default_don_cnn_has_the_tuned_parameter_count() -> TestResult {
    // Counted by hand from the plain-PyTorch reference: convs 209,500, branch MLP 317,840,
    // trunk 78,000, two biases.
    let vars = SeededVarMap::new(7);
    let cfg = ModelConfig::DonCnn(DeepOnetCnnConfig::default());
    let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    assert_eq!(model.param_count().numel, 605_342);
    assert_eq!(no_models::ModelConfig::from_model(model.as_ref())?, cfg);
    let out = model.forward(&Tensor::zeros((2, 1, 100, 100), DType::F32, &Device::Cpu)?)?;
    assert_eq!(out.dims(), &[2, 2, 100, 100]);
    Ok(())
}

#[test]
fn default_don_matches_deepxde_sizes_and_json_round_trips() -> TestResult {
    let vars = SeededVarMap::new(8);
    let cfg = ModelConfig::Don(DeepOnetConfig::default());
    let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
    // branch [10000, 256, 256, 256] + trunk [2, 256, 256, 256] + 2 biases.
    let branch = 10_000 * 256 + 256 + 2 * (256 * 256 + 256);
    let trunk = 2 * 256 + 256 + 2 * (256 * 256 + 256);
    assert_eq!(model.param_count().numel, branch + trunk + 2);
    let json = serde_json::to_string(&cfg)?;
    assert!(json.contains("\"model\":\"don\""), "{json}");
    assert_eq!(serde_json::from_str::<ModelConfig>(&json)?, cfg);
    Ok(())
}

#[test]
fn predict_equals_forward_and_follows_weight_updates() -> TestResult {
    // `predict` reuses the trunk evaluated on the grid; it must give forward's values, carry
    // no graph, and notice when a trunk weight changes in place (as an optimizer step does).
    let vars = SeededVarMap::new(3);
    let model = build(
        &ModelConfig::Don(tiny_don()),
        vars.var_builder(DType::F64, &Device::Cpu),
    )?;
    let x = synthetic::dataset(3, 6, 5, DType::F64)?.0;
    let max_diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    };
    let trunk_weight = vars
        .varmap()
        .data()
        .lock()
        .map_err(|_| "poisoned")?
        .get("trunk.0.weight")
        .cloned()
        .ok_or("no trunk.0.weight")?;
    let first = model.predict(&x)?;
    assert!(max_diff(&first, &model.forward(&x)?)? < 1e-14);
    assert!(
        max_diff(&model.predict(&x)?, &first)? == 0.0,
        "cached call differs"
    );
    let grads = first.sum_all()?.backward()?;
    assert!(
        grads.get(trunk_weight.as_tensor()).is_none(),
        "predict kept a graph"
    );
    trunk_weight.set(&(trunk_weight.as_tensor() * 1.5)?)?;
    let after = model.predict(&x)?;
    assert!(max_diff(&after, &model.forward(&x)?)? < 1e-14);
    assert!(
        max_diff(&after, &first)? > 1e-6,
        "the trunk cache missed a weight update"
    );
    Ok(())
}

/// Every value of `t` as its bits (f64 or f32), for bit-identity checks.
fn bits(t: &Tensor) -> candle_core::Result<Vec<u64>> {
    let flat = t.flatten_all()?.to_dtype(DType::F64)?;
    Ok(flat
        .to_vec1::<f64>()?
        .into_iter()
        .map(f64::to_bits)
        .collect())
}

/// The trunk cache of the inference twin: for DON and DON-CNN, at batch 1 and 3, in f32
/// and f64, the twin's forward (the first call fills the cache, the next ones reuse it)
/// gives the trainable model's uncached forward bit for bit (the same kernels on the same
/// values, in the same order), and an in-place weight update (the views share the
/// variables' storage) is seen rather than served stale.
#[test]
fn inference_twin_reuses_the_trunk_and_equals_the_uncached_forward() -> TestResult {
    let configs = [
        (ModelConfig::Don(tiny_don()), [6, 5]),
        (ModelConfig::DonCnn(tiny_cnn([11, 8])), [11, 8]),
    ];
    for dtype in [DType::F32, DType::F64] {
        for (cfg, [nt, nx]) in &configs {
            let vars = SeededVarMap::new(11);
            let model = build(cfg, vars.var_builder(dtype, &Device::Cpu))?;
            let twin = no_models::inference_twin(model.as_ref(), vars.varmap())?;
            for batch in [1, 3] {
                let x = synthetic::dataset(batch, *nt, *nx, dtype)?.0;
                let uncached = bits(&model.forward(&x)?)?;
                for call in 0..3 {
                    assert_eq!(
                        bits(&twin.forward(&x)?)?,
                        uncached,
                        "{} {dtype:?} batch {batch} call {call}",
                        cfg.name()
                    );
                }
                assert_eq!(bits(&twin.predict(&x)?)?, uncached, "{}", cfg.name());
            }
            // An optimiser-like in-place update of the trunk: the cache must not go stale.
            let x = synthetic::dataset(3, *nt, *nx, dtype)?.0;
            let before = bits(&twin.forward(&x)?)?;
            for (name, var) in vars.varmap().data().lock().map_err(|_| "poisoned")?.iter() {
                if name.starts_with("trunk.") {
                    var.set(&(var.as_tensor() * 0.75)?)?;
                }
            }
            let after = bits(&twin.forward(&x)?)?;
            assert_ne!(after, before, "{}: the trunk cache went stale", cfg.name());
            assert_eq!(after, bits(&model.forward(&x)?)?, "{}", cfg.name());
        }
    }
    Ok(())
}

/// Query grids in a row on a model over detached weights: each grid's cached trunk is
/// kept apart (the training grid, another grid, the training grid again, a third grid),
/// and every call equals the trainable model's uncached `forward_at` bit for bit.
#[test]
fn cached_trunks_are_kept_per_query_grid() -> TestResult {
    let vars = SeededVarMap::new(12);
    let cfg = tiny_don();
    let model = DeepOnet::new(&cfg, vars.var_builder(DType::F64, &Device::Cpu))?;
    let detached = no_models::inference::detached_weights(vars.varmap())?;
    let twin = DeepOnet::new(
        &cfg,
        candle_nn::VarBuilder::from_tensors(detached, DType::F64, &Device::Cpu),
    )?;
    let x = synthetic::dataset(3, 6, 5, DType::F64)?.0;
    let training = grid_coordinates(6, 5, DType::F64, &Device::Cpu)?;
    let other = grid_coordinates(9, 4, DType::F64, &Device::Cpu)?;
    let points = Tensor::new(&[[0.33f64, 0.71], [0.5, 0.5], [0.9, 0.1]], &Device::Cpu)?;
    for (i, coords) in [&training, &other, &training, &points, &other, &points]
        .into_iter()
        .enumerate()
    {
        let got = twin.forward_at(&x, coords)?;
        assert_eq!(got.dims()[2], coords.dim(0)?, "call {i}");
        assert_eq!(
            bits(&got)?,
            bits(&model.forward_at(&x, coords)?)?,
            "call {i}"
        );
    }
    Ok(())
}
