#!/usr/bin/env python
"""One side-by-side comparison of all seven models against their PyTorch anchors, on this
CPU, with the same thread count on both sides.

Prints the CPU (model name, vendor, and whether it has AVX2, FMA and AVX-512F), the torch
version and whether torch has MKL, then for each model and each cell (inference at batch 1
and 32, a training step at batch 32) the anchor's ms, ours and the ratio anchor / ours
(above 1: ours is faster).

- Anchors: `compare_neuralop.py` (neuraloperator 2.0's FNO, TFNO, LocalNO) and
  `compare_cno_deeponet.py` (CNO2d simplified, DeepXDE's DeepONetCartesianProd with an MLP
  or CNN branch, PODDeepONet), timed by those scripts' own functions: forward under
  `torch.no_grad()` and forward + MSE + backward + AdamW, fastest of `--repeats`.
- Ours: `target/release/examples/model_timing --work infer` (the inference twin, the work
  `torch.no_grad()` does) and `--work train`, fastest of `--repeats`.

With `--rounds N` both sides are timed N times, alternating anchor and ours model by
model, and the table gives the median over rounds of each side's fastest figure (the
machine's load drifts; alternating keeps both sides in the same minutes), and the lowest
and highest of the rounds' own ratios.

The glibc settings of `docs/performance.md` (keep freed memory instead of returning and
re-faulting it) are applied to both processes: the script re-executes itself with them
when they are not set.

Usage:

    cargo build --release --example model_timing
    python benches/python/compare_all.py --threads 2 --rounds 3
    python benches/python/compare_all.py --models don,don_cnn,pod_don --rounds 5

Needs torch, neuraloperator 2.0 (with torch-harmonics 0.8 for LocalNO) and deepxde.
"""

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
MALLOC = {
    "MALLOC_MMAP_MAX_": "0",
    "MALLOC_TRIM_THRESHOLD_": "68719476736",
    "MALLOC_TOP_PAD_": "536870912",
}
MODELS = ["fno", "tfno", "local_no", "cno", "don", "don_cnn", "pod_don"]
NEURALOP = {"fno", "tfno", "local_no"}
# (label, model_timing --work, --batch, anchor key)
CELLS = [
    ("infer b1", "infer", 1, "forward/1"),
    ("infer b32", "infer", 32, "forward/32"),
    ("train step b32", "train", 32, "train_step/32"),
]


def cpu_description():
    """The CPU's model name, vendor and vector extensions, from /proc/cpuinfo (Linux) or
    `platform` elsewhere."""
    info = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "vendor_id", "flags", "cpu family", "model") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    flags = set(info.get("flags", "").split())
    name = info.get("model name") or platform.processor() or platform.machine()
    ext = ", ".join(f"{f} {'yes' if f in flags else 'no'}" for f in ("avx2", "fma", "avx512f"))
    vendor = info.get("vendor_id", "?")
    family = f"family {info.get('cpu family', '?')} model {info.get('model', '?')}"
    return f"{name} ({vendor}, {family}); {ext}; {os.cpu_count()} logical CPUs"


def ours_ms(binary, model, work, batch, repeats, threads):
    """The fastest repeat `model_timing` reports, in ms."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(binary), "--model", model, "--work", work, "--batch", str(batch), "--repeats", str(repeats)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    m = re.search(r"fastest ([0-9.]+) ms", out)
    if not m:
        raise RuntimeError(f"no timing in the output of {' '.join(cmd)}:\n{out}")
    return float(m.group(1))


def anchor_ms(name, repeats, neuralop, others, others_models):
    """The anchor's fastest times for the three cells, keyed as the anchor scripts do."""
    if name in NEURALOP:
        return neuralop.time_model(neuralop.make(name), repeats)
    return others.time_model(others_models[name], repeats)


def positive(text):
    """A whole number of at least 1, for argparse (a clear error instead of a crash later)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {value}")
    return value


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=positive, default=2)
    ap.add_argument("--repeats", type=positive, default=5, help="timed runs per figure (fastest kept)")
    ap.add_argument("--rounds", type=positive, default=1, help="alternating rounds (median kept)")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--binary", default=str(ROOT / "target" / "release" / "examples" / "model_timing"))
    args = ap.parse_args()

    if any(os.environ.get(k) != v for k, v in MALLOC.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, **MALLOC))

    names = [m for m in args.models.split(",") if m]
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        sys.exit(f"unknown models {unknown}; choose from {MODELS}")
    binary = Path(args.binary)
    if not binary.exists():
        sys.exit(f"{binary} not found: cargo build --release --example model_timing")

    os.environ.setdefault("DDE_BACKEND", "pytorch")
    sys.path.insert(0, str(HERE))
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    neuralop = others = others_models = None
    if NEURALOP & set(names):
        import compare_neuralop as neuralop
    if set(names) - NEURALOP:
        import compare_cno_deeponet as others

        others_models = others.build_models()

    print(f"CPU: {cpu_description()}")
    print(
        f"torch {torch.__version__} (MKL {'yes' if torch.backends.mkl.is_available() else 'no'}), "
        f"{args.threads} threads each side, glibc keeps freed memory; "
        f"fastest of {args.repeats} runs, median over {args.rounds} alternating round(s); ms"
    )
    print()
    print("| model | cell | anchor ms | ours ms | anchor / ours | per round |")
    print("|---|---|---|---|---|---|")
    for name in names:
        anchor_runs, our_runs = [], []
        for _ in range(args.rounds):
            anchor_runs.append(anchor_ms(name, args.repeats, neuralop, others, others_models))
            our_runs.append(
                {
                    label: ours_ms(binary, name, work, batch, args.repeats, args.threads)
                    for label, work, batch, _ in CELLS
                }
            )
        for label, _, _, key in CELLS:
            a = statistics.median(r[key] for r in anchor_runs)
            o = statistics.median(r[label] for r in our_runs)
            # Each round's own ratio (anchor and ours timed back to back): their spread
            # says how far the machine's drift moves the median ratio.
            per_round = [ra[key] / ro[label] for ra, ro in zip(anchor_runs, our_runs)]
            spread = f"{min(per_round):.2f}–{max(per_round):.2f}x"
            print(f"| {name} | {label} | {ms(a)} | {ms(o)} | {a / o:.2f}x | {spread} |", flush=True)


def ms(value):
    """A time in ms with two decimals below 10 ms (a batch-1 DeepONet cell is under 1 ms, so
    one decimal would round the ratio by up to 25 %), one above."""
    return f"{value:,.2f}" if value < 10 else f"{value:,.1f}"


if __name__ == "__main__":
    main()
