//! criterion benches of the `no-layers` building blocks at the study's size
//! (batch 32, 32 channels, 100 x 100 grid, 16 x 16 modes).

#[path = "layers/local.rs"]
mod local;
#[path = "layers/spectral.rs"]
mod spectral;

fn main() {
    // The same allocator settings as the examples (and as the Python side's MALLOC_*).
    fhn_neural_operators::allocator::keep_freed_memory();
    spectral::benches();
    local::benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
