//! Tucker-factorized complex spectral weights (TFNO).
//!
//! A spectral weight `W[i, o, k1, (k2)]` is stored as a complex core `G[r_0, …, r_N]` and
//! one complex factor `F_k[s_k, r_k]` per axis, `W = G ×_0 F_0 ×_1 F_1 … ×_N F_N` (no
//! conjugation), exactly as tltorch's `TuckerTensor` does. Complex tensors are real
//! tensors with a trailing axis of 2 (`[re, im]`, PyTorch's `view_as_real`), so the
//! variables map one-to-one onto neuraloperator's `state_dict`:
//!
//! | here (VarBuilder name under the layer) | shape | neuraloperator key (complex) |
//! |---|---|---|
//! | `weight.core` | `[r_0, …, r_N, 2]` | `weight.core` `[r_0, …, r_N]` |
//! | `weight.factors.factor_k` | `[s_k, r_k, 2]` | `weight.factors.factor_k` `[s_k, r_k]` |
//!
//! The rank is either explicit or a fraction of the dense parameter count, resolved with
//! tensorly's `validate_tucker_rank` rule ([`tucker_rank_for_fraction`]). Conversion from
//! a dense weight is a truncated higher-order SVD computed with faer ([`TuckerWeight::hosvd`]).

use crate::error::{LayerError, Result};
use crate::ops::complex_mode_product::complex_mode_product;
use candle_core::{DType, Device, Tensor};
use candle_nn::{init::Init, VarBuilder};
use faer::{c64, Mat};
use serde::{Deserialize, Serialize};

/// How the Tucker rank is chosen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TuckerRank {
    /// Keep about this fraction of the dense parameter count (tensorly's rule).
    Fraction(f64),
    /// One rank per axis of the weight (`[in, out, modes…]`).
    Explicit(Vec<usize>),
}

impl Default for TuckerRank {
    /// neuraloperator's `SpectralConv` default, `rank=0.5` (TFNO passes 0.1).
    fn default() -> Self {
        TuckerRank::Fraction(0.5)
    }
}

impl TuckerRank {
    /// The per-axis ranks for a weight of `shape`.
    pub fn resolve(&self, shape: &[usize]) -> Result<Vec<usize>> {
        match self {
            TuckerRank::Fraction(f) => tucker_rank_for_fraction(shape, *f),
            TuckerRank::Explicit(r) => {
                if r.len() != shape.len() || r.iter().zip(shape).any(|(&r, &s)| r == 0 || r > s) {
                    return Err(invalid(format!(
                        "explicit Tucker rank {r:?} must have one entry in 1..=size per axis of {shape:?}"
                    )));
                }
                Ok(r.clone())
            }
        }
    }
}

fn invalid(reason: String) -> LayerError {
    LayerError::InvalidConfig {
        layer: "TuckerWeight",
        reason,
    }
}

/// tensorly's `validate_tucker_rank(shape, rank=fraction)`: find `x` with
/// `P·x^N + Σ s_k²·x = fraction·P` (`P = Π s_k`), then `r_k = max(1, round(s_k·x))`
/// (rounding half to even, as numpy does).
pub fn tucker_rank_for_fraction(shape: &[usize], fraction: f64) -> Result<Vec<usize>> {
    if !(fraction.is_finite() && fraction > 0.0) || shape.is_empty() || shape.contains(&0) {
        return Err(invalid(format!(
            "rank fraction {fraction} must be finite and > 0 for a non-empty shape {shape:?}"
        )));
    }
    let p: f64 = shape.iter().map(|&s| s as f64).product();
    let sq: f64 = shape.iter().map(|&s| (s * s) as f64).sum();
    let n = shape.len() as i32;
    let f = |x: f64| p * x.powi(n) + sq * x - fraction * p;
    // f is increasing on [0, ∞), f(0) < 0 and f(max(fraction, 1)) > 0: bisect to the last bit.
    let (mut lo, mut hi) = (0.0f64, fraction.max(1.0));
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if mid <= lo || mid >= hi {
            break;
        }
        if f(mid) < 0.0 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let x = 0.5 * (lo + hi);
    Ok(shape
        .iter()
        .map(|&s| ((s as f64 * x).round_ties_even() as usize).max(1))
        .collect())
}

/// A Tucker-factorized complex tensor whose parts are candle variables.
#[derive(Debug, Clone)]
pub struct TuckerWeight {
    core: Tensor,
    factors: Vec<Tensor>,
    shape: Vec<usize>,
    rank: Vec<usize>,
}

impl TuckerWeight {
    /// Creates the core `core` and factors `factors.factor_k` under `vb`, initialised as
    /// tltorch's `TuckerTensor.normal_(0, std)`: every entry complex normal with standard
    /// deviation `(std / Π_k √r_k)^(1/(N+1))` (real and imaginary parts each that over √2).
    pub fn new(shape: &[usize], rank: &TuckerRank, std: f64, vb: VarBuilder) -> Result<Self> {
        let rank = rank.resolve(shape)?;
        let root: f64 = rank.iter().map(|&r| (r as f64).sqrt()).product();
        let part_std = (std / root).powf(1.0 / (shape.len() as f64 + 1.0)) / 2f64.sqrt();
        let init = Init::Randn {
            mean: 0.0,
            stdev: part_std,
        };
        let mut core_shape = rank.clone();
        core_shape.push(2);
        let core = vb.get_with_hints(core_shape, "core", init)?;
        let factors = shape
            .iter()
            .zip(&rank)
            .enumerate()
            .map(|(k, (&s, &r))| vb.get_with_hints((s, r, 2), &format!("factors.factor_{k}"), init))
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            core,
            factors,
            shape: shape.to_vec(),
            rank,
        })
    }

    /// Wraps existing tensors (`core` `[r…, 2]`, `factors[k]` `[s_k, r_k, 2]`), checking shapes.
    pub fn from_parts(core: Tensor, factors: Vec<Tensor>) -> Result<Self> {
        let dims = core.dims();
        let ok_core =
            dims.len() >= 2 && dims[dims.len() - 1] == 2 && dims.len() - 1 == factors.len();
        if !ok_core {
            return Err(LayerError::Shape {
                layer: "TuckerWeight",
                got: dims.to_vec(),
                expected: format!("a core [r_0, …, r_{}, 2]", factors.len().saturating_sub(1)),
            });
        }
        let rank = dims[..dims.len() - 1].to_vec();
        let mut shape = Vec::with_capacity(rank.len());
        for (f, &r) in factors.iter().zip(&rank) {
            match f.dims() {
                &[s, fr, 2] if fr == r => shape.push(s),
                other => {
                    return Err(LayerError::Shape {
                        layer: "TuckerWeight",
                        got: other.to_vec(),
                        expected: format!("a factor [size, {r}, 2]"),
                    })
                }
            }
        }
        Ok(Self {
            core,
            factors,
            shape,
            rank,
        })
    }

    /// The core `[r…, 2]`.
    pub fn core(&self) -> &Tensor {
        &self.core
    }

    /// The factors `[s_k, r_k, 2]`.
    pub fn factors(&self) -> &[Tensor] {
        &self.factors
    }

    /// The shape of the full tensor (without the trailing 2).
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The Tucker rank.
    pub fn rank(&self) -> &[usize] {
        &self.rank
    }

    /// Number of real parameters (core and factors, re and im).
    pub fn num_real_params(&self) -> usize {
        self.core.elem_count() + self.factors.iter().map(|f| f.elem_count()).sum::<usize>()
    }

    /// The full tensor `[shape…, 2]`, differentiable with respect to core and factors.
    pub fn to_dense(&self) -> Result<Tensor> {
        let mut x = self.core.clone();
        for (k, f) in self.factors.iter().enumerate() {
            x = complex_mode_product(&x, f, k)?;
        }
        Ok(x)
    }

    /// Truncated HOSVD of a dense complex tensor `[shape…, 2]` to `rank`, giving
    /// `(core [rank…, 2], factors [s_k, r_k, 2])` as f64 CPU tensors: `F_k` holds the
    /// leading left singular vectors of the mode-`k` unfolding, `G = W ×_k F_kᴴ`.
    /// Exact (to rounding) when `W` has multilinear rank at most `rank`.
    pub fn hosvd(dense: &Tensor, rank: &[usize]) -> Result<(Tensor, Vec<Tensor>)> {
        let dims = dense.dims();
        let shape = dims[..dims.len().saturating_sub(1)].to_vec();
        if dims.last() != Some(&2)
            || shape.len() != rank.len()
            || rank.iter().zip(&shape).any(|(&r, &s)| r == 0 || r > s)
        {
            return Err(invalid(format!(
                "HOSVD needs a [shape…, 2] tensor and one rank in 1..=size per axis; got {dims:?} and {rank:?}"
            )));
        }
        let flat = dense
            .to_dtype(DType::F64)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let data: Vec<c64> = flat.chunks_exact(2).map(|p| c64::new(p[0], p[1])).collect();
        let mut factors = Vec::with_capacity(shape.len());
        for (k, &r) in rank.iter().enumerate() {
            let unfolded = unfold(&data, &shape, k);
            let svd = unfolded
                .thin_svd()
                .map_err(|e| invalid(format!("SVD of mode {k} failed: {e:?}")))?;
            let u = svd.U();
            factors.push(Mat::<c64>::from_fn(shape[k], r, |i, j| u[(i, j)]));
        }
        // Core: W ×_k F_kᴴ for every k.
        let (mut core, mut core_shape) = (data, shape.clone());
        for (k, f) in factors.iter().enumerate() {
            let fh = Mat::<c64>::from_fn(f.ncols(), f.nrows(), |i, j| f[(j, i)].conj());
            core = mode_product_host(&core, &core_shape, k, &fh);
            core_shape[k] = f.ncols();
        }
        let core_t = complex_to_tensor(&core, &core_shape)?;
        let factor_t = factors
            .iter()
            .map(|f| {
                let v: Vec<c64> = (0..f.nrows())
                    .flat_map(|i| (0..f.ncols()).map(move |j| (i, j)))
                    .map(|(i, j)| f[(i, j)])
                    .collect();
                complex_to_tensor(&v, &[f.nrows(), f.ncols()])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((core_t, factor_t))
    }
}

fn complex_to_tensor(v: &[c64], shape: &[usize]) -> Result<Tensor> {
    let flat: Vec<f64> = v.iter().flat_map(|z| [z.re, z.im]).collect();
    let mut s = shape.to_vec();
    s.push(2);
    Ok(Tensor::from_vec(flat, s, &Device::Cpu)?)
}

/// Row-major strides of `shape`.
fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for k in (0..shape.len().saturating_sub(1)).rev() {
        s[k] = s[k + 1] * shape[k + 1];
    }
    s
}

/// The mode-`k` unfolding `[s_k, Π others]` of a row-major complex tensor.
fn unfold(data: &[c64], shape: &[usize], k: usize) -> Mat<c64> {
    let st = strides(shape);
    let cols = data.len() / shape[k].max(1);
    let mut m = Mat::<c64>::zeros(shape[k], cols);
    let mut col_of = vec![0usize; shape[k]];
    for (flat, &z) in data.iter().enumerate() {
        let i = (flat / st[k]) % shape[k];
        m[(i, col_of[i])] = z;
        col_of[i] += 1;
    }
    m
}

/// `Y = X ×_k M` for a row-major complex tensor: axis `k` of size `M.ncols()` becomes `M.nrows()`.
fn mode_product_host(data: &[c64], shape: &[usize], k: usize, m: &Mat<c64>) -> Vec<c64> {
    let st = strides(shape);
    let mut out_shape = shape.to_vec();
    out_shape[k] = m.nrows();
    let ost = strides(&out_shape);
    let total: usize = out_shape.iter().product();
    let mut out = vec![c64::new(0.0, 0.0); total];
    for (flat, o) in out.iter_mut().enumerate() {
        let i = (flat / ost[k]) % out_shape[k];
        // Offset of the same multi-index with axis k at 0 in the input.
        let mut base = 0;
        for (a, &os) in ost.iter().enumerate() {
            if a != k {
                base += ((flat / os) % out_shape[a]) * st[a];
            }
        }
        let mut acc = c64::new(0.0, 0.0);
        for j in 0..shape[k] {
            acc += m[(i, j)] * data[base + j * st[k]];
        }
        *o = acc;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::SeededVarMap;

    #[test]
    fn fractional_rank_matches_tensorly() -> Result<()> {
        // Values printed by tensorly.tucker_tensor.validate_tucker_rank / tltorch.
        assert_eq!(
            tucker_rank_for_fraction(&[64, 64, 16, 9], 0.1)?,
            vec![35, 35, 9, 5]
        );
        assert_eq!(
            tucker_rank_for_fraction(&[3, 5, 6, 3], 0.5)?,
            vec![2, 4, 4, 2]
        );
        assert_eq!(tucker_rank_for_fraction(&[3, 5, 4], 0.5)?, vec![1, 2, 2]);
        assert!(tucker_rank_for_fraction(&[3, 5], -1.0).is_err());
        Ok(())
    }

    #[test]
    fn explicit_rank_is_validated() {
        assert!(TuckerRank::Explicit(vec![2, 2])
            .resolve(&[3, 4, 5])
            .is_err());
        assert!(TuckerRank::Explicit(vec![4, 2]).resolve(&[3, 4]).is_err());
        assert_eq!(
            TuckerRank::Explicit(vec![3, 2]).resolve(&[3, 4]).ok(),
            Some(vec![3, 2])
        );
    }

    fn random_tucker(shape: &[usize], rank: &[usize], seed: u64) -> Result<TuckerWeight> {
        let vars = SeededVarMap::new(seed);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        TuckerWeight::new(shape, &TuckerRank::Explicit(rank.to_vec()), 1.0, vb)
    }

    #[test]
    fn hosvd_round_trip_is_exact_for_a_tensor_of_that_rank() -> Result<()> {
        let shape = [3, 4, 5, 3];
        let rank = [2, 3, 2, 2];
        let w = random_tucker(&shape, &rank, 1)?.to_dense()?;
        let (core, factors) = TuckerWeight::hosvd(&w, &rank)?;
        let back = TuckerWeight::from_parts(core, factors)?.to_dense()?;
        let scale = w.abs()?.max_all()?.to_scalar::<f64>()?;
        let err = (back - &w)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(err < 1e-12 * scale.max(1.0), "err {err}");
        Ok(())
    }

    #[test]
    fn truncated_hosvd_loses_accuracy_and_full_rank_does_not() -> Result<()> {
        let shape = [3, 4, 5];
        let w = random_tucker(&shape, &shape, 2)?.to_dense()?;
        let rel = |rank: &[usize]| -> Result<f64> {
            let (c, f) = TuckerWeight::hosvd(&w, rank)?;
            let back = TuckerWeight::from_parts(c, f)?.to_dense()?;
            let num = (back - &w)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
            let den = w.sqr()?.sum_all()?.to_scalar::<f64>()?;
            Ok((num / den).sqrt())
        };
        assert!(rel(&shape)? < 1e-12);
        assert!(rel(&[1, 1, 1])? > 1e-2);
        Ok(())
    }

    #[test]
    fn initialisation_follows_tltorch_std() -> Result<()> {
        let vars = SeededVarMap::new(3);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let t = TuckerWeight::new(
            &[40, 40, 20],
            &TuckerRank::Explicit(vec![20, 20, 10]),
            0.5,
            vb,
        )?;
        let expected = (0.5 / (20f64 * 20.0 * 10.0).sqrt()).powf(0.25);
        // Complex std = sqrt(E|z|^2) over the core.
        let ms = t.core().sqr()?.sum_all()?.to_scalar::<f64>()? / 4000.0;
        assert!(
            (ms.sqrt() / expected - 1.0).abs() < 0.05,
            "{} vs {expected}",
            ms.sqrt()
        );
        assert_eq!(t.num_real_params(), 2 * (4000 + 800 + 800 + 200));
        Ok(())
    }

    #[test]
    fn from_parts_rejects_mismatched_factors() -> Result<()> {
        let core = Tensor::zeros((2, 3, 2), DType::F64, &Device::Cpu)?;
        let f0 = Tensor::zeros((4, 2, 2), DType::F64, &Device::Cpu)?;
        let f1 = Tensor::zeros((5, 2, 2), DType::F64, &Device::Cpu)?;
        assert!(TuckerWeight::from_parts(core, vec![f0, f1]).is_err());
        Ok(())
    }
}
