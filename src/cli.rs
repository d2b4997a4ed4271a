//! Pieces the example programs share: the `--device` argument and seeded random inputs.

use anyhow::{Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use no_layers::init::{init_tensor, rng_for};

/// Where a program's models run (`--device cpu|cuda|metal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    /// The CPU (always available).
    Cpu,
    /// The first CUDA GPU (needs a build with `--features cuda`).
    Cuda,
    /// The first Metal GPU (needs a build with `--features metal` on macOS).
    Metal,
}

/// Opens the device, saying which build feature is missing when it cannot.
pub fn open_device(arg: DeviceArg) -> Result<Device> {
    Ok(match arg {
        DeviceArg::Cpu => Device::Cpu,
        DeviceArg::Cuda => Device::new_cuda(0)
            .context("--device cuda needs a build with `--features cuda` and a GPU")?,
        DeviceArg::Metal => Device::new_metal(0)
            .context("--device metal needs a build with `--features metal` on macOS")?,
    })
}

/// A standard-normal f32 tensor on the CPU drawn from the stream `name` of seed 1, so that
/// every program and every device sees the same values for the same name.
pub fn seeded_randn(shape: (usize, usize, usize, usize), name: &str) -> Result<Tensor> {
    let mut rng = rng_for(1, name);
    let init = candle_nn::init::Init::Randn {
        mean: 0.0,
        stdev: 1.0,
    };
    Ok(init_tensor(init, &Shape::from(shape), &mut rng)?.to_dtype(DType::F32)?)
}

/// A flag whose value cannot be used: which flag, what it was given and what it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlagError {
    /// The flag, without its dashes.
    pub flag: String,
    /// The value given, printed.
    pub value: String,
    /// What the flag accepts.
    pub expected: String,
}

impl std::fmt::Display for FlagError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "--{} {}: expected {}",
            self.flag, self.value, self.expected
        )
    }
}

impl std::error::Error for FlagError {}

impl FlagError {
    /// A [`FlagError`] from its parts.
    pub fn new(flag: &str, value: impl std::fmt::Display, expected: &str) -> Self {
        Self {
            flag: flag.to_string(),
            value: value.to_string(),
            expected: expected.to_string(),
        }
    }
}

/// Refuses a count below `min` (`--batch 0`, `--repeats 0`, `--grid 1`).
pub fn at_least(flag: &str, value: usize, min: usize) -> std::result::Result<usize, FlagError> {
    if value < min {
        return Err(FlagError::new(flag, value, &format!("at least {min}")));
    }
    Ok(value)
}

/// Refuses a NaN, infinite, zero or negative value (tolerances, scale factors).
pub fn positive_finite(flag: &str, value: f64) -> std::result::Result<f64, FlagError> {
    if !(value.is_finite() && value > 0.0) {
        return Err(FlagError::new(
            flag,
            value,
            "a finite number greater than 0",
        ));
    }
    Ok(value)
}

/// The bytes of `f32` tensors of the given shapes, all held at once, or an error naming
/// `what` when the count overflows (`--grid2 99999999999,2` at batch 4).
pub fn tensor_bytes(what: &str, shapes: &[&[usize]], bytes_per_value: usize) -> Result<u64> {
    let mut total: u64 = 0;
    for shape in shapes {
        let values = shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d as u64))
            .and_then(|n| n.checked_mul(bytes_per_value as u64));
        total = values.and_then(|b| total.checked_add(b)).ok_or_else(|| {
            anyhow::anyhow!("{what}: the tensors {shapes:?} overflow a 64-bit byte count")
        })?;
    }
    Ok(total)
}

/// `MemAvailable` of `/proc/meminfo`, in bytes; `None` where the file or line is missing.
pub fn mem_available_bytes() -> Option<u64> {
    parse_mem_available(&std::fs::read_to_string("/proc/meminfo").ok()?)
}

/// Reads the `MemAvailable:  1234 kB` line of a `/proc/meminfo` text, in bytes.
pub fn parse_mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line["MemAvailable:".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    kib.checked_mul(1024)
}

/// Refuses work that needs `bytes` (the inputs and outputs, as computed by
/// [`tensor_bytes`], times a factor for intermediates) when that exceeds the memory
/// available (`available`: [`mem_available_bytes`]; no check where it is unknown).
pub fn ensure_fits(what: &str, bytes: u64, available: Option<u64>) -> Result<()> {
    if let Some(free) = available {
        if bytes > free {
            anyhow::bail!(
                "{what} would need at least {} of memory, but only {} is available",
                human_bytes(bytes),
                human_bytes(free)
            );
        }
    }
    Ok(())
}

/// Bytes as a short human figure (`1.5 GiB`).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// SIGINT and SIGTERM as flags: a program that checks them stops cleanly (the trainer
/// abandons the epoch under way, [`no_models::train::Trainer::set_stop_flag`]) and exits
/// with [`StopSignals::exit_status`], the status a shell gives a process killed by the
/// signal.
pub struct StopSignals {
    number: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Set by either signal: hand it to the trainer.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl StopSignals {
    /// Installs the handlers (on Unix; elsewhere the flags are never set).
    pub fn install() -> Result<Self> {
        let number = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        #[cfg(unix)]
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register_usize(sig, number.clone(), sig as usize)
                .context("installing the signal handler")?;
            signal_hook::flag::register(sig, stop.clone())
                .context("installing the signal handler")?;
        }
        Ok(Self { number, stop })
    }

    /// The signal received, if any.
    pub fn received(&self) -> Option<usize> {
        match self.number.load(std::sync::atomic::Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// 128 + the signal's number (130 for SIGINT, 143 for SIGTERM; 143 if none arrived).
    pub fn exit_status(&self) -> i32 {
        128 + i32::try_from(self.received().unwrap_or(15)).unwrap_or(15)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_factors_are_checked() {
        assert_eq!(at_least("batch", 4, 1), Ok(4));
        assert_eq!(
            at_least("repeats", 0, 1).unwrap_err().to_string(),
            "--repeats 0: expected at least 1"
        );
        assert!(at_least("grid", 1, 2).is_err());
        assert_eq!(positive_finite("tol-forward", 1e-4), Ok(1e-4));
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(positive_finite("tol-grad", bad).is_err());
        }
        assert_eq!(
            positive_finite("epoch-scale", f64::NAN)
                .unwrap_err()
                .to_string(),
            "--epoch-scale NaN: expected a finite number greater than 0"
        );
    }

    #[test]
    fn sizes_use_checked_arithmetic() {
        assert_eq!(tensor_bytes("x", &[&[2, 3], &[4]], 4).unwrap(), 40);
        let huge = tensor_bytes("grid", &[&[4, 1, 99_999_999_999, 99_999_999_999]], 4);
        assert!(huge.unwrap_err().to_string().contains("overflow"));
    }

    #[test]
    fn memory_check_reads_meminfo_and_refuses_too_much() {
        let meminfo = "MemTotal:  2048 kB\nMemAvailable:   1024 kB\n";
        assert_eq!(parse_mem_available(meminfo), Some(1024 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 1 kB\n"), None);
        assert!(ensure_fits("x", 10, Some(100)).is_ok());
        assert!(ensure_fits("x", 10, None).is_ok());
        assert_eq!(
            ensure_fits("the grid", 3 << 30, Some(1 << 30))
                .unwrap_err()
                .to_string(),
            "the grid would need at least 3.0 GiB of memory, but only 1.0 GiB is available"
        );
        #[cfg(target_os = "linux")]
        assert!(mem_available_bytes().unwrap() > 0);
    }
}
