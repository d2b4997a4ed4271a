//! criterion benches of the `no-layers` building blocks at the study's size
//! (batch 32, 32 channels, 100 x 100 grid, 16 x 16 modes).

use criterion::criterion_main;

#[path = "layers/local.rs"]
mod local;
#[path = "layers/spectral.rs"]
mod spectral;

criterion_main!(spectral::benches, local::benches);
