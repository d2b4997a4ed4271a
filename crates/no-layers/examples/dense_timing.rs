//! Wall-clock timing of the fused dense layer's forward (`x·Wᵀ + b`, rows layout) at the
//! DeepONet shapes, the products the row-dot kernel takes on CPUs where it is preferred.
//!
//! ```text
//! cargo build --release -p no-layers --example dense_timing
//! NO_LAYERS_ROW_DOT=on  target/release/examples/dense_timing
//! NO_LAYERS_ROW_DOT=off target/release/examples/dense_timing
//! ```
//! `NO_LAYERS_ROW_DOT` picks the hand-written kernel (`on`) or the `gemm` crate (`off`) for
//! the same binary; unset, the library's default for this CPU. Prints the fastest of 30
//! runs of each shape on one thread and on the default rayon pool, in ms and GFLOP/s.

use candle_core::{Device, Result, Tensor};
use no_layers::ops::dense::{dense, DenseActivation, DenseLayout};
use std::time::Instant;

/// The fastest of thirty runs of `f`, in milliseconds.
fn fastest_ms(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::MAX;
    f()?;
    for _ in 0..30 {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best * 1e3)
}

fn main() -> Result<()> {
    let dev = Device::Cpu;
    let one = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .map_err(|e| candle_core::Error::Msg(format!("no one-thread pool: {e}")))?;
    println!(
        "NO_LAYERS_ROW_DOT={}",
        std::env::var("NO_LAYERS_ROW_DOT").unwrap_or_else(|_| "(unset)".into())
    );
    // (rows, in, out): DON's trunk hidden layer on 100 × 100 points, DON-CNN's, DON's
    // branch hidden layer at batch 1 and 32, the DeepONets' first branch layer on a
    // 100 × 100 input at batch 1 and 32, DON-CNN's last branch layer (80 → 800 basis
    // coefficients) and POD-DON's basis product (64 modes → 10,000 points), at batch 1
    // and 32.
    for (n, f, o) in [
        (10_000, 256, 256),
        (10_000, 80, 80),
        (1, 256, 256),
        (32, 256, 256),
        (1, 10_000, 256),
        (32, 10_000, 256),
        (1, 80, 800),
        (32, 80, 800),
        (1, 64, 10_000),
        (32, 64, 10_000),
    ] {
        let x = Tensor::randn(0f32, 1.0, (n, f), &dev)?;
        let w = Tensor::randn(0f32, 0.1, (o, f), &dev)?;
        let b = Tensor::zeros(o, candle_core::DType::F32, &dev)?;
        let mut run = || dense(&x, &w, &b, DenseActivation::Identity, DenseLayout::Rows).map(drop);
        let single = one.install(|| fastest_ms(&mut run))?;
        let pool = fastest_ms(&mut run)?;
        let mflop = 2.0 * (n * f * o) as f64 / 1e6;
        println!(
            "{n} × {f} → {o}: 1 thread {single:.3} ms ({:.0} GFLOP/s), {} threads {pool:.3} ms ({:.0} GFLOP/s)",
            mflop / single,
            rayon::current_num_threads(),
            mflop / pool
        );
    }
    Ok(())
}
