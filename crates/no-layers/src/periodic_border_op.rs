//! What periodic padding adds to a zero-padded "same" convolution, as one CPU op.
//!
//! A "same" cross-correlation with periodic padding differs from the zero-padded one only
//! where the kernel reaches outside the grid, i.e. within `kh/2` rows or `kw/2` columns of
//! the border:
//!
//! ```text
//! conv_periodic(x, K) = conv_zeros(x, K) + R(x, K),   R = Σ over taps outside the grid
//!                                                         of K · (wrapped input)
//! ```
//!
//! LocalNO runs two 3×3 kernels on every block input, the finite-difference one with
//! periodic padding and the DISCO one with zeros. By linearity their sum is **one**
//! zero-padded convolution with the summed kernel plus `R` of the periodic kernel
//! ([`crate::local_conv::conv2d_same_sum`]): half the convolution work, and `R` costs a
//! product over the 4·(H + W) border positions only.
//!
//! [`add_periodic_border`] returns `main + R(x, K)` for a `main` of the output's shape. For
//! each sample the op gathers the wrapped inputs of the border positions into a small
//! patch matrix `D` `[C·kh·kw, P]` (zero where a tap stays inside the grid) and adds
//! `K · D` to those positions. Its backward passes the gradient of `main` through, and
//! gives `∂K = Σ_samples G_border · Dᵀ` (per-sample partials summed in sample order, so
//! independent of the thread count) and `∂x = Dᵀ-scatter of Kᵀ · G_border` (zero away
//! from the border). `f32` and `f64` on the CPU; groups = 1, stride 1, odd kernels.

use crate::cpu_map::contiguous;
use crate::gemm_view::{gemm, GemmScalar, MatMut, MatRef};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `main + R(x, kernel)` (module docs): `main` `[B, O, H, W]`, `x` `[B, C, H, W]`,
/// `kernel` `[O, C, kh, kw]` with odd `kh ≤ 2H + 1` and `kw ≤ 2W + 1` (one wrap at most,
/// as [`crate::local_conv::pad_axis`] allows). Differentiable in all three.
pub fn add_periodic_border(main: &Tensor, x: &Tensor, kernel: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    let (o, kc, kh, kw) = kernel.dims4()?;
    if main.dims() != [b, o, h, w] || kc != c {
        candle_core::bail!(
            "periodic border: main {:?}, input {:?} and kernel {:?} do not fit (expected [B, O, H, W], [B, C, H, W], [O, C, kh, kw])",
            main.dims(),
            x.dims(),
            kernel.dims()
        );
    }
    if kh % 2 == 0 || kw % 2 == 0 || kh / 2 > h || kw / 2 > w {
        candle_core::bail!(
            "periodic border: kernel {kh}×{kw} must have odd sizes whose half-widths fit the grid {h}×{w}"
        );
    }
    let on_cpu = [main, x, kernel]
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == x.dtype());
    if !on_cpu || !matches!(x.dtype(), DType::F32 | DType::F64) {
        candle_core::bail!(
            "periodic border: runs on the CPU with f32 or f64 tensors of one dtype, got {:?}, {:?}, {:?}",
            main.dtype(),
            x.dtype(),
            kernel.dtype()
        );
    }
    let border = Border::new((c, h, w), (o, kh, kw));
    main.contiguous()?
        .apply_op3(&x.contiguous()?, &kernel.contiguous()?, border)
}

/// Sizes, and where the border positions read outside the grid.
#[derive(Debug, Clone)]
struct Border {
    c: usize,
    h: usize,
    w: usize,
    o: usize,
    kh: usize,
    kw: usize,
    /// Output positions within the border (row-major indices into the `H·W` plane).
    positions: Vec<usize>,
    /// Every tap that reads outside the grid: (tap `i·kw + j`, column in `positions`,
    /// wrapped source index in the plane).
    halo: Vec<(usize, usize, usize)>,
}

impl Border {
    fn new((c, h, w): (usize, usize, usize), (o, kh, kw): (usize, usize, usize)) -> Self {
        let (ph, pw) = (kh / 2, kw / 2);
        let positions: Vec<usize> = (0..h * w)
            .filter(|&p| {
                let (r, col) = (p / w, p % w);
                r < ph || r + ph >= h || col < pw || col + pw >= w
            })
            .collect();
        let mut halo = Vec::new();
        for (q, &p) in positions.iter().enumerate() {
            let (r, col) = ((p / w) as isize, (p % w) as isize);
            for i in 0..kh {
                for j in 0..kw {
                    let sr = r + i as isize - ph as isize;
                    let sc = col + j as isize - pw as isize;
                    let outside = sr < 0 || sr >= h as isize || sc < 0 || sc >= w as isize;
                    if outside {
                        let src = sr.rem_euclid(h as isize) as usize * w
                            + sc.rem_euclid(w as isize) as usize;
                        halo.push((i * kw + j, q, src));
                    }
                }
            }
        }
        Self {
            c,
            h,
            w,
            o,
            kh,
            kw,
            positions,
            halo,
        }
    }

    fn taps(&self) -> usize {
        self.kh * self.kw
    }

    /// Rows of the border patch matrix, `C·kh·kw`.
    fn patch_rows(&self) -> usize {
        self.c * self.taps()
    }

    fn plane(&self) -> usize {
        self.h * self.w
    }

    /// The border patch matrix `D` `[C·kh·kw, P]` of one sample `x_s` `[C, H, W]`.
    fn gather<T: GemmScalar>(&self, x_s: &[T], d: &mut Vec<T>) {
        let p = self.positions.len();
        d.clear();
        d.resize(self.patch_rows() * p, T::default());
        for ch in 0..self.c {
            let plane = &x_s[ch * self.plane()..(ch + 1) * self.plane()];
            let rows = &mut d[ch * self.taps() * p..(ch + 1) * self.taps() * p];
            for &(t, q, src) in &self.halo {
                rows[t * p + q] = plane[src];
            }
        }
    }

    /// The adjoint of [`Self::gather`]: adds `e` `[C·kh·kw, P]` into `dx_s` `[C, H, W]`.
    fn scatter<T: GemmScalar>(&self, e: &[T], dx_s: &mut [T]) {
        let p = self.positions.len();
        for ch in 0..self.c {
            let plane = &mut dx_s[ch * self.plane()..(ch + 1) * self.plane()];
            let rows = &e[ch * self.taps() * p..(ch + 1) * self.taps() * p];
            for &(t, q, src) in &self.halo {
                plane[src] += rows[t * p + q];
            }
        }
    }

    /// The output gradient at the border positions of one sample, `[O, P]`.
    fn border_grad<T: GemmScalar>(&self, g_s: &[T], gb: &mut Vec<T>) {
        let p = self.positions.len();
        gb.clear();
        gb.reserve(self.o * p);
        for o in 0..self.o {
            let plane = &g_s[o * self.plane()..(o + 1) * self.plane()];
            gb.extend(self.positions.iter().map(|&pos| plane[pos]));
        }
    }

    /// `main + R(x, K)` on slices.
    fn forward<T: GemmScalar>(&self, main: &[T], x: &[T], k: &[T]) -> Result<Vec<T>> {
        let mut out = main.to_vec();
        let p = self.positions.len();
        let kmat = MatRef::row_major(k, self.o, self.patch_rows());
        out.par_chunks_mut(self.o * self.plane())
            .zip(x.par_chunks(self.c * self.plane()))
            .try_for_each_init(
                || (Vec::new(), Vec::new()),
                |(d, y), (out_s, x_s)| {
                    self.gather(x_s, d);
                    y.resize(self.o * p, T::default());
                    gemm(
                        MatMut::row_major(y, self.o, p),
                        kmat,
                        MatRef::row_major(d, self.patch_rows(), p),
                        false,
                        1,
                    )?;
                    for (o, row) in y.chunks_exact(p).enumerate() {
                        let plane = &mut out_s[o * self.plane()..(o + 1) * self.plane()];
                        for (&pos, &v) in self.positions.iter().zip(row) {
                            plane[pos] += v;
                        }
                    }
                    Ok::<(), candle_core::Error>(())
                },
            )?;
        Ok(out)
    }

    /// `∂x` on slices: the adjoint of `R` in `x` applied to the output gradient `g`.
    fn input_grad<T: GemmScalar>(&self, k: &[T], g: &[T]) -> Result<Vec<T>> {
        let batch = g.len() / (self.o * self.plane()).max(1);
        let mut dx = vec![T::default(); batch * self.c * self.plane()];
        let p = self.positions.len();
        let kt = MatRef::row_major(k, self.o, self.patch_rows()).t();
        dx.par_chunks_mut(self.c * self.plane())
            .zip(g.par_chunks(self.o * self.plane()))
            .try_for_each_init(
                || (Vec::new(), Vec::new()),
                |(gb, e), (dx_s, g_s)| {
                    self.border_grad(g_s, gb);
                    e.resize(self.patch_rows() * p, T::default());
                    gemm(
                        MatMut::row_major(e, self.patch_rows(), p),
                        kt,
                        MatRef::row_major(gb, self.o, p),
                        false,
                        1,
                    )?;
                    self.scatter(e, dx_s);
                    Ok::<(), candle_core::Error>(())
                },
            )?;
        Ok(dx)
    }

    /// `∂K` on slices: per-sample `G_border · Dᵀ`, summed in sample order.
    fn kernel_grad<T: GemmScalar>(&self, x: &[T], g: &[T]) -> Result<Vec<T>> {
        let p = self.positions.len();
        let len = self.o * self.patch_rows();
        let partials: Vec<Vec<T>> = x
            .par_chunks(self.c * self.plane())
            .zip(g.par_chunks(self.o * self.plane()))
            .map_init(
                || (Vec::new(), Vec::new()),
                |(d, gb), (x_s, g_s)| {
                    self.gather(x_s, d);
                    self.border_grad(g_s, gb);
                    let mut dk = vec![T::default(); len];
                    gemm(
                        MatMut::row_major(&mut dk, self.o, self.patch_rows()),
                        MatRef::row_major(gb, self.o, p),
                        MatRef::row_major(d, self.patch_rows(), p).t(),
                        false,
                        1,
                    )?;
                    Ok(dk)
                },
            )
            .collect::<Result<_>>()?;
        let mut total = vec![T::default(); len];
        for part in &partials {
            for (t, &v) in total.iter_mut().zip(part) {
                *t += v;
            }
        }
        Ok(total)
    }

    fn check(&self, what: &str, l: &Layout, channels: usize) -> Result<usize> {
        let (b, c, h, w) = l.shape().dims4()?;
        if (c, h, w) != (channels, self.h, self.w) {
            candle_core::bail!(
                "periodic border: {what} {:?}, expected [B, {channels}, {}, {}]",
                l.dims(),
                self.h,
                self.w
            );
        }
        Ok(b)
    }

    fn check_kernel(&self, l: &Layout) -> Result<()> {
        if l.dims() != [self.o, self.c, self.kh, self.kw] {
            candle_core::bail!(
                "periodic border: kernel {:?}, expected [{}, {}, {}, {}]",
                l.dims(),
                self.o,
                self.c,
                self.kh,
                self.kw
            );
        }
        Ok(())
    }
}

/// Runs an `f32` or `f64` kernel on two contiguous storages of one dtype.
fn on_slices(
    name: &str,
    (s1, l1): (&CpuStorage, &Layout),
    (s2, l2): (&CpuStorage, &Layout),
    f32_kernel: impl FnOnce(&[f32], &[f32]) -> Result<Vec<f32>>,
    f64_kernel: impl FnOnce(&[f64], &[f64]) -> Result<Vec<f64>>,
) -> Result<CpuStorage> {
    Ok(match (s1, s2) {
        (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(f32_kernel(
            contiguous(name, a, l1)?,
            contiguous(name, b, l2)?,
        )?),
        (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(f64_kernel(
            contiguous(name, a, l1)?,
            contiguous(name, b, l2)?,
        )?),
        (a, b) => candle_core::bail!(
            "{name}: expected f32 or f64 storages of one dtype, got {:?} and {:?}",
            a.dtype(),
            b.dtype()
        ),
    })
}

impl CustomOp3 for Border {
    fn name(&self) -> &'static str {
        "periodic-border"
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
        let b = self.check("main", l1, self.o)?;
        if self.check("input", l2, self.c)? != b {
            candle_core::bail!(
                "periodic border: main {:?} and input {:?} differ in batch size",
                l1.dims(),
                l2.dims()
            );
        }
        self.check_kernel(l3)?;
        let name = self.name();
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(m), CpuStorage::F32(x), CpuStorage::F32(k)) => {
                CpuStorage::F32(self.forward(
                    contiguous(name, m, l1)?,
                    contiguous(name, x, l2)?,
                    contiguous(name, k, l3)?,
                )?)
            }
            (CpuStorage::F64(m), CpuStorage::F64(x), CpuStorage::F64(k)) => {
                CpuStorage::F64(self.forward(
                    contiguous(name, m, l1)?,
                    contiguous(name, x, l2)?,
                    contiguous(name, k, l3)?,
                )?)
            }
            _ => candle_core::bail!(
                "{name}: expected three f32 or three f64 storages, got {:?}, {:?}, {:?}",
                s1.dtype(),
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((out, Shape::from((b, self.o, self.h, self.w))))
    }

    fn bwd(
        &self,
        _main: &Tensor,
        x: &Tensor,
        kernel: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let dx = if x.track_op() {
            Some(kernel.apply_op2_no_bwd(&grad, &BorderInputGrad(self.clone()))?)
        } else {
            None
        };
        let dk = if kernel.track_op() {
            Some(x.apply_op2_no_bwd(&grad, &BorderKernelGrad(self.clone()))?)
        } else {
            None
        };
        Ok((Some(grad), dx, dk))
    }
}

/// `∂x`: (kernel, output gradient) → `[B, C, H, W]`.
struct BorderInputGrad(Border);

/// `∂K`: (input, output gradient) → `[O, C, kh, kw]`.
struct BorderKernelGrad(Border);

impl CustomOp2 for BorderInputGrad {
    fn name(&self) -> &'static str {
        "periodic-border-input-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bd = &self.0;
        bd.check_kernel(l1)?;
        let b = bd.check("output gradient", l2, bd.o)?;
        let out = on_slices(
            self.name(),
            (s1, l1),
            (s2, l2),
            |k, g| bd.input_grad(k, g),
            |k, g| bd.input_grad(k, g),
        )?;
        Ok((out, Shape::from((b, bd.c, bd.h, bd.w))))
    }
}

impl CustomOp2 for BorderKernelGrad {
    fn name(&self) -> &'static str {
        "periodic-border-kernel-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let bd = &self.0;
        let b = bd.check("input", l1, bd.c)?;
        if bd.check("output gradient", l2, bd.o)? != b {
            candle_core::bail!(
                "periodic border: input {:?} and output gradient {:?} differ in batch size",
                l1.dims(),
                l2.dims()
            );
        }
        let out = on_slices(
            self.name(),
            (s1, l1),
            (s2, l2),
            |x, g| bd.kernel_grad(x, g),
            |x, g| bd.kernel_grad(x, g),
        )?;
        Ok((out, Shape::from((bd.o, bd.c, bd.kh, bd.kw))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, GradCheckConfig};
    use crate::init::{init_tensor, rng_for};
    use crate::local_conv::{conv2d_same, PaddingMode};
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Result<Tensor> {
        init_tensor(
            candle_nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
            &Shape::from(shape),
            &mut rng_for(seed, "periodic_border"),
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f64> {
        (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
    }

    /// Zero-padded convolution + border = periodic convolution, values and all three
    /// gradients (checked against candle's autograd through the padded-copy path), for
    /// square and oblong kernels, grids as small as the kernel's half-widths, B > 1.
    #[test]
    fn zero_padded_conv_plus_border_is_the_periodic_conv() -> Result<()> {
        let cases = [
            ([2, 3, 6, 7], [4, 3, 3, 3]),
            ([1, 2, 5, 4], [3, 2, 5, 3]),
            ([3, 1, 2, 3], [2, 1, 5, 7]),
            ([2, 2, 1, 1], [2, 2, 3, 3]),
        ];
        for (seed, (xs, ks)) in cases.into_iter().enumerate() {
            let seed = 10 * seed as u64;
            let x = Var::from_tensor(&randn(&xs, seed)?)?;
            let k = Var::from_tensor(&randn(&ks, seed + 1)?)?;
            let m = Var::from_tensor(&randn(&[xs[0], ks[0], xs[2], xs[3]], seed + 2)?)?;
            let r = randn(&[xs[0], ks[0], xs[2], xs[3]], seed + 3)?;
            let reference = (m.as_tensor()
                + conv2d_same(x.as_tensor(), k.as_tensor(), PaddingMode::Periodic, 1)?)?;
            let zero = conv2d_same(x.as_tensor(), k.as_tensor(), PaddingMode::Zeros, 1)?;
            let ours = add_periodic_border(&(m.as_tensor() + zero)?, x.as_tensor(), k.as_tensor())?;
            let scale = reference.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
            assert!(
                max_diff(&ours, &reference)? < 1e-12 * scale,
                "case {xs:?} {ks:?}"
            );
            let g_ref = (reference * &r)?.sum_all()?.backward()?;
            let g_ours = (ours * &r)?.sum_all()?.backward()?;
            for v in [&x, &k, &m] {
                let (a, b) = (g_ours.get(v), g_ref.get(v));
                let (Some(a), Some(b)) = (a, b) else {
                    candle_core::bail!("a gradient is missing");
                };
                let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?;
                assert!(
                    max_diff(a, b)? < 1e-12 * scale.max(1.0),
                    "case {xs:?} {ks:?}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&randn(&[2, 2, 4, 5], 1)?)?;
        let k = Var::from_tensor(&randn(&[3, 2, 3, 5], 2)?)?;
        let m = Var::from_tensor(&randn(&[2, 3, 4, 5], 3)?)?;
        let (xs, ks, ms) = (x.clone(), k.clone(), m.clone());
        let f = move || add_periodic_border(ms.as_tensor(), xs.as_tensor(), ks.as_tensor());
        let report = check_gradients(f, &[x, k, m], &GradCheckConfig::default())?;
        assert!(report.passed(), "{report:?}");
        Ok(())
    }

    /// Away from the border the op adds nothing.
    #[test]
    fn interior_is_untouched() -> Result<()> {
        let x = randn(&[1, 2, 7, 8], 4)?;
        let k = randn(&[2, 2, 3, 3], 5)?;
        let m = Tensor::zeros((1, 2, 7, 8), DType::F64, &Device::Cpu)?;
        let y = add_periodic_border(&m, &x, &k)?;
        let interior = y.narrow(2, 1, 5)?.narrow(3, 1, 6)?;
        assert_eq!(
            interior.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()?,
            0.0
        );
        assert!(y.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()? > 0.0);
        Ok(())
    }

    #[test]
    fn rejects_bad_shapes_and_dtypes() -> Result<()> {
        let x = randn(&[1, 2, 4, 4], 1)?;
        let m = randn(&[1, 3, 4, 4], 2)?;
        assert!(add_periodic_border(&m, &x, &randn(&[3, 2, 2, 3], 3)?).is_err());
        assert!(add_periodic_border(&m, &x, &randn(&[3, 1, 3, 3], 3)?).is_err());
        assert!(add_periodic_border(&m, &x, &randn(&[2, 2, 3, 3], 3)?).is_err());
        assert!(add_periodic_border(&m, &x, &randn(&[3, 2, 11, 3], 3)?).is_err());
        let k = randn(&[3, 2, 3, 3], 3)?;
        assert!(add_periodic_border(&m.to_dtype(DType::F32)?, &x, &k).is_err());
        assert!(add_periodic_border(&m, &x, &k).is_ok());
        Ok(())
    }
}
