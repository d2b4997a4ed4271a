//! Per-channel bias and scale of a `[B, C, ...]` tensor as fused CPU ops.
//!
//! Written with candle's broadcasting, `x + b` and `x·w` with `b`, `w` holding one value
//! per channel are cheap forwards, but their backward sums the gradient over the batch and
//! spatial axes with candle's generic strided reduction, which in an FNO training step
//! took a quarter of the time. These ops do the same arithmetic with contiguous loops:
//! the forward is one pass, and the parameter gradient is one pass that sums each
//! channel's blocks in a fixed order (batch by batch, element by element, in `f64`), so
//! the result does not depend on the thread count. Other dtypes and devices use candle's
//! broadcasting ops.

use crate::cpu::map::contiguous;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// `x + b[c]` over `x` `[B, C, ...]` with `b` holding `C` values (any shape, e.g. `[C]` or
/// `[1, C, 1]`). Differentiable in both arguments.
pub fn add_channel_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    let c = check_channels("add_channel_bias", x, b)?;
    if fused(x, b) {
        x.contiguous()?
            .apply_op2(&b.flatten_all()?.contiguous()?, ChannelBias)
    } else {
        x.broadcast_add(&b.reshape(broadcast_shape(x, c))?)
    }
}

/// `x·w[c]` over `x` `[B, C, ...]` with `w` holding `C` values. Differentiable in both.
pub fn scale_channels(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    let c = check_channels("scale_channels", x, w)?;
    if fused(x, w) {
        x.contiguous()?
            .apply_op2(&w.flatten_all()?.contiguous()?, ChannelScale)
    } else {
        x.broadcast_mul(&w.reshape(broadcast_shape(x, c))?)
    }
}

/// The channel count, after checking that `per_channel` holds one value per channel of `x`.
fn check_channels(op: &str, x: &Tensor, per_channel: &Tensor) -> Result<usize> {
    if x.rank() < 2 {
        candle_core::bail!("{op}: input {:?} needs [batch, channels, ...]", x.dims());
    }
    let c = x.dim(1)?;
    if per_channel.elem_count() != c {
        candle_core::bail!(
            "{op}: {:?} holds {} values, expected one per channel ({c}) of input {:?}",
            per_channel.dims(),
            per_channel.elem_count(),
            x.dims()
        );
    }
    Ok(c)
}

/// Whether the fused CPU kernels apply ([`crate::ops::fused_cpu`]).
fn fused(x: &Tensor, p: &Tensor) -> bool {
    crate::ops::fused_cpu(&[x, p])
}

/// `[1, C, 1, ...]` matching the rank of `x`.
fn broadcast_shape(x: &Tensor, c: usize) -> Vec<usize> {
    let mut s = vec![1; x.rank()];
    s[1] = c;
    s
}

/// `(batch, channels, elements per channel block)` of a `[B, C, ...]` layout.
fn blocks(l: &Layout) -> (usize, usize, usize) {
    let d = l.dims();
    (d[0], d[1], d[2..].iter().product())
}

/// Numbers the kernels run on.
trait Real:
    Copy + Default + Send + Sync + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self>
{
    fn to_f64(self) -> f64;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    fn to_f64(self) -> f64 {
        self as f64
    }
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    fn to_f64(self) -> f64 {
        self
    }
    fn from_f64(v: f64) -> Self {
        v
    }
}

/// `out[b, c, i] = f(x[b, c, i], p[c])`, one rayon task per `(b, c)` block. `f` is generic
/// (not a `fn` pointer) so that it inlines and the loop vectorises: through a pointer this
/// was a call per element, 12 % of an FNO forward.
fn per_channel_map<T: Real>(x: &[T], p: &[T], n: usize, f: impl Fn(T, T) -> T + Sync) -> Vec<T> {
    let c = p.len();
    if n == 0 || c == 0 {
        return vec![T::default(); x.len()];
    }
    // Written straight into the spare capacity: a zero fill first was a cold pass over the
    // whole feature map (docs/performance.md, "No zero fill before a full overwrite").
    let mut out = Vec::with_capacity(x.len());
    out.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(n)
        .zip(x.par_chunks(n))
        .enumerate()
        .for_each(|(k, (o, x))| {
            let pc = p[k % c];
            for (o, &x) in o.iter_mut().zip(x) {
                o.write(f(x, pc));
            }
        });
    // SAFETY: the chunks of `n` cover `0..x.len()` (a whole number of `[B, C, n]` blocks)
    // and every element of each was written above.
    unsafe { out.set_len(x.len()) };
    out
}

/// `out[c] = Σ_{b,i} a[b, c, i]·g(b, c, i)` where `g` is `b` when given, else 1; summed in
/// `f64`, batch by batch in order, one rayon task per channel.
fn per_channel_sum<T: Real>(a: &[T], b: Option<&[T]>, (nb, c, n): (usize, usize, usize)) -> Vec<T> {
    (0..c)
        .into_par_iter()
        .map(|ch| {
            let mut total = 0.0f64;
            for batch in 0..nb {
                let start = (batch * c + ch) * n;
                let a = &a[start..start + n];
                total += match b {
                    Some(b) => a
                        .iter()
                        .zip(&b[start..start + n])
                        .map(|(&a, &b)| a.to_f64() * b.to_f64())
                        .sum::<f64>(),
                    None => a.iter().map(|&a| a.to_f64()).sum::<f64>(),
                };
            }
            T::from_f64(total)
        })
        .collect()
}

/// Adds a per-channel bias (`x`, `b` with `C` values).
#[derive(Debug, Clone, Copy)]
struct ChannelBias;

/// Multiplies by a per-channel scale (`x`, `w` with `C` values).
#[derive(Debug, Clone, Copy)]
struct ChannelScale;

/// Sums a `[B, C, ...]` tensor to `[C]` (no backward: used inside backward passes).
#[derive(Debug, Clone, Copy)]
struct ChannelSum;

/// `Σ_{b,i} a[b, c, i]·x[b, c, i]` to `[C]` (no backward: used inside backward passes).
#[derive(Debug, Clone, Copy)]
struct ChannelDot;

/// Runs a per-channel map on matching f32/f64 storages.
fn map_storage(
    op: &str,
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    f32_op: impl Fn(f32, f32) -> f32 + Sync,
    f64_op: impl Fn(f64, f64) -> f64 + Sync,
) -> Result<(CpuStorage, Shape)> {
    let (_, c, n) = blocks(l1);
    if l2.shape().elem_count() != c {
        candle_core::bail!(
            "{op}: {} per-channel values for {c} channels",
            l2.shape().elem_count()
        );
    }
    let out = match (s1, s2) {
        (CpuStorage::F32(x), CpuStorage::F32(p)) => CpuStorage::F32(per_channel_map(
            contiguous("channel op", x, l1)?,
            contiguous("channel op", p, l2)?,
            n,
            f32_op,
        )),
        (CpuStorage::F64(x), CpuStorage::F64(p)) => CpuStorage::F64(per_channel_map(
            contiguous("channel op", x, l1)?,
            contiguous("channel op", p, l2)?,
            n,
            f64_op,
        )),
        (a, b) => candle_core::bail!(
            "{op}: dtypes {:?} and {:?} not handled",
            a.dtype(),
            b.dtype()
        ),
    };
    Ok((out, l1.shape().clone()))
}

impl CustomOp2 for ChannelBias {
    fn name(&self) -> &'static str {
        "channel-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_storage(self.name(), s1, l1, s2, l2, |x, b| x + b, |x, b| x + b)
    }

    fn bwd(
        &self,
        _x: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad_b = grad.contiguous()?.apply_op1_no_bwd(&ChannelSum)?;
        Ok((Some(grad.clone()), Some(grad_b)))
    }
}

impl CustomOp2 for ChannelScale {
    fn name(&self) -> &'static str {
        "channel-scale"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        map_storage(self.name(), s1, l1, s2, l2, |x, w| x * w, |x, w| x * w)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let grad_x = grad.apply_op2_no_bwd(w, &ChannelScale)?;
        let grad_w = grad.apply_op2_no_bwd(x, &ChannelDot)?;
        Ok((Some(grad_x), Some(grad_w)))
    }
}

impl CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "channel-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = blocks(l);
        let out = match s {
            CpuStorage::F32(v) => {
                CpuStorage::F32(per_channel_sum(contiguous("channel op", v, l)?, None, dims))
            }
            CpuStorage::F64(v) => {
                CpuStorage::F64(per_channel_sum(contiguous("channel op", v, l)?, None, dims))
            }
            other => candle_core::bail!("channel-sum: dtype {:?} not handled", other.dtype()),
        };
        Ok((out, Shape::from(dims.1)))
    }
}

impl CustomOp2 for ChannelDot {
    fn name(&self) -> &'static str {
        "channel-dot"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.shape() != l2.shape() {
            candle_core::bail!(
                "channel-dot: shapes {:?} and {:?} differ",
                l1.dims(),
                l2.dims()
            );
        }
        let dims = blocks(l1);
        let out = match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => CpuStorage::F32(per_channel_sum(
                contiguous("channel op", a, l1)?,
                Some(contiguous("channel op", b, l2)?),
                dims,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => CpuStorage::F64(per_channel_sum(
                contiguous("channel op", a, l1)?,
                Some(contiguous("channel op", b, l2)?),
                dims,
            )),
            (a, b) => candle_core::bail!(
                "channel-dot: dtypes {:?} and {:?} not handled",
                a.dtype(),
                b.dtype()
            ),
        };
        Ok((out, Shape::from(dims.1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gradcheck::{check_gradients, random_like, GradCheckConfig};
    use candle_core::{DType, Device, Var};

    fn input(shape: &[usize], seed: u64) -> Result<Tensor> {
        random_like(&Tensor::zeros(shape, DType::F64, &Device::Cpu)?, seed)
    }

    #[test]
    fn match_candle_broadcasting() -> Result<()> {
        let x = input(&[3, 4, 5, 6], 1)?;
        let p = input(&[4], 2)?;
        let p4 = p.reshape((1, 4, 1, 1))?;
        let diff = |a: Tensor, b: Tensor| -> Result<f64> {
            (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f64>()
        };
        assert!(diff(add_channel_bias(&x, &p)?, x.broadcast_add(&p4)?)? < 1e-15);
        assert!(diff(scale_channels(&x, &p)?, x.broadcast_mul(&p4)?)? < 1e-15);
        // f32 and a bias stored as [1, C, 1] (pointwise_linear's layout).
        let xf = x.to_dtype(DType::F32)?;
        let pf = p.to_dtype(DType::F32)?.reshape((1, 4, 1))?;
        let got = add_channel_bias(&xf, &pf)?.to_dtype(DType::F64)?;
        assert!(diff(got, x.broadcast_add(&p4)?)? < 1e-6);
        Ok(())
    }

    #[test]
    fn wrong_channel_counts_are_errors() -> Result<()> {
        let x = input(&[2, 3, 4], 1)?;
        let p = input(&[4], 2)?;
        let e = add_channel_bias(&x, &p).expect_err("4 values for 3 channels");
        assert!(e.to_string().contains("one per channel (3)"), "{e}");
        assert!(scale_channels(&x.flatten_all()?, &p).is_err());
        Ok(())
    }

    #[test]
    fn gradients_match_finite_differences() -> Result<()> {
        let x = Var::from_tensor(&input(&[2, 3, 2, 3], 3)?)?;
        let p = Var::from_tensor(&input(&[3], 4)?)?;
        let w = input(&[2, 3, 2, 3], 5)?;
        for scale in [false, true] {
            let (xs, ps, ws) = (x.clone(), p.clone(), w.clone());
            let r = check_gradients(
                move || {
                    // A strided input (transpose of the last two axes) takes the copy path.
                    let xt = xs.as_tensor().transpose(2, 3)?;
                    let y = if scale {
                        scale_channels(&xt, ps.as_tensor())?
                    } else {
                        add_channel_bias(&xt, ps.as_tensor())?
                    };
                    (y.sqr()? * ws.transpose(2, 3)?)?.sum_all()
                },
                &[x.clone(), p.clone()],
                &GradCheckConfig::default(),
            )?;
            assert!(r.passed(), "scale={scale}: {r:?}");
        }
        Ok(())
    }

    #[test]
    fn parameter_gradients_do_not_depend_on_the_thread_count() -> Result<()> {
        let x = input(&[4, 8, 50, 50], 6)?.to_dtype(DType::F32)?;
        let grad_of_scale = || -> Result<Vec<f32>> {
            let w = Var::from_tensor(&Tensor::ones(8, DType::F32, &Device::Cpu)?)?;
            let g = scale_channels(&x, w.as_tensor())?
                .sqr()?
                .sum_all()?
                .backward()?;
            g.get(w.as_tensor())
                .expect("gradient of w")
                .to_vec1::<f32>()
        };
        assert_eq!(
            crate::cpu::map::single_threaded(grad_of_scale)?,
            grad_of_scale()?
        );
        Ok(())
    }
}
