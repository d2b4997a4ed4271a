//! Wall-clock timing of two products in two memory layouts each, straight through the `gemm`
//! crate the fused ops multiply with: whether a layout the crate reads in place (no packing
//! copy) would be worth a change to the library, and whether it gives the same bits.
//!
//! ```text
//! cargo run --release -p no-layers --example gemm_layout_timing
//! ```
//! It takes no arguments (any is refused with exit status 2).
//! - **Convolution weight gradient**, one partial per group as `conv2d`'s backward computes
//!   it: `∂W [O, C·9] = ∂y [O, columns] · patchesᵀ` at DeepONet-CNN's four layers (batch 32,
//!   the library's groups of samples, run as it runs them).
//!   Written as `[O, C·9]` (the library's layout: the crate packs the patches) or as its
//!   transpose `[C·9, O]` (the crate reads the patches in place).
//! - **POD-DeepONet's basis product**, one field at batch 32 and 1: `out [B, P] = mean +
//!   c [B, r] · Φᵀ` with the basis stored `[P, r]` (the library's variable: the crate packs
//!   it) or `[r, P]` (read in place), on all of rayon's threads.
//!
//! Prints the CPU model and, for each case, the fastest of 30 runs of each layout (after
//! one untimed run), alternating the two over 3 rounds, their GFLOP/s, the ratio, and
//! whether the values are equal bit for bit.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;
use std::time::Instant;

/// The fastest of thirty runs of `f`, in milliseconds, after one untimed run.
fn fastest_ms(f: &mut dyn FnMut()) -> f64 {
    f();
    let mut best = f64::MAX;
    for _ in 0..30 {
        let start = Instant::now();
        f();
        best = best.min(start.elapsed().as_secs_f64());
    }
    best * 1e3
}

/// `len` deterministic values in `[-0.5, 0.5)`.
fn values(len: usize, seed: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i.wrapping_mul(7919) + seed * 104_729) % 1000) as f32 / 1000.0 - 0.5)
        .collect()
}

/// A row-major `[rows, cols]` matrix transposed into a new `[cols, rows]` one.
fn transposed(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// `dst (+)= lhs · rhs` through the `gemm` crate, each operand given by its pointer and its
/// (column, row) strides, as `gemm::gemm` takes them.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    dst: (isize, isize),
    lhs: (isize, isize),
    rhs: (isize, isize),
    accumulate: bool,
}

impl Product {
    /// Runs the product on `threads` threads (1: the calling thread).
    fn run(&self, dst: &mut [f32], lhs: &[f32], rhs: &[f32], threads: usize) {
        let last = |(cs, rs): (isize, isize), rows: usize, cols: usize| {
            (rows - 1) * rs as usize + (cols - 1) * cs as usize
        };
        assert!(last(self.dst, self.m, self.n) < dst.len());
        assert!(last(self.lhs, self.m, self.k) < lhs.len());
        assert!(last(self.rhs, self.k, self.n) < rhs.len());
        let parallelism = if threads > 1 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        };
        // SAFETY: every view lies inside its slice (asserted just above), `dst` is borrowed
        // mutably so it aliases neither operand, and it is initialised (a `&mut [f32]`).
        unsafe {
            gemm(
                self.m,
                self.n,
                self.k,
                dst.as_mut_ptr(),
                self.dst.0,
                self.dst.1,
                self.accumulate,
                lhs.as_ptr(),
                self.lhs.0,
                self.lhs.1,
                rhs.as_ptr(),
                self.rhs.0,
                self.rhs.1,
                1.0,
                1.0,
                false,
                false,
                false,
                parallelism,
            );
        }
    }
}

/// One convolution layer's weight gradient in both layouts, `groups` partials of `columns`
/// columns each.
fn weight_gradient(o: usize, patch_rows: usize, columns: usize, groups: usize) {
    let grads: Vec<Vec<f32>> = (0..groups).map(|g| values(o * columns, g)).collect();
    let patches: Vec<Vec<f32>> = (0..groups)
        .map(|g| values(patch_rows * columns, g + groups))
        .collect();
    let (mut library, mut in_place) = (
        vec![vec![0.0f32; o * patch_rows]; groups],
        vec![vec![0.0f32; o * patch_rows]; groups],
    );
    let (m, n, k) = (o, patch_rows, columns);
    let (ld_grad, ld_patch) = (columns as isize, columns as isize);
    // `∂W [O, C·9]` row-major; `patchesᵀ` viewed from `[C·9, columns]` row-major.
    let as_library = Product {
        m,
        n,
        k,
        dst: (1, patch_rows as isize),
        lhs: (1, ld_grad),
        rhs: (ld_patch, 1),
        accumulate: false,
    };
    // The same `[O, C·9]` values stored column-major, i.e. `[C·9, O]` row-major.
    let transposed_dst = Product {
        dst: (o as isize, 1),
        ..as_library
    };
    // As the library runs its groups: in parallel with one-thread products when there are
    // at least two per thread, else one after the other with multi-threaded products.
    let threads = rayon::current_num_threads();
    let run = |p: &Product, out: &mut Vec<Vec<f32>>| {
        fastest_ms(&mut || {
            if groups >= 2 * threads {
                out.par_iter_mut()
                    .zip(grads.par_iter().zip(patches.par_iter()))
                    .for_each(|(d, (g, x))| p.run(d, g, x, 1))
            } else {
                for (d, (g, x)) in out.iter_mut().zip(grads.iter().zip(&patches)) {
                    p.run(d, g, x, threads)
                }
            }
        })
    };
    let flop = 2.0 * (o * patch_rows * columns * groups) as f64;
    for round in 1..=3 {
        let a = run(&as_library, &mut library);
        let b = run(&transposed_dst, &mut in_place);
        let same = library.iter().zip(&in_place).all(|(l, t)| {
            let t = transposed(t, patch_rows, o);
            l.iter().zip(&t).all(|(x, y)| x.to_bits() == y.to_bits())
        });
        println!(
            "  round {round}: [O, C·9] {a:.3} ms ({:.0} GFLOP/s), [C·9, O] {b:.3} ms ({:.0}), ratio {:.2}; same bits: {same}",
            flop / a / 1e6,
            flop / b / 1e6,
            a / b
        );
    }
}

/// POD-DeepONet's product for one field with the basis in both layouts.
fn basis_product(batch: usize, modes: usize, points: usize) {
    let threads = rayon::current_num_threads();
    let coefficients = values(batch * modes, 1);
    let basis = values(points * modes, 2);
    let basis_t = transposed(&basis, points, modes);
    let mean = values(points, 3);
    let (mut library, mut in_place) = (vec![0.0f32; batch * points], vec![0.0f32; batch * points]);
    let product = Product {
        m: batch,
        n: points,
        k: modes,
        dst: (1, points as isize),
        lhs: (1, modes as isize),
        // `Φᵀ` viewed from `Φ [P, r]` row-major.
        rhs: (modes as isize, 1),
        accumulate: true,
    };
    // `Φᵀ` stored `[r, P]` row-major.
    let stored_t = Product {
        rhs: (1, points as isize),
        ..product
    };
    let run = |p: &Product, b: &[f32], out: &mut Vec<f32>| {
        fastest_ms(&mut || {
            for row in out.chunks_exact_mut(points) {
                row.copy_from_slice(&mean);
            }
            p.run(out, &coefficients, b, threads)
        })
    };
    let flop = 2.0 * (batch * modes * points) as f64;
    for round in 1..=3 {
        let a = run(&product, &basis, &mut library);
        let b = run(&stored_t, &basis_t, &mut in_place);
        let same = library
            .iter()
            .zip(&in_place)
            .all(|(x, y)| x.to_bits() == y.to_bits());
        println!(
            "  round {round}: basis [P, r] {a:.3} ms ({:.0} GFLOP/s), [r, P] {b:.3} ms ({:.0}), ratio {:.2}; same bits: {same}",
            flop / a / 1e6,
            flop / b / 1e6,
            a / b
        );
    }
}

/// The CPU's model name from `/proc/cpuinfo` (Linux), or a placeholder where there is none.
fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split_once(':'))
                .map(|(_, name)| name.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU (no /proc/cpuinfo model name)".into())
}

fn main() {
    if let Some(arg) = std::env::args().nth(1) {
        // The shapes are DeepONet-CNN's and POD-DeepONet's; nothing is read from the
        // command line, so an argument is a mistake rather than something to ignore.
        eprintln!("gemm_layout_timing: takes no arguments, got `{arg}`");
        std::process::exit(2);
    }
    println!(
        "CPU: {}; {} rayon threads",
        cpu_model(),
        rayon::current_num_threads()
    );
    // DeepONet-CNN's layers at batch 32 (1 → 40 → 80 → 100 → 120 channels, 3×3, stride 2,
    // from 100 × 100): output channels, patch rows, columns per group, groups. The weight
    // gradient groups `⌈1024 / positions⌉` samples (1, 2, 9 and 32 of them here); the third
    // layer's last group of 5 samples is counted as a full one.
    for (o, patch_rows, columns, groups) in [
        (40, 9, 2401, 32),
        (80, 360, 2 * 576, 16),
        (100, 720, 9 * 121, 4),
        (120, 900, 32 * 25, 1),
    ] {
        println!(
            "conv weight gradient, {o} × {patch_rows} over {groups} groups of {columns} columns:"
        );
        weight_gradient(o, patch_rows, columns, groups);
    }
    for batch in [32, 1] {
        println!("POD basis product, batch {batch}, 64 modes, 10,000 points:");
        basis_product(batch, 64, 10_000);
    }
}
