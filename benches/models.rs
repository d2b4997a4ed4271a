//! criterion benches of the seven models: forward at batch 1 and 32 and one training
//! step at batch 32, on a 100 x 100 space-time grid.

#[path = "models/fourier.rs"]
mod fourier;
#[path = "models/others.rs"]
mod others;

fn main() {
    // The same allocator settings as the examples (and as the Python side's MALLOC_*).
    fhn_neural_operators::allocator::keep_freed_memory();
    fourier::benches();
    others::benches();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
