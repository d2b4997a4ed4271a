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
