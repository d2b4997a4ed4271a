#!/usr/bin/env python
"""Times a CBLAS library's `cblas_sgemm` at the DeepONet-family and DeepONet-CNN product shapes
and prints GFLOP/s with the CPU model: the reference rates that `docs/performance.md` holds the
`gemm` crate (through `cargo run --release -p no-layers --example dense_timing`) against.

Usage:

    python benches/python/blas_rate.py LIBRARY THREADS

LIBRARY is a shared library with `cblas_sgemm`, for example Debian's OpenBLAS
(`/usr/lib/x86_64-linux-gnu/libopenblas.so.0`, with `OPENBLAS_CORETYPE=SkylakeX` on CPUs
that Debian's 0.3.21 does not know) or Intel MKL from Debian's `non-free` component
(`apt-get install libmkl-rt`; run it with GNU OpenMP:
`LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libgomp.so.1 MKL_THREADING_LAYER=GNU`, optionally
`MKL_CBWR=AUTO,STRICT` for thread-count-independent results). Each shape: the fastest of 30
row-major, untransposed products after one warm-up, checked against numpy.
"""

import ctypes
import platform
import sys
import time
from pathlib import Path

import numpy as np

# (m, k, n): DON trunk layer on 100 × 100 points, DON-CNN trunk layer, DON branch layer at
# batch 32, DON first branch layer at batch 32, DON-CNN's second convolution as one product
# (32 samples × 24 × 24 positions, 40 · 9 patch rows, 80 channels), the product of 32 samples'
# coefficients with a 10,000-point basis, DON-CNN's third convolution.
SHAPES = [
    (10_000, 256, 256),
    (10_000, 80, 80),
    (32, 256, 256),
    (32, 10_000, 256),
    (18_432, 360, 80),
    (32, 800, 10_000),
    (3_872, 720, 100),
]


def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def set_threads(lib, threads):
    for name in ("MKL_Set_Num_Threads", "openblas_set_num_threads"):
        if hasattr(lib, name):
            getattr(lib, name)(ctypes.c_int(threads))
            return name
    return "no thread setter found (the library's default applies)"


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    try:
        threads = int(sys.argv[2])
    except ValueError:
        sys.exit(f"THREADS must be a whole number, got {sys.argv[2]!r}")
    if threads < 1:
        sys.exit(f"THREADS must be at least 1, got {threads}")
    try:
        lib = ctypes.CDLL(sys.argv[1])
        sgemm = lib.cblas_sgemm
    except (OSError, AttributeError) as e:
        sys.exit(f"{sys.argv[1]}: not a library with cblas_sgemm ({e})")
    setter = set_threads(lib, threads)
    print(f"CPU: {cpu_model()}; library {sys.argv[1]}; {threads} thread(s) ({setter})")
    ptr = ctypes.c_void_p
    rng = np.random.default_rng(0)
    for m, k, n in SHAPES:
        a = rng.random((m, k), dtype=np.float32)
        b = rng.random((k, n), dtype=np.float32)
        c = np.zeros((m, n), np.float32)
        args = (101, 111, 111, m, n, k, ctypes.c_float(1.0), ptr(a.ctypes.data), k,
                ptr(b.ctypes.data), n, ctypes.c_float(0.0), ptr(c.ctypes.data), n)
        sgemm(*args)
        best = float("inf")
        for _ in range(30):
            t0 = time.perf_counter()
            sgemm(*args)
            best = min(best, time.perf_counter() - t0)
        if not np.allclose(c, a @ b, rtol=1e-3, atol=1e-2):
            sys.exit(f"{m} × {k} × {n}: the library's product differs from numpy's")
        print(f"{m:>6} × {k:>6} × {n:>6}: {best * 1e3:8.3f} ms  {2 * m * k * n / best / 1e9:6.0f} GFLOP/s")


if __name__ == "__main__":
    main()
