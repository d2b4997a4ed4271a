//! The fully connected nets of DeepONet's branch and trunk, on
//! [`no_layers::layers::dense::Dense`].

use super::Activation;
use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use no_layers::layers::dense::{Dense, DenseConfig};

/// A DeepXDE-style fully connected net: [`Dense`] layers of the given sizes with
/// Glorot-normal weights and zero biases, the activation after every hidden layer,
/// optionally after the last one too, and optional identity links between consecutive
/// layers of equal width. Layer `i`'s variables are `{prefix}.{i}.weight` and
/// `{prefix}.{i}.bias`.
#[derive(Debug, Clone)]
pub(crate) struct Fnn {
    layers: Vec<Dense>,
    activation: Activation,
    last_activation: bool,
    residual: bool,
}

impl Fnn {
    /// `sizes = [input, hidden..., output]`, layers named `{prefix}.{i}` in `vb`.
    pub(crate) fn new(
        sizes: &[usize],
        activation: Activation,
        last_activation: bool,
        residual: bool,
        vb: VarBuilder,
    ) -> candle_core::Result<Self> {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, pair)| Dense::new(DenseConfig::new(pair[0], pair[1]), vb.pp(i.to_string())))
            .collect::<no_layers::Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            activation,
            last_activation,
            residual,
        })
    }

    /// The weights and biases, layer by layer.
    pub(crate) fn parameters(&self) -> Vec<&Tensor> {
        self.layers
            .iter()
            .flat_map(|l| std::iter::once(l.weight()).chain(l.bias()))
            .collect()
    }

    /// Number of parameters.
    pub(crate) fn param_count(&self) -> usize {
        self.layers.iter().map(Dense::param_count).sum()
    }

    /// The hidden stack (every layer but the last) on rows `x`.
    fn hidden(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut h = x.clone();
        for layer in &self.layers[..self.layers.len().saturating_sub(1)] {
            let mut z = layer.forward_activated(&h, &self.activation)?;
            // Identity links only inside the hidden stack (never into the linear output).
            if self.residual && z.dims() == h.dims() {
                z = (z + &h)?;
            }
            h = z;
        }
        Ok(h)
    }

    /// The output on rows `x` `[N, F]` as `k` blocks `[k, P/k, N]` (block `k` holds output
    /// features `k·P/k ..`, transposed), without rearranging `[N, P]` with a strided copy
    /// (on DeepONet-CNN's trunk, 10,000 × 800 values, that copy was half a forward): the
    /// last layer is applied as `W · hᵀ` ([`Dense::forward_blocks`]).
    pub(crate) fn forward_blocks(&self, x: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        let Some(last) = self.layers.last() else {
            candle_core::bail!("a network without layers has no output blocks");
        };
        let h = self.hidden(x)?;
        last.forward_blocks(&h, k, &self.last_act())
    }

    /// The activation of the last layer (the identity unless `last_activation`).
    fn last_act(&self) -> Activation {
        if self.last_activation {
            self.activation
        } else {
            Activation::Identity
        }
    }
}

impl Module for Fnn {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.hidden(x)?;
        let Some(last) = self.layers.last() else {
            return Ok(h);
        };
        last.forward_activated(&h, &self.last_act())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deeponet::{grid_coordinates, trunk_blocks};
    use candle_core::{DType, Device};
    use no_layers::init::SeededVarMap;

    #[test]
    fn output_blocks_equal_the_rearranged_output() -> candle_core::Result<()> {
        // Residual links, an activation on the last layer and two blocks: every branch of
        // `forward_blocks` against `forward` followed by the strided rearrangement.
        let vars = SeededVarMap::new(5);
        let vb = vars.var_builder(DType::F64, &Device::Cpu);
        let net = Fnn::new(&[2, 6, 6, 8], Activation::Tanh, true, true, vb)?;
        let x = grid_coordinates(4, 3, DType::F64, &Device::Cpu)?;
        let want = trunk_blocks(&net.forward(&x)?, 2)?;
        let got = net.forward_blocks(&x, 2)?;
        assert_eq!(got.dims(), &[2, 4, 12]);
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(0)?
            .to_scalar::<f64>()?;
        assert!(diff < 1e-14, "{diff}");
        assert!(net.forward_blocks(&x, 3).is_err());
        Ok(())
    }
}
