//! Spectral convolution at the study's size: batch 32, 32 -> 32 channels, 100 x 100
//! grid, 16 x 16 modes, f32, CPU. Forward and forward+backward (mean of squares), for
//! the dense weight (DFT-by-matmul and the realfft custom-op path) and Tucker rank 0.1
//! (TFNO's default), factorized and reconstructed.
//!
//! `RAYON_NUM_THREADS=2 cargo bench --bench layers -- spectral`

use candle_core::{DType, Device, Module, Tensor, Var};
use criterion::{criterion_group, Criterion};
use no_layers::init::SeededVarMap;
use no_layers::layers::spectral::conv::{
    Factorization, SpectralConv, SpectralConvConfig, SpectralTransform, TuckerImplementation,
};
use no_layers::layers::spectral::tucker::TuckerRank;
use std::hint::black_box;

const B: usize = 32;
const C: usize = 32;
const N: usize = 100;
const MODES: usize = 16;

fn variants() -> Vec<(&'static str, SpectralConvConfig)> {
    let base = SpectralConvConfig {
        in_channels: C,
        out_channels: C,
        n_modes: vec![MODES, MODES],
        ..Default::default()
    };
    let tucker = |implementation| SpectralConvConfig {
        factorization: Some(Factorization::Tucker),
        rank: TuckerRank::Fraction(0.1),
        implementation,
        ..base.clone()
    };
    vec![
        ("dense_matmul", base.clone()),
        (
            "dense_fft",
            SpectralConvConfig {
                transform: SpectralTransform::Fft,
                ..base.clone()
            },
        ),
        (
            "tucker_factorized",
            tucker(TuckerImplementation::Factorized),
        ),
        (
            "tucker_reconstructed",
            tucker(TuckerImplementation::Reconstructed),
        ),
    ]
}

fn spectral(c: &mut Criterion) {
    let x = Tensor::randn(0f32, 1.0, (B, C, N, N), &Device::Cpu)
        .and_then(|t| Var::from_tensor(&t))
        .expect("input");
    let mut group = c.benchmark_group("spectral_conv_b32_c32_100x100_m16");
    group.sample_size(10);
    for (name, cfg) in variants() {
        let vars = SeededVarMap::new(0);
        let layer =
            SpectralConv::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu)).expect("layer");
        group.bench_function(format!("{name}/forward"), |bch| {
            bch.iter(|| black_box(layer.forward(x.as_tensor()).expect("forward")))
        });
        group.bench_function(format!("{name}/forward_backward"), |bch| {
            bch.iter(|| {
                let y = layer.forward(x.as_tensor()).expect("forward");
                black_box(
                    y.sqr()
                        .and_then(|s| s.mean_all())
                        .and_then(|l| l.backward())
                        .expect("backward"),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, spectral);
