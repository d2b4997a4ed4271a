//! criterion benches of the seven models: forward at batch 1 and 32 and one training
//! step at batch 32, on a 100 x 100 space-time grid.

use criterion::criterion_main;

#[path = "models/fourier.rs"]
mod fourier;
#[path = "models/others.rs"]
mod others;

criterion_main!(fourier::benches, others::benches);
