//! Solver benches: one default 1D solve (each scheme, single thread), one tridiagonal solve
//! (twisted vs partitioned), ten 2D steps at 256 × 256, and the default dataset (1300
//! samples, all cores).
//!
//! `cargo bench --bench solver`; figures and the arithmetic floor are in docs/solver.md.

use criterion::{criterion_group, criterion_main, Criterion};
use fhn_solver::implicit::Tridiagonal;
use fhn_solver::partition::{Partitioned, LANES};
use fhn_solver::{
    generate, simulate_1d, simulate_2d, BoxPulse, OutputGrid, OutputGrid2d, Protocol, Pulse2d,
    Resolution, Scheme, SolverConfig, Split, Stimulus, Stimulus2d,
};
use std::hint::black_box;

fn solve_1d(c: &mut Criterion) {
    let stim = Stimulus::single(BoxPulse::benchmark(0.5, 1.0, 1.0));
    let out = OutputGrid::default();
    for scheme in Scheme::ALL {
        let config = SolverConfig {
            scheme,
            ..SolverConfig::default()
        };
        c.bench_function(&format!("solve_1d_default_{scheme:?}"), |b| {
            b.iter(|| {
                simulate_1d(black_box(&config), black_box(&stim), &out).map(|s| s.v[[50, 50]])
            })
        });
    }
}

fn steps_2d(c: &mut Criterion) {
    // 10 steps of dt = 0.1 on a 256 × 256 grid (output = fine grid), setup included.
    let out = OutputGrid2d {
        nt: 11,
        nx: 256,
        ny: 256,
        t_end: 1.0,
        lx: 1.0,
        ly: 1.0,
    };
    let config = SolverConfig {
        resolution: Resolution::Explicit { nx: 256, dt: 0.1 },
        ..SolverConfig::default()
    };
    let pulse = BoxPulse {
        x0: 0.5,
        width: 0.1,
        t0: 0.0,
        duration: 1.0,
        amplitude: 1.0,
    };
    let stim = Stimulus2d {
        pulses: vec![Pulse2d {
            pulse: pulse.into(),
            y0: 0.5,
            width_y: 0.1,
        }],
    };
    let mut group = c.benchmark_group("solve_2d");
    group.sample_size(20);
    group.bench_function("ten_sbdf2_steps_256x256", |b| {
        b.iter(|| {
            simulate_2d(black_box(&config), black_box(&stim), &out).map(|s| s.v[[10, 128, 128]])
        })
    });
    group.finish();
}

fn dataset(c: &mut Criterion) {
    let protocol = Protocol::default_protocol();
    let mut group = c.benchmark_group("dataset");
    group.sample_size(10);
    group.bench_function("default_1300_samples", |b| {
        b.iter(|| {
            Split::ALL
                .iter()
                .map(|&s| {
                    generate(&protocol, s, None, false)
                        .map(|d| d.len())
                        .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    group.finish();
}

fn tridiagonal(c: &mut Criterion) {
    // One solve of the default SBDF2 operator (397 nodes): the twisted sequential LU against
    // the partitioned one (8 chains in SIMD lanes, interleaved layout).
    let (n, alpha, k) = (397, 3.0, 12.7);
    let rhs: Vec<f64> = (0..n)
        .map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0)
        .collect();
    let twisted = Tridiagonal::neumann(n, alpha, k);
    let partitioned = Partitioned::<LANES>::neumann(n, alpha, k);
    let mut group = c.benchmark_group("tridiagonal_397");
    group.bench_function("twisted", |b| {
        let mut x = rhs.clone();
        b.iter(|| {
            x.copy_from_slice(&rhs);
            twisted.solve_in_place(black_box(&mut x));
            x[n / 2]
        })
    });
    let mut inter = vec![0.0; partitioned.padded_len()];
    partitioned.to_interleaved(&rhs, &mut inter);
    group.bench_function("partitioned", |b| {
        let mut x = inter.clone();
        b.iter(|| {
            x.copy_from_slice(&inter);
            partitioned.solve_interleaved(black_box(&mut x));
            x[n / 2]
        })
    });
    group.finish();
}

criterion_group!(benches, solve_1d, tridiagonal, steps_2d, dataset);
criterion_main!(benches);
