//! Domain padding: zero-pads the spatial axes before the operator layers and crops
//! afterwards, so that a non-periodic problem is not wrapped around by the FFT.
//!
//! neuraloperator's `DomainPadding` semantics (with `resolution_scaling_factor` 1): on
//! an axis of length `n` with fraction `p`, `round(p·n)` zeros (Python's round, half
//! to even) are added on *both* sides; [`DomainPadding::unpad`] removes the same amount.
//! It breaks exact shift equivariance of a periodic model (the padding does not move
//! with the signal), which is why it is off by default in the models.

use crate::error::{LayerError, Result};
use crate::layers::rounding::round_half_even;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// Configuration of a [`DomainPadding`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DomainPaddingConfig {
    /// Padding fraction per spatial axis (one value is used for every axis).
    pub fractions: Vec<f64>,
}

impl Default for DomainPaddingConfig {
    fn default() -> Self {
        Self {
            fractions: vec![0.0],
        }
    }
}

/// neuraloperator's `DomainPadding` (symmetric zero padding).
#[derive(Debug, Clone)]
pub struct DomainPadding {
    fractions: Vec<f64>,
}

impl DomainPadding {
    /// Checks the fractions (finite, in `[0, 1]`, at least one).
    pub fn new(cfg: &DomainPaddingConfig) -> Result<Self> {
        if cfg.fractions.is_empty() || cfg.fractions.iter().any(|p| !(0.0..=1.0).contains(p)) {
            return Err(LayerError::InvalidConfig {
                layer: "DomainPadding",
                reason: format!(
                    "fractions must be one or more values in [0, 1], got {:?}",
                    cfg.fractions
                ),
            });
        }
        Ok(Self {
            fractions: cfg.fractions.clone(),
        })
    }

    /// Entries added on each side of each spatial axis of a grid of shape `spatial`.
    pub fn amounts(&self, spatial: &[usize]) -> Result<Vec<usize>> {
        if self.fractions.len() != 1 && self.fractions.len() != spatial.len() {
            return Err(LayerError::Shape {
                layer: "DomainPadding",
                got: spatial.to_vec(),
                expected: format!(
                    "{} spatial axes (one per padding fraction)",
                    self.fractions.len()
                ),
            });
        }
        Ok(spatial
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                round_half_even(self.fractions[i.min(self.fractions.len() - 1)] * n as f64)
            })
            .collect())
    }

    /// Zero-pads `x` `[B, C, spatial…]`.
    pub fn pad(&self, x: &Tensor) -> Result<Tensor> {
        let spatial = spatial_of(x)?;
        let mut y = x.clone();
        for (i, p) in self.amounts(&spatial)?.into_iter().enumerate() {
            y = y.pad_with_zeros(i + 2, p, p)?;
        }
        Ok(y)
    }

    /// Crops a padded `x` back to the grid `original` (the spatial shape given to [`Self::pad`]).
    pub fn unpad(&self, x: &Tensor, original: &[usize]) -> Result<Tensor> {
        let spatial = spatial_of(x)?;
        let amounts = self.amounts(original)?;
        let mut y = x.clone();
        for (i, (&n, &p)) in original.iter().zip(&amounts).enumerate() {
            if spatial.get(i) != Some(&(n + 2 * p)) {
                return Err(LayerError::Shape {
                    layer: "DomainPadding::unpad",
                    got: x.dims().to_vec(),
                    expected: format!(
                        "spatial shape {original:?} padded by {amounts:?} on each side"
                    ),
                });
            }
            y = y.narrow(i + 2, p, n)?;
        }
        Ok(y)
    }
}

fn spatial_of(x: &Tensor) -> Result<Vec<usize>> {
    if x.rank() < 3 {
        return Err(LayerError::Shape {
            layer: "DomainPadding",
            got: x.dims().to_vec(),
            expected: "[batch, channels, spatial…]".into(),
        });
    }
    Ok(x.dims()[2..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use candle_core::{Device, IndexOp, Var};

    #[test]
    fn pads_round_half_even_and_unpads() -> Result<()> {
        let dp = DomainPadding::new(&DomainPaddingConfig {
            fractions: vec![0.125, 0.25],
        })?;
        // 0.125·20 = 2.5 → 2 (half to even); 0.25·6 = 1.5 → 2.
        assert_eq!(dp.amounts(&[20, 6])?, vec![2, 2]);
        let x = Tensor::arange(0f64, 240.0, &Device::Cpu)?.reshape((2, 1, 20, 6))?;
        let p = dp.pad(&x)?;
        assert_eq!(p.dims(), &[2, 1, 24, 10]);
        assert_eq!(p.i((0, 0, 1, 5))?.to_scalar::<f64>()?, 0.0);
        assert_eq!(p.i((0, 0, 3, 3))?.to_scalar::<f64>()?, 7.0); // x[0][0][1][1] moved by (2, 2)
        assert_eq!(
            dp.unpad(&p, &[20, 6])?.flatten_all()?.to_vec1::<f64>()?,
            x.flatten_all()?.to_vec1::<f64>()?
        );
        assert!(dp.unpad(&x, &[20, 6]).is_err());
        assert!(DomainPadding::new(&DomainPaddingConfig {
            fractions: vec![-0.1]
        })
        .is_err());
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let dp = DomainPadding::new(&DomainPaddingConfig {
            fractions: vec![0.25],
        })?;
        let x = Var::from_tensor(
            &Tensor::arange(0f64, 24.0, &Device::Cpu)?
                .reshape((1, 2, 4, 3))?
                .sin()?,
        )?;
        let xs = x.clone();
        let f = move || -> candle_core::Result<Tensor> {
            let p = dp.pad(xs.as_tensor())?;
            Ok(dp.unpad(&(p.sqr()? + 1.0)?, &[4, 3])?)
        };
        let r = check_gradients(f, &[x], &GradCheckConfig::default())?;
        assert!(r.passed(), "{r:?}");
        Ok(())
    }
}
