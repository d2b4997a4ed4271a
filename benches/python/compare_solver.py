"""Side by side: the Rust SBDF2 solver against the NumPy/SciPy one, same stimulus and grid.

    python benches/python/compare_solver.py [--x0 0.5 --t0 1 --amplitude 1]

Builds (if needed) and runs `target/release/examples/fhn_solve --repeat N`, runs
sbdf2_numpy.simulate the same way, checks the two solutions agree, and prints the fastest
wall time of each and the ratio. Both run on one thread (BLAS threads pinned to 1; the Rust
solve is single-threaded). Times include each side's setup (factorisation, stimulus profile).
"""
import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sbdf2_numpy  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--x0", type=float, default=0.5)
    ap.add_argument("--t0", type=float, default=1.0)
    ap.add_argument("--amplitude", type=float, default=1.0)
    ap.add_argument("--repeat-rust", type=int, default=50)
    ap.add_argument("--repeat-numpy", type=int, default=5)
    ap.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "examples", "fhn_solve"))
    args = ap.parse_args()

    if not os.path.exists(args.binary):
        subprocess.run(["cargo", "build", "--release", "--example", "fhn_solve"], cwd=ROOT, check=True)

    with tempfile.TemporaryDirectory() as out:
        res = subprocess.run(
            [args.binary, "--x0", str(args.x0), "--t0", str(args.t0), "--amplitude", str(args.amplitude),
             "--scheme", "sbdf2", "--repeat", str(args.repeat_rust), "--out", out],
            check=True, capture_output=True, text=True, env={**os.environ, "RAYON_NUM_THREADS": "1"},
        )
        rust_s = float(re.search(r"solve_seconds ([0-9.eE+-]+)", res.stdout).group(1))
        v_rust = np.load(os.path.join(out, "v.npy"))

    best = float("inf")
    for _ in range(args.repeat_numpy):
        t = time.perf_counter()
        v_np, _ = sbdf2_numpy.simulate(x0=args.x0, t0=args.t0, amplitude=args.amplitude)
        best = min(best, time.perf_counter() - t)

    diff = float(np.abs(v_np - v_rust).max())
    print("grid: 397 nodes x 990 SBDF2 steps (default resolution), output 100 x 100")
    print(f"stimulus: box x0={args.x0} t0={args.t0} A={args.amplitude} width=0.04 duration=1")
    print(f"max |v_numpy - v_rust| = {diff:.2e}")
    print(f"numpy  (fastest of {args.repeat_numpy}): {best * 1e3:8.3f} ms")
    print(f"rust   (fastest of {args.repeat_rust}): {rust_s * 1e3:8.3f} ms")
    print(f"ratio numpy/rust: {best / rust_s:.1f}x")
    if diff > 1e-8:
        print("WARNING: the two solvers disagree", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
