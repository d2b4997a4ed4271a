//! CNO, DeepONet, DeepONet-CNN and POD-DeepONet at 100 × 100 (input [B, 1, 100, 100],
//! output [B, 2, 100, 100]), f32 on the CPU: forward at batch 1 and 32, and one training
//! step at batch 32 (forward + MSE + backward + AdamW, the trainer's own), the same work
//! `benches/python/compare_cno_deeponet.py` times for the PyTorch anchors. The forward is
//! timed with the autograd graph (`forward`) and without it (`infer`, the inference twin:
//! the anchor's `torch.no_grad()` work). For the two DeepONets also `predict` (inference
//! reusing the trunk evaluated on the grid).

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, BenchmarkId, Criterion};
use no_layers::init::SeededVarMap;
use no_models::cno::CnoConfig;
use no_models::deeponet::{DeepOnetCnnConfig, DeepOnetConfig};
use no_models::pod::{PodBasis, PodCriterion, PodDeepOnet, PodDeepOnetConfig};
use no_models::train::{mse_loss, AdamW, AdamWParams};
use no_models::{build, ModelConfig, NeuralOperator};
use std::hint::black_box;
use std::time::Duration;

const N: usize = 100;

fn input(b: usize, seed: u64) -> Tensor {
    let vars = SeededVarMap::new(seed);
    vars.var_builder(DType::F32, &Device::Cpu)
        .get_with_hints(
            (b, 1, N, N),
            "x",
            candle_nn::init::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )
        .expect("random input")
        // A plain tensor, not a variable: a tracked input would make every forward build
        // (and keep alive) an autograd graph, which the anchor's `torch.no_grad()` does not.
        .detach()
}

/// The four models with their default (study) configurations; POD-DON with 64 modes per
/// field fitted on 128 random training outputs.
fn models() -> Vec<(&'static str, Box<dyn NeuralOperator>, SeededVarMap)> {
    let dev = Device::Cpu;
    let mut out: Vec<(&'static str, Box<dyn NeuralOperator>, SeededVarMap)> = Vec::new();
    for (name, cfg) in [
        ("cno", ModelConfig::Cno(CnoConfig::default())),
        ("don", ModelConfig::Don(DeepOnetConfig::default())),
        ("don_cnn", ModelConfig::DonCnn(DeepOnetCnnConfig::default())),
    ] {
        let vars = SeededVarMap::new(0);
        let model = build(&cfg, vars.var_builder(DType::F32, &dev)).expect("model");
        out.push((name, model, vars));
    }
    let train_y = SeededVarMap::new(1)
        .var_builder(DType::F32, &dev)
        .get_with_hints(
            (128, 2, N, N),
            "y",
            candle_nn::init::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        )
        .expect("outputs")
        .detach();
    let basis = PodBasis::fit(&train_y, PodCriterion::Count(64)).expect("POD basis");
    let vars = SeededVarMap::new(0);
    let pod = PodDeepOnet::from_basis(
        &PodDeepOnetConfig::default(),
        &basis,
        vars.var_builder(DType::F32, &dev),
    )
    .expect("POD-DON");
    out.push(("pod_don", Box::new(pod), vars));
    out
}

fn bench_others(c: &mut Criterion) {
    let mut group = c.benchmark_group("models_others");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    let x1 = input(1, 2);
    let x32 = input(32, 3);
    let y32 = input(32, 4).repeat((1, 2, 1, 1)).expect("target");
    for (name, model, vars) in models() {
        let twin = no_models::inference_twin(model.as_ref(), vars.varmap()).expect("twin");
        for (b, x) in [(1, &x1), (32, &x32)] {
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/forward"), b),
                x,
                |bench, x| bench.iter(|| black_box(model.forward(x).expect("forward"))),
            );
            // The same forward without an autograd graph (the inference twin), the work
            // the anchor does under `torch.no_grad()`.
            group.bench_with_input(
                BenchmarkId::new(format!("{name}/infer"), b),
                x,
                |bench, x| bench.iter(|| black_box(twin.forward(x).expect("infer"))),
            );
            // DeepONets reuse their trunk on the grid in `predict` (inference); the anchor
            // recomputes it, which is what `forward` times.
            if name.starts_with("don") {
                group.bench_with_input(
                    BenchmarkId::new(format!("{name}/predict"), b),
                    x,
                    |bench, x| bench.iter(|| black_box(model.predict(x).expect("predict"))),
                );
            }
        }
        let mut opt = AdamW::new(vars.varmap(), AdamWParams::default()).expect("AdamW");
        group.bench_function(
            BenchmarkId::new(format!("{name}/train_step"), 32),
            |bench| {
                bench.iter(|| {
                    let pred = model.forward_t(&x32, true).expect("forward");
                    let loss = mse_loss(&pred, &y32).expect("loss");
                    opt.backward_step(&loss).expect("step");
                    black_box(loss)
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, bench_others);
