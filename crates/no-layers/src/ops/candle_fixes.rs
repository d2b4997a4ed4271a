//! Every workaround for a candle 0.11 bug that a composite path still needs, in one place.
//!
//! Each function here replaces a candle op whose gradient is wrong or missing. Each has two tests: one that shows the
//! candle bug is still there (it fails once candle fixes or changes the op, which is the
//! signal to remove the workaround) and one that checks the workaround against finite
//! differences and against candle's forward.
//!
//! | candle op | bug | workaround |
//! |---|---|---|
//! | `conv2d` with stride > 1 | backward fails ("shape mismatch in add") when `(H+2p−k) % s ≠ (W+2p−k) % s` (output padding taken from H for both axes) | [`conv2d`]: pad explicitly and crop the rows/columns no window reads, so both remainders are 0 |
//!
//! [`conv2d`] is the composite path of [`crate::ops::conv2d::conv2d`] (every device other
//! than the CPU, and the CPU under [`crate::ops::composite_only`]). The resizes of CNO and
//! the U-Net run as products with per-axis matrices
//! ([`crate::layers::resample::Resampler`]), not through candle's `upsample_*` ops, and no
//! layer uses candle's `conv1d` or `conv_transpose*`: their workarounds were removed.

use crate::error::{LayerError, Result};
use candle_core::Tensor;

fn out_len(n: usize, k: usize, padding: usize, stride: usize) -> Result<usize> {
    if stride == 0 || n + 2 * padding < k {
        return Err(LayerError::InvalidConfig {
            layer: "convolution",
            reason: format!("input length {n} with padding {padding} is shorter than the kernel {k}, or stride {stride} is 0"),
        });
    }
    Ok((n + 2 * padding - k) / stride + 1)
}

/// `conv2d` (cross-correlation, zero padding, dilation 1) with gradients that are right
/// for any stride and any (non-square) shape: `x` `[B, C, H, W]`, `w` `[O, C/groups, kh, kw]`.
pub(crate) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let (oh, ow) = (
        out_len(h, kh, padding, stride)?,
        out_len(wd, kw, padding, stride)?,
    );
    let xp = x
        .pad_with_zeros(2, padding, padding)?
        .pad_with_zeros(3, padding, padding)?;
    // Keep exactly the rows/columns the windows read: (out−1)·s + k.
    let xp = xp
        .narrow(2, 0, (oh - 1) * stride + kh)?
        .narrow(3, 0, (ow - 1) * stride + kw)?;
    Ok(xp.conv2d(w, 0, stride, 1, groups)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig, GradCheckReport};
    use crate::init::{init_tensor, rng_for};
    use candle_core::{Shape, Var};

    fn var(shape: &[usize], seed: u64) -> candle_core::Result<Var> {
        Var::from_tensor(&init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut rng_for(seed, "fixes"),
        )?)
    }

    fn check<F: Fn() -> candle_core::Result<Tensor>>(
        f: F,
        vars: &[Var],
    ) -> candle_core::Result<GradCheckReport> {
        check_gradients(f, vars, &GradCheckConfig::default())
    }

    /// `true` when candle's own op still gets the gradient wrong (or cannot compute it).
    fn candle_is_wrong(r: candle_core::Result<GradCheckReport>) -> bool {
        r.map(|r| !r.passed()).unwrap_or(true)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> candle_core::Result<f64> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f64>()
    }

    #[test]
    fn candle_strided_conv2d_backward_on_non_square_input_still_fails() -> candle_core::Result<()> {
        let (x, w) = (var(&[1, 2, 7, 6], 4)?, var(&[2, 2, 3, 3], 5)?);
        let (xs, ws) = (x.clone(), w.clone());
        let r = check(
            move || xs.as_tensor().conv2d(ws.as_tensor(), 1, 2, 1, 1),
            &[x, w],
        );
        assert!(
            candle_is_wrong(r),
            "candle's strided conv2d backward works now: revisit ops::candle_fixes::conv2d"
        );
        Ok(())
    }

    #[test]
    fn conv2d_workaround_is_right() -> candle_core::Result<()> {
        for (shape, padding, stride) in [
            ([1, 2, 7, 6], 1, 2),
            ([2, 2, 9, 5], 0, 3),
            ([1, 2, 6, 6], 1, 1),
        ] {
            let (x, w) = (var(&shape, 6)?, var(&[3, 2, 3, 3], 7)?);
            let ours = conv2d(x.as_tensor(), w.as_tensor(), padding, stride, 1)?;
            let theirs = x.as_tensor().conv2d(w.as_tensor(), padding, stride, 1, 1)?;
            assert!(max_diff(&ours, &theirs)? < 1e-12);
            let (xs, ws) = (x.clone(), w.clone());
            let r = check(
                move || Ok(conv2d(xs.as_tensor(), ws.as_tensor(), padding, stride, 1)?),
                &[x, w],
            )?;
            assert!(r.passed(), "{shape:?}: {r:?}");
        }
        Ok(())
    }
}
