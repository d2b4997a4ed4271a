//! Shared helper of the part-2 model tests (DON, DON-CNN, POD-DON, CNO): a small analytic
//! FHN-like dataset for gradient checks, equivariance and shape tests, where any smooth
//! input will do (the overfitting tests use quick FHN samples: `quick`).
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};

/// `n` samples on an `nt × nx` grid: the input is a Gaussian pulse of current at a
/// sample-dependent place; v is a travelling bump it triggers, w a slower, smoothed
/// recovery of v. Smooth, deterministic and nonlinear in the input.
pub fn dataset(n: usize, nt: usize, nx: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
    let mut xs = Vec::with_capacity(n * nt * nx);
    let mut ys = vec![0f64; n * 2 * nt * nx];
    for s in 0..n {
        let x0 = 0.25 + 0.5 * ((s * 37 % 11) as f64 / 10.0);
        let amp = 0.8 + 0.4 * ((s * 7 % 5) as f64 / 4.0);
        let speed = 0.4 + 0.3 * amp;
        for i in 0..nt {
            let t = i as f64 / (nt - 1) as f64;
            for j in 0..nx {
                let x = j as f64 / (nx - 1) as f64;
                let pulse = amp * (-((x - x0) / 0.08).powi(2) - (t / 0.1).powi(2)).exp();
                xs.push(pulse);
                let front = (x - x0).abs() - speed * t;
                let v = amp * (-(front / 0.1).powi(2)).exp();
                let w = 0.5 * amp * t * (-(front / 0.25).powi(2)).exp();
                ys[((s * 2) * nt + i) * nx + j] = v;
                ys[((s * 2 + 1) * nt + i) * nx + j] = w;
            }
        }
    }
    let dev = Device::Cpu;
    let x = Tensor::from_vec(xs, (n, 1, nt, nx), &dev)?.to_dtype(dtype)?;
    let y = Tensor::from_vec(ys, (n, 2, nt, nx), &dev)?.to_dtype(dtype)?;
    Ok((x, y))
}
