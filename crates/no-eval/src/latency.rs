//! Inference latency, throughput and peak memory of a model on any candle device.
//!
//! GPU kernels run asynchronously, so every timed forward ends with
//! `Device::synchronize` (a no-op on CPU) before the clock is read; a few untimed warm-up
//! forwards first let caches, allocators and lazily built bases settle. Percentiles use the
//! same interpolation as [`crate::metrics::quantile_sorted`].

use std::path::Path;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use no_models::NeuralOperator;
use serde::{Deserialize, Serialize};

use crate::error::{EvalError, Result};
use crate::metrics::quantile_sorted;

/// How to time a model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyConfig {
    /// Batch sizes to sweep.
    pub batch_sizes: Vec<usize>,
    /// Untimed forwards before timing each batch size.
    pub warmup: usize,
    /// Timed forwards per batch size (at least 1).
    pub repeats: usize,
}

impl LatencyConfig {
    /// Checks the sweep: at least one batch size, each at least 1, and at least one timed
    /// forward. The error says which field is wrong and what was expected.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.batch_sizes.is_empty() {
            return Err("`batch_sizes` is empty: expected at least one batch size".into());
        }
        if self.batch_sizes.contains(&0) {
            return Err(format!(
                "`batch_sizes` = {:?}: every batch size must be at least 1",
                self.batch_sizes
            ));
        }
        if self.repeats == 0 {
            return Err("`repeats` = 0: expected at least 1 timed forward".into());
        }
        Ok(())
    }
}

impl Default for LatencyConfig {
    /// Batches 1, 8 and 32; 2 warm-up and 10 timed forwards.
    fn default() -> Self {
        Self {
            batch_sizes: vec![1, 8, 32],
            warmup: 2,
            repeats: 10,
        }
    }
}

/// Timings of one batch size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencyPoint {
    /// Samples per forward.
    pub batch: usize,
    /// Median forward time, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile, milliseconds.
    pub p95_ms: f64,
    /// 99th percentile, milliseconds.
    pub p99_ms: f64,
    /// Samples per second at the median time.
    pub throughput: f64,
}

/// The latency sweep of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LatencyReport {
    /// One point per batch size, in the order of the config.
    pub points: Vec<LatencyPoint>,
    /// The process's peak resident memory after the sweep, bytes (Linux only).
    pub peak_rss_bytes: Option<u64>,
}

impl LatencyReport {
    /// The point measured at `batch`, if any.
    pub fn at(&self, batch: usize) -> Option<&LatencyPoint> {
        self.points.iter().find(|p| p.batch == batch)
    }
}

/// Percentiles and throughput from raw forward times (seconds) of batches of `batch`.
/// Errors on an empty set of times, a non-finite or negative time, or a median of zero
/// (the throughput would be infinite).
pub fn summarize_times(batch: usize, seconds: &[f64]) -> Result<LatencyPoint> {
    if let Some(t) = seconds.iter().find(|t| !(t.is_finite() && **t >= 0.0)) {
        return Err(EvalError::invalid(
            "forward time",
            t,
            "a finite, non-negative number of seconds",
        ));
    }
    let mut s: Vec<f64> = seconds.iter().map(|t| t * 1e3).collect();
    s.sort_by(|a, b| a.total_cmp(b));
    let p50 = quantile_sorted(&s, 0.5)?;
    Ok(LatencyPoint {
        batch,
        p50_ms: p50,
        p95_ms: quantile_sorted(&s, 0.95)?,
        p99_ms: quantile_sorted(&s, 0.99)?,
        throughput: if p50 > 0.0 {
            batch as f64 / (p50 * 1e-3)
        } else {
            return Err(EvalError::invalid(
                "median forward time",
                "0 ms",
                "a positive time (the throughput would be infinite)",
            ));
        },
    })
}

/// Times `model` on random-free constant inputs `[B, c_in, nt, nx]` (the values do not
/// change the work done) for every batch size of `config`.
pub fn measure(
    model: &dyn NeuralOperator,
    device: &Device,
    c_in: usize,
    nt: usize,
    nx: usize,
    config: &LatencyConfig,
) -> Result<LatencyReport> {
    config.validate().map_err(|reason| EvalError::Config {
        what: "LatencyConfig".into(),
        reason,
    })?;
    let mut points = Vec::with_capacity(config.batch_sizes.len());
    for &b in &config.batch_sizes {
        let x = Tensor::full(0.1f32, (b, c_in, nt, nx), device)?.to_dtype(DType::F32)?;
        for _ in 0..config.warmup {
            model.predict(&x)?;
            device.synchronize()?;
        }
        let mut times = Vec::with_capacity(config.repeats);
        for _ in 0..config.repeats {
            let start = Instant::now();
            let y = model.predict(&x)?;
            device.synchronize()?;
            times.push(start.elapsed().as_secs_f64());
            drop(y);
        }
        points.push(summarize_times(b, &times)?);
    }
    Ok(LatencyReport {
        points,
        peak_rss_bytes: peak_rss_bytes(),
    })
}

/// The peak resident set size of this process (`VmHWM` in `/proc/self/status`), in bytes;
/// `None` where the file does not exist (not Linux) or has no such line.
pub fn peak_rss_bytes() -> Option<u64> {
    parse_vm_hwm(&std::fs::read_to_string(Path::new("/proc/self/status")).ok()?)
}

/// Reads the `VmHWM:   1234 kB` line of a `/proc/<pid>/status` text.
pub fn parse_vm_hwm(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let mut it = line["VmHWM:".len()..].split_whitespace();
    let value: u64 = it.next()?.parse().ok()?;
    let scale = match it.next() {
        Some("kB") | None => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(value * scale)
}

#[cfg(test)]
mod tests {
    use super::*;
    use approx::assert_relative_eq;

    #[test]
    fn percentiles_and_throughput() {
        // 0.01 s × {1..=5}: p50 = 30 ms; p95 = 48 ms; p99 = 49.6 ms; 32 / 0.03 s.
        let p = summarize_times(32, &[0.05, 0.01, 0.03, 0.02, 0.04]).unwrap();
        assert_relative_eq!(p.p50_ms, 30.0, epsilon = 1e-9);
        assert_relative_eq!(p.p95_ms, 48.0, epsilon = 1e-9);
        assert_relative_eq!(p.p99_ms, 49.6, epsilon = 1e-9);
        assert_relative_eq!(p.throughput, 32.0 / 0.03, epsilon = 1e-6);
        assert!(summarize_times(1, &[]).is_err());
    }

    #[test]
    fn vm_hwm_is_parsed_in_bytes() {
        let status = "Name:\tx\nVmPeak:\t  999 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 10 kB\n";
        assert_eq!(parse_vm_hwm(status), Some(2048 * 1024));
        assert_eq!(parse_vm_hwm("Name: x\n"), None);
        #[cfg(target_os = "linux")]
        assert!(peak_rss_bytes().unwrap() > 1024 * 1024);
    }
}
