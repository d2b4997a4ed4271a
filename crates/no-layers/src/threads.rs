//! Where a whole forward or training step runs: on a thread of rayon's pool.
//!
//! Every fused CPU op splits its work with rayon. Called from a thread outside the pool
//! (a program's main thread), each such op is handed to the pool as a job while the caller
//! sleeps on a lock until the job is done, and the last pool thread to finish has to wake
//! it. On a virtual machine a wake-up is a hypervisor exit: tens of microseconds, paid once
//! per op, dozens of times per forward. Called from a pool thread, the same op forks there:
//! the calling thread works on its share and takes back what nobody stole, and nothing
//! sleeps between ops. [`on_worker`] moves a closure onto the pool once, so a model's ops
//! all fork from there; `no_models` runs its models' `forward`, `predict` and
//! training step through it for tensors on the CPU.
//!
//! Measured (Intel Xeon, family 6 model 207, a 2-vCPU KVM virtual machine, two rayon
//! threads; `model_timing --work infer --batch 1`, fastest of 60, the binary before and
//! after run alternately, median of 5 rounds, every round faster): POD-DeepONet 0.515 →
//! 0.400 ms, DeepONet-CNN 2.73 → 2.36 ms, FNO 5.08 → 4.44 ms, LocalNO 9.73 → 8.83 ms, CNO
//! 26.7 → 23.1 ms (`docs/performance.md`). The values do not change: every op splits its work by shape, not by thread.
//!
//! A lock must not be held across rayon work that runs inside [`on_worker`]: a pool thread
//! waiting for its stolen jobs may meanwhile run another caller's closure, and if that one
//! takes the same lock the thread waits on itself. The caches of this workspace therefore
//! build their values outside their locks.
//!
//! ```
//! let sum: u64 = no_layers::threads::on_worker(|| {
//!     use rayon::prelude::*;
//!     (1..=100u64).into_par_iter().sum()
//! });
//! assert_eq!(sum, 5050);
//! ```

/// Runs `f` on a thread of rayon's global pool and waits for it; in place when the caller
/// already is a thread of a pool (the global one, or one whose `install` it runs in, whose
/// thread count then stands). A panic in `f` is resumed on the caller.
///
/// A [`crate::ops::composite_only`] guard of the caller's (it counts per thread) holds on
/// the pool thread too while `f` runs, so a test that forces the composite path still
/// gets it.
pub fn on_worker<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let composite = crate::ops::composite_guarded_here();
    // `scope` runs its body on a pool thread (injected into the pool from outside it).
    rayon::scope(|_| {
        let _guard = composite.then(crate::ops::composite_only);
        f()
    })
}

/// [`on_worker`] when `device` is the CPU; otherwise `f` runs on the caller's thread, as
/// before: a GPU's work is queued by the thread that holds its context, and rayon plays no
/// part in it.
pub fn on_worker_for<R: Send>(device: &candle_core::Device, f: impl FnOnce() -> R + Send) -> R {
    if device.is_cpu() {
        on_worker(f)
    } else {
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::{on_worker, on_worker_for};

    #[test]
    fn runs_on_a_pool_thread_and_in_place_inside_one() {
        assert!(rayon::current_thread_index().is_none());
        assert!(on_worker(rayon::current_thread_index).is_some());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .expect("a one-thread pool");
        let outer = std::thread::current().id();
        pool.install(|| {
            let here = std::thread::current().id();
            assert_ne!(here, outer);
            // Already a pool thread: no hop to another pool, no other thread.
            assert_eq!(on_worker(|| std::thread::current().id()), here);
            assert_eq!(on_worker(rayon::current_num_threads), 1);
        });
    }

    #[test]
    fn the_cpu_device_moves_to_the_pool() {
        let cpu = candle_core::Device::Cpu;
        assert!(on_worker_for(&cpu, rayon::current_thread_index).is_some());
    }

    #[test]
    fn a_composite_guard_follows_the_closure() {
        assert!(!on_worker(crate::ops::composite_guarded_here));
        let _guard = crate::ops::composite_only();
        assert!(on_worker(crate::ops::composite_guarded_here));
    }

    #[test]
    fn a_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| on_worker(|| panic!("inside")));
        assert!(caught.is_err());
    }
}
