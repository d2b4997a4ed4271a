//! Wall-clock timing of CNO's fused activation (`CnoActivation`: bicubic resize up,
//! leaky ReLU, resize down), forward and forward + backward.
//!
//! ```text
//! cargo run --release -p no-layers --example cno_activation_timing -- \
//!     [batch=1] [channels=32] [grid=100] [out=100] [reps=50] [forward]
//! ```
//! Prints one JSON object per variant: median and minimum milliseconds (`forward`: only the
//! forward, for profiles).

use candle_core::{DType, Device, Tensor, Var};
use no_layers::{CnoActivation, CnoActivationConfig};
use std::time::Instant;

/// Positional argument `i` (1-based): `default` when absent, else a whole number from 1 to
/// `max`, or an error that names it.
fn arg(i: usize, name: &str, default: usize, max: usize) -> Result<usize, String> {
    match std::env::args().nth(i) {
        None => Ok(default),
        Some(text) => match text.parse::<usize>() {
            Ok(v) if (1..=max).contains(&v) => Ok(v),
            _ => Err(format!(
                "{name} (argument {i}) must be a whole number from 1 to {max}, got `{text}`"
            )),
        },
    }
}

/// Most values in the largest tensor the activation holds (`[B, C, 2n, 2n]` upsampled, or
/// the `[B, C, out, out]` output).
const MAX_VALUES: usize = 1 << 28;

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
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (b, c) = (arg(1, "batch", 1, 1024)?, arg(2, "channels", 32, 1024)?);
    let (n, o) = (arg(3, "grid", 100, 4096)?, arg(4, "out", 100, 4096)?);
    let reps = arg(5, "reps", 50, 100_000)?;
    let forward_only = match std::env::args().nth(6).as_deref() {
        None => false,
        Some("forward") => true,
        Some(other) => {
            return Err(format!("argument 6 must be `forward` or absent, got `{other}`").into())
        }
    };
    let side = (2 * n).max(o);
    let largest = [b, c, side, side]
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d));
    if largest.is_none_or(|v| v > MAX_VALUES) {
        return Err(format!(
            "batch {b}, channels {c}, grid {n} and out {o} make a tensor of more than {MAX_VALUES} values"
        )
        .into());
    }
    let act = CnoActivation::new(&CnoActivationConfig::default())?;
    let x = Tensor::randn(0f32, 1.0, (b, c, n, n), &Device::Cpu)?;
    let (med, min) = time(reps, || act.forward_to(&x, (o, o)).map(|_| ()))?;
    println!(
        "{{\"variant\": \"forward\", \"batch\": {b}, \"channels\": {c}, \"grid\": {n}, \"out\": {o}, \"median_ms\": {med:.4}, \"min_ms\": {min:.4}}}"
    );
    if forward_only {
        return Ok(());
    }
    let v = Var::from_tensor(&x)?;
    let (med, min) = time(reps, || {
        let y = act.forward_to(v.as_tensor(), (o, o))?;
        y.to_dtype(DType::F64)?.sum_all()?.backward().map(|_| ())
    })?;
    println!(
        "{{\"variant\": \"forward_backward\", \"batch\": {b}, \"channels\": {c}, \"grid\": {n}, \"out\": {o}, \"median_ms\": {med:.4}, \"min_ms\": {min:.4}}}"
    );
    Ok(())
}
