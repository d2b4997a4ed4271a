//! FNO, TFNO and LocalNO at 100 × 100 (input [B, 1, 100, 100], output [B, 2, 100, 100]),
//! f32 on the CPU, neuraloperator's reference configuration (n_modes (16, 16), hidden 32,
//! 4 layers; LocalNO with default_in_shape (100, 100)): forward at batch 1 and 32 (with the
//! autograd graph, `forward`, and without it, `infer`, through the inference twin), and
//! one training step at batch 32 (forward + MSE + backward + AdamW, the trainer's own
//! AdamW), the same work `benches/python/compare_neuralop.py` times for neuraloperator.

use candle_core::{DType, Device, Tensor};
use criterion::{criterion_group, BenchmarkId, Criterion};
use no_layers::init::SeededVarMap;
use no_models::fno::FnoConfig;
use no_models::local_no::LocalNoConfig;
use no_models::train::{mse_loss, AdamW, AdamWParams};
use no_models::{build, ModelConfig};
use std::hint::black_box;
use std::time::Duration;

const N: usize = 100;

fn input(b: usize, c: usize, seed: u64) -> Tensor {
    SeededVarMap::new(seed)
        .var_builder(DType::F32, &Device::Cpu)
        .get_with_hints(
            (b, c, N, N),
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

fn bench_fourier(c: &mut Criterion) {
    let mut group = c.benchmark_group("models_fourier");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(2));
    let x1 = input(1, 1, 2);
    let x32 = input(32, 1, 3);
    let y32 = input(32, 2, 4);
    let only = std::env::var("FOURIER_ONLY").ok();
    for (name, cfg) in [
        ("fno", ModelConfig::Fno(FnoConfig::default())),
        ("tfno", ModelConfig::Tfno(FnoConfig::default())),
        ("local_no", ModelConfig::LocalNo(LocalNoConfig::default())),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        let vars = SeededVarMap::new(0);
        let model = build(&cfg, vars.var_builder(DType::F32, &Device::Cpu)).expect("model");
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

criterion_group!(benches, bench_fourier);
