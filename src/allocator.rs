//! Keeping freed memory in the process, for programs that run candle models.
//!
//! candle allocates a fresh buffer for the result of every tensor operation. glibc's
//! `malloc` serves buffers above its mmap threshold (at most 32 MiB) with `mmap` and gives
//! them back to the kernel on `free`, so the next operation's buffer is faulted in and
//! zeroed page by page again. At batch 32 on a 100 × 100 grid an FNO activation is 41 MB:
//! measured on the 2-core dev machine, that re-faulting took 35 % of an FNO training step
//! and more than half of a batch-32 forward. [`keep_freed_memory`] tells glibc to serve
//! every size from its heap and never trim it, the same settings
//! `benches/python/compare_neuralop.py` gives PyTorch through `MALLOC_*` variables. It also
//! keeps a single arena: buffers allocated on rayon's worker threads otherwise land in
//! per-thread arenas, which glibc shrinks on `free` whatever the trim threshold (with the
//! AVX-512 matmul kernels this re-faulting tripled a batch-32 FNO forward, 368 → 1,071 ms).
//! The cost: the process keeps its peak heap until it exits.
//!
//! The examples and the benches call it first thing. It is a no-op outside Linux/glibc.

/// Tells glibc's allocator to keep freed memory for reuse instead of returning it to the
/// kernel (no `mmap` for large blocks, no heap trimming, a 512 MiB top pad, one arena). Call it once,
/// at the start of `main`, before any large allocation; returns whether every setting was
/// accepted (always `true` where there is nothing to set).
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: `mallopt` only changes allocator parameters; glibc documents it as safe to
        // call at any time, and these four are plain integer settings.
        unsafe {
            let no_mmap = libc::mallopt(libc::M_MMAP_MAX, 0);
            // -1 disables trimming completely (mallopt(3)); `i32::MAX` did not: once the
            // heap's free top passed 2 GiB (an FNO at batch 32 after other work in the same
            // process), glibc trimmed it and every later buffer was faulted in again.
            let no_trim = libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
            let top_pad = libc::mallopt(libc::M_TOP_PAD, 512 << 20);
            let one_arena = libc::mallopt(libc::M_ARENA_MAX, 1);
            no_mmap == 1 && no_trim == 1 && top_pad == 1 && one_arena == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        true
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_are_accepted() {
        assert!(super::keep_freed_memory());
        // Memory still works afterwards, large blocks included.
        let big = vec![1u8; 100 << 20];
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 100 << 20);
        drop(big);
        let again = vec![2u8; 100 << 20];
        assert_eq!(again[again.len() - 1], 2);
    }
}
