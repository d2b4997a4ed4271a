//! The composite path is the specification of every fused op.
//!
//! Every public op of `no_layers::ops` (and the layers whose fused kernels are private:
//! the channel MLP and CNO's activation) is run twice on the CPU on seeded random inputs:
//! once as it dispatches there (the fused kernel) and once inside
//! [`no_layers::ops::composite_only`], which takes the composite candle form a GPU runs.
//! The forward and the gradient of every differentiable input (`backward()` of a
//! random-weighted sum of the output) must agree to `1e-5` (f32) or `1e-12` (f64) of the
//! largest value compared, on several shapes, non-square and odd ones included.
//!
//! This file is the single place where that property is stated; the op files keep their
//! own tests of kernels and edge cases.

use candle_core::{DType, Device, Module, Result, Shape, Tensor, Var};
use no_layers::init::{init_tensor, rng_for};
use no_layers::layers::cno_activation::{CnoActivation, CnoActivationConfig};
use no_layers::layers::spectral::fourier;
use no_layers::ops::{self, composite_only};

/// Seeded standard-normal values of `shape` in `dtype`.
fn randn(shape: &[usize], seed: u64, dtype: DType) -> Result<Tensor> {
    init_tensor(
        candle_nn::Init::Randn {
            mean: 0.0,
            stdev: 1.0,
        },
        &Shape::from(shape),
        &mut rng_for(seed, "fused_vs_composite"),
    )?
    .to_dtype(dtype)
}

/// The output and the gradient of every input of `f`, on the fused path or (inside a
/// [`composite_only`] guard) the composite one. The loss is `Σ r·f(inputs)` with `r`
/// seeded random weights.
fn run<F>(f: &F, inputs: &[Var], composite: bool) -> Result<Vec<Tensor>>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let _guard = composite.then(composite_only);
    let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
    let y = f(&tensors)?;
    let r = randn(y.dims(), 999, y.dtype())?;
    let grads = (&y * &r)?.sum_all()?.backward()?;
    let mut out = vec![y.detach()];
    for (i, v) in inputs.iter().enumerate() {
        let g = grads
            .get(v.as_tensor())
            .ok_or_else(|| candle_core::Error::Msg(format!("no gradient for input {i}")))?;
        out.push(g.clone());
    }
    Ok(out)
}

/// Runs `f` on inputs of `shapes` (seeded) in f32 and f64 on both paths and compares
/// (tolerances `1e-5` and `1e-12` of the largest value).
fn check<F>(name: &str, shapes: &[&[usize]], f: F) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    check_with(name, shapes, 1e-12, f)
}

/// The f64 tolerance of ops through GELU: the same as every other op. (The composite
/// GELU is written out with `erf` in f64, because candle's `gelu_erf` backward uses
/// 0.398942 for `1/√(2π)`, a 7e-7 relative error this check would otherwise have to
/// allow; see `no_layers::ops::gelu::gelu_composite`.)
const GELU_F64: f64 = 1e-12;

/// [`check`] with the f64 tolerance `tol64`.
fn check_with<F>(name: &str, shapes: &[&[usize]], tol64: f64, f: F) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, tol64)] {
        let inputs = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| Var::from_tensor(&randn(s, i as u64 + 1, dtype)?))
            .collect::<Result<Vec<_>>>()?;
        let fused = run(&f, &inputs, false)?;
        let composite = run(&f, &inputs, true)?;
        for (k, (a, b)) in fused.iter().zip(&composite).enumerate() {
            let what = if k == 0 {
                "forward".to_string()
            } else {
                format!("gradient of input {}", k - 1)
            };
            assert_eq!(a.dims(), b.dims(), "{name} {dtype:?}: {what} shapes");
            let (a, b) = (a.to_dtype(DType::F64)?, b.to_dtype(DType::F64)?);
            let scale = a.abs()?.max_all()?.to_scalar::<f64>()?.max(
                b.abs()?
                    .max_all()?
                    .to_scalar::<f64>()?
                    .max(f64::MIN_POSITIVE),
            );
            let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
            assert!(
                diff <= tol * scale,
                "{name} {dtype:?}: {what} differs by {diff:e} (largest value {scale:e}, tolerance {tol:e} of it)"
            );
        }
    }
    Ok(())
}

/// Shapes the element-wise ops run on: odd, non-square, rank 2 to 4.
const POINTWISE: [&[usize]; 3] = [&[7, 5], &[2, 3, 9, 6], &[1, 4, 13, 10]];

#[test]
fn gelu_tanh_relu_leaky_relu() -> Result<()> {
    for s in POINTWISE {
        check_with("gelu", &[s], GELU_F64, |t| ops::gelu::gelu(&t[0]))?;
        check("tanh", &[s], |t| ops::tanh::tanh(&t[0]))?;
        check("relu", &[s], |t| ops::relu::relu(&t[0]))?;
        check("leaky_relu", &[s], |t| {
            ops::leaky_relu::leaky_relu(&t[0], 0.1)
        })?;
    }
    Ok(())
}

#[test]
fn channel_affine_and_feature_bias() -> Result<()> {
    for s in [&[2, 3, 9, 6][..], &[3, 5, 7], &[1, 4, 13, 10]] {
        check("add_channel_bias", &[s, &[s[1]]], |t| {
            ops::channel_affine::add_channel_bias(&t[0], &t[1])
        })?;
        check("scale_channels", &[s, &[s[1]]], |t| {
            ops::channel_affine::scale_channels(&t[0], &t[1])
        })?;
    }
    for s in [&[6, 7][..], &[2, 3, 5], &[1, 9, 4]] {
        let f = *s.last().unwrap_or(&1);
        check("add_feature_bias", &[s, &[f]], |t| {
            ops::feature_bias::add_feature_bias(&t[0], &t[1])
        })?;
    }
    Ok(())
}

#[test]
fn mse_loss_and_basis_product() -> Result<()> {
    for s in POINTWISE {
        check("mse_loss", &[s, s], |t| ops::mse::mse_loss(&t[0], &t[1]))?;
    }
    // (samples, outputs, basis functions per output, points)
    for (b, k, q, n) in [(3, 2, 5, 70), (1, 1, 4, 9), (6, 3, 2, 13)] {
        let name = format!("basis_product {b}×{k}·{q}, {n} points");
        check(&name, &[&[b, k * q], &[k, q, n]], |t| {
            ops::basis_product::basis_product(&t[0], &t[1])
        })?;
    }
    Ok(())
}

#[test]
fn dense_every_layout_and_activation() -> Result<()> {
    use ops::dense::{dense, DenseActivation, DenseLayout};
    for (n, f, o) in [(5, 7, 6), (1, 3, 6), (33, 17, 12)] {
        for act in [DenseActivation::Identity, DenseActivation::Tanh] {
            for layout in [
                DenseLayout::Rows,
                DenseLayout::Columns,
                DenseLayout::ColumnBlocks(2),
                DenseLayout::ColumnBlocks(3),
            ] {
                let name = format!("dense {n}×{f}→{o} {act:?} {layout:?}");
                check(&name, &[&[n, f], &[o, f], &[o]], |t| {
                    dense(&t[0], &t[1], &t[2], act, layout)
                })?;
            }
        }
    }
    Ok(())
}

#[test]
fn conv2d_strides_paddings_kernels() -> Result<()> {
    // (input [B, C, H, W], out channels, kernel, padding, stride): odd and non-square
    // grids whose sides have different parity, where candle's own strided backward fails.
    let cases: [([usize; 4], usize, usize, usize, usize); 10] = [
        ([2, 3, 13, 10], 4, 3, 1, 1),
        ([2, 3, 13, 10], 4, 3, 1, 2),
        ([1, 2, 13, 10], 3, 3, 0, 3),
        ([2, 3, 12, 9], 5, 5, 2, 2),
        ([1, 3, 11, 8], 2, 1, 0, 1),
        ([1, 3, 11, 8], 2, 1, 0, 2),
        ([2, 2, 10, 7], 3, 4, 1, 2),
        ([1, 2, 100, 51], 3, 3, 1, 2),
        ([1, 2, 9, 9], 2, 5, 0, 1),
        // 3×3, stride 1, 32 channels, outputs of 32 × 32 or more: the Winograd kernel.
        ([1, 32, 34, 33], 32, 3, 1, 1),
    ];
    for (x, o, k, p, s) in cases {
        let name = format!("conv2d {x:?} k{k} p{p} s{s}");
        check(&name, &[&x, &[o, x[1], k, k]], |t| {
            ops::conv2d::conv2d(&t[0], &t[1], p, s)
        })?;
    }
    Ok(())
}

#[test]
fn spectral_transforms() -> Result<()> {
    let dev = Device::Cpu;
    // (B, C, N1, N2, modes of the centred axis, modes of the last axis).
    for (b, c, n1, n2, m1, m2) in [(2, 3, 9, 8, 4, 3), (1, 2, 10, 7, 5, 4), (2, 1, 6, 11, 3, 5)] {
        let (lo, count) = fourier::centred_kept(m1, n1);
        let q = fourier::rfft_kept(m2, n2);
        let bases = |dtype: DType| -> Result<(Tensor, Tensor, Tensor, Tensor)> {
            Ok((
                fourier::rfft_basis_transposed(n2, q, dtype, &dev)?.t()?,
                fourier::dft_basis(n1, lo, count, dtype, &dev)?,
                fourier::idft_basis(n1, lo, count, dtype, &dev)?,
                fourier::irfft_basis(n2, q, dtype, &dev)?,
            ))
        };
        let name = format!("grid_to_spectrum [{b}, {c}, {n1}, {n2}]");
        check(&name, &[&[b, c, n1, n2]], |t| {
            let (rx, dt, _, _) = bases(t[0].dtype())?;
            ops::spectral_transform::grid_to_spectrum(&t[0], &rx, &dt)
        })?;
        let name = format!("spectrum_to_grid [{b}, {c}, {n1}, {n2}]");
        check(&name, &[&[count * q, b, 2 * c]], |t| {
            let (_, _, et, rxi) = bases(t[0].dtype())?;
            ops::spectral_transform::spectrum_to_grid(&t[0], &et, &rxi, true)
        })?;
        // One dimension: N1 = 1 with the trivial bases.
        let name = format!("grid_to_spectrum 1-D [{b}, {c}, {n2}]");
        check(&name, &[&[b, c, n2]], |t| {
            let dtype = t[0].dtype();
            let (rx, _, _, _) = bases(dtype)?;
            let dt = Tensor::new(&[[1f64], [0.0]], &dev)?.to_dtype(dtype)?;
            ops::spectral_transform::grid_to_spectrum(&t[0], &rx, &dt)
        })?;
        let name = format!("spectrum_to_grid 1-D [{b}, {c}, {n2}]");
        check(&name, &[&[q, b, 2 * c]], |t| {
            let dtype = t[0].dtype();
            let (_, _, _, rxi) = bases(dtype)?;
            let et = Tensor::new(&[[1f64, 0.0]], &dev)?.to_dtype(dtype)?;
            ops::spectral_transform::spectrum_to_grid(&t[0], &et, &rxi, false)
        })?;
    }
    Ok(())
}

#[test]
fn fft_ops() -> Result<()> {
    // (rows, n, q): q below, at and above n/2 + 1 (bins above n/2 are zero).
    for (rows, n, q) in [(6, 9, 4), (3, 8, 5), (5, 6, 5), (4, 17, 3)] {
        check(&format!("truncated_rfft n{n} q{q}"), &[&[rows, n]], |t| {
            ops::fft::truncated_rfft(&t[0], q)
        })?;
        check(
            &format!("truncated_irfft n{n} q{q}"),
            &[&[rows, 2 * q]],
            |t| ops::fft::truncated_irfft(&t[0], n),
        )?;
    }
    Ok(())
}

#[test]
fn complex_block_and_mode_product() -> Result<()> {
    for w in [[3, 4, 5, 2], [1, 2, 7, 2], [4, 3, 1, 2]] {
        check(&format!("complex_block {w:?}"), &[&w], |t| {
            ops::complex_block::complex_block(&t[0])
        })?;
    }
    // (x without its trailing complex axis, axis, output size s).
    for (x, axis, s) in [
        (&[3, 4, 5][..], 0, 2),
        (&[3, 4, 5][..], 1, 6),
        (&[3, 4, 5][..], 2, 7),
        (&[2, 9], 1, 4),
    ] {
        let mut xs = x.to_vec();
        xs.push(2);
        let f = [s, x[axis], 2];
        check(
            &format!("complex_mode_product {x:?} axis {axis}"),
            &[&xs, &f],
            |t| ops::complex_mode_product::complex_mode_product(&t[0], &t[1], axis),
        )?;
    }
    Ok(())
}

#[test]
fn channel_mlp() -> Result<()> {
    use ops::channel_mlp::two_layer_gelu_mlp;
    for (x, h, co) in [
        (&[2, 3, 9, 6][..], 4, 5),
        (&[1, 3, 13, 10][..], 7, 1),
        (&[3, 2, 11][..], 5, 3),
    ] {
        let ci = x[1];
        check_with(
            &format!("channel MLP {x:?} → {h} → {co}"),
            &[x, &[h, ci], &[h], &[co, h], &[co]],
            GELU_F64,
            |t| two_layer_gelu_mlp(&t[0], &t[1], &t[2], &t[3], &t[4]),
        )?;
    }
    Ok(())
}

#[test]
fn cno_activation() -> Result<()> {
    for (x, out) in [
        ([2, 3, 9, 6], None),
        ([1, 2, 13, 10], Some(vec![7, 5])),
        ([1, 2, 8, 8], Some(vec![16, 11])),
    ] {
        let act = CnoActivation::new(&CnoActivationConfig {
            out_size: out.clone(),
            ..Default::default()
        })
        .map_err(candle_core::Error::wrap)?;
        check(&format!("CNO activation {x:?} → {out:?}"), &[&x], |t| {
            act.forward(&t[0])
        })?;
    }
    Ok(())
}

/// [`check`] for the fused paths taken only when no operand records gradients (inference):
/// the forward alone, on plain tensors.
fn check_forward<F>(name: &str, shapes: &[&[usize]], f: F) -> Result<()>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::F64, 1e-12)] {
        let inputs = shapes
            .iter()
            .enumerate()
            .map(|(i, s)| randn(s, i as u64 + 1, dtype))
            .collect::<Result<Vec<_>>>()?;
        let fused = f(&inputs)?;
        let composite = {
            let _guard = composite_only();
            f(&inputs)?
        };
        assert_eq!(fused.dims(), composite.dims(), "{name} {dtype:?}: shapes");
        let (a, b) = (fused.to_dtype(DType::F64)?, composite.to_dtype(DType::F64)?);
        let scale = b
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?
            .max(f64::MIN_POSITIVE);
        let diff = (&a - &b)?.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(
            diff <= tol * scale,
            "{name} {dtype:?}: forward differs by {diff:e} (largest value {scale:e})"
        );
    }
    Ok(())
}

#[test]
fn periodic_border_and_mode_mix() -> Result<()> {
    use ops::periodic_border::{periodic_border_sum, periodic_border_sum_of};
    // (batch, in channels, out channels, height, width, kernel)
    for (b, c, o, h, w, k) in [(2, 3, 4, 7, 6, 3), (1, 2, 9, 5, 8, 3), (3, 1, 2, 9, 9, 5)] {
        let name = format!("periodic_border_sum {b}×{c}→{o} {h}×{w} k{k}");
        let shapes: [&[usize]; 4] = [&[b, o, h, w], &[b, c, h, w], &[o, c, k, k], &[o]];
        check(&name, &shapes, |t| {
            periodic_border_sum(&t[0], &t[1], &t[2], Some(&t[3]), true)
        })?;
        let name = format!("periodic_border_sum_of {b}×{c}→{o} {h}×{w} k{k}");
        let shapes: [&[usize]; 5] = [
            &[b, o, h, w],
            &[b, o, h, w],
            &[b, c, h, w],
            &[o, c, k, k],
            &[o],
        ];
        check_forward(&name, &shapes, |t| {
            periodic_border_sum_of(&t[0], &t[1], &t[2], &t[3], Some(&t[4]), true)
        })?;
    }
    // (modes, batch, in channels, out channels)
    for (m, b, c, o) in [(144, 1, 32, 32), (7, 2, 3, 5), (20, 4, 6, 1)] {
        let name = format!("mode_mix {m} modes, batch {b}, {c}→{o}");
        check_forward(&name, &[&[m, b, 2 * c], &[c, o, m, 2]], |t| {
            ops::mode_mix::mode_mix(&t[0], &t[1])
        })?;
    }
    Ok(())
}
