//! The spectral convolution's truncated transforms as two fused CPU ops.
//!
//! [`crate::layers::spectral::conv::SpectralConv`] moves a field `[B, C, N1, N2]` to its kept
//! modes, laid out `[M, B, 2C]` (mode `m = k·q + j`, real parts in the first `C` columns,
//! imaginary parts in the last `C`), mixes channels mode by mode, and moves the result
//! back to a grid. Written with candle ops the two transforms were two basis products plus
//! narrows, additions, a negation, four concatenations and two permuted copies of the
//! spectrum, each allocating, with a backward of the same shape: about three quarters of
//! an FNO forward and of its training step. Here each transform is one op that works
//! plane by plane in cache:
//!
//! * [`grid_to_spectrum`]: per plane `A = x·Rx` (`[N1, 2q]`, the last axis's real DFT
//!   basis), `P = Dt·A` (`[2c, 2q]`, the centred axis's basis, cosine rows then sine
//!   rows), `Re Z = P[cos, Re] + P[sin, Im]`, `Im Z = P[cos, Im] − P[sin, Re]` (the
//!   complex product with `cos − i·sin`).
//! * [`spectrum_to_grid`]: per plane the real block `[[Yr, Yi], [−Yi, Yr]]`,
//!   `U = Et·block` (`[N1', 2q]`, `Et = [cos | sin]`: the complex product with
//!   `cos + i·sin`), `y = U·Rxi` (`[N1', N2']`).
//!
//! Both are linear, and each one's adjoint is the other with the transposed bases:
//! `spectrum_to_grid(Dtᵀ, Rxᵀ)` is the backward of `grid_to_spectrum(Rx, Dt)` and
//! `grid_to_spectrum(Rxiᵀ, Etᵀ)` that of `spectrum_to_grid(Et, Rxi)` (the complex
//! product with `cos ∓ i·sin` has the product with `cos ± i·sin` as its real adjoint).
//! So the backward is the same two kernels, and higher derivatives work too.
//!
//! A one-dimensional field `[B, C, N]` is the case `N1 = 1` with `Dt = [[1], [0]]` and
//! `Et = [[1, 0]]`. `f32` and `f64` on the CPU; the spectral convolution uses the
//! composite form elsewhere. Planes are independent and each is computed by one thread,
//! so results do not depend on the thread count.

use crate::cpu::gemm_view::{gemm, GemmScalar, MatMut, MatRef};
use crate::cpu::map::contiguous;
use crate::cpu::scratch::PoolBuf;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::ops::{Add, Neg, Sub};

/// Planes one task transforms together: their middle products run as one product
/// `PLANES_PER_TASK` times wider (`[2c, N1] · [N1, 8·2q]` instead of eight of `2q = 18`
/// columns). Task boundaries depend on the sizes only, not on the thread count.
const PLANES_PER_TASK: usize = 8;

/// The element types the transforms run on.
trait Scalar: GemmScalar + Add<Output = Self> + Sub<Output = Self> + Neg<Output = Self> {}

impl Scalar for f32 {}
impl Scalar for f64 {}

/// A field `[B, C, N1, N2]` (or `[B, C, N2]`) → its kept modes `[c·q, B, 2C]`.
///
/// `rx` is `[N2, 2q]` (`x·rx = [Re | Im]` of the last axis's modes) and `dt` is
/// `[2c, N1]` (cosine rows, then sine rows, of the centred axis; `[[1], [0]]` for a
/// one-dimensional field). The bases get no gradient. Any layout works; an `rx` with
/// contiguous columns (the `.t()` of [`crate::layers::spectral::fourier::rfft_basis_transposed`]) makes the
/// last-axis product run as dot products along the grid rows, the fastest form.
///
/// Fused where [`crate::ops::fused_cpu`] says so, else its composite form (candle matmuls).
pub fn grid_to_spectrum(x: &Tensor, rx: &Tensor, dt: &Tensor) -> Result<Tensor> {
    if crate::ops::fused_cpu(&[x, rx, dt]) {
        return x.contiguous()?.apply_op3(rx, dt, GridToSpectrum);
    }
    grid_to_spectrum_composite(x, rx, dt)
}

/// [`grid_to_spectrum`] from candle ops: the specification of the fused op and the path
/// on every other device. The bases are treated as constants (no gradient is computed
/// for them).
fn grid_to_spectrum_composite(x: &Tensor, rx: &Tensor, dt: &Tensor) -> Result<Tensor> {
    let (b, c, n1, n2) = field_dims("grid_to_spectrum", x.dims())?;
    let (two_q, two_c) = (rx.dim(1)?, dt.dim(0)?);
    let (q, cc) = (two_q / 2, two_c / 2);
    let x = x.contiguous()?.reshape((b, c, n1, n2))?;
    let a = x.broadcast_matmul(&rx.detach().contiguous()?)?; // [B, C, N1, 2q]
    let p = dt.detach().contiguous()?.broadcast_matmul(&a)?; // [B, C, 2c, 2q]
    let block = |r: usize, col: usize| p.narrow(2, r * cc, cc)?.narrow(3, col * q, q);
    let zr = (block(0, 0)? + block(1, 1)?)?.reshape((b, c, cc * q))?;
    let zi = (block(0, 1)? - block(1, 0)?)?.reshape((b, c, cc * q))?;
    Tensor::cat(&[zr, zi], 1)?.permute((2, 0, 1))?.contiguous()
}

/// Kept modes `[c·q, B, 2C]` → a field `[B, C, N1', N2']` (or `[B, C, N2']` when
/// `two_d` is false, with `N1' = 1`).
///
/// `et` is `[N1', 2c]` (`[cos | sin]` of the centred axis; `[[1, 0]]` for one
/// dimension) and `rxi` is `[2q, N2']` (the last axis's inverse real basis). The bases
/// get no gradient.
///
/// Fused where [`crate::ops::fused_cpu`] says so, else its composite form (candle matmuls).
pub fn spectrum_to_grid(y: &Tensor, et: &Tensor, rxi: &Tensor, two_d: bool) -> Result<Tensor> {
    if crate::ops::fused_cpu(&[y, et, rxi]) {
        return y.contiguous()?.apply_op3(et, rxi, SpectrumToGrid { two_d });
    }
    spectrum_to_grid_composite(y, et, rxi, two_d)
}

/// [`spectrum_to_grid`] from candle ops: the specification of the fused op and the path
/// on every other device. The bases are treated as constants.
fn spectrum_to_grid_composite(
    y: &Tensor,
    et: &Tensor,
    rxi: &Tensor,
    two_d: bool,
) -> Result<Tensor> {
    let (m, b, two_ch) = y.dims3()?;
    let (_, two_c) = et.dims2()?;
    let (two_q, n2) = rxi.dims2()?;
    let (ch, cc, q) = (two_ch / 2, two_c / 2, two_q / 2);
    if cc * q != m || 2 * ch != two_ch {
        candle_core::bail!(
            "spectrum_to_grid: spectrum {:?} does not fit bases {:?} and {:?}",
            y.dims(),
            et.dims(),
            rxi.dims()
        );
    }
    let y = y.permute((1, 2, 0))?; // [B, 2C, M]
    let yr = y.narrow(1, 0, ch)?.contiguous()?.reshape((b, ch, cc, q))?;
    let yi = y.narrow(1, ch, ch)?.contiguous()?.reshape((b, ch, cc, q))?;
    let top = Tensor::cat(&[&yr, &yi], 3)?;
    let bottom = Tensor::cat(&[&yi.neg()?, &yr], 3)?;
    let block = Tensor::cat(&[top, bottom], 2)?; // [B, C, 2c, 2q]
    let u = et.detach().contiguous()?.broadcast_matmul(&block)?; // [B, C, N1', 2q]
    let out = u.broadcast_matmul(&rxi.detach().contiguous()?)?; // [B, C, N1', N2']
    if two_d {
        Ok(out)
    } else {
        out.reshape((b, ch, n2))
    }
}

/// The op behind [`grid_to_spectrum`].
#[derive(Debug, Clone, Copy)]
struct GridToSpectrum;

/// The op behind [`spectrum_to_grid`].
#[derive(Debug, Clone, Copy)]
struct SpectrumToGrid {
    two_d: bool,
}

/// A 2-D basis layout as a strided matrix view of its storage.
fn basis_view<'a, T>(op: &str, data: &'a [T], l: &Layout) -> Result<MatRef<'a, T>> {
    let (dims, stride) = (l.dims(), l.stride());
    if dims.len() != 2 {
        candle_core::bail!("{op}: a basis must be a matrix, got shape {dims:?}");
    }
    let data = data.get(l.start_offset()..).unwrap_or(&[]);
    Ok(MatRef::strided(
        data,
        (dims[0], dims[1]),
        (stride[0], stride[1]),
    ))
}

/// `(B, C, N1, N2)` of a field `[B, C, N2]` or `[B, C, N1, N2]`.
fn field_dims(op: &str, dims: &[usize]) -> Result<(usize, usize, usize, usize)> {
    match *dims {
        [b, c, n2] => Ok((b, c, 1, n2)),
        [b, c, n1, n2] => Ok((b, c, n1, n2)),
        _ => {
            candle_core::bail!("{op}: expected a field [B, C, N2] or [B, C, N1, N2], got {dims:?}")
        }
    }
}

/// Dispatches a kernel on the dtype of three CPU storages.
macro_rules! dispatch {
    ($op:literal, $a:expr, $b:expr, $c:expr, $kernel:ident, $args:expr) => {
        match ($a, $b, $c) {
            (CpuStorage::F32(a), CpuStorage::F32(b), CpuStorage::F32(c)) => {
                CpuStorage::F32($kernel(a, b, c, $args)?)
            }
            (CpuStorage::F64(a), CpuStorage::F64(b), CpuStorage::F64(c)) => {
                CpuStorage::F64($kernel(a, b, c, $args)?)
            }
            _ => candle_core::bail!(
                "{}: expected f32 or f64 storages of one dtype, got {:?}, {:?}, {:?}",
                $op,
                $a.dtype(),
                $b.dtype(),
                $c.dtype()
            ),
        }
    };
}

/// The layouts and output dims one kernel call needs.
type Layouts<'a> = (&'a Layout, &'a Layout, &'a Layout);

impl CustomOp3 for GridToSpectrum {
    fn name(&self) -> &'static str {
        "grid-to-spectrum"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        xl: &Layout,
        rx: &CpuStorage,
        rxl: &Layout,
        dt: &CpuStorage,
        dtl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, _, _) = field_dims(self.name(), xl.dims())?;
        let out = dispatch!("grid-to-spectrum", x, rx, dt, g2s_kernel, (xl, rxl, dtl));
        let modes = (dtl.dims()[0] / 2) * (rxl.dims()[1] / 2);
        Ok((out, Shape::from((modes, b, 2 * c))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        rx: &Tensor,
        dt: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gx = spectrum_to_grid(grad, &dt.t()?, &rx.t()?, x.rank() == 4)?;
        Ok((Some(gx), None, None))
    }
}

impl CustomOp3 for SpectrumToGrid {
    fn name(&self) -> &'static str {
        "spectrum-to-grid"
    }

    fn cpu_fwd(
        &self,
        y: &CpuStorage,
        yl: &Layout,
        et: &CpuStorage,
        etl: &Layout,
        rxi: &CpuStorage,
        rxil: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c2) = match *yl.dims() {
            [_, b, c2] => (b, c2),
            ref d => candle_core::bail!("spectrum-to-grid: expected [M, B, 2C], got {d:?}"),
        };
        let out = dispatch!("spectrum-to-grid", y, et, rxi, s2g_kernel, (yl, etl, rxil));
        let (n1, n2) = (etl.dims()[0], rxil.dims().get(1).copied().unwrap_or(0));
        let shape = if self.two_d {
            Shape::from((b, c2 / 2, n1, n2))
        } else {
            Shape::from((b, c2 / 2, n2))
        };
        Ok((out, shape))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        et: &Tensor,
        rxi: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let gy = grid_to_spectrum(grad, &rxi.t()?, &et.t()?)?;
        Ok((Some(gy), None, None))
    }
}

/// [`grid_to_spectrum`] on slices.
fn g2s_kernel<T: Scalar>(x: &[T], rx: &[T], dt: &[T], (xl, rxl, dtl): Layouts) -> Result<Vec<T>> {
    const OP: &str = "grid-to-spectrum";
    let (b, c, n1, n2) = field_dims(OP, xl.dims())?;
    let x = contiguous(OP, x, xl)?;
    let (rx, dt) = (basis_view(OP, rx, rxl)?, basis_view(OP, dt, dtl)?);
    let (q2, c2) = (rxl.dims()[1], dtl.dims()[0]);
    if rxl.dims()[0] != n2 || dtl.dims()[1] != n1 || q2 % 2 != 0 || c2 % 2 != 0 {
        candle_core::bail!(
            "{OP}: bases {:?} and {:?} do not fit a field {:?} (expected [{n2}, 2q] and [2c, {n1}])",
            rxl.dims(),
            dtl.dims(),
            xl.dims()
        );
    }
    let (q, count) = (q2 / 2, c2 / 2);
    let modes = q * count;
    let planes = b * c;

    // Spectra plane by plane first ([plane][Re | Im][mode]), then regrouped by mode.
    let mut per_plane: Vec<T> = Vec::with_capacity(planes * 2 * modes);
    if modes > 0 {
        per_plane.spare_capacity_mut()[..planes * 2 * modes]
            .par_chunks_mut(PLANES_PER_TASK * 2 * modes)
            .enumerate()
            .try_for_each_init(
                || {
                    let wide = PLANES_PER_TASK * q2;
                    (PoolBuf::new(n1 * wide), PoolBuf::new(c2 * wide))
                },
                |(a, p), (task, z)| {
                    let first = task * PLANES_PER_TASK;
                    let group = z.len() / (2 * modes);
                    // The group's `A`s side by side (`[N1, group·2q]`), so that `Dt`
                    // multiplies them all at once: a product `group` times wider, which
                    // the `gemm` crate runs twice as fast as one plane's 18 columns.
                    let wide = group * q2;
                    for g in 0..group {
                        let plane = &x[(first + g) * n1 * n2..(first + g + 1) * n1 * n2];
                        gemm(
                            MatMut::strided_rows(&mut a[g * q2..], (n1, q2), wide),
                            MatRef::row_major(plane, n1, n2),
                            rx,
                            false,
                            1,
                        )?;
                    }
                    let (a, p) = (&a[..n1 * wide], &mut p[..c2 * wide]);
                    gemm(
                        MatMut::row_major(p, c2, wide),
                        dt,
                        MatRef::row_major(a, n1, wide),
                        false,
                        1,
                    )?;
                    for (g, z) in z.chunks_exact_mut(2 * modes).enumerate() {
                        let (zr, zi) = z.split_at_mut(modes);
                        for k in 0..count {
                            let cos = &p[k * wide + g * q2..][..q2];
                            let sin = &p[(count + k) * wide + g * q2..][..q2];
                            for j in 0..q {
                                zr[k * q + j].write(cos[j] + sin[q + j]);
                                zi[k * q + j].write(cos[q + j] - sin[j]);
                            }
                        }
                    }
                    Ok::<(), candle_core::Error>(())
                },
            )?;
    }
    // SAFETY: every chunk of `2·modes` elements was written in full above (each of the
    // `count·q` modes once in each half); with no modes the length is 0.
    unsafe { per_plane.set_len(planes * 2 * modes) };
    let row = 2 * c;
    let mut out: Vec<T> = Vec::with_capacity(modes * b * row);
    if b * c > 0 {
        out.spare_capacity_mut()[..modes * b * row]
            .par_chunks_mut(b * row)
            .enumerate()
            .for_each(|(m, dst)| {
                for (plane, src) in per_plane.chunks_exact(2 * modes).enumerate() {
                    let (bi, ci) = (plane / c, plane % c);
                    dst[bi * row + ci].write(src[m]);
                    dst[bi * row + c + ci].write(src[modes + m]);
                }
            });
    }
    // SAFETY: each mode's row of `B·2C` elements was written in full (every plane `(b, c)`
    // writes columns `c` and `C + c` of block `b`); with no planes the length is 0.
    unsafe { out.set_len(modes * b * row) };
    Ok(out)
}

/// [`spectrum_to_grid`] on slices.
fn s2g_kernel<T: Scalar>(y: &[T], et: &[T], rxi: &[T], (yl, etl, rxil): Layouts) -> Result<Vec<T>> {
    const OP: &str = "spectrum-to-grid";
    let y = contiguous(OP, y, yl)?;
    let (modes, b, c2ch) = match *yl.dims() {
        [m, b, c2] if c2 % 2 == 0 => (m, b, c2),
        ref d => candle_core::bail!("{OP}: expected a spectrum [M, B, 2C], got {d:?}"),
    };
    let (et, rxi) = (basis_view(OP, et, etl)?, basis_view(OP, rxi, rxil)?);
    let (n1, c2) = (etl.dims()[0], etl.dims()[1]);
    let (q2, n2) = (rxil.dims()[0], rxil.dims()[1]);
    if c2 % 2 != 0 || q2 % 2 != 0 || (c2 / 2) * (q2 / 2) != modes {
        candle_core::bail!(
            "{OP}: bases {:?} and {:?} do not fit {modes} modes (expected [N1, 2c] and [2q, N2] with c·q = {modes})",
            etl.dims(),
            rxil.dims()
        );
    }
    let (q, count, c) = (q2 / 2, c2 / 2, c2ch / 2);
    let planes = b * c;
    let plane_len = n1 * n2;
    let mut out: Vec<T> = Vec::with_capacity(planes * plane_len);
    if plane_len > 0 {
        out.spare_capacity_mut()[..planes * plane_len]
            .par_chunks_mut(PLANES_PER_TASK * plane_len)
            .enumerate()
            .try_for_each_init(
                || {
                    let wide = PLANES_PER_TASK * q2;
                    (PoolBuf::new(c2 * wide), PoolBuf::new(n1 * wide))
                },
                |(block, u), (task, dst): (usize, &mut [MaybeUninit<T>])| {
                    let first = task * PLANES_PER_TASK;
                    let group = dst.len() / plane_len;
                    // The group's real blocks side by side (`[2c, group·2q]`), so that
                    // `Et` multiplies them all at once (see `g2s_kernel`).
                    let wide = group * q2;
                    for g in 0..group {
                        let (bi, ci) = ((first + g) / c, (first + g) % c);
                        for k in 0..count {
                            let (cos_row, sin_row) =
                                (k * wide + g * q2, (count + k) * wide + g * q2);
                            for j in 0..q {
                                let at = (k * q + j) * b * c2ch + bi * c2ch + ci;
                                let (re, im) = (y[at], y[at + c]);
                                block[cos_row + j] = re;
                                block[cos_row + q + j] = im;
                                block[sin_row + j] = -im;
                                block[sin_row + q + j] = re;
                            }
                        }
                    }
                    let (block, u) = (&block[..c2 * wide], &mut u[..n1 * wide]);
                    gemm(
                        MatMut::row_major(u, n1, wide),
                        et,
                        MatRef::row_major(block, c2, wide),
                        false,
                        1,
                    )?;
                    for (g, dst) in dst.chunks_exact_mut(plane_len).enumerate() {
                        gemm(
                            MatMut::uninit(dst, n1, n2),
                            MatRef::strided(&u[g * q2..], (n1, q2), (wide, 1)),
                            rxi,
                            false,
                            1,
                        )?;
                    }
                    Ok::<(), candle_core::Error>(())
                },
            )?;
    }
    // SAFETY: `gemm` overwrote every chunk (`n1·n2` elements each) in full; with empty
    // planes the length is 0.
    unsafe { out.set_len(planes * plane_len) };
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    fn zeros(shape: &[usize], dtype: DType) -> Result<Tensor> {
        Tensor::zeros(shape, dtype, &Device::Cpu)
    }

    #[test]
    fn bases_that_do_not_fit_the_field_are_errors() -> Result<()> {
        let x = zeros(&[2, 3, 5, 6], DType::F32)?;
        // A last-axis basis for 7 points, a centred one for 5: the first does not fit.
        let err = grid_to_spectrum(
            &x,
            &zeros(&[7, 4], DType::F32)?,
            &zeros(&[4, 5], DType::F32)?,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("do not fit"), "{err}");
        // An odd number of basis rows has no cosine/sine halves.
        assert!(grid_to_spectrum(
            &x,
            &zeros(&[6, 4], DType::F32)?,
            &zeros(&[3, 5], DType::F32)?
        )
        .is_err());
        // Mixed dtypes and a field of the wrong rank.
        assert!(grid_to_spectrum(
            &x,
            &zeros(&[6, 4], DType::F64)?,
            &zeros(&[4, 5], DType::F64)?
        )
        .is_err());
        assert!(grid_to_spectrum(
            &zeros(&[6], DType::F32)?,
            &zeros(&[6, 4], DType::F32)?,
            &zeros(&[2, 1], DType::F32)?
        )
        .is_err());
        // A spectrum of 2·2 modes with bases for 2·3.
        let y = zeros(&[4, 2, 6], DType::F32)?;
        let err = spectrum_to_grid(
            &y,
            &zeros(&[5, 4], DType::F32)?,
            &zeros(&[6, 8], DType::F32)?,
            true,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("do not fit"), "{err}");
        assert!(spectrum_to_grid(
            &zeros(&[4, 2, 5], DType::F32)?,
            &zeros(&[5, 4], DType::F32)?,
            &zeros(&[4, 8], DType::F32)?,
            true
        )
        .is_err());
        Ok(())
    }

    #[test]
    fn one_dimensional_fields_use_a_trivial_first_axis() -> Result<()> {
        // With identity bases the transforms only regroup: x[b, c, 0, j] ↔ Z[j, b, (Re c)].
        let x = Tensor::arange(0f64, 12.0, &Device::Cpu)?.reshape((2, 3, 2))?;
        let rx = Tensor::new(&[[1f64, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], &Device::Cpu)?;
        let dt = Tensor::new(&[[1f64], [0.0]], &Device::Cpu)?;
        let z = grid_to_spectrum(&x, &rx, &dt)?;
        assert_eq!(z.dims(), &[2, 2, 6]);
        let z = z.to_vec3::<f64>()?;
        assert_eq!(z[1][1], vec![7.0, 9.0, 11.0, 0.0, 0.0, 0.0]);
        let back = spectrum_to_grid(
            &Tensor::new(z.concat().concat().as_slice(), &Device::Cpu)?.reshape((2, 2, 6))?,
            &dt.t()?,
            &rx.t()?,
            false,
        )?;
        assert_eq!(back.dims(), &[2, 3, 2]);
        assert_eq!(
            back.flatten_all()?.to_vec1::<f64>()?,
            x.flatten_all()?.to_vec1::<f64>()?
        );
        Ok(())
    }
}
