//! Size checks on user requests: every count that comes from a flag, a protocol file or a
//! resolution is converted and multiplied with checks, and compared with the memory this
//! machine has, before anything is allocated.
//!
//! A request that does not fit is a [`SolverError::TooLarge`] that says how much memory it
//! would need and how much there is, e.g. "the output grid 99000000000 × 100 needs 73.8 GiB
//! per field; this machine has 21.3 GiB available (reduce the sizes)".

use crate::error::{Result, SolverError};

/// The most time steps one solve may take: beyond this a request is a mistake (a dt of
/// 1e-300, say) rather than work anyone waits for.
pub const MAX_STEPS: f64 = 1e9;

/// The most fine-grid node updates (nodes × steps) one solve may take: at about a
/// nanosecond each this is several hours.
pub const MAX_NODE_STEPS: f64 = 1e13;

/// Bytes the solver holds per fine node (state, history, forcing profiles, tridiagonal
/// factors; an upper bound over the schemes).
pub const BYTES_PER_FINE_NODE: f64 = 32.0 * 8.0;

/// The memory available to new allocations, from `MemAvailable` in `/proc/meminfo` where it
/// exists (Linux); `None` elsewhere, in which case only requests that overflow are refused.
pub fn available_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `bytes` as text in the largest binary unit that keeps it ≥ 1 (e.g. "73.8 GiB").
pub fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 7] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else if value < 1e6 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.3e} {}", UNITS[unit])
    }
}

/// The second half of a [`SolverError::TooLarge`] message.
pub(crate) fn availability(available: Option<u64>) -> String {
    match available {
        Some(bytes) => format!(
            "this machine has {} available (reduce the sizes)",
            human_bytes(bytes as f64)
        ),
        None => "more than this machine can address (reduce the sizes)".to_string(),
    }
}

/// Refuses an allocation of `needed_bytes` (computed in floating point, so it cannot wrap)
/// that exceeds the address space or the available memory. `what` names the allocation.
pub fn check_memory(what: impl FnOnce() -> String, needed_bytes: f64) -> Result<()> {
    let available = available_memory_bytes();
    let addressable = isize::MAX as f64;
    let fits = needed_bytes.is_finite()
        && needed_bytes <= addressable
        && available.is_none_or(|a| needed_bytes <= a as f64);
    if fits {
        Ok(())
    } else {
        Err(SolverError::TooLarge {
            what: what(),
            needed_bytes,
            available_bytes: available.filter(|_| needed_bytes <= addressable),
        })
    }
}

/// `value` (already rounded to an integer) as a `usize`, or an error naming `name` when it
/// is not finite, negative, or larger than `max` (what `expected` describes).
pub(crate) fn to_count(name: &str, value: f64, max: f64, expected: &str) -> Result<usize> {
    if value.is_finite() && value >= 0.0 && value <= max && value <= usize::MAX as f64 {
        Ok(value as usize)
    } else {
        Err(SolverError::invalid(name, format!("{value:e}"), expected))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_requests_are_refused_without_allocating() {
        let err = check_memory(|| "the test array".into(), 1e30).unwrap_err();
        assert!(err.to_string().starts_with("the test array needs"), "{err}");
        assert!(check_memory(|| "a small array".into(), 1024.0).is_ok());
        assert_eq!(human_bytes(73.8 * 1024.0 * 1024.0 * 1024.0), "73.8 GiB");
        assert_eq!(human_bytes(12.0), "12 bytes");
    }
}
