//! Observed orders of accuracy with a smooth (Gaussian) stimulus, by self-convergence:
//! the order is log2(‖u_h − u_{h/2}‖ / ‖u_{h/2} − u_{h/4}‖) on the common output nodes.
//! Space is refined at a fixed small dt (the time error then cancels in the differences),
//! time at a fixed grid. Short horizon and D = 0.01 keep the solution smooth and the
//! tests fast; the stimulus is supra-threshold, so the cubic reaction is fully exercised.

use fhn_solver::{
    simulate_1d, FhnParams, GaussianPulse, OutputGrid, Resolution, Scheme, SolverConfig, Stimulus,
};
use ndarray::Array2;

fn stimulus() -> Stimulus {
    Stimulus::single(GaussianPulse {
        x0: 0.4,
        sigma_x: 0.08,
        t0: 1.0,
        sigma_t: 0.3,
        amplitude: 1.5,
    })
}

fn params() -> FhnParams {
    FhnParams {
        d: 1e-2,
        ..FhnParams::default()
    }
}

fn out() -> OutputGrid {
    OutputGrid {
        nt: 5,
        nx: 9,
        t_end: 4.0,
        length: 1.0,
    }
}

fn solve(scheme: Scheme, nx: usize, steps: usize) -> Array2<f64> {
    let out = out();
    let config = SolverConfig {
        params: params(),
        scheme,
        resolution: Resolution::Explicit {
            nx,
            dt: out.t_end / steps as f64,
        },
    };
    let sol = simulate_1d(&config, &stimulus(), &out).expect("smooth solve");
    // v and w both matter: stack them.
    ndarray::concatenate(ndarray::Axis(1), &[sol.v.view(), sol.w.view()]).expect("same shapes")
}

fn l2(a: &Array2<f64>, b: &Array2<f64>) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Observed orders from a sequence of solutions, each twice as fine as the last.
fn orders(sols: &[Array2<f64>]) -> Vec<f64> {
    let diffs: Vec<f64> = sols.windows(2).map(|w| l2(&w[0], &w[1])).collect();
    diffs.windows(2).map(|d| (d[0] / d[1]).log2()).collect()
}

fn assert_order(name: &str, observed: &[f64], expected: f64) {
    eprintln!("{name}: observed orders {observed:?}");
    assert!(!observed.is_empty());
    for o in observed {
        assert!(
            (o - expected).abs() <= 0.2,
            "{name}: observed orders {observed:?}, expected {expected} ± 0.2"
        );
    }
}

#[test]
fn space_is_second_order() {
    let sols: Vec<_> = [32, 64, 128, 256]
        .iter()
        .map(|&m| solve(Scheme::Sbdf2, m + 1, 800))
        .collect();
    assert_order("space", &orders(&sols), 2.0);
}

#[test]
fn sbdf1_is_first_order_in_time() {
    let sols: Vec<_> = [40, 80, 160, 320]
        .iter()
        .map(|&s| solve(Scheme::Sbdf1, 65, s))
        .collect();
    assert_order("SBDF1", &orders(&sols), 1.0);
}

#[test]
fn sbdf2_is_second_order_in_time() {
    let sols: Vec<_> = [40, 80, 160, 320]
        .iter()
        .map(|&s| solve(Scheme::Sbdf2, 65, s))
        .collect();
    assert_order("SBDF2", &orders(&sols), 2.0);
}

#[test]
fn ars222_is_second_order_in_time() {
    let sols: Vec<_> = [40, 80, 160, 320]
        .iter()
        .map(|&s| solve(Scheme::Ars222, 65, s))
        .collect();
    assert_order("ARS(2,2,2)", &orders(&sols), 2.0);
}

#[test]
fn schemes_agree_when_refined() {
    let a = solve(Scheme::Sbdf2, 65, 640);
    let b = solve(Scheme::Ars222, 65, 640);
    let c = solve(Scheme::Sbdf1, 65, 640);
    let scale = l2(&a, &Array2::zeros(a.dim()));
    assert!(l2(&a, &b) / scale < 1e-4);
    assert!(l2(&a, &c) / scale < 1e-2);
}
