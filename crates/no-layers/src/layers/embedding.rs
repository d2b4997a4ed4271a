//! Grid positional embedding: appends the coordinates of each grid point as channels.
//!
//! neuraloperator's FNO appends them by default (`positional_embedding="grid"`). It is
//! optional here because absolute coordinates break translation equivariance, which is
//! exactly what the study measures. Coordinates follow neuraloperator's
//! `regular_grid_nd`: on an axis with `n` points and boundaries `[lo, hi]`, point `i`
//! sits at `lo + (hi − lo)·i/n` (that is `linspace(lo, hi, n+1)[:-1]`, a periodic grid).
//! The channel order is the input channels, then one channel per spatial axis (axis 0
//! first). There are no parameters.

use crate::error::{LayerError, Result};
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

/// Configuration of a [`GridEmbedding`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GridEmbeddingConfig {
    /// Channels of the input (the output has `in_channels + n_dim`).
    pub in_channels: usize,
    /// Number of spatial axes.
    pub n_dim: usize,
    /// `[lo, hi]` per spatial axis (default `[0, 1]` on each).
    pub grid_boundaries: Vec<[f64; 2]>,
}

impl Default for GridEmbeddingConfig {
    fn default() -> Self {
        Self {
            in_channels: 1,
            n_dim: 2,
            grid_boundaries: vec![[0.0, 1.0]; 2],
        }
    }
}

/// neuraloperator's `GridEmbedding2D` / `GridEmbeddingND`.
#[derive(Debug, Clone)]
pub struct GridEmbedding {
    cfg: GridEmbeddingConfig,
}

impl GridEmbedding {
    /// Checks the configuration.
    pub fn new(cfg: &GridEmbeddingConfig) -> Result<Self> {
        if cfg.n_dim == 0 || cfg.grid_boundaries.len() != cfg.n_dim {
            return Err(LayerError::InvalidConfig {
                layer: "GridEmbedding",
                reason: format!(
                    "need n_dim ≥ 1 and one [lo, hi] per axis; got n_dim {} and {} boundaries",
                    cfg.n_dim,
                    cfg.grid_boundaries.len()
                ),
            });
        }
        Ok(Self { cfg: cfg.clone() })
    }

    /// The number of output channels.
    pub fn out_channels(&self) -> usize {
        self.cfg.in_channels + self.cfg.n_dim
    }
}

impl Module for GridEmbedding {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() != self.cfg.n_dim + 2 || dims[1] != self.cfg.in_channels {
            return Err(LayerError::Shape {
                layer: "GridEmbedding",
                got: dims,
                expected: format!(
                    "[batch, {} channels] followed by {} spatial axes",
                    self.cfg.in_channels, self.cfg.n_dim
                ),
            }
            .into());
        }
        let mut parts = vec![x.clone()];
        for (axis, [lo, hi]) in self.cfg.grid_boundaries.iter().enumerate() {
            let n = dims[axis + 2];
            let coords: Vec<f64> = (0..n)
                .map(|i| lo + (hi - lo) * i as f64 / n as f64)
                .collect();
            let mut shape = vec![1; dims.len()];
            shape[axis + 2] = n;
            let mut full = dims.clone();
            full[1] = 1;
            let c = Tensor::from_vec(coords, shape, x.device())?
                .to_dtype(x.dtype())?
                .broadcast_as(full)?;
            parts.push(c.contiguous()?);
        }
        Tensor::cat(&parts, 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, IndexOp};

    #[test]
    fn appends_periodic_linspace_coordinates() -> Result<()> {
        let emb = GridEmbedding::new(&GridEmbeddingConfig {
            in_channels: 1,
            ..Default::default()
        })?;
        let x = Tensor::zeros((2, 1, 4, 5), DType::F64, &Device::Cpu)?;
        let y = emb.forward(&x)?;
        assert_eq!(y.dims(), &[2, 3, 4, 5]);
        let at = |b: usize, c: usize, i: usize, j: usize| {
            y.i((b, c, i, j)).and_then(|t| t.to_scalar::<f64>())
        };
        assert_eq!(at(1, 1, 3, 0)?, 0.75); // axis 0: i/4
        assert_eq!(at(1, 1, 3, 4)?, 0.75);
        assert_eq!(at(0, 2, 0, 2)?, 0.4); // axis 1: j/5
        assert!(emb
            .forward(&Tensor::zeros((2, 2, 4, 5), DType::F64, &Device::Cpu)?)
            .is_err());
        assert!(GridEmbedding::new(&GridEmbeddingConfig {
            n_dim: 1,
            ..Default::default()
        })
        .is_err());
        Ok(())
    }
}
