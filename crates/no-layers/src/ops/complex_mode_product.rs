//! The mode product of a complex tensor with a complex matrix, as one op.
//!
//! A Tucker-factorized spectral weight (TFNO) is rebuilt on every forward by mode products
//! of its complex core with its factors, `Y = X ×_k F`:
//! `Y[p, i, q] = Σ_j F[i, j] · X[p, j, q]` along axis `k` (size `r` → `s`; `p` runs over
//! the axes before `k`, `q` over those after). Complex tensors are real tensors with a
//! trailing `[re, im]` axis, as everywhere in this crate.
//!
//! Built from candle ops, one product was two transposing copies in, four real matrix
//! products, an addition, a subtraction and two transposing copies out, plus the splits and
//! the stack of the two parts: about forty small nodes per TFNO layer, and 40–60 % of a
//! graph-keeping TFNO forward at batch 1. Here it is one node: the input is laid out as a
//! real `[2r, p·q]` matrix (`[re rows; im rows]`), multiplied by the real embedding of
//! `F`, `[[Fr, −Fi], [Fi, Fr]]` (`[2s, 2r]`), in one `gemm` call, and laid back.
//!
//! The backward is two more such products, with the conventions of a real loss `L` of the
//! `[re, im]` pairs (`g = ∂L/∂re + i·∂L/∂im`): `g_X = g_Y ×_k Fᴴ` (the same product with the
//! transposed embedding, which is the embedding of `Fᴴ`), and
//! `g_F[i, j] = Σ_{p,q} g_Y[p, i, q] · conj(X[p, j, q])`, one real product `G·Xᵀ` of the
//! two laid-out matrices (`[2s, 2r]`) folded into its complex blocks. The backward ops
//! record no graph of their own (no second derivatives through this op).
//!
//! `f32` and `f64` on the CPU; other devices and dtypes take the same product from candle
//! ops. Every sum runs in a fixed order, so results do not depend on the thread count.

use crate::cpu::gemm_view::{gemm, GemmScalar, MatMut, MatRef};
use crate::cpu::map::contiguous;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

/// `x ×_axis f`: `x [d_0, …, d_{n−1}, 2]` (complex, `d_axis = r`), `f [s, r, 2]` (complex)
/// → `[d_0, …, s, …, d_{n−1}, 2]`. Errors when the shapes do not fit.
pub fn complex_mode_product(x: &Tensor, f: &Tensor, axis: usize) -> Result<Tensor> {
    let sizes = ModeSizes::of(x, f, axis)?;
    if crate::ops::fused_cpu(&[x, f]) {
        let op = ModeProduct {
            sizes,
            axis,
            adjoint: false,
        };
        return x.contiguous()?.apply_op2(&f.contiguous()?, op);
    }
    composite(x, f, axis)
}

/// The sizes of one product: `x` as `[pre, r, post]` complex, `f` as `[s, r]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ModeSizes {
    pre: usize,
    r: usize,
    post: usize,
    s: usize,
}

impl ModeSizes {
    fn of(x: &Tensor, f: &Tensor, axis: usize) -> Result<Self> {
        let dims = x.dims();
        let complex_axes = dims.len().saturating_sub(1);
        if dims.last() != Some(&2) || axis >= complex_axes {
            candle_core::bail!(
                "complex_mode_product: expected x [.., 2] (re, im) with more than {axis} \
                 leading axes, got {dims:?}"
            );
        }
        let (s, r, two) = f.dims3()?;
        if two != 2 || r != dims[axis] {
            candle_core::bail!(
                "complex_mode_product: expected a factor [s, {}, 2] for axis {axis} of {dims:?}, \
                 got {:?}",
                dims[axis],
                f.dims()
            );
        }
        if x.dtype() != f.dtype() || !x.device().same_device(f.device()) {
            candle_core::bail!("complex_mode_product: x and the factor differ in dtype or device");
        }
        Ok(Self {
            pre: dims[..axis].iter().product(),
            r,
            post: dims[axis + 1..complex_axes].iter().product(),
            s,
        })
    }

    /// The output shape for input dims `dims` (axis `axis` becomes `s`).
    fn output_shape(&self, dims: &[usize], axis: usize) -> Shape {
        let mut out = dims.to_vec();
        out[axis] = self.s;
        Shape::from(out)
    }
}

/// The forward product (or, with `adjoint`, the product with `Fᴴ`, for the backward:
/// then the input's axis has size `s` and the output's `r`).
#[derive(Debug, Clone, Copy)]
struct ModeProduct {
    sizes: ModeSizes,
    /// The axis of the input the product runs along.
    axis: usize,
    adjoint: bool,
}

/// The factor's gradient `g_F` from `g_Y` and `X`.
#[derive(Debug, Clone, Copy)]
struct ModeGram {
    sizes: ModeSizes,
}

/// The element types the op runs on.
trait Real:
    GemmScalar
    + std::ops::Neg<Output = Self>
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
{
}
impl Real for f32 {}
impl Real for f64 {}

/// Complex `[pre, rows, post, 2]` → real `[2·rows, pre·post]` (`[re rows; im rows]`).
fn to_planar<T: Real>(x: &[T], (pre, rows, post): (usize, usize, usize)) -> Vec<T> {
    let n = pre * post;
    let mut out = vec![T::default(); 2 * rows * n];
    out.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let (part, j) = (row / rows, row % rows);
        for p in 0..pre {
            let src = &x[(p * rows + j) * post * 2..][..post * 2];
            for (d, pair) in dst[p * post..][..post].iter_mut().zip(src.chunks_exact(2)) {
                *d = pair[part];
            }
        }
    });
    out
}

/// Real `[2·rows, pre·post]` → complex `[pre, rows, post, 2]` (the inverse of [`to_planar`]).
fn from_planar<T: Real>(y: &[T], (pre, rows, post): (usize, usize, usize)) -> Vec<T> {
    let n = pre * post;
    let mut out = vec![T::default(); 2 * rows * n];
    out.par_chunks_mut(rows * post * 2)
        .enumerate()
        .for_each(|(p, dst)| {
            for (j, row) in dst.chunks_exact_mut(post * 2).enumerate() {
                let (re, im) = (
                    &y[j * n + p * post..][..post],
                    &y[(rows + j) * n + p * post..],
                );
                for (q, pair) in row.chunks_exact_mut(2).enumerate() {
                    pair[0] = re[q];
                    pair[1] = im[q];
                }
            }
        });
    out
}

/// The real embedding `[[Fr, −Fi], [Fi, Fr]]` (`[2s, 2r]`) of `f [s, r, 2]`: it maps the
/// planar `[re; im]` columns of a complex vector to those of `F·v`.
fn embedding<T: Real>(f: &[T], s: usize, r: usize) -> Vec<T> {
    let mut e = vec![T::default(); 4 * s * r];
    for i in 0..s {
        for j in 0..r {
            let (re, im) = (f[(i * r + j) * 2], f[(i * r + j) * 2 + 1]);
            e[i * 2 * r + j] = re;
            e[i * 2 * r + r + j] = -im;
            e[(s + i) * 2 * r + j] = im;
            e[(s + i) * 2 * r + r + j] = re;
        }
    }
    e
}

impl ModeProduct {
    fn run<T: Real>(&self, x: &[T], f: &[T]) -> Result<Vec<T>> {
        let ModeSizes { pre, r, post, s } = self.sizes;
        let (rows_in, rows_out) = if self.adjoint { (s, r) } else { (r, s) };
        let n = pre * post;
        if x.len() != 2 * rows_in * n || f.len() != 2 * s * r {
            candle_core::bail!(
                "complex-mode-product: {} and {} values do not fit {:?}",
                x.len(),
                f.len(),
                self.sizes
            );
        }
        let xp = to_planar(x, (pre, rows_in, post));
        let e = embedding(f, s, r);
        let e = MatRef::row_major(&e, 2 * s, 2 * r);
        // The embedding of Fᴴ is the transpose of F's.
        let lhs = if self.adjoint { e.t() } else { e };
        let mut yp = vec![T::default(); 2 * rows_out * n];
        gemm(
            MatMut::row_major(&mut yp, 2 * rows_out, n),
            lhs,
            MatRef::row_major(&xp, 2 * rows_in, n),
            false,
            rayon::current_num_threads(),
        )?;
        Ok(from_planar(&yp, (pre, rows_out, post)))
    }
}

impl ModeGram {
    fn run<T: Real>(&self, gy: &[T], x: &[T]) -> Result<Vec<T>> {
        let ModeSizes { pre, r, post, s } = self.sizes;
        let n = pre * post;
        if gy.len() != 2 * s * n || x.len() != 2 * r * n {
            candle_core::bail!(
                "complex-mode-gram: {} and {} values do not fit {:?}",
                gy.len(),
                x.len(),
                self.sizes
            );
        }
        let gp = to_planar(gy, (pre, s, post));
        let xp = to_planar(x, (pre, r, post));
        let mut p = vec![T::default(); 4 * s * r];
        gemm(
            MatMut::row_major(&mut p, 2 * s, 2 * r),
            MatRef::row_major(&gp, 2 * s, n),
            MatRef::row_major(&xp, 2 * r, n).t(),
            false,
            rayon::current_num_threads(),
        )?;
        // g_F = (Gr + i·Gi)(Xr − i·Xi)ᵀ.
        let at = |row: usize, col: usize| p[row * 2 * r + col];
        let mut gf = vec![T::default(); 2 * s * r];
        for i in 0..s {
            for j in 0..r {
                gf[(i * r + j) * 2] = at(i, j) + at(s + i, r + j);
                gf[(i * r + j) * 2 + 1] = at(s + i, j) - at(i, r + j);
            }
        }
        Ok(gf)
    }
}

/// Runs `f32` or `f64` kernels on two CPU storages of one dtype.
fn dispatch(
    name: &str,
    (a, la): (&CpuStorage, &Layout),
    (b, lb): (&CpuStorage, &Layout),
    kernel32: impl Fn(&[f32], &[f32]) -> Result<Vec<f32>>,
    kernel64: impl Fn(&[f64], &[f64]) -> Result<Vec<f64>>,
) -> Result<CpuStorage> {
    Ok(match (a, b) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(kernel32(
            contiguous(name, a, la)?,
            contiguous(name, b, lb)?,
        )?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(kernel64(
            contiguous(name, a, la)?,
            contiguous(name, b, lb)?,
        )?),
        _ => candle_core::bail!(
            "{name}: expected two f32 or two f64 inputs, got {:?}",
            a.dtype()
        ),
    })
}

impl CustomOp2 for ModeProduct {
    fn name(&self) -> &'static str {
        "complex-mode-product"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        f: &CpuStorage,
        lf: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = lx.dims();
        let mut sizes = self.sizes;
        if self.adjoint {
            std::mem::swap(&mut sizes.r, &mut sizes.s);
        }
        let out = dispatch(
            self.name(),
            (x, lx),
            (f, lf),
            |x, f| self.run(x, f),
            |x, f| self.run(x, f),
        )?;
        Ok((out, sizes.output_shape(dims, self.axis)))
    }

    fn bwd(
        &self,
        x: &Tensor,
        f: &Tensor,
        _y: &Tensor,
        grad_y: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_y = grad_y.contiguous()?;
        let adjoint = ModeProduct {
            adjoint: true,
            ..*self
        };
        let grad_x = grad_y.apply_op2_no_bwd(f, &adjoint)?;
        let grad_f = grad_y.apply_op2_no_bwd(x, &ModeGram { sizes: self.sizes })?;
        Ok((Some(grad_x), Some(grad_f)))
    }
}

impl CustomOp2 for ModeGram {
    fn name(&self) -> &'static str {
        "complex-mode-gram"
    }

    fn cpu_fwd(
        &self,
        gy: &CpuStorage,
        lg: &Layout,
        x: &CpuStorage,
        lx: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let out = dispatch(
            self.name(),
            (gy, lg),
            (x, lx),
            |g, x| self.run(g, x),
            |g, x| self.run(g, x),
        )?;
        Ok((out, Shape::from((self.sizes.s, self.sizes.r, 2))))
    }
}

/// The same product from candle ops (every backend and dtype).
fn composite(x: &Tensor, f: &Tensor, axis: usize) -> Result<Tensor> {
    let part = |t: &Tensor, k: usize| t.narrow(D::Minus1, k, 1)?.squeeze(D::Minus1);
    let last = x.rank() - 2;
    let (xr, xi) = (
        part(x, 0)?.transpose(axis, last)?.contiguous()?,
        part(x, 1)?.transpose(axis, last)?.contiguous()?,
    );
    let (ftr, fti) = (part(f, 0)?.t()?, part(f, 1)?.t()?);
    let re = (xr.broadcast_matmul(&ftr)? - xi.broadcast_matmul(&fti)?)?;
    let im = (xr.broadcast_matmul(&fti)? + xi.broadcast_matmul(&ftr)?)?;
    Tensor::stack(
        &[re.transpose(axis, last)?, im.transpose(axis, last)?],
        last + 1,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::single_threaded;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use candle_core::{DType, Device, Var};

    fn random(shape: &[usize], seed: u64) -> Result<Tensor> {
        random_like(&Tensor::zeros(shape, DType::F64, &Device::Cpu)?, seed)
    }

    /// `Σ_j F[i, j] X[p, j, q]` by complex arithmetic, element by element.
    fn naive(x: &Tensor, f: &Tensor, axis: usize) -> Result<Vec<f64>> {
        let dims = x.dims().to_vec();
        let pre: usize = dims[..axis].iter().product();
        let post: usize = dims[axis + 1..dims.len() - 1].iter().product();
        let (s, r, _) = f.dims3()?;
        let (xv, fv) = (
            x.flatten_all()?.to_vec1::<f64>()?,
            f.flatten_all()?.to_vec1::<f64>()?,
        );
        let mut out = vec![0.0; pre * s * post * 2];
        for p in 0..pre {
            for i in 0..s {
                for q in 0..post {
                    let (mut re, mut im) = (0.0, 0.0);
                    for j in 0..r {
                        let (a, b) = (fv[(i * r + j) * 2], fv[(i * r + j) * 2 + 1]);
                        let xo = ((p * r + j) * post + q) * 2;
                        let (c, d) = (xv[xo], xv[xo + 1]);
                        re += a * c - b * d;
                        im += a * d + b * c;
                    }
                    out[((p * s + i) * post + q) * 2] = re;
                    out[((p * s + i) * post + q) * 2 + 1] = im;
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn product_matches_complex_arithmetic_on_every_axis() -> Result<()> {
        let x = random(&[3, 4, 5, 2, 2], 1)?;
        for (axis, r) in [(0, 3), (1, 4), (2, 5), (3, 2)] {
            let f = random(&[6, r, 2], 10 + axis as u64)?;
            let y = complex_mode_product(&x, &f, axis)?;
            let mut want_shape = x.dims().to_vec();
            want_shape[axis] = 6;
            assert_eq!(y.dims(), want_shape.as_slice(), "axis {axis}");
            let got = y.flatten_all()?.to_vec1::<f64>()?;
            let want = naive(&x, &f, axis)?;
            for (k, (a, b)) in got.iter().zip(&want).enumerate() {
                assert!((a - b).abs() < 1e-12, "axis {axis} element {k}: {a} vs {b}");
            }
            // The candle composite (other devices) computes the same values.
            let comp = composite(&x, &f, axis)?.flatten_all()?.to_vec1::<f64>()?;
            for (a, b) in comp.iter().zip(&want) {
                assert!((a - b).abs() < 1e-12, "composite, axis {axis}");
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        // A non-contiguous input (a narrowed view), as a sliced Tucker core would be.
        for axis in [0, 1, 2] {
            let x = Var::from_tensor(&random(&[3, 5, 4, 2], 20 + axis as u64)?)?;
            let r = [3, 4, 4][axis];
            let f = Var::from_tensor(&random(&[2, r, 2], 30 + axis as u64)?)?;
            let out_dims = {
                let mut d = vec![3, 4, 4, 2];
                d[axis] = 2;
                d
            };
            let probe = random(&out_dims, 40)?;
            let (xv, fv) = (x.clone(), f.clone());
            let report = check_gradients(
                move || {
                    let xs = xv.as_tensor().narrow(1, 1, 4)?;
                    (complex_mode_product(&xs, fv.as_tensor(), axis)? * &probe)?.sum_all()
                },
                &[x, f],
                &GradCheckConfig::default(),
            )?;
            assert!(report.passed(), "axis {axis}: {report:?}");
        }
        Ok(())
    }

    #[test]
    fn f32_agrees_with_f64() -> Result<()> {
        let x = random(&[18, 18, 9, 5, 2], 2)?;
        let f = random(&[16, 9, 2], 3)?;
        let y64 = complex_mode_product(&x, &f, 2)?;
        let y32 = complex_mode_product(&x.to_dtype(DType::F32)?, &f.to_dtype(DType::F32)?, 2)?;
        let diff = (y32.to_dtype(DType::F64)? - &y64)?
            .abs()?
            .max_all()?
            .to_scalar::<f64>()?;
        let scale = y64.abs()?.max_all()?.to_scalar::<f64>()?;
        assert!(diff < 1e-5 * scale, "{diff} against {scale}");
        Ok(())
    }

    #[test]
    fn results_do_not_depend_on_the_thread_count() -> Result<()> {
        let x = Var::from_tensor(&random(&[18, 18, 9, 5, 2], 4)?.to_dtype(DType::F32)?)?;
        let f = Var::from_tensor(&random(&[16, 9, 2], 5)?.to_dtype(DType::F32)?)?;
        let run = || -> Result<Vec<Vec<f32>>> {
            let y = complex_mode_product(x.as_tensor(), f.as_tensor(), 2)?;
            let grads = (y.sqr()?.sum_all()?).backward()?;
            let flat = |t: &Tensor| t.flatten_all()?.to_vec1::<f32>();
            Ok(vec![
                flat(&y)?,
                flat(grads.get(x.as_tensor()).expect("x gradient"))?,
                flat(grads.get(f.as_tensor()).expect("f gradient"))?,
            ])
        };
        let many = run()?;
        let one = single_threaded(run)?;
        assert!(many == one, "one thread and many differ");
        Ok(())
    }

    #[test]
    fn shape_errors_say_what_was_expected() -> Result<()> {
        let x = random(&[3, 4, 2], 6)?;
        let msg = |r: Result<Tensor>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(complex_mode_product(&x, &random(&[2, 5, 2], 7)?, 1)).contains("[s, 4, 2]"));
        assert!(msg(complex_mode_product(&x, &random(&[2, 4, 2], 7)?, 2)).contains("(re, im)"));
        let no_pair = random(&[3, 4, 3], 8)?;
        assert!(
            msg(complex_mode_product(&no_pair, &random(&[2, 4, 2], 7)?, 1)).contains("(re, im)")
        );
        Ok(())
    }
}
