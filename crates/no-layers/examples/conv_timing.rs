//! Wall-clock timing of the fused CPU `conv2d`: forward, weight gradient and input gradient
//! separately, at LocalNO's merged local kernel (a 32 → 32-channel 3×3 convolution with
//! padding 1 on 100 × 100 planes) or at the four stride-2 layers of DeepONet-CNN's branch
//! (`don_cnn`: 1 → 40 → 80 → 100 → 120 channels, 3×3, no padding, from 100 × 100).
//!
//! ```text
//! cargo run --release -p no-layers --example conv_timing -- [batch=32, 1 to 256] [local|don_cnn]
//! ```
//! Prints the fastest of 6 runs of each, in ms and GFLOP/s. A gradient figure is the
//! fastest forward and backward of `sum(conv2d(..)·r)` (`r` random) less the fastest
//! forward and the fastest `sum(y·r)` with its backward alone (the seed).

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

/// One convolution: `[batch, c_in, size, size]` with `c_out` 3×3 filters.
struct Shape {
    c_in: usize,
    c_out: usize,
    size: usize,
    padding: usize,
    stride: usize,
}

/// Times forward, weight gradient and input gradient of one shape and prints them.
fn time_shape(batch: usize, s: &Shape) -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (batch, s.c_in, s.size, s.size), &dev)?;
    let k = Tensor::randn(0f32, 0.1, (s.c_out, s.c_in, 3, 3), &dev)?;
    let (x_var, k_var) = (Var::from_tensor(&x)?, Var::from_tensor(&k)?);
    let (p, st) = (s.padding, s.stride);
    let forward = fastest_ms(&mut || conv2d(&x, &k, p, st).map(|_| ()))?;
    // The seed alone: `sum(y·r)` and its backward on a variable `y` of the output's shape
    // (with `r` random, the gradient reaching the convolution is `r`, a contiguous tensor).
    let y = conv2d(&x, &k, p, st)?;
    let r = Tensor::randn(0f32, 1.0, y.shape(), &dev)?;
    let y_var = Var::from_tensor(&y)?;
    let seed = fastest_ms(&mut || {
        (y_var.as_tensor() * &r)?.sum_all()?.backward()?;
        Ok(())
    })?;
    // A constant input and a variable weight: the backward computes the weight gradient only.
    let weight_grad = fastest_ms(&mut || {
        (conv2d(&x, k_var.as_tensor(), p, st)? * &r)?
            .sum_all()?
            .backward()?;
        Ok(())
    })? - forward
        - seed;
    let input_grad = fastest_ms(&mut || {
        (conv2d(x_var.as_tensor(), &k, p, st)? * &r)?
            .sum_all()?
            .backward()?;
        Ok(())
    })? - forward
        - seed;
    let out = (s.size + 2 * p - 3) / st + 1;
    let mflop = 2.0 * (s.c_in * s.c_out * 9 * out * out * batch) as f64 / 1e6;
    println!(
        "batch {batch}, {} → {} channels on {}², stride {st}: forward {forward:.2} ms ({:.0} GFLOP/s), weight gradient {weight_grad:.2} ms ({:.0}), input gradient {input_grad:.2} ms ({:.0})",
        s.c_in,
        s.c_out,
        s.size,
        mflop / forward,
        mflop / weight_grad,
        mflop / input_grad
    );
    Ok(())
}

/// The largest batch accepted: LocalNO's shape holds 1.3 MB of input per sample, and the
/// timing keeps a few tensors of that size per sample alive (about 1.5 GB at 256).
const MAX_BATCH: usize = 256;

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let batch: usize = match args.next() {
        Some(arg) => match arg.parse() {
            Ok(b) if (1..=MAX_BATCH).contains(&b) => b,
            _ => candle_core::bail!(
                "batch must be a whole number from 1 to {MAX_BATCH}, got `{arg}`"
            ),
        },
        None => 32,
    };
    let shapes = match args.next().as_deref() {
        None | Some("local") => vec![Shape {
            c_in: 32,
            c_out: 32,
            size: 100,
            padding: 1,
            stride: 1,
        }],
        Some("don_cnn") => [(1, 40, 100), (40, 80, 49), (80, 100, 24), (100, 120, 11)]
            .into_iter()
            .map(|(c_in, c_out, size)| Shape {
                c_in,
                c_out,
                size,
                padding: 0,
                stride: 2,
            })
            .collect(),
        Some(other) => candle_core::bail!("shapes must be `local` or `don_cnn`, got `{other}`"),
    };
    if let Some(extra) = args.next() {
        candle_core::bail!("expected at most two arguments (batch, shapes), got also `{extra}`");
    }
    for s in &shapes {
        time_shape(batch, s)?;
    }
    Ok(())
}
