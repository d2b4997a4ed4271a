use candle_core::{Device, Tensor, Var};
use std::time::Instant;
fn best(f: &mut dyn FnMut() -> candle_core::Result<()>) -> candle_core::Result<f64> {
    let mut b = f64::MAX;
    for _ in 0..6 {
        let t = Instant::now();
        f()?;
        b = b.min(t.elapsed().as_secs_f64());
    }
    Ok(b * 1e3)
}
fn main() -> candle_core::Result<()> {
    let dev = Device::Cpu;
    let b: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let xt = Tensor::randn(0f32, 1.0, (b, 32, 100, 100), &dev)?;
    let kt = Tensor::randn(0f32, 0.1, (32, 32, 3, 3), &dev)?;
    let x = Var::from_tensor(&xt)?;
    let k = Var::from_tensor(&kt)?;
    let fwd = best(&mut || {
        no_layers::conv2d::conv2d(&xt, &kt, 1, 1)?;
        Ok(())
    })?;
    let wg = best(&mut || {
        no_layers::conv2d::conv2d(&xt, k.as_tensor(), 1, 1)?
            .sum_all()?
            .backward()?;
        Ok(())
    })? - fwd;
    let ig = best(&mut || {
        no_layers::conv2d::conv2d(x.as_tensor(), &kt, 1, 1)?
            .sum_all()?
            .backward()?;
        Ok(())
    })? - fwd;
    let gf = 2.0 * 32.0 * 32.0 * 9.0 * 1e4 * b as f64 / 1e6;
    println!(
        "fwd {fwd:.1} ms ({:.0} GF/s) weight-grad {wg:.1} ms ({:.0}) input-grad {ig:.1} ms ({:.0})",
        gf / fwd,
        gf / wg,
        gf / ig
    );
    Ok(())
}
