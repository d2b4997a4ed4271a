//! Every workaround for a candle 0.11 bug, in one place.
//!
//! Each function here replaces a candle op whose gradient is wrong or missing (measured
//! in `shared/notes/candle-and-friends.md` §2). Each has two tests: one that shows the
//! candle bug is still there (it fails once candle fixes or changes the op, which is the
//! signal to revisit the workaround) and one that checks the workaround against finite
//! differences and against candle's forward.
//!
//! | candle op | bug | workaround |
//! |---|---|---|
//! | `conv1d` | weight gradient silently wrong (kernel-copy bug); input gradient wrong with padding 0 (`col2im` path) | [`conv1d`]: `conv2d` on `[B, C, 1, L]` |
//! | `conv2d` with stride > 1 | backward fails when `(H+2p−k) % s ≠ (W+2p−k) % s` (output padding taken from H for both axes) | [`conv2d`]: pad explicitly and crop the rows/columns no window reads, so both remainders are 0 |
//! | `upsample_nearest2d` | backward *overwrites* the accumulated input gradient; only integer, equal factors | [`upsample_nearest2d`]: `index_select` per axis (backward is `index_add`) |
//! | `upsample_bilinear2d` | no backward | [`upsample_bilinear2d`]: per-axis interpolation matrices and `matmul` |
//!
//! Bicubic and antialiased resampling, which candle lacks entirely, are in
//! [`crate::layers::resample`].

use crate::error::{LayerError, Result};
use candle_core::{Tensor, D};

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
pub fn conv2d(
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

/// `conv1d` (zero padding, dilation 1) through [`conv2d`] on `[B, C, 1, L]`:
/// `x` `[B, C, L]`, `w` `[O, C/groups, k]`.
pub fn conv1d(
    x: &Tensor,
    w: &Tensor,
    padding: usize,
    stride: usize,
    groups: usize,
) -> Result<Tensor> {
    // Padding and stride act on the length axis only (kernel height 1, input height 1).
    let xp = x.pad_with_zeros(2, padding, padding)?.unsqueeze(2)?;
    let (_, _, k) = w.dims3()?;
    let l = xp.dim(3)?;
    let ol = out_len(l, k, 0, stride)?;
    let xp = xp.narrow(3, 0, (ol - 1) * stride + k)?;
    Ok(xp
        .conv2d(&w.unsqueeze(2)?, 0, stride, 1, groups)?
        .squeeze(2)?)
}

/// Nearest-neighbour resize of `[B, C, H, W]` to `[B, C, oh, ow]` (PyTorch's `"nearest"`:
/// source index `⌊i·n_in/n_out⌋`), any sizes, with an accumulating backward.
pub fn upsample_nearest2d(x: &Tensor, oh: usize, ow: usize) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    let idx = |n_in: usize, n_out: usize| -> Result<Tensor> {
        let v: Vec<u32> = (0..n_out)
            .map(|i| ((i * n_in) / n_out).min(n_in - 1) as u32)
            .collect();
        Ok(Tensor::from_vec(v, n_out, x.device())?)
    };
    Ok(x.index_select(&idx(h, oh)?, 2)?
        .index_select(&idx(w, ow)?, 3)?)
}

/// Row-major `[n_out, n_in]` matrix of PyTorch's linear interpolation of one axis.
pub fn linear_interpolation_matrix(n_in: usize, n_out: usize, align_corners: bool) -> Vec<f64> {
    let mut m = vec![0.0; n_out * n_in];
    for i in 0..n_out {
        let src = if align_corners {
            if n_out > 1 {
                i as f64 * (n_in as f64 - 1.0) / (n_out as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((i as f64 + 0.5) * n_in as f64 / n_out as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(n_in - 1);
        let i1 = (i0 + 1).min(n_in - 1);
        let t = src - i0 as f64;
        m[i * n_in + i0] += 1.0 - t;
        m[i * n_in + i1] += t;
    }
    m
}

/// Bilinear resize of `[B, C, H, W]` to `[B, C, oh, ow]` (PyTorch's `"bilinear"`, same
/// forward as candle's `upsample_bilinear2d`) as two matmuls, so it has a backward.
pub fn upsample_bilinear2d(
    x: &Tensor,
    oh: usize,
    ow: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (_, _, h, w) = x.dims4()?;
    if oh == 0 || ow == 0 {
        return Err(LayerError::Shape {
            layer: "upsample_bilinear2d",
            got: x.dims().to_vec(),
            expected: "a positive output size".into(),
        });
    }
    let mat_t = |n_in: usize, n_out: usize| -> Result<Tensor> {
        let m = Tensor::from_vec(
            linear_interpolation_matrix(n_in, n_out, align_corners),
            (n_out, n_in),
            x.device(),
        )?;
        Ok(m.t()?.contiguous()?.to_dtype(x.dtype())?)
    };
    let y = x.contiguous()?.broadcast_matmul(&mat_t(w, ow)?)?; // [B, C, H, ow]
    let y = y
        .transpose(D::Minus1, D::Minus2)?
        .contiguous()?
        .broadcast_matmul(&mat_t(h, oh)?)?; // [B, C, ow, oh]
    Ok(y.transpose(D::Minus1, D::Minus2)?.contiguous()?)
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
    fn candle_conv1d_gradient_is_still_wrong() -> candle_core::Result<()> {
        let (x, w) = (var(&[2, 3, 9], 0)?, var(&[4, 3, 3], 1)?);
        let (xs, ws) = (x.clone(), w.clone());
        let r = check(
            move || xs.as_tensor().conv1d(ws.as_tensor(), 1, 1, 1, 1),
            &[w],
        );
        assert!(
            candle_is_wrong(r),
            "candle's conv1d weight gradient is right now: revisit ops::candle_fixes::conv1d"
        );
        Ok(())
    }

    #[test]
    fn conv1d_workaround_is_right() -> candle_core::Result<()> {
        for (padding, stride, groups, len) in
            [(1, 1, 1, 9), (0, 1, 1, 9), (2, 2, 3, 10), (1, 3, 1, 11)]
        {
            let (x, w) = (var(&[2, 3, len], 2)?, var(&[3, 3 / groups, 3], 3)?);
            let fwd = conv1d(x.as_tensor(), w.as_tensor(), padding, stride, groups)?;
            // candle's forward is right for a contiguous kernel: the values must agree.
            let theirs = x
                .as_tensor()
                .conv1d(w.as_tensor(), padding, stride, 1, groups)?;
            assert!(max_diff(&fwd, &theirs)? < 1e-12);
            let (xs, ws) = (x.clone(), w.clone());
            let r = check(
                move || {
                    Ok(conv1d(
                        xs.as_tensor(),
                        ws.as_tensor(),
                        padding,
                        stride,
                        groups,
                    )?)
                },
                &[x, w],
            )?;
            assert!(r.passed(), "p {padding} s {stride} g {groups}: {r:?}");
        }
        Ok(())
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

    /// `up(x)` and `x` both feed the loss, so the input gradient has two contributions.
    fn nearest_case(
        up: fn(&Tensor) -> candle_core::Result<Tensor>,
        x: &Var,
    ) -> candle_core::Result<GradCheckReport> {
        let xs = x.clone();
        check(
            move || {
                let t = xs.as_tensor();
                let u = up(t)?;
                u.narrow(2, 0, 3)?.narrow(3, 0, 3)? + t.sqr()?
            },
            std::slice::from_ref(x),
        )
    }

    #[test]
    fn candle_nearest_upsample_backward_still_overwrites() -> candle_core::Result<()> {
        let x = var(&[1, 2, 3, 3], 8)?;
        let r = nearest_case(|t| t.upsample_nearest2d(6, 6), &x);
        assert!(
            candle_is_wrong(r),
            "candle's upsample_nearest2d backward accumulates now: revisit candle_fixes"
        );
        Ok(())
    }

    #[test]
    fn nearest_upsample_workaround_is_right() -> candle_core::Result<()> {
        let x = var(&[1, 2, 3, 3], 8)?;
        let ours = upsample_nearest2d(x.as_tensor(), 6, 6)?;
        assert!(max_diff(&ours, &x.as_tensor().upsample_nearest2d(6, 6)?)? == 0.0);
        let r = nearest_case(|t| Ok(upsample_nearest2d(t, 6, 6)?), &x)?;
        assert!(r.passed(), "{r:?}");
        // Non-integer factors too (candle's backward refuses them).
        let y = var(&[1, 1, 4, 5], 9)?;
        let ys = y.clone();
        let r = check(
            move || Ok(upsample_nearest2d(ys.as_tensor(), 7, 3)?),
            std::slice::from_ref(&y),
        )?;
        assert!(r.passed(), "{r:?}");
        assert!(
            max_diff(
                &upsample_nearest2d(y.as_tensor(), 7, 3)?,
                &y.as_tensor().upsample_nearest2d(7, 3)?
            )? == 0.0
        );
        Ok(())
    }

    #[test]
    fn candle_bilinear_upsample_still_has_no_backward() -> candle_core::Result<()> {
        let x = var(&[1, 2, 3, 4], 10)?;
        let xs = x.clone();
        let r = check(
            move || xs.as_tensor().upsample_bilinear2d(5, 7, false),
            &[x],
        );
        assert!(
            candle_is_wrong(r),
            "candle's bilinear upsample has a backward now: revisit candle_fixes"
        );
        Ok(())
    }

    #[test]
    fn bilinear_workaround_matches_candle_forward_and_has_gradients() -> candle_core::Result<()> {
        let x = var(&[2, 2, 5, 4], 11)?;
        for align in [false, true] {
            for (oh, ow) in [(9, 7), (3, 2), (5, 4)] {
                let ours = upsample_bilinear2d(x.as_tensor(), oh, ow, align)?;
                let theirs = x.as_tensor().upsample_bilinear2d(oh, ow, align)?;
                assert!(max_diff(&ours, &theirs)? < 1e-12, "{oh}x{ow} align {align}");
            }
            let xs = x.clone();
            let r = check(
                move || Ok(upsample_bilinear2d(xs.as_tensor(), 8, 3, align)?),
                std::slice::from_ref(&x),
            )?;
            assert!(r.passed(), "{r:?}");
        }
        Ok(())
    }
}
