//! Wall-clock timing of the fused CPU `conv2d` (a 32 → 32-channel 3×3 convolution with
//! padding 1 on 100 × 100 planes, LocalNO's merged local kernel): forward, weight gradient
//! and input gradient separately.
//!
//! ```text
//! cargo run --release -p no-layers --example conv_timing -- [batch=32]
//! ```
//! Prints the fastest of 6 runs of each, in ms and GFLOP/s (the gradient figures include
//! the `sum` that seeds the backward, and subtract the forward).

use candle_core::{Device, Result, Tensor, Var};
use no_layers::ops::conv2d::conv2d;
use std::time::Instant;

/// The fastest of six runs of `f`, in milliseconds.
fn fastest_ms(f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..6 {
        let start = Instant::now();
        f()?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best * 1e3)
}

fn main() -> Result<()> {
    let batch: usize = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|_| candle_core::Error::Msg(format!("batch must be a number, got {arg}")))?,
        None => 32,
    };
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (batch, 32, 100, 100), &dev)?;
    let k = Tensor::randn(0f32, 0.1, (32, 32, 3, 3), &dev)?;
    let (x_var, k_var) = (Var::from_tensor(&x)?, Var::from_tensor(&k)?);
    let forward = fastest_ms(&mut || conv2d(&x, &k, 1, 1).map(|_| ()))?;
    // A constant input and a variable weight: the backward computes the weight gradient only.
    let weight_grad = fastest_ms(&mut || {
        conv2d(&x, k_var.as_tensor(), 1, 1)?.sum_all()?.backward()?;
        Ok(())
    })? - forward;
    let input_grad = fastest_ms(&mut || {
        conv2d(x_var.as_tensor(), &k, 1, 1)?.sum_all()?.backward()?;
        Ok(())
    })? - forward;
    let mflop = 2.0 * 32.0 * 32.0 * 9.0 * 1e4 * batch as f64 / 1e6;
    println!(
        "batch {batch}: forward {forward:.1} ms ({:.0} GFLOP/s), weight gradient {weight_grad:.1} ms ({:.0}), input gradient {input_grad:.1} ms ({:.0})",
        mflop / forward,
        mflop / weight_grad,
        mflop / input_grad
    );
    Ok(())
}
