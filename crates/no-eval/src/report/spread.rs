//! A figure over seeds: its median, its range and, with enough seeds, a bootstrap interval;
//! and the comparisons the report is allowed to state from them.
//!
//! One training run is one draw of a random variable (the initial weights, the shuffling and
//! the augmentation depend on the seed). The report therefore shows every figure as the
//! median over seeds with its range (min–max), and orders two models only where their
//! ranges do not overlap ([`Order`]). With [`BOOTSTRAP_MIN_SEEDS`] or more seeds it also
//! gives a 95% percentile-bootstrap interval of the median.
//!
//! ```
//! use no_eval::report::spread::{compare, Order, Spread};
//! let s = Spread::of(&[0.3, 0.1, 0.2]).unwrap();
//! assert_eq!((s.median, s.min, s.max, s.n), (0.2, 0.1, 0.3, 3));
//! assert_eq!(compare(&[0.1, 0.2], &[0.3, 0.4]), Order::Less);
//! assert_eq!(compare(&[0.1, 0.35], &[0.3, 0.4]), Order::Overlap);
//! ```

use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// With this many seeds or more, [`Spread`] carries a bootstrap 95% interval of the median.
pub const BOOTSTRAP_MIN_SEEDS: usize = 5;

/// Bootstrap resamples drawn for the interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;

/// The seed of the bootstrap's resampling: fixed, so a report is reproducible.
const BOOTSTRAP_SEED: u64 = 0x5EED_B007;

/// A figure over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Spread {
    /// Median over seeds (the mean of the two middle values for an even count).
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of seeds.
    pub n: usize,
    /// 95% percentile-bootstrap interval of the median, with [`BOOTSTRAP_MIN_SEEDS`] or
    /// more seeds.
    pub ci95: Option<(f64, f64)>,
}

/// The median of `v` (not empty, all finite): the middle value, or the mean of the two
/// middle values.
pub fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        0.5 * (s[n / 2 - 1] + s[n / 2])
    }
}

/// The `q`-quantile of sorted values by linear interpolation between order statistics
/// (numpy's default).
fn quantile_sorted(s: &[f64], q: f64) -> f64 {
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    s[lo] + (pos - lo as f64) * (s[hi] - s[lo])
}

/// The 95% percentile-bootstrap interval of the median of `v`: the 2.5% and 97.5%
/// quantiles of the medians of [`BOOTSTRAP_RESAMPLES`] resamples with replacement, drawn
/// from a fixed seed.
pub fn bootstrap_median_ci(v: &[f64]) -> (f64, f64) {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(BOOTSTRAP_SEED);
    let mut medians: Vec<f64> = (0..BOOTSTRAP_RESAMPLES)
        .map(|_| {
            let resample: Vec<f64> = (0..v.len())
                .map(|_| v[rng.random_range(0..v.len())])
                .collect();
            median(&resample)
        })
        .collect();
    medians.sort_by(f64::total_cmp);
    (
        quantile_sorted(&medians, 0.025),
        quantile_sorted(&medians, 0.975),
    )
}

impl Spread {
    /// The spread of the finite values of `v`; `None` when none is finite (a figure not
    /// measured for this model).
    pub fn of(v: &[f64]) -> Option<Self> {
        let finite: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
        if finite.is_empty() {
            return None;
        }
        let (min, max) = finite
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &x| {
                (lo.min(x), hi.max(x))
            });
        Some(Self {
            median: median(&finite),
            min,
            max,
            n: finite.len(),
            ci95: (finite.len() >= BOOTSTRAP_MIN_SEEDS).then(|| bootstrap_median_ci(&finite)),
        })
    }
}

/// How two models compare on a figure over seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Every value of the first lies below every value of the second.
    Less,
    /// Every value of the first lies above every value of the second.
    Greater,
    /// The ranges overlap (or either is empty): no order is stated.
    Overlap,
}

/// [`Order`] of the finite values of `a` against those of `b`, by their ranges.
pub fn compare(a: &[f64], b: &[f64]) -> Order {
    match (Spread::of(a), Spread::of(b)) {
        (Some(x), Some(y)) if x.max < y.min => Order::Less,
        (Some(x), Some(y)) if x.min > y.max => Order::Greater,
        _ => Order::Overlap,
    }
}

/// In how many seeds `a` is below `b`, pairing the two by seed index (the `k`-th value of
/// each came from the `k`-th seed), out of the pairs where both are finite.
pub fn seeds_agreeing_less(a: &[f64], b: &[f64]) -> (usize, usize) {
    let pairs: Vec<(f64, f64)> = a
        .iter()
        .zip(b)
        .filter(|(x, y)| x.is_finite() && y.is_finite())
        .map(|(&x, &y)| (x, y))
        .collect();
    (pairs.iter().filter(|(x, y)| x < y).count(), pairs.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ranges_match_hand_values() {
        let s = Spread::of(&[0.5, 0.1, 0.4, 0.2]).unwrap();
        assert_eq!(s.median, 0.30000000000000004); // (0.2 + 0.4) / 2 in f64
        assert_eq!((s.min, s.max, s.n), (0.1, 0.5, 4));
        assert_eq!(s.ci95, None, "fewer than 5 seeds: no bootstrap interval");
        let one = Spread::of(&[0.25]).unwrap();
        assert_eq!((one.median, one.min, one.max, one.n), (0.25, 0.25, 0.25, 1));
        // Non-finite values are not figures: they are left out, and nothing finite is None.
        let s = Spread::of(&[f64::NAN, 0.3, 0.1]).unwrap();
        assert_eq!((s.median, s.n), (0.2, 2));
        assert_eq!(Spread::of(&[f64::NAN]), None);
        assert_eq!(Spread::of(&[]), None);
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        let s = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile_sorted(&s, 0.0), 1.0);
        assert_eq!(quantile_sorted(&s, 1.0), 4.0);
        assert_eq!(quantile_sorted(&s, 0.5), 2.5);
        // numpy.quantile([1, 2, 3, 4], 0.025) = 1.075
        assert!((quantile_sorted(&s, 0.025) - 1.075).abs() < 1e-12);
    }

    #[test]
    fn bootstrap_interval_holds_the_median_and_lies_in_the_range() {
        let v = [0.12, 0.10, 0.15, 0.11, 0.30, 0.13];
        let s = Spread::of(&v).unwrap();
        let (lo, hi) = s.ci95.expect("6 seeds give an interval");
        assert!(s.min <= lo && lo <= s.median && s.median <= hi && hi <= s.max);
        // A resample's median is a middle value of 6 draws from v, so the interval's ends
        // are values of v or means of two of them; the outlier 0.30 is never a median of
        // a resample unless four of six draws are it, which the 97.5% quantile excludes.
        assert!(hi < 0.30, "{hi}");
        // Fixed seed: the same values give the same interval.
        assert_eq!(Spread::of(&v).unwrap().ci95, s.ci95);
        // Identical values: a degenerate interval.
        assert_eq!(Spread::of(&[0.2; 5]).unwrap().ci95, Some((0.2, 0.2)));
    }

    #[test]
    fn orders_are_stated_only_where_ranges_separate() {
        assert_eq!(compare(&[0.1, 0.2, 0.15], &[0.3, 0.25]), Order::Less);
        assert_eq!(compare(&[0.3, 0.25], &[0.1, 0.2]), Order::Greater);
        assert_eq!(compare(&[0.1, 0.3], &[0.2, 0.4]), Order::Overlap);
        // Touching ranges do not separate.
        assert_eq!(compare(&[0.1, 0.2], &[0.2, 0.3]), Order::Overlap);
        assert_eq!(compare(&[], &[0.2]), Order::Overlap);
        assert_eq!(
            seeds_agreeing_less(&[0.1, 0.3, 0.2], &[0.2, 0.2, 0.3]),
            (2, 3)
        );
        assert_eq!(seeds_agreeing_less(&[0.1, f64::NAN], &[0.2, 0.1]), (1, 1));
    }
}
