//! POD-DeepONet: the basis (orthonormal, energy, thread-count independence, training split
//! only) and the model (gradients, overfitting, rebuilding from stored tensors).

mod quick;
mod synthetic;

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use no_layers::gradcheck::{check_gradients, GradCheckConfig};
use no_layers::init::SeededVarMap;
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet, PodDeepOnetConfig};
use no_models::{build, ModelConfig, NeuralOperator, NormalizerKind, Normalizers};
use std::collections::HashMap;

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Snapshots with a known spread of energies: random combinations of smooth patterns.
fn outputs(n: usize, nt: usize, nx: usize) -> candle_core::Result<Tensor> {
    let (_, y) = synthetic::dataset(n, nt, nx, DType::F64)?;
    Ok(y)
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn column(f: &no_models::pod::FieldBasis, j: usize) -> Vec<f64> {
    (0..f.mean.len()).map(|i| f.modes[i * f.rank + j]).collect()
}

#[test]
fn basis_is_orthonormal_and_reaches_the_stated_energy() -> TestResult {
    let y = outputs(20, 12, 10)?;
    let energy = 0.99;
    let basis = PodBasis::fit(&y, PodCriterion::Energy(energy))?;
    let data = y.reshape((20, 2, 120))?.to_vec3::<f64>()?;
    for (k, f) in basis.fields.iter().enumerate() {
        assert!(f.rank >= 1 && f.rank < 20, "rank {}", f.rank);
        for a in 0..f.rank {
            for b in 0..f.rank {
                let d = dot(&column(f, a), &column(f, b));
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!(
                    (d - expected).abs() < 1e-10,
                    "field {k}: <φ{a}, φ{b}> = {d}"
                );
            }
        }
        // Projection of the centred training outputs keeps at least `energy` of their energy,
        // and one mode fewer would not.
        let mut kept = 0.0;
        let mut total = 0.0;
        let mut last_mode = 0.0;
        for s in &data {
            let centred: Vec<f64> = s[k].iter().zip(&f.mean).map(|(v, m)| v - m).collect();
            total += dot(&centred, &centred);
            for j in 0..f.rank {
                let c = dot(&centred, &column(f, j));
                kept += c * c;
                if j + 1 == f.rank {
                    last_mode += c * c;
                }
            }
        }
        assert!(
            kept / total >= energy - 1e-12,
            "field {k}: captured {}",
            kept / total
        );
        assert!(
            (kept - last_mode) / total < energy,
            "field {k}: one mode fewer suffices"
        );
        assert!((f.energy - kept / total).abs() < 1e-9);
    }
    Ok(())
}

#[test]
fn basis_is_identical_whatever_the_thread_count() -> TestResult {
    let y = outputs(24, 12, 10)?;
    let fit_with = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .map(|pool| pool.install(|| PodBasis::fit(&y, PodCriterion::Count(6))))
    };
    let one = fit_with(1)??;
    let two = fit_with(2)??;
    assert_eq!(one, two);
    Ok(())
}

#[test]
fn count_criterion_is_capped_by_the_rank_and_bad_inputs_are_errors() -> TestResult {
    let y = outputs(5, 6, 5)?;
    let basis = PodBasis::fit(&y, PodCriterion::Count(50))?;
    // Five centred snapshots span at most four directions.
    assert!(basis.ranks().iter().all(|&r| r <= 4), "{:?}", basis.ranks());
    assert!(PodBasis::fit(&y, PodCriterion::Energy(1.5)).is_err());
    assert!(PodBasis::fit(&y, PodCriterion::Count(0)).is_err());
    assert!(PodBasis::fit(&y.narrow(0, 0, 1)?, PodCriterion::Count(2)).is_err());
    let constant = Tensor::ones((4, 2, 3, 3), DType::F64, &Device::Cpu)?;
    assert!(PodBasis::fit(&constant, PodCriterion::Count(2)).is_err());
    Ok(())
}

fn tiny_cfg() -> PodDeepOnetConfig {
    PodDeepOnetConfig {
        grid: [6, 5],
        branch_hidden: vec![8],
        criterion: PodCriterion::Count(3),
        ..Default::default()
    }
}

#[test]
fn pod_don_gradients_match_finite_differences() -> TestResult {
    let basis = PodBasis::fit(&outputs(10, 6, 5)?, PodCriterion::Count(3))?;
    let vars = SeededVarMap::new(1);
    let model = PodDeepOnet::from_basis(
        &tiny_cfg(),
        &basis,
        vars.var_builder(DType::F64, &Device::Cpu),
    )?;
    // Batch 1 takes the matrix-vector kernel, a batch the library product (both inside
    // the fused dense layer): both checked.
    for batch in [1, 2] {
        let x = Var::from_tensor(&synthetic::dataset(batch, 6, 5, DType::F64)?.0)?;
        // The trainable variables only: the basis and mean are detached buffers.
        let mut all: Vec<Var> = vars
            .varmap()
            .data()
            .lock()
            .map_err(|e| e.to_string())?
            .iter()
            .filter(|(name, _)| !name.starts_with("pod."))
            .map(|(_, v)| v.clone())
            .collect();
        all.push(x.clone());
        let report = check_gradients(
            || model.forward_t(x.as_tensor(), true),
            &all,
            &GradCheckConfig {
                max_entries_per_var: 12,
                ..Default::default()
            },
        )?;
        assert!(report.passed(), "batch {batch}: {report:?}");
    }
    Ok(())
}

#[test]
fn one_sample_gives_the_fields_it_gets_in_a_batch() -> TestResult {
    // Batch 1 and larger batches take different products (the matrix-vector kernel, the
    // library's product): the same fields to rounding, in f32 as the models run.
    let basis = PodBasis::fit(&outputs(10, 6, 5)?, PodCriterion::Count(3))?;
    let vars = SeededVarMap::new(2);
    let model = PodDeepOnet::from_basis(
        &tiny_cfg(),
        &basis,
        vars.var_builder(DType::F32, &Device::Cpu),
    )?;
    let x = synthetic::dataset(3, 6, 5, DType::F32)?.0;
    let batch = model.forward_t(&x, false)?;
    for i in 0..3 {
        let one = model.forward_t(&x.narrow(0, i, 1)?, false)?;
        let diff = (one - batch.narrow(0, i, 1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        let size = batch.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(
            diff <= 1e-5 * size,
            "sample {i}: {diff} (fields up to {size})"
        );
    }
    Ok(())
}

/// As `examples/train.rs`: the basis is fitted on the normalised training outputs, the
/// Trainer then trains the branch only. With 8 samples the centred outputs have rank 7 per
/// field, so the basis reconstructs them to the stated energy and the branch has to learn
/// 8 coefficient vectors: a reachable target, which checks the wiring (normaliser, basis,
/// mean, detached buffers) through the Trainer.
#[test]
fn training_does_not_change_the_basis_and_overfits_eight_quick_samples() -> TestResult {
    const MAX_STEPS: usize = 300;
    let data = quick::samples()?;
    let norm = Normalizers::fit(NormalizerKind::Gaussian, &data)?;
    let basis = PodBasis::fit(
        &norm.output.encode(data.outputs())?,
        PodCriterion::Energy(0.9999),
    )?;
    let cfg = PodDeepOnetConfig {
        grid: quick::GRID,
        branch_hidden: vec![64, 64],
        ..Default::default()
    };
    let vars = SeededVarMap::new(2);
    let vb = vars.var_builder(DType::F32, &Device::Cpu);
    let model = PodDeepOnet::from_basis(&cfg, &basis, vb.clone())?;
    let p = quick::GRID[0] * quick::GRID[1];
    let basis0 = || vb.pp("pod").get((p, basis.fields[0].rank), "basis0");
    let before = basis0()?.to_vec2::<f32>()?;
    let outcome = quick::overfit(
        Box::new(model),
        vars,
        &data,
        1e-3,
        MAX_STEPS,
        NormalizerKind::Gaussian,
    )?;
    quick::assert_overfits("pod_don", outcome, MAX_STEPS);
    assert_eq!(before, basis0()?.to_vec2::<f32>()?);
    Ok(())
}

#[test]
fn rebuilds_from_stored_tensors_and_refuses_a_missing_basis() -> TestResult {
    let basis = PodBasis::fit(&outputs(10, 6, 5)?, PodCriterion::Count(3))?;
    let vars = SeededVarMap::new(3);
    let model = PodDeepOnet::from_basis(
        &tiny_cfg(),
        &basis,
        vars.var_builder(DType::F64, &Device::Cpu),
    )?;
    let cfg = no_models::ModelConfig::from_model(&model)?;
    let ModelConfig::PodDon(pc) = &cfg else {
        panic!("{cfg:?}")
    };
    assert_eq!(pc.modes, basis.ranks());
    // Everything the checkpoint would hold: weights, basis and mean.
    let stored: HashMap<String, Tensor> = vars
        .varmap()
        .data()
        .lock()
        .map_err(|e| e.to_string())?
        .iter()
        .map(|(k, v)| (k.clone(), v.as_tensor().copy().expect("copy")))
        .collect();
    assert!(stored.contains_key("pod.mean") && stored.contains_key("pod.basis1"));
    let rebuilt = build(
        &cfg,
        VarBuilder::from_tensors(stored, DType::F64, &Device::Cpu),
    )?;
    let (x, _) = synthetic::dataset(2, 6, 5, DType::F64)?;
    let d = (model.forward(&x)? - rebuilt.forward(&x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f64>()?;
    assert_eq!(d, 0.0);
    // Weights that lack the basis are an error; a config without modes too.
    let mut partial = HashMap::new();
    partial.insert(
        "branch.0.weight".to_string(),
        Tensor::zeros((8, 30), DType::F64, &Device::Cpu)?,
    );
    let err = build(
        &cfg,
        VarBuilder::from_tensors(partial, DType::F64, &Device::Cpu),
    )
    .err()
    .map(|e| e.to_string())
    .unwrap_or_default();
    assert!(err.contains("pod.mean"), "{err}");
    let empty = SeededVarMap::new(4).var_builder(DType::F64, &Device::Cpu);
    let err = build(&ModelConfig::PodDon(tiny_cfg()), empty)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(err.contains("training outputs"), "{err}");
    assert!(!rebuilt.accepts_other_resolutions());
    Ok(())
}

#[test]
fn checkpoint_round_trip_keeps_the_basis() -> TestResult {
    let basis = PodBasis::fit(&outputs(10, 6, 5)?, PodCriterion::Count(3))?;
    let vars = SeededVarMap::new(5);
    let model = PodDeepOnet::from_basis(
        &tiny_cfg(),
        &basis,
        vars.var_builder(DType::F32, &Device::Cpu),
    )?;
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("pod.safetensors");
    no_models::checkpoint::save_model(&path, &model, vars.varmap())?;
    let loaded = no_models::checkpoint::load(&path, &Device::Cpu)?;
    let (x, _) = synthetic::dataset(2, 6, 5, DType::F32)?;
    let d = (model.forward(&x)? - loaded.model.forward(&x)?)?
        .abs()?
        .max_all()?
        .to_scalar::<f32>()?;
    assert_eq!(d, 0.0);
    Ok(())
}

#[test]
fn basis_from_mismatched_grid_is_rejected() -> TestResult {
    let basis = PodBasis::fit(&outputs(6, 4, 4)?, PodCriterion::Count(2))?;
    let vb = SeededVarMap::new(0).var_builder(DType::F32, &Device::Cpu);
    assert!(PodDeepOnet::from_basis(&tiny_cfg(), &basis, vb).is_err());
    Ok(())
}

/// POD-DeepONet has no trunk to evaluate (its basis is a stored tensor, read as it is), so
/// its inference twin does no work a trainable forward would skip: at batch 1 and 3, twice
/// in a row, the twin's forward and `predict` equal the trainable model's forward bit for
/// bit.
#[test]
fn inference_twin_equals_the_forward_at_batch_one_and_three() -> TestResult {
    let basis = PodBasis::fit(&outputs(10, 6, 5)?, PodCriterion::Count(3))?;
    let vars = SeededVarMap::new(4);
    let model = PodDeepOnet::from_basis(
        &tiny_cfg(),
        &basis,
        vars.var_builder(DType::F64, &Device::Cpu),
    )?;
    let twin = no_models::inference_twin(&model, vars.varmap())?;
    let bits = |t: &Tensor| -> candle_core::Result<Vec<u64>> {
        Ok(t.flatten_all()?
            .to_vec1::<f64>()?
            .into_iter()
            .map(f64::to_bits)
            .collect())
    };
    for batch in [1, 3] {
        let x = synthetic::dataset(batch, 6, 5, DType::F64)?.0;
        let want = bits(&model.forward(&x)?)?;
        for _ in 0..2 {
            assert_eq!(bits(&twin.forward(&x)?)?, want, "batch {batch}");
            assert_eq!(bits(&twin.predict(&x)?)?, want, "batch {batch}");
        }
    }
    Ok(())
}
