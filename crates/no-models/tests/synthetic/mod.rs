//! Shared helpers of the part-2 model tests (DON, DON-CNN, POD-DON, CNO): a small
//! synthetic FHN-like dataset, a relative-L2 metric and a plain AdamW overfitting loop.
#![allow(dead_code)]

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use no_models::NeuralOperator;

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

/// Mean over samples and channels of `‖pred − target‖₂ / ‖target‖₂` (per field).
pub fn relative_l2(pred: &Tensor, target: &Tensor) -> Result<Tensor> {
    let diff = (pred - target)?.sqr()?.flatten_from(2)?.sum(2)?.sqrt()?;
    let norm = target.sqr()?.flatten_from(2)?.sum(2)?.sqrt()?;
    (diff / norm)?.mean_all()
}

/// Trains with AdamW on the whole batch until the relative L2 error falls below `target`;
/// returns the last error and the number of steps taken (at most `max_steps`).
pub fn overfit(
    model: &dyn NeuralOperator,
    vars: Vec<candle_core::Var>,
    x: &Tensor,
    y: &Tensor,
    lr: f64,
    max_steps: usize,
    target: f64,
) -> Result<(f64, usize)> {
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut err = f64::INFINITY;
    for step in 0..max_steps {
        let loss = relative_l2(&model.forward_t(x, true)?, y)?;
        err = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if err < target {
            return Ok((err, step));
        }
        opt.backward_step(&loss)?;
    }
    Ok((err, max_steps))
}
