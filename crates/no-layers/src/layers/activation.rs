//! Point-wise activations shared by the models: exact (erf) GELU, as PyTorch's
//! `F.gelu` default and neuraloperator use, and leaky ReLU, as CNO uses.
//!
//! candle's `gelu` is the tanh approximation; `gelu_erf` is the exact one, and
//! [`Activation::Gelu`] computes that same exact form with the fused kernel of
//! [`crate::ops::gelu`] (one pass forward, one backward). Leaky ReLU is written as
//! `x if x > 0 else slope·x` by the fused kernel of [`crate::ops::leaky_relu`].

use crate::error::{LayerError, Result};
use candle_core::{Module, Tensor};
use serde::{Deserialize, Serialize};

/// A point-wise non-linearity.
///
/// Serialised tagged, `{"kind": "gelu"}`, `{"kind": "leaky_relu", "negative_slope": 0.01}`;
/// a parameterless one also reads from its bare name (`"tanh"`, as DeepXDE-style configs
/// write it), and the identity also as `"linear"`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind", from = "ActivationRepr")]
pub enum Activation {
    /// `x·Φ(x)` with the exact normal CDF (`erf`); PyTorch's `F.gelu` default.
    #[default]
    Gelu,
    /// `x` for `x ≥ 0`, `negative_slope·x` otherwise (PyTorch default slope 0.01).
    LeakyRelu {
        /// Slope on the negative half-line.
        negative_slope: f64,
    },
    /// `max(x, 0)`.
    Relu,
    /// `tanh(x)`.
    Tanh,
    /// `x·σ(x)` (SiLU, swish).
    Silu,
    /// The logistic sigmoid `σ(x) = 1/(1 + e^{−x})`.
    Sigmoid,
    /// The identity (also read as `"linear"`).
    #[serde(alias = "linear")]
    Identity,
}

/// What an [`Activation`] is read from: the tagged form or a bare name.
#[derive(Deserialize)]
#[serde(untagged)]
enum ActivationRepr {
    Name(ActivationName),
    Tagged(TaggedActivation),
}

/// The bare names of the parameterless activations.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case")]
enum ActivationName {
    Gelu,
    Relu,
    Tanh,
    Silu,
    Sigmoid,
    #[serde(alias = "linear")]
    Identity,
}

/// The tagged form, as [`Activation`] serialises.
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
enum TaggedActivation {
    Gelu,
    LeakyRelu {
        negative_slope: f64,
    },
    Relu,
    Tanh,
    Silu,
    Sigmoid,
    #[serde(alias = "linear")]
    Identity,
}

impl From<ActivationRepr> for Activation {
    fn from(r: ActivationRepr) -> Self {
        match r {
            ActivationRepr::Name(n) => match n {
                ActivationName::Gelu => Self::Gelu,
                ActivationName::Relu => Self::Relu,
                ActivationName::Tanh => Self::Tanh,
                ActivationName::Silu => Self::Silu,
                ActivationName::Sigmoid => Self::Sigmoid,
                ActivationName::Identity => Self::Identity,
            },
            ActivationRepr::Tagged(t) => match t {
                TaggedActivation::Gelu => Self::Gelu,
                TaggedActivation::LeakyRelu { negative_slope } => {
                    Self::LeakyRelu { negative_slope }
                }
                TaggedActivation::Relu => Self::Relu,
                TaggedActivation::Tanh => Self::Tanh,
                TaggedActivation::Silu => Self::Silu,
                TaggedActivation::Sigmoid => Self::Sigmoid,
                TaggedActivation::Identity => Self::Identity,
            },
        }
    }
}

impl Activation {
    /// Leaky ReLU with PyTorch's default slope 0.01.
    pub fn leaky_relu() -> Self {
        Self::LeakyRelu {
            negative_slope: 0.01,
        }
    }

    /// Checks the parameters (a finite slope).
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::LeakyRelu { negative_slope } if !negative_slope.is_finite() => {
                Err(LayerError::InvalidConfig {
                    layer: "Activation",
                    reason: format!("leaky ReLU slope must be finite, got {negative_slope}"),
                })
            }
            _ => Ok(()),
        }
    }
}

/// Exact GELU, `x·(1 + erf(x/√2))/2` (the fused kernel of [`crate::ops::gelu`] on the CPU).
pub fn gelu(x: &Tensor) -> candle_core::Result<Tensor> {
    crate::ops::gelu::gelu(x)
}

/// Leaky ReLU, `max(x,0) + slope·min(x,0)`.
pub fn leaky_relu(x: &Tensor, negative_slope: f64) -> candle_core::Result<Tensor> {
    crate::ops::leaky_relu::leaky_relu(x, negative_slope)
}

impl Module for Activation {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Self::Gelu => gelu(x),
            Self::LeakyRelu { negative_slope } => leaky_relu(x, *negative_slope),
            // The fused kernel: candle's `relu` values and gradient (passed where x ≥ 0).
            Self::Relu => crate::ops::relu::relu(x),
            Self::Tanh => crate::ops::tanh::tanh(x),
            Self::Silu => x.silu(),
            Self::Sigmoid => candle_nn::ops::sigmoid(x),
            Self::Identity => Ok(x.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use candle_core::{Device, Var};

    #[test]
    fn gelu_is_the_exact_erf_form() -> candle_core::Result<()> {
        // Reference values of x·Φ(x) (Φ the standard normal CDF), scipy.stats.norm.cdf.
        let x = Tensor::new(&[-3.0f64, -1.0, 0.0, 0.5, 2.0], &Device::Cpu)?;
        let want = [
            -0.00404969409489028,
            -0.15865525393145707,
            0.0,
            0.34573123063700656,
            1.9544997361036416,
        ];
        let got = gelu(&x)?.to_vec1::<f64>()?;
        for (g, w) in got.iter().zip(want) {
            assert!((g - w).abs() < 1e-12, "{got:?}");
        }
        // The tanh approximation differs at the 1e-4 level, so this test tells them apart.
        let approx = x.gelu()?.to_vec1::<f64>()?;
        assert!(approx.iter().zip(want).any(|(a, w)| (a - w).abs() > 1e-5));
        Ok(())
    }

    #[test]
    fn leaky_relu_values_and_config() -> candle_core::Result<()> {
        let x = Tensor::new(&[-2.0f64, 0.0, 3.0], &Device::Cpu)?;
        assert_eq!(
            Activation::leaky_relu().forward(&x)?.to_vec1::<f64>()?,
            vec![-0.02, 0.0, 3.0]
        );
        assert!(Activation::LeakyRelu {
            negative_slope: f64::NAN
        }
        .validate()
        .is_err());
        let json =
            serde_json::to_string(&Activation::leaky_relu()).map_err(candle_core::Error::wrap)?;
        let back: Activation = serde_json::from_str(&json).map_err(candle_core::Error::wrap)?;
        assert_eq!(back, Activation::leaky_relu());
        Ok(())
    }

    #[test]
    fn silu_and_sigmoid_values() -> candle_core::Result<()> {
        let x = Tensor::new(&[-2.0f64, 0.0, 1.5], &Device::Cpu)?;
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let got = Activation::Sigmoid.forward(&x)?.to_vec1::<f64>()?;
        let silu = Activation::Silu.forward(&x)?.to_vec1::<f64>()?;
        for (i, v) in [-2.0f64, 0.0, 1.5].into_iter().enumerate() {
            assert!((got[i] - sig(v)).abs() < 1e-12, "{got:?}");
            assert!((silu[i] - v * sig(v)).abs() < 1e-12, "{silu:?}");
        }
        Ok(())
    }

    #[test]
    fn reads_tagged_forms_bare_names_and_linear() -> candle_core::Result<()> {
        let read = |s: &str| -> candle_core::Result<Activation> {
            serde_json::from_str(s).map_err(candle_core::Error::wrap)
        };
        for (text, want) in [
            (r#"{"kind": "gelu"}"#, Activation::Gelu),
            (r#"{"kind": "silu"}"#, Activation::Silu),
            (r#"{"kind": "linear"}"#, Activation::Identity),
            (r#""tanh""#, Activation::Tanh),
            (r#""relu""#, Activation::Relu),
            (r#""sigmoid""#, Activation::Sigmoid),
            (r#""silu""#, Activation::Silu),
            (r#""gelu""#, Activation::Gelu),
            (r#""linear""#, Activation::Identity),
            (r#""identity""#, Activation::Identity),
        ] {
            assert_eq!(read(text)?, want, "{text}");
        }
        assert!(read(r#""swish2""#).is_err());
        // Serialisation stays tagged.
        let json = serde_json::to_string(&Activation::Silu).map_err(candle_core::Error::wrap)?;
        assert_eq!(json, r#"{"kind":"silu"}"#);
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> candle_core::Result<()> {
        // Points away from 0, where leaky ReLU is not differentiable.
        let x = Var::from_tensor(&Tensor::new(
            &[-2.1f64, -0.7, -0.1, 0.2, 0.9, 3.3],
            &Device::Cpu,
        )?)?;
        for act in [
            Activation::Gelu,
            Activation::leaky_relu(),
            Activation::Tanh,
            Activation::Silu,
            Activation::Sigmoid,
        ] {
            let xs = x.clone();
            let r = check_gradients(
                move || act.forward(xs.as_tensor()),
                std::slice::from_ref(&x),
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "{act:?}: {r:?}");
        }
        Ok(())
    }
}
