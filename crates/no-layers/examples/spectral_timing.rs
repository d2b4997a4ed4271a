//! Wall-clock timing of `SpectralConv` (forward, and forward+backward) for the
//! side-by-side comparison with neuraloperator (`benches/python/compare_spectral.py`).
//!
//! ```text
//! RAYON_NUM_THREADS=2 cargo run --release -p no-layers --example spectral_timing -- \
//!     [batch=32] [channels=32] [grid=100] [modes=16] [reps=20]
//! ```
//! Prints one JSON object per variant: median and minimum milliseconds.

use candle_core::{DType, Device, Module, Tensor, Var};
use no_layers::init::SeededVarMap;
use no_layers::layers::spectral::conv::{
    Factorization, SpectralConv, SpectralConvConfig, SpectralTransform, TuckerImplementation,
};
use no_layers::layers::spectral::tucker::TuckerRank;
use std::time::Instant;

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

fn stats(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn time(
    reps: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> candle_core::Result<(f64, f64)> {
    for _ in 0..3 {
        f()?;
    }
    let mut ms = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        f()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(stats(ms))
}

fn main() -> candle_core::Result<()> {
    let (b, c, n, m, reps) = (arg(1, 32), arg(2, 32), arg(3, 100), arg(4, 16), arg(5, 20));
    let base = SpectralConvConfig {
        in_channels: c,
        out_channels: c,
        n_modes: vec![m, m],
        ..Default::default()
    };
    let tucker = |implementation| SpectralConvConfig {
        factorization: Some(Factorization::Tucker),
        rank: TuckerRank::Fraction(0.1),
        implementation,
        ..base.clone()
    };
    let variants = [
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
    ];
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, c, n, n), &Device::Cpu)?)?;
    for (name, cfg) in variants {
        let vars = SeededVarMap::new(0);
        let layer = SpectralConv::new(&cfg, vars.var_builder(DType::F32, &Device::Cpu))?;
        let (fwd, fwd_min) = time(reps, || layer.forward(x.as_tensor()).map(|_| ()))?;
        let (step, step_min) = time(reps, || {
            let y = layer.forward(x.as_tensor())?;
            y.sqr()?.mean_all()?.backward().map(|_| ())
        })?;
        println!(
            "{{\"variant\": \"{name}\", \"batch\": {b}, \"channels\": {c}, \"grid\": {n}, \"modes\": {m}, \
             \"forward_ms\": {fwd:.3}, \"forward_min_ms\": {fwd_min:.3}, \
             \"forward_backward_ms\": {step:.3}, \"forward_backward_min_ms\": {step_min:.3}}}"
        );
    }
    Ok(())
}
