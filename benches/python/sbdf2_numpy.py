"""NumPy/SciPy reference of the fhn-solver SBDF2 scheme (1D, Neumann, box stimulus).

The same discretisation as crates/fhn-solver: vertex-centred grid with ghost-node Neumann
rows, the box pulse applied as its control-volume fraction in space and its step mean in
time, one IMEX-Euler start step, then
    (3I - 2 dt D Lap) v^{n+1} = 4v^n - v^{n-1} + 2dt (2 N^n - N^{n-1}),
    3 w^{n+1}               = 4w^n - w^{n-1} + 2dt (2 M^n - M^{n-1}),
with N = b v (v - beta)(delta - v) - c w + I and M = e (v - gamma w). The implicit solve
is a banded LU (scipy.linalg.lu_factor is for dense matrices; the banded matrix is factored
once with LAPACK dgttrf and each step calls dgttrs), which is the fastest fair NumPy path.
"""
import numpy as np
from scipy.linalg import lapack

PARAMS = dict(b=5.0, c=1.0, beta=0.1, delta=1.0, gamma=0.25, e=0.1, d=1e-3)


def overlap(a, b, c, d):
    return np.maximum(np.minimum(b, d) - np.maximum(a, c), 0.0)


def box_space_profile(x, h, length, x0, width):
    lo = np.maximum(x - 0.5 * h, 0.0)
    hi = np.minimum(x + 0.5 * h, length)
    return overlap(lo, hi, x0 - 0.5 * width, x0 + 0.5 * width) / (hi - lo)


def box_time_factor(t, dt, t0, duration, amplitude):
    return amplitude * max(min(t + 0.5 * dt, t0 + duration) - max(t - 0.5 * dt, t0), 0.0) / dt


def factor(n, alpha, k):
    """LU factors of alpha I - k Lap_h (k = kappa / h^2), Neumann rows."""
    dl = np.full(n - 1, -k)
    du = np.full(n - 1, -k)
    dl[-1] = -2.0 * k
    du[0] = -2.0 * k
    d = np.full(n, alpha + 2.0 * k)
    dl, d, du, du2, ipiv, info = lapack.dgttrf(dl, d, du)
    assert info == 0
    return dl, d, du, du2, ipiv


def solve(f, rhs):
    x, info = lapack.dgttrs(*f, rhs)
    return x


def simulate(x0=0.5, t0=1.0, amplitude=1.0, width=0.04, duration=1.0,
             nt_out=100, nx_out=100, t_end=40.0, length=1.0, refine_x=4, refine_t=10, p=PARAMS):
    n = (nx_out - 1) * refine_x + 1
    steps = (nt_out - 1) * refine_t
    h = length / (n - 1)
    dt = t_end / steps
    x = length * np.arange(n) / (n - 1)
    prof = box_space_profile(x, h, length, x0, width)
    k = dt * p["d"] / h ** 2
    f1 = factor(n, 1.0, k)
    f2 = factor(n, 3.0, 2.0 * k)
    b, c, beta, delta, gamma, e = p["b"], p["c"], p["beta"], p["delta"], p["gamma"], p["e"]
    v = np.zeros(n)
    w = np.zeros(n)
    vs = np.zeros((nt_out, nx_out))
    ws = np.zeros((nt_out, nx_out))
    pv = pw = pnv = pnw = None
    for step in range(steps):
        t = t_end * step / steps
        a = box_time_factor(t, dt, t0, duration, amplitude)
        nv = b * v * (v - beta) * (delta - v) - c * w
        if a != 0.0:
            nv += a * prof
        nw = e * (v - gamma * w)
        if step == 0:
            v_new = solve(f1, v + dt * nv)
            w_new = w + dt * nw
        else:
            v_new = solve(f2, 4.0 * v - pv + 2.0 * dt * (2.0 * nv - pnv))
            w_new = (4.0 * w - pw + 2.0 * dt * (2.0 * nw - pnw)) / 3.0
        pv, pw, pnv, pnw = v, w, nv, nw
        v, w = v_new, w_new
        if (step + 1) % refine_t == 0:
            kk = (step + 1) // refine_t
            vs[kk] = v[::refine_x]
            ws[kk] = w[::refine_x]
    return vs, ws


if __name__ == "__main__":
    import time
    t = time.perf_counter()
    v, w = simulate()
    print(f"NumPy SBDF2 solve: {time.perf_counter() - t:.3f} s, max v = {v.max():.4f}")
