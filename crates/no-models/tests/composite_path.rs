//! All seven models on the composite path: the CPU stand-in for a GPU.
//!
//! Each model is built once (small config, f64) on a non-square grid whose sides have
//! different parity (13 × 10: the grid where candle's own strided `conv2d` backward fails),
//! then run forward and backward twice on one seeded input: as it dispatches on the CPU
//! (fused kernels) and inside [`no_layers::ops::composite_only`], which takes the
//! composite candle forms a GPU runs. The outputs and the gradient of every variable (and
//! of the input) must agree to [`TOL`] of the largest value compared.
//!
//! The loss is `Σ r·model(x)` with seeded random weights `r`, so every output entry
//! feeds every gradient with a different weight.

mod synthetic;

use candle_core::{DType, Device, Tensor, Var};
use no_layers::init::SeededVarMap;
use no_layers::ops::composite_only;
use no_models::causal::CausalConfig;
use no_models::cno::CnoConfig;
use no_models::deeponet::{DeepOnetCnnConfig, DeepOnetConfig};
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet, PodDeepOnetConfig};
use no_models::{build, ModelConfig, NeuralOperator};

type R<T> = Result<T, Box<dyn std::error::Error>>;

/// Sides of different parity.
const GRID: [usize; 2] = [13, 10];
/// Relative tolerance in f64: the two paths differ by rounding only (sums in another
/// order, the CNO activation's axes resized in the other order).
const TOL: f64 = 1e-10;

/// Small configs of the seven architectures and the causal operator on [`GRID`].
fn configs() -> Vec<ModelConfig> {
    let fno = FnoConfig {
        n_modes: vec![4, 4],
        hidden_channels: 6,
        n_layers: 2,
        ..FnoConfig::default()
    };
    vec![
        ModelConfig::Cno(CnoConfig {
            n_layers: 2,
            n_res: 1,
            n_res_neck: 1,
            channel_multiplier: 4,
            latent_lift_proj_dim: 8,
            ..Default::default()
        }),
        ModelConfig::Don(DeepOnetConfig {
            grid: GRID,
            branch_hidden: vec![8],
            trunk_hidden: vec![8],
            n_basis: 6,
            ..Default::default()
        }),
        // Stride 2, kernel 3, no padding: (13 − 3) % 2 ≠ (10 − 3) % 2.
        ModelConfig::DonCnn(DeepOnetCnnConfig {
            grid: GRID,
            conv_channels: vec![3, 4],
            branch_hidden: vec![6, 6],
            trunk_hidden: vec![6],
            n_basis: 6,
            ..Default::default()
        }),
        ModelConfig::PodDon(PodDeepOnetConfig {
            grid: GRID,
            branch_hidden: vec![8],
            criterion: PodCriterion::Count(3),
            ..Default::default()
        }),
        ModelConfig::Fno(fno.clone()),
        ModelConfig::Tfno(fno),
        ModelConfig::LocalNo(LocalNoConfig {
            n_modes: vec![4, 4],
            hidden_channels: 4,
            n_layers: 2,
            default_in_shape: GRID,
            ..LocalNoConfig::default()
        }),
        // Dilations 1 to 16: the last blocks reach past both axes (the reflection folds
        // several times, the oldest time taps read only zeros).
        ModelConfig::Causal(CausalConfig {
            hidden_channels: 4,
            n_layers: 5,
            dilation_cycle: 5,
            ..CausalConfig::default()
        }),
    ]
}

/// The model of `cfg` with f64 variables (POD-DeepONet's basis fitted on seeded outputs).
fn built(cfg: &ModelConfig, vars: &SeededVarMap) -> R<Box<dyn NeuralOperator>> {
    let vb = vars.var_builder(DType::F64, &Device::Cpu);
    Ok(match cfg {
        ModelConfig::PodDon(pod) => {
            let (_, y) = synthetic::dataset(10, GRID[0], GRID[1], DType::F64)?;
            let basis = PodBasis::fit(&y, PodCriterion::Count(3))?;
            Box::new(PodDeepOnet::from_basis(pod, &basis, vb)?)
        }
        _ => build(cfg, vb)?,
    })
}

/// The output, then the gradients of the input and of every variable (sorted by name;
/// `None` where a variable gets none).
fn forward_backward(
    model: &dyn NeuralOperator,
    vars: &[(String, Var)],
    x: &Var,
    r: &Tensor,
) -> R<Vec<Option<Tensor>>> {
    let y = model.forward_t(x.as_tensor(), true)?;
    let grads = (&y * r)?.sum_all()?.backward()?;
    let mut out = vec![Some(y.detach()), grads.get(x.as_tensor()).cloned()];
    out.extend(vars.iter().map(|(_, v)| grads.get(v.as_tensor()).cloned()));
    Ok(out)
}

#[test]
fn every_model_agrees_with_its_composite_path() -> R<()> {
    for cfg in configs() {
        let name = cfg.name();
        let vars = SeededVarMap::new(5);
        let model = built(&cfg, &vars)?;
        let mut named: Vec<(String, Var)> = vars
            .varmap()
            .data()
            .lock()
            .map_err(|e| e.to_string())?
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let x = Var::from_tensor(&synthetic::dataset(2, GRID[0], GRID[1], DType::F64)?.0)?;
        let y_shape = model.forward(x.as_tensor())?.dims().to_vec();
        let r = no_layers::gradcheck::random_like(
            &Tensor::zeros(y_shape, DType::F64, &Device::Cpu)?,
            11,
        )?;
        let fused = forward_backward(model.as_ref(), &named, &x, &r)?;
        let composite = {
            let _guard = composite_only();
            forward_backward(model.as_ref(), &named, &x, &r)?
        };
        let labels = ["output".to_string(), "input gradient".to_string()]
            .into_iter()
            .chain(named.iter().map(|(k, _)| format!("gradient of {k}")));
        let mut compared = 0;
        for ((label, a), b) in labels.zip(&fused).zip(&composite) {
            let (a, b) = match (a, b) {
                (Some(a), Some(b)) => (a, b),
                (None, None) => continue,
                _ => panic!("{name}: {label} exists on one path only"),
            };
            assert_eq!(a.dims(), b.dims(), "{name}: {label} shapes");
            let scale = a
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?
                .max(f64::MIN_POSITIVE);
            let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(
                diff <= TOL * scale,
                "{name}: {label} differs by {diff:e} (largest value {scale:e})"
            );
            compared += 1;
        }
        assert!(
            compared > named.len() / 2,
            "{name}: too few gradients compared"
        );
    }
    Ok(())
}
