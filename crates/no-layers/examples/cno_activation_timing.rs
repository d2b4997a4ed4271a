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

fn arg(i: usize, default: usize) -> usize {
    std::env::args()
        .nth(i)
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
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
    ms.sort_by(f64::total_cmp);
    Ok((ms[ms.len() / 2], ms[0]))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (b, c, n, o, reps) = (arg(1, 1), arg(2, 32), arg(3, 100), arg(4, 100), arg(5, 50));
    let act = CnoActivation::new(&CnoActivationConfig::default())?;
    let x = Tensor::randn(0f32, 1.0, (b, c, n, n), &Device::Cpu)?;
    let (med, min) = time(reps, || act.forward_to(&x, (o, o)).map(|_| ()))?;
    println!(
        "{{\"variant\": \"forward\", \"batch\": {b}, \"channels\": {c}, \"grid\": {n}, \"out\": {o}, \"median_ms\": {med:.4}, \"min_ms\": {min:.4}}}"
    );
    if std::env::args().nth(6).as_deref() == Some("forward") {
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
