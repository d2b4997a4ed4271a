#!/usr/bin/env python3
"""Side-by-side timing: neuraloperator 2.0 SpectralConv vs no-layers' SpectralConv.

Same problem on both sides: batch 32, 32 -> 32 channels, 100 x 100 grid, 16 x 16 modes,
float32, CPU, 2 threads (torch.set_num_threads(2); RAYON_NUM_THREADS=2 for Rust).
Variants: dense weight, and Tucker rank 0.1 (TFNO's default, implementation
"factorized"). Forward is timed without autograd on the torch side (torch.no_grad) and
with it on the Rust side (candle records the graph when weights are variables), so the
comparison does not flatter Rust. "step" = forward + mean(y^2) + backward.

The Rust side is the example `crates/no-layers/examples/spectral_timing.rs`, built and
run with `cargo run --release -p no-layers --example spectral_timing`.

Usage (from the repository root):
    python benches/python/compare_spectral.py [--reps 20] [--skip-build]

glibc malloc is told to keep its memory (MALLOC_MMAP_MAX_=0 ..., see docs/performance.md):
otherwise torch spends much of its time re-faulting
buffers. The script re-executes itself with those variables if they are missing.
"""
import argparse
import json
import os
import subprocess
import sys
import time

MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "536870912",
}
if any(os.environ.get(k) != v for k, v in MALLOC.items()):
    os.environ.update(MALLOC)
    os.execv(sys.executable, [sys.executable] + sys.argv)

import torch  # noqa: E402
from neuralop.layers.spectral_convolution import SpectralConv  # noqa: E402

B, C, N, M = 32, 32, 100, 16
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def timeit(fn, reps):
    for _ in range(3):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2], ts[0]


def torch_side(reps):
    torch.set_num_threads(2)
    torch.manual_seed(0)
    x = torch.randn(B, C, N, N)
    out = {}
    for name, kw in [
        ("dense", {}),
        ("tucker", {"factorization": "tucker", "rank": 0.1, "implementation": "factorized"}),
    ]:
        layer = SpectralConv(C, C, (M, M), **kw)

        def fwd():
            with torch.no_grad():
                layer(x)

        def step():
            layer.zero_grad(set_to_none=True)
            layer(x).square().mean().backward()

        out[name] = {"forward": timeit(fwd, reps), "step": timeit(step, reps)}
    return out


def rust_side(reps, skip_build):
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    cmd = ["cargo", "run", "--release", "-q", "-p", "no-layers", "--example", "spectral_timing", "--",
           str(B), str(C), str(N), str(M), str(reps)]
    if skip_build:
        cmd = [os.path.join(ROOT, "target/release/examples/spectral_timing"), str(B), str(C), str(N), str(M), str(reps)]
    res = subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    return {r["variant"]: r for r in rows}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--skip-build", action="store_true", help="run target/release/examples/spectral_timing directly")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()} -> 2; problem B={B} C={C} grid={N}x{N} modes={M}x{M}, f32")
    t = torch_side(args.reps)
    r = rust_side(args.reps, args.skip_build)
    pairs = [
        ("dense", "dense_matmul"),
        ("dense", "dense_fft"),
        ("tucker", "tucker_factorized"),
        ("tucker", "tucker_reconstructed"),
    ]
    print(f"{'rust variant':<22}{'phase':<9}{'neuralop ms (med/min)':>24}{'rust ms (med/min)':>22}{'ratio nop/rust (med)':>24}")
    for tn, rn in pairs:
        for phase, tkey, rkey in [("forward", "forward", "forward"), ("fwd+bwd", "step", "forward_backward")]:
            tm, tmin = t[tn][tkey]
            rm, rmin = r[rn][f"{rkey}_ms"], r[rn][f"{rkey}_min_ms"]
            print(f"{rn:<22}{phase:<9}{tm:>14.1f} / {tmin:<7.1f}{rm:>12.1f} / {rmin:<7.1f}{tm / rm:>18.2f}x")


if __name__ == "__main__":
    main()
