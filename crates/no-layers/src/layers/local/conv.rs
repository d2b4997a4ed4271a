//! "Same"-size 2-D convolution by im2col and one batched matmul, with periodic or
//! zero padding.
//!
//! Why not `Tensor::conv2d`? Its forward is fine, but its backward goes through
//! candle's direct-loop `conv_transpose2d`, about 6× slower than the forward, and it has
//! no circular padding. Here
//! the input is padded (circularly by `cat` of `narrow`s, or with zeros), the `kh·kw`
//! shifted windows are stacked, and the channel/tap contraction is one batched
//! `matmul` (per batch entry and group). Every step is a plain candle op, so autograd is exact and the
//! backward is two more matmuls plus the adjoints of `narrow`/`stack`.
//!
//! Both the finite-difference kernel ([`crate::layers::local::finite_difference`]) and the DISCO kernel
//! ([`crate::layers::local::disco`]) run through [`conv2d_same`].

use crate::error::{LayerError, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

/// How a local kernel sees the outside of the grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PaddingMode {
    /// Circular (periodic) padding: the grid is a torus. Commutes with circular shifts.
    #[default]
    Periodic,
    /// Zero padding: the function is zero outside the grid.
    Zeros,
}

/// Pads `x` by `lo`/`hi` entries on axis `dim`, periodically or with zeros.
pub fn pad_axis(x: &Tensor, dim: usize, lo: usize, hi: usize, mode: PaddingMode) -> Result<Tensor> {
    if lo == 0 && hi == 0 {
        return Ok(x.clone());
    }
    let n = x.dim(dim)?;
    match mode {
        PaddingMode::Zeros => Ok(x.pad_with_zeros(dim, lo, hi)?),
        PaddingMode::Periodic => {
            if lo > n || hi > n {
                return Err(LayerError::Shape {
                    layer: "periodic padding",
                    got: x.dims().to_vec(),
                    expected: format!("axis {dim} of length at least {} (the padding)", lo.max(hi)),
                });
            }
            let mut parts = Vec::with_capacity(3);
            // Contiguous pieces keep `cat` on its fast block-copy path.
            let x = x.contiguous()?;
            if lo > 0 {
                parts.push(x.narrow(dim, n - lo, lo)?.contiguous()?);
            }
            parts.push(x.clone());
            if hi > 0 {
                parts.push(x.narrow(dim, 0, hi)?.contiguous()?);
            }
            Ok(Tensor::cat(&parts, dim)?)
        }
    }
}

/// Cross-correlation (PyTorch's `conv2d`) of `x` `[B, C, H, W]` with `w`
/// `[O, C/groups, kh, kw]` (odd `kh`, `kw`), stride 1, output `[B, O, H, W]`: the
/// input is padded by `kh/2`, `kw/2` on each side with `mode`.
pub fn conv2d_same(x: &Tensor, w: &Tensor, mode: PaddingMode, groups: usize) -> Result<Tensor> {
    let (b, c, h, wd) = x.dims4().map_err(|_| LayerError::Shape {
        layer: "conv2d_same",
        got: x.dims().to_vec(),
        expected: "[batch, channels, height, width]".into(),
    })?;
    let (o, cg, kh, kw) = w.dims4().map_err(|_| LayerError::Shape {
        layer: "conv2d_same (kernel)",
        got: w.dims().to_vec(),
        expected: "[out, in/groups, kh, kw]".into(),
    })?;
    if groups == 0
        || c % groups != 0
        || o % groups != 0
        || cg * groups != c
        || kh % 2 == 0
        || kw % 2 == 0
    {
        return Err(LayerError::Shape {
            layer: "conv2d_same",
            got: vec![b, c, h, wd, o, cg, kh, kw, groups],
            expected: format!(
                "input channels {c} = groups {groups} × kernel in-channels {cg}, out channels divisible by groups, odd kernel sizes"
            ),
        });
    }
    let fast = groups == 1 && crate::ops::fused_cpu(&[x, w]);
    if fast && mode == PaddingMode::Zeros && kh == kw {
        // The unfold reads zeros outside the grid itself: no padded copy either way.
        return Ok(crate::ops::conv2d::conv2d(x, w, kh / 2, 1)?);
    }
    // Batch-first throughout and every `cat` on contiguous pieces: candle concatenates
    // contiguous tensors with block copies but falls back to an element-wise strided
    // copy otherwise (measured 4× slower for the whole layer).
    let xp = pad_axis(&x.contiguous()?, 2, kh / 2, kh / 2, mode)?;
    let xp = pad_axis(&xp, 3, kw / 2, kw / 2, mode)?;
    if fast {
        // One unfold + GEMM with the fold as backward (`crate::ops::conv2d`): the windows below
        // cost nine copies forward and nine zero-padded gradients backward, which made
        // this 40 % of a LocalNO training step.
        return Ok(crate::ops::conv2d::conv2d(&xp, w, 0, 1)?);
    }
    let mut windows = Vec::with_capacity(kh * kw);
    for a in 0..kh {
        for bb in 0..kw {
            windows.push(xp.narrow(2, a, h)?.narrow(3, bb, wd)?.contiguous()?);
        }
    }
    // [B, C, kh·kw, H, W] → [B, g, (C/g)·kh·kw, H·W], matching the weight's
    // [O, C/g, kh, kw] → [g, O/g, (C/g)·kh·kw] layout.
    let k = cg * kh * kw;
    let cols = Tensor::stack(&windows, 2)?.reshape((b, groups, k, h * wd))?;
    let wm = w
        .reshape((groups, o / groups, k))?
        .broadcast_as((b, groups, o / groups, k))?
        .contiguous()?;
    let out = wm.matmul(&cols)?; // [B, g, O/g, H·W]
    Ok(out.reshape((b, o, h, wd))?)
}

/// `conv2d_same(x, a, mode_a, 1) + conv2d_same(x, b, mode_b, 1)`: two "same"
/// convolutions of one input (LocalNO's finite-difference and DISCO kernels), computed as
/// one convolution with the summed kernel when the kernels have one shape.
///
/// With equal padding modes that is exact linearity. With one periodic and one zero-padded
/// kernel, the sum is convolved with zero padding and the periodic kernel's wrap-around
/// is added on the border ([`crate::ops::periodic_border`]); that path runs on the CPU in
/// `f32`/`f64`. Elsewhere, or for kernels of different shapes, the two convolutions run
/// separately. Same values up to rounding either way.
pub fn conv2d_same_sum(
    x: &Tensor,
    (a, mode_a): (&Tensor, PaddingMode),
    (b, mode_b): (&Tensor, PaddingMode),
) -> Result<Tensor> {
    let fused_border = crate::ops::fused_cpu(&[x, a, b]);
    if a.dims() != b.dims() || (mode_a != mode_b && !fused_border) {
        return Ok((conv2d_same(x, a, mode_a, 1)? + conv2d_same(x, b, mode_b, 1)?)?);
    }
    let sum = (a + b)?;
    if mode_a == mode_b {
        return conv2d_same(x, &sum, mode_a, 1);
    }
    let periodic = if mode_a == PaddingMode::Periodic {
        a
    } else {
        b
    };
    let main = conv2d_same(x, &sum, PaddingMode::Zeros, 1)?;
    Ok(crate::ops::periodic_border::add_periodic_border(
        &main, x, periodic,
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::init_tensor;
    use candle_core::{Device, Shape, Var};

    fn randn(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
        init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut crate::init::rng_for(seed, "local_conv"),
        )
    }

    #[test]
    fn zero_padding_matches_candle_conv2d() -> Result<()> {
        for groups in [1, 2] {
            let x = randn(&[2, 4, 5, 7], 1)?;
            let w = randn(&[6, 4 / groups, 3, 5], 2)?;
            let ours = conv2d_same(&x, &w, PaddingMode::Zeros, groups)?;
            let theirs_same = x
                .pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 2, 2)?
                .conv2d(&w, 0, 1, 1, groups)?;
            let err = (ours - theirs_same)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(err < 1e-12, "groups {groups}: max diff {err}");
        }
        Ok(())
    }

    #[test]
    fn periodic_padding_wraps_around() -> Result<()> {
        let x = Tensor::arange(0f64, 5.0, &Device::Cpu)?.reshape((1, 1, 1, 5))?;
        let p = pad_axis(&x, 3, 2, 1, PaddingMode::Periodic)?;
        assert_eq!(
            p.flatten_all()?.to_vec1::<f64>()?,
            vec![3.0, 4.0, 0.0, 1.0, 2.0, 3.0, 4.0, 0.0]
        );
        assert!(pad_axis(&x, 2, 2, 0, PaddingMode::Periodic).is_err());
        Ok(())
    }

    #[test]
    fn rejects_even_kernels_and_bad_groups() -> Result<()> {
        let x = randn(&[1, 4, 5, 5], 1)?;
        assert!(conv2d_same(&x, &randn(&[2, 4, 2, 3], 2)?, PaddingMode::Zeros, 1).is_err());
        assert!(conv2d_same(&x, &randn(&[3, 2, 3, 3], 2)?, PaddingMode::Zeros, 2).is_err());
        assert!(conv2d_same(&x, &randn(&[4, 4, 3, 3], 2)?, PaddingMode::Zeros, 2).is_err());
        Ok(())
    }

    /// The merged sum equals the two separate convolutions, values and gradients, for every
    /// pair of padding modes, and falls back for kernels of different shapes.
    #[test]
    fn summed_convolutions_equal_the_separate_ones() -> Result<()> {
        use PaddingMode::{Periodic, Zeros};
        let cases = [
            (Periodic, Zeros, [3, 3]),
            (Zeros, Periodic, [3, 5]),
            (Periodic, Periodic, [3, 3]),
            (Zeros, Zeros, [5, 3]),
        ];
        for (seed, (ma, mb, [kh, kw])) in cases.into_iter().enumerate() {
            let seed = 10 * seed as u64;
            let x = Var::from_tensor(&randn(&[2, 3, 6, 7], seed)?)?;
            let a = Var::from_tensor(&randn(&[4, 3, kh, kw], seed + 1)?)?;
            let b_shape = if seed == 30 {
                [4, 3, 3, 3]
            } else {
                [4, 3, kh, kw]
            };
            let b = Var::from_tensor(&randn(&b_shape, seed + 2)?)?;
            let r = randn(&[2, 4, 6, 7], seed + 3)?;
            let separate = (conv2d_same(x.as_tensor(), a.as_tensor(), ma, 1)?
                + conv2d_same(x.as_tensor(), b.as_tensor(), mb, 1)?)?;
            let merged = conv2d_same_sum(x.as_tensor(), (a.as_tensor(), ma), (b.as_tensor(), mb))?;
            let diff = (&merged - &separate)?
                .abs()?
                .max_all()?
                .to_scalar::<f64>()?;
            assert!(diff < 1e-12, "{ma:?} + {mb:?}: {diff}");
            let g_sep = (separate * &r)?.sum_all()?.backward()?;
            let g_mer = (merged * &r)?.sum_all()?.backward()?;
            for v in [&x, &a, &b] {
                let (Some(p), Some(q)) = (g_mer.get(v), g_sep.get(v)) else {
                    panic!("{ma:?} + {mb:?}: a gradient is missing");
                };
                let diff = (p - q)?.abs()?.max_all()?.to_scalar::<f64>()?;
                assert!(diff < 1e-11, "{ma:?} + {mb:?} gradient: {diff}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        for (mode, groups) in [(PaddingMode::Periodic, 1), (PaddingMode::Zeros, 2)] {
            let x = Var::from_tensor(&randn(&[2, 2, 4, 5], 3)?)?;
            let w = Var::from_tensor(&randn(&[4, 2 / groups, 3, 3], 4)?)?;
            let (xs, ws) = (x.clone(), w.clone());
            let f = move || -> candle_core::Result<Tensor> {
                Ok(conv2d_same(xs.as_tensor(), ws.as_tensor(), mode, groups)?)
            };
            let r = check_gradients(f, &[x, w], &GradCheckConfig::default())?;
            assert!(r.passed(), "{mode:?}: {r:?}");
        }
        Ok(())
    }
}
