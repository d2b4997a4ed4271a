//! The discrete Laplacian with zero-flux boundaries and the factored implicit solves
//! `(α·I − κ·Δ_h) x = r`.
//!
//! Both are vertex-centred second-order finite differences: nodes sit on the boundary and the
//! Neumann condition uses a mirrored ghost node, so the boundary row reads `2(v₁ − v₀)/h²`.
//! In 1D the matrix is tridiagonal and factored once (a twisted, two-sided Thomas
//! factorisation with precomputed multipliers: see [`Tridiagonal`]). In 2D the 5-point operator is
//! diagonalised by the type-I discrete cosine transform along each axis, whose basis
//! `cos(πkn/(N−1))` is exactly its eigenbasis; a solve is two DCT-I passes and a division.

use std::sync::Arc;

use rustdct::{Dct1, DctPlanner};

/// A solver for `(α·I − κ·Δ_h) x = r`, factored once for fixed (grid, α, κ).
pub trait FactoredSolve: Send + Sync {
    /// Overwrites `rhs` with the solution.
    fn solve(&self, rhs: &mut [f64], scratch: &mut Scratch);
}

/// Work buffers reused across solves (so a time step allocates nothing).
#[derive(Debug, Default)]
pub struct Scratch {
    a: Vec<f64>,
    b: Vec<f64>,
}

/// A spatial grid that knows its Laplacian and how to factor implicit solves on it.
pub trait Domain: Send + Sync {
    /// Number of unknowns.
    fn len(&self) -> usize;
    /// Whether the grid is empty (never, for a valid grid).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `out = Δ_h v` (Neumann).
    fn laplacian(&self, v: &[f64], out: &mut [f64]);
    /// Factors `α·I − κ·Δ_h`.
    fn factor(&self, alpha: f64, kappa: f64) -> Box<dyn FactoredSolve>;
}

/// A 1D grid of `n ≥ 3` nodes with spacing `h`.
#[derive(Debug, Clone, Copy)]
pub struct Line {
    /// Nodes.
    pub n: usize,
    /// Spacing.
    pub h: f64,
}

impl Domain for Line {
    fn len(&self) -> usize {
        self.n
    }

    fn laplacian(&self, v: &[f64], out: &mut [f64]) {
        laplacian_1d(v, out, 1.0 / (self.h * self.h));
    }

    fn factor(&self, alpha: f64, kappa: f64) -> Box<dyn FactoredSolve> {
        Box::new(Tridiagonal::neumann(
            self.n,
            alpha,
            kappa / (self.h * self.h),
        ))
    }
}

/// `out = s·Δ v` in 1D with the ghost-node Neumann rows.
pub(crate) fn laplacian_1d(v: &[f64], out: &mut [f64], s: f64) {
    let n = v.len();
    out[0] = 2.0 * s * (v[1] - v[0]);
    for i in 1..n - 1 {
        out[i] = s * (v[i - 1] - 2.0 * v[i] + v[i + 1]);
    }
    out[n - 1] = 2.0 * s * (v[n - 2] - v[n - 1]);
}

/// A factored tridiagonal matrix: a *twisted* (two-sided) LU factorisation without pivoting
/// (the matrix is diagonally dominant).
///
/// Rows `0..k` are eliminated downwards and rows `k+1..n` upwards at the same time, meeting
/// at the twist row `k = n/2`; back-substitution then runs outwards from `k` in both
/// directions. A plain Thomas sweep is one long chain of dependent multiply–subtracts
/// (latency-bound: ~8 cycles a node per sweep); the two half-length chains here are
/// independent, so the CPU runs them side by side and the solve takes about half the time.
/// The divisions are precomputed, so each node costs two multiplies and one subtraction
/// per sweep.
#[derive(Debug, Clone)]
pub struct Tridiagonal {
    /// Twist row.
    k: usize,
    /// `1/pivot` per row (`1/γ_k` at the twist).
    inv: Vec<f64>,
    /// Elimination multipliers: `a_i/p_i` above the twist, `c_i/q_i` below.
    fwd: Vec<f64>,
    /// Back-substitution multipliers: `c_i/p_i` above the twist, `a_i/q_i` below.
    bwd: Vec<f64>,
    /// The twist row's off-diagonals `(a_k, c_k)`.
    twist: (f64, f64),
}

/// The bands `(sub, diag, sup)` of `α·I − k·Δ` with Neumann rows (the ghost node mirrors
/// its neighbour, so the boundary rows carry `−2k`): shared by every 1D factorisation.
pub(crate) fn neumann_bands(n: usize, alpha: f64, k: f64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let diag = vec![alpha + 2.0 * k; n];
    let sub = (0..n)
        .map(|i| if i == n - 1 { -2.0 * k } else { -k })
        .collect();
    let sup = (0..n).map(|i| if i == 0 { -2.0 * k } else { -k }).collect();
    (sub, diag, sup)
}

impl Tridiagonal {
    /// Factors `α·I − k·Δ` (k = κ/h²) with Neumann rows (n ≥ 3).
    pub fn neumann(n: usize, alpha: f64, k: f64) -> Self {
        let (sub, diag, sup) = neumann_bands(n, alpha, k);
        Self::new(&sub, &diag, &sup)
    }

    /// Factors the matrix with sub-diagonal `a` (`a[0]` unused), diagonal `d` and
    /// super-diagonal `c` (`c[n−1]` unused).
    pub fn new(a: &[f64], d: &[f64], c: &[f64]) -> Self {
        let n = d.len();
        let k = n / 2;
        let (mut inv, mut fwd, mut bwd) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        // Downwards over rows 0..k: pivots p_i = d_i − a_i·c_{i−1}/p_{i−1}.
        let mut p = d[0];
        for i in 0..k {
            if i > 0 {
                p = d[i] - a[i] * bwd[i - 1];
            }
            inv[i] = 1.0 / p;
            fwd[i] = a[i] * inv[i];
            bwd[i] = c[i] * inv[i];
        }
        // Upwards over rows n−1..k+1: pivots q_i = d_i − c_i·a_{i+1}/q_{i+1}.
        let mut q = d[n - 1];
        for i in (k + 1..n).rev() {
            if i < n - 1 {
                q = d[i] - c[i] * bwd[i + 1];
            }
            inv[i] = 1.0 / q;
            fwd[i] = c[i] * inv[i];
            bwd[i] = a[i] * inv[i];
        }
        let above = if k > 0 { a[k] * bwd[k - 1] } else { 0.0 };
        let below = if k + 1 < n { c[k] * bwd[k + 1] } else { 0.0 };
        inv[k] = 1.0 / (d[k] - above - below);
        Self {
            k,
            inv,
            fwd,
            bwd,
            twist: (a[k], c[k]),
        }
    }

    /// Solves in place. On x86-64 CPUs with FMA (detected at run time) the sweeps use fused
    /// multiply–adds, which halves the latency of their dependent chains; the result then
    /// differs from the portable path by rounding only (and is the same on every run and
    /// thread count of one machine).
    pub fn solve_in_place(&self, r: &mut [f64]) {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU supports FMA (checked just above), the only requirement of
            // `sweeps_fma`'s target feature.
            unsafe { self.sweeps_fma(r) };
            return;
        }
        self.sweeps::<false>(r);
    }

    /// The portable sweeps (no FMA); for tests comparing both paths.
    pub fn solve_in_place_portable(&self, r: &mut [f64]) {
        self.sweeps::<false>(r);
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "fma")]
    unsafe fn sweeps_fma(&self, r: &mut [f64]) {
        self.sweeps::<true>(r);
    }

    /// The sweeps; `FMA` selects fused multiply–adds (only called where the CPU has them,
    /// otherwise `mul_add` would be a slow library call).
    #[inline(always)]
    fn sweeps<const FMA: bool>(&self, r: &mut [f64]) {
        let n = r.len();
        let k = self.k;
        let (inv, fwd, bwd) = (&self.inv[..n], &self.fwd[..n], &self.bwd[..n]);
        // Both eliminations at once: ŷ_i = r_i/p_i − (a_i/p_i)·ŷ_{i−1}, and mirrored below.
        let below = n - 1 - k;
        let mut top = r[0] * inv[0];
        r[0] = top;
        let mut bot = r[n - 1] * inv[n - 1];
        r[n - 1] = bot;
        for j in 1..below {
            let (i, l) = (j, n - 1 - j);
            top = msub::<FMA>(r[i] * inv[i], fwd[i], top);
            bot = msub::<FMA>(r[l] * inv[l], fwd[l], bot);
            r[i] = top;
            r[l] = bot;
        }
        for i in below.max(1)..k {
            top = msub::<FMA>(r[i] * inv[i], fwd[i], top);
            r[i] = top;
        }
        // The twist row.
        let up = if k > 0 { r[k - 1] } else { 0.0 };
        let down = if k + 1 < n { r[k + 1] } else { 0.0 };
        let xk = (r[k] - self.twist.0 * up - self.twist.1 * down) * inv[k];
        r[k] = xk;
        // Both back-substitutions at once, outwards from the twist.
        let (mut x_up, mut x_down) = (xk, xk);
        for j in 1..=k.min(below) {
            let (i, l) = (k - j, k + j);
            x_up = msub::<FMA>(r[i], bwd[i], x_up);
            x_down = msub::<FMA>(r[l], bwd[l], x_down);
            r[i] = x_up;
            r[l] = x_down;
        }
        for j in below + 1..=k {
            let i = k - j;
            x_up = msub::<FMA>(r[i], bwd[i], x_up);
            r[i] = x_up;
        }
        for j in k + 1..=below {
            let l = k + j;
            x_down = msub::<FMA>(r[l], bwd[l], x_down);
            r[l] = x_down;
        }
    }
}

/// `a − c·d`, fused into one rounding when `FMA` is set.
#[inline(always)]
fn msub<const FMA: bool>(a: f64, c: f64, d: f64) -> f64 {
    if FMA {
        (-c).mul_add(d, a)
    } else {
        a - c * d
    }
}

impl FactoredSolve for Tridiagonal {
    fn solve(&self, rhs: &mut [f64], _scratch: &mut Scratch) {
        self.solve_in_place(rhs);
    }
}

/// A 2D grid of `nx × ny` nodes, stored x-major (`index = ix·ny + iy`).
#[derive(Clone)]
pub struct Plane {
    /// Nodes along x.
    pub nx: usize,
    /// Nodes along y.
    pub ny: usize,
    /// Spacing along x.
    pub hx: f64,
    /// Spacing along y.
    pub hy: f64,
    dct_x: Arc<dyn Dct1<f64>>,
    dct_y: Arc<dyn Dct1<f64>>,
}

impl std::fmt::Debug for Plane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plane")
            .field("nx", &self.nx)
            .field("ny", &self.ny)
            .field("hx", &self.hx)
            .field("hy", &self.hy)
            .finish()
    }
}

impl Plane {
    /// Plans the DCTs for an `nx × ny` grid (each ≥ 3 nodes).
    pub fn new(nx: usize, ny: usize, hx: f64, hy: f64) -> Self {
        let mut planner = DctPlanner::new();
        let dct_x = planner.plan_dct1(nx);
        let dct_y = planner.plan_dct1(ny);
        Self {
            nx,
            ny,
            hx,
            hy,
            dct_x,
            dct_y,
        }
    }

    /// Applies DCT-I along y (contiguous rows) then along x (gathered columns).
    fn dct2d(&self, data: &mut [f64], scratch: &mut Scratch) {
        let (nx, ny) = (self.nx, self.ny);
        let need = self
            .dct_x
            .get_scratch_len()
            .max(self.dct_y.get_scratch_len());
        scratch.a.resize(need, 0.0);
        scratch.b.resize(nx, 0.0);
        for row in data.chunks_exact_mut(ny) {
            self.dct_y
                .process_dct1_with_scratch(row, &mut scratch.a[..self.dct_y.get_scratch_len()]);
        }
        for iy in 0..ny {
            for ix in 0..nx {
                scratch.b[ix] = data[ix * ny + iy];
            }
            self.dct_x.process_dct1_with_scratch(
                &mut scratch.b,
                &mut scratch.a[..self.dct_x.get_scratch_len()],
            );
            for ix in 0..nx {
                data[ix * ny + iy] = scratch.b[ix];
            }
        }
    }
}

/// Eigenvalues of the 1D Neumann Laplacian on `n` nodes: `−(4/h²)·sin²(πk/(2(n−1)))`.
fn neumann_eigenvalues(n: usize, h: f64) -> Vec<f64> {
    (0..n)
        .map(|k| {
            let s = (std::f64::consts::PI * k as f64 / (2.0 * (n - 1) as f64)).sin();
            -4.0 * s * s / (h * h)
        })
        .collect()
}

/// The DCT-diagonalised `α·I − κ·Δ_h` on a [`Plane`].
struct DctSolve {
    plane: Plane,
    /// `scale / (α − κ·(λx_i + λy_j))`, the inverse eigenvalues with the DCT-I normalisation.
    inv_eig: Vec<f64>,
}

impl FactoredSolve for DctSolve {
    fn solve(&self, rhs: &mut [f64], scratch: &mut Scratch) {
        self.plane.dct2d(rhs, scratch);
        for (r, s) in rhs.iter_mut().zip(&self.inv_eig) {
            *r *= s;
        }
        self.plane.dct2d(rhs, scratch);
    }
}

impl Domain for Plane {
    fn len(&self) -> usize {
        self.nx * self.ny
    }

    fn laplacian(&self, v: &[f64], out: &mut [f64]) {
        let (nx, ny) = (self.nx, self.ny);
        let sx = 1.0 / (self.hx * self.hx);
        let sy = 1.0 / (self.hy * self.hy);
        for ix in 0..nx {
            let row = &v[ix * ny..(ix + 1) * ny];
            let o = &mut out[ix * ny..(ix + 1) * ny];
            laplacian_1d(row, o, sy);
            // The x neighbours, mirrored at the walls (ghost node = inner neighbour).
            let left = if ix == 0 { 1 } else { ix - 1 };
            let right = if ix == nx - 1 { nx - 2 } else { ix + 1 };
            for iy in 0..ny {
                o[iy] += sx * (v[left * ny + iy] - 2.0 * row[iy] + v[right * ny + iy]);
            }
        }
    }

    fn factor(&self, alpha: f64, kappa: f64) -> Box<dyn FactoredSolve> {
        let lx = neumann_eigenvalues(self.nx, self.hx);
        let ly = neumann_eigenvalues(self.ny, self.hy);
        let scale = (2.0 / (self.nx - 1) as f64) * (2.0 / (self.ny - 1) as f64);
        let mut inv_eig = Vec::with_capacity(self.len());
        for &ex in &lx {
            for &ey in &ly {
                inv_eig.push(scale / (alpha - kappa * (ex + ey)));
            }
        }
        Box::new(DctSolve {
            plane: self.clone(),
            inv_eig,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn residual(dom: &dyn Domain, alpha: f64, kappa: f64, x: &[f64], r: &[f64]) -> f64 {
        let mut lap = vec![0.0; x.len()];
        dom.laplacian(x, &mut lap);
        x.iter()
            .zip(&lap)
            .zip(r)
            .map(|((xi, li), ri)| (alpha * xi - kappa * li - ri).abs())
            .fold(0.0, f64::max)
    }

    fn test_rhs(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7919) % 101) as f64 / 50.0 - 1.0)
            .collect()
    }

    #[test]
    fn tridiagonal_solve_satisfies_the_system() {
        let line = Line {
            n: 57,
            h: 1.0 / 56.0,
        };
        let (alpha, kappa) = (1.5, 3e-3);
        let r = test_rhs(line.n);
        let mut x = r.clone();
        line.factor(alpha, kappa)
            .solve(&mut x, &mut Scratch::default());
        assert!(residual(&line, alpha, kappa, &x, &r) < 1e-12);
    }

    #[test]
    fn twisted_solve_handles_every_size() {
        for n in 3..12 {
            let line = Line {
                n,
                h: 1.0 / (n - 1) as f64,
            };
            let r = test_rhs(n);
            let mut x = r.clone();
            line.factor(2.0, 0.3).solve(&mut x, &mut Scratch::default());
            assert!(residual(&line, 2.0, 0.3, &x, &r) < 1e-12, "n = {n}");
        }
    }

    #[test]
    fn fma_and_portable_paths_agree() {
        let t = Tridiagonal::neumann(397, 3.0, 4.2);
        let r = test_rhs(397);
        let (mut a, mut b) = (r.clone(), r.clone());
        t.solve_in_place(&mut a);
        t.solve_in_place_portable(&mut b);
        let diff = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(diff < 1e-13, "{diff}");
    }

    #[test]
    fn dct_solve_satisfies_the_system() {
        let plane = Plane::new(17, 12, 1.0 / 16.0, 0.7 / 11.0);
        let (alpha, kappa) = (3.0, 2e-2);
        let r = test_rhs(plane.len());
        let mut x = r.clone();
        plane
            .factor(alpha, kappa)
            .solve(&mut x, &mut Scratch::default());
        assert!(
            residual(&plane, alpha, kappa, &x, &r) < 1e-11,
            "{}",
            residual(&plane, alpha, kappa, &x, &r)
        );
    }

    #[test]
    fn laplacian_of_a_quadratic_is_exact_inside() {
        let line = Line { n: 11, h: 0.1 };
        let v: Vec<f64> = (0..11).map(|i| (i as f64 * 0.1).powi(2)).collect();
        let mut out = vec![0.0; 11];
        line.laplacian(&v, &mut out);
        for o in &out[1..10] {
            assert!((o - 2.0).abs() < 1e-10);
        }
    }
}
