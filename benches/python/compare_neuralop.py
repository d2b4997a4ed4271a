#!/usr/bin/env python
"""Times neuraloperator 2.0's FNO, TFNO and LocalNO on the same CPU and thread count as
the Rust criterion benches (`benches/models/fourier.rs`), and prints each figure next to
the Rust one with the ratio (neuraloperator time / Rust time: above 1 means Rust is faster).

Work timed (input [B, 1, 100, 100] -> output [B, 2, 100, 100], float32):
- forward at batch 1 and 32 under `torch.no_grad()`, set against both Rust forwards: the
  graph-keeping `forward` and the inference twin's `infer` (the same work as `no_grad`);
- one training step at batch 32: forward + MSE + backward + AdamW.
Figures are the minimum over `--repeats` timed runs after one warm-up run.

Models: `FNO(n_modes=(16, 16), in_channels=1, out_channels=2, hidden_channels=32,
n_layers=4)`, `TFNO` with the same arguments (rank 0.1), `LocalNO` with the same
arguments and `default_in_shape=(100, 100)`: 603,042 / 76,902 / 656,098 parameters
(checked below), the Rust defaults.

Usage (run the Rust benches first so that their estimates exist; same thread count):

    cargo bench --bench models -- models_fourier
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_TOP_PAD_=536870912 \
        python benches/python/compare_neuralop.py --threads 2

The malloc settings keep glibc from returning (and re-faulting) PyTorch's large buffers,
which otherwise costs these models up to half their time and flatters any competitor.
"""

import argparse
import json
import time
from pathlib import Path

import torch
from neuralop.models import FNO, TFNO

N = 100
EXPECTED_PARAMS = {"fno": 603_042, "tfno": 76_902, "local_no": 656_098}


def make(name):
    kw = dict(n_modes=(16, 16), in_channels=1, out_channels=2, hidden_channels=32, n_layers=4)
    if name == "fno":
        return FNO(**kw)
    if name == "tfno":
        return TFNO(**kw)
    from neuralop.models.local_no import LocalNO  # needs torch-harmonics 0.8.0

    return LocalNO(default_in_shape=(N, N), **kw)


def best_ms(fn, repeats):
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def time_model(model, repeats):
    x1 = torch.randn(1, 1, N, N)
    x32 = torch.randn(32, 1, N, N)
    y32 = torch.randn(32, 2, N, N)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def forward(x):
        def run():
            with torch.no_grad():
                model(x)

        return run

    def step():
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(x32), y32)
        loss.backward()
        opt.step()

    return {
        "forward/1": best_ms(forward(x1), repeats),
        "forward/32": best_ms(forward(x32), repeats),
        "train_step/32": best_ms(step, repeats),
    }


def rust_figure(criterion_dir, name, what):
    kind, batch = what.split("/")
    path = Path(criterion_dir) / "models_fourier" / f"{name}_{kind}" / batch / "new" / "estimates.json"
    if not path.exists():
        return None
    est = json.loads(path.read_text())
    return est["median"]["point_estimate"] / 1e6  # nanoseconds -> ms


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", default="fno,tfno,local_no")
    ap.add_argument("--criterion-dir", default=str(Path(__file__).resolve().parents[2] / "target" / "criterion"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| model | params (numel) | work | neuraloperator ms | Rust ms | ratio |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        model = make(name)
        params = sum(p.numel() for p in model.parameters())
        assert params == EXPECTED_PARAMS[name], (name, params)
        for what, ms in time_model(model, args.repeats).items():
            # The anchor's no-grad forward is set against both Rust forwards: the one that
            # records the autograd graph (`forward`) and the inference twin (`infer`, the
            # same work as `torch.no_grad()`).
            rust_kinds = [what, what.replace("forward", "infer")] if what.startswith("forward") else [what]
            for rust_what in rust_kinds:
                rust = rust_figure(args.criterion_dir, name, rust_what)
                rust_s = f"{rust:.1f}" if rust is not None else "n/a"
                ratio = f"{ms / rust:.2f}x" if rust else "n/a"
                label = what if rust_what == what else f"{what} (Rust infer)"
                print(f"| {name} | {params:,} | {label} | {ms:.1f} | {rust_s} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
