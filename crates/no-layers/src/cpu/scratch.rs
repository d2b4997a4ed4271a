//! Per-thread reusable scratch buffers for the fused CPU kernels.
//!
//! The tiled and plane-wise kernels give every rayon task its own buffers through
//! `for_each_init`/`map_init`, whose `init` runs once per task split: dozens of times per
//! op call. Allocating them with `vec![0; n]` zero-filled a few hundred kilobytes each time
//! (9 % of an FNO batch-1 forward in `perf`), and a convolution's patch buffer (11.5 MB for
//! a 32-channel 100 × 100 sample) came from freshly faulted pages on every call.
//! A [`PoolBuf`] takes a buffer from this thread's pool instead and gives it back when
//! dropped, so steady-state calls neither allocate nor zero-fill.
//!
//! The contents of a new [`PoolBuf`] are unspecified (zeros, or values left by an earlier
//! user of the buffer): every user writes an element before reading it. The values the
//! kernels compute do not depend on them, so results stay independent of scheduling.

use std::cell::RefCell;
use std::ops::{Deref, DerefMut};
use std::thread::LocalKey;

/// Buffers kept per thread and element type; more are dropped when given back.
const POOLED_PER_THREAD: usize = 16;

/// Element types with a per-thread pool.
pub(crate) trait Pooled: Copy + Default + 'static {
    /// This thread's pool of spare buffers of this type.
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<Self>>>>;
}

thread_local! {
    static F32_POOL: RefCell<Vec<Vec<f32>>> = const { RefCell::new(Vec::new()) };
    static F64_POOL: RefCell<Vec<Vec<f64>>> = const { RefCell::new(Vec::new()) };
}

impl Pooled for f32 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<f32>>>> {
        &F32_POOL
    }
}

impl Pooled for f64 {
    fn pool() -> &'static LocalKey<RefCell<Vec<Vec<f64>>>> {
        &F64_POOL
    }
}

/// A buffer of `len` elements of unspecified value (module docs), taken from and given
/// back to this thread's pool.
pub(crate) struct PoolBuf<T: Pooled> {
    buf: Vec<T>,
    len: usize,
}

impl<T: Pooled> PoolBuf<T> {
    /// A buffer of `len` elements: the pool's smallest one that is long enough, else its
    /// longest one grown (only the growth is zero-filled), else a new one.
    pub(crate) fn new(len: usize) -> Self {
        // `try_with`: during thread teardown the pool may be gone; then allocate.
        let mut buf = T::pool()
            .try_with(|pool| {
                let mut pool = pool.borrow_mut();
                let fits = (0..pool.len())
                    .filter(|&i| pool[i].len() >= len)
                    .min_by_key(|&i| pool[i].len());
                let pick = fits.or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
                pick.map(|i| pool.swap_remove(i))
            })
            .ok()
            .flatten()
            .unwrap_or_default();
        if buf.len() < len {
            buf.resize(len, T::default());
        }
        Self { buf, len }
    }

    /// Sets the length (contents unspecified, as for [`Self::new`]).
    pub(crate) fn set_len(&mut self, len: usize) {
        if self.buf.len() < len {
            self.buf.resize(len, T::default());
        }
        self.len = len;
    }
}

impl<T: Pooled> Default for PoolBuf<T> {
    fn default() -> Self {
        Self::new(0)
    }
}

impl<T: Pooled> Deref for PoolBuf<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.buf[..self.len]
    }
}

impl<T: Pooled> DerefMut for PoolBuf<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        &mut self.buf[..self.len]
    }
}

impl<T: Pooled> Drop for PoolBuf<T> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() == 0 {
            return;
        }
        // During thread teardown the pool may already be gone: then the buffer is freed.
        let _ = T::pool().try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED_PER_THREAD {
                pool.push(buf);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpu::map::single_threaded;
    use crate::gradcheck::random_like;
    use candle_core::{DType, Device, Result, Tensor, Var};

    /// Fills this thread's pools with long NaN buffers, as if earlier ops had left them.
    fn poison_pools() {
        for _ in 0..POOLED_PER_THREAD {
            f32::pool().with_borrow_mut(|p| p.push(vec![f32::NAN; 1 << 20]));
            f64::pool().with_borrow_mut(|p| p.push(vec![f64::NAN; 1 << 20]));
        }
    }

    /// Outputs and input gradients of the pooled ops (convolution, channel MLP, block
    /// tail, the spectral convolution's transforms) on one thread.
    fn pooled_ops_results(poisoned: bool) -> Result<Vec<Vec<f64>>> {
        single_threaded(|| {
            if poisoned {
                poison_pools();
            }
            let dev = &Device::Cpu;
            let x = Var::from_tensor(&random_like(
                &Tensor::zeros((2, 4, 6, 5), DType::F64, dev)?,
                1,
            )?)?;
            let k = random_like(&Tensor::zeros((4, 4, 3, 3), DType::F64, dev)?, 2)?;
            let conv = crate::ops::conv2d::conv2d(x.as_tensor(), &k, 1, 1)?;
            let w1 = random_like(&Tensor::zeros((3, 4), DType::F64, dev)?, 3)?;
            let b1 = random_like(&Tensor::zeros(3, DType::F64, dev)?, 4)?;
            let w2 = random_like(&Tensor::zeros((4, 3), DType::F64, dev)?, 5)?;
            let b2 = random_like(&Tensor::zeros(4, DType::F64, dev)?, 6)?;
            let mlp = crate::ops::channel_mlp::two_layer_gelu_mlp(&conv, &w1, &b1, &w2, &b2)?;
            let tail_w = crate::ops::fno_block_tail::BlockTailWeights {
                skip: random_like(&Tensor::zeros((4, 4), DType::F64, dev)?, 7)?,
                w1,
                b1,
                w2,
                b2,
                gate: random_like(&Tensor::zeros(4, DType::F64, dev)?, 8)?,
            };
            let y = crate::ops::fno_block_tail::fno_block_tail(
                x.as_tensor(),
                &mlp,
                &tail_w,
                true,
                true,
            )?;
            let vars = crate::init::SeededVarMap::new(9);
            let spectral = crate::layers::spectral::conv::SpectralConv::new(
                &crate::layers::spectral::conv::SpectralConvConfig {
                    in_channels: 4,
                    out_channels: 4,
                    n_modes: vec![4, 4],
                    ..Default::default()
                },
                vars.var_builder(DType::F64, dev),
            )?;
            let y = candle_core::Module::forward(&spectral, &y)?;
            let grads = y.sqr()?.sum_all()?.backward()?;
            let Some(gx) = grads.get(&x) else {
                candle_core::bail!("no input gradient");
            };
            Ok(vec![
                y.flatten_all()?.to_vec1()?,
                gx.flatten_all()?.to_vec1()?,
            ])
        })
    }

    /// Values left in pooled buffers by earlier users never reach a result.
    #[test]
    fn stale_pool_contents_do_not_change_results() -> Result<()> {
        let clean = pooled_ops_results(false)?;
        let poisoned = pooled_ops_results(true)?;
        assert!(clean.iter().flatten().all(|v| v.is_finite()));
        assert_eq!(clean, poisoned);
        Ok(())
    }

    #[test]
    fn buffers_are_reused_and_sized() {
        let first = PoolBuf::<f64>::new(1000);
        let ptr = first.as_ptr();
        assert_eq!(first.len(), 1000);
        drop(first);
        // A smaller request reuses the same allocation (no new one, no zero fill).
        let mut again = PoolBuf::<f64>::new(10);
        assert_eq!(again.len(), 10);
        assert_eq!(again.as_ptr(), ptr);
        again.set_len(2000);
        assert_eq!(again.len(), 2000);
        again[1999] = 1.0;
        // Two live buffers never share memory.
        let other = PoolBuf::<f64>::new(10);
        assert_ne!(other.as_ptr(), again.as_ptr());
    }
}
