#!/usr/bin/env python3
"""How much of the translated-test error no model can avoid: the onset's sub-step phase.

    onset_phase.py BIN DATA [--nt NT] [--nx NX] [--draws M] [--no-floor] [--checkpoint CK ...]

BIN is the directory of the release examples (target/release/examples); DATA is the `test/`
folder that `generate_dataset --npy` writes (x0.npy, t0.npy, amplitude.npy, v.npy, w.npy,
input.npy), on an output grid of NT x NX nodes over [0, 40] x [0, 1] (default 50 x 50, the
quick study's).

The dataset's input is the box current sampled at the output nodes: row k is on when
t0 <= t_k < t0 + duration. On a grid whose step is not a divisor of the pulse duration, every
onset in an interval of up to one grid step gives the same input rows, while the true response
moves with the onset. For each test sample the script

* finds the interval of onsets that give exactly its input rows (within the split's law
  [T0_LOW, T0_HIGH]),
* solves the cable (`fhn_solve`) at M onsets spread evenly over that interval, same centre
  and amplitude, and averages them: the conditional mean of the response given the input,
  the best prediction in mean square that any model reading this input can make,
* solves the training onset (t0 = 1) and shifts it by the whole grid steps between the two
  inputs' first rows: what an exactly delay-equivariant model that fits the training split
  perfectly would answer (for inputs whose rows the training split never shows, two rows
  where training has one or the reverse, this is one guess among several),

and prints, per split of the test samples and over all of them, the median relative L2 error
(v and w, the study's metric) of the conditional mean ("floor") and of the shifted training
response ("shift"). With --checkpoint it also runs `infer` on the test inputs and prints the
model's median error on the same samples. The samples are grouped by the row count their
onset gives point values (the training split's, or another), whatever DATA's input sampling:
with `--no-floor` (for a dataset written with `input_sampling: "cell_average"`, whose input
moves with the onset, so that the floor above does not apply) only the models' errors are
printed, on the same groups. Needs numpy.
"""
import argparse
import os
import subprocess
import tempfile

import numpy as np

T_END = 40.0
DURATION = 1.0
T0_TRAIN = 1.0
T0_LOW, T0_HIGH = 1.0, 20.0


def rel_l2(pred, truth):
    # Norms on the uniform grid: the spacing cancels in the ratio.
    den = np.linalg.norm(truth)
    return np.linalg.norm(pred - truth) / den if den > 0 else float("nan")


def on_rows(t0, times):
    return tuple(np.nonzero((times >= t0) & (times < t0 + DURATION))[0])


def same_input_interval(t0, times):
    """The onsets in [T0_LOW, T0_HIGH] whose input rows equal those of t0 (a scan at 1/2000
    of a step: the interval's ends are where a row enters or leaves the pulse)."""
    dt = times[1] - times[0]
    rows = on_rows(t0, times)
    grid = np.linspace(t0 - 1.5 * dt, t0 + 1.5 * dt, 6001)
    grid = grid[(grid >= T0_LOW) & (grid <= T0_HIGH)]
    same = np.array([on_rows(t, times) == rows for t in grid])
    # The matching onsets form one interval around t0.
    i = int(np.searchsorted(grid, t0))
    lo = i
    while lo > 0 and same[lo - 1]:
        lo -= 1
    hi = min(i, len(grid) - 1)
    while hi + 1 < len(grid) and same[hi + 1]:
        hi += 1
    return grid[lo], grid[hi], rows


class Solver:
    def __init__(self, bin_dir, work, nt, nx):
        self.bin, self.work, self.nt, self.nx, self.n = bin_dir, work, nt, nx, 0

    def solve(self, t0, x0, a):
        self.n += 1
        out = os.path.join(self.work, f"s{self.n}")
        subprocess.run([os.path.join(self.bin, "fhn_solve"), "--x0", repr(float(x0)), "--t0",
                        repr(float(t0)), "--amplitude", repr(float(a)), "--f32", "--output-nt",
                        str(self.nt), "--output-nx", str(self.nx), "--out", out],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        y = np.stack([np.load(os.path.join(out, "v.npy")), np.load(os.path.join(out, "w.npy"))])
        for name in ("input", "v", "w"):
            os.remove(os.path.join(out, name + ".npy"))
        os.rmdir(out)
        return y


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bin")
    ap.add_argument("data")
    ap.add_argument("--nt", type=int, default=50)
    ap.add_argument("--nx", type=int, default=50)
    ap.add_argument("--draws", type=int, default=12)
    ap.add_argument("--no-floor", action="store_true",
                    help="skip the floor and shift columns (cell-averaged inputs)")
    ap.add_argument("--checkpoint", action="append", default=[])
    args = ap.parse_args()

    load = lambda name: np.load(os.path.join(args.data, name + ".npy"))
    x0s, t0s, amps = load("x0"), load("t0"), load("amplitude")
    truth = np.stack([load("v"), load("w")], axis=1)
    times = np.linspace(0.0, T_END, args.nt)
    train_rows = on_rows(T0_TRAIN, times)

    floor, shift, widths, kinds = [], [], [], []
    with tempfile.TemporaryDirectory() as work:
        solver = Solver(args.bin, work, args.nt, args.nx)
        for i, (x0, t0, a) in enumerate(zip(x0s, t0s, amps)):
            t0 = float(t0)
            lo, hi, rows = same_input_interval(t0, times)
            widths.append(hi - lo)
            kinds.append(len(rows) == len(train_rows))
            if args.no_floor:
                continue
            draws = lo + (hi - lo) * (np.arange(args.draws) + 0.5) / args.draws
            mean = np.mean([solver.solve(t, x0, a) for t in draws], axis=0)
            y = truth[i]
            # Check the dataset against the solver at the sample's own onset.
            own = solver.solve(t0, x0, a)
            assert rel_l2(own[0], y[0]) < 1e-5, f"sample {i}: fhn_solve differs from the dataset"
            base = solver.solve(T0_TRAIN, x0, a)
            k = rows[0] - train_rows[0]
            shifted = np.zeros_like(base)
            shifted[:, k:] = base[:, : args.nt - k]
            floor.append([rel_l2(mean[c], y[c]) for c in range(2)])
            shift.append([rel_l2(shifted[c], y[c]) for c in range(2)])
        floor, shift, kinds = np.array(floor), np.array(shift), np.array(kinds)

        models = {}
        for ck in args.checkpoint:
            x_path, p_path = os.path.join(work, "x.npy"), os.path.join(work, "p.npy")
            np.save(x_path, load("input")[:, None].astype(np.float32))
            subprocess.run([os.path.join(args.bin, "infer"), "--checkpoint", ck, "--input", x_path,
                            "--out", p_path], check=True, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            p = np.load(p_path)
            models[ck] = np.array([[rel_l2(p[i, c], truth[i, c]) for c in range(2)]
                                   for i in range(len(t0s))])

    dt = times[1] - times[0]
    print(f"grid {args.nt} x {args.nx}: time step {dt:.4f}, pulse duration {DURATION}; "
          f"training input rows {[int(r) for r in train_rows]}; {len(t0s)} test samples, "
          f"same-input onset interval width median {np.median(widths):.3f} "
          f"[{np.min(widths):.3f}, {np.max(widths):.3f}]")
    # Grouped by the row count the onset gives point values, whatever DATA's sampling.
    groups = [("all", np.ones_like(kinds)),
              (f"onset covering {len(train_rows)} row(s), as training's", kinds),
              ("onset covering another row count", ~kinds)]
    print("samples\tn" + ("" if args.no_floor else "\tfloor v\tfloor w\tshift v\tshift w") +
          "".join(f"\t{'/'.join(c.split('/')[-3:-1]) or c} v\tw" for c in models))
    for name, m in groups:
        if m.sum() == 0:
            continue
        cells = [] if args.no_floor else [np.median(floor[m, 0]), np.median(floor[m, 1]),
                                          np.median(shift[m, 0]), np.median(shift[m, 1])]
        for c in models.values():
            cells += [np.median(c[m, 0]), np.median(c[m, 1])]
        print(f"{name}\t{m.sum()}\t" + "\t".join(f"{100 * v:.1f}%" for v in cells))


if __name__ == "__main__":
    main()
