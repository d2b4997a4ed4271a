//! Local pieces at the study's size (batch 32, 32 channels, 100 × 100, f32):
//! forward and forward+backward of the finite-difference kernel, DISCO (default
//! one-pixel radius and a 3-pixel radius), CNO's activation (antialiased bicubic
//! ×2 → LeakyReLU → ↓) and the channel MLP (32 → 16 → 32). Also candle's own
//! `conv2d` with the same 3×3 kernel for comparison with the im2col path.
//!
//! `cargo bench --bench layers -- local/`

use candle_core::{DType, Device, Module, Tensor, Var};
use criterion::{criterion_group, Criterion};
use no_layers::init::SeededVarMap;
use no_layers::layers::cno_activation::{CnoActivation, CnoActivationConfig};
use no_layers::layers::local::conv::{conv2d_same, PaddingMode};
use no_layers::layers::local::disco::{Disco, DiscoConfig};
use no_layers::layers::local::finite_difference::{FiniteDifference, FiniteDifferenceConfig};
use no_layers::layers::mlp::{ChannelMlp, ChannelMlpConfig};
use std::hint::black_box;
use std::time::Duration;

const B: usize = 32;
const C: usize = 32;
const N: usize = 100;

fn input() -> candle_core::Result<Var> {
    Var::from_tensor(&Tensor::randn(0f32, 1.0, (B, C, N, N), &Device::Cpu)?)
}

/// Benchmarks `f` forward only and forward + backward of `sum(f(x))`.
fn bench_pair(
    c: &mut Criterion,
    name: &str,
    x: &Var,
    f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>,
) {
    let mut group = c.benchmark_group("local");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(8));
    group.bench_function(format!("{name}/forward"), |b| {
        b.iter(|| black_box(f(x.as_tensor()).expect("forward")))
    });
    group.bench_function(format!("{name}/forward_backward"), |b| {
        b.iter(|| {
            let y = f(x.as_tensor()).expect("forward");
            black_box(y.sum_all().and_then(|s| s.backward()).expect("backward"))
        })
    });
    group.finish();
}

fn local(c: &mut Criterion) {
    let x = input().expect("input");
    let vars = SeededVarMap::new(0);
    let vb = vars.var_builder(DType::F32, &Device::Cpu);

    let fd = FiniteDifference::new(&FiniteDifferenceConfig::local_no(C, N, true), vb.pp("fd"))
        .expect("fd");
    bench_pair(c, "finite_difference_3x3", &x, &|t| fd.forward(t));

    let w = Var::from_tensor(&Tensor::randn(0f32, 0.1, (C, C, 3, 3), &Device::Cpu).expect("w"))
        .expect("w");
    bench_pair(c, "im2col_conv3x3_zeros", &x, &|t| {
        Ok(conv2d_same(t, w.as_tensor(), PaddingMode::Zeros, 1)?)
    });
    bench_pair(c, "candle_conv2d_3x3", &x, &|t| {
        t.conv2d(w.as_tensor(), 1, 1, 1, 1)
    });

    let cfg = DiscoConfig {
        in_channels: C,
        out_channels: C,
        default_in_shape: [N, N],
        ..Default::default()
    };
    let disco = Disco::new(&cfg, vb.pp("disco")).expect("disco");
    bench_pair(c, "disco_default_radius", &x, &|t| disco.forward(t));
    let cfg3 = DiscoConfig {
        radius_cutoff: Some(3.0 * 2.0 / N as f64),
        ..cfg
    };
    let disco3 = Disco::new(&cfg3, vb.pp("disco3")).expect("disco3");
    bench_pair(c, "disco_radius_3px", &x, &|t| disco3.forward(t));

    let act = CnoActivation::new(&CnoActivationConfig::default()).expect("cno act");
    bench_pair(c, "cno_activation", &x, &|t| act.forward(t));

    let mlp =
        ChannelMlp::new(&ChannelMlpConfig::with_expansion(C, 0.5), vb.pp("mlp")).expect("mlp");
    bench_pair(c, "channel_mlp", &x, &|t| mlp.forward(t));
}

criterion_group!(benches, local);
