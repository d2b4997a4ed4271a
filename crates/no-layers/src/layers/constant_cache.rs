//! Values built from constant weights (an inference twin's: no variable, no graph), kept
//! between calls.
//!
//! A twin's weights share storage with the trained variables, and an optimiser step
//! updates those in place, so a kept value is reused only while a bitwise copy of the
//! weights it was built from still equals them; otherwise it is rebuilt. The check reads
//! the weights once in order, which is cheaper than the rebuilds it spares (a gather of a
//! spectral weight with a stride of one mode, or a dozen small tensor ops per LocalNO
//! block on every call).

use candle_core::{CpuStorage, Result, Storage, Tensor};
use std::sync::{Arc, Mutex, PoisonError};

/// Whether every tensor is a constant on the CPU: no variable and no graph behind it.
pub(crate) fn all_constant(tensors: &[&Tensor]) -> bool {
    tensors.iter().all(|t| !t.track_op() && t.device().is_cpu())
}

/// One kept value with its key (what else it depends on, such as a grid size) and the
/// weights it was built from. Clones share the entry.
pub(crate) struct ConstantCache<K, V> {
    entry: Arc<Mutex<Option<Entry<K, V>>>>,
}

struct Entry<K, V> {
    key: K,
    sources: Vec<Tensor>,
    value: V,
}

impl<K, V> Default for ConstantCache<K, V> {
    fn default() -> Self {
        Self {
            entry: Arc::default(),
        }
    }
}

impl<K, V> Clone for ConstantCache<K, V> {
    fn clone(&self) -> Self {
        Self {
            entry: Arc::clone(&self.entry),
        }
    }
}

impl<K, V> std::fmt::Debug for ConstantCache<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_filled() {
            "ConstantCache(filled)"
        } else {
            "ConstantCache(empty)"
        })
    }
}

impl<K: PartialEq, V: Clone> ConstantCache<K, V> {
    /// The kept value when it was built for `key` from weights equal to `sources` (bit for
    /// bit), else `build()`'s, kept with a copy of `sources`.
    pub(crate) fn get_or_build(
        &self,
        key: K,
        sources: &[&Tensor],
        build: impl FnOnce() -> Result<V>,
    ) -> Result<V> {
        {
            // A panic elsewhere while the lock was held leaves at worst a complete entry.
            let entry = self.entry.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = entry.as_ref() {
                let unchanged = e.key == key
                    && e.sources.len() == sources.len()
                    && e.sources
                        .iter()
                        .zip(sources)
                        .all(|(a, b)| same_values(a, b));
                if unchanged {
                    return Ok(e.value.clone());
                }
            }
        }
        // Built and copied with the lock released: the build's parallel work may run on a
        // pool thread that meanwhile takes up another call through this cache
        // (`crate::threads`), which would otherwise wait on the lock it holds itself. Two
        // callers may then both build; the values are equal and the last one is kept.
        let sources = sources.iter().map(|t| t.copy()).collect::<Result<_>>()?;
        let value = build()?;
        *self.entry.lock().unwrap_or_else(PoisonError::into_inner) = Some(Entry {
            key,
            sources,
            value: value.clone(),
        });
        Ok(value)
    }
}

impl<K, V> ConstantCache<K, V> {
    /// Whether a value is kept.
    pub(crate) fn is_filled(&self) -> bool {
        self.entry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }
}

/// Whether two CPU `f32`/`f64` tensors hold bit-identical values (false otherwise).
fn same_values(a: &Tensor, b: &Tensor) -> bool {
    if a.dims() != b.dims() {
        return false;
    }
    let (sa, la) = a.storage_and_layout();
    let (sb, lb) = b.storage_and_layout();
    let (Some((a0, a1)), Some((b0, b1))) = (la.contiguous_offsets(), lb.contiguous_offsets())
    else {
        return false;
    };
    match (&*sa, &*sb) {
        (Storage::Cpu(CpuStorage::F32(x)), Storage::Cpu(CpuStorage::F32(y))) => {
            same_bits(&x[a0..a1], &y[b0..b1], f32::to_bits)
        }
        (Storage::Cpu(CpuStorage::F64(x)), Storage::Cpu(CpuStorage::F64(y))) => {
            same_bits(&x[a0..a1], &y[b0..b1], f64::to_bits)
        }
        _ => false,
    }
}

/// Bitwise equality of two slices (in blocks of 64 without an early exit inside a block,
/// so that the comparison vectorises).
fn same_bits<T: Copy, B: PartialEq>(x: &[T], y: &[T], bits: fn(T) -> B) -> bool {
    x.len() == y.len()
        && x.chunks(64).zip(y.chunks(64)).all(|(a, b)| {
            a.iter()
                .zip(b)
                .fold(true, |same, (&p, &q)| same & (bits(p) == bits(q)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device, Var};
    use std::cell::Cell;

    #[test]
    fn a_value_is_rebuilt_when_its_key_or_weights_change() -> Result<()> {
        let var = Var::ones((3, 4), DType::F32, &Device::Cpu)?;
        let w = var.as_tensor().detach();
        assert!(all_constant(&[&w]) && !all_constant(&[var.as_tensor()]));
        let cache = ConstantCache::<usize, f32>::default();
        let builds = Cell::new(0);
        let get = |key: usize| {
            cache.get_or_build(key, &[&w], || {
                builds.set(builds.get() + 1);
                w.sum_all()?.to_scalar::<f32>()
            })
        };
        assert_eq!(get(1)?, 12.0);
        assert_eq!(get(1)?, 12.0);
        assert_eq!(builds.get(), 1);
        assert_eq!(get(2)?, 12.0);
        assert_eq!(builds.get(), 2);
        // An in-place update of the shared variable (an optimiser step) is seen.
        var.set(&(var.as_tensor() * 2.0)?)?;
        assert_eq!(get(2)?, 24.0);
        assert_eq!(builds.get(), 3);
        assert!(cache.clone().is_filled());
        Ok(())
    }

    #[test]
    fn values_compare_bit_for_bit() -> Result<()> {
        let a = Tensor::new(&[0.0f64, 1.0], &Device::Cpu)?;
        assert!(same_values(&a, &a.copy()?));
        assert!(!same_values(
            &a,
            &Tensor::new(&[-0.0f64, 1.0], &Device::Cpu)?
        ));
        assert!(!same_values(&a, &a.to_dtype(DType::F32)?));
        assert!(!same_values(&a, &a.reshape((2, 1))?));
        Ok(())
    }
}
