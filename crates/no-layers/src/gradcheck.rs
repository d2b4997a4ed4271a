//! Finite-difference gradient checks (use f64).
//!
//! Every layer with a custom path is checked against central differences: the scalar
//! loss is `Σ f(θ) ⊙ r` with a fixed random `r`, so every output entry contributes, and
//! entries of each variable (inputs included: wrap them in a [`Var`]) are perturbed by
//! ±ε. The same check lives here, public, so users can check layers of their own.
//!
//! ```
//! use candle_core::{Device, Var, Tensor};
//! use no_layers::gradcheck::{check_gradients, GradCheckConfig};
//!
//! let x = Var::from_tensor(&Tensor::new(&[0.3f64, -1.2, 2.0], &Device::Cpu)?)?;
//! let xs = x.clone();
//! let report = check_gradients(move || xs.as_tensor().sqr()?.sin(), &[x], &GradCheckConfig::default())?;
//! assert!(report.passed(), "{report:?}");
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::init::rng_for;
use candle_core::{DType, Result, Tensor, Var};
use rand::Rng;

/// Settings of a gradient check.
#[derive(Debug, Clone)]
pub struct GradCheckConfig {
    /// Central-difference step.
    pub eps: f64,
    /// An entry passes when `|analytic − numeric| ≤ tol · (1 + |analytic|)`.
    pub tol: f64,
    /// At most this many entries of each variable are perturbed (spread evenly).
    pub max_entries_per_var: usize,
    /// Seed of the random output weighting `r`.
    pub seed: u64,
}

impl Default for GradCheckConfig {
    fn default() -> Self {
        Self {
            eps: 1e-6,
            tol: 1e-6,
            max_entries_per_var: 48,
            seed: 0,
        }
    }
}

/// The outcome of [`check_gradients`].
#[derive(Debug, Clone)]
pub struct GradCheckReport {
    /// Largest `|analytic − numeric| / (1 + |analytic|)` seen.
    pub max_error: f64,
    /// Number of entries checked.
    pub checked: usize,
    /// The worst entry: (variable index, flat index, analytic, numeric).
    pub worst: Option<(usize, usize, f64, f64)>,
    /// The tolerance the check was run with.
    pub tol: f64,
}

impl GradCheckReport {
    /// Whether every checked entry was within tolerance.
    pub fn passed(&self) -> bool {
        self.checked > 0 && self.max_error <= self.tol
    }
}

/// Compares candle's gradients of `f` with respect to `vars` against central differences.
///
/// `f` must read the variables (capture clones of them); the variables must be f64.
pub fn check_gradients<F>(f: F, vars: &[Var], cfg: &GradCheckConfig) -> Result<GradCheckReport>
where
    F: Fn() -> Result<Tensor>,
{
    for (i, v) in vars.iter().enumerate() {
        if v.dtype() != DType::F64 {
            candle_core::bail!(
                "gradient check: variable {i} is {:?}, expected F64",
                v.dtype()
            );
        }
    }
    let out = f()?;
    let weights = random_like(&out, cfg.seed)?;
    let loss_of = |t: &Tensor| -> Result<f64> { (t * &weights)?.sum_all()?.to_scalar::<f64>() };
    let grads = (&out * &weights)?.sum_all()?.backward()?;

    let mut report = GradCheckReport {
        max_error: 0.0,
        checked: 0,
        worst: None,
        tol: cfg.tol,
    };
    for (vi, var) in vars.iter().enumerate() {
        let analytic = match grads.get(var.as_tensor()) {
            Some(g) => g.flatten_all()?.to_vec1::<f64>()?,
            None => vec![0.0; var.elem_count()],
        };
        let original = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
        let n = original.len();
        if analytic.len() != n {
            candle_core::bail!(
                "gradcheck: the gradient of variable {vi} has {} entries, the variable {n}",
                analytic.len()
            );
        }
        let stride = n.div_ceil(cfg.max_entries_per_var.max(1)).max(1);
        for idx in (0..n).step_by(stride) {
            let numeric = {
                let mut plus = original.clone();
                plus[idx] += cfg.eps;
                var.set(&Tensor::from_vec(plus, var.shape(), var.device())?)?;
                let lp = loss_of(&f()?)?;
                let mut minus = original.clone();
                minus[idx] -= cfg.eps;
                var.set(&Tensor::from_vec(minus, var.shape(), var.device())?)?;
                let lm = loss_of(&f()?)?;
                (lp - lm) / (2.0 * cfg.eps)
            };
            let a = analytic[idx];
            let err = (a - numeric).abs() / (1.0 + a.abs());
            report.checked += 1;
            if err > report.max_error || report.worst.is_none() {
                report.max_error = report.max_error.max(err);
                report.worst = Some((vi, idx, a, numeric));
            }
        }
        var.set(&Tensor::from_vec(original, var.shape(), var.device())?)?;
    }
    Ok(report)
}

/// A tensor of the shape, dtype and device of `like` with entries drawn from U(−1, 1).
pub fn random_like(like: &Tensor, seed: u64) -> Result<Tensor> {
    let mut rng = rng_for(seed, "gradcheck");
    let values: Vec<f64> = (0..like.elem_count())
        .map(|_| rng.random::<f64>() * 2.0 - 1.0)
        .collect();
    Tensor::from_vec(values, like.shape(), like.device())?.to_dtype(like.dtype())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{CpuStorage, CustomOp1, Device, Layout, Shape};

    /// An op whose backward is deliberately wrong (it claims d sin x = sin x).
    struct WrongSin;
    impl CustomOp1 for WrongSin {
        fn name(&self) -> &'static str {
            "wrong-sin"
        }
        fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
            let (a, b) = l
                .contiguous_offsets()
                .ok_or_else(|| candle_core::Error::Msg("contiguous".into()))?;
            match s {
                CpuStorage::F64(v) => Ok((
                    CpuStorage::F64(v[a..b].iter().map(|x| x.sin()).collect()),
                    l.shape().clone(),
                )),
                _ => candle_core::bail!("f64 only"),
            }
        }
        fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
            Ok(Some((res * grad)?))
        }
    }

    #[test]
    fn detects_a_wrong_gradient() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[0.3f64, -1.2, 2.0], &Device::Cpu)?)?;
        let xs = x.clone();
        let report = check_gradients(
            move || xs.as_tensor().apply_op1(WrongSin),
            &[x],
            &GradCheckConfig::default(),
        )?;
        assert!(!report.passed(), "{report:?}");
        Ok(())
    }

    #[test]
    fn accepts_a_right_gradient_and_restores_values() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[[0.3f64, -1.2], [2.0, 0.5]], &Device::Cpu)?)?;
        let before = x.as_tensor().to_vec2::<f64>()?;
        let xs = x.clone();
        let report = check_gradients(
            move || xs.as_tensor().matmul(xs.as_tensor())?.tanh(),
            std::slice::from_ref(&x),
            &GradCheckConfig::default(),
        )?;
        assert!(report.passed(), "{report:?}");
        assert_eq!(report.checked, 4);
        assert_eq!(x.as_tensor().to_vec2::<f64>()?, before);
        Ok(())
    }

    #[test]
    fn rejects_f32_variables() -> Result<()> {
        let x = Var::from_tensor(&Tensor::new(&[1f32], &Device::Cpu)?)?;
        let xs = x.clone();
        assert!(check_gradients(
            move || Ok(xs.as_tensor().clone()),
            &[x],
            &GradCheckConfig::default()
        )
        .is_err());
        Ok(())
    }
}
