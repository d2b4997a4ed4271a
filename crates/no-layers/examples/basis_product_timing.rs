//! Wall-clock timing of DeepONet's combination of branch coefficients with a constant
//! trunk basis, `out[b, k, n] = Σᵢ branch[b, k·q + i]·basis[k, i, n]`: the whole-width op
//! (`basis_product`) against the same basis stored in column panels (`PanelBasis`).
//!
//! ```text
//! cargo run --release -p no-layers --example basis_product_timing -- [batch=32] [outputs=2] [functions=400] [points=10000]
//! ```
//! The defaults are DeepONet-CNN's product at batch 32 on 100 × 100. Prints the CPU's
//! thread count, the fastest of 30 runs of each (after one untimed run), alternating the
//! two over 3 rounds, and whether their values are the same bit for bit.

use candle_core::{Device, Result, Tensor};
use no_layers::ops::basis_product::{basis_product, PanelBasis};
use std::time::Instant;

/// The fastest of thirty runs of `f`, in milliseconds, after one untimed run.
fn fastest_ms(f: &mut dyn FnMut() -> Result<Tensor>) -> Result<f64> {
    let mut best = f64::MAX;
    f()?;
    for _ in 0..30 {
        let start = Instant::now();
        drop(f()?);
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(best * 1e3)
}

/// The sizes from the command line: positive integers, at most four, with defaults.
fn sizes() -> std::result::Result<[usize; 4], String> {
    let mut out = [32, 2, 400, 10_000];
    let names = ["batch", "outputs", "functions", "points"];
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() > out.len() {
        return Err(format!(
            "at most 4 sizes ({}), got {}",
            names.join(", "),
            args.len()
        ));
    }
    for ((slot, name), arg) in out.iter_mut().zip(names).zip(&args) {
        *slot = match arg.parse::<usize>() {
            Ok(v) if (1..=1 << 28).contains(&v) => v,
            _ => {
                return Err(format!(
                    "{name} must be an integer from 1 to 2^28, got `{arg}`"
                ))
            }
        };
    }
    let total = out[1]
        .checked_mul(out[2])
        .and_then(|v| v.checked_mul(out[3]))
        .filter(|&v| v <= 1 << 28);
    if total.is_none() {
        return Err("outputs × functions × points must be at most 2^28 values".into());
    }
    Ok(out)
}

fn main() -> Result<()> {
    let [b, k, q, n] = match sizes() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("basis_product_timing: {e}");
            std::process::exit(2);
        }
    };
    let dev = Device::Cpu;
    let branch = Tensor::randn(0f32, 1.0, (b, k * q), &dev)?;
    let basis = Tensor::randn(0f32, 1.0, (k, q, n), &dev)?;
    let panels = PanelBasis::new(&basis)?;
    let same = basis_product(&branch, &basis)?
        .flatten_all()?
        .to_vec1::<f32>()?
        == panels.product(&branch)?.flatten_all()?.to_vec1::<f32>()?;
    println!(
        "{b} × {k}·{q} → {n} points, {} threads; same values bit for bit: {same}",
        rayon::current_num_threads()
    );
    let gflop = 2.0 * (b * k * q * n) as f64 / 1e6;
    for round in 1..=3 {
        let whole = fastest_ms(&mut || basis_product(&branch, &basis))?;
        let paneled = fastest_ms(&mut || panels.product(&branch))?;
        println!(
            "round {round}: whole width {whole:.3} ms ({:.0} GFLOP/s), panels {paneled:.3} ms ({:.0} GFLOP/s), ratio {:.2}",
            gflop / whole,
            gflop / paneled,
            whole / paneled
        );
    }
    Ok(())
}
