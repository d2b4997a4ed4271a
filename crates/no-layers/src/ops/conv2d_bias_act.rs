//! A convolution, its per-channel bias and a rectifier as one pass at inference.
//!
//! A convolutional encoder layer (DeepONet-CNN's branch: four stride-2 3×3 convolutions,
//! each followed by its bias and a ReLU) ran as three ops, each writing a new feature map:
//! the convolution, then [`crate::ops::channel_affine::add_channel_bias`], then
//! [`crate::ops::relu::relu`]. When nothing records gradients, [`conv2d_bias_act`] runs the
//! convolution of [`crate::ops::conv2d`] and adds the bias and rectifies each group of
//! samples in place as soon as the convolution has written it, while it is in cache: two
//! passes over the map (12 MB on DeepONet-CNN's first layer at batch 32) and two
//! allocations fewer. The arithmetic is the separate ops'
//! (`t = y + b[c]`, then `t` where `t > 0`, else `slope·t`, exactly 0 for a slope of 0), so
//! the values are the same bit for bit.
//!
//! With gradients (training), or where [`crate::ops::fused_cpu`] says no, it is the three
//! ops one after the other, their gradients included.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use no_layers::ops::conv2d_bias_act::{conv2d_bias_act, ConvActivation};
//!
//! let x = Tensor::randn(0f32, 1.0, (2, 3, 9, 9), &Device::Cpu)?;
//! let w = Tensor::randn(0f32, 0.3, (4, 3, 3, 3), &Device::Cpu)?;
//! let b = Tensor::randn(0f32, 0.1, 4, &Device::Cpu)?;
//! let y = conv2d_bias_act(&x, &w, &b, 0, 2, ConvActivation::Relu)?;
//! assert_eq!(y.dims(), &[2, 4, 4, 4]);
//! assert!(y.flatten_all()?.min(0)?.to_scalar::<f32>()? >= 0.0);
//! # Ok::<(), candle_core::Error>(())
//! ```

use crate::cpu::im2col::Geometry;
use crate::cpu::map::{dispatch3, select_f32, select_f64};
use crate::ops::conv2d::{check_input, check_weight, checked_geometry, forward_then, Sizes};
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// What follows the bias.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ConvActivation {
    /// Nothing: the convolution and its bias.
    Identity,
    /// `max(t, 0)` ([`crate::ops::relu::relu`], candle's gradient convention).
    Relu,
    /// `t` where `t > 0`, `negative_slope·t` elsewhere ([`crate::ops::leaky_relu::leaky_relu`]).
    LeakyRelu {
        /// Slope on the negative half-line.
        negative_slope: f64,
    },
}

impl ConvActivation {
    /// The rectifier's negative slope, `None` for the identity.
    fn slope(self) -> Option<f64> {
        match self {
            Self::Identity => None,
            Self::Relu => Some(0.0),
            Self::LeakyRelu { negative_slope } => Some(negative_slope),
        }
    }

    /// The separate op, as the composite path runs it.
    fn apply(self, t: &Tensor) -> Result<Tensor> {
        match self {
            Self::Identity => Ok(t.clone()),
            Self::Relu => crate::ops::relu::relu(t),
            Self::LeakyRelu { negative_slope } => {
                crate::ops::leaky_relu::leaky_relu(t, negative_slope)
            }
        }
    }
}

/// `act(conv2d(x, weight) + bias[c])`: [`crate::ops::conv2d::conv2d`] (zero padding
/// `padding`, step `stride`) with `bias` `[O]` added per output channel, then `act`. One
/// in-place pass after the convolution when no operand records gradients and the fused CPU
/// path applies; the three ops otherwise (differentiable).
pub fn conv2d_bias_act(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    padding: usize,
    stride: usize,
    act: ConvActivation,
) -> Result<Tensor> {
    let (geometry, out_channels) = checked_geometry(x, weight, padding, stride)?;
    if bias.dims() != [out_channels] {
        candle_core::bail!(
            "conv2d_bias_act: bias {:?} for {out_channels} output channels (expected [{out_channels}])",
            bias.dims()
        );
    }
    let tracked = x.track_op() || weight.track_op() || bias.track_op();
    if tracked || !crate::ops::fused_cpu(&[x, weight, bias]) {
        let y = crate::ops::conv2d::conv2d(x, weight, padding, stride)?;
        let y = crate::ops::channel_affine::add_channel_bias(&y, bias)?;
        return act.apply(&y);
    }
    let op = ConvBiasAct {
        geometry,
        out_channels,
        slope: act.slope(),
    };
    x.contiguous()?
        .apply_op3_no_bwd(&weight.contiguous()?, &bias.contiguous()?, &op)
}

/// The forward-only fused op (input, weight, bias) → output.
#[derive(Debug, Clone, Copy)]
struct ConvBiasAct {
    geometry: Geometry,
    out_channels: usize,
    /// The rectifier's negative slope; `None`: bias only.
    slope: Option<f64>,
}

/// One element after the convolution: the bias, then the rectifier, as the separate ops
/// compute them (branch-free selects, so that the loop vectorises).
/// `zero` says whether the slope was exactly 0 in `f64`, as [`crate::ops::leaky_relu`]
/// tests it (the negative side is then exactly 0, not `0·t`).
trait Epilogue: Copy + Send + Sync {
    fn finish(self, bias: Self, slope: Option<Self>, zero: bool) -> Self;
}

impl Epilogue for f32 {
    #[inline(always)]
    fn finish(self, bias: f32, slope: Option<f32>, zero: bool) -> f32 {
        let t = self + bias;
        match slope {
            None => t,
            Some(s) => select_f32(t > 0.0, t, select_f32(zero, 0.0, s * t)),
        }
    }
}

impl Epilogue for f64 {
    #[inline(always)]
    fn finish(self, bias: f64, slope: Option<f64>, zero: bool) -> f64 {
        let t = self + bias;
        match slope {
            None => t,
            Some(s) => select_f64(t > 0.0, t, select_f64(zero, 0.0, s * t)),
        }
    }
}

/// Adds `bias` and rectifies `out` (whole samples `[n, O, P]`) in place: on `threads`
/// threads, a task per plane, or plane by plane on this one.
fn finish_in_place<T: Epilogue>(
    out: &mut [T],
    bias: &[T],
    (positions, threads): (usize, usize),
    (slope, zero): (Option<T>, bool),
) {
    let o = bias.len();
    if positions == 0 || o == 0 {
        return;
    }
    let plane = |k: usize, plane: &mut [T]| {
        let b = bias[k % o];
        // The slope is matched outside the loop, so each loop body is branch-free.
        match slope {
            None => plane.iter_mut().for_each(|v| *v = v.finish(b, None, zero)),
            Some(s) => plane
                .iter_mut()
                .for_each(|v| *v = v.finish(b, Some(s), zero)),
        }
    };
    if threads > 1 {
        out.par_chunks_mut(positions)
            .enumerate()
            .for_each(|(k, p)| plane(k, p));
    } else {
        out.chunks_mut(positions)
            .enumerate()
            .for_each(|(k, p)| plane(k, p));
    }
}

impl CustomOp3 for ConvBiasAct {
    fn name(&self) -> &'static str {
        "conv2d-bias-act"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, o) = (&self.geometry, self.out_channels);
        let batch = check_input(self.name(), g, l1)?;
        check_weight(self.name(), g, o, l2)?;
        let sz = Sizes::new(g, batch, o);
        let positions = g.positions();
        let zero = self.slope == Some(0.0);
        let slope = self.slope;
        let out = dispatch3(
            self.name(),
            (s1, l1),
            (s2, l2),
            (s3, l3),
            |x, w, b| {
                let slope = (slope.map(|s| s as f32), zero);
                forward_then(g, &sz, x, w, |y, threads| {
                    finish_in_place(y, b, (positions, threads), slope)
                })
            },
            |x, w, b| {
                forward_then(g, &sz, x, w, |y, threads| {
                    finish_in_place(y, b, (positions, threads), (slope, zero))
                })
            },
        )?;
        Ok((out, Shape::from((batch, o, g.ho, g.wo))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};

    fn bits(t: &Tensor) -> Result<Vec<u64>> {
        Ok(t.flatten_all()?
            .to_dtype(DType::F64)?
            .to_vec1::<f64>()?
            .into_iter()
            .map(f64::to_bits)
            .collect())
    }

    /// The fused pass gives the three ops' bits, in both dtypes, for every activation,
    /// on the grouped, one-sample and Winograd paths of the convolution.
    #[test]
    fn the_fused_pass_has_the_bits_of_the_three_ops() -> Result<()> {
        let acts = [
            ConvActivation::Identity,
            ConvActivation::Relu,
            ConvActivation::LeakyRelu {
                negative_slope: 0.1,
            },
        ];
        // (batch, c_in, c_out, size, padding, stride): a group of strided samples, strided
        // samples one per group (over 1,024 outputs each), one stride-1 sample (blocked),
        // and a 3×3 stride-1 map of 32 channels (Winograd).
        let shapes = [
            (5, 3, 4, 13, 0, 2),
            (2, 1, 4, 70, 0, 2),
            (1, 2, 3, 11, 1, 1),
            (2, 32, 32, 34, 1, 1),
        ];
        for dtype in [DType::F32, DType::F64] {
            for (seed, &(n, c, o, size, padding, stride)) in shapes.iter().enumerate() {
                let dev = Device::Cpu;
                let x = Tensor::randn(0f64, 1.0, (n, c, size, size), &dev)?.to_dtype(dtype)?;
                let w = Tensor::randn(0f64, 0.3, (o, c, 3, 3), &dev)?.to_dtype(dtype)?;
                // Biases that cancel some outputs exactly are not needed: the select is
                // the same comparison either way; a wide spread makes both signs common.
                let b = Tensor::randn(0f64, 0.5 + seed as f64, o, &dev)?.to_dtype(dtype)?;
                for act in acts {
                    let fused = conv2d_bias_act(&x, &w, &b, padding, stride, act)?;
                    let y = crate::ops::conv2d::conv2d(&x, &w, padding, stride)?;
                    let y = crate::ops::channel_affine::add_channel_bias(&y, &b)?;
                    let separate = act.apply(&y)?;
                    assert_eq!(fused.dims(), separate.dims());
                    assert_eq!(
                        bits(&fused)?,
                        bits(&separate)?,
                        "{dtype:?} {act:?} {n}×{c}→{o}"
                    );
                }
            }
        }
        Ok(())
    }

    /// With a variable among the operands it is the three differentiable ops: gradients
    /// reach the input, the weight and the bias.
    #[test]
    fn tracked_operands_keep_their_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f64, 1.0, (2, 2, 7, 7), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f64, 0.3, (3, 2, 3, 3), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f64, 0.3, 3, &dev)?)?;
        let y = conv2d_bias_act(
            x.as_tensor(),
            w.as_tensor(),
            b.as_tensor(),
            1,
            2,
            ConvActivation::Relu,
        )?;
        let grads = y.sum_all()?.backward()?;
        for v in [&x, &w, &b] {
            assert!(grads.get(v.as_tensor()).is_some());
        }
        Ok(())
    }

    #[test]
    fn a_bias_of_the_wrong_length_is_an_error() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::zeros((1, 2, 5, 5), DType::F32, &dev)?;
        let w = Tensor::zeros((3, 2, 3, 3), DType::F32, &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        let err = conv2d_bias_act(&x, &w, &b, 0, 1, ConvActivation::Relu)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("expected [3]"), "{err}");
        Ok(())
    }
}
