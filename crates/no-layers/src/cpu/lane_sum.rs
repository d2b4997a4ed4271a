//! Sums of long rows (bias and gate gradients) in a fixed order that vectorizes.
//!
//! A plain `fold` over a row is one chain of dependent additions: the compiler may not
//! reorder floating-point sums, so it runs at one element per addition latency (a bias
//! gradient over a 512-point tile of 64 channels took as long as the tile's products).
//! Here element `i` goes to accumulator `i mod LANES`, the accumulators are independent
//! (one vector register's worth), and they are added pairwise at the end: the same order
//! on every call and every thread count, so results stay reproducible.

use std::ops::{Add, Mul};

/// Independent accumulators (16 `f32` = one AVX-512 register, two AVX2 ones).
const LANES: usize = 16;

/// The accumulators added pairwise, in a fixed tree.
fn reduce<T: Copy + Add<Output = T>>(mut acc: [T; LANES]) -> T {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            acc[i] = acc[i] + acc[i + width];
        }
    }
    acc[0]
}

/// `Σ v`.
pub(crate) fn lane_sum<T: Copy + Default + Add<Output = T>>(v: &[T]) -> T {
    let mut acc = [T::default(); LANES];
    let chunks = v.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a = *a + x;
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        *a = *a + x;
    }
    reduce(acc)
}

/// `Σ a·b` over the common length.
pub(crate) fn lane_dot<T: Copy + Default + Add<Output = T> + Mul<Output = T>>(
    a: &[T],
    b: &[T],
) -> T {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [T::default(); LANES];
    let (ca, cb) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (xa, xb) in ca.zip(cb) {
        for ((s, &x), &y) in acc.iter_mut().zip(xa).zip(xb) {
            *s = *s + x * y;
        }
    }
    for ((s, &x), &y) in acc.iter_mut().zip(ra).zip(rb) {
        *s = *s + x * y;
    }
    reduce(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_and_dots_are_exact_on_integers_of_every_length() {
        // Small integers are exact in f64 whatever the order, so any lost or doubled
        // element (remainder handling, the tree) shows.
        for n in [0, 1, 7, 15, 16, 17, 31, 32, 33, 100, 513] {
            let a: Vec<f64> = (0..n).map(|i| (i % 7) as f64 - 3.0).collect();
            let b: Vec<f64> = (0..n).map(|i| (i % 5) as f64 + 1.0).collect();
            let sum: f64 = a.iter().sum();
            let dot: f64 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
            assert_eq!(lane_sum(&a), sum, "sum of {n}");
            assert_eq!(lane_dot(&a, &b), dot, "dot of {n}");
            assert_eq!(lane_dot(&a, &b[..n / 2]), lane_dot(&a[..n / 2], &b), "{n}");
        }
    }

    #[test]
    fn f32_sums_are_close_to_the_f64_sum() {
        let v: Vec<f32> = (0..1000)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013)
            .collect();
        let exact: f64 = v.iter().map(|&x| x as f64).sum();
        assert!((lane_sum(&v) as f64 - exact).abs() < 1e-4);
        let dot: f64 = v.iter().map(|&x| (x as f64) * (x as f64)).sum();
        assert!((lane_dot(&v, &v) as f64 - dot).abs() < 1e-3 * dot);
    }
}
